"""`fqse eval`: quality on a test split and the paper's curve (output SI-SNR against input SNR)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from runtime.files import atomic_write
from runtime.metrics import si_snr, snr
from training.checkpoint import load_model
from training.config import ConfigError, load_config, model_config
from training.data import read_rows, remix
from training.metrics import stoi
from training.model import ConvTasNet, enhance

Enhance = Callable[[np.ndarray], np.ndarray]  # float waveform -> float waveform
CURVE_SNRS = (-6, -3, 0, 3, 6, 9, 12, 15, 18, 24, 30)  # the paper's range, and up to near-clean input


def torch_enhancer(model: ConvTasNet) -> Enhance:
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return enhance(model.eval(), torch.from_numpy(np.asarray(x, np.float32))[None])[0].numpy()
    return run


def segmented(fn: Enhance, seg: int) -> Enhance:
    """Run fn on 50 %-overlapping segments of `seg` samples, triangular weights, overlap-add (the
    reference implementation's evaluation of long files)."""
    def run(x: np.ndarray) -> np.ndarray:
        if len(x) <= seg:
            return fn(x)
        hop, win = seg // 2, np.bartlett(seg + 2)[1:-1]
        out, wsum = np.zeros(len(x)), np.zeros(len(x))
        for start in range(0, len(x) - hop, hop):
            part = x[start: start + seg]
            out[start: start + len(part)] += fn(part) * win[: len(part)]
            wsum[start: start + len(part)] += win[: len(part)]
        return (out / np.maximum(wsum, 1e-9)).astype(np.float32)
    return run


def load_split(split_dir: str, limit: int | None = None) -> list[dict]:
    """The split's rows; with `limit`, that many spread evenly over the split (as training's `max_valid`), so a
    subset still holds every talker and noise kind rather than the first talker's files."""
    return spread(read_rows(split_dir), limit)


def spread(rows: list, n: int | None) -> list:
    """`n` rows spread evenly over `rows` (all of them when n is None or not smaller)."""
    if not n or n >= len(rows):
        return rows
    return [rows[i] for i in np.linspace(0, len(rows) - 1, n).astype(int)]


def _read(path: str) -> np.ndarray:
    return sf.read(path, dtype="float32")[0]


def _pesq_fn():
    """Wide-band PESQ where the (optional, compiled) `pesq` package is installed, else None."""
    try:
        from pesq import pesq as wb_pesq
    except ImportError:
        return None
    return lambda est, clean, sr: float(wb_pesq(sr, clean, est, "wb"))


def score(est: np.ndarray, clean: np.ndarray, mix: np.ndarray, sr: int, pesq_fn=None) -> dict[str, float]:
    """One utterance: SI-SNR, SI-SNRi, SDR, STOI (and PESQ-WB with `pesq_fn`) of `est` against `clean`."""
    s = si_snr(est, clean)
    out = {"si_snr": s, "si_snri": s - si_snr(mix, clean), "sdr": snr(est, clean), "stoi": stoi(est, clean, sr)}
    if pesq_fn is not None:
        out["pesq"] = pesq_fn(est, clean, sr)
    return out


def _mean(scores: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([d[k] for d in scores])) for k in scores[0]}


class ScoreCache:
    """The scores of one deterministic system (a pretrained baseline) per input, kept in a JSON file, so another
    `fqse report` on the same mixtures neither runs nor re-scores it. The key holds the system's id, the code
    that runs and scores it (`_scoring_version`), which scores were asked for and the input's bytes: a changed
    model, adapter, metric or mixture is a miss, never a stale hit."""

    def __init__(self, folder: str | Path, system_id: str, fresh: bool = False):
        self.system_id = f"{system_id}|{_scoring_version()}"
        self.path = Path(folder) / (hashlib.sha1(self.system_id.encode()).hexdigest()[:16] + ".json")
        self.entries: dict[str, dict] = {}
        if self.path.exists() and not fresh:
            try:
                self.entries = json.loads(self.path.read_text())["scores"]
            except (ValueError, KeyError, TypeError):  # a torn or foreign file: start afresh
                self.entries = {}
        self.hits = self.misses = 0

    def key(self, mix: np.ndarray, clean: np.ndarray, sr: int, kinds: tuple[bool, bool]) -> str:
        h = hashlib.sha1(f"{sr}|{kinds}".encode())
        for a in (mix, clean):
            h.update(np.ascontiguousarray(a, np.float32).tobytes())
        return h.hexdigest()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps({"system": self.system_id, "scores": self.entries})
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(data))


def _scoring_version() -> str:
    """What the cached scores depend on besides the system: the code that scores (metrics, `score`, DNSMOS), the
    baselines' adapters, and the metric packages' versions."""
    from importlib.metadata import PackageNotFoundError, version
    h = hashlib.sha1()
    for mod in ("runtime/metrics.py", "training/metrics.py", "training/evaluate.py", "fqse/baselines.py"):
        h.update((Path(__file__).resolve().parent.parent / mod).read_bytes())
    for pkg in ("pesq", "speechmos"):
        try:
            h.update(f"{pkg}={version(pkg)}".encode())
        except PackageNotFoundError:
            h.update(f"{pkg}=none".encode())
    return h.hexdigest()[:12]


