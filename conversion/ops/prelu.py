"""prelu: PReLU with one shared slope (LeakyRelu; its slope is on XNNPACK's exact grid, grids.snap_prelu)."""
from __future__ import annotations

from conversion.ops.base import OpKind, register, stateless


@register
class PRelu(OpKind):
    kind = "prelu"
    intref = ("LEAKY_RELU",)
    step = staticmethod(stateless)

    def onnx(self, b, op, quantized):
        b.node("LeakyRelu", [op.inputs[0]], op.output + "_f", alpha=op.attrs["alpha"])

    def tf(self, tf, op, env, quantized):
        return tf.nn.leaky_relu(env[op.inputs[0]], alpha=op.attrs["alpha"])
