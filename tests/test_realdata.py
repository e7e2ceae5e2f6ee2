"""`fqse data --source debian`: real recordings from Debian packages, split by talker and noise recording."""
from __future__ import annotations

import csv
import os
import sys

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import run_fqse
from training import realdata

SLICE = "fillets-ng-data-cs,asterisk-core-sounds-ru-g722,asterisk-moh-opsound-wav"


def _rows(root, split):
    with open(root / "metadata" / f"mixture_{split}_mix_single.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def real_slice(tmp_path_factory):
    import shutil
    if shutil.which("apt-get") is None or shutil.which("ffmpeg") is None:
        pytest.skip("needs Debian's apt-get and ffmpeg (`make test` installs ffmpeg)")
    d = tmp_path_factory.mktemp("real")
    res = run_fqse("data", "--source", "debian", "--out", str(d / "set"), "--cache", str(d / "cache"),
                   "--packages", SLICE, "--max-clips", "14", "--quiet")
    assert res.returncode == 0, res.stderr
    return d / "set" / "wav16k" / "min"


@pytest.mark.slow
def test_real_slice_layout_exact_mixtures_and_lengths(real_slice):
    for split in ("train", "dev", "test"):
        rows = _rows(real_slice, split)
        assert rows, split
        for r in rows:
            m, sr = sf.read(real_slice / r["mixture_path"], dtype="int16")
            s, _ = sf.read(real_slice / r["source_1_path"], dtype="int16")
            n, _ = sf.read(real_slice / r["noise_path"], dtype="int16")
            assert sr == 16000 and len(m) == int(r["length"])
            assert np.array_equal(m.astype(np.int32), s.astype(np.int32) + n)  # exact in int16
            snr = 10 * np.log10(np.sum(s.astype(float) ** 2) / np.sum(n.astype(float) ** 2))
            assert abs(snr - float(r["snr_db"])) < 0.01
            assert 2.0 <= len(s) / 16000 <= 6.0 + 1e-9  # 2-6 s utterances
            assert np.max(np.abs(s)) < 32767  # no clipped speech


@pytest.mark.slow
def test_real_slice_splits_share_no_talker_and_no_noise_recording(real_slice):
    talkers = {s: {r["talker"] for r in _rows(real_slice, s)} for s in ("train", "dev", "test")}
    assert talkers == {"train": {"fillets-cs-m"}, "dev": {"asterisk-IvrvoiceRU"}, "test": {"fillets-cs-v"}}
    recs = {s: {k for r in _rows(real_slice, s) for k in r["noise_source"].split(";") if ":" in k}
            for s in ("train", "dev", "test")}
    assert all(recs.values())  # recorded noise reaches every split
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        assert not talkers[a] & talkers[b] and not recs[a] & recs[b]
    readme = (real_slice.parent.parent / "README.md").read_text()
    assert "GPL-2+" in readme and "CC-BY-SA-3.0" in readme and "Allison Smith" in readme


def test_missing_apt_is_one_line_error(tmp_path):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable))  # python only: no apt-get, no dpkg-deb
    res = run_fqse("data", "--source", "debian", "--out", str(tmp_path / "d"), "--packages", "fillets-ng-data-cs",
                   "--quiet", env=env)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "apt-get not found" in res.stderr
    assert not (tmp_path / "d").exists()  # nothing half-built


def test_unknown_source_and_package_are_one_line_errors(tmp_path):
    res = run_fqse("data", "--source", "librispeech", "--out", str(tmp_path / "d"))
    assert res.returncode == 2 and "use debian, espeak or debian,espeak" in res.stderr
    res = run_fqse("data", "--source", "debian", "--out", str(tmp_path / "d"), "--packages", "vctk")
    assert res.returncode == 2 and "unknown package 'vctk'" in res.stderr


def test_clipping_and_trim():
    t = np.arange(32000) / 16000
    tone = 0.5 * np.sin(2 * np.pi * 220 * t)
    assert not realdata.is_clipped(tone)
    assert realdata.is_clipped(np.clip(3 * tone, -1, 1))  # a third of the samples at full scale
    padded = np.concatenate([np.zeros(16000), tone, 1e-6 * np.ones(24000)])
    trimmed = realdata.trim(padded)
    assert 32000 <= len(trimmed) <= 32000 + 2 * 800 + 320  # the tone plus at most the 50 ms margins


def test_utterances_are_2_to_6_s():
    rng = np.random.default_rng(0)
    clips = [0.3 * np.sin(np.arange(int(d * 16000)) * 0.05) for d in rng.uniform(0.5, 9.0, size=40)]
    utts = realdata.utterances(clips, rng)
    lengths = np.array([len(u) for u in utts]) / 16000
    assert len(utts) >= 10 and lengths.min() >= 2.0 and lengths.max() <= 6.0


def test_espeak_share_needs_both_sources_and_a_non_negative_value(tmp_path):
    res = run_fqse("data", "--source", "debian", "--espeak-share", "1", "--out", str(tmp_path / "d"))
    assert res.returncode == 2 and "use it with --source debian,espeak" in res.stderr
    res = run_fqse("data", "--source", "debian,espeak", "--espeak-share", "-0.5", "--out", str(tmp_path / "d"))
    assert res.returncode == 2 and "must be at least 0" in res.stderr
    assert not (tmp_path / "d").exists()
