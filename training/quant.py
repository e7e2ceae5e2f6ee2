"""Fake quantizers for QAT (torch). The integer math itself lives in runtime/qmath.py.

- ActQuant: per-tensor asymmetric int8, range [min, max] observed by EMA (alpha 0.9) over the first
  `ema_steps` training steps, then learned through straight-through rounding (gradient_based), or kept
  observed for vanilla QAT. The range is nudged so that zero is exact (integer zero point).
- WeightQuant: per-output-channel symmetric, narrow range [-127, 127], zero point 0.
- Fixed grids (the model's int8 input and outputs, scale 1/128) use ActQuant(fixed=(-1, 127/128)).
- jitter (training only, off by default): activations move by up to `jitter` LSBs before rounding, so the
  network learns not to depend on a code that another kernel's requantization may round the other way.
In eval mode activations use torch's fake_quantize op, weights the codes export writes, and convs sum
on the integer codes (int_conv1d), so the eval model is exactly what export writes, at any thread count.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from runtime import qmath


def round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (x.round() - x).detach()


def without_quantizers(model: nn.Module) -> nn.Module:
    """A copy of `model` with every fake quantizer off: the same weights in float (the float network of a
    QAT checkpoint, what `fqse export/convert --float` lower and are checked against)."""
    import copy
    plain = copy.deepcopy(model)
    for m in plain.modules():
        if isinstance(m, (ActQuant, WeightQuant)):
            m.enabled = False
    return plain


def link_input(module: nn.Module, in_quant: nn.Module) -> None:
    """Tell a conv (or BN affine) which quantizer feeds it, for its int32 bias grid (not a submodule)."""
    object.__setattr__(module, "in_quant", in_quant)


def quantize_bias(b: torch.Tensor, in_quant: "ActQuant | None", w_scales: torch.Tensor) -> torch.Tensor:
    """Bias on the int32 grid the int8 kernels use: scale = input scale x weight scale (per channel)."""
    if in_quant is None or not getattr(in_quant, "enabled", False):
        return b
    return qmath.snap_bias(b, in_quant.qparams()[0], w_scales.to(b.device), rnd=round_ste)


def int_conv1d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, s_in: float, s_w: torch.Tensor,
               stride: int = 1, dilation: int = 1, groups: int = 1) -> torch.Tensor:
    """Eval mode: the conv of fake-quantized operands (x on the grid s_in, w per channel on s_w) summed on their
    integer codes, exactly (float32 while every partial sum stays below 2^24, else float64), then scaled, as the
    int8 kernels compute it. A float32 conv of the real values rounds its partial sums in an order that depends
    on the thread count: at full size (512 inputs, multipliers on the q <= 8191 grid) 2 threads put codes on the
    other side of a tie (measured: TFLite vs fake-quant 53.7 dB on the check clip, bit-exact with 1 thread)."""
    fan_in = w.shape[1] * w.shape[2]
    # |x code - zero point| <= 255, |weight code| <= 127: float32 sums integers exactly below 2^24
    dt = torch.float32 if fan_in * 255 * qmath.W_MAX < 2 ** 24 else torch.float64
    xi = torch.round(x / s_in).to(dt)
    wi = torch.round(w / s_w.view(-1, 1, 1)).to(dt)
    acc = F.conv1d(xi, wi, None, stride, 0, dilation, groups).double()
    y = acc * (float(np.float32(s_in)) * s_w.double()).view(1, -1, 1)
    if b is not None:
        y = y + b.double().view(1, -1, 1)
    return y.float()


def exact_conv_ready(in_quant: "nn.Module | None", wq: "WeightQuant | None", training: bool) -> bool:
    """Whether a conv can run as int_conv1d: eval mode, its weight and input quantizers on."""
    return (not training and wq is not None and wq.enabled and isinstance(in_quant, ActQuant)
            and in_quant.enabled)


class ActQuant(nn.Module):
    """Per-tensor asymmetric fake quantizer with a learned or observed range."""

    def __init__(self, gradient_based: bool = True, ema_steps: int = 50, alpha: float = 0.9,
                 fixed: tuple[float, float] | None = None, jitter: float = 0.0):
        super().__init__()
        self.jitter = jitter if fixed is None else 0.0
        self.gradient_based = gradient_based and fixed is None
        self.ema_steps = ema_steps
        self.alpha = alpha
        self.fixed = fixed
        lo, hi = fixed if fixed is not None else (0.0, 0.0)
        self.min = nn.Parameter(torch.tensor(float(lo)), requires_grad=self.gradient_based)
        self.max = nn.Parameter(torch.tensor(float(hi)), requires_grad=self.gradient_based)
        self.register_buffer("steps", torch.tensor(0, dtype=torch.long))
        self.enabled = True

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        a = self.alpha
        lo, hi = x.min(), x.max()
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            # DDP syncs gradients, not these in-place updates: every rank observes the extremes of the whole
            # global batch (as one process would), so the ranges stay identical on all ranks
            ext = torch.stack([-lo, hi])
            torch.distributed.all_reduce(ext, op=torch.distributed.ReduceOp.MAX)
            lo, hi = -ext[0], ext[1]
        self.min.mul_(a).add_((1 - a) * lo)
        self.max.mul_(a).add_((1 - a) * hi)
        self.steps += 1

    def qparams(self) -> tuple[float, int, float, float]:
        """(scale, int8 zero point, nudged min, nudged max) as exported."""
        return qmath.act_qparams(self.min.item(), self.max.item())

    def _jittered(self, x: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
        """Training only: x moved by up to `jitter` LSBs (uniform), so values near a rounding boundary land on
        either code, as another kernel's requantization arithmetic may put them (issue #14 item 4)."""
        if not (self.training and self.jitter):
            return x
        return x + (self.jitter * scale * (2 * torch.rand_like(x) - 1)).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        if self.training and self.fixed is None and (not self.gradient_based or self.steps < self.ema_steps):
            self._observe(x.detach())
        if not self.training or not self.gradient_based:
            scale, zp, _, _ = self.qparams()
            return torch.fake_quantize_per_tensor_affine(self._jittered(x, scale), scale, zp, qmath.Q_MIN, qmath.Q_MAX)
        # the learned range, nudged as qparams() nudges it; straight-through rounding passes gradients to min and max
        scale, zp_u = qmath.nudge(self.min, self.max, rnd=round_ste)
        x = self._jittered(x, scale)
        return qmath.dequantize(qmath.quantize(x, scale, zp_u, 0, qmath.LEVELS, rnd=round_ste), scale, zp_u)


