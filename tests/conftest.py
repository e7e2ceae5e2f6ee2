"""Shared fixtures: the committed demo checkpoint, its exported models, a tiny generated data set."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO_CKPT = ROOT / "training" / "pretrained" / "demo_fqse_tiny.pt"
SAMPLES = ROOT / "samples"


def run_fqse(*args: str, **kw) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess."""
    return subprocess.run([sys.executable, "-m", "fqse", *args], capture_output=True, text=True, cwd=ROOT, **kw)


@pytest.fixture(scope="session")
def demo_ckpt() -> Path:
    assert DEMO_CKPT.exists(), "demo checkpoint missing"
    return DEMO_CKPT


@pytest.fixture(scope="session")
def demo_onnx(tmp_path_factory, demo_ckpt) -> Path:
    from conversion.pipeline import export_onnx
    return export_onnx(demo_ckpt, tmp_path_factory.mktemp("onnx") / "demo.onnx", activations="int8")


@pytest.fixture(scope="session")
def demo_tflite(tmp_path_factory, demo_ckpt) -> tuple[Path, dict]:
    from conversion.pipeline import convert_tflite
    out = tmp_path_factory.mktemp("tflite") / "demo.tflite"
    report = convert_tflite(demo_ckpt, out)
    return out, report


@pytest.fixture(scope="session")
def demo_step(tmp_path_factory, demo_ckpt) -> dict[str, Path]:
    """Streaming step models (16 ms per call) in both formats."""
    from conversion.pipeline import export_onnx
    from conversion.pipeline import convert_tflite
    d = tmp_path_factory.mktemp("step")
    convert_tflite(demo_ckpt, d / "step.tflite", step_frames=16)
    return {"onnx": export_onnx(demo_ckpt, d / "step.onnx", step_frames=16, activations="int8"), "tflite": d / "step.tflite"}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    from training.datagen import generate
    return generate(tmp_path_factory.mktemp("data"), "tiny", seed=3, show_progress=False)


def noisy_clean_pairs() -> list[tuple[Path, Path]]:
    return [(p, p.with_name(p.name.replace("_noisy", "_clean"))) for p in sorted(SAMPLES.glob("*_noisy.wav"))]
