"""Reliability and security: untrusted checkpoints, Enhancer input checks, work-dir protection, atomic writes."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, run_fqse


class _Exploit:
    """Unpickling this runs `touch MARKER` (what a crafted .pt does with weights_only=False)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _evil_checkpoint(tmp: Path) -> tuple[Path, Path]:
    marker = tmp / "PWNED"
    evil = tmp / "evil.pt"
    torch.save({"format": "fqse-checkpoint-1", "model_config": {}, "state_dict": {}, "x": _Exploit(marker)}, evil)
    return evil, marker


def test_malicious_checkpoint_payload_is_live_without_weights_only(tmp_path):
    """Control: the crafted file really runs its command when loaded the unsafe way."""
    evil, marker = _evil_checkpoint(tmp_path)
    torch.load(evil, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("argv", [
    ["export", "--checkpoint", "{evil}", "-o", "{tmp}/m.onnx"],
    ["parity", "--checkpoint", "{evil}", "--audio", "{wav}"],
])
def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path, argv):
    evil, marker = _evil_checkpoint(tmp_path)
    wav = sorted((ROOT / "samples").glob("*_noisy.wav"))[0]
    res = run_fqse(*[a.format(evil=evil, tmp=tmp_path, wav=wav) for a in argv])
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "refused to load" in lines[0] and "posix.system" in lines[0], res.stderr
    assert not marker.exists()
    assert not (tmp_path / "m.onnx").exists()


def test_malicious_pretrained_and_plain_tensor_refused(tmp_path):
    from training import checkpoint
    from training.model import ConvTasNet, ModelConfig
    evil, marker = _evil_checkpoint(tmp_path)
    model = ConvTasNet(ModelConfig(n_filters=16, kernel_size=16, bn_chan=8, hid_chan=16, skip_chan=8, n_blocks=2,
                                   n_repeats=1))
    with pytest.raises(checkpoint.CheckpointError, match="refused to load"):
        checkpoint.init_from_float(model, evil)
    assert not marker.exists()
    torch.save(torch.zeros(3), tmp_path / "t.pt")
    with pytest.raises(checkpoint.CheckpointError, match="holds a Tensor, not a checkpoint dict"):
        checkpoint.load_model(tmp_path / "t.pt")


# ---- Enhancer input: accepted forms, everything else one clear error ------------------------------------------

@pytest.fixture(scope="module")
def enh(demo_onnx):
    from runtime.enhancer import Enhancer
    return Enhancer.from_file(demo_onnx)


def _speech() -> np.ndarray:
    import soundfile as sf
    from tests.conftest import noisy_clean_pairs
    return sf.read(noisy_clean_pairs()[0][0], dtype="int16")[0][:8000]


@pytest.mark.parametrize("make, message", [
    (lambda p: p.astype(np.int32) << 16, r"dtype int32 not accepted.*int32 PCM: convert with \(x >> 16\)"),
    (lambda p: p.astype(np.float32), r"float samples reach \d+; float input must be in \[-1, 1\]"),
    (lambda p: np.stack([p, p], axis=1), r"shape \(8000, 2\).*2 channels: downmix first"),
    (lambda p: p[None, :], r"shape \(1, 8000\), expected mono"),
    (lambda p: (p >> 8).astype(np.int8), "dtype int8 not accepted"),
    (lambda p: (p >> 8).astype(np.uint8), "dtype uint8 not accepted"),
    (lambda p: p > 0, "dtype bool not accepted"),
    (lambda p: (p / 32768).astype(np.float16), "dtype float16 not accepted"),
    (lambda p: (p / 32768).astype(np.complex64), "dtype complex64 not accepted"),
    (lambda p: np.where(np.arange(len(p)) == 5, np.nan, p / 32768), "contains NaN or infinite"),
    (lambda p: np.where(np.arange(len(p)) == 5, np.inf, p / 32768), "contains NaN or infinite"),
    (lambda p: p[:0], "input: empty"),
])
def test_enhancer_rejects_ambiguous_input(enh, make, message):
    from runtime.audio import AudioError
    with pytest.raises(AudioError, match=message):
        enh.enhance(make(_speech()))


