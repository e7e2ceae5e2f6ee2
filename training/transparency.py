"""How transparent a model is to clean speech: `python -m training.transparency -y CONFIG CKPT...`.

Per checkpoint, on clean test utterances (the config's dataset.test_dir): SI-SNR of the model's output for clean
input (what +30 dB input approaches), of encoder -> decoder alone with an all-ones mask (model.passthrough), and
the share of the output error that falls in the loudest frames (>= the mean frame energy): high there means the
model distorts speech, not that the reference carries noise (which would sit in the quiet frames).
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from runtime.metrics import si_snr
from training.checkpoint import load_model
from training.config import load_config
from training.evaluate import _read, load_split, torch_enhancer
from training.model import passthrough

FRAME = 320  # 20 ms at 16 kHz


def loud_share(est: np.ndarray, ref: np.ndarray) -> float:
    """Share of the scale-invariant error energy in frames whose reference energy is at least the mean."""
    ref, est = ref.astype(np.float64), est.astype(np.float64)
    err = est - (est @ ref) / (ref @ ref) * ref
    n = len(ref) // FRAME * FRAME
    e_ref = (ref[:n].reshape(-1, FRAME) ** 2).mean(1)
    e_err = (err[:n].reshape(-1, FRAME) ** 2).sum(1)
    return float(e_err[e_ref >= e_ref.mean()].sum() / max(e_err.sum(), 1e-20))


def measure(checkpoint: str, clean: list[np.ndarray]) -> dict[str, float]:
    model = load_model(checkpoint).eval()
    fn = torch_enhancer(model)
    out, thru, loud = [], [], []
    for c in clean:
        y = fn(c)
        with torch.no_grad():
            p = passthrough(model, torch.from_numpy(c)[None])[0].numpy()
        out.append(si_snr(y, c))
        thru.append(si_snr(p, c))
        loud.append(loud_share(y, c))
    return {"clean_in_si_snr": float(np.mean(out)), "passthrough_si_snr": float(np.mean(thru)),
            "error_share_in_loud_frames": float(np.mean(loud))}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-y", "--yaml", required=True)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--limit", type=int, default=20)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = load_split(load_config(a.yaml)["dataset"]["test_dir"], a.limit)
    clean = [_read(r["source_1_path"]) for r in rows]
    for ck in a.checkpoints:
        r = measure(ck, clean)
        print(f"{ck}: clean in -> {r['clean_in_si_snr']:.2f} dB SI-SNR, encoder -> decoder alone "
              f"{r['passthrough_si_snr']:.2f} dB, {100 * r['error_share_in_loud_frames']:.0f} % of the error in "
              "the loudest frames")


if __name__ == "__main__":
    main()
