"""`fqse report`: every checkpoint and every deployed artifact of the last (FQSE) one on a test split:
quality table (SI-SNR, SI-SNRi, SDR, STOI, PESQ-WB), SI-SNRi per talker, sizes, speeds, scores per input-SNR bin
(each test mixture re-mixed at that SNR) against the noisy input, and the signature plots (output SI-SNR and
SI-SNRi against input SNR) in report.md.
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


def run_report(yaml: str, checkpoints: list[str], out: str | Path, limit: int | None = None) -> dict:
    from conversion.onnx_export import export_onnx
    from conversion.tflite_export import ConversionError, convert_tflite
    from runtime.bench import measure
    from runtime.enhancer import Enhancer
    from runtime.files import atomic_write
    from training.checkpoint import load_model
    from training.config import load_config
    from training.evaluate import load_split, plot_curves, quality, snr_curve, torch_enhancer

    conf = load_config(yaml)
    rows = load_split(conf["dataset"]["test_dir"], limit)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    systems: dict[str, dict] = {}
    curves: dict[str, dict] = {}
    models = {}
    for ck in checkpoints:
        model = load_model(ck)
        name = _label(model.cfg)
        models[name] = (ck, model)
        fn = torch_enhancer(model)
        systems[name] = {"checkpoint": str(ck), **quality(fn, rows, model.cfg.sample_rate, desc=name, group="talker")}
        curves[name] = snr_curve(fn, rows, model.cfg.sample_rate, desc=name, full=True)
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
        systems[label] = {"model": str(path), **quality(fn, rows, enh.sr, desc=label, group="talker"),
                          "size_kb": path.stat().st_size / 1024,
                          "s_per_s_audio_1thread": measure(str(path), 1, 4.0, False, 16.0)["s_per_s_audio"]}
        curves[label] = snr_curve(fn, rows, enh.sr, desc=label, full=True)
    n = len(rows)
    plot_curves(curves, out / "si_snr_vs_input_snr.png", title=f"output SI-SNR vs input SNR ({n} test mixtures)")
    plot_curves(curves, out / "si_snri_vs_input_snr.png", title=f"SI-SNRi by input SNR ({n} test mixtures)",
                key="si_snri")
    has_pesq = all("pesq" in r for r in systems.values())
    lines = [f"# FQSE report\n", f"Config `{yaml}`, test split `{conf['dataset']['test_dir']}` ({len(rows)} mixtures).\n",
             "| system | SI-SNR | SI-SNRi | SDR | STOI |" + (" PESQ |" if has_pesq else "") + " size (KB) | s per s audio (1 thread) |",
             "|---|---:|---:|---:|---:|" + ("---:|" if has_pesq else "") + "---:|---:|"]
    for name, r in systems.items():
        size = f"{r['size_kb']:.0f}" if "size_kb" in r else ""
        speed = f"{r['s_per_s_audio_1thread']:.4f}" if "s_per_s_audio_1thread" in r else ""
        pesq = f" {r['pesq']:.2f} |" if has_pesq else ""
        lines.append(f"| {name} | {r['si_snr']:.2f} | {r['si_snri']:.2f} | {r['sdr']:.2f} | {r['stoi']:.3f} |{pesq} {size} | {speed} |")
    lines += _per_talker(systems)
    snrs = sorted(next(iter(curves.values())))
    for key, what in (("si_snr", "Output SI-SNR (dB)"), ("si_snri", "SI-SNRi (dB)"), ("stoi", "STOI"),
                      ("pesq", "PESQ-WB")):
        if not all(key in c[s] for c in curves.values() for s in snrs):
            continue
        lines += ["", f"{what} by input SNR (each test mixture re-mixed at that SNR):", "",
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


def _per_talker(systems: dict[str, dict]) -> list[str]:
    """Markdown table: SI-SNRi of each system on each test talker."""
    talkers = sorted({t for r in systems.values() for t in r.get("si_snri_by_talker", {})})
    if not talkers:
        return []
    lines = ["", "SI-SNRi (dB) per test talker:", "", "| system | " + " | ".join(talkers) + " |",
             "|---|" + "---:|" * len(talkers)]
    for name, r in systems.items():
        by = r.get("si_snri_by_talker", {})
        lines.append(f"| {name} | " + " | ".join(f"{by[t]:.2f}" if t in by else "" for t in talkers) + " |")
    return lines
