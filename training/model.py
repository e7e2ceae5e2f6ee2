"""ConvTasNet for single-speaker enhancement with FQSE's quantization points.

Layout follows asteroid's ConvTasNet (encoder, TCN masker, decoder), written so that every tensor
of the deployed int8 graph has a fake quantizer here. The decoder is a 1x1 convolution to L samples
per frame followed by overlap-add (equal to ConvTranspose1d(N, 1, L, stride L/2)); its weights keep
asteroid's [N, 1, L] layout. Model input: the splitter's S int8 code streams times 1/128; outputs:
C tensors on the int8 grid 1/128 that the host combiner adds (y0 + y1/256).
The forward is the network's one description: each deployed op is one `tape.op` / `layer` call, and the
deploy graph, the bias links and the tie-free grids (training/grids.py) are read off its recording (training/tape.py).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from runtime import qmath
from runtime.pipeline import padded_length
from training import tape
from training.quant import ActQuant, WeightQuant, exact_conv_ready, int_conv1d, link_input, quantize_bias

NORMS = ("gLN", "cLN", "BN")
ESTIMATES = ("speech", "noise")  # what the network's output is (ModelConfig.estimate)
IO_RANGE = qmath.grid_range(qmath.IO_SCALE, 0)  # int8 grid with scale 1/128, zero point 0: [-1, 127/128]
RES_GAIN = 2.0 / qmath.IO_SCALE  # the residual output is weighted (D/2): its branch is amplified by 256


@dataclass
class ModelConfig:
    n_filters: int = 512  # N
    kernel_size: int = 32  # L (stride L/2)
    bn_chan: int = 128  # B
    hid_chan: int = 512  # H
    skip_chan: int = 128  # must equal bn_chan here (asteroid default)
    conv_kernel_size: int = 3  # P
    n_blocks: int = 8  # X
    n_repeats: int = 3  # R
    norm_type: str = "gLN"
    causal: bool = False
    sample_rate: int = 16000
    n_splitter: int = 1
    n_combiner: int = 1
    quantize: bool = False
    gradient_based: bool = True
    ema_steps: int = 50
    jitter: float = 0.0  # training only: activations move by up to this many LSBs before rounding (quant.ActQuant)
    res_gain: float = RES_GAIN  # residual-branch gain before its output quantizer (1 for imported reference models)
    encoder_bias: bool = False  # PTQ of a float model: the bias that removes the splitter's 1/256 offset
    input_gain: str = "fixed"  # "peak": offline, the runtime scales the input to full scale (imported reference models)
    encoder_split: bool = False  # PTQ: a second encoder for the splitter's low byte (its own weight scales)
    estimate: str = "speech"  # "noise": the network estimates the noise and the host subtracts it from its input

    def __post_init__(self):
        if self.norm_type not in NORMS:
            raise ValueError(f"model.norm_type {self.norm_type!r}: choose one of {NORMS}")
        if self.kernel_size % 2:
            raise ValueError("model.kernel_size must be even (stride is kernel_size / 2)")
        if self.n_combiner not in (1, 2):
            raise ValueError("model.n_combiner must be 1 or 2")
        if self.n_splitter < 1:
            raise ValueError("model.n_splitter must be >= 1")
        if self.skip_chan != self.bn_chan:
            raise ValueError("model.skip_chan must equal model.bn_chan")
        if self.estimate not in ESTIMATES:
            raise ValueError(f"model.estimate {self.estimate!r}: choose one of {ESTIMATES}")
        if self.causal and self.norm_type == "gLN":
            raise ValueError("a causal model needs norm_type cLN or BN (gLN sees the whole utterance)")

    @property
    def stride(self) -> int:
        return self.kernel_size // 2

    def to_dict(self) -> dict:
        return asdict(self)


class Norm(nn.Module):
    """gLN (GroupNorm, 1 group), cLN (per-frame LayerNorm over channels) or BN (frozen in QAT)."""

    def __init__(self, kind: str, channels: int, quantize: bool, gradient_based: bool):
        super().__init__()
        self.kind = kind
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))
        if kind == "BN":
            self.register_buffer("running_mean", torch.zeros(channels))
            self.register_buffer("running_var", torch.ones(channels))
            self.wq = WeightQuant(channels, 0, gradient_based) if quantize else None
        self.eps = 1e-5 if kind == "BN" else 1e-8
        self.quantize = quantize

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """BN as a per-channel affine y = a x + b (frozen statistics)."""
        a = self.gamma / torch.sqrt(self.running_var + self.eps)
        return a, self.beta - self.running_mean * a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "gLN":
            mean = x.mean(dim=(1, 2), keepdim=True)
            var = ((x - mean) ** 2).mean(dim=(1, 2), keepdim=True)
            return self.gamma[:, None] * (x - mean) / torch.sqrt(var + self.eps) + self.beta[:, None]
        if self.kind == "cLN":
            mean = x.mean(dim=1, keepdim=True)
            var = ((x - mean) ** 2).mean(dim=1, keepdim=True)
            return self.gamma[:, None] * (x - mean) / torch.sqrt(var + self.eps) + self.beta[:, None]
        if self.training and not self.quantize:
            return F.batch_norm(x, self.running_mean, self.running_var, self.gamma, self.beta, True, 0.1, self.eps)
        a, b = self.affine()
        if self.wq is not None:
            b = quantize_bias(b, getattr(self, "in_quant", None), self.wq.scales(a[:, None]))
            a = self.wq(a[:, None])[:, 0]
        return a[:, None] * x + b[:, None]


class QConv(nn.Module):
    """Conv1d with a per-channel weight quantizer (axis 0) and an output quantizer."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1, dilation: int = 1,
                 groups: int = 1, bias: bool = True, pad: tuple[int, int] = (0, 0), cfg: ModelConfig = None):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, k, stride=stride, dilation=dilation, groups=groups, bias=bias)
        self.pad = pad
        self.wq = WeightQuant(cout, 0, cfg.gradient_based) if cfg.quantize else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        w, b = c.weight, c.bias
        in_quant = getattr(self, "in_quant", None)
        if self.wq is not None:
            s_w = self.wq.scales(w)
            if b is not None:
                b = quantize_bias(b, in_quant, s_w)
            w = self.wq(w)
        if any(self.pad):
            x = F.pad(x, self.pad)
        if exact_conv_ready(in_quant, self.wq, self.training):
            return int_conv1d(x, w, b, in_quant.qparams()[0], s_w, c.stride, c.dilation, c.groups)
        return F.conv1d(x, w, b, c.stride, 0, c.dilation, c.groups)


