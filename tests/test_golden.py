"""`fqse golden`: every tensor of the integer reference, indexed, equal to TFLite's reference kernels."""
from __future__ import annotations

import json

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from runtime.intref import invoke
from tests.conftest import noisy_clean_pairs, run_fqse


def _check(out, model_path) -> dict:
    index = json.loads((out / "index.json").read_text())
    t = index["tensors"]
    load = lambda i: np.load(out / t[i]["file"])  # noqa: E731
    xs = [load(i) for i in index["inputs"]]
    it = invoke(Interpreter(model_path=str(model_path), experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
                            experimental_preserve_all_tensors=True), xs)
    details = {str(d["index"]): d for d in it.get_tensor_details()}
    for op in index["ops"]:  # every op's output is there, bit-exact with the reference kernels
        o = op["outputs"][0]
        assert t[o]["produced_by"] == op["index"]
        assert np.array_equal(load(o), it.get_tensor(int(o))), op
        q = details[o]["quantization_parameters"]
        assert np.allclose(t[o]["scale"], q["scales"], rtol=0, atol=0) and t[o]["zero_point"] == q["zero_points"].tolist()
    return index


def test_golden_full_model(tmp_path, demo_tflite):
    noisy = noisy_clean_pairs()[0][0]
    res = run_fqse("golden", "--model", str(demo_tflite[0]), "--audio", str(noisy), "-o", str(tmp_path / "g"),
                   "--seconds", "1")
    assert res.returncode == 0, res.stderr
    index = _check(tmp_path / "g", demo_tflite[0])
    assert len(index["ops"]) > 100 and index["samples"] == 16000
    x = np.load(tmp_path / "g" / index["tensors"][index["inputs"][0]]["file"])
    assert x.dtype == np.int8 and x.shape[3] == 2  # the splitter's two int8 streams


def test_golden_step_model(tmp_path, demo_step):
    res = run_fqse("golden", "--model", str(demo_step["tflite"]), "--audio", str(noisy_clean_pairs()[1][0]),
                   "-o", str(tmp_path / "g"))
    assert res.returncode == 0, res.stderr
    index = _check(tmp_path / "g", demo_step["tflite"])
    assert len(index["inputs"]) == 1 + len(index["fqse"]["states"])


def test_golden_onnx_is_a_clear_error(tmp_path, demo_onnx):
    res = run_fqse("golden", "--model", str(demo_onnx), "--audio", str(noisy_clean_pairs()[0][0]), "-o", str(tmp_path / "g"))
    assert res.returncode == 2 and "int8 .tflite" in res.stderr and len(res.stderr.strip().splitlines()) == 1
