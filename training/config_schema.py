"""The config schema: every key a config may hold, its type and range. `validate` lists every problem in one
message (unknown keys name the closest valid key). The reference FQSE implementation's keys (its README:
work_dir, dataset.train_dir/valid_dir/test_dir, training.pretrained, model.model_path) are this schema's own
names; REFERENCE_NOTES says how each is used here."""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Field:
    """A leaf: kind is int, float, bool, str; `choices`, inclusive `low`, or `nullable`."""
    kind: type
    low: float | None = None
    choices: tuple | None = None
    nullable: bool = False

    def problem(self, v: Any) -> str | None:
        if v is None:
            return None if self.nullable else "must be set"
        if self.kind is bool:
            ok = isinstance(v, bool)
        elif self.kind is int:
            ok = isinstance(v, int) and not isinstance(v, bool)
        elif self.kind is float:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        else:
            ok = isinstance(v, str)
        if not ok:
            return f"{v!r} is not {_NAMES[self.kind]}"
        if self.choices is not None and v not in self.choices:
            return f"{v!r}: choose one of {', '.join(map(str, self.choices))}"
        if self.low is not None and v < self.low:
            return f"{v!r}: must be at least {self.low:g}"
        return None


_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
INT1, INT0, POS = Field(int, 1), Field(int, 0), Field(float, 1e-12)
PATH = Field(str, nullable=True)

SCHEMA: dict[str, Any] = {
    "base": Field(str),
    "work_dir": Field(str),
    "seed": INT0,
    "model": {
        "n_filters": INT1, "kernel_size": Field(int, 2), "bn_chan": INT1, "hid_chan": INT1, "skip_chan": INT1,
        "conv_kernel_size": INT1, "n_blocks": INT1, "n_repeats": INT1,
        "norm_type": Field(str, choices=("gLN", "cLN", "BN")), "causal": Field(bool),
        "sample_rate": Field(int, 8000), "n_splitter": INT1,
        "n_combiner": Field(int, choices=(1, 2)), "estimate": Field(str, choices=("speech", "noise")),
        "quantization": {"enabled": Field(bool), "gradient_based": Field(bool), "ema_steps": INT0,
                         "jitter": Field(float, 0.0)},
        "model_path": PATH,
    },
    "dataset": {
        "train_dir": PATH, "valid_dir": PATH, "test_dir": PATH, "sample_rate": Field(int, 8000),
        "segment": Field(float, 0.1, nullable=True),
        "augmentation": {"enabled": Field(bool), "param0": Field(float), "param1": Field(float),
                         "speed": Field(float), "dynamic_mix": Field(bool), "eq": Field(float),
                         "narrowband": Field(float)},
    },
    "training": {
        "pretrained": PATH, "epochs": INT1, "batch_size": INT1, "lr": POS, "lr_patience": INT0,
        "early_stop": INT1, "clip_grad": POS, "loss": Field(str, choices=("snr", "si_snr")),
        "max_steps_per_epoch": Field(int, 1, nullable=True), "num_workers": INT0,
        "max_valid": Field(int, 1, nullable=True), "save_every": INT1, "ae_weight": Field(float, 0.0),
    },
}

REFERENCE_NOTES = {
    "work_dir": "checkpoints and plots go here (fqse train --work-dir overrides it)",
    "dataset.train_dir": "LibriMix split folder (or its CSV), as in the reference",
    "dataset.valid_dir": "LibriMix split folder, as in the reference",
    "dataset.test_dir": "LibriMix split folder, as in the reference (fqse eval / report)",
    "training.pretrained": "asteroid pytorch_model.bin or an FQSE float checkpoint to start from",
    "model.model_path": "accepted and ignored: the reference's val.py model; fqse eval takes --checkpoint",
}


def _all_keys(schema: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in schema.items():
        out.append(prefix + k)
        if isinstance(v, dict):
            out += _all_keys(v, prefix + k + ".")
    return out


ALL_KEYS = _all_keys(SCHEMA)


# Other spellings users bring from other trainers (suggestions only: an unknown key is still an error)
SYNONYMS = {"learning_rate": "lr", "num_epochs": "epochs", "max_epochs": "epochs", "batch": "batch_size",
            "patience": "lr_patience", "grad_clip": "clip_grad", "clip_grad_norm": "clip_grad", "enable": "enabled"}


def closest(key: str, section: dict, prefix: str) -> str | None:
    """The closest valid key to a typo: same section first, then anywhere (e.g. `epoch` -> training.epochs)."""
    if SYNONYMS.get(key) in section:
        return prefix + SYNONYMS[key]
    local = difflib.get_close_matches(key, list(section), n=1, cutoff=0.6)
    if local:
        return prefix + local[0]
    leaf = {k.rsplit(".", 1)[-1]: k for k in ALL_KEYS}
    near = difflib.get_close_matches(key, list(leaf), n=1, cutoff=0.6)
    if near:
        return leaf[near[0]]
    return None


def problems(conf: Any, schema: dict = SCHEMA, prefix: str = "") -> list[str]:
    """Every problem of a config dict against the schema, one short phrase each."""
    if not isinstance(conf, dict):
        return [f"{prefix.rstrip('.') or 'config'}: must be a mapping of keys, got {type(conf).__name__}"]
    out = []
    for k, v in conf.items():
        name = f"{prefix}{k}"
        if k not in schema:
            near = closest(str(k), schema, prefix)
            out.append(f"unknown key {name}" + (f" (did you mean {near}?)" if near else ""))
        elif isinstance(schema[k], dict):
            if v is not None:  # an empty section (`training:` with nothing under it) is allowed
                out += problems(v, schema[k], name + ".")
        elif (p := schema[k].problem(v)) is not None:
            out.append(f"{name}: {p}")
    return out
