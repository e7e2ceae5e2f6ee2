"""`fqse eval` and `fqse report` on a generated test split (held-out voices and texts)."""
from __future__ import annotations

import json
import shutil

import yaml

from tests.conftest import ROOT, run_fqse
from training.evaluate import load_split

PRE = ROOT / "training" / "pretrained"


def _config(tmp_path, data):
    conf = yaml.safe_load((ROOT / "configs" / "tiny_fqse.yml").read_text())
    conf["base"] = str(ROOT / "configs" / "tiny_float.yml")
    conf["dataset"] = {"test_dir": str(data / "test"), "augmentation": {"enabled": True}}
    p = tmp_path / "c.yml"
    p.write_text(yaml.safe_dump(conf))
    return p


def test_eval_metrics_and_curve(tmp_path, tiny_data):
    conf = _config(tmp_path, tiny_data)
    res = run_fqse("eval", "-y", str(conf), "--checkpoint", str(PRE / "demo_fqse_tiny.pt"), "--compare",
                   str(PRE / "demo_float_tiny.pt"), "--json", str(tmp_path / "e.json"), "--plot", str(tmp_path / "c.png"))
    assert res.returncode == 0, res.stderr[-1500:]
    out = json.loads((tmp_path / "e.json").read_text())
    fq = out["pretrained/demo_fqse_tiny.pt"]
    # the real-speech demo model on the generated espeak set: +2.81 dB measured (the base model +2.86); a broken eval (unaligned or
    # swapped signals) gives <= 0
    assert fq["si_snri"] > 1.5 and 0.5 < fq["stoi"] <= 1.0
    assert set(fq["curve"]) == set(fq["curve_si_snri"]) == {str(float(s)) for s in (-6, -3, 0, 3, 6, 9, 12, 15, 18, 24, 30)}
    # SI-SNRi falls as the input gets cleaner (real test split: +6.4 dB at -6 dB, -12.4 at +30), while the
    # output SI-SNR rises: the two curves are not the same numbers
    assert fq["curve_si_snri"]["-6.0"] > fq["curve_si_snri"]["30.0"] + 5 and fq["curve"]["30.0"] > fq["curve"]["-6.0"]
    assert (tmp_path / "c.png").stat().st_size > 10_000


def test_eval_split_dev_scores_the_dev_split(tmp_path, tiny_data):
    """--split dev reads dataset.valid_dir (it was a KeyError); a split the config does not set is a one-line error."""
    conf = _config(tmp_path, tiny_data)
    c = yaml.safe_load(conf.read_text())
    c["dataset"]["valid_dir"] = None
    conf.write_text(yaml.safe_dump(c))
    res = run_fqse("eval", "-y", str(conf), "--checkpoint", str(PRE / "demo_fqse_tiny.pt"), "--split", "dev")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "dataset.valid_dir is not set" in res.stderr
    c["dataset"]["valid_dir"] = str(tiny_data / "dev")
    conf.write_text(yaml.safe_dump(c))
    out = {}
    for split in ("dev", "test"):
        res = run_fqse("eval", "-y", str(conf), "--checkpoint", str(PRE / "demo_fqse_tiny.pt"), "--split", split,
                       "--limit", "3", "--json", str(tmp_path / f"{split}.json"))
        assert res.returncode == 0, res.stderr[-1500:]
        out[split] = json.loads((tmp_path / f"{split}.json").read_text())["pretrained/demo_fqse_tiny.pt"]["si_snr"]
    assert out["dev"] != out["test"]  # different mixtures were scored


def test_segmented_eval_close_to_whole(tmp_path, tiny_data):
    conf = _config(tmp_path, tiny_data)
    whole = run_fqse("eval", "-y", str(conf), "--checkpoint", str(PRE / "demo_fqse_tiny.pt"), "--json", str(tmp_path / "w.json"))
    seg = run_fqse("eval", "-y", str(conf), "--checkpoint", str(PRE / "demo_fqse_tiny.pt"), "--segment", "1.0",
                   "--json", str(tmp_path / "s.json"))
    assert whole.returncode == 0 and seg.returncode == 0, seg.stderr[-1500:]
    w = json.loads((tmp_path / "w.json").read_text())["pretrained/demo_fqse_tiny.pt"]["si_snr"]
    s = json.loads((tmp_path / "s.json").read_text())["pretrained/demo_fqse_tiny.pt"]["si_snr"]
    assert abs(w - s) < 1.0


