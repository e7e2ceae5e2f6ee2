"""Requantization grids on which every int8 kernel rounds alike (applied to a QAT model at load).

Each int8 op rounds acc x m to a code, with acc an integer and m its real multiplier (input scale x weight
scale / output scale for a conv, input scale / output scale for each term of an ADD, ...). Kernels form
acc x m differently: XNNPACK and onnxruntime in float32, the fake-quant model as float32 sums. Where acc x m
lands within their error (~1e-5 LSB) of a half-integer, they round to different codes, and the flips cascade
through the network (measured on a fine-tuned demo model: ONNX vs TFLite 54.7 dB instead of bit-exact).

The cure: every multiplier m = p/q with q odd and q <= TIE_DEN. Then acc x m = (acc p)/q is never closer
than 1/(2q) >= 4.9e-4 LSB to a half-integer, 30x the float32 error, and every kernel rounds to the one
exact code. Scales move by < 1 % (shipped model: median 0.008 % for activations, 0.03 % for weights), and
codes keep their meaning. PReLUs sit just off their own grid (XNNPACK's LeakyReLU computes in 1/256 steps):
snap_prelu. The residual block's second decoder shares the first one's weight scales: snap_residual_decoder
(its two scales move up to 10 %). Measured: the demo model and the random full-size model deploy code for code.
Not covered: TFLite's reference kernels, whose fixed point rounds twice (up to 0.25 LSB off before the final
rounding; README "Parity").
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from runtime import qmath
from training.quant import ActQuant, WeightQuant

TIE_DEN = 1023  # the odd denominator bound: no code within 1/(2 x 1023) LSB of a rounding tie
TIE_DEN_SMALL = 8191  # for conv multipliers below ~1/TIE_DEN: margin 6e-5 LSB, still 2x the float32 error
MAX_MOVE = 0.01  # a multiplier that this grid would move by more (a near-dead channel) is left alone
LRELU_GRID = 256  # XNNPACK's int8 LeakyReLU multiplies by round(256 x ratio), then shifts by 8 bits
RES_MAX_MOVE = 0.1  # the residual block's two scales (snap_residual_decoder) may move this much
RES_MAX_DEN = 7  # ... to give its decoder multipliers an odd denominator at most this much larger
LRELU_NUDGE = 1 / 256  # off the grid by this much: the ties at x - zp = +-128 fall XNNPACK's way (snap_prelu)


def odd_fraction(m: np.ndarray, max_den: int = TIE_DEN) -> np.ndarray:
    """The nearest p/q to each m with q odd, q <= max_den and p a non-zero integer."""
    m = np.asarray(m, np.float64)
    q = np.arange(1, max_den + 1, 2, dtype=np.float64)
    p = np.round(m[..., None] * q)
    p = np.where(p == 0, np.sign(m[..., None]), p)
    cand = p / q
    k = np.abs(cand - m[..., None]).argmin(-1)
    return np.take_along_axis(cand, k[..., None], -1)[..., 0]


def _on_common_den(r: float, q: int = TIE_DEN) -> float:
    """r as k/q for the fixed odd q (terms of one sum share it, so their sum has odd denominator q too)."""
    return max(round(r * q), 1) / q


def scale_of(q: nn.Module | None) -> float:
    """The exported (float32) scale of an activation quantizer."""
    return float(np.float32(q.qparams()[0]))


def adjustable(q: nn.Module | None) -> bool:
    """A learned or observed activation quantizer (not a fixed I/O grid, not a degenerate range)."""
    return isinstance(q, ActQuant) and q.fixed is None and q.max.item() - q.min.item() >= qmath.MIN_RANGE


@torch.no_grad()
def set_scale(q: ActQuant, scale: float) -> None:
    """Give an activation quantizer another scale, its zero point kept."""
    lo, hi = qmath.grid_range(scale, q.qparams()[1])
    q.min.fill_(lo)
    q.max.fill_(hi)


def _moved(new: float | np.ndarray, old: float | np.ndarray) -> np.ndarray:
    return np.abs(np.asarray(new) / np.asarray(old) - 1) > MAX_MOVE


def snap_sum(q_ins: list[nn.Module], q_out: nn.Module, frozen: set[int]) -> bool:
    """ADD/SUB (and overlap-add): every input scale / output scale on k/TIE_DEN. Moves the output scale (or,
    when that is fixed or frozen, the inputs) and the inputs not yet frozen. True when all are on it."""
    ins = list({id(q): q for q in q_ins}.values())
    free = [q for q in ins if adjustable(q) and id(q) not in frozen]
    if adjustable(q_out) and id(q_out) not in frozen:
        ref = next((q for q in ins if q not in free), ins[0])
        s_ref, s_out = scale_of(ref), scale_of(q_out)
        new = s_ref / _on_common_den(s_ref / s_out)
        if _moved(new, s_out):
            return False
        set_scale(q_out, new)
        free = [q for q in free if q is not ref]
    s_out = scale_of(q_out)
    for q in free:
        new = s_out * _on_common_den(scale_of(q) / s_out)
        if not _moved(new, scale_of(q)):
            set_scale(q, new)
    frozen.update(id(q) for q in [*ins, q_out])
    return all(abs(scale_of(q) / s_out * TIE_DEN - round(scale_of(q) / s_out * TIE_DEN)) < 1e-3 for q in ins)


def snap_product(q_a: nn.Module, q_b: nn.Module, q_out: nn.Module, frozen: set[int]) -> bool:
    """MUL: input scale x input scale / output scale on an odd fraction (moves the output scale)."""
    m = scale_of(q_a) * scale_of(q_b) / scale_of(q_out)
    ok = adjustable(q_out) and id(q_out) not in frozen and not _moved(odd_fraction(m), m)
    if ok:
        set_scale(q_out, scale_of(q_a) * scale_of(q_b) / float(odd_fraction(m)))
    frozen.update({id(q_a), id(q_b), id(q_out)})
    return ok


@torch.no_grad()
def snap_weights(wq: WeightQuant, s_in: float, s_out: float, gain: float = 1.0) -> int:
    """A conv's per-channel multipliers s_in x weight scale x gain / s_out on odd fractions (moves the learned
    weight ranges; the int8 weight codes follow them). Returns how many channels stay off the grid."""
    if not wq.gradient_based:
        return wq.absmax.numel()  # vanilla QAT: the ranges are the weights' own extremes, not parameters
    s_w = wq.scales(None).double().numpy()
    m = np.float64(np.float32(s_in)) * s_w * gain / s_out
    new = odd_fraction(m)
    far = _moved(new, m)
    new[far] = odd_fraction(m[far], TIE_DEN_SMALL)  # the finer grid only where the coarse one moves too far
    ok = ~_moved(new, m)
    s_new = np.where(ok, new * s_out / (np.float64(np.float32(s_in)) * gain), s_w)
    wq.absmax.copy_(torch.as_tensor(qmath.weight_absmax(s_new), dtype=wq.absmax.dtype))
    return int((~ok).sum())


@torch.no_grad()
def snap_prelu(prelu: nn.Module, q_in: "ActQuant", q_out: "ActQuant") -> None:
    """Put a PReLU between two int8 quantizers next to the grid XNNPACK's int8 LeakyReLU computes on:
    XNNPACK multiplies x - zero point by a = round(256 x input scale / output scale) (b = the same for the
    slope) and rounds the /256 half up. With a, b odd, a code is at least 1/256 LSB from a rounding tie except
    x - zp = +128 (positive branch) and -128 (slope branch), which land on one. The real multipliers are set
    to (a + LRELU_NUDGE)/256 and (b - LRELU_NUDGE)/256: XNNPACK still computes with a and b, while in
    exact (and float) arithmetic those two codes sit 1/512 LSB on the side XNNPACK rounds them to and every
    other code 1/512 LSB from a tie. So every arithmetic rounds every code alike (before: torch's half-to-even
    and the integer reference's half-away flipped ~8 % of a full-size model's LeakyReLU codes, measured).
    The output range moves by < 1/(2a) (a ~ 500-800 here), the zero point stays."""
    s_in = scale_of(q_in)
    s_out = q_out.qparams()[0]
    if not adjustable(q_out):
        return
    ratio = LRELU_GRID * s_in / s_out
    if not 16 <= ratio <= 32768:  # the grid would move the range by > 3 % (or XNNPACK refuses the op): leave it
        return
    a = 2 * round((ratio - 1) / 2) + 1
    set_scale(q_out, LRELU_GRID * s_in / (a + LRELU_NUDGE))
    alpha = float(prelu.weight.reshape(-1)[0])
    b = 2 * round((alpha * a - 1) / 2) + 1
    prelu.weight.fill_((b - LRELU_NUDGE) / (a + LRELU_NUDGE))


def _odd_ratio_pair(c: int, j_nat: float, k_nat: float) -> tuple[int, int] | None:
    """Integers j, k within RES_MAX_MOVE of j_nat, k_nat with c / (j k) a fraction of odd denominator
    <= RES_MAX_DEN, the pair that moves least (a smaller denominator preferred on a tie)."""
    rng = lambda v: np.arange(max(1, int(v * (1 - RES_MAX_MOVE))), int(v * (1 + RES_MAX_MOVE)) + 2, dtype=np.int64)  # noqa: E731
    j, k = np.meshgrid(rng(j_nat), rng(k_nat), indexing="ij")
    den = j * k // np.gcd(j * k, c)
    cost = np.abs(np.log(j / j_nat)) + np.abs(np.log(k / k_nat)) + 1e-4 * den
    cost = np.where((den % 2 == 1) & (den <= RES_MAX_DEN), cost, np.inf)
    i = np.unravel_index(np.argmin(cost), cost.shape)
    return (int(j[i]), int(k[i])) if np.isfinite(cost[i]) else None


def snap_residual_decoder(t, q_of) -> bool:
    """The residual block's y1 decoder reuses y0's int8 weights and weight scales, so its multipliers are
    y0's (odd fractions p/q) times R = gain x s_err x s_frames / (s_masked x s_res_frames), and stay tie-free
    only when R has an odd denominator w (then margin 1/(2 q w)). With the sums' grids (s_masked / s_err =
    j/1023, s_frames and s_res_frames = f/1023 and k/1023 x the output scale), R = 1023 gain f / (j k): pick
    j, k near their learned values with w <= RES_MAX_DEN, then put the SUB's other input (the re-encoded y0)
    back on its grid. Each scale moves by up to RES_MAX_MOVE: y1 carries the residual (1/res_gain of the
    output), and a few % of its step costs nothing measurable. Measured before: full-size model, y1 off by
    one code on 2 of 48 k samples (parity 73.9 dB). True when applied."""
    decs = [(i, st) for i, st in enumerate(t.steps) if st.kind == "conv" and st.module is None]
    if len(decs) != 2 or decs[0][1].attrs["wq"] is not decs[1][1].attrs["wq"]:
        return False
    (i0, d0), (i1, d1) = decs
    q_masked, q_err = q_of(d0.inputs[0]), q_of(d1.inputs[0])
    q_fr, q_rf = d0.quantizer, d1.quantizer
    s_o, s_o1 = scale_of(t.steps[i0 + 1].quantizer), scale_of(t.steps[i1 + 1].quantizer)
    sub = next((st for st in t.steps if st.output == d1.inputs[0] and st.kind == "sub"), None)
    gain = d1.attrs["gain"]
    if sub is None or not all(map(adjustable, (q_err, q_rf))) or s_o != s_o1 or gain != round(gain):
        return False
    f = scale_of(q_fr) / s_o * TIE_DEN
    if abs(f - round(f)) > 1e-3:
        return False
    pair = _odd_ratio_pair(TIE_DEN * int(gain) * round(f), TIE_DEN * scale_of(q_masked) / scale_of(q_err),
                           scale_of(q_rf) / s_o * TIE_DEN)
    if pair is None:
        return False
    j, k = pair
    set_scale(q_err, TIE_DEN * scale_of(q_masked) / j)
    set_scale(q_rf, k * s_o / TIE_DEN)
    snap_sum([q_of(n) for n in sub.inputs], q_err, {id(q_masked), id(q_err)})  # the re-encoded y0 follows
    return True


def snap_grids(model: nn.Module) -> nn.Module:
    """Every requantization of a QAT model (eval mode) on a tie-free grid, read off its recorded ops: sums and
    products first (they move activation scales), then PReLUs, then conv weights (they follow the activation
    scales). A weight quantizer shared by two convs (the decoder, reused by the residual block) is snapped
    for the first; vanilla QAT (observed ranges) gets the PReLU grids only. Returns the model."""
    if not model.cfg.quantize:
        return model
    t, _ = model.trace()
    q_of = t.producer_quantizer
    learned = model.cfg.gradient_based
    frozen: set[int] = set()
    for step in t.steps if learned else []:
        if step.kind in ("add", "sub", "ola"):
            snap_sum([q_of(n) for n in step.inputs], step.quantizer, frozen)
        elif step.kind == "mul":
            snap_product(*[q_of(n) for n in step.inputs], step.quantizer, frozen)
    if learned:
        snap_residual_decoder(t, q_of)
    for step in t.steps:
        if step.kind == "prelu":
            snap_prelu(step.module, q_of(step.inputs[0]), step.quantizer)
    done: set[int] = set()
    for i, step in enumerate(t.steps if learned else []):
        mod = step.module
        if step.kind == "conv":
            wq, gain = (mod.wq, 1.0) if mod is not None else (step.attrs["wq"], step.attrs["gain"])
        elif step.kind == "norm" and mod.kind == "BN":
            wq, gain = mod.wq, 1.0
        else:
            continue
        q_out = step.quantizer or t.steps[i + 1].quantizer  # a fused ReLU quantizes the conv's output
        if wq is not None and id(wq) not in done:
            snap_weights(wq, scale_of(q_of(step.inputs[0])), scale_of(q_out), gain)
            done.add(id(wq))
    return model