class WeightQuant(nn.Module):
    """Per-channel symmetric weight fake quantizer (narrow range, zero point 0)."""

    def __init__(self, channels: int, axis: int = 0, gradient_based: bool = True):
        super().__init__()
        self.axis = axis
        self.gradient_based = gradient_based
        self.absmax = nn.Parameter(torch.zeros(channels), requires_grad=gradient_based)
        self.register_buffer("initialized", torch.tensor(False))
        self.enabled = True

    def _channel_absmax(self, w: torch.Tensor) -> torch.Tensor:
        dims = [d for d in range(w.dim()) if d != self.axis]
        return w.detach().abs().amax(dim=dims)

    def scales(self, w: torch.Tensor) -> torch.Tensor:
        """Per-channel scale (float32), as exported."""
        m = self._channel_absmax(w) if not self.gradient_based else self.absmax.detach().abs()
        return qmath.weight_scales(m).float()

    def int_weights(self, w: torch.Tensor) -> torch.Tensor:
        """int8 weight codes, as exported."""
        s = self.scales(w)
        shape = [1] * w.dim()
        shape[self.axis] = -1
        return qmath.weight_codes(w.detach(), s.view(shape)).to(torch.int8)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return w
        if not bool(self.initialized):
            with torch.no_grad():
                self.absmax.copy_(self._channel_absmax(w))
                self.initialized.fill_(True)
        shape = [1] * w.dim()
        shape[self.axis] = -1
        if self.training and self.gradient_based:
            s = qmath.weight_scales(self.absmax.abs()).view(shape)
            return qmath.weight_codes(w, s, rnd=round_ste) * s
        # the codes export writes (int_weights), not torch's fake_quantize: that multiplies by 1/scale and put
        # a weight at 34.5000018 LSB on the other code than export's division (full-size model, measured)
        s = self.scales(w).view(shape)
        return qmath.weight_codes(w, s) * s
