"""conv: a 1-D convolution with int8 per-output-channel weights and an int32 bias (encoder, 1x1 convs,
depthwise dilated convs, decoder frames, and a BN folded into a per-channel scale)."""
from __future__ import annotations

import copy
from typing import Any

import numpy as np

from conversion.errors import ConversionError, ExportError
from conversion.ops.base import OpKind, register
from runtime import pipeline, qmath


def _weights(tf, op: Any, quantized: bool, depthwise: bool):
    """Conv weights [Cout, Cin/g, K] -> TF layout, fake-quantized per output channel (narrow range)."""
    w = op.attrs["w_float"]
    if depthwise:  # [C, 1, K] -> [1, K, C, 1]
        wt = np.transpose(w[:, 0, :], (1, 0))[None, :, :, None]
    else:  # [Cout, Cin, K] -> [1, K, Cin, Cout]
        wt = np.transpose(w, (2, 1, 0))[None]
    wt = tf.constant(wt.astype(np.float32))
    if not quantized:
        return wt
    m = qmath.weight_absmax(op.attrs["w_scale"]).astype(np.float32)
    if depthwise:  # quantize over C (axis 2), which becomes the last axis of TFLite's depthwise filter
        wt = tf.transpose(wt, (0, 1, 3, 2))
        wt = tf.quantization.fake_quant_with_min_max_vars_per_channel(wt, -m, m, num_bits=8, narrow_range=True)
        return tf.transpose(wt, (0, 1, 3, 2))
    return tf.quantization.fake_quant_with_min_max_vars_per_channel(wt, -m, m, num_bits=8, narrow_range=True)


@register
class Conv(OpKind):
    kind = "conv"
    intref = ("CONV_2D", "DEPTHWISE_CONV_2D", "PAD")

    def channels(self, op, chans):
        return op.attrs["w_float"].shape[0]

    def onnx(self, b, op, quantized):
        x = op.inputs[0]
        raw = op.output + "_f"
        a = op.attrs
        if quantized:
            w_int = b.const(op.output + "_w", a["w_int"].astype(np.int8))
            ws = b.const(op.output + "_w_scale", a["w_scale"].astype(np.float32))
            wz = b.const(op.output + "_w_zp", np.zeros(len(a["w_scale"]), np.int8))
            w = b.node("DequantizeLinear", [w_int, ws, wz], op.output + "_wdq", axis=0)
        else:
            w = b.const(op.output + "_w", a["w_float"])
        ins = [x, w]
        if a["bias"] is not None:
            if quantized:
                bscale = qmath.bias_scale(b.qps[x][0], a["w_scale"]).astype(np.float32)
                b_int = qmath.bias_codes(a["bias"], b.qps[x][0], a["w_scale"]).astype(np.int32)
                bi = b.const(op.output + "_b", b_int)
                bs = b.const(op.output + "_b_scale", bscale)
                bz = b.const(op.output + "_b_zp", np.zeros(len(bscale), np.int32))
                ins.append(b.node("DequantizeLinear", [bi, bs, bz], op.output + "_bdq", axis=0))
            else:
                ins.append(b.const(op.output + "_b", a["bias"]))
        b.node("Conv", ins, raw, kernel_shape=[a["w_float"].shape[-1]], strides=[a["stride"]],
               dilations=[a["dilation"]], group=a["groups"], pads=list(a["pad"]))

    def tf(self, tf, op, env, quantized):
        a = op.attrs
        x = env[op.inputs[0]]
        depthwise = a["groups"] > 1
        if a["groups"] not in (1, a["w_float"].shape[0]):
            raise ConversionError(f"{op.output}: grouped conv with {a['groups']} groups is not supported")
        if any(a["pad"]):
            x = tf.pad(x, [[0, 0], [0, 0], list(a["pad"]), [0, 0]])
        w = _weights(tf, op, quantized, depthwise)
        if depthwise:
            y = tf.nn.depthwise_conv2d(x, w, strides=[1, 1, 1, 1], padding="VALID", dilations=[1, a["dilation"]])
        else:
            y = tf.nn.conv2d(x, w, strides=[1, 1, a["stride"], 1], padding="VALID", dilations=[1, 1, a["dilation"], 1])
        if a["bias"] is not None:
            y = tf.nn.bias_add(y, tf.constant(a["bias"]))
        return y

    def step(self, ctx, op):
        """Strided (encoder, residual encoder): a window of two hops, the last hop of its input as state.
        Causally padded (dilated depthwise): the last (P-1)*d frames of its input as state, no padding.
        Otherwise (1x1, decoder frames): one frame at a time, no state."""
        a, s = op.attrs, ctx.stride
        x = op.inputs[0]
        if a["stride"] > 1:
            st = ctx.state(f"state_{x}_hop", ctx.chans[x], s, ctx.qp_of[x])
            if x == ctx.g.input:  # stands for the leading pad hop: the splitter's codes of silence
                ctx.states[st].fill = [float(v) for v in pipeline.pre(np.zeros(1, np.int16), {**ctx.g.meta, "quantized": ctx.g.quantized})[:, 0]]
            if not ctx.states[st].next:
                ctx.states[st].next = ctx.add("slice", [x], f"{st}_upd", ctx.qp_of[x], t=(-s, None))
            cat = ctx.add("concat_t", [st, x], f"{op.output}_cat", ctx.qp_of[x])
            new = copy.copy(op)
            new.inputs = [cat]
            ctx.keep(new)
        elif any(a["pad"]):
            if a["pad"][1]:
                raise ExportError(f"{op.output}: non-causal padding in a step graph")
            p = a["pad"][0]
            st = ctx.state(f"state_{op.output}", ctx.chans[x], p, ctx.qp_of[x])
            cat = ctx.add("concat_t", [st, x], f"{op.output}_cat", ctx.qp_of[x])
            ctx.states[st].next = ctx.add("slice", [cat], f"{st}_upd", ctx.qp_of[x], t=(-p, None))
            new = copy.copy(op)
            new.inputs, new.attrs = [cat], {**a, "pad": (0, 0)}
            ctx.keep(new)
        else:
            ctx.keep(op)
