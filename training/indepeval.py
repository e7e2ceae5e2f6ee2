"""An independent evaluation set (#10): recorded speech of talkers and recordings that no training source holds.

Speech: the single-talker stretches (>= 1.5 s, at most 6 s) of the 16 kHz meeting recordings in pyannote.audio's
source distribution (`tests/data/*.wav`, talker labels from its RTTM files; `pip download --no-deps --no-binary
:all: pyannote.audio==4.0.7`), English meeting speech: 30 stretches of 13 talkers (trn00, filed as trñ00.wav, is left
out). Noise: generated kinds only (white, pink, brown, hum, bursts) and babble of the set's other talkers, at SNR
U[-5, 15] dB. One `test` split in LibriMix's layout, for `fqse eval` (configs/indep_eval.yml). Reserved for evaluation: never train or tune on it.

`--source codec2`: a narrowband (telephone-band) set instead, what `fqse enhance` meets in an 8 kHz file: the clean
studio recordings among Debian's codec2-examples (8 kHz, 8 recordings of unlabelled talkers; codec outputs and HF
radio clips left out), each mixed with every noise kind once at 8 kHz, then resampled to 16 kHz as the runtime
resamples an 8 kHz input (configs/indep_nb_eval.yml). Sources surveyed: docs/independent_eval_sources.md.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from scipy.signal import resample_poly

from training.data import NB_RATE
from training.datagen import SAMPLE_RATE, DataGenError, SetWriter, make_noise, mix_at

SDIST = "pyannote.audio==4.0.7"
KINDS = ("white", "pink", "brown", "hum", "bursts", "babble")
MIN_S, MAX_S, COPIES = 1.5, 6.0, 3
CODEC2 = "codec2-examples"
# its clean studio speech (s16le, 8 kHz): not hts1a/hts2a (the first halves of hts1/hts2), hts (a concatenation),
# f2400/m2400 (codec outputs), cq_ref/g3plx/vk5qi/ve9qrp (HF radio)
CODEC2_CLIPS = ("hts1", "hts2", "kristoff", "mmt1", "cross", "big_dog", "forig", "morig")


def fetch_sdist(cache: Path) -> Path:
    """The pyannote.audio source archive in `cache` (pip download; kept for the next run)."""
    found = sorted(cache.glob("pyannote_audio-*.tar.gz"))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    res = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", SDIST,
                          "-d", str(cache)], capture_output=True, text=True)
    found = sorted(cache.glob("pyannote_audio-*.tar.gz"))
    if res.returncode or not found:
        raise DataGenError(f"pip download {SDIST} failed: {(res.stderr.strip().splitlines() or ['?'])[-1][:200]}")
    return found[0]


def single_talker_segments(rttm_lines: list[str]) -> dict[str, list[tuple[str, float, float]]]:
    """Per talker, (recording, start, end) of the stretches where that talker alone speaks."""
    turns: dict[str, list[tuple[float, float, str]]] = {}
    for line in rttm_lines:
        f = line.split()
        if len(f) >= 8 and f[0] == "SPEAKER":
            turns.setdefault(f[1], []).append((float(f[3]), float(f[3]) + float(f[4]), f[7]))
    out: dict[str, list[tuple[str, float, float]]] = {}
    for rec, ts in turns.items():
        edges = sorted({t for a, b, _ in ts for t in (a, b)})
        for a, b in zip(edges, edges[1:]):  # elementary intervals: who speaks in each
            who = {s for x, y, s in ts if x <= a and y >= b}
            if len(who) == 1:
                spk = who.pop()
                segs = out.setdefault(spk, [])
                if segs and segs[-1][0] == rec and abs(segs[-1][2] - a) < 1e-6:
                    segs[-1] = (rec, segs[-1][1], b)  # merge touching intervals of the same talker
                else:
                    segs.append((rec, a, b))
    return {s: [g for g in gs if g[2] - g[1] >= MIN_S] for s, gs in out.items()}


def pyannote_clips(cache: Path) -> list[tuple[str, np.ndarray]]:
    """(talker, 16 kHz speech) of every single-talker stretch in the pyannote.audio sdist's test recordings."""
    archive = fetch_sdist(cache)
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if "/tests/data/" in m.name and m.name.endswith((".wav", ".rttm"))]
        tar.extractall(tmp, members=members, filter="data")
        files = {Path(m.name).name: Path(tmp) / m.name for m in members}
        rttm = [line for n, p in sorted(files.items()) if n.endswith(".rttm") for line in p.read_text().splitlines()]
        segs = single_talker_segments(rttm)
        clips: list[tuple[str, np.ndarray]] = []
        for spk in sorted(segs):
            for rec, a, b in segs[spk]:
                if rec + ".wav" not in files:  # trn00's file is named trñ00.wav: left out
                    continue
                x, sr = sf.read(files[rec + ".wav"], dtype="float64")
                if sr != SAMPLE_RATE:
                    raise DataGenError(f"{rec}.wav: {sr} Hz, expected {SAMPLE_RATE}")
                x = x[int(a * sr): int(min(b, a + MAX_S) * sr)]
                if np.std(x) > 1e-4:
                    clips.append((spk, x))
    if not clips:
        raise DataGenError(f"{archive}: no single-talker stretch of {MIN_S} s or more")
    return clips


