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
MIN_RANGE = 1e-6  # smallest activation range
W_MAX = 127  # weights: narrow symmetric range [-127, 127], zero point 0 (TFLite int8 spec)


def act_qparams(lo: float, hi: float, bits: int = 8) -> tuple[float, int, float, float]:
    """Nudge an asymmetric range so that zero is exact (as TensorFlow's FakeQuant does).

    Returns (scale, zero_point_int8, nudged_min, nudged_max); the int8 zero point lies in [-128, 127].
    """
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    levels = 2 ** bits - 1
    if hi - lo < MIN_RANGE:  # TensorFlow's FakeQuant widens tiny ranges the same way
        hi = lo + MIN_RANGE
    scale = (hi - lo) / levels
    zp_u = int(np.clip(np.round(-lo / scale), 0, levels))
    nmin = -zp_u * scale
    return scale, zp_u - 2 ** (bits - 1), nmin, nmin + levels * scale


def weight_scales(absmax: np.ndarray) -> np.ndarray:
    """Per-channel symmetric weight scale for the narrow range [-127, 127]."""
    return np.maximum(np.asarray(absmax, dtype=np.float64), 1e-12) / W_MAX


def quantize(x: Any, scale: float, zero_point: int, qmin: int = Q_MIN, qmax: int = Q_MAX) -> Any:
    """Real value -> integer code (as float values), round half to even, clipped."""
    return (_round(x / scale) + zero_point).clip(qmin, qmax)


def _round(x: Any) -> Any:
    return np.round(x) if isinstance(x, np.ndarray) else x.round()


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
