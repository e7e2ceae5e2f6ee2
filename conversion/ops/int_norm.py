"""int_norm: gLN / cLN in int8 arithmetic, for fully-integer TFLite (and the same grids in ONNX QDQ).

y = (x - mean) * (rsqrt(var) * gamma) + beta, written as int8 ops, each output on its own grid:
MEAN(x) -> SUB -> MUL (square) -> MEAN (var) -> RSQRT -> MUL gamma (a [C] vector) -> MUL -> ADD beta
(gLN: means over time and channels; cLN: over channels per frame). Folding gamma into the [C] vector
first saves one requantization of the whole tensor. The output keeps the QAT
quantizer's grid; the internal grids, which no QAT quantizer learned, are calibrated here on
calibration audio (min/max of each intermediate; the per-utterance scalars mean, var and rsqrt get 2x
headroom, since three clips cannot show their spread). The mean of the int8 squares is accurate in
spite of the coarse square grid: rounding errors average out over the T x C terms.

`prepare` (run on every graph before emission) turns a quantized graph's `norm` ops into `int_norm` ops
with their calibrated internal grids (attrs["int_qp"]).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from conversion.ops.base import fake_quant, register
from conversion.ops.norm import Norm, emit_tf, folded
from runtime import qmath

HEADROOM = 2.0  # per-utterance scalars (mean, var, rsqrt): range = 2 x the calibrated extreme
INTERNAL = ("mean", "d", "d2", "var", "rsqrt", "rg", "g", "gamma", "beta", "mean_t", "var_t")


def _stats(x: np.ndarray, mode: str, gamma: np.ndarray, eps: float) -> dict[str, np.ndarray]:
    """Intermediates of the norm on x [C, T] (float64)."""
    axes = (0, 1) if mode == "gLN" else (0,)
    mean = x.mean(axis=axes, keepdims=True)
    d = x - mean
    d2 = d * d
    var = d2.mean(axis=axes, keepdims=True)
    r = 1.0 / np.sqrt(var + eps)
    n = d * r
    return {"mean": mean, "d": d, "d2": d2, "var": var, "rsqrt": r, "rg": r * gamma[:, None], "g": n * gamma[:, None],
            "mean_t": x.mean(axis=0), "var_t": d2.mean(axis=0)}


@torch.no_grad()
def calibrate_norms(model: Any, g: Any, clips: list[np.ndarray]) -> None:
    """Give each norm op of a quantized graph the int8 grids of its internal tensors (op.attrs["int_qp"]);
    it becomes an int_norm op."""
    from training.model import Pipeline
    ops = [op for op in g.ops if op.kind == "norm"]
    if not ops or not g.quantized:
        return
    seen: dict[str, list[np.ndarray]] = {op.output: [] for op in ops}
    hooks = [op.module.register_forward_hook(
        lambda m, i, o, name=op.output: seen[name].append(i[0][0].double().numpy())) for op in ops]
    pipe = Pipeline(model.cfg)
    try:
        for wav in clips:
            x, _ = pipe.pre(torch.from_numpy(np.asarray(wav, np.float32))[None])
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    for op in ops:
        a = op.attrs
        lo: dict[str, float] = {}
        hi: dict[str, float] = {}
        for x in seen[op.output]:
            for k, v in _stats(x, a["mode"], a["gamma"].astype(np.float64), a["eps"]).items():
                lo[k] = min(lo.get(k, 0.0), float(v.min()))
                hi[k] = max(hi.get(k, 0.0), float(v.max()))
        for k in ("mean", "var", "rsqrt"):
            lo[k], hi[k] = lo[k] * HEADROOM, hi[k] * HEADROOM
        lo["gamma"], hi["gamma"] = float(a["gamma"].min()), float(a["gamma"].max())
        lo["beta"], hi["beta"] = float(a["beta"].min()), float(a["beta"].max())
        a["int_qp"] = {k: _qp(lo[k], hi[k]) for k in INTERNAL if k not in folded(a)}
        op.kind = IntNorm.kind


def to_float(g: Any) -> None:
    """Undo calibrate_norms: the graph's int_norm ops back to float norms (for diagnosis)."""
    for op in g.ops:
        if op.kind == IntNorm.kind:
            op.kind = Norm.kind
            op.attrs.pop("int_qp", None)


def _qp(lo: float, hi: float) -> tuple[float, int]:
    scale, zp, _, _ = qmath.act_qparams(lo, hi)
    return float(np.float32(scale)), int(zp)


