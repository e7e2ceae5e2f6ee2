"""Integer reference (runtime/intref.py): bit-exact against TFLite's reference kernels on every tensor;
XNNPACK within 1 LSB of it layer by layer."""
from __future__ import annotations

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from runtime import pipeline
from runtime.audio import read_audio, to_int16
from runtime.backends import load_backend
from runtime.intref import (IntegerReference, IntRefError, invoke, quantize_multiplier, requantize,
                            single_op_model)
from tests.conftest import noisy_clean_pairs


def _ref_kernels(raw: bytes, xs: list[np.ndarray]) -> Interpreter:
    return invoke(Interpreter(model_content=raw, experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
                              experimental_preserve_all_tensors=True), xs)


def _assert_all_tensors_equal(raw: bytes, xs: list[np.ndarray]) -> int:
    ref = IntegerReference(raw)
    vals = ref.run(xs)
    it = _ref_kernels(raw, xs)
    for op, _, outs, _ in ref.ops:
        got = it.get_tensor(outs[0])
        assert got.shape == vals[outs[0]].shape and np.array_equal(got, vals[outs[0]]), (op, ref.tensors[outs[0]].name)
    return len(ref.ops)


def _speech_codes(meta: dict, i: int = 0) -> np.ndarray:
    pcm = to_int16(read_audio(noisy_clean_pairs()[i][0], 16000)[0])
    return pipeline.pre(pcm, meta).T[None, None]  # NHWC [1, 1, T, S]


def test_fixed_point_helpers():
    assert quantize_multiplier(0.5) == (1 << 30, 0)
    assert quantize_multiplier(1.0) == (1 << 30, 1)
    assert quantize_multiplier(0.75) == (3 << 29, 0)
    assert quantize_multiplier(1e-12) == (0, 0)  # flushed to zero below 2^-31
    x = np.array([3, -3, 5, -5, 1, -1])
    assert requantize(x, 1 << 30, 0).tolist() == [2, -1, 3, -2, 1, 0]  # x/2, ties toward +inf (gemmlowp's high-mul)
    # x/4: high-mul, then a rounding shift (ties away from zero); double rounding takes 5/4 to 2 and 1/4 to 1
    assert requantize(x, 1 << 30, -1).tolist() == [1, -1, 2, -1, 1, 0]
    assert requantize(x, 1 << 30, 2).tolist() == (2 * x).tolist()


def test_bit_exact_with_reference_kernels_full_model(demo_tflite):
    raw = demo_tflite[0].read_bytes()
    meta = load_backend(demo_tflite[0]).meta
    n = _assert_all_tensors_equal(raw, [_speech_codes(meta)])
    assert n > 100  # every op of the deployed graph, not just the outputs
    rng = np.random.default_rng(0)  # random codes drive every layer into saturation too
    _assert_all_tensors_equal(raw, [rng.integers(-128, 128, (1, 1, 1000, 2), dtype=np.int8)])


def test_bit_exact_with_reference_kernels_step_model(demo_step):
    raw = demo_step["tflite"].read_bytes()
    it = Interpreter(model_content=raw)
    rng = np.random.default_rng(1)
    xs = [rng.integers(-128, 128, d["shape"], dtype=np.int8) for d in it.get_input_details()]
    assert len(xs) > 10  # codes and every state
    _assert_all_tensors_equal(raw, xs)


def test_outputs_match_runtime_backend_with_reference_kernels(demo_tflite):
    """The integer reference's outputs are the deployed model's outputs under BUILTIN_REF."""
    raw = demo_tflite[0].read_bytes()
    ref = IntegerReference(raw)
    x = _speech_codes(load_backend(demo_tflite[0]).meta, 2)
    vals = ref.run([x])
    it = _ref_kernels(raw, [x])
    for d in it.get_output_details():
        assert np.array_equal(vals[d["index"]], it.get_tensor(d["index"]))