def test_enhancer_accepted_forms_agree_and_overrange_float_warns(enh):
    from runtime.audio import AudioWarning
    pcm = _speech()
    ref = enh.enhance(pcm)
    assert len(ref) == len(pcm)
    assert np.array_equal(enh.enhance(pcm.astype(">i2")), ref)  # big-endian int16: same PCM values
    assert np.array_equal(enh.enhance(pcm[:, None]), ref)  # (N, 1)
    assert np.array_equal(enh.enhance(pcm / 32768.0), ref)  # float64 in [-1, 1): exact int16 grid
    assert np.array_equal(enh.enhance((pcm / 32768.0).astype(np.float32)), ref)
    loud = pcm / np.abs(pcm).max() * 1.5
    with pytest.warns(AudioWarning, match=r"float samples reach 1\.\d+ > 1; clipped"):
        enh.enhance(loud)
    with pytest.raises(Exception, match="model runs at 16000 Hz"):
        enh.enhance(pcm, sample_rate=44100)


def test_enhancer_latency_is_the_measured_holdback(enh):
    """latency_samples = the largest delay (samples) between a sample's arrival and its output, fed in blocks
    of `chunk` samples (steady state, after the first two blocks)."""
    pcm = np.tile(_speech(), 2)
    enh.reset()
    emitted, delay = 0, 0
    for i in range(0, len(pcm), enh.chunk):
        fed = min(len(pcm), i + enh.chunk)
        n = len(enh.process(pcm[i: i + enh.chunk]))
        if emitted >= 2 * enh.chunk:
            delay = max(delay, fed - emitted)  # the oldest sample emitted now arrived at time `emitted`
        emitted += n
    emitted += len(enh.flush())
    assert emitted == len(pcm)
    assert delay == enh.latency_samples == 288  # 16 ms block + 2 hops of look-ahead (residual block)


# ---- fqse train never replaces a good checkpoint unasked -------------------------------------------------------

def _train_conf(tmp: Path) -> Path:
    conf = tmp / "c.yml"
    conf.write_text(f"work_dir: {tmp / 'work'}\ndataset:\n  train_dir: {tmp / 'nodata/train'}\n"
                    f"  valid_dir: {tmp / 'nodata/dev'}\n")
    return conf


def test_train_refuses_work_dir_with_checkpoints(tmp_path):
    conf, work = _train_conf(tmp_path), tmp_path / "work"
    work.mkdir()
    (work / "best.pt").write_bytes(b"good model")
    res = run_fqse("train", "-y", str(conf))
    assert res.returncode == 2
    assert res.stderr.strip() == (f"fqse train: error: {work} already holds best.pt; use --resume to continue that "
                                  "run or --overwrite to replace it")
    assert (work / "best.pt").read_bytes() == b"good model"
    # --resume without last.pt says it starts fresh (then fails here on the missing data, one line)
    res = run_fqse("train", "-y", str(conf), "--resume")
    assert res.returncode == 2
    assert res.stderr.splitlines()[0] == f"note: --resume: no {work / 'last.pt'}, starting fresh"
    assert (work / "best.pt").read_bytes() == b"good model"
    res = run_fqse("train", "-y", str(conf), "--overwrite")
    assert res.stderr.splitlines()[0] == f"note: --overwrite: removed best.pt from {work}"
    assert not (work / "best.pt").exists()


# ---- config schema -------------------------------------------------------------------------------------------

def test_every_shipped_config_passes_the_schema():
    from tests.conftest import ROOT
    from training.config import load_config, model_config
    configs = sorted((ROOT / "configs").glob("*.yml"))
    assert len(configs) >= 10
    for p in configs:
        model_config(load_config(p))


@pytest.mark.parametrize("text, message", [
    ("trainig:\n  epochs: 3\n", "unknown key trainig (did you mean training?)"),
    ("training:\n  epoch: 3\n", "unknown key training.epoch (did you mean training.epochs?)"),
    ("training:\n  learning_rate: 0.1\n", "unknown key training.learning_rate (did you mean training.lr?)"),
    ("dataset:\n  augmentation:\n    enable: true\n",
     "unknown key dataset.augmentation.enable (did you mean dataset.augmentation.enabled?)"),
    ("training:\n  epochs: ten\n  batch_size: 0\n",
     "training.epochs: 'ten' is not a whole number; training.batch_size: 0: must be at least 1"),
    ("dataset:\n  segment: abc\n", "dataset.segment: 'abc' is not a number"),
    ("model:\n  causal: 'no'\n", "model.causal: 'no' is not true or false"),
    ("- a\n- b\n", "config: must be a mapping of keys, got list"),
    ("base: c.yml\n", "`base:` loop (c.yml -> c.yml)"),
])
def test_config_problems_are_one_message(tmp_path, text, message):
    from training.config import ConfigError, load_config
    (tmp_path / "c.yml").write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "c.yml")
    assert str(err.value) == f"{tmp_path / 'c.yml'}: {message}"


