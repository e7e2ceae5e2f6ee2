"""Checkpoints trained elsewhere -> this project's model: the reference FQSE `.pth` (QAT, with its
learned quantizer ranges) and asteroid's ConvTasNet `pytorch_model.bin` (float). Layouts: see
../shared/REFERENCE_CHECKPOINTS.md; the reference semantics are written out in conversion/reference.py.

Mapping of a reference checkpoint (the smallest changes that make it deployable, each measured by
`reference_snr`):
- activation ranges are copied; deployment nudges each so that zero is an integer code (the grid moves
  by less than half a step; a range that excludes 0 is widened to reach it);
- weight ranges m keep their step m/128; codes are clipped to [-127, 127] instead of [-128, 127];
- biases go on the int32 grid (input scale x weight scale);
- tensors with no reference quantizer (each conv output before its fused PReLU, the decoder frames
  before overlap-add, the residual encoder's output and the residual frames) get ranges calibrated on
  calibration audio (conversion/ptq.py);
- y0 and y1 keep their learned ranges (the runtime's combiner dequantizes each with its own scale and
  zero point) and the residual branch has gain 1 (the reference weights y1 by D/2 in the combiner);
- S = 1 (no input quantizer in the reference): the input becomes int8 on the 1/128 grid.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conversion.reference import RefConfig, ReferenceFQSE
from runtime import qmath
from training.checkpoint import FORMAT, CheckpointError, asteroid_to_fqse, load_model, safe_load, save
from training.model import ConvTasNet, ModelConfig, Pipeline
from training.quant import ActQuant, WeightQuant

REFERENCE = "reference FQSE .pth"
ASTEROID = "asteroid ConvTasNet pytorch_model.bin"
PROJECT = "FQSE checkpoint"


def read_any(path: str | Path) -> Any:
    """torch.load(weights_only=True); asteroid's `infos` need exactly torch's TorchVersion allowed."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    ck = safe_load(path, (torch.torch_version.TorchVersion,))
    if not isinstance(ck, dict):
        raise CheckpointError(f"{path}: holds a {type(ck).__name__}, not a checkpoint dict")
    return ck


# ---- format detection -------------------------------------------------------------------------------

