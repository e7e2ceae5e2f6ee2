"""The shared quantizer math: integer host splitter/combiner equal the float (training) versions."""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from runtime import qmath

pcm16 = arrays(np.int16, st.integers(1, 400), elements=st.integers(-32768, 32767))


@settings(max_examples=200, deadline=None)
@given(pcm16, st.integers(1, 3))
def test_integer_splitter_equals_float_splitter(pcm, n):
    x = pcm.astype(np.float64) / 32768.0
    float_codes = np.stack(qmath.split(x, n))
    assert np.array_equal(qmath.split_int16(pcm, n).astype(np.float64), float_codes)
    # the torch tensors used in training give the same codes
    torch_codes = torch.stack(qmath.split(torch.from_numpy(x), n)).numpy()
    assert np.array_equal(torch_codes, float_codes)


@settings(max_examples=200, deadline=None)
@given(arrays(np.int8, st.tuples(st.integers(1, 2), st.integers(1, 300))))
def test_integer_combiner_equals_float_combiner(codes):
    y = qmath.combine([c.astype(np.float64) for c in codes])
    expect = np.clip(np.round(y * 32768), -32768, 32767)
    assert np.array_equal(qmath.combine_int16(codes).astype(np.float64), expect)


def test_two_int8_streams_carry_int16_exactly():
    pcm = np.arange(-32768, 32768, dtype=np.int16)
    codes = qmath.split_int16(pcm, 2)
    # the combiner weights the second stream by 1/256: hi byte + (lo byte - 128) / 256
    rebuilt = codes[0].astype(np.int32) * 256 + codes[1] + 128
    assert np.array_equal(rebuilt, pcm)


ranges = st.tuples(st.floats(-50, 0), st.floats(0, 50)) | st.tuples(st.floats(-1e-6, 0), st.floats(0, 1e-6))


@settings(max_examples=300, deadline=None)
@given(ranges)
def test_activation_grid_invariants(r):
    """Zero is exactly a code; the nudged range covers [lo, hi] to within half a step at each end;
    any x in [lo, hi] comes back within half a step (catches e.g. a zero point stuck at 0)."""
    lo, hi = r
    scale, zp, nmin, nmax = qmath.act_qparams(lo, hi)
    assert qmath.Q_MIN <= zp <= qmath.Q_MAX and scale > 0
    assert qmath.quantize(np.zeros(1), scale, zp)[0] == zp and qmath.dequantize(zp, scale, zp) == 0.0
    tol = 1e-9 * max(1.0, hi - lo)
    assert nmin <= 0.0 <= nmax
    assert nmin <= lo + scale / 2 + tol and nmax >= hi - scale / 2 - tol
    x = np.linspace(lo, hi, 101)
    back = qmath.dequantize(qmath.quantize(x, scale, zp), scale, zp)
    assert np.abs(back - x).max() <= scale / 2 * (1 + 1e-9) + tol
    # the grid's end codes are the nudged range (what a FakeQuant of that min / max computes)
    g_lo, g_hi = qmath.grid_range(scale, zp)
    assert abs(g_lo - nmin) <= tol and abs(g_hi - nmax) <= tol


@settings(max_examples=200, deadline=None)
@given(ranges)
def test_torch_nudge_equals_exported_qparams_bit_for_bit(r):
    """QAT's differentiable range (ActQuant, training mode) runs qmath.nudge on torch tensors: in
    float64 it gives exactly the exported (scale, zero point)."""
    from training.quant import round_ste
    lo, hi = r
    scale, zp, _, _ = qmath.act_qparams(lo, hi)
    ts, tz = qmath.nudge(torch.tensor(lo, dtype=torch.float64), torch.tensor(hi, dtype=torch.float64), rnd=round_ste)
    assert ts.item() == scale and int(tz.item()) + qmath.Q_MIN == zp


def test_actquant_training_forward_matches_exported_grid():
    """ActQuant in training mode (learned range, straight-through rounding) lands on the grid that
    export writes: the same codes as torch's fake-quant op with qparams(), to within one float32 ulp."""
    from training.quant import ActQuant
    torch.manual_seed(0)
    q = ActQuant(gradient_based=True, ema_steps=1)
    q.train()
    x = torch.randn(4000) * 3 + 0.7
    q(x)  # one observed step; from now on the range is learned
    q.max.data.fill_(3.3)
    y_train = q(x).detach()
    q.eval()
    y_eval = q(x)
    scale = q.qparams()[0]
    assert (y_train - y_eval).abs().max().item() <= 1e-5 * scale
    grid = y_eval / np.float32(scale) + torch.tensor(q.qparams()[1] - qmath.Q_MIN)
    assert (grid - grid.round()).abs().max().item() < 1e-3


@settings(max_examples=200, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 9)),
              elements=st.floats(-4, 4, width=32)))
def test_weight_codes_symmetric_narrow_and_round_trip(w):
    absmax = np.abs(w).max(axis=1)
    s = qmath.weight_scales(absmax)
    codes = qmath.weight_codes(w, s[:, None])
    assert codes.min() >= -qmath.W_MAX and codes.max() <= qmath.W_MAX
    assert np.all(codes == np.round(codes))
    live = absmax > 1e-6
    assert np.all(np.abs(codes).max(axis=1)[live] == qmath.W_MAX)  # each channel uses its full range
    assert np.all(np.abs(codes * s[:, None] - w) <= s[:, None] / 2 * (1 + 1e-6))
    assert np.allclose(qmath.weight_absmax(s), np.maximum(absmax, qmath.W_MIN_ABSMAX))
    # torch gives the same scales and codes
    ts = qmath.weight_scales(torch.from_numpy(absmax).double())
    assert np.array_equal(ts.numpy(), s)
    assert np.array_equal(qmath.weight_codes(torch.from_numpy(w).double(), ts[:, None]).numpy(), codes)


@settings(max_examples=200, deadline=None)
@given(st.floats(1e-4, 0.1), arrays(np.float32, 5, elements=st.floats(0.0001220703125, 0.0625, width=32)),
       arrays(np.float32, 5, elements=st.floats(-3, 3, width=32)))
def test_bias_grid_is_input_scale_times_weight_scale(in_scale, w_scales, b):
    s = qmath.bias_scale(in_scale, w_scales)
    assert s.dtype == np.float32 and np.array_equal(s, np.float32(in_scale) * w_scales)
    codes = qmath.bias_codes(b, in_scale, w_scales)
    snapped = qmath.snap_bias(b, in_scale, w_scales)
    assert np.all(codes == np.round(codes)) and np.array_equal(snapped, codes * s)
    assert np.all(np.abs(snapped - b) <= s / 2 * (1 + 1e-6) + np.abs(b) * 2.0 ** -22)  # float32 arithmetic
    # the torch path (QAT's quantize_bias) computes the same float32 bits
    tb = qmath.snap_bias(torch.from_numpy(b), in_scale, torch.from_numpy(w_scales))
    assert np.array_equal(tb.numpy(), snapped.astype(np.float32))


def test_quantize_clips_and_rounds_half_to_even():
    x = np.array([-1000.0, -0.5, 0.5, 1.5, 2.5, 1000.0])
    assert qmath.quantize(x, 1.0, 0).tolist() == [-128, -0.0, 0, 2, 2, 127]
    assert qmath.quantize(torch.from_numpy(x), 1.0, 0).tolist() == [-128, -0.0, 0, 2, 2, 127]
