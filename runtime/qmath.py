"""The quantizer math, in one place.

Used by QAT (training/quant.py, on torch tensors), by export and conversion (to write the exact
scales and zero points) and by the runtime (integer splitter/combiner, parity checks).
Functions here take numpy arrays or torch tensors alike: they only use operators and methods the
two share (``//``, ``.clip``, ``*``), or plain Python floats.
"""
from __future__ import annotations

from typing import Any

import numpy as np

# Signed 8-bit grid on [-1, 1): the splitter input and the combiner outputs use it.
IO_BITS = 8
IO_SCALE = 1.0 / 2 ** (IO_BITS - 1)  # 1/128
Q_MIN, Q_MAX = -128, 127  # int8 activations
LEVELS = Q_MAX - Q_MIN  # 255 steps of an 8-bit activation grid (its unsigned codes are 0..255)
MIN_RANGE = 1e-6  # smallest activation range
W_MAX = 127  # weights: narrow symmetric range [-127, 127], zero point 0 (TFLite int8 spec)
W_MIN_ABSMAX = 1e-12  # smallest per-channel weight range (an all-zero channel keeps a finite scale)
I32_MIN, I32_MAX = -2 ** 31, 2 ** 31 - 1  # int32 biases


# Every function below takes Python floats, numpy arrays or torch tensors alike (operators and the
# methods ``.clip``/``.round`` the two share). `rnd` is the rounding: round half to even by default;
# QAT passes a straight-through rounding so that gradients flow (training/quant.py round_ste).

def nudge(lo: Any, hi: Any, levels: int = LEVELS, rnd: Any = None) -> tuple[Any, Any]:
    """An asymmetric range nudged so that zero is an integer code (as TensorFlow's FakeQuant does).

    Returns (scale, unsigned zero point in [0, levels]); the grid is (code - zero point) x scale,
    codes 0..levels. Ranges narrower than MIN_RANGE are widened to it (as FakeQuant does)."""
    rnd = rnd or _round
    lo, hi = _arr(lo).clip(max=0.0), _arr(hi).clip(min=0.0)
    scale = (hi - lo).clip(min=MIN_RANGE) / levels
    return scale, rnd(-lo / scale).clip(0, levels)


def act_qparams(lo: float, hi: float, bits: int = 8) -> tuple[float, int, float, float]:
    """The exported activation grid of the range [lo, hi]: (scale, int8 zero point, nudged min, nudged max).

    The int8 zero point lies in [-128, 127]; zero is exactly code zero point."""
    levels = 2 ** bits - 1
    scale, zp_u = nudge(np.float64(lo), np.float64(hi), levels)
    scale, zp_u = float(scale), int(zp_u)
    nmin = -zp_u * scale
    return scale, zp_u - 2 ** (bits - 1), nmin, nmin + levels * scale


def grid_range(scale: Any, zero_point: Any, qmin: int = Q_MIN, qmax: int = Q_MAX) -> tuple[Any, Any]:
    """Real values of the lowest and the highest code of a grid (a FakeQuant's min and max)."""
    return dequantize(qmin, scale, zero_point), dequantize(qmax, scale, zero_point)


def weight_scales(absmax: Any) -> Any:
    """Per-channel symmetric weight scale for the narrow range [-W_MAX, W_MAX] (zero point 0).

    numpy input gives float64, torch input keeps its dtype."""
    m = absmax if hasattr(absmax, "detach") else np.asarray(absmax, dtype=np.float64)
    return m.clip(min=W_MIN_ABSMAX) / W_MAX


def weight_absmax(scales: Any) -> Any:
    """The symmetric weight range [-m, m] of per-channel scales (the inverse of weight_scales)."""
    return scales * W_MAX


def weight_codes(w: Any, scales: Any, rnd: Any = None) -> Any:
    """Weights -> their int8 codes on [-W_MAX, W_MAX] (float values); scales broadcast against w."""
    return quantize(w, scales, 0, -W_MAX, W_MAX, rnd)


def bias_scale(in_scale: float, w_scales: Any) -> Any:
    """The int32 bias grid of a conv: its input scale (as float32, as exported) x its weight scales
    (per output channel). float32 weight scales give float32, numpy and torch alike."""
    return w_scales * float(np.float32(in_scale))


