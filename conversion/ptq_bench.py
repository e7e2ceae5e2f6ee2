"""PTQ figures: a float checkpoint quantized by each range method, SI-SNR against clean speech and SNR
against the float model on the shipped noisy/clean samples (the README's PTQ table).

    python -m conversion.ptq_bench [--checkpoint training/pretrained/demo_float_tiny.pt]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from conversion import ptq
from runtime.audio import noisy_clean_pairs, read_audio
from runtime.metrics import si_snr, snr
from training.checkpoint import load_model
from training.model import enhance

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(ROOT / "training" / "pretrained" / "demo_float_tiny.pt"))
    a = p.parse_args(argv)
    fm = load_model(a.checkpoint)
    clips = ptq.calibration_audio(None, fm.cfg.sample_rate)
    pairs = noisy_clean_pairs(ROOT / "samples")
    data = [(torch.from_numpy(read_audio(n, fm.cfg.sample_rate)[0])[None], read_audio(c, fm.cfg.sample_rate)[0])
            for n, c in pairs]
    with torch.no_grad():
        ref = [enhance(fm, x)[0].numpy() for x, _ in data]

    def score(m) -> dict:
        with torch.no_grad():
            ys = [enhance(m.eval(), x)[0].numpy() for x, _ in data]
        s = [snr(y, r) for y, r in zip(ys, ref)]
        return {"si_snr": float(np.mean([si_snr(y, c) for y, (_, c) in zip(ys, data)])),
                "snr_vs_float_mean": float(np.mean(s)), "snr_vs_float_worst": float(np.min(s))}

    res = {"float": score(fm)}
    for method in ptq.METHODS:
        res[method] = score(ptq.quantize_float_model(fm, clips, method))
    res["percentile, C = 1"] = score(ptq.quantize_float_model(fm, clips, "percentile", n_combiner=1))
    for name, r in res.items():
        print(f"{name:<20} SI-SNR {r['si_snr']:.2f} dB  vs float {r['snr_vs_float_mean']:.1f} / "
              f"{r['snr_vs_float_worst']:.1f} dB")
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
