"""concat_t: two tensors joined along time (step models: a state before the new frames)."""
from __future__ import annotations

from conversion.ops.base import OpKind, register


@register
class ConcatT(OpKind):
    kind = "concat_t"
    intref = ("CONCATENATION",)
    step = None  # made by step rules; a step graph is not stepped again

    def onnx(self, b, op, quantized):
        b.node("Concat", op.inputs, op.output + "_f", axis=2)

    def tf(self, tf, op, env, quantized):
        return tf.concat([env[op.inputs[0]], env[op.inputs[1]]], axis=2)
