"""`fqse data`: an offline speech-enhancement set in LibriMix's layout.

Speech is synthesized with espeak-ng (many voices: accent x voice variant, random pitch and rate);
noise is white/pink/brown, babble of other talkers, mains hum or non-stationary bursts. Train, dev and
test share no voice and no sentence. Mixtures are clean + noise exactly, in int16.
"""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from runtime.audio import resample, write_audio

SAMPLE_RATE = 16000
SPLITS = ("train", "dev", "test")
ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd",
           "en-029", "en-us-nyc"]
VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5"]
NOISE_TYPES = ("white", "pink", "brown", "babble", "hum", "bursts")

SUBJECTS = ("the old man", "a young girl", "my brother", "the teacher", "our neighbour", "the doctor",
            "a tired driver", "the small dog", "her mother", "the pilot", "a farmer", "the band",
            "the children", "his uncle", "the nurse", "a stranger", "the captain", "my friend")
VERBS = ("painted", "carried", "found", "watched", "opened", "cleaned", "sold", "bought", "moved",
         "counted", "followed", "repaired", "described", "ignored", "measured", "lifted", "borrowed")
OBJECTS = ("a green door", "the heavy box", "seven apples", "the broken clock", "a long letter",
           "the silver coin", "an empty bottle", "the yellow kite", "a wooden chair", "the map",
           "three small stones", "the bright lamp", "a cold cup of tea", "the red bicycle")
PLACES = ("near the river", "before dinner", "in the garden", "after the storm", "at the station",
          "behind the school", "on a quiet morning", "under the bridge", "during the winter",
          "next to the market", "in the kitchen", "on the hill", "by the window", "late at night")
ENDINGS = ("", " and smiled", " without a word", " for the second time", " very slowly", " again")


@dataclass(frozen=True)
class Preset:
    n_utts: dict  # split -> number of mixtures
    n_words_extra: int  # longer sentences make longer utterances


PRESETS = {
    "tiny": Preset({"train": 12, "dev": 4, "test": 4}, 0),
    "small": Preset({"train": 900, "dev": 80, "test": 80}, 1),
}


class DataGenError(RuntimeError):
    """One-line error for `fqse data`."""


def voice_split(seed: int) -> dict[str, list[str]]:
    """Disjoint voice sets per split (70 / 15 / 15 %)."""
    voices = [f"{a}+{v}" for a in ACCENTS for v in VARIANTS]
    rng = np.random.default_rng(seed)
    rng.shuffle(voices)
    n = len(voices)
    a, b = int(0.7 * n), int(0.85 * n)
    return {"train": voices[:a], "dev": voices[a:b], "test": voices[b:]}


def sentences(rng: np.random.Generator, count: int, taken: set[str], extra: int) -> list[str]:
    """`count` sentences not in `taken` (which is updated): splits share no text."""
    out = []
    while len(out) < count:
        parts = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS), rng.choice(PLACES)]
        for _ in range(extra):
            parts += ["and then", rng.choice(VERBS), rng.choice(OBJECTS)]
        s = " ".join(parts) + rng.choice(ENDINGS) + "."
        if s not in taken:
            taken.add(s)
            out.append(s)
    return out


