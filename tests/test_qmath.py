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


@settings(max_examples=300, deadline=None)
@given(st.floats(-50, 0), st.floats(0, 50))
def test_activation_range_nudged_zero_exact(lo, hi):
    scale, zp, nmin, nmax = qmath.act_qparams(lo, hi)
    assert -128 <= zp <= 127
    assert abs(nmin + (zp + 128) * scale) < 1e-9 * max(1.0, abs(nmin))
    assert abs((nmax - nmin) - 255 * scale) < 1e-6 * max(1.0, nmax - nmin)
