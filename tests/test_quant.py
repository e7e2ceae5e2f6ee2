"""training/quant.py, the QAT fake quantizers, alone (small tensors, seconds): they compute on qmath's grids."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from runtime import qmath
from training.grids import snap_prelu
from training.quant import ActQuant, WeightQuant, link_input, quantize_bias


def _observed(gradient_based: bool, steps: int = 5) -> tuple[ActQuant, torch.Tensor]:
    torch.manual_seed(1)
    q = ActQuant(gradient_based=gradient_based, ema_steps=3)
    x = torch.randn(2000) * 2 + 0.5
    q.train()
    for _ in range(steps):
        q(x)
    return q, x


def test_weightquant_train_eval_and_export_agree_bit_for_bit():
    torch.manual_seed(0)
    w = torch.randn(6, 3, 5)
    for gradient_based in (True, False):
        wq = WeightQuant(6, 0, gradient_based)
        wq.train()
        y_train = wq(w).detach()
        wq.eval()
        y_eval = wq(w)
        s = wq.scales(w)
        codes = wq.int_weights(w)
        assert codes.dtype == torch.int8 and codes.abs().max() == qmath.W_MAX  # narrow range, full use
        assert torch.equal(y_eval, codes.float() * s[:, None, None])
        assert torch.equal(y_train, y_eval)
        assert torch.equal(s, qmath.weight_scales(w.abs().amax(dim=(1, 2))).float())


def test_eval_weights_are_the_exported_codes_even_next_to_a_rounding_tie():
    """Weights a few ulp from k + 1/2 LSB (a snapped scale puts some there): the eval model must use the codes
    export writes. torch's fake_quantize multiplies by 1/scale and rounded a weight at 34.5000018 LSB to 35
    where export's division gave 34 (full-size model: bit-exact deployment lost, 22 dB)."""
    torch.manual_seed(0)
    wq = WeightQuant(4, 0, True)
    wq.absmax.data.copy_(torch.tensor([0.7, 1.3, 0.02, 2.9]))
    wq.initialized.fill_(True)
    wq.eval()
    s = wq.scales(None)
    k = torch.randint(-126, 126, (4, 64, 8)).float()
    w = (k + 0.5 + torch.randint(-6, 7, k.shape) * 1e-6) * s[:, None, None]
    assert torch.equal(wq(w), wq.int_weights(w).float() * s[:, None, None])


def test_gradient_based_actquant_learns_its_range_through_the_rounding():
    q, x = _observed(True)
    assert q.steps == 3  # observed for ema_steps, then learned
    q(x).square().sum().backward()
    assert q.min.grad is not None and q.max.grad is not None and q.max.grad.abs() > 0


def test_vanilla_actquant_keeps_observing_and_runs_the_exported_grid():
    q, x = _observed(False)
    assert q.steps == 5 and not q.min.requires_grad
    lo, hi = (1 - 0.9 ** 5) * x.min().item(), (1 - 0.9 ** 5) * x.max().item()  # EMA from 0, alpha 0.9
    assert abs(q.min.item() - lo) < 1e-5 and abs(q.max.item() - hi) < 1e-5
    y = q(x)  # training mode, vanilla: observes once more, then the same fake-quant op as eval
    scale, zp, _, _ = q.qparams()
    q.eval()
    assert torch.equal(y, q(x))
    codes = y.double() / np.float32(scale) + (zp - qmath.Q_MIN)
    assert (codes - codes.round()).abs().max() < 1e-3 and codes.min() >= -1e-3 and codes.max() <= qmath.LEVELS + 1e-3


def test_fixed_grid_is_the_io_grid():
    q = ActQuant(fixed=(-1.0, 127 / 128))
    assert q.qparams()[:2] == (qmath.IO_SCALE, 0) and not q.gradient_based


def test_bias_follows_its_input_quantizer():
    q, _ = _observed(True)
    q.eval()
    b, s_w = torch.randn(4) * 0.1, torch.full((4,), 0.01)
    snapped = quantize_bias(b, q, s_w)
    k = snapped.double() / qmath.bias_scale(q.qparams()[0], s_w).double()
    assert (k - k.round()).abs().max() < 1e-4 and not torch.equal(snapped, b)
    assert torch.equal(quantize_bias(b, None, s_w), b)  # no input quantizer: float bias
    q.enabled = False
    assert torch.equal(quantize_bias(b, q, s_w), b)
    conv = nn.Conv1d(1, 1, 1)
    link_input(conv, q)
    assert conv.in_quant is q and "in_quant" not in dict(conv.named_modules())


