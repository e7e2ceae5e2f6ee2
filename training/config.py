"""YAML configs with the reference project's keys (model.n_splitter, model.quantization.gradient_based,
dataset.augmentation.param0, training.pretrained, ...) mapped onto typed settings."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from training import config_schema
from training.model import ModelConfig

DEFAULTS: dict[str, Any] = {
    "work_dir": "work",
    "seed": 0,
    "model": {"quantization": {"enabled": False, "gradient_based": True, "ema_steps": 50, "jitter": 0.0}, "model_path": None},
    "dataset": {"train_dir": None, "valid_dir": None, "test_dir": None, "sample_rate": 16000,
                "segment": 3.0, "augmentation": {"enabled": False, "param0": -6.0, "param1": 18.0,
                                                 "speed": 0.0, "dynamic_mix": False, "eq": 0.0,
                                                 "narrowband": 0.0}},
    "training": {"pretrained": None, "epochs": 80, "batch_size": 6, "lr": 1e-3, "lr_patience": 5,
                 "early_stop": 30, "clip_grad": 5.0, "loss": "snr", "max_steps_per_epoch": None, "num_workers": 0,
                 "max_valid": None},
}
MODEL_KEYS = {"n_filters", "kernel_size", "bn_chan", "hid_chan", "skip_chan", "conv_kernel_size",
              "n_blocks", "n_repeats", "norm_type", "causal", "sample_rate", "n_splitter", "n_combiner",
              "estimate"}


class ConfigError(ValueError):
    """A config that cannot be used; one-line message."""


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML config (with an optional `base:` file it extends), checked against the schema
    (training/config_schema.py: every problem in one message), filled with defaults."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config")
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: `base:` loop ({' -> '.join(p.name for p in _seen + (path,))})")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    bad = config_schema.problems(raw)
    if bad:
        raise ConfigError(f"{path}: " + "; ".join(bad))
    if "base" in raw:
        parent = load_config(path.parent / raw.pop("base"), _seen + (path.resolve(),))
        conf = _merge(parent, raw)
    else:
        conf = _merge(DEFAULTS, raw)
    for section in ("model", "dataset", "training"):  # `training:` with nothing under it
        conf[section] = _merge(DEFAULTS[section], conf.get(section) or {})
    return conf


def model_config(conf: dict) -> ModelConfig:
    """The ModelConfig of a config dict (raises ConfigError on unknown or bad keys)."""
    m = conf["model"]
    unknown = set(m) - MODEL_KEYS - {"quantization", "model_path"}
    if unknown:
        raise ConfigError(f"unknown model keys: {', '.join(sorted(unknown))}")
    q = m.get("quantization", {})
    kwargs = {k: m[k] for k in MODEL_KEYS if k in m}
    kwargs["sample_rate"] = conf["dataset"].get("sample_rate", 16000)
    try:
        return ModelConfig(**kwargs, quantize=bool(q.get("enabled")), gradient_based=bool(q.get("gradient_based", True)),
                           ema_steps=int(q.get("ema_steps", 50)), jitter=float(q.get("jitter", 0.0)))
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
