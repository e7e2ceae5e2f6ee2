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
