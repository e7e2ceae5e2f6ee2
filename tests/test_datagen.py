"""`fqse data`: LibriMix layout, exact mixtures, recorded SNRs, disjoint splits, clear errors."""
from __future__ import annotations

import csv
import os
import sys

import numpy as np
import soundfile as sf

from tests.conftest import run_fqse


def _rows(root, split):
    with open(root / "metadata" / f"mixture_{split}_mix_single.csv") as f:
        return list(csv.DictReader(f))


def test_layout_and_columns(tiny_data):
    for split in ("train", "dev", "test"):
        for sub in ("mix_single", "s1", "noise"):
            assert any((tiny_data / split / sub).glob("*.wav"))
        rows = _rows(tiny_data, split)
        assert {"mixture_ID", "mixture_path", "source_1_path", "noise_path", "length"} <= set(rows[0])


def test_mixture_is_clean_plus_noise_at_recorded_snr(tiny_data):
    for r in _rows(tiny_data, "test") + _rows(tiny_data, "train"):
        m, sr = sf.read(tiny_data / r["mixture_path"], dtype="int16")
        s, _ = sf.read(tiny_data / r["source_1_path"], dtype="int16")
        n, _ = sf.read(tiny_data / r["noise_path"], dtype="int16")
        assert sr == 16000 and len(m) == int(r["length"])
        assert np.max(np.abs(m.astype(np.int32) - s - n)) <= 1  # within int16 rounding
        snr = 10 * np.log10(np.sum(s.astype(float) ** 2) / np.sum(n.astype(float) ** 2))
        assert abs(snr - float(r["snr_db"])) < 0.01


def test_splits_share_no_voice_and_no_text(tiny_data):
    voices = {s: {r["voice"] for r in _rows(tiny_data, s)} for s in ("train", "dev", "test")}
    texts = {s: {r["text"] for r in _rows(tiny_data, s)} for s in ("train", "dev", "test")}
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        assert not voices[a] & voices[b]
        assert not texts[a] & texts[b]
    assert len({r["noise_type"] for r in _rows(tiny_data, "train")}) >= 5


def test_deterministic(tmp_path):
    from training.datagen import generate
    a = generate(tmp_path / "a", "tiny", seed=1, show_progress=False)
    b = generate(tmp_path / "b", "tiny", seed=1, show_progress=False)
    f = "test/mix_single/test_00001.wav"
    assert np.array_equal(sf.read(a / f)[0], sf.read(b / f)[0])


def test_missing_generator_is_one_line_error(tmp_path):
    env = dict(os.environ, PATH=os.path.dirname(sys.executable))  # python only: no espeak-ng on PATH
    res = run_fqse("data", "--preset", "tiny", "--out", str(tmp_path / "d"), env=env)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "espeak-ng not found" in res.stderr


def test_unwritable_folder_is_one_line_error(tmp_path):
    ro = tmp_path / "ro"
    ro.write_text("a file, not a folder")
    res = run_fqse("data", "--preset", "tiny", "--out", str(ro))
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "cannot write" in res.stderr


def test_rerun_into_non_empty_folder_is_refused_then_replaced_whole(tmp_path):
    from training.datagen import generate
    root = generate(tmp_path / "d", "tiny", seed=1, show_progress=False)
    stale = root / "train" / "s1" / "stale.wav"
    stale.write_bytes(b"x")
    res = run_fqse("data", "--preset", "tiny", "--seed", "2", "--out", str(tmp_path / "d"))
    assert res.returncode == 2 and "not empty" in res.stderr and "--overwrite" in res.stderr
    assert stale.exists()  # nothing touched
    res = run_fqse("data", "--preset", "tiny", "--seed", "2", "--out", str(tmp_path / "d"), "--overwrite", "--quiet")
    assert res.returncode == 0, res.stderr
    assert not stale.exists()  # the old set was replaced whole, not merged
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no staging folder left behind
