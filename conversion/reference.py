"""The reference FQSE implementation's network, written from its documented semantics
(../shared/REFERENCE_CHECKPOINTS.md), with its exact state-dict key names and shapes.

Used (1) as the numerical ground truth an imported checkpoint is checked against ("reference
semantics": activation grids offset by `min` with no nudging, weights on m/128 with codes in
[-128, 127], float biases, no quantizer between a conv and its fused PReLU, learned output ranges,
combiner y = y0 + y1 * D/2), and (2) to write test checkpoints in that format (`torch.save` of its
`state_dict()`, as the reference trainer does). Not used for training.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from runtime import qmath


@dataclass
class RefConfig:
    n_filters: int = 512
    kernel_size: int = 32
    bn_chan: int = 128
    hid_chan: int = 512
    conv_kernel_size: int = 3
    n_blocks: int = 8
    n_repeats: int = 3
    n_splitter: int = 2
    n_combiner: int = 2

    @property
    def stride(self) -> int:
        return self.kernel_size // 2


class ActFQ(nn.Module):
    """Per-tensor activation quantizer: delta = (max - min)/255, y = delta*clip(round((x - min)/delta), 0, 255) + min."""

    def __init__(self):
        super().__init__()
        self.min_range = nn.Parameter(torch.zeros(1))
        self.max_range = nn.Parameter(torch.zeros(1))
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        lo, hi = self.min_range, self.max_range
        delta = torch.clamp(hi - lo, min=qmath.MIN_RANGE) / 255.0
        return delta * torch.clamp(torch.round((x - lo) / delta), 0, 255) + lo


class WeightFQ(nn.Module):
    """Per-output-channel symmetric weight quantizer: delta = max(|min|, |max|)/128, codes in [-128, 127]."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.min_range = nn.Parameter(torch.zeros(shape))
        self.max_range = nn.Parameter(torch.zeros(shape))
        self.enabled = True

    def absmax(self) -> torch.Tensor:
        return torch.maximum(self.min_range.abs(), self.max_range.abs())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return w
        delta = torch.clamp(self.absmax(), min=1e-12) / 128.0
        return delta * torch.clamp(torch.round(w / delta), -128, 127)


