"""LibriMix-layout loader (real LibriMix or `fqse data` output) with FQSE's SNR augmentation."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from scipy.signal import firwin2, resample_poly
from torch.utils.data import Dataset

REQUIRED = ("mixture_ID", "mixture_path", "source_1_path", "noise_path", "length")


class DataError(ValueError):
    """A data folder or CSV that cannot be used; one-line message."""


def find_csv(split_dir: str | Path) -> Path:
    """The metadata CSV of a split folder: SPLIT/../metadata/mixture_SPLIT_mix_single.csv, or a CSV inside."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: no such data folder (make one with `fqse data`)")
    candidates = [split_dir.parent / "metadata" / f"mixture_{split_dir.name}_mix_single.csv",
                  *sorted(split_dir.glob("*mix_single*.csv")), *sorted(split_dir.glob("*.csv"))]
    for c in candidates:
        if c.exists():
            return c
    raise DataError(f"{split_dir}: no metadata CSV (expected {candidates[0]})")


def read_rows(split_dir: str | Path) -> list[dict]:
    """Rows of the split's CSV with paths made absolute; checks columns and files."""
    path = find_csv(split_dir)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
        rows = list(reader)
    if not rows:
        raise DataError(f"{path}: no mixtures listed")
    root = path.parent.parent
    for r in rows:
        for k in ("mixture_path", "source_1_path", "noise_path"):
            p = Path(r[k])
            r[k] = str(p if p.is_absolute() else root / p)
        r["length"] = int(r["length"])
    if not Path(rows[0]["source_1_path"]).exists():
        raise DataError(f"{path}: listed file {rows[0]['source_1_path']} does not exist")
    return rows


def remix(clean: np.ndarray, noise: np.ndarray, snr_db: float) -> tuple[np.ndarray, np.ndarray]:
    """(mixture, clean) with the noise scaled to `snr_db`; both scaled down together if the peak exceeds 0.99.
    The one definition of re-mixing: SNR augmentation and the SI-SNR-vs-input-SNR curve both use it."""
    gain = np.sqrt(np.sum(clean ** 2) / (np.sum(noise ** 2) + 1e-12) / 10 ** (snr_db / 10))
    mix = clean + gain * noise
    peak = np.max(np.abs(mix))
    if peak > 0.99:
        mix, clean = mix * 0.99 / peak, clean * 0.99 / peak
    return mix, clean


SPEED_DEN = 20  # speed factors are SPEED_DEN / p for whole p: steps of about 5 %
EQ_BANDS_HZ = (0, 150, 300, 600, 1200, 2400, 4800)  # breakpoints of the random EQ (then Nyquist)
EQ_TAPS = 65  # linear phase, odd: applied centred, so the EQ adds no delay