def test_reference_fqse_keys_are_accepted(tmp_path):
    """The keys the reference FQSE README tells users to set load unchanged."""
    from training.config import load_config
    (tmp_path / "c.yml").write_text("work_dir: /home/user\nmodel:\n  model_path: trained_model.pth\n"
                                    "dataset:\n  train_dir: a/train-360\n  valid_dir: a/dev\n  test_dir: a/test\n"
                                    "training:\n  pretrained: pytorch_model.bin\n")
    conf = load_config(tmp_path / "c.yml")
    assert conf["training"]["pretrained"] == "pytorch_model.bin" and conf["dataset"]["test_dir"] == "a/test"


# ---- atomic writes: no partial file, umask, read-only outputs, SIGTERM/SIGKILL leftovers ------------------------

def _long_wav(path: Path, seconds: float = 300.0) -> Path:
    import soundfile as sf
    rng = np.random.default_rng(0)
    sf.write(path, (rng.standard_normal(int(seconds * 16000)) * 1000).astype(np.int16), 16000, subtype="PCM_16")
    return path


def _start_enhance(tmp: Path, model: Path, src: Path, out: Path):
    import subprocess
    import sys
    import time
    from tests.conftest import ROOT
    proc = subprocess.Popen([sys.executable, "-m", "fqse", "enhance", str(src), "-o", str(out), "--model",
                             str(model), "--stream"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp.glob(".out.wav.*")):
        time.sleep(0.02)
    assert list(tmp.glob(".out.wav.*")), "the temporary output never appeared"
    time.sleep(0.2)
    return proc


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_killed_stream_leaves_no_partial_output(tmp_path, demo_onnx, sig):
    import signal
    src, out = _long_wav(tmp_path / "in.wav"), tmp_path / "out.wav"
    proc = _start_enhance(tmp_path, demo_onnx, src, out)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=60)
    assert not out.exists()
    left = list(tmp_path.glob(".out.wav.*"))
    if sig == "SIGTERM":  # cleaned up by the process itself
        assert proc.returncode == 143 and left == [] and err.strip().endswith("fqse enhance: terminated"), err
    else:  # the next write of the same target removes the dead process's file
        assert [p.name for p in left] == [f".out.wav.{proc.pid}.fqse-tmp.wav"]
        res = run_fqse("enhance", str(tmp_path / "in.wav"), "-o", str(out), "--model", str(demo_onnx), "--stream")
        assert res.returncode == 0, res.stderr
        assert list(tmp_path.glob(".out.wav.*")) == [] and out.exists()


def test_outputs_honour_umask_and_readonly_needs_force(tmp_path):
    from runtime.audio import write_audio
    from runtime.files import WriteError, allow_replace_readonly
    x = np.zeros(160, np.int16)
    for mask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        old = os.umask(mask)
        try:
            write_audio(tmp_path / f"u{mask:o}.wav", x, 16000)
        finally:
            os.umask(old)
        assert (tmp_path / f"u{mask:o}.wav").stat().st_mode & 0o777 == mode
    ro = tmp_path / "ro.wav"
    write_audio(ro, x, 16000)
    before = ro.read_bytes()
    ro.chmod(0o444)
    with pytest.raises(WriteError, match="exists and is read-only; use --force to replace it"):
        write_audio(ro, x + 1, 16000)
    assert ro.read_bytes() == before
    allow_replace_readonly(True)
    try:
        write_audio(ro, x + 1, 16000)
    finally:
        allow_replace_readonly(False)
    assert ro.read_bytes() != before


# ---- memory: headers cannot make the runtime allocate without bound ---------------------------------------------

PEAK_MB = 200  # the bound; measured: 92 MB for 10 min of 48 kHz stereo with --stream (ONNX demo model)


