"""conversion/checks.py without TensorFlow: the per-tensor scale check on a hand-made graph and report."""
from __future__ import annotations

import numpy as np

from conversion.checks import scale_mismatches
from conversion.graph import Graph, Op
from runtime import qmath

QA, QB, QC = (0.05, -3), (0.02, 7), (0.1, 0)


def _graph() -> Graph:
    ops = [Op("conv", ["input"], "a", QA, {"bias": None}), Op("conv", ["input"], "b", QB, {"bias": None}),
           Op("add", ["a", "b"], "c", QC)]
    return Graph(ops, "input", ["c"], {}, True)


def _t(qp, dtype="int8") -> dict:
    return {"dtype": dtype, "scales": np.array([qp[0]], np.float32), "zero_points": np.array([qp[1]])}


def _report(a=QA, b=QB) -> dict:
    return {"tensors": {"FakeQuantWithMinMaxArgs": _t((qmath.IO_SCALE, 0)), "a/BiasAdd;a/Conv2D": _t(a),
                        "b/BiasAdd;b/Conv2D": _t(b), "c/Pad": _t(QA), "c/Add": _t(QC),
                        "a/Const": {"dtype": "int8", "scales": np.ones(4, np.float32), "zero_points": np.zeros(4)},
                        "a/bias": _t((1e-4, 0), "int32")}}


def test_matching_scales_pass():
    assert scale_mismatches(_graph(), _report()) == []


def test_two_tensors_with_swapped_scales_fail():
    bad = scale_mismatches(_graph(), _report(a=QB, b=QA))
    assert any(m.startswith("TFLite a/") for m in bad) and any(m.startswith("TFLite b/") for m in bad)
    assert "QAT a 0.05/-3" in bad and "QAT b 0.02/7" in bad


def test_changed_scale_and_foreign_tensor_fail():
    assert scale_mismatches(_graph(), _report(a=(QA[0] * 1.01, QA[1])))
    rep = _report()
    rep["tensors"]["c/Add"] = _t(QB)  # an input grid of c is allowed on its tensors, but c's own is now missing
    assert scale_mismatches(_graph(), rep) == ["QAT c 0.1/0"]
    rep["tensors"]["stray"] = _t((0.3, 1))  # named after no op: must still be some grid of the graph
    assert "TFLite stray 0.3/1" in scale_mismatches(_graph(), rep)


def test_export_prints_its_stage_checks(tmp_path, demo_ckpt):
    """`fqse export` reports what it checked, as `fqse convert` does: the float lowering, the QAT grids kept,
    and onnxruntime against the fake-quant model (measured on the demo model: 139 dB, then every int8 code equal:
    tie-free grids, training/grids.py; 49.1 dB on this model before them)."""
    import json

    from tests.conftest import run_fqse
    res = run_fqse("export", "--checkpoint", str(demo_ckpt), "-o", str(tmp_path / "m.onnx"))
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["path"] == str(tmp_path / "m.onnx") and (tmp_path / "m.onnx").exists()
    assert report["qat_scales_kept"] is True
    assert report["onnx_graph_float"]["snr_db"] > 100 and report["onnx"]["snr_db"] > 150
    assert report["onnx"]["exact"] == [1.0, 1.0]


def test_a_failed_stage_check_writes_nothing_unless_not_strict(tmp_path, demo_ckpt, monkeypatch):
    """A stage check that fails stops the conversion before the write; strict=False (the full-size speed
    benchmark of random weights) writes the model and records the failure instead."""
    import pytest

    from conversion import checks
    from conversion.pipeline import ConversionError, convert
    monkeypatch.setattr(checks, "MIN_SNR_ONNX_INT8", 999.0)
    with pytest.raises(ConversionError, match="ONNX model disagrees with the torch model: .* < 999"):
        convert(demo_ckpt, tmp_path / "a.onnx", "onnx", activations="int8")
    assert not (tmp_path / "a.onnx").exists()
    rep = convert(demo_ckpt, tmp_path / "b.onnx", "onnx", strict=False, activations="int8")
    assert "< 999" in rep["check_failed"] and (tmp_path / "b.onnx").stat().st_size > 50_000
