"""relu: the mask's ReLU (it follows the mask conv, whose output has no quantizer of its own: one fused
CONV_2D with a ReLU activation in TFLite; in onnxruntime a QLinearConv when the output range starts at 0, as a
trained mask's does (zero point -128: onnxruntime drops the ReLU before the Q), else a float conv)."""
from __future__ import annotations

from conversion.ops.base import OpKind, register, stateless


@register
class Relu(OpKind):
    kind = "relu"
    intref = ("CONV_2D",)  # fused into the conv before it (fusedActivationFunction RELU)
    step = staticmethod(stateless)

    def onnx(self, b, op, quantized):
        b.node("Relu", [op.inputs[0]], op.output + "_f")

    def tf(self, tf, op, env, quantized):
        return tf.nn.relu(env[op.inputs[0]])
