"""ola: overlap-add of decoder frames [1, 2s, F] (hop s, two hops per frame) into a waveform [1, 1, F*s];
ola_step, its streaming form: the second half of the previous call's last frame comes in as state."""
from __future__ import annotations

from conversion.ops.base import OpKind, i64, register


def _frame_halves(b, frames: str, raw: str, s: int) -> tuple[str, str]:
    """Decoder frames [1, 2s, F] -> their first and second halves [1, s, F]."""
    first = b.node("Slice", [frames, b.const(raw + "_s0", i64(0)), b.const(raw + "_e0", i64(s)), b.const(raw + "_ax", i64(1))], raw + "_first")
    second = b.node("Slice", [frames, b.const(raw + "_s1", i64(s)), b.const(raw + "_e1", i64(2 * s)), raw + "_ax"], raw + "_second")
    return first, second


def _frames_to_samples(b, blocks: str, raw: str) -> None:
    """[1, s, F] blocks of samples -> [1, 1, F*s] waveform named raw."""
    t = b.node("Transpose", [blocks], raw + "_t", perm=[0, 2, 1])
    b.node("Reshape", [t, b.const(raw + "_shape", i64(1, 1, -1))], raw)


@register
class Ola(OpKind):
    kind = "ola"
    intref = ("STRIDED_SLICE", "PAD", "ADD", "RESHAPE")

    def channels(self, op, chans):
        return 1

    def onnx(self, b, op, quantized):  # second halves shifted by one frame, zeros first
        raw = op.output + "_f"
        first, second = _frame_halves(b, op.inputs[0], raw, op.attrs["stride"])
        pa = b.node("Pad", [first, b.const(raw + "_pa", i64(0, 0, 0, 0, 0, 1))], raw + "_fa")
        pb = b.node("Pad", [second, b.const(raw + "_pb", i64(0, 0, 1, 0, 0, 0))], raw + "_fb")
        _frames_to_samples(b, b.node("Add", [pa, pb], raw + "_sum"), raw)

    def tf(self, tf, op, env, quantized):
        x, s = env[op.inputs[0]], op.attrs["stride"]
        first = tf.pad(x[:, :, :, :s], [[0, 0], [0, 0], [0, 1], [0, 0]])
        second = tf.pad(x[:, :, :, s:], [[0, 0], [0, 0], [1, 0], [0, 0]])
        return tf.reshape(first + second, [1, 1, -1, 1])

    def step(self, ctx, op):
        """The second half of the last frame (s samples, as s channels of one frame) is the state."""
        f, s = op.inputs[0], ctx.stride
        st = ctx.state(f"state_{op.output}_ola", s, 1, ctx.qp_of[f])
        ctx.add("ola_step", [f, st], op.output, op.qp, stride=s)
        ctx.states[st].next = ctx.add("slice", [f], f"{st}_upd", ctx.qp_of[f], ch=(s, 2 * s), t=(-1, None))


@register
class OlaStep(OpKind):
    kind = "ola_step"
    intref = ("STRIDED_SLICE", "CONCATENATION", "ADD", "RESHAPE")
    step = None  # made by ola's step rule

    def channels(self, op, chans):
        return 1

    def onnx(self, b, op, quantized):  # second halves shifted by one frame, the first from the state
        raw = op.output + "_f"
        first, second = _frame_halves(b, op.inputs[0], raw, op.attrs["stride"])
        cat = b.node("Concat", [op.inputs[1], second], raw + "_cat", axis=2)
        shifted = b.node("Slice", [cat, b.const(raw + "_s2", i64(0)), b.const(raw + "_e2", i64(-1)), b.const(raw + "_ax2", i64(2))], raw + "_shift")
        _frames_to_samples(b, b.node("Add", [first, shifted], raw + "_sum"), raw)

    def tf(self, tf, op, env, quantized):
        x, s = env[op.inputs[0]], op.attrs["stride"]
        shifted = tf.concat([env[op.inputs[1]], x[:, :, :, s:]], axis=2)[:, :, :-1, :]
        return tf.reshape(x[:, :, :, :s] + shifted, [1, 1, -1, 1])
