"""The op registry: one `OpKind` per kind of deploy-graph op (conversion/graph.py's `Op.kind`).

An op kind declares, beside each other, everything the pipeline needs from it:
- `onnx(b, op, quantized)`: its ONNX emitter; adds the nodes that compute `op.output + "_f"` (the float
  tensor before the op's output quantizer) with the builder `b` (conversion/onnx_export.py).
- `tf(tf, op, env, quantized)`: its TensorFlow emitter (for TFLite); returns the NHWC tensor [1, 1, T, C]
  before the output FakeQuant, reading its inputs from `env` (tensor name -> TF tensor).
- `int8_missing(op)`: None when that TF form of a quantized op lowers to int8 kernels only (a
  fully-integer TFLite model), else why not, as one phrase.
- `step(ctx, op)`: its streaming-state rule, used by conversion/step_graph.py: what the op becomes in a
  step model, with which state (`stateless` when the op sees one time step at a time).
- `channels(op, chans)`: its output channel count, given the channel counts by tensor name.
- `intref`: the TFLite builtin ops its int8 form lowers to whose integer arithmetic runtime/intref.py
  holds (`IntegerReference._op_<name>`): its numpy integer reference, referenced there so that the
  runtime keeps importing neither torch nor TensorFlow. `reference`: a numpy float reference, if any.
- `prepare(model, g)` (optional, class method): rewrites a graph's ops of this kind before emission
  (e.g. calibrates internal int8 grids).
A rule left as None does not exist: an export that needs it fails with a one-line `OpRuleError`
naming the op and the missing rule, before anything is emitted. So is an op whose kind is unknown.

Adding an op is one new module in this package (conversion/ops/<kind>.py) with a registered OpKind;
the package imports every module in it.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar

import numpy as np

from conversion.errors import OpRuleError
from runtime import qmath

RULES = {"onnx": "ONNX emitter", "tf": "TensorFlow (TFLite) emitter", "int8": "integer TFLite lowering",
         "step": "streaming-state (step model)"}

_REGISTRY: dict[str, "OpKind"] = {}


class OpKind:
    kind: ClassVar[str]
    intref: ClassVar[tuple[str, ...]] = ()
    reference: ClassVar[Callable | None] = None
    onnx: Callable | None = None
    tf: Callable | None = None
    step: Callable | None = None

    def channels(self, op: Any, chans: dict[str, int]) -> int:
        return chans[op.inputs[0]]

    def int8_missing(self, op: Any) -> str | None:
        return None


def register(cls: type[OpKind]) -> type[OpKind]:
    """Class decorator: one instance of the OpKind serves its kind."""
    if cls.kind in _REGISTRY:
        raise ValueError(f"op kind {cls.kind!r} registered twice ({type(_REGISTRY[cls.kind]).__module__}, {cls.__module__})")
    _REGISTRY[cls.kind] = cls()
    return cls


def kinds() -> dict[str, OpKind]:
    """Every registered op kind, by name."""
    return dict(_REGISTRY)


def get(op: Any) -> OpKind:
    """The OpKind of an op; an unknown kind is a one-line OpRuleError."""
    k = _REGISTRY.get(op.kind)
    if k is None:
        raise OpRuleError(f"op {op.output} (kind {op.kind!r}): unknown op kind; known: {', '.join(sorted(_REGISTRY))} "
                          "(each is a module in conversion/ops/)")
    return k


def rule(op: Any, name: str) -> Callable:
    """The op's rule `name` (onnx | tf | int8 | step), bound; a missing one is a one-line OpRuleError."""
    k = get(op)
    if name == "int8":
        why = k.int8_missing(op) or (None if k.tf else f"{type(k).__module__} declares no TF emitter")
        fn = None if why else k.tf
    else:
        fn = getattr(k, name, None)
        why = f"{type(k).__module__} declares none"
    if fn is None:
        raise OpRuleError(f"op {op.output} (kind {op.kind!r}): no {RULES[name]} rule: {why}")
    return fn


def require(ops: list[Any], names: tuple[str, ...]) -> None:
    """Before emitting anything: every op is of a known kind and has the rules `names`."""
    for op in ops:
        for name in names:
            rule(op, name)


def prepare(model: Any, g: Any) -> None:
    """Run every op kind's `prepare` hook on the graph (in kind order), before emission."""
    for name in sorted(_REGISTRY):
        hook = getattr(_REGISTRY[name], "prepare", None)
        if hook is not None:
            hook(model, g)


def stateless(ctx: Any, op: Any) -> None:
    """Step rule of an op that sees one time step at a time: it carries no state and stays as it is."""
    ctx.keep(op)


# --- helpers the emitters share ------------------------------------------------------------------------

def i64(*v: int) -> np.ndarray:
    return np.array(v, np.int64)


def fake_quant(tf: Any, x: Any, qp: tuple[float, int] | None, name: str | None = None) -> Any:
    """x through a FakeQuant with exactly the int8 grid qp = (scale, zero point); None: x unchanged."""
    if qp is None:
        return x
    scale, zp = qp
    lo, hi = qmath.grid_range(scale, zp)
    return tf.quantization.fake_quant_with_min_max_args(x, min=lo, max=hi, num_bits=8, name=name)
