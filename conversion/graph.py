"""The deployed graph as a short list of integer-ready ops, read off a trained (QAT) model.

The ops are recorded from the model's own forward (ConvTasNet.trace, training/tape.py), so the torch
model, the deploy graph and the bias links cannot disagree. Both emitters (ONNX QDQ in onnx_export.py,
TFLite in tflite_export.py) are written against this list. Weights are int8 codes with per-channel scales
(from the QAT weight quantizers), activations carry the QAT quantizers' (scale, zero point).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from conversion.errors import ExportError
from runtime import modelmeta, qmath
from training.model import ConvTasNet
from training.tape import Step


@dataclass
class Op:
    kind: str  # a kind registered in conversion/ops/ (one module each: its emitters and streaming rule)
    inputs: list[str]
    output: str
    qp: tuple[float, int] | None  # output (scale, int8 zero point); None in a float graph
    attrs: dict[str, Any] = field(default_factory=dict)
    quantizer: Any = None  # the torch module that quantizes the output (for per-layer parity)
    module: Any = None  # the torch layer it was recorded from (norm calibration reads its inputs)


@dataclass
class Graph:
    ops: list[Op]
    input: str
    outputs: list[str]
    meta: dict[str, Any]
    quantized: bool


def _qp(q: Any) -> tuple[float, int] | None:
    if not hasattr(q, "qparams"):
        return None
    scale, zp, _, _ = q.qparams()
    return float(np.float32(scale)), int(zp)


def _conv(x: str, out: str, w: torch.Tensor, wq: Any, quantized: bool, conv: Any = None,
          pad: tuple[int, int] = (0, 0), gain: float = 1.0, bias: torch.Tensor | None = None) -> Op:
    """A conv op: float weights always, int8 codes and per-channel scales when quantized."""
    attrs: dict[str, Any] = {"stride": 1, "dilation": 1, "groups": 1, "pad": tuple(pad), "bias": bias}
    if conv is not None:
        attrs.update(stride=conv.stride[0], dilation=conv.dilation[0], groups=conv.groups, bias=conv.bias)
    if attrs["bias"] is not None:
        attrs["bias"] = attrs["bias"].detach().numpy().astype(np.float32)
    w = w.detach()
    if quantized:
        attrs["w_int"] = wq.int_weights(w).numpy()
        attrs["w_scale"] = (wq.scales(w).numpy() * gain).astype(np.float32)
        attrs["w_float"] = attrs["w_int"].astype(np.float32) * attrs["w_scale"][:, None, None]
    else:
        attrs["w_float"] = (w.numpy() * gain).astype(np.float32)
    return Op("conv", [x], out, None, attrs)


def build_graph(model: ConvTasNet, quantized: bool = True) -> Graph:
    """The deploy graph of `model` (eval mode), recorded from its forward (ConvTasNet.trace): each recorded
    step becomes one op with its weights and output grid. `quantized=False` gives the float graph."""
    if quantized and not model.cfg.quantize:
        raise ExportError("this checkpoint is a float model (no QAT quantizers): export it with --float, "
                          "or train it with quantization enabled first")
    model = model.eval()
    tape, outputs = model.trace()
    ops = [_lower(step, quantized) for step in tape.steps]
    if quantized:
        _snap_biases(ops)
    return Graph(_live(ops, outputs), "input", outputs, metadata(model, quantized), quantized)


def _lower(step: Step, quantized: bool) -> Op:
    """A recorded step as a deploy op: weights as int8 codes and scales, the output quantizer's grid."""
    mod, x, out = step.module, step.inputs[0], step.output
    if step.kind == "conv":
        op = (_conv(x, out, mod.conv.weight, mod.wq, quantized, mod.conv, mod.pad) if mod is not None else
              _conv(x, out, step.attrs["weight"](), step.attrs["wq"], quantized, gain=step.attrs["gain"]))
    elif step.kind == "norm" and mod.kind == "BN":  # frozen BN: a per-channel affine = a depthwise 1x1 conv
        a, b = (t.detach() for t in mod.affine())
        op = _conv(x, out, a[:, None, None], mod.wq, quantized, bias=b)
        op.attrs["groups"] = a.numel()
    elif step.kind == "norm":
        op = Op("norm", [x], out, None, {"mode": mod.kind, "gamma": mod.gamma.detach().numpy(),
                                         "beta": mod.beta.detach().numpy(), "eps": mod.eps})
    elif step.kind == "prelu":
        op = Op("prelu", [x], out, None, {"alpha": float(mod.weight.detach().reshape(-1)[0])})
    else:  # relu, add, sub, mul, ola: no weights
        op = Op(step.kind, list(step.inputs), out, None, dict(step.attrs))
    op.qp = _qp(step.quantizer) if quantized else None
    op.quantizer, op.module = step.quantizer, mod
    return op


def _snap_biases(ops: list[Op]) -> None:
    """Put biases on the int32 grid (input scale x weight scale), as QAT and the int8 kernels do."""
    qp_of = {"input": (qmath.IO_SCALE, 0), **{op.output: op.qp for op in ops}}
    for op in ops:
        if op.kind == "conv" and op.attrs["bias"] is not None:
            a = op.attrs
            a["bias"] = qmath.snap_bias(a["bias"], qp_of[op.inputs[0]][0], a["w_scale"]).astype(np.float32)


def _live(ops: list[Op], outputs: list[str]) -> list[Op]:
    """Drop ops whose result is never used (the last block's residual path)."""
    needed, keep = set(outputs), []
    for op in reversed(ops):
        if op.output in needed:
            keep.append(op)
            needed.update(op.inputs)
    return keep[::-1]


def metadata(model: ConvTasNet, quantized: bool) -> dict[str, Any]:
    """What a runtime needs to run the model file alone."""
    cfg = model.cfg
    rf = 1 + sum((b.dconv.conv.kernel_size[0] - 1) * b.dconv.conv.dilation[0] for b in model.blocks)
    return {"format": modelmeta.FORMAT, "quantized": quantized, "sample_rate": cfg.sample_rate,
            "n_splitter": cfg.n_splitter, "n_combiner": cfg.n_combiner, "splitter": cfg.quantize,
            "splitter_bits": qmath.IO_BITS, "combiner_bits": qmath.IO_BITS, "io_scale": qmath.IO_SCALE,
            "kernel_size": cfg.kernel_size, "stride": cfg.stride, "causal": cfg.causal, "norm_type": cfg.norm_type,
            "receptive_field_frames": rf, "io_layout": "NCW: input [1, S, T], outputs C x [1, 1, T]",
            "host_padding": "one hop of zeros before; after: zeros up to a multiple of the hop plus two hops",
            "input_gain": cfg.input_gain, "estimate": cfg.estimate, **({"output_qparams": output_qparams(model)} if quantized else {})}


def output_qparams(model: ConvTasNet) -> list[list[float]]:
    """(scale, zero point) of each int8 output: the fixed 1/128 grid, or learned (imported models)."""
    tape, outputs = model.trace()
    return [list(_qp(tape.producer_quantizer(name))) for name in outputs]
