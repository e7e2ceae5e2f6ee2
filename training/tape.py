"""The deploy graph, recorded from the model's own forward.

ConvTasNet.forward is written with `op()`: one call per deployed op (a layer or an elementwise op,
then the quantizer of its output). Run normally, `op()` only computes. Under `record()` it also
writes a `Step` per op naming its inputs and output, so everything that needs the topology (the
deploy graph in conversion/graph.py, the int32 bias links, PReLU snapping) reads it off the one
forward instead of restating it.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn


@dataclass
class Step:
    """One deployed op as the forward ran it."""
    kind: str  # deploy op kind (conversion/ops/): conv, norm, prelu, relu, add, sub, mul, ola
    inputs: list[str]
    output: str
    module: nn.Module | None  # the layer (QConv, Norm, PReLU); None for elementwise ops
    quantizer: nn.Module | None  # quantizes the output; None: a fused op follows (mask conv -> ReLU)
    attrs: dict[str, Any] = field(default_factory=dict)


class Tape:
    """Steps in execution order, and the name of every tensor they touched."""

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self.sources: dict[str, nn.Module | None] = {}  # graph inputs and the quantizers that feed them
        self._names: dict[int, str] = {}
        self._alive: list[torch.Tensor] = []  # keeps recorded tensors alive, so their ids stay unique

    def name(self, t: torch.Tensor, name: str) -> None:
        self._names[id(t)] = name
        self._alive.append(t)

    def name_of(self, t: torch.Tensor) -> str:
        try:
            return self._names[id(t)]
        except KeyError:
            raise RuntimeError("a tensor reached a recorded op without going through op() or source()") from None

    def producer_quantizer(self, name: str) -> nn.Module | None:
        """The quantizer whose output is the tensor `name` (what the int8 kernel reading it sees)."""
        if name in self.sources:
            return self.sources[name]
        return next(s.quantizer for s in self.steps if s.output == name)


_TAPE: ContextVar[Tape | None] = ContextVar("fqse_tape", default=None)


@contextmanager
def record() -> Iterator[Tape]:
    """Record the ops of every forward run inside the block."""
    tape = Tape()
    token = _TAPE.set(tape)
    try:
        yield tape
    finally:
        _TAPE.reset(token)
        tape._names.clear()  # tensor ids are only meaningful while recording
        tape._alive.clear()


def source(x: torch.Tensor, name: str, quantizer: nn.Module | None = None) -> torch.Tensor:
    """Mark a graph input (and the quantizer that put it on its grid)."""
    tape = _TAPE.get()
    if tape is not None:
        tape.sources[name] = quantizer
        tape.name(x, name)
    return x


def op(kind: str, fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor], q: nn.Module | None, out: str,
       module: nn.Module | None = None, **attrs: Any) -> torch.Tensor:
    """y = q(fn(*inputs)); recorded as op `out` of `kind` when a tape is active."""
    y = fn(*inputs)
    if q is not None:
        y = q(y)
    tape = _TAPE.get()
    if tape is not None:
        tape.steps.append(Step(kind, [tape.name_of(t) for t in inputs], out, module, q, attrs))
        tape.name(y, out)
    return y
