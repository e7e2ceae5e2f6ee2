"""Parity of QAT checkpoints on noisy/clean pairs: `python -m conversion.parity_samples CKPT...` exports and converts
each one and prints, per checkpoint, the fake-quant SI-SNR and the worst sample's ONNX and TFLite parity with their
"y1 dropped" floors (a table for comparing training choices, e.g. activation jitter)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from conversion.parity import compare, torch_outputs
from conversion.pipeline import convert_tflite, export_onnx
from runtime import pipeline
from runtime.audio import read_audio, to_int16
from runtime.backends import load_backend
from runtime.files import atomic_write
from runtime.metrics import si_snr
from training.checkpoint import load_model


def on_samples(checkpoint: str | Path, out: str | Path, pairs: list[tuple[Path, Path]]) -> dict[str, Any]:
    """Export and convert a QAT checkpoint, then per noisy/clean pair: SI-SNR of the fake-quant output vs clean,
    and for ONNX and TFLite the combined output's SNR against fake-quant with its "y1 dropped" floor (y1 at its
    zero point) and the share of y1 codes within 1 LSB. Minimum over the pairs in "worst"."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(checkpoint)
    paths = {"onnx": export_onnx(checkpoint, out / "int8.onnx"), "tflite": convert_tflite(checkpoint, out / "int8.tflite")["path"]}
    backends = {k: load_backend(str(p)) for k, p in paths.items()}
    rows = []
    for noisy, clean in pairs:
        pcm = to_int16(read_audio(noisy, model.cfg.sample_rate)[0])
        row: dict[str, Any] = {"sample": Path(noisy).name}
        for k, be in backends.items():
            x = pipeline.pre(pcm, be.meta)
            ref, got = torch_outputs(model, x), be.run(x)
            no_y1 = got.copy()
            no_y1[1] = pipeline.output_qparams(be.meta)[1][1]
            r = compare(ref, got, be.meta)
            row.update({f"{k}_db": r["snr_db"], f"{k}_floor_db": compare(ref, no_y1, be.meta)["snr_db"],
                        f"{k}_y1_within_1lsb": r["within_1lsb"][1]})
            if k == "onnx":
                row["si_snr"] = si_snr(pipeline.enhanced(ref, pcm, be.meta) / 32768.0,
                                       read_audio(clean, model.cfg.sample_rate)[0])
        rows.append(row)
    worst = {k: min(r[k] for r in rows) for k in rows[0] if k != "sample"}
    return {"checkpoint": str(checkpoint), "samples": rows, "worst": worst,
            "mean_si_snr": float(np.mean([r["si_snr"] for r in rows]))}


if __name__ == "__main__":
    import argparse
    from runtime.audio import noisy_clean_pairs
    ap = argparse.ArgumentParser(description="Parity of each QAT checkpoint's ONNX and TFLite models on samples/")
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--out", default="artifacts/parity")
    ap.add_argument("--samples", default="samples")
    a = ap.parse_args()
    print("| checkpoint | fake-quant SI-SNR (mean) | ONNX parity (worst) | its y1-dropped floor | TFLite parity (worst) "
          "| its y1-dropped floor | TFLite y1 within 1 LSB (worst) |\n|---|---:|---:|---:|---:|---:|---:|")
    for ck in a.checkpoints:
        res = on_samples(ck, Path(a.out) / Path(ck).stem, noisy_clean_pairs(a.samples))
        atomic_write(Path(a.out) / Path(ck).stem / "parity.json",
                     lambda tmp, res=res: Path(tmp).write_text(json.dumps(res, indent=1)))
        w = res["worst"]
        print(f"| {ck} | {res['mean_si_snr']:.2f} | {w['onnx_db']:.1f} | {w['onnx_floor_db']:.1f} | {w['tflite_db']:.1f} "
              f"| {w['tflite_floor_db']:.1f} | {100 * w['tflite_y1_within_1lsb']:.1f} % |", flush=True)