def _peak_rss_mb(*argv: str) -> tuple[int, str, float]:
    """Run the CLI in a child process; its exit code, stderr and peak RSS (MB, the child's VmHWM)."""
    import subprocess
    import sys
    from tests.conftest import ROOT
    code = ("import sys\nfrom fqse.cli import main\nfrom runtime.bench import peak_rss_mb\nrc = main(sys.argv[1:])\n"
            "print('PEAK', peak_rss_mb(), file=sys.stderr)\nsys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True)
    peak = [ln for ln in res.stderr.splitlines() if ln.startswith("PEAK ")]
    err = "\n".join(ln for ln in res.stderr.splitlines() if not ln.startswith("PEAK "))
    return res.returncode, err, float(peak[0].split()[1]) if peak else float("nan")


def test_header_with_absurd_rate_is_refused_without_allocating(tmp_path, demo_onnx):
    import soundfile as sf
    src = tmp_path / "one_hz.wav"
    sf.write(src, np.zeros(10000, np.int16), 1, subtype="PCM_16")  # 20 KB; resampled to 16 kHz: 160 M samples
    for extra in ([], ["--stream"]):
        rc, err, peak = _peak_rss_mb("enhance", str(src), "-o", str(tmp_path / "o.wav"), "--model", str(demo_onnx),
                                     *extra)
        assert rc == 2 and err == f"fqse enhance: error: {src}: sample rate 1 Hz in the header; supported " \
                                  "8000..192000 Hz", err
        assert peak < PEAK_MB
    assert not (tmp_path / "o.wav").exists()


@pytest.mark.slow
def test_stream_resamples_ten_minutes_at_48k_in_bounded_memory(tmp_path, demo_onnx):
    import soundfile as sf
    src = tmp_path / "long48.wav"
    rng = np.random.default_rng(0)
    with sf.SoundFile(src, "w", 48000, 1, "PCM_16") as f:  # 10 min: 57.6 MB of PCM (whole-file read: > 1 GB peak)
        for _ in range(600):
            f.write((rng.standard_normal(48000) * 1000).astype(np.int16))
    rc, err, peak = _peak_rss_mb("enhance", str(src), "-o", str(tmp_path / "o.wav"), "--model", str(demo_onnx),
                                 "--stream")
    assert rc == 0, err
    assert peak < PEAK_MB, peak
    assert sf.info(tmp_path / "o.wav").frames == 600 * 16000 and sf.info(tmp_path / "o.wav").samplerate == 16000


def test_streamed_resampling_matches_whole_signal_and_a_sine():
    from runtime.resample import StreamResampler, resample
    for sr_in in (8000, 22050, 44100, 48000):
        t = np.arange(2 * sr_in) / sr_in
        x = 0.5 * np.sin(2 * np.pi * 1000 * t)
        y = resample(x, sr_in, 16000)
        assert len(y) == 32000
        ref = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(32000) / 16000)
        err = y[200:-200] - ref[200:-200]
        snr = 10 * np.log10(np.sum(ref[200:-200] ** 2) / np.sum(err ** 2))
        assert snr > 90, (sr_in, snr)  # measured 97-102 dB (Kaiser beta 8.6, 16 zero crossings)
        r = StreamResampler(sr_in, 16000)
        parts = [r.push(x[i: i + 777]) for i in range(0, len(x), 777)] + [r.flush()]
        assert np.array_equal(np.concatenate(parts), y)  # block size does not change a sample