def test_report_table_and_plot(tmp_path, tiny_data):
    conf = _config(tmp_path, tiny_data)
    shutil.copy(PRE / "demo_fqse_tiny.pt", tmp_path / "other.pt")  # a second checkpoint of the same kind
    res = run_fqse("report", "-y", str(conf), "--checkpoints", str(PRE / "demo_float_tiny.pt"), str(tmp_path / "other.pt"),
                   str(PRE / "demo_fqse_tiny.pt"), "--out", str(tmp_path / "r"), "--curve-limit", "1")
    assert res.returncode == 0, res.stderr[-1500:]
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    names = set(rep["systems"])
    fq_name = "FQSE 8-bit fake-quant (demo_fqse_tiny)"  # two of a kind are named by file, none is dropped
    assert {"float", "FQSE 8-bit fake-quant (other)", fq_name, "FQSE ONNX int8", "FQSE TFLite int8"} <= names
    fq, tfl = rep["systems"][fq_name], rep["systems"]["FQSE TFLite int8"]
    assert abs(fq["si_snr"] - tfl["si_snr"]) < 0.3  # the deployed model keeps the quality
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| FQSE TFLite int8 |" in md
    # the by-SNR sweep runs on the --curve-limit subset, the table on every mixture; SI-SNRi per noise kind
    assert "mixtures; the by-SNR tables re-mix 1 of them" in md
    kinds = {r["noise_type"] for r in load_split(str(tiny_data / "test"))}
    by_kind = rep["systems"]["FQSE TFLite int8"]["si_snri_by_noise_type"]
    assert set(by_kind) == kinds and "SI-SNRi (dB) per noise kind" in md
    assert (tmp_path / "r" / "si_snr_vs_input_snr.png").exists()


def test_transparency_tells_distortion_of_speech_from_noise_in_the_reference():
    """training.transparency.loud_share: error that sits in the pauses (a noisy reference) scores near 0, error
    that follows the speech (the model distorting it) near 1; an error share computed over the wrong frames or
    without removing the scaled reference fails one of the two."""
    import numpy as np

    from training.transparency import FRAME, loud_share
    rng = np.random.default_rng(0)
    env = np.repeat(np.tile([1.0, 0.01], 20), FRAME)  # loud and quiet frames alternate
    ref = rng.standard_normal(len(env)) * env
    pauses = rng.standard_normal(len(env)) * 0.05 * (env < 0.5)
    assert loud_share(1.3 * ref + pauses, ref) < 0.05
    assert loud_share(ref + 0.1 * rng.standard_normal(len(env)) * env, ref) > 0.95


def test_score_cache_reuses_scores_only_for_the_same_system_and_input(tmp_path, tiny_data):
    """A second report takes a baseline's scores from the cache without running it; another system id, or an
    input one sample different, is computed afresh; a torn cache file is ignored, not trusted."""
    import numpy as np

    from training.evaluate import ScoreCache, quality, snr_curve
    rows = load_split(str(tiny_data / "test"))
    calls = []

    def damp(x):  # a fixed "enhancer": deterministic, so its scores may be cached
        calls.append(len(x))
        return 0.5 * x + 0.01 * np.sin(np.arange(len(x)))

    first = ScoreCache(tmp_path, "damp|1")
    q1 = quality(damp, rows, 16000, cache=first)
    c1 = snr_curve(damp, rows[:1], 16000, snrs=(0, 10), cache=first)
    first.save()
    n = len(calls)
    assert n == len(rows) + 2 and first.misses == n and first.hits == 0
    again = ScoreCache(tmp_path, "damp|1")
    assert quality(damp, rows, 16000, cache=again) == q1 and snr_curve(damp, rows[:1], 16000, snrs=(0, 10),
                                                                         cache=again) == c1
    assert len(calls) == n and again.hits == n  # nothing ran
    other = ScoreCache(tmp_path, "damp|2")
    quality(damp, rows[:1], 16000, cache=other)
    assert other.misses == 1 and len(calls) == n + 1
    mix = np.zeros(1600, np.float32)
    shifted = mix.copy()
    shifted[7] = 1e-4
    clean = np.ones(1600, np.float32)
    assert again.key(mix, clean, 16000, (True, False)) != again.key(shifted, clean, 16000, (True, False))
    again.path.write_text('{"scores": {"x"')  # torn
    assert ScoreCache(tmp_path, "damp|1").entries == {}
