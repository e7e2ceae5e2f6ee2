"""Audio I/O with clear errors: reading, validation, resampling, atomic writes (numpy + soundfile)."""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf

from runtime.files import atomic_write
from runtime.resample import MAX_RATE, MIN_RATE, resample  # noqa: F401 - resample: one resampler for all


class AudioError(ValueError):
    """Bad audio input; the message is one line meant for the user."""


class AudioWarning(UserWarning):
    """Audio that can be processed but probably not as the caller meant (e.g. float beyond [-1, 1])."""


def noisy_clean_pairs(folder: str | os.PathLike) -> list[tuple[Path, Path]]:
    """The `*_noisy.wav` files of a folder (sorted) with their `*_clean.wav` references (samples/ naming)."""
    return [(p, p.with_name(p.name.replace("_noisy", "_clean"))) for p in sorted(Path(folder).glob("*_noisy.wav"))]


def read_audio(path: str | os.PathLike, sample_rate: int | None = None, *, strict_rate: bool = False,
               notes: list[str] | None = None) -> tuple[np.ndarray, int]:
    """Read a file as mono float32 in [-1, 1].

    Stereo is downmixed and a different rate is resampled to ``sample_rate`` (each noted in ``notes``),
    unless ``strict_rate``, where a different rate is an error.
    """
    path = check_file(path)
    info = audio_info(path, notes)
    if sample_rate is not None and info.samplerate != sample_rate and strict_rate:
        raise AudioError(f"{path}: sample rate {info.samplerate} Hz, expected {sample_rate} Hz")
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


def audio_info(path: Path, notes: list[str] | None = None) -> "sf._SoundFileInfo":
    """The header of an audio file, checked before any sample is read: a readable format, a plausible sample
    rate (MIN_RATE..MAX_RATE: a header saying 1 Hz would make resampling allocate gigabytes), at most 8
    channels; a file shorter than its header says is noted (its samples up to the end are used)."""
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises several types for corrupt input
        raise AudioError(f"{path}: not a readable audio file ({str(exc).strip().splitlines()[0]})") from None
    if not MIN_RATE <= info.samplerate <= MAX_RATE:
        raise AudioError(f"{path}: sample rate {info.samplerate} Hz in the header; supported {MIN_RATE}..{MAX_RATE} Hz")
    if not 1 <= info.channels <= 8:
        raise AudioError(f"{path}: {info.channels} channels in the header; supported 1..8")
    m = re.search(r"data\s*:\s*(\d+)\s*\(should be (\d+)\)", info.extra_info)
    if m and int(m.group(1)) > int(m.group(2)):
        msg = f"{path.name}: truncated: the header announces {m.group(1)} data bytes, the file holds {m.group(2)}"
        warnings.warn(msg, AudioWarning, stacklevel=3)
    return info


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


def to_int16(x: np.ndarray) -> np.ndarray:
    """Float in [-1, 1] -> int16 PCM (rounded, clipped)."""
    return np.clip(np.round(np.asarray(x, dtype=np.float64) * 32768.0), -32768, 32767).astype(np.int16)


OUTPUT_FORMATS = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16"), ".ogg": ("OGG", "VORBIS")}


def output_format(path: str | os.PathLike) -> tuple[str, str]:
    """(format, subtype) that the output's extension names; other extensions are refused."""
    ext = Path(path).suffix.lower()
    if ext not in OUTPUT_FORMATS:
        raise AudioError(f"{path}: cannot write {ext or 'a file without extension'}; use "
                         + ", ".join(OUTPUT_FORMATS))
    return OUTPUT_FORMATS[ext]


def write_audio(path: str | os.PathLike, x: np.ndarray, sample_rate: int) -> None:
    """Write mono int16 audio atomically, in the format the extension names (.wav, .flac, .ogg)."""
    x = np.asarray(x)
    pcm = x if x.dtype == np.int16 else to_int16(x)
    fmt, subtype = output_format(path)
    atomic_write(path, lambda tmp: sf.write(tmp, pcm, sample_rate, subtype=subtype, format=fmt))
