"""`fqse demo`: the whole pipeline on the committed demo checkpoints and the shipped samples.

export int8 ONNX -> convert fully-integer TFLite (+ float TFLite for speed) -> enhance the shipped
noisy samples with the streaming runtime -> parity -> summary.json, wavs, a PNG and a table.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEMO_FQSE = ROOT / "training" / "pretrained" / "demo_fqse_tiny.pt"
DEMO_FLOAT = ROOT / "training" / "pretrained" / "demo_float_tiny.pt"
SAMPLES = ROOT / "samples"


def _plot(noisy: np.ndarray, enhanced: np.ndarray, clean: np.ndarray, sr: int, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from runtime.files import atomic_write
    fig, axes = plt.subplots(3, 2, figsize=(11, 7), sharex="col")
    t = np.arange(len(noisy)) / sr
    for row, (name, x) in enumerate((("noisy", noisy), ("enhanced (TFLite int8, streamed)", enhanced), ("clean", clean))):
        axes[row, 0].plot(t, x, lw=0.4)
        axes[row, 0].set_ylabel(name, fontsize=8)
        axes[row, 0].set_ylim(-1, 1)
        with np.errstate(divide="ignore"):  # digital silence in the clean reference
            axes[row, 1].specgram(x + 1e-9, NFFT=512, Fs=sr, noverlap=384, cmap="magma", vmin=-140)
    axes[2, 0].set_xlabel("time (s)")
    axes[2, 1].set_xlabel("time (s)")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)


def run_demo(out: str | Path = "artifacts/demo") -> dict:
    import torch
    from conversion.pipeline import export_onnx
    from conversion.parity import compare, torch_outputs
    from conversion.pipeline import convert_tflite
    from runtime import pipeline
    from runtime.audio import noisy_clean_pairs, read_audio, to_int16
    from runtime.bench import measure
    from runtime.enhancer import Enhancer
    from runtime.metrics import si_snr
    from training.checkpoint import load_model
    from training.model import enhance

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    print(f"[1/5] export int8 ONNX (QDQ) from {DEMO_FQSE.relative_to(ROOT)}")
    onnx_path = export_onnx(DEMO_FQSE, out / "demo_fqse_int8.onnx")
    print("[2/5] convert to fully-integer TFLite (checked stage by stage), its 16 ms streaming step model, "
          "and float TFLite")
    rep = convert_tflite(DEMO_FQSE, out / "demo_fqse_int8.tflite")
    step_rep = convert_tflite(DEMO_FQSE, out / "demo_fqse_int8_step16ms.tflite", step_frames=16)
    convert_tflite(DEMO_FLOAT, out / "demo_float.tflite", float_model=True)
    print("[3/5] enhance the shipped samples with the streaming runtime (TFLite int8 step model, 16 ms per call)")
    fq, fl = load_model(DEMO_FQSE), load_model(DEMO_FLOAT)
    enh_tfl = Enhancer.from_file(rep["path"])
    enh_step = Enhancer.from_file(step_rep["path"])
    enh_onnx = Enhancer.from_file(onnx_path)
    pairs = noisy_clean_pairs(SAMPLES)
    scores: dict[str, list[float]] = {k: [] for k in ("noisy", "float", "fakequant", "onnx_int8", "tflite_int8")}
    parity: dict[str, list[float]] = {"onnx": [], "tflite": []}
    first = None
    stream_exact: list[bool] = []
    for noisy_p, clean_p in pairs:
        noisy, sr = read_audio(noisy_p, fq.cfg.sample_rate, strict_rate=True)
        clean, _ = read_audio(clean_p, sr, strict_rate=True)
        pcm = to_int16(noisy)
        x = torch.from_numpy(pcm.astype(np.float32) / 32768)[None]
        with torch.no_grad():
            y_float = enhance(fl, x)[0].numpy()
            y_fq = enhance(fq, x)[0].numpy()
        y_tfl = enh_step.enhance_file(noisy_p, out / noisy_p.name.replace("_noisy", "_enhanced"), stream=True,
                                      progress=False) / 32768.0
        stream_exact.append(bool(np.array_equal(np.round(y_tfl * 32768), enh_tfl.enhance(pcm))))
        y_onnx = enh_onnx.enhance(pcm) / 32768.0
        for k, y in (("noisy", noisy), ("float", y_float), ("fakequant", y_fq), ("onnx_int8", y_onnx),
                     ("tflite_int8", y_tfl)):
            scores[k].append(si_snr(y, clean))
        for k, enh in (("onnx", enh_onnx), ("tflite", enh_tfl)):
            xin = pipeline.pre(pcm, enh.meta)
            parity[k].append(compare(torch_outputs(fq, xin), enh.be.run(xin), enh.meta)["snr_db"])
        if first is None:
            first = (noisy, y_tfl, clean, sr)
    print("[4/5] speed (1 thread, offline, 4 s of audio)")
    rtf = {k: measure(str(p), 1, 4.0, False, 16.0)["s_per_s_audio"] for k, p in
           (("tflite_int8", rep["path"]), ("tflite_float", out / "demo_float.tflite"), ("onnx_int8", onnx_path))}
    hops = measure(str(step_rep["path"]), 1, 4.0, True, 16.0)  # streaming: the step model, hop by hop
    print("[5/5] plot and summary")
    _plot(*first, out / "demo.png")
    summary = {f"si_snr_{k}": float(np.mean(v)) for k, v in scores.items()}
    summary.update({f"si_snri_{k}": float(np.mean(np.subtract(v, scores["noisy"]))) for k, v in scores.items()
                    if k != "noisy"})
    summary.update(parity_onnx_db=float(np.min(parity["onnx"])), parity_tflite_db=float(np.min(parity["tflite"])),
                   tflite_fully_integer=bool(rep.get("fully_integer")), qat_scales_kept=bool(rep.get("qat_scales_kept")),
                   tflite_path=str(rep["path"]), tflite_step_path=str(step_rep["path"]), onnx_path=str(onnx_path),
                   streaming_bit_exact=all(stream_exact),
                   rtf_tflite_int8=rtf["tflite_int8"], rtf_tflite_float=rtf["tflite_float"], rtf_onnx_int8=rtf["onnx_int8"],
                   stream_hop_median_ms=hops["hop_median_ms"], stream_hop_p99_ms=hops["hop_p99_ms"],
                   stream_over_budget=hops["over_budget"], n_samples=len(pairs), seconds=round(time.time() - t0, 1))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print()
    print(f"{'model':<26} {'SI-SNR vs clean (dB)':>21} {'SI-SNRi (dB)':>13} {'parity vs fake-quant (dB)':>27}")
    for key, name, par in (("noisy", "noisy input", ""), ("float", "float (torch)", ""),
                           ("fakequant", "FQSE fake-quant (torch)", "reference"),
                           ("onnx_int8", "FQSE ONNX int8", f"{summary['parity_onnx_db']:.1f}"),
                           ("tflite_int8", "FQSE TFLite int8 (stream)", f"{summary['parity_tflite_db']:.1f}")):
        gain = summary[f"si_snr_{key}"] - summary["si_snr_noisy"]
        print(f"{name:<26} {summary[f'si_snr_{key}']:>21.2f} {gain:>13.2f} {par:>27}")
    print(f"TFLite fully integer: {summary['tflite_fully_integer']}, QAT scales kept: {summary['qat_scales_kept']}, "
          f"streamed output bit-exact with offline: {summary['streaming_bit_exact']}")
    print(f"seconds per second of audio (1 thread): TFLite int8 {rtf['tflite_int8']:.4f}, "
          f"TFLite float {rtf['tflite_float']:.4f}, ONNX int8 {rtf['onnx_int8']:.4f}")
    print(f"streaming (TFLite int8 step model, 1 thread, 16 ms hops): median {hops['hop_median_ms']:.2f} ms, "
          f"p99 {hops['hop_p99_ms']:.2f} ms per hop, {100 * hops['over_budget']:.1f} % of hops over 16 ms")
    print(f"wrote {out}/summary.json, demo.png, {len(pairs)} enhanced wavs ({summary['seconds']} s)")
    return summary