def test_xnnpack_within_one_lsb_layer_by_layer(demo_tflite):
    """Each op alone under XNNPACK, fed the reference's int8 input: measured on the demo model and a shipped
    sample: 100 % of codes within 1 LSB; XNNPACK rounds exactly where the reference kernels double-round."""
    raw = demo_tflite[0].read_bytes()
    ref = IntegerReference(raw)
    vals = ref.run([_speech_codes(load_backend(demo_tflite[0]).meta)])
    total = within = 0
    for k, (op, _, outs, _) in enumerate(ref.ops):
        it = Interpreter(model_content=single_op_model(raw, k), experimental_op_resolver_type=OpResolverType.AUTO)
        invoke(it, [vals[d["index"]] for d in it.get_input_details()])
        d = np.abs(it.get_tensor(it.get_output_details()[0]["index"]).astype(np.int32) - vals[outs[0]])
        total += d.size
        within += int((d <= 1).sum())
    assert within / total >= 0.9999


def test_float_model_is_a_clear_error(tmp_path):
    from conversion.pipeline import convert_tflite
    from tests.conftest import ROOT
    p = convert_tflite(ROOT / "training" / "pretrained" / "demo_float_tiny.pt", tmp_path / "f.tflite", float_model=True)["path"]
    with pytest.raises(IntRefError, match="not int8"):
        IntegerReference.from_file(p)


def test_error_by_source_names_the_fixed_point_leaky_relu(demo_tflite, demo_onnx, demo_ckpt, tmp_path):
    """`fqse parity --per-layer` splits the TFLite error by source. Measured on the demo model, sample 00: fake-quant,
    exact integer arithmetic, XNNPACK and onnxruntime all give the same codes (tie-free grids, training/grids.py:
    218 dB, float noise of the comparison); TFLite's fixed point (reference kernels) is 23.3 dB from them: per layer
    it rounds 7.7 % of LEAKY_RELU codes differently from exact arithmetic (its alpha branch has a right shift of
    1-3 bits after the rounding high multiply: double rounding), MUL 1.0 %, convs 0.2-0.6 %, ADD/SUB none. Before
    the tie-free grids fake-quant vs exact was 44.3 dB and XNNPACK differed from exact on 0.0002 % of codes (conv
    float32 ties); on the jitter fine-tune, now the demo model, ONNX and TFLite parted (54.7 dB)."""
    import json

    from tests.conftest import run_fqse
    noisy, clean = noisy_clean_pairs()[0]
    res = run_fqse("parity", "--checkpoint", str(demo_ckpt), "--audio", str(noisy), "--clean", str(clean),
                   "--tflite", str(demo_tflite[0]), "--onnx", str(demo_onnx), "--per-layer", "--json", str(tmp_path / "p.json"))
    assert res.returncode == 0, res.stderr
    out = json.loads((tmp_path / "p.json").read_text())
    src = out["by_source_snr_db"]
    assert src["fakequant vs exact integer"] >= 150  # equal codes (a single flipped code cascades to < 60 dB)
    assert src["exact integer vs intref (TFLite fixed point)"] < 40
    fx = out["fixed_vs_exact_by_op"]
    assert max(fx, key=fx.get) == "LEAKY_RELU" and fx["LEAKY_RELU"] > 0.05
    assert fx["ADD"] == 0 and fx["SUB"] == 0 and fx["CONV_2D"] < 0.01
    assert all(r["max_lsb"] <= 1 for r in out["per_layer_tflite"])
    assert max(out["xnnpack_vs_exact_by_op"].values()) == 0
    # onnxruntime, tensor by tensor through the whole graph, against the integer reference's tensor of the
    # same quantization: 86 of 87 matched; it follows exact arithmetic on every one of them and leaves TFLite's
    # fixed point at the first conv (0.39 % of its codes).
    matched = [r for r in out["per_layer_onnx"] if "intref_differ" in r]
    assert len(matched) >= 80 and max(r["exact_differ"] for r in matched) == 0
    assert matched[0]["tensor"] == "enc" and matched[0]["intref_differ"] > 0
    assert out["pairwise_snr_db"]["onnx vs tflite"] > 150
    # SI-SNR against clean speech is the same whichever arithmetic runs the model (measured spread 0.008 dB)
    si = out["si_snr_vs_clean"]
    assert max(si[k] for k in ("fakequant", "onnx", "tflite", "intref")) - min(
        si[k] for k in ("fakequant", "onnx", "tflite", "intref")) < 0.05
