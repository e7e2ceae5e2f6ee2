"""slice: a window of channels `ch` = (c0, c1) and frames `t` = (t0, t1) (None: to the end), as in Python
slicing (step models: the new state, or the frames that leave)."""
from __future__ import annotations

import numpy as np

from conversion.ops.base import OpKind, i64, register


@register
class Slice(OpKind):
    kind = "slice"
    intref = ("STRIDED_SLICE",)
    step = None  # made by step rules; a step graph is not stepped again

    def channels(self, op, chans):
        c0, c1 = op.attrs.get("ch", (0, None))
        return len(range(chans[op.inputs[0]])[c0:c1])

    def onnx(self, b, op, quantized):
        raw, a = op.output + "_f", op.attrs
        big = np.iinfo(np.int64).max
        (c0, c1), (t0, t1) = a.get("ch", (0, None)), a.get("t", (0, None))
        b.node("Slice", [op.inputs[0], b.const(raw + "_st", i64(c0, t0)), b.const(raw + "_en", i64(big if c1 is None else c1, big if t1 is None else t1)),
                         b.const(raw + "_axes", i64(1, 2))], raw)

    def tf(self, tf, op, env, quantized):
        (c0, c1), (t0, t1) = op.attrs.get("ch", (0, None)), op.attrs.get("t", (0, None))
        return env[op.inputs[0]][:, :, t0:t1, c0:c1]
