"""Checkpoints: atomic save, load with config checks, asteroid's pytorch_model.bin format."""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from runtime.files import atomic_write
from training import grids
from training.model import ConvTasNet, ModelConfig

FORMAT = "fqse-checkpoint-1"
ARCH_KEYS = ("n_filters", "kernel_size", "bn_chan", "hid_chan", "conv_kernel_size", "n_blocks", "n_repeats",
             "norm_type", "causal", "n_splitter", "n_combiner", "quantize", "estimate")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used with this config; one-line message."""


def save(path: str | Path, model: ConvTasNet, **extra: Any) -> None:
    """Save model (and training state in `extra`) atomically."""
    state = {"format": FORMAT, "model_config": model.cfg.to_dict(), "state_dict": model.state_dict(), **extra}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def read(path: str | Path) -> dict:
    """A checkpoint's dict, loaded with weights_only=True: tensors and plain data only, nothing executes."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    if path.is_dir():
        raise CheckpointError(f"{path}: a directory, not a checkpoint file")
    ck = safe_load(path)
    if not isinstance(ck, dict):
        raise CheckpointError(f"{path}: holds a {type(ck).__name__}, not a checkpoint dict")
    return ck


def model_only(src: str | Path, dst: str | Path) -> None:
    """A model-only copy of a training checkpoint (`last.pt`: no optimizer, scheduler or RNG state), with its
    epoch and config, written atomically: the shipped form of a run's final epoch."""
    ck = read(src)
    model = ConvTasNet(ModelConfig(**ck["model_config"]))
    _load_state(model, ck["state_dict"], src, strict=True)
    st = ck.get("train_state", {})
    hist = st.get("history") or [{}]
    save(dst, model, val_si_snr=hist[-1].get("val_si_snr"), epoch=hist[-1].get("epoch"), config=ck.get("config"))


def average(paths: list[str | Path], dst: str | Path) -> None:
    """The uniform average of checkpoints of one architecture (a "model soup" of runs fine-tuned from one
    start): every float tensor (weights, learned ranges, BN statistics) averaged, integer buffers kept from
    the first. Written atomically; checkpoints of different architectures are refused."""
    if len(paths) < 2:
        raise CheckpointError("averaging needs at least two checkpoints")
    models = [load_model(paths[0], snap=False)]
    models += [load_model(p, models[0].cfg, snap=False, against="first checkpoint") for p in paths[1:]]
    states = [m.state_dict() for m in models]  # as trained, grids unsnapped: the average is snapped at load
    avg = {k: (sum(s[k].double() for s in states) / len(states)).to(v.dtype) if v.is_floating_point() else v
           for k, v in states[0].items()}
    model = ConvTasNet(models[0].cfg)
    _load_state(model, avg, dst, strict=True)
    save(dst, model, averaged_from=[str(p) for p in paths])


def safe_load(path: Path, allow: tuple = ()) -> Any:
    """torch.load with weights_only=True (plus the globals in `allow`): a crafted pickle is refused, never run."""
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses any pickled global that is not a tensor or plain data (the exploit path)
        what = re.search(r"GLOBAL (\S+)", str(exc))
        detail = f"it references {what.group(1)}" if what else "it holds objects other than tensors and plain data"
        raise CheckpointError(f"{path}: refused to load: {detail} (checkpoints are loaded with weights_only=True; "
                              "only tensors, numbers, strings, lists and dicts are allowed)") from None
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({str(exc).strip().splitlines()[0][:120]})") from None


def check_config(ckpt_cfg: dict, cfg: ModelConfig, path: str | Path, against: str = "config") -> None:
    """Raise when the checkpoint's architecture differs from `cfg` (named `against` in the message)."""
    diffs = [f"{k}: checkpoint {ckpt_cfg.get(k)!r}, {against} {getattr(cfg, k)!r}" for k in ARCH_KEYS
             if k in ckpt_cfg and ckpt_cfg[k] != getattr(cfg, k)]
    if diffs:
        raise CheckpointError(f"{path} does not match the {against}: " + "; ".join(diffs))


