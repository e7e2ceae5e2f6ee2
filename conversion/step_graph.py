"""Step (streaming) form of a causal deploy graph: K encoder frames per call, explicit int8 state.

Each call takes K hops of splitter codes (K * L/2 samples) plus the state tensors and returns K hops
of each output plus the new state. The states are the histories the offline graph reads, each
declared by the step rule of the op kind that reads it (conversion/ops/):
- the last hop of the model input (the encoder's window is two hops) and of y0 (residual encoder): conv,
- the last (P-1)*d frames before each causal depthwise conv: conv,
- the second half of the last decoder frame (overlap-add), for y0 and y1: ola,
- (the graph's own rule, here) with the residual block (C = 2), one frame of `masked` and one hop of y0, so that y0 and y1 leave
  together: the outputs of call n are hops n*K-1 ... n*K+K-2 of the offline outputs (one hop late).
Initial state is all zeros (real zero; it stands for the offline model's leading pad hop). Fed the
audio hop by hop and then zeros, the step model gives exactly the offline outputs, delayed by
`stream_offset_samples` (one hop, or two with the residual block).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

from conversion import ops
from conversion.graph import Graph, Op
from runtime import qmath


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


class StepContext:
    """What the op kinds' step rules (conversion/ops/, `step(ctx, op)`) build the step graph with."""

    def __init__(self, g: Graph) -> None:
        self.g = g
        self.stride = g.meta["stride"]
        self.qp_of: dict[str, tuple[float, int] | None] = {g.input: (qmath.IO_SCALE, 0) if g.quantized else None}
        self.chans = {g.input: g.meta["n_splitter"] if g.quantized or g.meta.get("splitter") else 1}
        for op in g.ops:
            self.qp_of[op.output] = op.qp
        self.ops: list[Op] = []
        self.states: dict[str, State] = {}

    def state(self, name: str, channels: int, length: int, qp) -> str:
        """A state tensor (graph input `name`); its new value is set by the rule: states[name].next."""
        if name not in self.states:
            self.states[name] = State(name, channels, length, qp)
        return name

    def add(self, kind, inputs, out, qp, **attrs) -> str:
        """A new op of the step graph."""
        self.ops.append(Op(kind, inputs, out, qp, attrs))
        return out

    def keep(self, op: Op) -> None:
        """The op as it is (or as the rule rewrote it)."""
        self.ops.append(op)

    def delayed(self, x: str, channels: int, n: int) -> str:
        """x delayed by n time steps: concat(state, x)[:, :, :T]; state <- last n of x."""
        st = self.state(f"state_{x}_delay", channels, n, self.qp_of[x])
        cat = self.add("concat_t", [st, x], f"{x}_dcat", self.qp_of[x])
        self.states[st].next = self.add("slice", [x], f"{st}_upd", self.qp_of[x], t=(-n, None))
        return self.add("slice", [cat], f"{x}_delayed", self.qp_of[x], t=(0, -n))


def build_step_graph(g: Graph, frames: int) -> tuple[Graph, list[State]]:
    """The step graph: each op rewritten by its kind's step rule (conversion/ops/); an unknown op kind, or
    one without a step rule, is a one-line OpRuleError. The residual block's alignment (below) is the
    graph's own rule, not an op's."""
    if not g.meta["causal"]:
        raise ValueError("a step (streaming) model needs a causal model (norm_type cLN or BN, causal: true)")
    ops.require(g.ops, ("step",))
    ctx = StepContext(g)
    s = ctx.stride
    rqb = len(g.outputs) == 2
    for op in g.ops:
        kind = ops.get(op)
        ctx.chans[op.output] = kind.channels(op, ctx.chans)
        if rqb and op.kind == "sub" and op.inputs[0] == "masked":
            # with the residual block, y0 and y1 leave together: the error signal reads `masked` one
            # frame late, as y0 (below) leaves one hop late
            op = copy.copy(op)
            op.inputs = [ctx.delayed("masked", ctx.chans["masked"], 1), op.inputs[1]]
        kind.step(ctx, op)
    outputs = list(g.outputs)
    if rqb:
        outputs[0] = ctx.delayed(g.outputs[0], 1, s)
    states = ctx.states
    meta = {**g.meta, "mode": "step", "step_frames": frames, "step_samples": frames * s,
            "stream_offset_samples": s * (2 if rqb else 1),  # output stream index of input sample 0
            "states": [{"name": st.name, "channels": st.channels, "length": st.length,
                        "scale": st.qp[0] if st.qp else None, "zero_point": st.qp[1] if st.qp else None,
                        "initial": st.initial()}
                       for st in states.values()]}
    return Graph(ctx.ops, g.input, outputs, meta, g.quantized), list(states.values())
