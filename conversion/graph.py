"""The deployed graph as a short list of integer-ready ops, read off a trained (QAT) model.

Both emitters (ONNX QDQ in onnx_export.py, TFLite in tflite_export.py) are written against this list,
so the network is described once for deployment. Weights are int8 codes with per-channel scales
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


@dataclass
class Op:
    kind: str  # a kind registered in conversion/ops/ (one module each: its emitters and streaming rule)
    inputs: list[str]
    output: str
    qp: tuple[float, int] | None  # output (scale, int8 zero point); None in a float graph
    attrs: dict[str, Any] = field(default_factory=dict)
    quantizer: Any = None  # the torch module that quantizes the output (for per-layer parity)


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
    """Read the deploy graph off `model` (eval mode). `quantized=False` gives the float graph."""
    cfg = model.cfg
    if quantized and not cfg.quantize:
        raise ExportError("this checkpoint is a float model (no QAT quantizers): export it with --float, "
                          "or train it with quantization enabled first")
    model = model.eval()
    ops: list[Op] = []
    qp = (lambda q: _qp(q)) if quantized else (lambda q: None)

    def add_conv(op, q):
        op.qp, op.quantizer = qp(q), q
        ops.append(op)
        return op.output

    def conv(qc, x, out, q):
        return add_conv(_conv(x, out, qc.conv.weight, qc.wq, quantized, qc.conv, qc.pad), q)

    def unary(kind, x, out, q, **attrs):
        ops.append(Op(kind, [x], out, qp(q), attrs, q))
        return out

    def binary(kind, a, b, out, q):
        ops.append(Op(kind, [a, b], out, qp(q), quantizer=q))
        return out

    def norm(mod, x, out, q):
        if mod.kind == "BN":
            a, b = (t.detach() for t in mod.affine())
            op = _conv(x, out, a[:, None, None], mod.wq, quantized, bias=b)
            op.attrs["groups"] = a.numel()
            return add_conv(op, q)
        return unary("norm", x, out, q, mode=mod.kind, gamma=mod.gamma.detach().numpy(),
                     beta=mod.beta.detach().numpy(), eps=mod.eps)

    def prelu(mod, x, out, q):
        return unary("prelu", x, out, q, alpha=float(mod.weight.detach().reshape(-1)[0]))

    if cfg.encoder_split:
        hi = conv(model.encoder, "input", "enc_hi", model.q_enc_hi)
        enc = binary("add", hi, conv(model.encoder_lo, "input", "enc_lo", model.q_enc_lo), "enc", model.q_enc)
    else:
        enc = conv(model.encoder, "input", "enc", model.q_enc)
    y = norm(model.bottleneck_norm, enc, "bn_norm", model.q_bn_norm)
    y = conv(model.bottleneck, y, "bottleneck", model.q_bottleneck)
    skip_sum = None
    for i, blk in enumerate(model.blocks):
        p = f"b{i}_"
        h = conv(blk.in_conv, y, p + "in", blk.q_in)
        h = prelu(blk.prelu1, h, p + "prelu1", blk.q_prelu1)
        h = norm(blk.norm1, h, p + "norm1", blk.q_norm1)
        h = conv(blk.dconv, h, p + "dconv", blk.q_dconv)
        h = prelu(blk.prelu2, h, p + "prelu2", blk.q_prelu2)
        h = norm(blk.norm2, h, p + "norm2", blk.q_norm2)
        res = conv(blk.res_conv, h, p + "res", blk.q_res)
        skip = conv(blk.skip_conv, h, p + "skip", blk.q_skip)
        y = binary("add", y, res, p + "out", blk.q_add)
        skip_sum = skip if skip_sum is None else binary("add", skip_sum, skip, p + "skipsum", model.q_skips[i - 1])
    m = prelu(model.mask_prelu, skip_sum, "mask_prelu", model.q_mask_prelu)
    m = conv(model.mask_conv, m, "mask_conv_f", None)
    ops[-1].qp = None  # the ReLU follows at once: one fused op in int8
    m = unary("relu", m, "mask", model.q_mask)
    masked = binary("mul", m, enc, "masked", model.q_masked)

    dec_w = model.decoder_filters[:, 0, :].t().unsqueeze(-1)  # [L, N, 1]

    def decode(x, name, q_frames, q_out, gain=1.0):
        f = add_conv(_conv(x, name + "_frames", dec_w, model.dec_wq, quantized, gain=gain), q_frames)
        return unary("ola", f, name, q_out, stride=cfg.stride)

    outputs = [decode(masked, "y0", model.q_frames, model.q_out)]
    if cfg.n_combiner == 2:
        r = conv(model.res_encoder, "y0", "res_enc", model.q_res_enc)
        e = binary("sub", masked, r, "err", model.q_err)
        outputs.append(decode(e, "y1", model.q_res_frames, model.q_res_out, gain=cfg.res_gain))
    if quantized:
        _snap_biases(ops)
    return Graph(_live(ops, outputs), "input", outputs, metadata(model, quantized), quantized)


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
    rf = 1 + sum((cfg.conv_kernel_size - 1) * 2 ** x for _ in range(cfg.n_repeats) for x in range(cfg.n_blocks))
    return {"format": modelmeta.FORMAT, "quantized": quantized, "sample_rate": cfg.sample_rate,
            "n_splitter": cfg.n_splitter, "n_combiner": cfg.n_combiner, "splitter": cfg.quantize,
            "splitter_bits": qmath.IO_BITS, "combiner_bits": qmath.IO_BITS, "io_scale": qmath.IO_SCALE,
            "kernel_size": cfg.kernel_size, "stride": cfg.stride, "causal": cfg.causal, "norm_type": cfg.norm_type,
            "receptive_field_frames": rf, "io_layout": "NCW: input [1, S, T], outputs C x [1, 1, T]",
            "host_padding": "one hop of zeros before; after: zeros up to a multiple of the hop plus two hops",
            "input_gain": cfg.input_gain, **({"output_qparams": output_qparams(model)} if quantized else {})}


def output_qparams(model: ConvTasNet) -> list[list[float]]:
    """(scale, zero point) of each int8 output: the fixed 1/128 grid, or learned (imported models)."""
    qs = [model.q_out] + ([model.q_res_out] if model.cfg.n_combiner == 2 else [])
    return [list(_qp(q)) for q in qs]
