"""Streaming band-limited resampling (numpy only): Kaiser-windowed sinc evaluated at each output instant,
fed block by block with carried state, so memory does not grow with the signal.

Output sample m sits at input time m * sr_in / sr_out (no delay); the cutoff is ROLLOFF times the lower
Nyquist frequency; samples before the start and after the end count as zeros.
"""
from __future__ import annotations

from math import gcd

import numpy as np

MIN_RATE, MAX_RATE = 8000, 192000  # sample rates accepted from files (a header saying 1 Hz is refused)
HALF_ZEROS = 16  # sinc zero crossings on each side
ROLLOFF = 0.94
BETA = 8.6  # Kaiser window: about 80 dB stop-band
TABLE_MAX = 4_000_000  # taps kept in a per-phase table (float64: 32 MB at most)


class StreamResampler:
    """`push(block)` -> the output samples computable so far; `flush()` -> the rest (total round(n*out/in))."""

    def __init__(self, sr_in: int, sr_out: int, block_out: int = 4096):
        g = gcd(int(sr_in), int(sr_out))
        self.up, self.down = int(sr_out) // g, int(sr_in) // g
        self.fc = ROLLOFF * min(1.0, self.up / self.down)  # cutoff, relative to the input Nyquist frequency
        self.hw = int(np.ceil(HALF_ZEROS / self.fc))  # half width in input samples
        self.block_out = block_out
        self._offsets = np.arange(-self.hw + 1, self.hw + 1)  # input taps around floor(t)
        # one row of taps per phase (m * down mod up) when that table is small, else taps computed per output
        n_taps = self.up * len(self._offsets)
        self._table = self._taps(np.arange(self.up) / self.up) if n_taps <= TABLE_MAX else None
        self._buf = np.zeros(self.hw, np.float64)  # input from absolute index _start on
        self._start = -self.hw
        self._m = 0  # next output index
        self._n_in = 0

    def _time(self, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Integer and fractional input position of outputs m (exact rational arithmetic)."""
        num = m * self.down
        return num // self.up, (num % self.up) / self.up

    def _taps(self, frac: np.ndarray) -> np.ndarray:
        """Filter taps [len(frac), 2*hw] for outputs at fractional positions frac after an input sample."""
        d = self._offsets[None, :] - frac[:, None]  # tap position minus output instant, in input samples
        x = d / self.hw
        w = np.i0(BETA * np.sqrt(np.clip(1 - x * x, 0, None))) / np.i0(BETA)
        return self.fc * np.sinc(self.fc * d) * w

    def _compute(self, m_end: int) -> np.ndarray:
        out = []
        offsets = self._offsets
        for m0 in range(self._m, m_end, self.block_out):
            m = np.arange(m0, min(m_end, m0 + self.block_out), dtype=np.int64)
            n0, frac = self._time(m)
            h = self._table[(m * self.down) % self.up] if self._table is not None else self._taps(frac)
            idx = (n0[:, None] + offsets[None, :]) - self._start
            out.append(np.einsum("mk,mk->m", h, self._buf[idx]))
        self._m = m_end
        return np.concatenate(out) if out else np.zeros(0)

    def _ready(self, available_end: int) -> int:
        """Outputs whose last tap index floor(t) + hw is below available_end."""
        # largest m with floor(m*down/up) + hw <= available_end - 1
        return max(self._m, ((available_end - self.hw) * self.up + self.down - 1) // self.down)

    def _trim(self) -> None:
        keep_from = int(self._time(np.array([self._m]))[0][0]) - self.hw + 1
        cut = keep_from - self._start
        if cut > 0:
            self._buf = self._buf[cut:]
            self._start = keep_from

    def push(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64).reshape(-1)
        self._n_in += len(x)
        self._buf = np.concatenate([self._buf, x])
        y = self._compute(self._ready(self._start + len(self._buf)))
        self._trim()
        return y.astype(np.float32)

    def flush(self) -> np.ndarray:
        n_out = int(round(self._n_in * self.up / self.down))
        self._buf = np.concatenate([self._buf, np.zeros(2 * self.hw + 1)])
        y = self._compute(max(self._m, n_out))
        return y.astype(np.float32)


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """A whole signal (float32 out, length round(len * sr_out / sr_in))."""
    if sr_in == sr_out:
        return np.asarray(x, dtype=np.float32)
    r = StreamResampler(sr_in, sr_out)
    return np.concatenate([r.push(x), r.flush()])
