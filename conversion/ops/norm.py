"""norm: gLN / cLN in float (attrs: mode, gamma, beta, eps): y = (x - mean) / sqrt(var + eps) * gamma + beta,
over time and channels (gLN) or over channels per frame (cLN). A quantized graph's norms become
`int_norm` ops (conversion/ops/int_norm.py) before emission; a float norm has no int8 TFLite form."""
from __future__ import annotations

import numpy as np

from conversion.errors import ExportError
from conversion.ops.base import OpKind, register


def layer_norm(x: np.ndarray, mode: str, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    """numpy reference on x [C, T] (float64)."""
    axes = (0, 1) if mode == "gLN" else (0,)
    d = x - x.mean(axis=axes, keepdims=True)
    return d / np.sqrt((d * d).mean(axis=axes, keepdims=True) + eps) * gamma[:, None] + beta[:, None]


def emit_tf(tf, x, attrs: dict, q=None):
    """The norm on x [1, 1, T, C] (NHWC) in TF ops; `q(v, k)` puts the internal tensor k on its int8 grid
    (conversion/ops/int_norm.py), None: float throughout."""
    integer = q is not None
    q = q or (lambda v, k: v)

    def mean_of(v, k):  # gLN: over channels, then time (XNNPACK's int8 MEAN over both axes at once
        # returned zeros for the squares here; two single-axis MEANs are right)
        if attrs["mode"] == "gLN":
            v = q(tf.reduce_mean(v, axis=[3], keepdims=True), k + "_t")
            return q(tf.reduce_mean(v, axis=[2], keepdims=True), k)
        return q(tf.reduce_mean(v, axis=[3], keepdims=True), k)

    mean = mean_of(x, "mean")
    d = q(x - mean, "d")
    var = mean_of(q(d * d, "d2"), "var")
    if integer:
        r = q(tf.math.rsqrt(var), "rsqrt")  # the int8 grid of var has no zero-variance case: code 0 -> max
    else:
        r = tf.math.rsqrt(var + attrs["eps"])
    fold = folded(attrs) if integer else ()
    if "rg" in fold:
        rg = r
    else:
        gamma = q(tf.constant(attrs["gamma"].reshape(1, 1, 1, -1).astype(np.float32)), "gamma")
        rg = q(r * gamma, "rg")
    if "beta" in fold:
        return d * rg
    beta = q(tf.constant(attrs["beta"].reshape(1, 1, 1, -1).astype(np.float32)), "beta")
    return q(d * rg, "g") + beta


def folded(attrs: dict) -> tuple[str, ...]:
    """Internals that do not exist in the integer form: gamma = 1 (no MUL gamma), beta = 0 (no ADD; the
    converter would fold it away); the QAT output FakeQuant then follows the last op that remains."""
    out = () if (attrs["gamma"] != 1).any() else ("gamma", "rg")
    return out + (() if attrs["beta"].any() else ("g", "beta"))


@register
class Norm(OpKind):
    kind = "norm"
    reference = staticmethod(layer_norm)

    def int8_missing(self, op):
        return (f"{op.attrs['mode']} normalization has no integer-only TFLite form without its internal ranges "
                "(conversion.ops.int_norm.prepare)")

    def onnx(self, b, op, quantized):
        x, raw, a = op.inputs[0], op.output + "_f", op.attrs
        axes = [1, 2] if a["mode"] == "gLN" else [1]
        mean = b.node("ReduceMean", [x], raw + "_mean", axes=axes, keepdims=1)
        d = b.node("Sub", [x, mean], raw + "_d")
        var = b.node("ReduceMean", [b.node("Mul", [d, d], raw + "_d2")], raw + "_var", axes=axes, keepdims=1)
        std = b.node("Sqrt", [b.node("Add", [var, b.const(raw + "_eps", np.float32(a["eps"]))], raw + "_ve")], raw + "_std")
        n = b.node("Div", [d, std], raw + "_n")
        g = b.node("Mul", [n, b.const(raw + "_g", a["gamma"].reshape(1, -1, 1).astype(np.float32))], raw + "_ng")
        b.node("Add", [g, b.const(raw + "_b", a["beta"].reshape(1, -1, 1).astype(np.float32))], raw)

    def tf(self, tf, op, env, quantized):
        return emit_tf(tf, env[op.inputs[0]], op.attrs)

    def step(self, ctx, op):
        """cLN sees one frame at a time: no state. gLN sees the whole utterance: no step form."""
        if op.attrs["mode"] != "cLN":
            raise ExportError(f"{op.output}: {op.attrs['mode']} has no streaming form (it normalizes over the whole "
                              "utterance); use cLN or BN for a step model")
        ctx.keep(op)