def codec2_clips(cache: Path) -> list[tuple[str, np.ndarray]]:
    """(recording, 8 kHz speech) of codec2-examples' clean studio clips (apt-get download, cached)."""
    from training.realdata import fetch
    root = fetch([CODEC2], cache, show_progress=False, known=(CODEC2,))[CODEC2] / "usr/share/codec2/raw"
    clips = []
    for name in CODEC2_CLIPS:
        path = root / f"{name}.raw"
        if not path.exists():
            raise DataGenError(f"{CODEC2}: {path.name} missing (another package version?)")
        x = np.fromfile(path, dtype="<i2").astype(np.float64) / 32768
        clips.append((f"codec2-{name}", x[: int(MAX_S * NB_RATE)]))
    return clips


def build(out: str | Path, cache: str | Path = "data/indep-cache", seed: int = 0, overwrite: bool = False,
          source: str = "pyannote") -> Path:
    """Write OUT/wav16k/min/test (+ metadata, README); returns that folder."""
    if source not in ("pyannote", "codec2"):
        raise DataGenError(f"unknown source {source!r}: pyannote or codec2")
    nb = source == "codec2"
    clips = codec2_clips(Path(cache)) if nb else pyannote_clips(Path(cache))
    copies = len(KINDS) if nb else COPIES
    up = SAMPLE_RATE // NB_RATE  # codec2's 8 kHz to the set's 16 kHz
    rng = np.random.default_rng([seed, 11] if not nb else [seed, 12])
    writer = SetWriter(out, overwrite, splits=("test",))
    try:
        for i in range(len(clips) * copies):
            spk, s = clips[i % len(clips)]
            j, c = i % len(clips), i // len(clips)  # clip, copy: each copy of a clip meets another kind (codec2: all)
            kind = KINDS[(j + c * (1 if nb else len(clips) + 1)) % len(KINDS)]
            others = [c for o, c in clips if o != spk]
            noise = make_noise(kind, rng, len(s) * (up if nb else 1), others)
            if nb:  # the noise through the same 8 kHz channel as the speech
                noise = resample_poly(noise, 1, up)[: len(s)] if kind != "babble" else np.resize(noise, len(s))
            mix, s16, n16 = mix_at(s, noise, rng, (-5.0, 15.0))
            if nb:  # to 16 kHz, as the runtime resamples an 8 kHz file; mixture = speech + noise kept exactly
                s16, n16 = (np.round(np.clip(resample_poly(v / 32768, up, 1), -1, 32767 / 32768) * 32768)
                            .astype(np.int16) for v in (s16, n16))
                mix = (s16.astype(np.int32) + n16).clip(-32768, 32767).astype(np.int16)
            writer.add("test", mix, s16, n16, noise_type=kind, talker=spk,
                       generator="codec2-examples-8k" if nb else "pyannote-sdist")
        talkers = sorted({s for s, _ in clips})
        what = (f"{len(clips)} clean studio recordings ({', '.join(talkers)}; talkers not labelled, at most "
                f"{len(clips)}) of Debian's {CODEC2} (8 kHz; LGPL-2.1, David Rowe and the codec2 contributors), each "
                f"mixed once with each noise kind at 8 kHz (generated noise or babble of the other recordings) at "
                "SNR U[-5, 15] dB, then resampled to 16 kHz: a narrowband (telephone-band) condition"
                ) if nb else (
                f"{len(clips)} single-talker stretches of {len(talkers)} talkers ({', '.join(talkers)}) from the "
                f"meeting recordings in the source distribution of {SDIST} (tests/data; the package is MIT-licensed; "
                "its talker IDs follow the AMI Meeting Corpus, CC BY 4.0, which the archive does not state), each "
                f"mixed {COPIES} times with generated noise or babble of the other talkers at SNR U[-5, 15] dB")
        readme = (f"# Independent evaluation set{' (narrowband)' if nb else ''}\n\n{what}. Reserved for evaluation: "
                  f"never train or tune on it. Built by `python -m training.indepeval{' --source codec2' if nb else ''}`.\n")
        return writer.commit(readme)
    except BaseException:
        writer.abort()
        raise


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/indep")
    ap.add_argument("--cache", default="data/indep-cache")
    ap.add_argument("--source", default="pyannote", choices=("pyannote", "codec2"))
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args()
    try:
        print(f"wrote {build(a.out, a.cache, overwrite=a.overwrite, source=a.source)}")
    except DataGenError as exc:
        sys.exit(f"error: {exc}")
