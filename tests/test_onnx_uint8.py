"""ONNX with uint8 activations (`fqse export --activations uint8`): the same real values as the int8 form.

The integer outputs are equal, code for code: onnxruntime's u8 and s8 kernels could only part where a value lands on
a rounding tie, and the tie-free grids (training/grids.py) leave none. Before them, on the real-speech demo model,
0.002-0.012 % of y0 codes differed by one LSB and the combined outputs agreed to 54.1-66.6 dB."""
from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest

from conversion.pipeline import export_onnx
from runtime import pipeline
from runtime.audio import read_audio, to_int16
from runtime.backends import OnnxBackend
from runtime.cpu import onnx_activations
from runtime.enhancer import Enhancer
from tests.conftest import noisy_clean_pairs, run_fqse


@pytest.fixture(scope="module")
def uint8_models(tmp_path_factory, demo_ckpt):
    d = tmp_path_factory.mktemp("u8")
    return {"full": export_onnx(demo_ckpt, d / "u8.onnx", activations="uint8"),
            "step": export_onnx(demo_ckpt, d / "u8_step.onnx", step_frames=16, activations="uint8")}


def test_uint8_outputs_equal_int8_outputs(uint8_models, demo_onnx):
    s8, u8 = OnnxBackend(demo_onnx), OnnxBackend(uint8_models["full"])
    assert u8.uint8 and not s8.uint8
    for noisy, _ in noisy_clean_pairs():
        x = pipeline.pre(to_int16(read_audio(noisy, 16000)[0]), s8.meta)
        a, b = s8.run(x), u8.run(x)
        assert b.dtype == np.int8 and np.array_equal(a, b), noisy.name


def test_uint8_step_model_equals_int8_step_model(uint8_models, demo_step):
    pcm = to_int16(read_audio(noisy_clean_pairs()[2][0], 16000)[0])
    a = Enhancer.from_file(demo_step["onnx"]).enhance(pcm)
    b = Enhancer.from_file(uint8_models["step"]).enhance(pcm)
    assert np.array_equal(a, b)  # as the offline models (module docstring)


def test_uint8_model_structure(uint8_models, tmp_path):
    m = onnx.load(uint8_models["full"])
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert not [i.name for i in m.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    OnnxBackend(uint8_models["full"], optimized_path=tmp_path / "opt.onnx")
    opt = onnx.load(tmp_path / "opt.onnx")
    ops = collections.Counter(n.op_type for n in opt.graph.node)
    assert ops["QLinearConv"] >= 20 and ops["Conv"] == 0  # every conv runs as a u8u8 integer kernel
    inits = {i.name: i.data_type for i in opt.graph.initializer}
    for n in opt.graph.node:
        if n.op_type == "QLinearConv":
            assert inits[n.input[3]] == onnx.TensorProto.UINT8  # weights


def test_auto_choice_by_cpu():
    # uint8 on every x86 host: s8s8 was 3-6x slower there with VNNI as without it (README)
    assert onnx_activations("x86_64") == "uint8" and onnx_activations("AMD64") == "uint8"
    assert onnx_activations("aarch64") == "int8" and onnx_activations("arm64") == "int8"


def test_export_cli_activations(demo_ckpt, tmp_path):
    res = run_fqse("export", "--checkpoint", str(demo_ckpt), "-o", str(tmp_path / "m.onnx"), "--activations", "uint8")
    assert res.returncode == 0, res.stderr
    assert onnx.load(tmp_path / "m.onnx").graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    res = run_fqse("export", "--checkpoint", str(demo_ckpt), "-o", str(tmp_path / "x.onnx"), "--activations", "int4")
    assert res.returncode == 2 and "int4" in res.stderr and not (tmp_path / "x.onnx").exists()


def test_per_layer_parity_reads_uint8_models(uint8_models, demo_onnx, demo_ckpt):
    from conversion.parity import per_layer_onnx
    from training.checkpoint import load_model
    model = load_model(demo_ckpt)
    x = pipeline.pre(to_int16(read_audio(noisy_clean_pairs()[0][0], 16000)[0]), OnnxBackend(demo_onnx).meta)
    rows = per_layer_onnx(model, uint8_models["full"], x)
    ref = per_layer_onnx(model, demo_onnx, x)  # same tensors, codes shifted back to int8: equal
    assert [r["tensor"] for r in rows] == [r["tensor"] for r in ref] and len(rows) >= 80
    assert rows[0]["tensor"] == "enc"
    # every tensor of both forms equals the fake-quant model's (a uint8 code read without its +128 shift would be
    # 128 LSB off; a tie would be 1 LSB off)
    assert all(r["max_lsb"] == 0 and r["frac_differ"] == 0 for r in rows + ref)
