"""Audio I/O with clear errors: reading, validation, resampling, atomic writes (numpy + soundfile)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf

from runtime.files import atomic_write


class AudioError(ValueError):
    """Bad audio input; the message is one line meant for the user."""


class AudioWarning(UserWarning):
    """Audio that can be processed but probably not as the caller meant (e.g. float beyond [-1, 1])."""


def read_audio(path: str | os.PathLike, sample_rate: int | None = None, *, strict_rate: bool = False,
               notes: list[str] | None = None) -> tuple[np.ndarray, int]:
    """Read a file as mono float32 in [-1, 1].

    Stereo is downmixed and a different rate is resampled to ``sample_rate`` (each noted in ``notes``),
    unless ``strict_rate``, where a different rate is an error.
    """
    path = check_file(path)
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types for corrupt input
        raise AudioError(f"{path}: not a readable audio file ({str(exc).splitlines()[0]})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: no samples")
    if not np.all(np.isfinite(data)):
        raise AudioError(f"{path}: contains NaN or infinite samples")
    if data.shape[1] > 1:
        if notes is not None:
            notes.append(f"{path.name}: {data.shape[1]} channels downmixed to mono")
        data = data.mean(axis=1, keepdims=True)
    x = data[:, 0]
    if sample_rate is not None and sr != sample_rate:
        if strict_rate:
            raise AudioError(f"{path}: sample rate {sr} Hz, expected {sample_rate} Hz")
        if notes is not None:
            notes.append(f"{path.name}: resampled {sr} Hz -> {sample_rate} Hz")
        x = resample(x, sr, sample_rate)
        sr = sample_rate
    return np.clip(x, -1.0, 1.0).astype(np.float32), sr


def check_file(path: str | os.PathLike) -> Path:
    """A path that exists and is not empty, else a one-line AudioError."""
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file")
    return path


def check_signal(x: np.ndarray, what: str = "signal") -> np.ndarray:
    """Reject empty or non-finite arrays with a one-line error."""
    x = np.asarray(x)
    if x.size == 0:
        raise AudioError(f"{what}: empty")
    if not np.all(np.isfinite(x)):
        raise AudioError(f"{what}: contains NaN or infinite samples")
    return x


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Band-limited resampling of a whole signal (FFT method; numpy only)."""
    if sr_in == sr_out:
        return np.asarray(x, dtype=np.float32)
    n_out = int(round(len(x) * sr_out / sr_in))
    spec = np.fft.rfft(np.asarray(x, dtype=np.float64))
    n_bins = n_out // 2 + 1
    out_spec = np.zeros(n_bins, dtype=np.complex128)
    k = min(n_bins, len(spec))
    out_spec[:k] = spec[:k]
    y = np.fft.irfft(out_spec, n=n_out) * (n_out / len(x))
    return y.astype(np.float32)


def to_int16(x: np.ndarray) -> np.ndarray:
    """Float in [-1, 1] -> int16 PCM (rounded, clipped)."""
    return np.clip(np.round(np.asarray(x, dtype=np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def write_audio(path: str | os.PathLike, x: np.ndarray, sample_rate: int) -> None:
    """Write a mono wav (int16 PCM) atomically."""
    x = np.asarray(x)
    pcm = x if x.dtype == np.int16 else to_int16(x)
    atomic_write(path, lambda tmp: sf.write(tmp, pcm, sample_rate, subtype="PCM_16", format="WAV"))