def _score_one(fn: Enhance, mix: np.ndarray, clean: np.ndarray, sr: int, pesq_fn, mos_fn,
               cache: ScoreCache | None) -> dict[str, float]:
    """`score` of fn's output (and DNSMOS with `mos_fn`), from `cache` where it holds this input."""
    key = cache.key(mix, clean, sr, (pesq_fn is not None, mos_fn is not None)) if cache else None
    if key is not None and key in cache.entries:
        cache.hits += 1
        return dict(cache.entries[key])
    est = fn(mix)
    d = score(est, clean, mix, sr, pesq_fn)
    if mos_fn is not None and (mos := mos_fn(est)) is not None:
        d.update(mos)
    if key is not None:
        cache.misses += 1
        cache.entries[key] = dict(d)
    return d


GROUPS = ("talker", "noise_type")  # CSV columns scored separately (`fqse data` writes them)


def quality(fn: Enhance, rows: list[dict], sr: int, desc: str = "eval", groups: tuple[str, ...] = GROUPS,
            dnsmos: bool = False, cache: ScoreCache | None = None) -> dict:
    """Mean SI-SNR, SI-SNRi, SDR, STOI (and PESQ-WB) over the rows (whole utterances); for each of `groups` (CSV
    columns such as "talker") the rows have, also the mean SI-SNRi per value under `si_snri_by_<group>`; with `dnsmos`,
    DNSMOS SIG/BAK/OVRL of the output where `speechmos` is installed (fqse.baselines.dnsmos). With `cache`, an
    input scored before by the same system is not run again."""
    pesq_fn = _pesq_fn()
    mos_fn = None
    if dnsmos:
        from fqse.baselines import dnsmos as mos_fn
    scores = [_score_one(fn, _read(r["mixture_path"]), _read(r["source_1_path"]), sr, pesq_fn, mos_fn, cache)
              for r in tqdm(rows, desc=desc, leave=False)]
    out: dict = _mean(scores)
    for group in groups:
        if all(r.get(group) for r in rows):
            keys = [r[group] for r in rows]
            out[f"si_snri_by_{group}"] = {g: float(np.mean([d["si_snri"] for k, d in zip(keys, scores) if k == g]))
                                          for g in sorted(set(keys))}
    return out


def snr_curve(fn: Enhance, rows: list[dict], sr: int, snrs=CURVE_SNRS, desc: str = "curve",
              full: bool = False, cache: ScoreCache | None = None) -> dict[float, dict[str, float]]:
    """Each test utterance re-mixed from its clean speech and noise at each input SNR: the mean scores per input
    SNR (SI-SNR, SI-SNRi, SDR, STOI; with `full` also PESQ-WB, and the noisy input's STOI/PESQ as `*_noisy`)."""
    pesq_fn = _pesq_fn() if full else None
    out = {}
    for target in tqdm(snrs, desc=desc, leave=False):
        scores = []
        for r in rows:
            mix, clean = remix(_read(r["source_1_path"]), _read(r["noise_path"]), target)
            d = _score_one(fn, mix, clean, sr, pesq_fn, None, cache)
            if full:
                d.update({f"{k}_noisy": v for k, v in score(mix, clean, mix, sr, pesq_fn).items()
                          if k in ("stoi", "pesq")})
            scores.append(d)
        out[float(target)] = _mean(scores)
    return out


def plot_curves(curves: dict[str, dict[float, dict[str, float]]], path: str | Path, title: str = "",
                key: str = "si_snr") -> None:
    """The signature plot: output SI-SNR (or another score, `key`) against input SNR, one line per model."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, c in curves.items():
        xs = sorted(c)
        ax.plot(xs, [c[x][key] for x in xs], marker="o", label=name)
    xs = sorted(next(iter(curves.values())))
    if key in ("si_snr", "si_snri"):  # what the unprocessed input scores
        ax.plot(xs, xs if key == "si_snr" else [0] * len(xs), ls=":", color="gray", label="input (no processing)")
    ax.set_xlabel("input SNR (dB)")
    ax.set_ylabel({"si_snr": "output SI-SNR (dB)", "si_snri": "SI-SNR improvement (dB)"}.get(key, key))
    ax.set_title(title or "SI-SNR vs input SNR")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def run_eval(yaml: str, checkpoint: str, compare: list[str], json_out: str | None, plot: str | None,
             split: str = "test_dir", limit: int | None = None, segment: float | None = None) -> dict:
    conf = load_config(yaml)
    cfg = model_config(conf)
    if not conf["dataset"].get(split):
        raise ConfigError(f"{yaml}: dataset.{split} is not set")
    rows = load_split(conf["dataset"][split], limit)
    results = {}
    curves = {}
    for i, ck in enumerate([checkpoint, *compare]):
        model = load_model(ck, cfg if i == 0 else None)
        name = Path(ck).parent.name + "/" + Path(ck).name
        fn = torch_enhancer(model)
        if segment:
            fn = segmented(fn, int(segment * cfg.sample_rate))
        results[name] = quality(fn, rows, cfg.sample_rate, desc=name)
        if plot:
            curves[name] = snr_curve(fn, rows, cfg.sample_rate, desc=name)
            results[name]["curve"] = {s: c["si_snr"] for s, c in curves[name].items()}
            results[name]["curve_si_snri"] = {s: c["si_snri"] for s, c in curves[name].items()}
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in results[name].items() if isinstance(v, float)))
        if plot:
            print(f"{name}: SI-SNRi by input SNR " + ", ".join(f"{s:+g} dB {v:+.2f}"
                                                           for s, v in results[name]["curve_si_snri"].items()))
    if plot:
        plot_curves(curves, plot)
        print(f"wrote {plot}")
    if json_out:
        atomic_write(json_out, lambda tmp: Path(tmp).write_text(json.dumps(results, indent=1)))
    return results
