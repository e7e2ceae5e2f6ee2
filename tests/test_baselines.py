"""Baseline enhancers (fqse/baselines.py): GCC-PHAT delay, each model's delay, alignment, length and gain.
Skipped where the `baselines` extra is not installed (`make baselines`), except the error that says so."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from fqse import baselines as bl
from runtime.metrics import si_snr
from tests.conftest import SAMPLES, run_fqse
from training.data import remix

needs_extra = pytest.mark.skipif(bool(bl.missing()), reason="needs the `baselines` extra (`make baselines`)")
# Constant delays in 16 kHz samples, measured here by GCC-PHAT on 6 espeak pairs, 4 real-speech test mixtures
# and 3 white-noise mixtures alike: RNNoise 2 frames of 480 at 48 kHz, DTLN block - hop = 512 - 128,
# DeepFilterNet3 3 frames of 480 at 48 kHz; NSNet2's STFT drops its own delay.
DELAYS = {"RNNoise": 320, "NSNet2": 0, "DTLN": 384, "DeepFilterNet3": 480}


def _clean() -> np.ndarray:
    return sf.read(sorted(SAMPLES.glob("*_clean.wav"))[0], dtype="float32")[0]


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    """Recorded-style pair: a shipped clean utterance with white noise at 0 dB SNR."""
    clean = _clean()
    noise = np.random.default_rng(0).standard_normal(len(clean)).astype(np.float32)
    mix, clean = remix(clean, noise, 0.0)
    return mix.astype(np.float32), clean.astype(np.float32)


@pytest.mark.parametrize("shift", [0, 1, 37, 320, 481, 2399])
def test_gcc_phat_recovers_a_known_shift_exactly(shift):
    x = _clean().astype(np.float64)
    late = np.concatenate([np.zeros(shift), x])[: len(x)]
    early = np.concatenate([x[shift:], np.zeros(shift)])
    assert bl.gcc_phat(late, x, 2400) == shift
    assert bl.gcc_phat(early, x, 2400) == -shift


def test_gcc_phat_finds_the_shift_through_noise_and_a_low_pass():
    x = _clean().astype(np.float64)
    y = np.convolve(np.concatenate([np.zeros(200), x])[: len(x)], np.ones(4) / 4)[: len(x)]  # 200 + 1.5 samples
    y += 0.3 * np.std(y) * np.random.default_rng(1).standard_normal(len(y))
    assert bl.gcc_phat(y, x, 2400) in (201, 202)


@needs_extra
@pytest.mark.parametrize("name", list(bl.ADAPTERS))
def test_baseline_delay_length_alignment_and_gain(name, pair):
    mix, clean = pair
    b = bl.ADAPTERS[name]()
    assert bl.estimate_delay(b.raw, [pair]) == [DELAYS[name]]
    b.delay = DELAYS[name]
    out = b(mix)
    assert out.shape == mix.shape and out.dtype == np.float32
    assert len(b(mix[:12345])) == 12345  # any length, not only whole frames
    assert bl.gcc_phat(out.astype(np.float64), clean.astype(np.float64), 2400) == 0  # delay removed
    # SI-SNRi at 0 dB white noise, measured on three shipped clean utterances: RNNoise 8.2-8.7, NSNet2 6.9-8.2,
    # DTLN 8.0-9.1, DeepFilterNet3 9.5-10.6 dB (left delayed, the three late ones score below -30 dB).
    assert si_snr(out, clean) - si_snr(mix, clean) > 5.0


@needs_extra
def test_load_baselines_sets_each_delay(pair):
    got = {b.name: b.delay for b in bl.load_baselines([pair])}
    assert got == DELAYS


@needs_extra
def test_dnsmos_rates_clean_speech_above_the_noisy_mixture(pair):
    mix, clean = pair
    noisy, ref = bl.dnsmos(mix), bl.dnsmos(clean)
    assert set(ref) == {"dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl"}
    # OVRL measured on three utterances: noisy (0 dB white) 1.1-1.6, clean 2.4-3.0
    assert ref["dnsmos_ovrl"] - noisy["dnsmos_ovrl"] > 0.8
    assert ref["dnsmos_bak"] > noisy["dnsmos_bak"]


@pytest.mark.skipif(not bl.missing(), reason="the extra is installed: its absence cannot be shown here")
def test_report_without_the_extra_says_make_baselines_in_one_line():
    res = run_fqse("report", "-y", "no.yml", "--checkpoints", "no.pt", "--baselines")
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "make baselines" in res.stderr


@needs_extra
@pytest.mark.slow
def test_report_with_baselines_table_delays_and_plot(tmp_path, tiny_data):
    import json

    import yaml
    from tests.conftest import ROOT
    conf = tmp_path / "c.yml"
    conf.write_text(yaml.safe_dump({"base": str(ROOT / "configs" / "tiny_float.yml"),
                                    "dataset": {"test_dir": str(tiny_data / "test"), "valid_dir": str(tiny_data / "dev")}}))
    pre = ROOT / "training" / "pretrained"
    args = ["report", "-y", str(conf), "--checkpoints", str(pre / "demo_float_tiny.pt"), str(pre / "demo_fqse_tiny.pt"),
            "--limit", "2", "--baselines", "--score-cache", str(tmp_path / "cache")]
    res = run_fqse(*args, "--out", str(tmp_path / "r"))
    assert res.returncode == 0, res.stderr[-1500:]
    systems = json.loads((tmp_path / "r" / "report.json").read_text())["systems"]
    # a second report reuses every baseline score (none computed) and gives the same baseline rows
    res = run_fqse(*args, "--out", str(tmp_path / "r2"))
    assert res.returncode == 0, res.stderr[-1500:]
    assert all(f"{n}: " in res.stdout and "scores from" in res.stdout for n in DELAYS)
    assert res.stdout.count(", 0 computed") == len(DELAYS)
    again = json.loads((tmp_path / "r2" / "report.json").read_text())["systems"]
    drop = ("s_per_s_audio_1thread",)  # speed is measured again
    assert all({k: v for k, v in again[f"{n} (baseline)"].items() if k not in drop}
               == {k: v for k, v in systems[f"{n} (baseline)"].items() if k not in drop} for n in DELAYS)
    assert {n: systems[f"{n} (baseline)"]["delay_samples"] for n in DELAYS} == DELAYS
    for r in systems.values():  # every system, the project's and the baselines, has DNSMOS on the same mixtures
        assert 1.0 <= r["dnsmos_ovrl"] <= 5.0
    md = (tmp_path / "r" / "report.md").read_text()
    assert all(f"| {n} (baseline) |" in md for n in DELAYS) and "GCC-PHAT" in md
    assert (tmp_path / "r" / "si_snri_vs_input_snr.png").stat().st_size > 10_000
