"""Fully-integer TFLite: int8 everywhere, QAT scales kept, parity with the fake-quant model."""
from __future__ import annotations

import numpy as np
import pytest

from conversion.checks import scale_mismatches
from conversion.graph import build_graph
from conversion.parity import compare, torch_outputs
from conversion.pipeline import ConversionError, convert_tflite
from conversion.tflite_export import tensor_report
from runtime import pipeline
from runtime.audio import read_audio, to_int16
from runtime.backends import TfliteBackend
from tests.conftest import ROOT, check_integer_with_qat_grids, noisy_clean_pairs, small_norm_model
from training.checkpoint import load_model


def test_fully_integer_with_int8_io(demo_tflite, demo_ckpt):
    path, report = demo_tflite
    model = load_model(demo_ckpt)
    assert check_integer_with_qat_grids(path, model) == 89  # 8 blocks: 3 + 8 x 7 + 7 x 2 + 7 + 5 + 4 layers
    rep = tensor_report(path.read_bytes())
    assert "QUANTIZE" not in rep["ops"] and "DEQUANTIZE" not in rep["ops"]
    assert report["tf_graph_float"]["snr_db"] >= 60  # the lowering itself, free of int8 rounding


def test_qat_scales_kept_tensor_by_tensor(demo_tflite, demo_ckpt):
    path, _ = demo_tflite
    g = build_graph(load_model(demo_ckpt))
    assert scale_mismatches(g, tensor_report(path.read_bytes())) == []
    # and a changed scale is caught
    g.ops[3].qp = (g.ops[3].qp[0] * 1.01, g.ops[3].qp[1])
    assert scale_mismatches(g, tensor_report(path.read_bytes()))


def test_swapped_scales_of_two_tensors_are_caught(demo_tflite, demo_ckpt):
    """The same set of scales on the wrong tensors (a set comparison would pass it)."""
    path, _ = demo_tflite
    g = build_graph(load_model(demo_ckpt))
    ops = {op.output: op for op in g.ops}
    ops["b0_res"].qp, ops["b0_skip"].qp = ops["b0_skip"].qp, ops["b0_res"].qp
    bad = scale_mismatches(g, tensor_report(path.read_bytes()))
    assert any("b0_res" in m for m in bad) and any("b0_skip" in m for m in bad), bad


def test_parity_with_fake_quant(demo_tflite, demo_ckpt):
    from runtime.metrics import si_snr
    path, _ = demo_tflite
    model = load_model(demo_ckpt)
    be = TfliteBackend(path)
    diffs = []
    for noisy, clean in noisy_clean_pairs():
        pcm = to_int16(read_audio(noisy, 16000)[0])
        ref = read_audio(clean, 16000)[0]
        x = pipeline.pre(pcm, be.meta)
        y_fq, y_tfl = torch_outputs(model, x), be.run(x)
        # Every int8 code equal (tie-free grids, training/grids.py; before them 42.0 dB at worst, and 28.4 before
        # the PReLUs were put on XNNPACK's exact grid); the residual branch y1 counts: dropping it gives 20.5 dB.
        got = compare(y_fq, y_tfl, be.meta)
        no_y1 = y_tfl.copy()
        no_y1[1] = 0
        assert got["exact"] == [1.0, 1.0] and got["snr_db"] >= compare(y_fq, no_y1, be.meta)["snr_db"] + 150
        diffs.append(si_snr(pipeline.post(y_tfl, len(pcm), be.meta) / 32768, ref)
                     - si_snr(pipeline.post(y_fq, len(pcm), be.meta) / 32768, ref))
    assert np.max(np.abs(diffs)) < 1e-3  # the same quality against clean speech, sample for sample


@pytest.mark.parametrize("norm", ["gLN", "cLN"])
def test_layer_norm_models_convert_to_integer_tflite(tmp_path, norm):
    """gLN / cLN as int8 MEAN, SUB, MUL, RSQRT ops (conversion/ops/int_norm.py): no float tensor; without
    the calibrated internal grids the lowering refuses."""
    from conversion.graph import build_graph
    from conversion.tflite_export import to_tflite
    from training import checkpoint
    m = small_norm_model(norm)
    checkpoint.save(tmp_path / "g.pt", m)
    report = convert_tflite(tmp_path / "g.pt", tmp_path / "g.tflite")
    assert check_integer_with_qat_grids(tmp_path / "g.tflite", checkpoint.load_model(tmp_path / "g.pt")) == 25  # 2 blocks, C = 1
    assert report["ops"]["MEAN"] == 5 * (4 if norm == "gLN" else 2) and report["ops"]["RSQRT"] == 5
    # stage checks passed (>= 15 dB); this random network measured 23.1 (gLN) / 24.2 dB (cLN) TFLite vs
    # fake-quant (int8 norm internals + rounding-tie flips; a wrong lowering gives ~0 dB)
    assert report["tflite"]["snr_db"] >= 20
    with pytest.raises(ConversionError, match=f"{norm} normalization has no integer-only TFLite form without"):
        to_tflite(build_graph(checkpoint.load_model(tmp_path / "g.pt")))


def test_float_tflite_matches_float_model(tmp_path):
    report = convert_tflite(ROOT / "training" / "pretrained" / "demo_float_tiny.pt", tmp_path / "f.tflite", float_model=True)
    assert report["tflite"]["snr_db"] >= 60 and report["tf_graph"]["snr_db"] >= 60


def test_float_step_model_checked_on_float_outputs(tmp_path):
    """The float step model's check compares float outputs (not int16 PCM, whose rounding capped the
    full-size float model at 45 dB): measured 140 dB on the demo float model, 124 dB at full size."""
    report = convert_tflite(ROOT / "training" / "pretrained" / "demo_float_tiny.pt", tmp_path / "f.tflite",
                            float_model=True, step_frames=16)
    assert report["tflite"]["snr_db"] >= 100