def load_model(path: str | Path, cfg: ModelConfig | None = None, snap: bool = True,
               against: str = "config") -> ConvTasNet:
    """A model from an FQSE checkpoint (its own config, checked against `cfg` when given), eval mode; `snap=False`
    keeps the grids as trained (training/grids.py; averaging snaps once, at the next load)."""
    ck = read(path)
    if ck.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an FQSE checkpoint (use training.pretrained for asteroid files)")
    if not isinstance(ck.get("model_config"), dict) or not isinstance(ck.get("state_dict"), dict):
        raise CheckpointError(f"{path}: FQSE checkpoint without model_config/state_dict")
    try:
        ck_cfg = ModelConfig(**ck["model_config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: bad model_config ({exc})") from None
    if cfg is not None:
        check_config(ck["model_config"], cfg, path, against)
    model = ConvTasNet(ck_cfg)
    _load_state(model, ck["state_dict"], path, strict=True)
    return grids.snap_grids(model.eval()) if snap else model.eval()  # QAT models: tie-free requantization grids


def _load_state(model: ConvTasNet, state: dict, path: str | Path, strict: bool) -> None:
    own = model.state_dict()
    bad = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if k in own and own[k].shape != v.shape]
    if bad:
        raise CheckpointError(f"{path}: shapes do not match the config: " + "; ".join(bad[:3]))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if strict and (missing or unexpected):
        raise CheckpointError(f"{path}: keys do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})")


# ---- starting a model from float weights -----------------------------------------------------------

def asteroid_to_fqse(sd: dict) -> dict:
    """Rename asteroid ConvTasNet keys (see shared README) to this model's keys."""
    block_map = {"0": "in_conv.conv", "1": "prelu1", "2": "norm1", "3": "dconv.conv", "3.0": "dconv.conv",
                 "4": "prelu2", "5": "norm2"}
    out = {}
    for k, v in sd.items():
        m = re.fullmatch(r"masker\.TCN\.(\d+)\.shared_block\.(\d+(?:\.0)?)\.(\w+)", k)
        if k == "encoder.filterbank._filters":
            out["encoder.conv.weight"] = v
        elif k == "decoder.filterbank._filters":
            out["decoder_filters"] = v
        elif k.startswith("masker.bottleneck.0."):
            out["bottleneck_norm." + k.split(".")[-1]] = v.reshape(-1)
        elif k.startswith("masker.bottleneck.1."):
            out["bottleneck.conv." + k.split(".")[-1]] = v
        elif m:
            name = block_map[m.group(2)]
            out[f"blocks.{m.group(1)}.{name}.{m.group(3)}"] = v.reshape(-1) if "norm" in name else v
        elif (m := re.fullmatch(r"masker\.TCN\.(\d+)\.(res_conv|skip_conv)\.(\w+)", k)):
            out[f"blocks.{m.group(1)}.{m.group(2)}.conv.{m.group(3)}"] = v
        elif k == "masker.mask_net.0.weight":
            out["mask_prelu.weight"] = v
        elif k.startswith("masker.mask_net.1."):
            out["mask_conv.conv." + k.split(".")[-1]] = v
    return out