def synthesize(text: str, voice: str, pitch: int, rate: int) -> np.ndarray:
    """espeak-ng -> float32 at 16 kHz, leading/trailing silence trimmed."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = os.path.join(tmp, "s.wav")
        cmd = ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(rate), "-w", wav, text]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0 or not os.path.exists(wav):
            raise DataGenError(f"espeak-ng failed for voice {voice}: {res.stderr.strip()[:200]}")
        x, sr = sf.read(wav, dtype="float32")
    x = resample(x, sr, SAMPLE_RATE)
    active = np.flatnonzero(np.abs(x) > 1e-3)
    if active.size:
        x = x[max(active[0] - 800, 0): active[-1] + 800]
    return x


def colored_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise with power spectrum 1/f^exponent (0 white, 1 pink, 2 brown)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    y = np.fft.irfft(spec / f ** (exponent / 2), n=n)
    return y - y.mean()


def make_noise(kind: str, rng: np.random.Generator, n: int, others: list[np.ndarray]) -> np.ndarray:
    """One noise signal of length n."""
    t = np.arange(n) / SAMPLE_RATE
    if kind in ("white", "pink", "brown"):
        return colored_noise(rng, n, {"white": 0.0, "pink": 1.0, "brown": 2.0}[kind])
    if kind == "babble":
        y = np.zeros(n)
        for i in rng.choice(len(others), size=min(4, len(others)), replace=False):
            o = np.resize(others[i], n)
            y += np.roll(o, rng.integers(n)) / (np.std(o) + 1e-9)
        return y
    if kind == "hum":
        f0 = rng.choice([50.0, 60.0])
        y = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.28))
                for k in range(1, 8))
        return y + 0.05 * colored_noise(rng, n, 1.0)
    if kind == "bursts":
        env = np.zeros(n)
        pos = 0
        while pos < n:
            gap, dur = rng.integers(800, 8000), rng.integers(400, 6000)
            seg = np.hanning(dur) * rng.uniform(0.3, 1.0)
            env[pos + gap: pos + gap + dur] = seg[: max(0, min(dur, n - pos - gap))]
            pos += gap + dur
        return colored_noise(rng, n, rng.uniform(0.0, 1.5)) * (env + 0.02)
    raise DataGenError(f"unknown noise type {kind!r}")


def rms_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.asarray(x, dtype=np.float64) ** 2) + 1e-20))


def mix_at(s: np.ndarray, noise: np.ndarray, rng: np.random.Generator,
           snr_range: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """int16 (mixture, speech, noise) with mixture == speech + noise exactly.

    Speech RMS U[-33, -25] dBFS (LibriMix-like); noise at U[-38, -30] dBFS, or at an SNR drawn from `snr_range`.
    """
    s = s * 10 ** ((rng.uniform(-33, -25) - rms_db(s)) / 20)
    level = rng.uniform(-38, -30) if snr_range is None else rms_db(s) - rng.uniform(*snr_range)
    noise = noise * 10 ** ((level - rms_db(noise)) / 20)
    peak = np.max(np.abs(s + noise))
    if peak > 0.9:
        s, noise = s * 0.9 / peak, noise * 0.9 / peak
    s16 = np.round(s * 32768).astype(np.int16)
    n16 = np.round(noise * 32768).astype(np.int16)
    return (s16.astype(np.int32) + n16).astype(np.int16), s16, n16


class SetWriter:
    """Writes a LibriMix-layout set into a staging folder that replaces OUT whole on `commit()`.

    A non-empty OUT is refused unless `overwrite`; a failed build leaves OUT as it was.
    """

    def __init__(self, out: str | os.PathLike, overwrite: bool = False, splits: tuple[str, ...] = SPLITS):
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise DataGenError(f"cannot write to {self.out}: not a folder")
        if self.out.exists() and any(self.out.iterdir()) and not overwrite:
            raise DataGenError(f"{self.out} is not empty: choose another --out or pass --overwrite")
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.stage = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", dir=self.out.parent))
        except OSError as exc:
            raise DataGenError(f"cannot write to {self.out}: {exc.strerror}") from None
        self.root = self.stage / "wav16k" / "min"
        self.rows: dict[str, list[dict]] = {s: [] for s in splits}

    def add(self, split: str, mix: np.ndarray, s16: np.ndarray, n16: np.ndarray, **info) -> None:
        """One mixture (int16 arrays from `mix_at`) with its CSV columns."""
        mid = f"{split}_{len(self.rows[split]):05d}"
        rel = {k: f"{split}/{k}/{mid}.wav" for k in ("mix_single", "s1", "noise")}
        for k, x in zip(rel, (mix, s16, n16)):
            write_audio(self.root / rel[k], x, SAMPLE_RATE)
        self.rows[split].append({"mixture_ID": mid, "mixture_path": rel["mix_single"], "source_1_path": rel["s1"],
                                 "noise_path": rel["noise"], "length": len(mix),
                                 "snr_db": f"{rms_db(s16) - rms_db(n16):.4f}", **info})

    def commit(self, readme: str | None = None) -> Path:
        """Write the CSVs (and README), then swap the staging folder in place of OUT."""
        (self.root / "metadata").mkdir(parents=True, exist_ok=True)
        for split, rows in self.rows.items():
            if not rows:
                raise DataGenError(f"the {split} split would be empty")
            fields = list(dict.fromkeys(k for r in rows for k in r))
            with open(self.root / "metadata" / f"mixture_{split}_mix_single.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=fields)
                w.writeheader()
                w.writerows(rows)
        if readme:
            (self.stage / "README.md").write_text(readme)
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.out, old)
            os.replace(self.stage, self.out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.stage, self.out)
        return self.out / "wav16k" / "min"

    def abort(self) -> None:
        shutil.rmtree(self.stage, ignore_errors=True)


def espeak_utterances(split: str, n: int, seed: int, taken: set[str], extra: int = 0,
                      show_progress: bool = True) -> list[tuple]:
    """n synthesized utterances of a split: (audio, voice, pitch, rate, text).

    Voices come from the split's own voice set; texts avoid `taken` (updated), so splits share neither.
    """
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    texts = sentences(rng, n, taken, extra)
    voices = voice_split(seed)[split]
    out = []
    for i in tqdm(range(n), desc=f"espeak {split}", disable=not show_progress):
        voice = str(rng.choice(voices))
        pitch, rate = int(rng.integers(20, 80)), int(rng.integers(130, 200))
        out.append((synthesize(texts[i], voice, pitch, rate), voice, pitch, rate, texts[i]))
    return out


def generate(out: str | os.PathLike, preset: str = "tiny", seed: int = 0, show_progress: bool = True,
             overwrite: bool = False) -> Path:
    """Write the synthetic set under OUT/wav16k/min; returns that folder."""
    if preset not in PRESETS:
        raise DataGenError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    check_espeak()
    cfg = PRESETS[preset]
    writer = SetWriter(out, overwrite)
    try:
        taken: set[str] = set()
        for si, split in enumerate(SPLITS):
            n = cfg.n_utts[split]
            utts = espeak_utterances(split, n, seed, taken, cfg.n_words_extra, show_progress)
            rng = np.random.default_rng([seed, si, 1])
            for i, (s, voice, pitch, rate, text) in enumerate(utts):
                kind = NOISE_TYPES[i % len(NOISE_TYPES)] if n < 4 * len(NOISE_TYPES) else str(rng.choice(NOISE_TYPES))
                others = [u[0] for j, u in enumerate(utts) if j != i] or [colored_noise(rng, len(s), 1.0)]
                mix, s16, n16 = mix_at(s, make_noise(kind, rng, len(s), others), rng)
                writer.add(split, mix, s16, n16, noise_type=kind, generator="espeak-ng", voice=voice, pitch=pitch,
                           rate=rate, text=text)
        return writer.commit()
    except BaseException:
        writer.abort()
        raise


def check_espeak() -> None:
    if shutil.which("espeak-ng") is None:
        raise DataGenError("espeak-ng not found: install it (apt-get install espeak-ng)")
