"""gLN / cLN in int8 arithmetic for fully-integer TFLite.

y = (x - mean) * (rsqrt(var) * gamma) + beta, written as int8 ops, each output on its own grid:
MEAN(x) -> SUB -> MUL (square) -> MEAN (var) -> RSQRT -> MUL gamma (a [C] vector) -> MUL -> ADD beta
(gLN: means over time and channels; cLN: over channels per frame). Folding gamma into the [C] vector
first saves one requantization of the whole tensor. The output keeps the QAT
quantizer's grid; the internal grids, which no QAT quantizer learned, are calibrated here on
calibration audio (min/max of each intermediate; the per-utterance scalars mean, var and rsqrt get 2x
headroom, since three clips cannot show their spread). The mean of the int8 squares is accurate in
spite of the coarse square grid: rounding errors average out over the T x C terms.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from conversion.graph import Graph
from runtime import qmath

HEADROOM = 2.0  # per-utterance scalars (mean, var, rsqrt): range = 2 x the calibrated extreme
INTERNAL = ("mean", "d", "d2", "var", "rsqrt", "rg", "g", "gamma", "beta", "mean_t", "var_t")


def _norm_module(model: Any, name: str) -> Any:
    if name == "bn_norm":
        return model.bottleneck_norm
    i, which = name[1:].split("_")
    return getattr(model.blocks[int(i)], which)


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


def prepare(model: Any, g: Graph) -> None:
    """Before lowering a quantized graph with gLN / cLN: their internal grids from calibration_data/."""
    if g.quantized and any(op.kind == "norm" for op in g.ops):
        from conversion.ptq import calibration_audio
        calibrate_norms(model, g, calibration_audio(None, model.cfg.sample_rate))


@torch.no_grad()
def calibrate_norms(model: Any, g: Graph, clips: list[np.ndarray]) -> None:
    """Give each norm op of a quantized graph the int8 grids of its internal tensors (op.attrs["int_qp"])."""
    from training.model import Pipeline
    ops = [op for op in g.ops if op.kind == "norm"]
    if not ops or not g.quantized:
        return
    seen: dict[str, list[np.ndarray]] = {op.output: [] for op in ops}
    hooks = [_norm_module(model, op.output).register_forward_hook(
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


def folded(attrs: dict) -> tuple[str, ...]:
    """Internals that do not exist: gamma = 1 (no MUL gamma), beta = 0 (no ADD; the converter would
    fold it away); the QAT output FakeQuant then follows the last op that remains."""
    out = () if (attrs["gamma"] != 1).any() else ("gamma", "rg")
    return out + (() if attrs["beta"].any() else ("g", "beta"))


def _qp(lo: float, hi: float) -> tuple[float, int]:
    scale, zp, _, _ = qmath.act_qparams(lo, hi)
    return float(np.float32(scale)), int(zp)


def emit_tf(tf: Any, x: Any, attrs: dict, fq: Any) -> Any:
    """The norm on x [1, 1, T, C] (NHWC) in TF ops; with attrs["int_qp"] every intermediate is
    FakeQuant'd (int8 kernels in TFLite), else float."""
    qp = attrs.get("int_qp") or {}
    q = (lambda v, k: fq(tf, v, qp[k])) if qp else (lambda v, k: v)  # noqa: E731

    def mean_of(v, k):  # gLN: over channels, then time (XNNPACK's int8 MEAN over both axes at once
        # returned zeros for the squares here; two single-axis MEANs are right)
        if attrs["mode"] == "gLN":
            v = q(tf.reduce_mean(v, axis=[3], keepdims=True), k + "_t")
            return q(tf.reduce_mean(v, axis=[2], keepdims=True), k)
        return q(tf.reduce_mean(v, axis=[3], keepdims=True), k)

    mean = mean_of(x, "mean")
    d = q(x - mean, "d")
    var = mean_of(q(d * d, "d2"), "var")
    if qp:
        r = q(tf.math.rsqrt(var), "rsqrt")  # the int8 grid of var has no zero-variance case: code 0 -> max
    else:
        r = tf.math.rsqrt(var + attrs["eps"])
    fold = folded(attrs) if qp else ()
    if "rg" in fold:
        rg = r
    else:
        gamma = q(tf.constant(attrs["gamma"].reshape(1, 1, 1, -1).astype(np.float32)), "gamma")
        rg = q(r * gamma, "rg")
    if "beta" in fold:
        return d * rg
    beta = q(tf.constant(attrs["beta"].reshape(1, 1, 1, -1).astype(np.float32)), "beta")
    return q(d * rg, "g") + beta


def internal_qparams(g: Graph) -> list[tuple[float, int]]:
    """The calibrated internal grids of the graph's integer norms (for the TFLite scale check)."""
    return [qp for op in g.ops if op.kind == "norm" for k, qp in (op.attrs.get("int_qp") or {}).items()
            if op.attrs["mode"] == "gLN" or not k.endswith("_t")]


@torch.no_grad()
def norm_snr(model: Any, g: Graph, wav: np.ndarray) -> dict[str, float]:
    """SNR (dB) of each integer norm against the same norm in float (both onto the QAT output grid),
    given the fake-quant model's own input to that norm on `wav`."""
    import tensorflow as tf
    from conversion.tflite_export import _fq
    from runtime.metrics import snr
    from training.model import Pipeline
    ops = [op for op in g.ops if op.kind == "norm" and op.attrs.get("int_qp")]
    seen: dict[str, np.ndarray] = {}
    hooks = [_norm_module(model, op.output).register_forward_hook(
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
        plain = {k: val for k, val in op.attrs.items() if k != "int_qp"}
        a = _fq(tf, emit_tf(tf, v, op.attrs, _fq), op.qp).numpy()
        b = _fq(tf, emit_tf(tf, v, plain, _fq), op.qp).numpy()
        out[op.output] = snr(a, b)
    return out
