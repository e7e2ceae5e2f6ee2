"""Post-training quantization: activation ranges from calibration audio, per-channel weight scales.

Used for float checkpoints (ours or asteroid's) and, in imported QAT checkpoints, for the tensors
that no QAT quantizer covers. Range methods: `minmax` (the observed range), `percentile` (the 0.01 %
tails clipped), `mse` (the clipping of the observed range that minimizes the int8 quantization
error on the calibration values). `fqse import --ptq` measures and prints the SNR against the float model.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

from runtime import qmath
from runtime.audio import read_audio
from training.model import ConvTasNet, ModelConfig, Pipeline
from training.quant import ActQuant, WeightQuant

METHODS = ("minmax", "percentile", "mse")
DEFAULT_METHOD = "percentile"  # measured on the demo float model, six samples: best SI-SNR and worst-case SNR (see README)
CALIBRATION_DIR = Path(__file__).resolve().parent.parent / "calibration_data"
_SAMPLES_PER_TENSOR = 200_000  # values kept per quantizer and clip for percentile / MSE


class CalibrationError(ValueError):
    """No usable calibration audio; one-line message."""


def calibration_audio(directory: str | Path | None, sample_rate: int, max_seconds: float = 10.0) -> list[np.ndarray]:
    """Calibration clips (any rate/channels: resampled, downmixed), each at most `max_seconds`."""
    d = Path(directory) if directory else CALIBRATION_DIR
    files = sorted(p for p in d.glob("*") if p.suffix.lower() in (".wav", ".flac", ".ogg")) if d.is_dir() else []
    if not files:
        raise CalibrationError(f"{d}: no calibration audio (.wav/.flac/.ogg) found")
    return [read_audio(f, sample_rate)[0][: int(max_seconds * sample_rate)] for f in files]


def choose_range(values: np.ndarray, method: str) -> tuple[float, float]:
    """An activation range (min, max) for `values` by `method`."""
    if method not in METHODS:
        raise ValueError(f"calibration method {method!r}: choose one of {METHODS}")
    v = values.astype(np.float64)
    lo, hi = float(v.min()), float(v.max())
    if method == "minmax":
        return lo, hi
    if method == "percentile":
        return float(np.quantile(v, 1e-4)), float(np.quantile(v, 1 - 1e-4))
    best, best_err = (lo, hi), np.inf
    for a in np.linspace(0.3, 1.0, 29):
        scale, zp, _, _ = qmath.act_qparams(a * lo, a * hi)
        err = float(np.mean((qmath.dequantize(qmath.quantize(v, scale, zp), scale, zp) - v) ** 2))
        if err < best_err:
            best, best_err = (a * lo, a * hi), err
    return best


@torch.no_grad()
def calibrate(model: ConvTasNet, quantizers: Iterable[ActQuant], clips: list[np.ndarray], method: str = DEFAULT_METHOD,
              float_pass: bool = False, progress: bool = False) -> None:
    """Set the ranges of `quantizers` from their inputs on `clips` (float waveforms). Those quantizers
    are off while observed; with `float_pass` every quantizer is (a float model's statistics)."""
    targets = list(quantizers)
    off = [m for m in model.modules() if isinstance(m, (ActQuant, WeightQuant)) and (float_pass or m in targets)]
    for m in off:
        m.enabled = False
    stats: dict[ActQuant, list[np.ndarray]] = {q: [] for q in targets}
    rng = np.random.default_rng(0)

    def hook(mod, inp, _out):
        v = inp[0].detach().reshape(-1).numpy()
        if v.size > _SAMPLES_PER_TENSOR and method != "minmax":
            v = np.concatenate([[v.min(), v.max()], rng.choice(v, _SAMPLES_PER_TENSOR, replace=False)])
        stats[mod].append(v if method != "minmax" else np.array([v.min(), v.max()]))

    hooks = [q.register_forward_hook(hook) for q in targets]
    pipe = Pipeline(model.cfg)
    model.eval()
    try:
        it = clips
        if progress:
            from tqdm import tqdm
            it = tqdm(clips, desc="calibration", unit="clip")
        for wav in it:
            x, _ = pipe.pre(torch.from_numpy(np.asarray(wav, np.float32))[None])
            model(x)
    finally:
        for h in hooks:
            h.remove()
        for m in off:
            m.enabled = True
    for q, vals in stats.items():
        if not vals:
            continue
        lo, hi = choose_range(np.concatenate(vals), method)
        q.min.fill_(lo)
        q.max.fill_(hi)
        q.steps.fill_(q.ema_steps)


def quantized_config(cfg: ModelConfig, n_splitter: int = 2, n_combiner: int = 2) -> ModelConfig:
    """The int8 twin of a float model's config: S-channel splitter input (16-bit audio as two int8
    streams), observed (not learned) ranges, C outputs on the 1/128 grid, an encoder bias."""
    d = cfg.to_dict()
    d.update(quantize=True, gradient_based=False, n_splitter=n_splitter, n_combiner=n_combiner,
             encoder_bias=n_splitter > 1, encoder_split=n_splitter == 2)
    return ModelConfig(**d)


@torch.no_grad()
def quantize_float_model(float_model: ConvTasNet, clips: list[np.ndarray], method: str = DEFAULT_METHOD,
                         n_splitter: int = 2, n_combiner: int = 2, progress: bool = False) -> ConvTasNet:
    """PTQ: float model -> fake-quant model (eval) with the same weights; per-channel weight scales
    from the weights, activation ranges from `clips`.

    The splitter's codes stand for x - 1/256 (c2 = (p & 255) - 128 drops the half-LSB offset), so the
    extra encoder channels k get the first channel's weights x (1/256)^k and the encoder a bias of
    sum(w) / 256 per filter: the int8 model's encoder then sees exactly the float model's input. With
    S = 2 the low byte has an encoder of its own (weights [0, w/256], own per-channel scales; its
    output added to the high byte's): in one conv the per-output-channel scale of w rounds w/256 to 0.
    With C = 2 the residual block's encoder is R = pinv(D)/2 for the decoder D (L samples from N
    filters), so that the overlap-add of D R y0 is y0 itself: y1 then carries 256 (y - y0), the
    rounding error of the 8-bit output, and the combined output has ~16 bits."""
    if float_model.cfg.quantize:
        raise ValueError("this checkpoint is already quantized (QAT): post-training quantization is for float models")
    if float_model.cfg.n_splitter != 1:
        raise ValueError("post-training quantization expects a float model with one input channel")
    qcfg = quantized_config(float_model.cfg, n_splitter, n_combiner)
    model = ConvTasNet(qcfg)
    sd = copy.deepcopy(float_model.state_dict())
    w = sd["encoder.conv.weight"]
    sd["encoder.conv.weight"] = torch.cat([w * (1 / 256) ** k for k in range(n_splitter)], dim=1)
    if qcfg.encoder_split:  # per-output-channel int8 scales would round w/256 to 0 next to w
        sd["encoder_lo.conv.weight"] = torch.cat([torch.zeros_like(w), w / 256], dim=1)
        sd["encoder.conv.weight"] = torch.cat([w, torch.zeros_like(w)], dim=1)
    if qcfg.encoder_bias:
        sd["encoder.conv.bias"] = w.sum(dim=(1, 2)) * qmath.IO_SCALE / 2
    if n_combiner == 2:  # D: [L, N] (1x1 conv to a frame); R: [N, 1, L]
        D = sd["decoder_filters"][:, 0, :].t().double()
        sd["res_encoder.conv.weight"] = (0.5 * torch.linalg.pinv(D)).float()[:, None, :]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    quant_keys = {"min", "max", "steps", "absmax", "initialized"}
    if unexpected or any(k.split(".")[-1] not in quant_keys for k in missing):
        raise ValueError(f"float and int8 models differ: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.eval()
    for m in model.modules():  # weight scales from the weights themselves (observed mode)
        if isinstance(m, WeightQuant):
            m.initialized.fill_(True)
    rqb = [model.q_res_enc, model.q_err, model.q_res_frames] if n_combiner == 2 else []
    acts = [m for m in model.modules() if isinstance(m, ActQuant) and m.fixed is None and m not in rqb]
    calibrate(model, acts, clips, method, float_pass=True, progress=progress)
    if rqb:  # in a float pass y1 is 0: its ranges come from the quantized main path
        calibrate(model, rqb, clips, method)
    return model


def snr_to_float(qmodel: ConvTasNet, float_model: nn.Module, clips: list[np.ndarray]) -> list[float]:
    """SNR (dB) of the fake-quant model's output against the float model's, per clip."""
    from runtime.metrics import snr
    from training.model import enhance
    out = []
    with torch.no_grad():
        for wav in clips:
            x = torch.from_numpy(np.asarray(wav, np.float32))[None]
            out.append(snr(enhance(qmodel.eval(), x)[0].numpy(), enhance(float_model.eval(), x)[0].numpy()))
    return out