def init_from_float(model: ConvTasNet, path: str | Path) -> None:
    """Load float weights (FQSE checkpoint or asteroid pytorch_model.bin) into a (QAT) model.

    Extra splitter channels k = 2..S of the encoder start as the first channel's weights times
    (D/2)^(k-1), so the encoder initially sees the same signal as the float model. A checkpoint with
    fewer blocks per repeat (X) is grown into the model (`grow_blocks`). A QAT checkpoint of the same
    quantization (fine-tuning) keeps its learned ranges and its residual encoder; otherwise ranges are observed.
    """
    ck = read(path)
    same_quant = False
    if ck.get("format") == FORMAT:
        sd = dict(ck["state_dict"])
        old = ck.get("model_config") or {}
        if old.get("n_blocks", model.cfg.n_blocks) != model.cfg.n_blocks:
            sd = grow_blocks(sd, model, int(old["n_blocks"]), path)
        same_quant = model.cfg.quantize and all(old.get(k) == getattr(model.cfg, k) for k in
                                                ("quantize", "gradient_based", "n_splitter", "n_combiner"))
        if same_quant:  # the new blocks of a grown model have no ranges yet: they are observed
            _load_state(model, {k: v for k, v in sd.items() if _is_quant_key(k)}, path, strict=False)
    elif "state_dict" in ck and any(k.startswith("masker.") for k in ck["state_dict"]):
        sd = asteroid_to_fqse(ck["state_dict"])
        args = ck.get("model_args", {})
        for ours, theirs in (("n_filters", "n_filters"), ("bn_chan", "bn_chan"), ("hid_chan", "hid_chan"),
                             ("n_blocks", "n_blocks"), ("n_repeats", "n_repeats"), ("norm_type", "norm_type")):
            if theirs in args and args[theirs] != getattr(model.cfg, ours):
                raise CheckpointError(f"{path}: asteroid {theirs}={args[theirs]!r} but config has {getattr(model.cfg, ours)!r}")
    else:
        raise CheckpointError(f"{path}: neither an FQSE checkpoint nor an asteroid ConvTasNet state_dict")
    sd = {k: v for k, v in sd.items() if not _is_quant_key(k)}
    enc = sd.get("encoder.conv.weight")
    S = model.cfg.n_splitter
    if enc is not None and enc.shape[1] != S:
        base = enc[:, :1]
        sd["encoder.conv.weight"] = torch.cat([base * (1 / 256) ** k for k in range(S)], dim=1)
    if ck.get("format") == FORMAT and old.get("estimate", "speech") != model.cfg.estimate:
        sd = flip_mask(sd)
    _load_state(model, sd, path, strict=False)
    if model.cfg.n_combiner == 2 and "res_encoder.conv.weight" not in sd:
        with torch.no_grad():  # the residual encoder starts as the main encoder's first channel
            model.res_encoder.conv.weight.copy_(model.encoder.conv.weight[:, :1])


def flip_mask(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A speech-mask model as a noise-mask one (or back): relu(1 - (w x + b)) = 1 - mask where the mask is in
    [0, 1], so the noise estimate starts as encoder -> decoder of the input minus the speech estimate."""
    sd = dict(sd)
    sd["mask_conv.conv.weight"] = -sd["mask_conv.conv.weight"]
    sd["mask_conv.conv.bias"] = 1.0 - sd["mask_conv.conv.bias"]
    return sd


GROW_GAIN = 0.05  # new blocks' residual/skip convs start at this fraction of their default init


def grow_blocks(sd: dict, model: ConvTasNet, old_x: int, path: str | Path) -> dict:
    """Map a state dict with `old_x` blocks per repeat onto the model's X > old_x (same R): block (r, x)
    keeps its weights (dilation 2^x), the new blocks (x >= old_x, the longer dilations) keep their default
    init with the residual and skip convs scaled by GROW_GAIN, so the grown network starts close to the
    trained one (its receptive field grows as training uses the new blocks)."""
    X, R = model.cfg.n_blocks, model.cfg.n_repeats
    if old_x > X:
        raise CheckpointError(f"{path}: {old_x} blocks per repeat, the config has fewer ({X}); only growing is supported")
    out = {k: v for k, v in sd.items() if not k.startswith(("blocks.", "q_skips."))}
    for k, v in sd.items():
        if k.startswith("blocks."):
            _, i, rest = k.split(".", 2)
            r, x = divmod(int(i), old_x)
            if r < R:
                out[f"blocks.{r * X + x}.{rest}"] = v
        elif k.startswith("q_skips."):  # q_skips[i - 1] quantizes the skip sum after block i
            _, i, rest = k.split(".", 2)
            r, x = divmod(int(i) + 1, old_x)
            if r < R:
                out[f"q_skips.{r * X + x - 1}.{rest}"] = v
    own = model.state_dict()
    for i in (r * X + x for r in range(R) for x in range(old_x, X)):
        for key in (f"blocks.{i}.{conv}.conv.{p}" for conv in ("res_conv", "skip_conv") for p in ("weight", "bias")):
            out[key] = own[key] * GROW_GAIN
    return out


def _is_quant_key(k: str) -> bool:
    return any(part in k.split(".") for part in ("min", "max", "steps", "absmax", "initialized"))
