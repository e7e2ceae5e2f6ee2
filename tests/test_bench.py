"""`fqse bench`: the fields it reports, from a real run on the demo models."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT, run_fqse


def test_bench_stream_reports_p99_and_over_budget(demo_step, tmp_path):
    res = run_fqse("bench", "--model", str(demo_step["tflite"]), str(demo_step["onnx"]), "--stream", "--seconds", "2",
                   "--json", str(tmp_path / "b.json"))
    assert res.returncode == 0, res.stderr
    assert "p99 ms" in res.stdout and "over budget" in res.stdout
    for r in json.loads((tmp_path / "b.json").read_text()):
        assert r["hop_ms"] == 16.0
        assert r["hop_median_ms"] <= r["hop_p99_ms"] <= r["hop_max_ms"]
        assert 0.0 <= r["over_budget"] <= 1.0


def test_stream_on_non_step_model_says_not_real_time(demo_tflite):
    res = subprocess.run([sys.executable, "-m", "fqse", "stream", "--model", str(demo_tflite[0])], cwd=ROOT,
                         input=b"\0" * 3200, capture_output=True)
    assert res.returncode == 0, res.stderr
    assert len(res.stdout) == 3200  # every sample comes back
    assert b"not a step model" in res.stderr and b"--step-ms" in res.stderr


FLOAT_COMPUTE = {"Conv", "FusedConv", "ConvTranspose", "MatMul", "Gemm", "FusedMatMul"}


def test_profile_int8_onnx_runs_every_conv_as_an_integer_kernel(demo_onnx, demo_ckpt, tmp_path):
    """The profiler sees the kernels onnxruntime really picked. A QDQ unit it cannot fuse (e.g. a ReLU before a Q
    whose zero point is not its minimum) runs as a float Conv and shows here; so would a float layer left in."""
    from conversion.pipeline import export_onnx
    uint8 = export_onnx(demo_ckpt, tmp_path / "demo_uint8.onnx", activations="uint8")
    res = run_fqse("bench", "--model", str(demo_onnx), str(uint8), "--profile", "--seconds", "1",
                   "--json", str(tmp_path / "p.json"))
    assert res.returncode == 0, res.stderr
    for r in json.loads((tmp_path / "p.json").read_text()):
        ops = {k["op"] for k in r["kernels"]}
        assert not ops & FLOAT_COMPUTE, (r["model"], ops & FLOAT_COMPUTE)
        assert abs(sum(k["share"] for k in r["kernels"]) - 1) < 1e-9
        convs = {k["layer"] for k in r["kernels"] if k["op"] == "QLinearConv"}
        assert {"enc", "bottleneck", "b*_in", "b*_dconv", "b*_res", "b*_skip"} <= convs


def test_profile_of_a_float_model_shows_float_convs_and_tflite_is_refused(demo_tflite, tmp_path):
    from conversion.pipeline import export_onnx
    f = export_onnx(ROOT / "training" / "pretrained" / "demo_float_tiny.pt", tmp_path / "float.onnx", float_model=True)
    from runtime.bench import profile
    assert {k["op"] for k in profile(str(f), seconds=1.0)["kernels"]} & FLOAT_COMPUTE  # the check can fail
    res = run_fqse("bench", "--model", str(demo_tflite[0]), "--profile")
    assert res.returncode == 2 and "takes .onnx models only" in res.stderr