def internal_qparams(g: Any) -> list[tuple[float, int]]:
    """The calibrated internal grids of the graph's integer norms (for the TFLite scale check)."""
    return [qp for op in g.ops if op.kind == IntNorm.kind for k, qp in op.attrs["int_qp"].items()
            if op.attrs["mode"] == "gLN" or not k.endswith("_t")]


@register
class IntNorm(Norm):
    kind = "int_norm"
    intref = ()  # MEAN and RSQRT have no integer reference in runtime/intref.py (it refuses them, one line)
    reference = staticmethod(_stats)  # the float64 intermediates the grids are calibrated on

    @classmethod
    def prepare(cls, model: Any, g: Any) -> None:
        """A quantized graph's gLN / cLN: int8 internals, calibrated on calibration_data/."""
        if g.quantized and any(op.kind == Norm.kind for op in g.ops):
            from conversion.ptq import calibration_audio
            calibrate_norms(model, g, calibration_audio(None, model.cfg.sample_rate))

    def int8_missing(self, op):
        return None

    def onnx(self, b, op, quantized):
        """Every intermediate on its calibrated int8 grid (as in TFLite)."""
        x, raw, a = op.inputs[0], op.output + "_f", op.attrs
        qp = a["int_qp"]
        fold = folded(a)

        def mean(v: str, k: str) -> str:
            if a["mode"] == "gLN":  # over channels, then time
                v = b.qdq(b.node("ReduceMean", [v], f"{raw}_{k}_tf", axes=[1], keepdims=1), f"{raw}_{k}_t", qp[k + "_t"])
                axis = 2
            else:
                axis = 1
            return b.qdq(b.node("ReduceMean", [v], f"{raw}_{k}_f", axes=[axis], keepdims=1), f"{raw}_{k}", qp[k])

        m = mean(x, "mean")
        d = b.qdq(b.node("Sub", [x, m], raw + "_d_f"), raw + "_d", qp["d"])
        var = mean(b.qdq(b.node("Mul", [d, d], raw + "_d2_f"), raw + "_d2", qp["d2"]), "var")
        r = b.node("Reciprocal", [b.node("Sqrt", [var], raw + "_sqrt")], raw + "_rsqrt_f")
        r = b.qdq(r, raw + "_rsqrt", qp["rsqrt"])
        if "rg" not in fold:  # rsqrt * gamma: a [C] vector
            gamma = b.qdq(b.const(raw + "_gamma_c", a["gamma"].reshape(1, -1, 1).astype(np.float32)), raw + "_gamma", qp["gamma"])
            r = b.qdq(b.node("Mul", [r, gamma], raw + "_rg_f"), raw + "_rg", qp["rg"])
        if "beta" in fold:
            b.node("Mul", [d, r], raw)
            return
        g = b.qdq(b.node("Mul", [d, r], raw + "_g_f"), raw + "_g", qp["g"])
        beta = b.qdq(b.const(raw + "_beta_c", a["beta"].reshape(1, -1, 1).astype(np.float32)), raw + "_beta", qp["beta"])
        b.node("Add", [g, beta], raw)

    def tf(self, tf, op, env, quantized):
        qp = op.attrs["int_qp"]
        return emit_tf(tf, env[op.inputs[0]], op.attrs, lambda v, k: fake_quant(tf, v, qp[k]))


@torch.no_grad()
def norm_snr(model: Any, g: Any, wav: np.ndarray) -> dict[str, float]:
    """SNR (dB) of each integer norm against the same norm in float (both onto the QAT output grid),
    given the fake-quant model's own input to that norm on `wav`."""
    import tensorflow as tf
    from runtime.metrics import snr
    from training.model import Pipeline
    ops = [op for op in g.ops if op.kind == IntNorm.kind]
    seen: dict[str, np.ndarray] = {}
    hooks = [op.module.register_forward_hook(
        lambda m, i, o, name=op.output: seen.__setitem__(name, i[0][0].numpy())) for op in ops]
    try:
        x, _ = Pipeline(model.cfg).pre(torch.from_numpy(np.asarray(wav, np.float32))[None])
        model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for op in ops:
        v = tf.constant(seen[op.output].T[None, None].astype(np.float32))
        qp = op.attrs["int_qp"]
        a = fake_quant(tf, emit_tf(tf, v, op.attrs, lambda t, k: fake_quant(tf, t, qp[k])), op.qp).numpy()
        b = fake_quant(tf, emit_tf(tf, v, op.attrs), op.qp).numpy()
        out[op.output] = snr(a, b)
    return out
