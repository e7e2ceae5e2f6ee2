"""Step (streaming) form of a causal deploy graph: K encoder frames per call, explicit int8 state.

Each call takes K hops of splitter codes (K * L/2 samples) plus the state tensors and returns K hops
of each output plus the new state. The states are the histories the offline graph reads:
- the last hop of the model input (the encoder's window is two hops) and of y0 (residual encoder),
- the last (P-1)*d frames before each causal depthwise conv,
- the second half of the last decoder frame (overlap-add), for y0 and y1,
- with the residual block (C = 2), one frame of `masked` and one hop of y0, so that y0 and y1 leave
  together: the outputs of call n are hops n*K-1 ... n*K+K-2 of the offline outputs (one hop late).
Initial state is all zeros (real zero; it stands for the offline model's leading pad hop). Fed the
audio hop by hop and then zeros, the step model gives exactly the offline outputs, delayed by
`stream_offset_samples` (one hop, or two with the residual block).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from conversion.graph import Graph, Op
from runtime import pipeline, qmath


@dataclass
class State:
    name: str  # graph input; the new value is the graph output name + "_next"
    channels: int
    length: int
    qp: tuple[float, int] | None
    next: str = ""  # tensor holding the new state
    fill: list[float] | None = None  # initial value per channel (default: real zero)

    def initial(self) -> list[float]:
        """Initial value per channel, in the model's input units (int8 codes or float)."""
        if self.fill is not None:
            return self.fill
        return [self.qp[1] if self.qp else 0.0] * self.channels


def build_step_graph(g: Graph, frames: int) -> tuple[Graph, list[State]]:
    if not g.meta["causal"]:
        raise ValueError("a step (streaming) model needs a causal model (norm_type cLN or BN, causal: true)")
    s = g.meta["stride"]
    qp_of = {g.input: (qmath.IO_SCALE, 0) if g.quantized else None}
    chans = {g.input: g.meta["n_splitter"] if g.quantized or g.meta.get("splitter") else 1}
    for op in g.ops:
        qp_of[op.output] = op.qp
    ops: list[Op] = []
    states: dict[str, State] = {}
    rqb = len(g.outputs) == 2

    def state(name: str, channels: int, length: int, qp) -> str:
        if name not in states:
            states[name] = State(name, channels, length, qp)
        return name

    def add(kind, inputs, out, qp, **attrs) -> str:
        ops.append(Op(kind, inputs, out, qp, attrs))
        return out

    def delayed(x: str, channels: int, n: int) -> str:
        """x delayed by n time steps: concat(state, x)[:, :, :T]; state <- last n of x."""
        st = state(f"state_{x}_delay", channels, n, qp_of[x])
        cat = add("concat_t", [st, x], f"{x}_dcat", qp_of[x])
        states[st].next = add("slice", [x], f"{st}_upd", qp_of[x], t=(-n, None))
        return add("slice", [cat], f"{x}_delayed", qp_of[x], t=(0, -n))

    for op in g.ops:
        a = op.attrs
        chans[op.output] = (a["w_float"].shape[0] if op.kind == "conv" else
                            1 if op.kind == "ola" else chans[op.inputs[0]])
        if op.kind == "conv" and a["stride"] > 1:  # encoder / residual encoder: window of two hops
            x = op.inputs[0]
            st = state(f"state_{x}_hop", chans[x], s, qp_of[x])
            if x == g.input:  # stands for the leading pad hop: the splitter's codes of silence
                states[st].fill = [float(v) for v in pipeline.pre(np.zeros(1, np.int16), {**g.meta, "quantized": g.quantized})[:, 0]]
            if not states[st].next:
                states[st].next = add("slice", [x], f"{st}_upd", qp_of[x], t=(-s, None))
            cat = add("concat_t", [st, x], f"{op.output}_cat", qp_of[x])
            new = copy.copy(op)
            new.inputs = [cat]
            ops.append(new)
        elif op.kind == "conv" and a["pad"][0] > 0:  # causal (dilated) depthwise conv
            if a["pad"][1]:
                raise ValueError("non-causal padding in a step graph")
            x, p = op.inputs[0], a["pad"][0]
            st = state(f"state_{op.output}", chans[x], p, qp_of[x])
            cat = add("concat_t", [st, x], f"{op.output}_cat", qp_of[x])
            states[st].next = add("slice", [cat], f"{st}_upd", qp_of[x], t=(-p, None))
            new = copy.copy(op)
            new.inputs, new.attrs = [cat], {**a, "pad": (0, 0)}
            ops.append(new)
        elif op.kind == "ola":
            f = op.inputs[0]
            st = state(f"state_{op.output}_ola", s, 1, qp_of[f])
            add("ola_step", [f, st], op.output, op.qp, stride=s)
            states[st].next = add("slice", [f], f"{st}_upd", qp_of[f], ch=(s, 2 * s), t=(-1, None))
        elif op.kind == "sub" and rqb and op.inputs[0] == "masked":
            new = copy.copy(op)
            new.inputs = [delayed("masked", chans["masked"], 1), op.inputs[1]]
            ops.append(new)
        else:
            ops.append(op)
    outputs = list(g.outputs)
    if rqb:
        outputs[0] = delayed(g.outputs[0], 1, s)
    meta = {**g.meta, "mode": "step", "step_frames": frames, "step_samples": frames * s,
            "stream_offset_samples": s * (2 if rqb else 1),  # output stream index of input sample 0
            "states": [{"name": st.name, "channels": st.channels, "length": st.length,
                        "scale": st.qp[0] if st.qp else None, "zero_point": st.qp[1] if st.qp else None,
                        "initial": st.initial()}
                       for st in states.values()]}
    return Graph(ops, g.input, outputs, meta, g.quantized), list(states.values())