def reference_config(sd: dict, cfg: ModelConfig | None = None, path: str | Path = "checkpoint") -> RefConfig:
    """The reference network's sizes read off its tensor shapes (n_blocks / n_repeats from `cfg`
    when given, else 8 blocks per repeat as the reference always has); `cfg` fields are checked."""
    try:
        N, S, L = sd["encoder.conv1d.weight"].shape
        B = sd["masker.bottleneck.1.conv1d.weight"].shape[0]
        H = sd["masker.TCN.0.shared_block.0.conv1d.weight"].shape[0]
        P = sd["masker.TCN.0.shared_block.3.conv1d.weight"].shape[-1]
    except KeyError as exc:
        raise CheckpointError(f"{path}: reference FQSE key {exc.args[0]} missing") from None
    K = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"masker\.TCN\.(\d+)\.", k)))
    C = 2 if "decoder.residual_error_block.residual_encoder.weight" in sd else 1
    X = cfg.n_blocks if cfg is not None else (8 if K % 8 == 0 else K)
    if K % X:
        raise CheckpointError(f"{path}: config model.n_blocks = {X} does not divide the checkpoint's {K} TCN blocks")
    rc = RefConfig(n_filters=N, kernel_size=L, bn_chan=B, hid_chan=H, conv_kernel_size=P, n_blocks=X,
                   n_repeats=K // X, n_splitter=S, n_combiner=C)
    if cfg is not None:
        shown = {"n_filters": ("encoder.conv1d.weight", N), "kernel_size": ("encoder.conv1d.weight", L),
                 "n_splitter": ("encoder.conv1d.weight", S), "bn_chan": ("masker.bottleneck.1.conv1d.weight", B),
                 "hid_chan": ("masker.TCN.0.shared_block.0.conv1d.weight", H),
                 "conv_kernel_size": ("masker.TCN.0.shared_block.3.conv1d.weight", P),
                 "n_repeats": ("masker.TCN.*", K // X), "n_combiner": ("decoder.residual_error_block.*", C)}
        for field, (key, v) in shown.items():
            if getattr(cfg, field) != v:
                raise CheckpointError(f"{path}: config model.{field} = {getattr(cfg, field)!r} but the checkpoint "
                                      f"has {v} ({key})")
        if cfg.norm_type != "gLN" or cfg.causal:
            raise CheckpointError(f"{path}: config model.norm_type/causal = {cfg.norm_type}/{cfg.causal} but reference "
                                  "FQSE checkpoints are non-causal gLN")
    return rc


def _expected(fmt: str, sd: dict) -> dict[str, tuple]:
    """Key -> shape of a checkpoint in `fmt` with sizes guessed from `sd` (defaults: full size)."""
    if fmt == REFERENCE:
        try:
            rc = reference_config(sd)
        except (CheckpointError, ValueError):
            rc = RefConfig()
        with torch.device("meta"):
            return {k: tuple(v.shape) for k, v in ReferenceFQSE(rc).state_dict().items()}
    if fmt == ASTEROID:
        d = ModelConfig()
        return {k: () for k in _asteroid_keys(d.n_blocks * d.n_repeats)}
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in ConvTasNet(ModelConfig(quantize=True, n_splitter=2, n_combiner=2))
                .state_dict().items()}


def _asteroid_keys(n_blocks: int, causal: bool = False) -> list[str]:
    keys = ["encoder.filterbank._filters", "decoder.filterbank._filters", "masker.bottleneck.0.gamma",
            "masker.bottleneck.0.beta", "masker.bottleneck.1.weight", "masker.bottleneck.1.bias"]
    dw = "3.0" if causal else "3"
    for k in range(n_blocks):
        p = f"masker.TCN.{k}."
        keys += [p + s for s in ("shared_block.0.weight", "shared_block.0.bias", "shared_block.1.weight",
                                 "shared_block.2.gamma", "shared_block.2.beta", f"shared_block.{dw}.weight",
                                 f"shared_block.{dw}.bias", "shared_block.4.weight", "shared_block.5.gamma",
                                 "shared_block.5.beta", "res_conv.weight", "res_conv.bias", "skip_conv.weight",
                                 "skip_conv.bias")]
    return keys + ["masker.mask_net.0.weight", "masker.mask_net.1.weight", "masker.mask_net.1.bias"]


def _diff(sd: dict, want: dict[str, tuple], check_shapes: bool = True) -> tuple[list[str], list[str], list[str]]:
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    shapes = [f"{k} {tuple(sd[k].shape)} (expected {want[k]})" for k in want
              if check_shapes and k in sd and want[k] and tuple(sd[k].shape) != want[k]]
    return missing, unexpected, shapes


def _mismatch(path: str | Path, fmt: str, missing: list[str], unexpected: list[str], shapes: list[str],
              n_want: int, n_have: int) -> CheckpointError:
    parts = []
    if missing:
        parts.append(f"missing {', '.join(missing[:3])}")
    if unexpected:
        parts.append(f"unexpected {', '.join(unexpected[:3])}")
    if shapes:
        parts.append(f"shape {', '.join(shapes[:2])}")
    matched = n_want - len(missing)
    return CheckpointError(f"{path}: not a checkpoint format known here; closest: {fmt} ({matched}/{n_want} keys, "
                           f"{n_have} in file): " + "; ".join(parts))


def detect(obj: Any, path: str | Path = "checkpoint") -> str:
    """The checkpoint's format (PROJECT, REFERENCE or ASTEROID); otherwise a one-line error naming
    the closest format and the first keys (or shapes) that differ."""
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return PROJECT
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict) and "model_args" in obj:
        sd = obj["state_dict"]
        args = obj["model_args"] or {}
        n = int(args.get("n_blocks", 8)) * int(args.get("n_repeats", 3))
        want = {k: () for k in _asteroid_keys(n, bool(args.get("causal")))}
        missing, unexpected, shapes = _diff(sd, want)
        if missing or unexpected:
            raise _mismatch(path, ASTEROID, missing, unexpected, shapes, len(want), len(sd))
        return ASTEROID
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: not a checkpoint format known here (expected a dict of tensors: {REFERENCE}, "
                              f"or a dict with state_dict: {ASTEROID} / {PROJECT})")
    best = None
    for fmt in (REFERENCE, ASTEROID, PROJECT):
        want = _expected(fmt, sd)
        missing, unexpected, shapes = _diff(sd, want, fmt == REFERENCE)
        if fmt == REFERENCE and not (missing or unexpected or shapes):
            return REFERENCE
        score = (len(want) - len(missing)) / max(len(want), len(sd))
        if best is None or score > best[0]:
            best = (score, fmt, missing, unexpected, shapes, len(want))
    _, fmt, missing, unexpected, shapes, n = best
    raise _mismatch(path, fmt, missing, unexpected, shapes, n, len(sd))


# ---- reference FQSE -----------------------------------------------------------------------------------

def reference_model(sd: dict, cfg: ModelConfig | None = None, path: str | Path = "checkpoint") -> ReferenceFQSE:
    """The reference-semantics model of a reference checkpoint (the ground truth for the import)."""
    m = ReferenceFQSE(reference_config(sd, cfg, path))
    m.load_state_dict(sd, strict=True)
    return m.eval()


@torch.no_grad()
def from_reference(sd: dict, cfg: ModelConfig | None = None, clips: list[np.ndarray] | None = None,
                   method: str | None = None, path: str | Path = "checkpoint") -> ConvTasNet:
    """Our deployable fake-quant model of a reference FQSE state dict (see the module docstring)."""
    from conversion import ptq
    rc = reference_config(sd, cfg, path)
    mc = ModelConfig(n_filters=rc.n_filters, kernel_size=rc.kernel_size, bn_chan=rc.bn_chan, hid_chan=rc.hid_chan,
                     skip_chan=rc.bn_chan, conv_kernel_size=rc.conv_kernel_size, n_blocks=rc.n_blocks,
                     n_repeats=rc.n_repeats, norm_type="gLN", causal=False,
                     sample_rate=cfg.sample_rate if cfg is not None else 16000, n_splitter=rc.n_splitter,
                     n_combiner=rc.n_combiner, quantize=True, gradient_based=True,
                     ema_steps=cfg.ema_steps if cfg is not None else 50, res_gain=1.0, input_gain="peak")
    model = ConvTasNet(mc).eval()

    def act(q: ActQuant, p: str) -> None:
        q.min.fill_(float(sd[p + ".activation_fake_quantize.min_range"].reshape(-1)[0]))
        q.max.fill_(float(sd[p + ".activation_fake_quantize.max_range"].reshape(-1)[0]))
        q.steps.fill_(q.ema_steps)

    def wq(w: WeightQuant, p: str, channels: int) -> None:
        m = torch.maximum(sd[p + ".min_range"].abs(), sd[p + ".max_range"].abs()).reshape(-1)
        w.absmax.copy_((m * qmath.W_MAX / 128.0).expand(channels))  # same step m/128; codes clipped to +-127
        w.initialized.fill_(True)

    def conv(qc, p: str) -> None:
        qc.conv.weight.copy_(sd[p + ".conv1d.weight"])
        if qc.conv.bias is not None:
            qc.conv.bias.copy_(sd[p + ".conv1d.bias"])
        wq(qc.wq, p + ".weight_fake_quantize", qc.conv.out_channels)

    def norm(n, p: str) -> None:
        n.gamma.copy_(sd[p + ".groupnorm.weight"])
        n.beta.copy_(sd[p + ".groupnorm.bias"])

    conv(model.encoder, "encoder")
    act(model.q_enc, "encoder")
    norm(model.bottleneck_norm, "masker.bottleneck.0")
    act(model.q_bn_norm, "masker.bottleneck.0")
    conv(model.bottleneck, "masker.bottleneck.1")
    act(model.q_bottleneck, "masker.bottleneck.1")
    for k, blk in enumerate(model.blocks):
        p = f"masker.TCN.{k}."
        conv(blk.in_conv, p + "shared_block.0")
        blk.prelu1.weight.copy_(sd[p + "shared_block.0.nl.weight"])
        act(blk.q_prelu1, p + "shared_block.0")
        norm(blk.norm1, p + "shared_block.2")
        act(blk.q_norm1, p + "shared_block.2")
        conv(blk.dconv, p + "shared_block.3")
        blk.prelu2.weight.copy_(sd[p + "shared_block.3.nl.weight"])
        act(blk.q_prelu2, p + "shared_block.3")
        norm(blk.norm2, p + "shared_block.5")
        act(blk.q_norm2, p + "shared_block.5")
        conv(blk.res_conv, p + "res_conv")
        act(blk.q_res, p + "res_conv")
        conv(blk.skip_conv, p + "skip_conv")
        act(blk.q_skip, p + "skip_conv")
        act(blk.q_add, p + "add")
    for j, q in enumerate(model.q_skips):
        act(q, f"masker.adds.{j}")
    model.mask_prelu.weight.copy_(sd["masker.mask_net.0.nl.weight"])
    act(model.q_mask_prelu, "masker.mask_net.0")
    conv(model.mask_conv, "masker.mask_net.1")
    act(model.q_mask, "masker.mask_net.1")
    act(model.q_masked, "mul")
    model.decoder_filters.copy_(sd["decoder.convTr1d.weight"])
    wq(model.dec_wq, "decoder.weight_fake_quantize", rc.kernel_size)
    act(model.q_out, "decoder")
    extra = [q for blk in model.blocks for q in (blk.q_in, blk.q_dconv)] + [model.q_frames]
    if rc.n_combiner == 2:
        r = "decoder.residual_error_block"
        model.res_encoder.conv.weight.copy_(sd[r + ".residual_encoder.weight"])
        wq(model.res_encoder.wq, r + ".weight_fake_quantize", rc.n_filters)
        act(model.q_err, r)
        model.q_res_out.min.fill_(float(sd["decoder.activation_fake_quantize_residual.min_range"].reshape(-1)[0]))
        model.q_res_out.max.fill_(float(sd["decoder.activation_fake_quantize_residual.max_range"].reshape(-1)[0]))
        extra += [model.q_res_enc, model.q_res_frames]
    if clips is None:
        clips = ptq.calibration_audio(None, mc.sample_rate)
    ptq.calibrate(model, extra, [peak_normalize(c) for c in clips], method or ptq.DEFAULT_METHOD)
    return model.eval()


def peak_normalize(wav: np.ndarray) -> np.ndarray:
    """The reference's offline input scaling: the waveform divided by its peak."""
    return np.asarray(wav, np.float32) / max(float(np.abs(wav).max()), 1e-12)


@torch.no_grad()
def reference_snr(ref: ReferenceFQSE, model: ConvTasNet, clips: list[np.ndarray]) -> dict[str, float]:
    """SNR (dB) of the deployable fake-quant model against the reference-semantics model on the same
    splitter input (peak-normalized clips): per output (y0, y1) and of the combined output; worst clip."""
    from conversion.reference import postprocess
    from runtime.metrics import snr
    pipe = Pipeline(model.cfg)
    res: dict[str, list[float]] = {}
    for wav in clips:
        x, _ = pipe.pre(torch.from_numpy(peak_normalize(wav))[None])
        if ref.cfg.n_splitter == 1:  # the reference's encoder reads the unquantized waveform
            xr = torch.nn.functional.pad(torch.from_numpy(peak_normalize(wav))[None, None],
                                         (model.cfg.stride, x.shape[-1] - len(wav) - model.cfg.stride))
        else:
            xr = x
        a, b = ref(xr), model.eval()(x)
        for i, (ya, yb) in enumerate(zip(a, b)):
            res.setdefault(f"y{i}", []).append(snr(yb[0, 0].numpy(), ya[0, 0].numpy()))
        res.setdefault("combined", []).append(snr(postprocess(b)[0].numpy(), postprocess(a)[0].numpy()))
    return {k: float(min(v)) for k, v in res.items()}


# ---- asteroid -----------------------------------------------------------------------------------------

ASTEROID_ARGS = {"n_filters": "n_filters", "kernel_size": "kernel_size", "bn_chan": "bn_chan", "hid_chan": "hid_chan",
                 "skip_chan": "skip_chan", "conv_kernel_size": "conv_kernel_size", "n_blocks": "n_blocks",
                 "n_repeats": "n_repeats", "norm_type": "norm_type", "causal": "causal", "sample_rate": "sample_rate"}


def from_asteroid(ck: dict, cfg: ModelConfig | None = None, path: str | Path = "checkpoint") -> ConvTasNet:
    """Our float model of an asteroid ConvTasNet checkpoint (same math: a float model, no quantizers)."""
    args = ck.get("model_args") or {}
    for k, want in (("n_src", 1), ("mask_act", "relu"), ("fb_name", "free"), ("encoder_activation", None)):
        if k in args and (str(args[k]).lower() if isinstance(args[k], str) else args[k]) not in (
                want, "freefb" if k == "fb_name" else want):
            raise CheckpointError(f"{path}: asteroid model_args {k}={args[k]!r} is not supported (need {want!r})")
    kw = {ours: args[theirs] for ours, theirs in ASTEROID_ARGS.items() if theirs in args}
    if kw.get("norm_type") not in (None, "gLN", "cLN", "BN"):
        raise CheckpointError(f"{path}: asteroid norm_type {kw['norm_type']!r} is not supported (gLN, cLN, BN)")
    if "stride" in args and args["stride"] * 2 != args.get("kernel_size", 32):
        raise CheckpointError(f"{path}: asteroid stride {args['stride']} must be kernel_size / 2")
    if cfg is not None:
        for f, v in kw.items():
            if getattr(cfg, f) != v:
                raise CheckpointError(f"{path}: config model.{f} = {getattr(cfg, f)!r} but the checkpoint has {v!r}")
    try:
        model = ConvTasNet(ModelConfig(**kw))
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    sd = asteroid_to_fqse(ck["state_dict"])
    own = model.state_dict()
    bad = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in sd.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise CheckpointError(f"{path}: shapes do not match model_args: " + "; ".join(bad[:3]))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    if missing or unexpected:
        raise CheckpointError(f"{path}: asteroid keys do not map (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval()


# ---- one entry point ----------------------------------------------------------------------------------

def load_any(path: str | Path, cfg: ModelConfig | None = None) -> ConvTasNet:
    """A model from a checkpoint in any known format (eval mode): ours as is, a reference FQSE .pth as
    our deployable fake-quant model (extra ranges from calibration_data/), asteroid's as a float model."""
    obj = read_any(path)
    fmt = detect(obj, path)
    if fmt == PROJECT:
        return load_model(path, cfg)
    if fmt == REFERENCE:
        return from_reference(obj, cfg, path=path)
    return from_asteroid(obj, cfg, path)


def import_checkpoint(src: str | Path, out: str | Path, cfg: ModelConfig | None = None, ptq_method: str | None = None,
                      calibration: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """`fqse import`: write our checkpoint of `src`; returns what was measured. `ptq_method` (or
    `calibration`) quantizes a float checkpoint by post-training calibration."""
    from conversion import ptq
    obj = read_any(src)
    fmt = detect(obj, src)
    sr = cfg.sample_rate if cfg is not None else 16000
    report: dict[str, Any] = {"source": str(src), "format": fmt}
    if fmt == REFERENCE:
        clips = ptq.calibration_audio(calibration, sr)
        model = from_reference(obj, cfg, clips, ptq_method, src)
        report["snr_vs_reference_db"] = reference_snr(reference_model(obj, cfg, src), model, clips)
    else:
        model = from_asteroid(obj, cfg, src) if fmt == ASTEROID else load_model(src, cfg)
        if ptq_method or calibration:
            clips = ptq.calibration_audio(calibration, model.cfg.sample_rate)
            fm = model
            model = ptq.quantize_float_model(fm, clips, ptq_method or ptq.DEFAULT_METHOD, progress=progress)
            report["ptq"] = {"method": ptq_method or ptq.DEFAULT_METHOD, "clips": len(clips),
                             "snr_vs_float_db": [round(v, 2) for v in ptq.snr_to_float(model, fm, clips)]}
    save(out, model, imported_from={"path": str(src), "format": fmt})
    report["output"] = str(out)
    report["model_config"] = {k: v for k, v in model.cfg.to_dict().items()}
    return report