def test_truncated_wav_warns(tmp_path):
    import soundfile as sf
    from runtime.audio import AudioWarning, read_audio
    sf.write(tmp_path / "t.wav", np.zeros(16000, np.int16), 16000, subtype="PCM_16")
    raw = (tmp_path / "t.wav").read_bytes()
    (tmp_path / "t.wav").write_bytes(raw[: len(raw) // 2])
    with pytest.warns(AudioWarning, match="truncated: the header announces 32000 data bytes, the file holds 15978"):
        x, _ = read_audio(tmp_path / "t.wav", 16000)
    assert len(x) == 7989


# ---- model files: format fqse-3 (fqse-2 still read) and a sha256 seal checked before any native loader -----------------------------

@pytest.mark.parametrize("kind", ["onnx", "tflite"])
def test_every_bit_flip_and_truncation_is_refused(tmp_path, kind, demo_onnx, demo_tflite):
    from runtime.backends import ModelError, load_backend
    from runtime.modelmeta import FORMAT
    good = (demo_onnx if kind == "onnx" else demo_tflite[0]).read_bytes()
    assert f'"format": "{FORMAT}"'.encode() in good
    rng = np.random.default_rng(1)
    p = tmp_path / f"m.{kind}"
    for pos in rng.integers(0, len(good), 25):  # before the seal: 10 of 25 such TFLite copies loaded and ran
        bad = bytearray(good)
        bad[pos] ^= 1 << int(rng.integers(0, 8))
        p.write_bytes(bytes(bad))
        with pytest.raises(ModelError) as err:
            load_backend(p)
        assert "\n" not in str(err.value)
    for cut in (len(good) // 2, len(good) - 100):  # ONNX keeps its metadata last: a cut removes the seal too
        p.write_bytes(good[:cut])
        with pytest.raises(ModelError, match="corrupted or was modified|not a loadable ONNX|corrupt TFLite|"
                                             "without FQSE metadata"):
            load_backend(p)
    p.write_bytes(good)
    assert load_backend(p).meta["format"] == FORMAT


def test_old_or_unsealed_metadata_names_supported_format(tmp_path, demo_onnx):
    from runtime import modelmeta
    from runtime.backends import ModelError, load_backend
    raw = demo_onnx.read_bytes()
    p = tmp_path / "old.onnx"
    p.write_bytes(modelmeta.seal(raw.replace(b'"format": "fqse-3"', b'"format": "fqse-1"')))
    with pytest.raises(ModelError, match=r"model metadata format 'fqse-1'; this runtime reads fqse-2, fqse-3 \(export it"):
        load_backend(p)
    p.write_bytes(raw.replace(b'"stride": 16', b'"stride":  0'))  # metadata edited, then resealed
    p.write_bytes(modelmeta.seal(p.read_bytes()))
    with pytest.raises(ModelError, match=r"FQSE metadata out of range \(stride 0"):
        load_backend(p)


# ---- CLI boundary -----------------------------------------------------------------------------------------------

def test_stream_into_closed_pipe_ends_quietly(demo_onnx):
    import subprocess
    import sys
    from tests.conftest import ROOT
    pcm = (np.random.default_rng(0).standard_normal(16000 * 20) * 1000).astype(np.int16).tobytes()
    proc = subprocess.Popen([sys.executable, "-m", "fqse", "stream", "--model", str(demo_onnx)], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    import threading

    def feed() -> None:
        try:
            proc.stdin.write(pcm)
            proc.stdin.close()
        except BrokenPipeError:
            pass
    feeder = threading.Thread(target=feed)
    feeder.start()
    got = proc.stdout.read(1000)  # `| head -c 1000`
    proc.stdout.close()
    err = proc.stderr.read().decode()
    feeder.join(timeout=60)
    assert proc.wait(timeout=120) == 0 and len(got) == 1000
    # no "[Errno 32] Broken pipe", no traceback: at most the note that a non-step model is not real time
    assert all(ln.startswith("fqse stream: note:") for ln in err.splitlines()), err


def test_internal_error_is_one_line_and_debug_shows_traceback(tmp_path):
    import argparse
    from fqse import boundary

    def bug(a: argparse.Namespace) -> None:
        return 1 / 0  # a real bug

    import contextlib
    import io
    for debug in (False, True):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            if debug:
                with pytest.raises(ZeroDivisionError):
                    boundary._run("x", bug, argparse.Namespace(debug=True))
            else:
                assert boundary._run("x", bug, argparse.Namespace(debug=False)) == 2
        if not debug:
            assert err.getvalue() == ("fqse x: error: internal error: ZeroDivisionError: division by zero (rerun "
                                      "with --debug for the traceback)\n")


@pytest.mark.parametrize("ext, fmt", [(".flac", "FLAC"), (".ogg", "OGG")])
def test_output_format_follows_extension(tmp_path, demo_onnx, ext, fmt):
    import soundfile as sf
    from tests.conftest import SAMPLES
    for extra in ([], ["--stream"]):
        out = tmp_path / f"o{len(extra)}{ext}"
        res = run_fqse("enhance", str(sorted(SAMPLES.glob("*_noisy.wav"))[0]), "-o", str(out), "--model", str(demo_onnx),
                       *extra)
        assert res.returncode == 0, res.stderr
        info = sf.info(out)
        assert info.format == fmt and info.samplerate == 16000 and info.frames == 48000