def test_snap_prelu_makes_xnnpack_exact_and_fake_quant_round_every_code_alike():
    """XNNPACK's int8 LeakyReLU: A = round(256 s_in/s_out), B = round(256 alpha s_in/s_out) from the float32
    constants, out = floor(((x - zp) * A|B + 128) / 256) + zp_out. After snap_prelu, for every input code and
    input zero points of either sign, that equals exact real arithmetic (rounded half away from zero) and the
    fake-quant PReLU. Without the nudge off the grid, x - zp = +-128 land on a tie that XNNPACK rounds up,
    exact arithmetic away from zero and torch to even (~8 % of a full-size model's codes, measured)."""
    for lo, hi in ((-1.0, 3.0), (-2.0, 0.5), (-0.7, 0.7), (-3.0, 0.01)):  # input zero points -64, 76, 0, 126
        q_in = ActQuant()
        q_in.min.data.fill_(lo), q_in.max.data.fill_(hi)
        q_out = ActQuant()
        q_out.min.data.fill_(lo * 0.2), q_out.max.data.fill_(hi * 0.9)
        prelu = nn.PReLU(1, 0.2)
        snap_prelu(prelu, q_in, q_out)
        for q in (q_in, q_out, prelu):
            q.eval()
        s_in, zp_in = q_in.qparams()[:2]
        s_out, zp_out = q_out.qparams()[:2]
        s_in32, s_out32, alpha32 = np.float32(s_in), np.float32(s_out), np.float32(prelu.weight.item())
        ratio = np.float32(s_in32 / s_out32)
        A, B = int(np.rint(256 * ratio)), int(np.rint(256 * np.float32(ratio * alpha32)))
        codes = np.arange(-128, 128)
        d = codes - zp_in
        xnn = np.clip(np.floor((d * np.where(d >= 0, A, B) + 128) / 256) + zp_out, -128, 127)
        real = d * np.where(d >= 0, 1.0, np.float64(alpha32)) * np.float64(s_in32) / np.float64(s_out32)
        exact = np.clip(np.sign(real) * np.floor(np.abs(real) + 0.5) + zp_out, -128, 127)
        x = torch.tensor(d * s_in, dtype=torch.float32)
        fq = (q_out(prelu(x)).detach().numpy() / s_out32).round() + zp_out
        assert np.array_equal(xnn, exact) and np.array_equal(fq, exact), (zp_in, np.flatnonzero(xnn != exact))
        assert A % 2 == 1 and B % 2 == 1 and q_out.qparams()[1] == zp_out


def test_jitter_moves_codes_near_a_rounding_boundary_by_one_lsb_in_training_only():
    """jitter j moves each activation by U(-j, j) LSB before rounding: on values spread evenly over the grid a
    share j/2 of codes flips, each by exactly one LSB; eval mode (what export writes) is untouched."""
    torch.manual_seed(0)
    x = torch.rand(200_000) * 4 - 1
    for gradient_based in (True, False):
        plain, jit = (ActQuant(gradient_based, ema_steps=1) for _ in range(2))
        jit.jitter = 0.1
        for q in (plain, jit):
            q.train()
            q.min.data.fill_(-1.0), q.max.data.fill_(3.0), q.steps.fill_(1)  # range set, observing over
        scale = plain.qparams()[0]
        a, b = plain(x).detach(), jit(x).detach()
        flips = ((b - a) / scale).round()
        assert 0.04 < (flips != 0).float().mean().item() < 0.06
        assert flips.abs().max().item() == 1
        plain.eval(), jit.eval()
        assert torch.equal(plain(x), jit(x))
    assert ActQuant(fixed=(-1.0, 127 / 128), jitter=0.1).jitter == 0  # the int8 input/output grids stay exact


def test_int_conv1d_is_the_exact_sum_of_codes_times_the_float32_scales():
    """Eval convs: codes recovered from the fake-quant values, summed exactly (float32 within its integer range,
    float64 past it: fan-ins 64 and 600 with extreme same-sign codes), scaled by float32(s_in) x s_w as the
    kernels' multipliers are formed. Wrong code recovery, scale or dtype bound shows as a mismatch."""
    import torch.nn.functional as F

    from training.quant import int_conv1d
    s_in = 0.01
    for fan_in in (64, 600):
        x = torch.full((1, fan_in, 3), 255.0) * s_in
        w_codes = torch.tensor([127.0, 125.0]).repeat(fan_in // 2).view(1, fan_in, 1)
        s_w = torch.tensor([0.02])
        got = int_conv1d(x, w_codes * s_w, None, s_in, s_w)
        acc = F.conv1d(torch.full((1, fan_in, 3), 255.0).double(), w_codes.double())
        want = (acc * float(np.float32(s_in)) * s_w.double()).float()
        assert torch.equal(got, want), fan_in
