"""The metadata a model file carries for the runtime (format `fqse-2`) and its sha256 seal.

Writers serialize the model with `dumps(meta)` as its "fqse" metadata (the seal field holds 64 zeros) and
pass the finished bytes through `seal`, which hashes them and writes the digest into that field (same
length, so nothing moves). `verify` undoes the digest and recomputes it: any modified or truncated byte of
the file gives a one-line error before a native loader ever sees the bytes.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

FORMAT = "fqse-2"
SUPPORTED = (FORMAT,)
_ZEROS = "0" * 64
_SEAL = re.compile(rb'"seal": "sha256:([0-9a-f]{64})"')


class ModelError(ValueError):
    """A model file that cannot be used; one-line message."""


def dumps(meta: dict[str, Any]) -> str:
    """The metadata JSON a writer stores: current format, seal placeholder."""
    return json.dumps({**meta, "format": FORMAT, "seal": "sha256:" + _ZEROS})


def _digest(raw: bytes, at: re.Match) -> str:
    zeroed = raw[: at.start(1)] + _ZEROS.encode() + raw[at.end(1):]
    return hashlib.sha256(zeroed).hexdigest()


def seal(raw: bytes) -> bytes:
    """Write the sha256 of the model bytes into their seal field (also re-seals an edited sealed model)."""
    found = list(_SEAL.finditer(raw))
    if len(found) != 1:
        raise ModelError(f"cannot seal: {len(found)} seal fields in the model bytes (expected 1)")
    at = found[0]
    return raw[: at.start(1)] + _digest(raw, at).encode() + raw[at.end(1):]


def verify(raw: bytes, path: str | Path) -> bool:
    """True when the bytes hold a seal that matches; False when they hold none; ModelError when it differs."""
    found = list(_SEAL.finditer(raw))
    if not found:
        return False
    if len(found) > 1 or _digest(raw, found[0]) != found[0].group(1).decode():
        raise ModelError(f"{path}: the model file is corrupted or was modified (sha256 seal does not match); "
                         "export or copy it again")
    return True


_KEYS = {"quantized": bool, "sample_rate": int, "n_splitter": int, "n_combiner": int, "splitter": bool,
         "stride": int, "causal": bool, "receptive_field_frames": int}
_STEP_KEYS = {"step_samples": int, "stream_offset_samples": int, "states": list}


def check(meta: Any, path: str | Path, sealed: bool) -> dict[str, Any]:
    """The parsed metadata if this runtime can run it: supported format, sealed, required keys and types."""
    if isinstance(meta, (str, bytes)):
        try:
            meta = json.loads(meta)
        except ValueError:
            raise ModelError(f"{path}: FQSE metadata is not valid JSON") from None
    if not isinstance(meta, dict):
        raise ModelError(f"{path}: FQSE metadata is not a JSON object")
    fmt = meta.get("format")
    if fmt not in SUPPORTED:
        raise ModelError(f"{path}: model metadata format {fmt!r}; this runtime reads {', '.join(SUPPORTED)} "
                         "(export it again with fqse export / fqse convert)")
    if not sealed:
        raise ModelError(f"{path}: {fmt} model without its sha256 seal; export it again")
    need = {**_KEYS, **(_STEP_KEYS if meta.get("mode") == "step" else {})}
    bad = [k for k, t in need.items() if not isinstance(meta.get(k), t) or (t is int and isinstance(meta[k], bool))]
    if bad:
        raise ModelError(f"{path}: FQSE metadata lacks or mistypes {', '.join(bad)}")
    if meta["stride"] < 1 or not 8000 <= meta["sample_rate"] <= 192000 or meta["n_combiner"] not in (1, 2) \
            or meta["n_splitter"] < 1:
        raise ModelError(f"{path}: FQSE metadata out of range (stride {meta['stride']}, sample_rate "
                         f"{meta['sample_rate']}, n_splitter {meta['n_splitter']}, n_combiner {meta['n_combiner']})")
    return meta