def act(cfg: ModelConfig, fixed: tuple[float, float] | None = None) -> nn.Module:
    if not cfg.quantize:
        return nn.Identity()
    return ActQuant(cfg.gradient_based, cfg.ema_steps, fixed=fixed, jitter=cfg.jitter)


def layer(kind: str, module: nn.Module, x: torch.Tensor, q: nn.Module | None, out: str) -> torch.Tensor:
    """q(module(x)), recorded as deploy op `out` (training/tape.py)."""
    return tape.op(kind, module, [x], q, out, module=module)


class Block(nn.Module):
    """TCN block: 1x1 -> PReLU -> norm -> depthwise (dilated) -> PReLU -> norm -> res / skip 1x1."""

    def __init__(self, cfg: ModelConfig, dilation: int):
        super().__init__()
        B, H, P = cfg.bn_chan, cfg.hid_chan, cfg.conv_kernel_size
        pad = ((P - 1) * dilation, 0) if cfg.causal else ((P - 1) * dilation // 2,) * 2
        q = cfg.quantize
        self.in_conv = QConv(B, H, cfg=cfg)
        self.q_in = act(cfg)
        self.prelu1 = nn.PReLU()
        self.q_prelu1 = act(cfg)
        self.norm1 = Norm(cfg.norm_type, H, q, cfg.gradient_based)
        self.q_norm1 = act(cfg)
        self.dconv = QConv(H, H, P, dilation=dilation, groups=H, pad=pad, cfg=cfg)
        self.q_dconv = act(cfg)
        self.prelu2 = nn.PReLU()
        self.q_prelu2 = act(cfg)
        self.norm2 = Norm(cfg.norm_type, H, q, cfg.gradient_based)
        self.q_norm2 = act(cfg)
        self.res_conv = QConv(H, B, cfg=cfg)
        self.q_res = act(cfg)
        self.skip_conv = QConv(H, B, cfg=cfg)
        self.q_skip = act(cfg)
        self.q_add = act(cfg)

    def forward(self, x: torch.Tensor, p: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """x -> (residual output, skip); `p` prefixes the recorded op names."""
        h = layer("conv", self.in_conv, x, self.q_in, p + "in")
        h = layer("prelu", self.prelu1, h, self.q_prelu1, p + "prelu1")
        h = layer("norm", self.norm1, h, self.q_norm1, p + "norm1")
        h = layer("conv", self.dconv, h, self.q_dconv, p + "dconv")
        h = layer("prelu", self.prelu2, h, self.q_prelu2, p + "prelu2")
        h = layer("norm", self.norm2, h, self.q_norm2, p + "norm2")
        res = layer("conv", self.res_conv, h, self.q_res, p + "res")
        skip = layer("conv", self.skip_conv, h, self.q_skip, p + "skip")
        return tape.op("add", torch.add, [x, res], self.q_add, p + "out"), skip


class ConvTasNet(nn.Module):
    """FQSE ConvTasNet: int8 codes in (as values on the 1/128 grid), C int8-grid outputs."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        N, L, B, s = cfg.n_filters, cfg.kernel_size, cfg.bn_chan, cfg.stride
        self.q_input = act(cfg, fixed=IO_RANGE) if cfg.quantize else nn.Identity()
        self.encoder = QConv(cfg.n_splitter, N, L, stride=s, bias=cfg.encoder_bias, cfg=cfg)
        self.q_enc = act(cfg)
        if cfg.encoder_split:  # enc = Q(Q(encoder(x)) + Q(encoder_lo(x))), each conv with its own scales
            self.encoder_lo = QConv(cfg.n_splitter, N, L, stride=s, bias=False, cfg=cfg)
            self.q_enc_hi, self.q_enc_lo = act(cfg), act(cfg)
        self.bottleneck_norm = Norm(cfg.norm_type, N, cfg.quantize, cfg.gradient_based)
        self.q_bn_norm = act(cfg)
        self.bottleneck = QConv(N, B, cfg=cfg)
        self.q_bottleneck = act(cfg)
        self.blocks = nn.ModuleList(Block(cfg, 2 ** x) for _ in range(cfg.n_repeats) for x in range(cfg.n_blocks))
        self.q_skips = nn.ModuleList(act(cfg) for _ in range(len(self.blocks) - 1))
        self.mask_prelu = nn.PReLU()
        self.q_mask_prelu = act(cfg)
        self.mask_conv = QConv(B, N, cfg=cfg)
        self.q_mask = act(cfg)
        self.q_masked = act(cfg)
        # Decoder: asteroid layout [N, 1, L]; applied as a 1x1 conv N -> L plus overlap-add.
        self.decoder_filters = nn.Parameter(torch.randn(N, 1, L) / (N * L) ** 0.5)
        self.dec_wq = WeightQuant(L, 0, cfg.gradient_based) if cfg.quantize else None
        self.q_frames = act(cfg)
        self.q_out = act(cfg, fixed=IO_RANGE)
        if cfg.n_combiner == 2:
            self.res_encoder = QConv(1, N, L, stride=s, bias=False, cfg=cfg)
            self.q_res_enc = act(cfg)
            self.q_err = act(cfg)
            self.q_res_frames = act(cfg)
            self.q_res_out = act(cfg, fixed=IO_RANGE)
        self._trace = self._record()  # the topology is fixed from here on
        if cfg.quantize:
            self._link_bias_inputs()

    def trace(self) -> tuple[tape.Tape, list[str]]:
        """The deployed ops in execution order (recorded from the forward once, at construction, so
        later forward hooks never see the recording run) and the names of the outputs."""
        return self._trace

    @torch.no_grad()
    def _record(self) -> tuple[tape.Tape, list[str]]:
        """One forward on a short zero input under tape.record(), every quantizer passing through
        (nothing observed, initialized or learned)."""
        was_training = self.training
        quantizers = [m for m in self.modules() if isinstance(m, (ActQuant, WeightQuant))]
        enabled = [q.enabled for q in quantizers]
        self.eval()
        for q in quantizers:
            q.enabled = False
        try:
            with tape.record() as t:
                outs = self(torch.zeros(1, self.cfg.n_splitter, 4 * self.cfg.stride))
                names = [t.name_of(o) for o in outs]
            return t, names
        finally:
            for q, e in zip(quantizers, enabled):
                q.enabled = e
            self.train(was_training)

    def _link_bias_inputs(self) -> None:
        """Each conv (and BN affine) learns which quantizer feeds it (its bias lives on the int32 grid)."""
        t, _ = self.trace()
        for step in t.steps:
            if step.kind in ("conv", "norm") and step.module is not None:
                link_input(step.module, t.producer_quantizer(step.inputs[0]))

    # --- pieces shared with export -------------------------------------------------------------------
    def decoder_float_weight(self) -> torch.Tensor:
        """The decoder as a 1x1 conv weight [L, N, 1]."""
        return self.decoder_filters[:, 0, :].t().unsqueeze(-1)

    def decoder_weight(self) -> torch.Tensor:
        """The decoder's 1x1 conv weight, fake-quantized per output sample."""
        w = self.decoder_float_weight()
        return w if self.dec_wq is None else self.dec_wq(w)

    def overlap_add(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, L, F] frames -> [B, 1, (F+1) * L/2] samples (kernel L, hop L/2)."""
        s = self.cfg.stride
        a = F.pad(frames[:, :s], (0, 1))
        b = F.pad(frames[:, s:], (1, 0))
        return (a + b).transpose(1, 2).reshape(frames.shape[0], 1, -1)

    def decode(self, feats: torch.Tensor, q_feats: nn.Module, out: str, q_frames: nn.Module, q_out: nn.Module,
               gain: float = 1.0) -> torch.Tensor:
        """Decoder (1x1 conv N -> L, times `gain`) then overlap-add, each onto its quantizer's grid. q_feats: the
        quantizer feats come from (in eval mode the conv then sums their integer codes; None: a float32 conv)."""
        def frames_of(f: torch.Tensor) -> torch.Tensor:
            if exact_conv_ready(q_feats, self.dec_wq, self.training):
                w = self.decoder_float_weight()
                frames = int_conv1d(f, self.dec_wq(w), None, q_feats.qparams()[0], self.dec_wq.scales(w))
            else:
                frames = F.conv1d(f, self.decoder_weight())
            return frames * gain if gain != 1.0 else frames
        frames = tape.op("conv", frames_of, [feats], q_frames, out + "_frames",
                         weight=self.decoder_float_weight, wq=self.dec_wq, gain=gain)
        return tape.op("ola", self.overlap_add, [frames], q_out, out, stride=self.cfg.stride)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if not self.cfg.encoder_split:
            return layer("conv", self.encoder, x, self.q_enc, "enc")
        hi = layer("conv", self.encoder, x, self.q_enc_hi, "enc_hi")
        lo = layer("conv", self.encoder_lo, x, self.q_enc_lo, "enc_lo")
        return tape.op("add", torch.add, [hi, lo], self.q_enc, "enc")

    def forward(self, codes: torch.Tensor) -> list[torch.Tensor]:
        """codes: [B, S, T] splitter values (int8 codes x 1/128), T a multiple of L/2 -> C x [B, 1, T + L/2].
        This is the network's one description: the deploy graph is recorded from it (trace())."""
        enc = self.encode(tape.source(self.q_input(codes), "input", self.q_input))
        y = layer("norm", self.bottleneck_norm, enc, self.q_bn_norm, "bn_norm")
        y = layer("conv", self.bottleneck, y, self.q_bottleneck, "bottleneck")
        skip_sum = None
        for i, block in enumerate(self.blocks):
            y, skip = block(y, f"b{i}_")
            skip_sum = skip if skip_sum is None else tape.op("add", torch.add, [skip_sum, skip], self.q_skips[i - 1],
                                                             f"b{i}_skipsum")
        m = layer("prelu", self.mask_prelu, skip_sum, self.q_mask_prelu, "mask_prelu")
        m = layer("conv", self.mask_conv, m, None, "mask_conv_f")  # the ReLU follows at once: one int8 op
        mask = tape.op("relu", torch.relu, [m], self.q_mask, "mask")
        masked = tape.op("mul", torch.mul, [mask, enc], self.q_masked, "masked")
        y0 = self.decode(masked, self.q_masked, "y0", self.q_frames, self.q_out)
        outs = [y0]
        if self.cfg.n_combiner == 2:
            r = layer("conv", self.res_encoder, y0, self.q_res_enc, "res_enc")
            err = tape.op("sub", torch.sub, [masked, r], self.q_err, "err")
            outs.append(self.decode(err, self.q_err, "y1", self.q_res_frames, self.q_res_out, self.cfg.res_gain))
        return outs


@dataclass
class Pipeline:
    """Host-side pre/post-processing around the network (same math as the runtime)."""
    cfg: ModelConfig = field(default_factory=ModelConfig)

    def pre(self, wav: torch.Tensor) -> tuple[torch.Tensor, int]:
        """[B, T] waveform in [-1, 1] -> [B, S, T'] model input, T (see runtime.pipeline.padded_length)."""
        s = self.cfg.stride
        T = wav.shape[-1]
        total = padded_length(T, s)
        x = F.pad(wav, (s, total - T - s))
        if self.cfg.quantize:
            x = torch.stack([c * qmath.IO_SCALE for c in qmath.split(x, self.cfg.n_splitter)], dim=1)
        else:
            x = x.unsqueeze(1)
        return x, T

    def post(self, outs: list[torch.Tensor], T: int) -> torch.Tensor:
        """C model outputs -> [B, T] waveform (combiner, then crop the padding)."""
        s = self.cfg.stride
        y = qmath.combine([o[:, 0] / qmath.IO_SCALE for o in outs]) if len(outs) > 1 else outs[0][:, 0]
        return y[:, s: s + T]

    def finish(self, wav: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The host's last step: a noise estimate is subtracted from the input the model saw (for a quantized
        model the int16 PCM the splitter reads, as the runtime does); a speech estimate is the output."""
        if self.cfg.estimate == "speech":
            return y
        if self.cfg.quantize:
            wav = torch.floor(wav.clamp(-1.0, 1.0) * 32768.0).clamp(-32768, 32767) / 32768.0
        return wav - y


def enhance(model: nn.Module, wav: torch.Tensor, cfg: ModelConfig | None = None) -> torch.Tensor:
    """Waveform [B, T] -> enhanced waveform [B, T] (splitter, network, combiner); model may be DDP-wrapped."""
    pipe = Pipeline(cfg or model.cfg)
    x, T = pipe.pre(wav)
    return pipe.finish(wav, pipe.post(model(x), T))


def passthrough(model: ConvTasNet, wav: torch.Tensor) -> torch.Tensor:
    """Training aid (training.ae_weight): waveform [B, T] through the encoder and decoder alone, an all-ones
    mask, on the same quantizers as y0. A transparent filterbank returns its input: then high-SNR input needs
    only a mask of 1. The trained tiny model's returns 8-12 dB SI-SNR (measured), its clean input 17 dB."""
    pipe = Pipeline(model.cfg)
    x, T = pipe.pre(wav)
    enc = model.encode(model.q_input(x))
    y0 = model.decode(enc, model.q_enc, "ae", model.q_frames, model.q_out)
    return pipe.post([y0] + [torch.zeros_like(y0)] * (model.cfg.n_combiner - 1), T)