def bias_codes(b: Any, in_scale: float, w_scales: Any, rnd: Any = None) -> Any:
    """Biases -> int32 codes (float values) on the bias grid (input scale x weight scale)."""
    return quantize(b, bias_scale(in_scale, w_scales), 0, I32_MIN, I32_MAX, rnd)


def snap_bias(b: Any, in_scale: float, w_scales: Any, rnd: Any = None) -> Any:
    """Biases moved onto the int32 grid the int8 kernels use (the values an int8 kernel adds)."""
    return dequantize(bias_codes(b, in_scale, w_scales, rnd), bias_scale(in_scale, w_scales), 0)


def quantize(x: Any, scale: Any, zero_point: Any, qmin: int = Q_MIN, qmax: int = Q_MAX, rnd: Any = None) -> Any:
    """Real value -> integer code (as float values), round half to even (or `rnd`), clipped."""
    return ((rnd or _round)(x / scale) + zero_point).clip(qmin, qmax)


def dequantize(q: Any, scale: Any, zero_point: Any) -> Any:
    """Integer code -> real value."""
    return (q - zero_point) * scale


def _arr(x: Any) -> Any:
    """Floats as numpy float64; arrays and tensors as they are."""
    return x if hasattr(x, "clip") else np.float64(x)


def _round(x: Any) -> Any:
    return x.round() if hasattr(x, "detach") else np.round(x)  # torch tensors: their own (half to even too)


def split(x: Any, n: int) -> list[Any]:
    """Input splitter on a waveform in [-1, 1): n int8 code streams (as float values).

    c_k = clip(floor(x_k / D), -128, 127); x_{k+1} = 2 (x_k - D c_k) / D - 1, with D = 1/128.
    """
    codes = []
    xk = x.clip(-1.0, 1.0 - IO_SCALE / 2 ** 16)
    for _ in range(n):
        c = (xk // IO_SCALE).clip(Q_MIN, Q_MAX)
        codes.append(c)
        xk = (2.0 * (xk - IO_SCALE * c) / IO_SCALE - 1.0).clip(-1.0, 1.0 - IO_SCALE / 2 ** 16)
    return codes


def combine(outputs: list[Any]) -> Any:
    """Combiner: y = sum_i (c_i * D) * (D / 2)^i, D = 1/128 (c_i are the int8 output codes)."""
    y = 0.0
    for i, c in enumerate(outputs):
        y = y + c * IO_SCALE * (IO_SCALE / 2) ** i
    return y


# ---- integer host versions (runtime) --------------------------------------------------------------

def split_int16(pcm: np.ndarray, n: int) -> np.ndarray:
    """Splitter on int16 PCM in integer arithmetic: returns int8 codes, shape [n, T].

    For int16 input (x = p / 32768) the float splitter reduces to: c_1 = p >> 8 (high byte),
    c_2 = (p & 255) - 128, and c_k = -128 for k > 2. Equal to ``split`` on the same signal.
    """
    p = np.asarray(pcm, dtype=np.int32)
    out = np.full((n, p.shape[-1]), Q_MIN, dtype=np.int8)
    if n >= 1:
        out[0] = p >> 8
    if n >= 2:
        out[1] = (p & 255) - 128
    return out


def subtract_int16(pcm: np.ndarray, estimate: np.ndarray) -> np.ndarray:
    """Host step of a noise-estimating model: input PCM minus the noise estimate (both int16), saturated."""
    return np.clip(pcm.astype(np.int32) - estimate, -32768, 32767).astype(np.int16)


def combine_int16(codes: np.ndarray) -> np.ndarray:
    """Combiner in integer arithmetic: int8 codes [C, T] -> int16 PCM.

    y * 32768 = 256 c_0 + c_1 + (c_2 >> 8) ...; C > 2 adds below one int16 LSB and is dropped
    after rounding. Equal to ``combine`` rounded to the int16 grid.
    """
    c = np.asarray(codes, dtype=np.int32)
    acc = c[0] << 8
    if c.shape[0] >= 2:
        acc = acc + c[1]
    return np.clip(acc, -32768, 32767).astype(np.int16)
