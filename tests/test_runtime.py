"""The torch-free runtime: imports, streaming equals offline, clear errors with no partial output."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from runtime.audio import AudioError
from runtime.backends import ModelError, load_backend
from runtime.enhancer import Enhancer
from runtime.metrics import si_snr
from tests.conftest import ROOT, noisy_clean_pairs, run_fqse


def test_runtime_imports_neither_torch_nor_tensorflow(demo_onnx, demo_tflite):
    code = ("import sys, runtime.enhancer, runtime.bench, runtime.backends;"
            f"runtime.enhancer.Enhancer.from_file({str(demo_onnx)!r});"
            f"runtime.enhancer.Enhancer.from_file({str(demo_tflite[0])!r});"
            "bad = [m for m in ('torch', 'tensorflow', 'training', 'conversion') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("kind", ["onnx", "tflite"])
@pytest.mark.parametrize("chunk", [256, 77])
def test_streaming_equals_offline_bit_for_bit(kind, chunk, demo_onnx, demo_tflite):
    path = demo_onnx if kind == "onnx" else demo_tflite[0]
    enh = Enhancer.from_file(path)
    assert enh.causal
    noisy, _ = noisy_clean_pairs()[1]
    pcm, _ = sf.read(noisy, dtype="int16")
    offline = enh.enhance(pcm)
    parts = [enh.process(pcm[i: i + chunk]) for i in range(0, len(pcm), chunk)]
    parts.append(enh.flush())
    streamed = np.concatenate(parts)
    assert np.array_equal(streamed, offline)


@pytest.mark.parametrize("kind", ["onnx", "tflite"])
def test_step_model_streams_bit_exact_with_offline_model(kind, demo_step, demo_onnx, demo_tflite):
    offline = Enhancer.from_file(demo_onnx if kind == "onnx" else demo_tflite[0])
    step = Enhancer.from_file(demo_step[kind])
    assert step.step and step.chunk == 256
    assert 1000 * step.latency_samples / step.sr == 18.0  # 16 ms block + 2 encoder hops
    for noisy, _ in noisy_clean_pairs()[:3]:
        pcm, _ = sf.read(noisy, dtype="int16")
        ref = offline.enhance(pcm)
        for chunk in (256, 100, 999):
            parts = [step.process(pcm[i: i + chunk]) for i in range(0, len(pcm), chunk)] + [step.flush()]
            assert np.array_equal(np.concatenate(parts), ref)


def test_step_model_is_fully_integer_with_int8_state(demo_step):
    from conversion.checks import fully_integer
    from conversion.tflite_export import tensor_report
    be = load_backend(demo_step["tflite"])
    assert fully_integer(tensor_report(demo_step["tflite"].read_bytes())) == []
    ins = be.interp.get_input_details()
    assert len(ins) == 1 + len(be.meta["states"]) and all(d["dtype"] == np.int8 for d in ins)
    assert all(tuple(d["shape"][2:]) == (st["length"], st["channels"]) for d, st in zip(ins[1:], be.meta["states"]))


def test_block_mode_close_to_offline(demo_tflite):
    enh = Enhancer.from_file(demo_tflite[0], block_ms=500)
    enh.causal = False  # force the non-causal path (overlap-add of 0.5 s blocks)
    noisy, clean = noisy_clean_pairs()[0]
    pcm, _ = sf.read(noisy, dtype="int16")
    ref, _ = sf.read(clean, dtype="float32")
    parts = [enh.process(pcm[i: i + 256]) for i in range(0, len(pcm), 256)] + [enh.flush()]
    y = np.concatenate(parts)
    assert len(y) == len(pcm)
    assert si_snr(y / 32768, ref) > si_snr(enh.enhance(pcm) / 32768, ref) - 1.0


def test_enhance_improves_si_snr(demo_tflite):
    enh = Enhancer.from_file(demo_tflite[0])
    gains = []
    for noisy, clean in noisy_clean_pairs():
        x, _ = sf.read(noisy, dtype="int16")
        ref, _ = sf.read(clean, dtype="float32")
        gains.append(si_snr(enh.enhance(x) / 32768, ref) - si_snr(x / 32768, ref))
    assert np.mean(gains) > 1.5  # real-speech demo model on its 6 real samples: +2.42 dB measured (espeak model: -3.3)


def test_cli_resamples_and_downmixes(tmp_path, demo_tflite):
    noisy, _ = noisy_clean_pairs()[0]
    x, sr = sf.read(noisy, dtype="float32")
    src = tmp_path / "stereo44.wav"
    from runtime.audio import resample
    y = resample(x, sr, 44100)
    sf.write(src, np.stack([y, y], axis=1), 44100)
    res = run_fqse("enhance", str(src), "-o", str(tmp_path / "out.wav"), "--model", str(demo_tflite[0]), "--stream")
    assert res.returncode == 0, res.stderr
    assert "downmixed" in res.stdout and "resampled 44100 Hz -> 16000 Hz" in res.stdout
    out, osr = sf.read(tmp_path / "out.wav")
    assert osr == 16000 and abs(len(out) - len(x)) <= 1


@pytest.mark.parametrize("content,match", [(b"", "empty file"), (b"RIFF\x00\x00not a wav at all", "not a readable audio"),
                                           (None, "NaN")])
def test_bad_audio_is_one_line_error_and_no_output(tmp_path, demo_onnx, content, match):
    src = tmp_path / "in.wav"
    if content is None:
        sf.write(src, np.array([0.1, np.nan, 0.2] * 100, dtype=np.float32), 16000, subtype="FLOAT")
    else:
        src.write_bytes(content)
    out = tmp_path / "out.wav"
    res = run_fqse("enhance", str(src), "-o", str(out), "--model", str(demo_onnx))
    assert res.returncode == 2
    assert match in res.stderr and res.stderr.strip().count("\n") == 0
    assert not out.exists() and not list(tmp_path.glob(".out.wav*"))


def test_truncated_audio_is_clear_error(tmp_path):
    noisy, _ = noisy_clean_pairs()[0]
    data = noisy.read_bytes()
    src = tmp_path / "t.wav"
    src.write_bytes(data[:30])
    with pytest.raises(AudioError):
        from runtime.audio import read_audio
        read_audio(src)


@pytest.mark.parametrize("name,content,match", [("m.onnx", b"garbage", "not a loadable ONNX"),
                                                ("m.tflite", b"garbagegarbage", "not a TFLite"),
                                                ("m.bin", b"x", "unknown model type"), ("e.onnx", b"", "empty model")])
def test_bad_model_file_is_clear_error(tmp_path, name, content, match):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(ModelError, match=match):
        load_backend(p)


def test_stdio_streaming(demo_tflite):
    noisy, _ = noisy_clean_pairs()[0]
    pcm, _ = sf.read(noisy, dtype="int16")
    res = subprocess.run([sys.executable, "-m", "fqse", "stream", "--model", str(demo_tflite[0])], cwd=ROOT,
                         input=pcm.tobytes(), capture_output=True)
    assert res.returncode == 0
    out = np.frombuffer(res.stdout, np.int16)
    assert np.array_equal(out, Enhancer.from_file(demo_tflite[0]).enhance(pcm))


def test_stream_file_constant_memory_path_equals_offline(tmp_path, demo_step, demo_onnx):
    import tracemalloc
    noisy, _ = noisy_clean_pairs()[2]
    pcm, _ = sf.read(noisy, dtype="int16")
    enh = Enhancer.from_file(demo_step["onnx"])
    peaks, lengths = {}, {}
    for reps in (3, 3, 12):  # the first run warms up (imports, session buffers), then 9 s and 36 s are measured
        long = np.tile(pcm, reps)
        src = tmp_path / f"long{reps}.wav"
        sf.write(src, long, 16000, subtype="PCM_16")
        tracemalloc.start()
        n = enh.stream_file(src, tmp_path / "out.wav", block_s=0.37, progress=False)
        peaks[reps], lengths[reps] = tracemalloc.get_traced_memory()[1], len(long)  # Python + numpy heap
        tracemalloc.stop()
        assert n == len(long)
        if reps == 3:
            out, _ = sf.read(tmp_path / "out.wav", dtype="int16")
            assert np.array_equal(out, Enhancer.from_file(demo_onnx).enhance(long))
    # Measured 0.23 MB peak for both lengths. Holding the input or the output of the whole file (int16:
    # 2 bytes a sample) would add >= 0.86 MB between 9 s and 36 s; allow a quarter of that for noise.
    grown = peaks[12] - peaks[3]
    assert grown < 0.25 * 2 * (lengths[12] - lengths[3]), peaks
    assert peaks[12] < 2 * lengths[12], peaks  # below one int16 copy of the 36 s signal


def test_stream_file_nan_leaves_no_output(tmp_path, demo_step):
    src = tmp_path / "nan.wav"
    x = np.zeros(40000, np.float32)
    x[30000] = np.nan
    sf.write(src, x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        Enhancer.from_file(demo_step["tflite"]).stream_file(src, tmp_path / "out.wav")
    assert list(tmp_path.iterdir()) == [src]
