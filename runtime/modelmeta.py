"""The metadata a model file carries for the runtime (format `fqse-3`; `fqse-2` files still load) and its sha256 seal.

Writers serialize the model with `dumps(meta)` as its "fqse" metadata (the seal field holds 64 zeros) and
pass the finished bytes through `seal`, which hashes them and writes the digest into that field (same
length, so nothing moves). `verify` undoes the digest and recomputes it: any modified or truncated byte of
the file gives a one-line error before a native loader ever sees the bytes.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

FORMAT = "fqse-3"  # fqse-3 adds `estimate` (a noise-estimating model: a runtime that ignored it would output noise)
SUPPORTED = ("fqse-2", FORMAT)
_ZEROS = "0" * 64
_SEAL = re.compile(rb'"seal": "sha256:([0-9a-f]{64})"')


class ModelError(ValueError):
    """A model file that cannot be used; one-line message."""


def dumps(meta: dict[str, Any]) -> str:
    """The metadata JSON a writer stores: current format, seal placeholder. It must pass the contract
    (ModelMeta.from_dict): a writer cannot store metadata the runtime would refuse."""
    out = {**meta, "format": FORMAT, "seal": "sha256:" + _ZEROS}
    ModelMeta.from_dict(json.loads(json.dumps(out)), "metadata to write")
    return json.dumps(out)


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


# ---- the contract: what the exporters write and the runtime reads -----------------------------------------------

@dataclass(frozen=True)
class StateMeta:
    """One explicit state tensor of a step model: [channels, length] (int8 codes, or float)."""
    name: str
    channels: int
    length: int
    scale: float | None  # None in a float model
    zero_point: int | None
    initial: tuple[float, ...]  # value per channel at the start of a stream


@dataclass(frozen=True)
class ModelMeta:
    """The typed form of a model file's "fqse" metadata (`from_dict` checks it, `to_dict` writes it back).

    Required keys are those the runtime cannot run without; the optional ones keep None when a file
    lacks them (and `to_dict` then leaves them out, so a dict survives the round trip unchanged).
    Keys no field names are kept in `extra`."""
    format: str
    quantized: bool
    sample_rate: int
    n_splitter: int
    n_combiner: int
    splitter: bool  # the input is the splitter's int8 code streams (else the waveform)
    stride: int  # encoder hop, samples
    causal: bool
    receptive_field_frames: int
    seal: str | None = None
    splitter_bits: int | None = None
    combiner_bits: int | None = None
    io_scale: float | None = None
    kernel_size: int | None = None
    norm_type: str | None = None
    io_layout: str | None = None
    host_padding: str | None = None
    input_gain: str | None = None  # "fixed" (None too) | "peak": offline runs scale the input to full scale
    estimate: str | None = None  # "speech" (None too) | "noise": the host subtracts the output from its input
    output_qparams: tuple[tuple[float, int], ...] | None = None  # per output; None: the 1/128 grid
    activations: str | None = None  # "int8" (None too) | "uint8": every code + 128
    mode: str | None = None  # "step": a streaming step model with explicit state (None: offline)
    step_frames: int | None = None
    step_samples: int | None = None
    stream_offset_samples: int | None = None
    states: tuple[StateMeta, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def step(self) -> bool:
        return self.mode == "step"

    @property
    def uint8(self) -> bool:
        return self.activations == "uint8"

    @property
    def noise_estimate(self) -> bool:
        return self.estimate == "noise"

    @property
    def peak_input_gain(self) -> bool:
        return self.input_gain == "peak"

    @classmethod
    def from_dict(cls, meta: Any, path: str | Path = "model") -> "ModelMeta":
        """Check and type the parsed metadata; ModelError (one line) naming the bad fields otherwise."""
        if not isinstance(meta, dict):
            raise ModelError(f"{path}: FQSE metadata is not a JSON object")
        fmt = meta.get("format")
        if fmt not in SUPPORTED:
            raise ModelError(f"{path}: model metadata format {fmt!r}; this runtime reads {', '.join(SUPPORTED)} "
                             "(export it again with fqse export / fqse convert)")
        need = {**_REQUIRED, **(_STEP_REQUIRED if meta.get("mode") == "step" else {})}
        bad = [k for k, t in need.items() if not _is(meta.get(k), t)]
        bad += [k for k, t in _OPTIONAL.items() if k in meta and k not in need and not _is(meta[k], t)]
        bad += [k for k, ok in _VALUES.items() if meta.get(k) is not None and k not in bad and not ok(meta[k])]
        if "states" in meta and "states" not in bad and not all(_state_ok(st) for st in meta["states"]):
            bad.append("states")
        if bad:
            raise ModelError(f"{path}: FQSE metadata lacks or mistypes {', '.join(bad)} "
                             f"(format {fmt}; this runtime reads {', '.join(SUPPORTED)})")
        if meta["stride"] < 1 or not 8000 <= meta["sample_rate"] <= 192000 or meta["n_combiner"] not in (1, 2) \
                or meta["n_splitter"] < 1:
            raise ModelError(f"{path}: FQSE metadata out of range (stride {meta['stride']}, sample_rate "
                             f"{meta['sample_rate']}, n_splitter {meta['n_splitter']}, "
                             f"n_combiner {meta['n_combiner']})")
        oq = meta.get("output_qparams")
        if oq is not None and len(oq) != meta["n_combiner"]:
            raise ModelError(f"{path}: FQSE metadata output_qparams has {len(oq)} entries for "
                             f"n_combiner {meta['n_combiner']}")
        known = {f.name for f in fields(cls)} - {"extra", "states", "output_qparams"}
        kw = {k: v for k, v in meta.items() if k in known}
        if oq is not None:
            kw["output_qparams"] = tuple((float(sc), int(zp)) for sc, zp in oq)
        if meta.get("states") is not None:
            kw["states"] = tuple(StateMeta(st["name"], st["channels"], st["length"], st.get("scale"),
                                           st.get("zero_point"), tuple(st["initial"])) for st in meta["states"])
        return cls(**kw, extra={k: v for k, v in meta.items() if k not in known | {"states", "output_qparams"}})

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict (None fields left out; `extra` keys kept)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "extra" or v is None:
                continue
            if f.name == "output_qparams":
                v = [[sc, zp] for sc, zp in v]
            elif f.name == "states":
                v = [{"name": st.name, "channels": st.channels, "length": st.length, "scale": st.scale,
                      "zero_point": st.zero_point, "initial": list(st.initial)} for st in v]
            out[f.name] = v
        return {**out, **self.extra}


# key -> type(s); int keys refuse bools, float keys take ints
_REQUIRED = {"quantized": bool, "sample_rate": int, "n_splitter": int, "n_combiner": int, "splitter": bool,
             "stride": int, "causal": bool, "receptive_field_frames": int}
_STEP_REQUIRED = {"step_samples": int, "stream_offset_samples": int, "states": list}
_OPTIONAL = {"seal": str, "splitter_bits": int, "combiner_bits": int, "io_scale": float, "kernel_size": int,
             "norm_type": str, "io_layout": str, "host_padding": str, "input_gain": str, "output_qparams": list,
             "estimate": str, "activations": str, "mode": str, "step_frames": int, "step_samples": int,
             "stream_offset_samples": int, "states": list}
_VALUES = {"input_gain": lambda v: v in ("fixed", "peak"), "estimate": lambda v: v in ("speech", "noise"), "activations": lambda v: v in ("int8", "uint8"),
           "mode": lambda v: v == "step",
           "output_qparams": lambda v: all(isinstance(p, list) and len(p) == 2 and _is(p[0], float)
                                           and _is(p[1], int) and p[0] > 0 for p in v)}
_STATE = {"name": str, "channels": int, "length": int, "initial": list}


def _is(v: Any, t: type) -> bool:
    if t is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if t is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    return isinstance(v, t)


def _state_ok(st: Any) -> bool:
    return isinstance(st, dict) and all(_is(st.get(k), t) for k, t in _STATE.items()) \
        and len(st["initial"]) == st["channels"] and all(_is(v, float) for v in st["initial"]) \
        and (st.get("scale") is None or _is(st["scale"], float)) \
        and (st.get("zero_point") is None or _is(st["zero_point"], int))


def parse(meta: Any, path: str | Path, sealed: bool) -> ModelMeta:
    """The typed metadata if this runtime can run it: supported format, sealed, keys and types."""
    if isinstance(meta, (str, bytes)):
        try:
            meta = json.loads(meta)
        except ValueError:
            raise ModelError(f"{path}: FQSE metadata is not valid JSON") from None
    if isinstance(meta, dict) and meta.get("format") in SUPPORTED and not sealed:
        raise ModelError(f"{path}: {meta['format']} model without its sha256 seal; export it again")
    return ModelMeta.from_dict(meta, path)


def check(meta: Any, path: str | Path, sealed: bool) -> dict[str, Any]:
    """The parsed metadata as a dict (what `meta[...]` users read), checked by `parse`."""
    return parse(meta, path, sealed).to_dict()
