"""Long inputs: whole-signal enhancement runs window by window, exact for causal models, memory flat."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from runtime.enhancer import Enhancer
from runtime.metrics import si_snr
from tests.conftest import ROOT, noisy_clean_pairs, run_fqse


def _long(n_pairs: int = 6) -> tuple[np.ndarray, np.ndarray]:
    xs, refs = zip(*[(sf.read(n, dtype="int16")[0], sf.read(c, dtype="float32")[0]) for n, c in noisy_clean_pairs()[:n_pairs]])
    return np.concatenate(xs), np.concatenate(refs)


@pytest.mark.parametrize("kind", ["onnx", "tflite"])
def test_windowed_equals_one_run(kind, demo_onnx, demo_tflite):
    enh = Enhancer.from_file(demo_onnx if kind == "onnx" else demo_tflite[0])
    pcm, _ = _long()  # 18 s
    enh.window_s = 4.0  # 4 full windows and a partial one
    assert len(pcm) > 4 * enh.window_s * enh.sr
    assert np.array_equal(enh.enhance(pcm), enh._run_offline(pcm))  # exact: the receptive field is the context


def test_non_causal_long_input_in_blocks(demo_tflite):
    enh = Enhancer.from_file(demo_tflite[0])
    enh.causal = False  # force the non-causal path
    enh.window_s, enh.long_s = 2.0, 5.0
    pcm, ref = _long()
    y = enh.enhance(pcm)
    assert len(y) == len(pcm)
    # overlap-add of 2 s blocks: measured 0.0003 dB above one run on the demo model (18 s of samples)
    assert si_snr(y / 32768, ref) > si_snr(enh._run_offline(pcm) / 32768, ref) - 0.5


def test_cli_enhance_without_stream_is_windowed_and_exact(tmp_path, demo_tflite):
    pcm, _ = _long()
    src = tmp_path / "long.wav"
    sf.write(src, pcm, 16000, subtype="PCM_16")
    res = run_fqse("enhance", str(src), "-o", str(tmp_path / "out.wav"), "--model", str(demo_tflite[0]))
    assert res.returncode == 0, res.stderr
    out, _ = sf.read(tmp_path / "out.wav", dtype="int16")
    assert np.array_equal(out, Enhancer.from_file(demo_tflite[0])._run_offline(pcm))


@pytest.mark.slow
def test_enhance_memory_flat_in_length(tmp_path, demo_tflite):
    """Peak RSS of `fqse enhance` (no --stream) on 30 s and on 5 min of audio: the same within 25 MB
    (measured 88.5 MB for both on the demo TFLite model; one run on 5 min would hold its activations)."""
    pcm, _ = _long()
    peaks = {}
    for minutes in (0.5, 5):
        src = tmp_path / f"in{minutes}.wav"
        sf.write(src, np.resize(pcm, int(minutes * 60 * 16000)), 16000, subtype="PCM_16")
        code = ("import json, sys; from fqse.cli import main; from runtime.bench import peak_rss_mb; "
                f"rc = main(['enhance', {str(src)!r}, '-o', {str(tmp_path / 'o.wav')!r}, '--model', {str(demo_tflite[0])!r}]);"
                "print(json.dumps(peak_rss_mb()))")
        res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        peaks[minutes] = json.loads(res.stdout.strip().splitlines()[-1])
    assert peaks[5] - peaks[0.5] < 25, peaks
