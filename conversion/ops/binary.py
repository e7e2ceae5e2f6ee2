"""add, sub, mul: element-wise ops of two tensors of the same shape (block outputs, skip sums, the
mask, the residual block's error)."""
from __future__ import annotations

from conversion.ops.base import OpKind, register, stateless


class _Binary(OpKind):
    step = staticmethod(stateless)

    def onnx(self, b, op, quantized):
        b.node(self.kind.capitalize(), op.inputs, op.output + "_f")

    def tf(self, tf, op, env, quantized):
        fn = {"add": tf.add, "sub": tf.subtract, "mul": tf.multiply}[self.kind]
        return fn(env[op.inputs[0]], env[op.inputs[1]])


@register
class Add(_Binary):
    kind = "add"
    intref = ("ADD",)


@register
class Sub(_Binary):
    kind = "sub"
    intref = ("SUB",)


@register
class Mul(_Binary):
    kind = "mul"
    intref = ("MUL",)
