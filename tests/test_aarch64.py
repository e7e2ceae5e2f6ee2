"""The runtime on aarch64 (qemu-user, Debian's arm64 Python, the aarch64 wheels): bit-identical outputs.

Needs the sysroot that `make aarch64-check` builds (tools/aarch64_sysroot.sh); skipped without it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, noisy_clean_pairs

SYSROOT = Path(os.environ.get("FQSE_AARCH64", ROOT / ".aarch64"))


def _selfcheck(cmd: list[str], models: list[Path], env: dict | None = None) -> dict:
    audio = str(noisy_clean_pairs()[0][0])
    res = subprocess.run([*cmd, "-m", "runtime.selfcheck", "--audio", audio, *map(str, models)], cwd=ROOT,
                         capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_aarch64_outputs_bit_identical_to_x86(demo_onnx, demo_tflite, demo_step, tmp_path):
    if shutil.which("qemu-aarch64-static") is None or not (SYSROOT / "root" / "usr" / "bin" / "python3.11").exists():
        pytest.skip("no aarch64 sysroot: run `make aarch64-check`")
    from conversion.pipeline import export_onnx
    u8 = export_onnx(ROOT / "training" / "pretrained" / "demo_fqse_tiny.pt", tmp_path / "u8.onnx", activations="uint8")
    models = [demo_tflite[0], demo_onnx, u8, demo_step["tflite"], demo_step["onnx"]]
    x86 = _selfcheck([sys.executable], models)
    env = {**os.environ, "PYTHONPATH": f"{SYSROOT / 'site'}:{ROOT}"}
    arm = _selfcheck(["qemu-aarch64-static", "-L", str(SYSROOT / "root"), str(SYSROOT / "root/usr/bin/python3.11")],
                     models, env)
    assert arm["machine"] == "aarch64" and arm["onnx_activations"] == "int8"  # s8s8 is ARM's fast path
    for m in map(str, models):
        assert arm["models"][m]["kernels"] == x86["models"][m]["kernels"]
        assert arm["models"][m]["sha256"] == x86["models"][m]["sha256"], m
    # and the three whole-utterance backends (TFLite, ONNX s8s8, ONNX uint8) agree with each other, on both CPUs:
    # no code lands on a rounding tie (training/grids.py). Before those grids the uint8 form on ARM gave x86's
    # uint8 result on an AVX2 host and the s8s8 result on an AVX512-VNNI host.
    assert len({r["models"][str(m)]["sha256"] for r in (x86, arm) for m in models[:3]}) == 1