class QConv(nn.Module):
    """Conv1d (+ fused PReLU or ReLU) with a weight quantizer and one output quantizer after the nonlinearity."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, dilation: int = 1, groups: int = 1,
                 bias: bool = True, padding: int = 0, nl: str | None = None):
        super().__init__()
        self.conv1d = nn.Conv1d(cin, cout, k, stride=stride, dilation=dilation, groups=groups, bias=bias,
                                padding=padding)
        if nl == "prelu":
            self.nl = nn.PReLU()
        self.relu = nl == "relu"
        self.weight_fake_quantize = WeightFQ((cout, 1, 1))
        self.activation_fake_quantize = ActFQ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv1d
        y = F.conv1d(x, self.weight_fake_quantize(c.weight), c.bias, c.stride, c.padding, c.dilation, c.groups)
        if hasattr(self, "nl"):
            y = self.nl(y)
        elif self.relu:
            y = torch.relu(y)
        return self.activation_fake_quantize(y)


class GNorm(nn.Module):
    """gLN (GroupNorm with one group, eps 1e-8) and its output quantizer."""

    def __init__(self, channels: int):
        super().__init__()
        self.groupnorm = nn.GroupNorm(1, channels, eps=1e-8)
        self.activation_fake_quantize = ActFQ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation_fake_quantize(self.groupnorm(x))


class Quant(nn.Module):
    """A quantized point with no weights of its own (add, mul)."""

    def __init__(self):
        super().__init__()
        self.activation_fake_quantize = ActFQ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation_fake_quantize(x)


class PReLUQ(nn.Module):
    def __init__(self):
        super().__init__()
        self.nl = nn.PReLU()
        self.activation_fake_quantize = ActFQ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation_fake_quantize(self.nl(x))


class TCNBlock(nn.Module):
    def __init__(self, B: int, H: int, P: int, dilation: int):
        super().__init__()
        self.shared_block = nn.ModuleList([
            QConv(B, H, nl="prelu"), nn.Identity(), GNorm(H),
            QConv(H, H, P, dilation=dilation, groups=H, padding=(P - 1) * dilation // 2, nl="prelu"),
            nn.Identity(), GNorm(H)])
        self.res_conv = QConv(H, B)
        self.skip_conv = QConv(H, B)
        self.add = Quant()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = x
        for m in self.shared_block:
            y = m(y)
        return self.add(x + self.res_conv(y)), self.skip_conv(y)


class Masker(nn.Module):
    def __init__(self, cfg: RefConfig):
        super().__init__()
        N, B, H, P = cfg.n_filters, cfg.bn_chan, cfg.hid_chan, cfg.conv_kernel_size
        self.bottleneck = nn.ModuleList([GNorm(N), QConv(N, B)])
        self.TCN = nn.ModuleList(TCNBlock(B, H, P, 2 ** x) for _ in range(cfg.n_repeats) for x in range(cfg.n_blocks))
        self.adds = nn.ModuleList(Quant() for _ in range(len(self.TCN) - 1))
        self.mask_net = nn.ModuleList([PReLUQ(), QConv(B, N, nl="relu")])

    def forward(self, enc: torch.Tensor) -> torch.Tensor:
        y = self.bottleneck[1](self.bottleneck[0](enc))
        skip_sum = None
        for k, blk in enumerate(self.TCN):
            y, skip = blk(y)
            skip_sum = skip if skip_sum is None else self.adds[k - 1](skip_sum + skip)
        return self.mask_net[1](self.mask_net[0](skip_sum))


class ResidualErrorBlock(nn.Module):
    def __init__(self, cfg: RefConfig):
        super().__init__()
        self.residual_encoder = nn.Conv1d(1, cfg.n_filters, cfg.kernel_size, stride=cfg.stride, bias=False)
        self.weight_fake_quantize = WeightFQ((cfg.n_filters, 1, 1))
        self.activation_fake_quantize = ActFQ()

    def forward(self, Y: torch.Tensor, y0: torch.Tensor) -> torch.Tensor:
        r = F.conv1d(y0, self.weight_fake_quantize(self.residual_encoder.weight), stride=self.residual_encoder.stride)
        return self.activation_fake_quantize(Y - r)


class Decoder(nn.Module):
    def __init__(self, cfg: RefConfig):
        super().__init__()
        self.convTr1d = nn.ConvTranspose1d(cfg.n_filters, 1, cfg.kernel_size, stride=cfg.stride, bias=False)
        self.weight_fake_quantize = WeightFQ((1, 1, 1))  # axis 1: one output channel
        self.activation_fake_quantize = ActFQ()
        if cfg.n_combiner == 2:
            self.residual_error_block = ResidualErrorBlock(cfg)
            self.activation_fake_quantize_residual = ActFQ()

    def forward(self, Y: torch.Tensor) -> list[torch.Tensor]:
        w = self.weight_fake_quantize(self.convTr1d.weight)
        y0 = self.activation_fake_quantize(F.conv_transpose1d(Y, w, stride=self.convTr1d.stride))
        if not hasattr(self, "residual_error_block"):
            return [y0]
        E = self.residual_error_block(Y, y0)
        return [y0, self.activation_fake_quantize_residual(F.conv_transpose1d(E, w, stride=self.convTr1d.stride))]


class ReferenceFQSE(nn.Module):
    """Input: the encoder input [B, S, T] (splitter codes x 1/128, or the waveform when S = 1);
    output: C tensors [B, 1, T + L/2] on their learned grids."""

    def __init__(self, cfg: RefConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = QConv(cfg.n_splitter, cfg.n_filters, cfg.kernel_size, stride=cfg.stride, bias=False)
        self.masker = Masker(cfg)
        self.mul = Quant()
        self.decoder = Decoder(cfg)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        enc = self.encoder(x)
        return self.decoder(self.mul(self.masker(enc) * enc))


def preprocess(wav: torch.Tensor, n_splitter: int, peak: bool = True) -> torch.Tensor:
    """[B, T] waveform -> encoder input [B, S, T]: for S >= 2 the batch is divided by its peak (when
    `peak`) and split into S int8 code streams (x 1/128); for S = 1 the waveform as is."""
    if n_splitter == 1:
        return wav[:, None]
    if peak:
        wav = wav / wav.abs().max().clamp(min=1e-12)
    return torch.stack([c * qmath.IO_SCALE for c in qmath.split(wav, n_splitter)], dim=1)


def postprocess(outs: list[torch.Tensor]) -> torch.Tensor:
    """Combiner: y = y0 + y1 * (D/2) on the real output values, [B, T]."""
    return qmath.combine([o[:, 0] / qmath.IO_SCALE for o in outs])


def quantizers(model: nn.Module) -> list[ActFQ | WeightFQ]:
    return [m for m in model.modules() if isinstance(m, (ActFQ, WeightFQ))]


@torch.no_grad()
def make_trained_like(model: ReferenceFQSE, x: torch.Tensor, seed: int = 0, on_grid: bool = False) -> ReferenceFQSE:
    """Give a (randomly initialised) reference model trained-like quantizer ranges for test
    checkpoints: weight ranges from each channel's min/max, activation ranges from a float pass on
    `x` (encoder input), shrunk by a random 0-10 % and offset so that `min` is not on a zero grid.
    `on_grid`: ranges that need no change to deploy (zero on each activation grid, no weight code -128)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.PReLU):
            m.weight.fill_(float(torch.empty(1).uniform_(0.05, 0.4, generator=g)))
        if isinstance(m, nn.GroupNorm):
            m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
            m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    seen: dict[ActFQ, tuple[float, float]] = {}
    hooks = []
    for m in model.modules():
        if isinstance(m, ActFQ):
            m.enabled = False
            hooks.append(m.register_forward_hook(
                lambda mod, i, o: seen.__setitem__(mod, (float(i[0].min()), float(i[0].max())))))
        if isinstance(m, WeightFQ):
            m.enabled = False
    model.eval()(x)
    for h in hooks:
        h.remove()
    for m in model.modules():
        if isinstance(m, ActFQ):
            lo, hi = seen[m]
            shrink = 1 - 0.1 * float(torch.rand(1, generator=g))
            m.min_range.fill_(lo * shrink if lo < 0 else lo + 0.003 * (hi - lo))
            m.max_range.fill_(hi * shrink)
            if on_grid:  # zero on the grid (the step stays arbitrary: power-of-two steps put sums on ties)
                _, _, nmin, nmax = qmath.act_qparams(float(m.min_range), float(m.max_range))
                m.min_range.fill_(nmin)
                m.max_range.fill_(nmax)
            m.enabled = True
    for mod in model.modules():
        for name, w in (("conv1d", "weight"), ("convTr1d", "weight"), ("residual_encoder", "weight")):
            conv = getattr(mod, name, None)
            wq = getattr(mod, "weight_fake_quantize", None)
            if conv is None or wq is None:
                continue
            wt = conv.weight
            dims = (1, 2) if name != "convTr1d" else (0, 1, 2)
            wq.min_range.copy_(wt.amin(dim=dims, keepdim=True).reshape(wq.min_range.shape))
            wq.max_range.copy_(wt.amax(dim=dims, keepdim=True).reshape(wq.max_range.shape))
            if on_grid:  # step m/128 a power of two with |codes| <= 127
                a = wt.abs().amax(dim=dims, keepdim=True).reshape(wq.max_range.shape)
                wq.max_range.copy_(128 * 2.0 ** torch.ceil(torch.log2(a / 127)))
                wq.min_range.copy_(-wq.max_range)
            wq.enabled = True
    return model