def random_eq(x: np.ndarray, max_db: float, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """x through a random smooth EQ: gains U(-max_db, max_db) at EQ_BANDS_HZ and at Nyquist, interpolated
    linearly in between (a linear-phase FIR from scipy's firwin2, applied without delay)."""
    freqs = [f for f in EQ_BANDS_HZ if f < sample_rate / 2] + [sample_rate / 2]
    gains = 10 ** (rng.uniform(-max_db, max_db, len(freqs)) / 20)
    h = firwin2(EQ_TAPS, freqs, gains, fs=sample_rate)
    return np.convolve(x, h, mode="same").astype(np.float32)


NB_RATE = 8000  # the telephone channel of `narrowband`


def narrowband(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """x through an 8 kHz channel: down to NB_RATE and back (scipy's polyphase filter; nothing above 4 kHz)."""
    g = np.gcd(sample_rate, NB_RATE)
    up, down = NB_RATE // g, sample_rate // g
    y = resample_poly(resample_poly(x, up, down), down, up)[: len(x)]
    return np.pad(y, (0, len(x) - len(y))).astype(np.float32)


class MixDataset(Dataset):
    """Yields (mixture, clean) float32 segments; with `snr_range`, re-mixes at a random SNR (FQSE).

    Further training augmentation (only with `snr_range`): `speed` resamples the speech by a factor drawn from
    about [1 - speed, 1 + speed] in 5 % steps (pitch and tempo change together: new voices from few talkers);
    `dynamic_mix` pairs each utterance with the noise of a random row of the split (new pairs every epoch);
    `eq` (dB) puts speech and noise each through its own random EQ (`random_eq`: other voices, microphones and
    channels; the target is the EQ'd speech); `narrowband` (a probability) puts an item's speech and noise through
    an 8 kHz channel (`narrowband`: telephone audio, which the runtime resamples to 16 kHz; the target is the
    band-limited speech)."""

    def __init__(self, split_dir: str | Path, segment: float | None = 3.0, sample_rate: int = 16000,
                 snr_range: tuple[float, float] | None = None, seed: int = 0, speed: float = 0.0,
                 dynamic_mix: bool = False, eq: float = 0.0, narrowband: float = 0.0):
        self.rows = read_rows(split_dir)
        self.seg = int(segment * sample_rate) if segment else None
        self.sr = sample_rate
        self.snr_range = snr_range
        self.seed = seed
        self.epoch = 0
        if not 0 <= speed < 0.5:
            raise DataError(f"speed augmentation {speed} must be in [0, 0.5)")
        self.speed = speed
        self.dynamic_mix = dynamic_mix
        if not 0 <= eq <= 20:
            raise DataError(f"eq augmentation {eq} dB must be in [0, 20]")
        self.eq = eq
        if not 0 <= narrowband <= 1:
            raise DataError(f"narrowband augmentation {narrowband} must be a probability in [0, 1]")
        self.narrowband = narrowband

    def __len__(self) -> int:
        return len(self.rows)

    def _load(self, path: str, start: int, stop: int | None) -> np.ndarray:
        x, sr = sf.read(path, start=start, stop=stop, dtype="float32")
        if sr != self.sr:
            raise DataError(f"{path}: sample rate {sr} Hz, config expects {self.sr} Hz")
        return x if x.ndim == 1 else x.mean(axis=1)

    def _speech(self, r: dict, start: int, n: int, rng: np.random.Generator) -> np.ndarray:
        """n samples of the row's speech from `start`, speed-perturbed when `speed` is set."""
        p = SPEED_DEN
        if self.speed:
            p = int(rng.integers(round(SPEED_DEN / (1 + self.speed)), round(SPEED_DEN / (1 - self.speed)) + 1))
        if p == SPEED_DEN:
            return self._load(r["source_1_path"], start, start + n)
        need = int(np.ceil(n * p / SPEED_DEN)) + 1  # source samples that resample to n
        start = max(0, min(start, r["length"] - need))
        x = resample_poly(self._load(r["source_1_path"], start, start + need), SPEED_DEN, p)[:n]
        return np.pad(x, (0, n - len(x))).astype(np.float32)

    def _noise(self, r: dict, start: int, n: int, rng: np.random.Generator) -> np.ndarray:
        """n samples of noise: the row's own (same crop) or, with `dynamic_mix`, a random crop of another row's."""
        if not self.dynamic_mix:
            return self._load(r["noise_path"], start, start + n)
        o = self.rows[int(rng.integers(len(self.rows)))]
        s = int(rng.integers(0, o["length"] - n)) if o["length"] > n else 0
        return np.resize(self._load(o["noise_path"], s, s + n), n)

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.rows[idx]
        rng = np.random.default_rng([self.seed, self.epoch, idx])
        n = r["length"]
        start, stop = 0, None
        if self.seg and n > self.seg:
            start = int(rng.integers(0, n - self.seg))
            stop = start + self.seg
        if self.snr_range is None:
            clean = self._load(r["source_1_path"], start, stop)
            mix = self._load(r["mixture_path"], start, stop)
        else:
            snr = rng.uniform(*self.snr_range)
            aug = np.random.default_rng([self.seed, self.epoch, idx, 1])  # keeps the draws above as they were
            length = (stop or n) - start
            clean = self._speech(r, start, length, aug)
            noise = self._noise(r, start, length, aug)
            if self.eq:
                eq_rng = np.random.default_rng([self.seed, self.epoch, idx, 2])  # own stream: other draws unchanged
                clean, noise = random_eq(clean, self.eq, eq_rng, self.sr), random_eq(noise, self.eq, eq_rng, self.sr)
            if self.narrowband and np.random.default_rng([self.seed, self.epoch, idx, 3]).random() < self.narrowband:
                clean, noise = narrowband(clean, self.sr), narrowband(noise, self.sr)
            mix, clean = remix(clean, noise, snr)
        if self.seg and len(clean) < self.seg:
            pad = self.seg - len(clean)
            clean, mix = np.pad(clean, (0, pad)), np.pad(mix, (0, pad))
        return torch.from_numpy(mix.astype(np.float32)), torch.from_numpy(clean.astype(np.float32))
