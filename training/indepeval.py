"""An independent evaluation set (#10): recorded speech of talkers and recordings that no training source holds.

Speech: the single-talker stretches (>= 1.5 s, at most 6 s) of the 16 kHz meeting recordings in pyannote.audio's
source distribution (`tests/data/*.wav`, talker labels from its RTTM files; `pip download --no-deps --no-binary
:all: pyannote.audio==4.0.7`), English meeting speech: 30 stretches of 13 talkers (trn00, filed as trñ00.wav, is left
out). Noise: generated kinds only (white, pink, brown, hum, bursts) and babble of the set's other talkers, at SNR
U[-5, 15] dB. One `test` split in LibriMix's layout, for `fqse eval` (configs/indep_eval.yml). Reserved for evaluation: never train or tune on it.
Sources surveyed: docs/independent_eval_sources.md.
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

from training.datagen import SAMPLE_RATE, DataGenError, SetWriter, make_noise, mix_at

SDIST = "pyannote.audio==4.0.7"
KINDS = ("white", "pink", "brown", "hum", "bursts", "babble")
MIN_S, MAX_S, COPIES = 1.5, 6.0, 3


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


def build(out: str | Path, cache: str | Path = "data/indep-cache", seed: int = 0, overwrite: bool = False) -> Path:
    """Write OUT/wav16k/min/test (+ metadata, README); returns that folder."""
    archive = fetch_sdist(Path(cache))
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
    rng = np.random.default_rng([seed, 11])
    writer = SetWriter(out, overwrite, splits=("test",))
    try:
        for i in range(len(clips) * COPIES):
            spk, s = clips[i % len(clips)]
            kind = KINDS[(i + i // len(clips)) % len(KINDS)]  # each copy of a clip meets another kind
            others = [c for o, c in clips if o != spk]
            mix, s16, n16 = mix_at(s, make_noise(kind, rng, len(s), others), rng, (-5.0, 15.0))
            writer.add("test", mix, s16, n16, noise_type=kind, talker=spk, generator="pyannote-sdist")
        talkers = sorted({s for s, _ in clips})
        readme = (f"# Independent evaluation set\n\n{len(clips)} single-talker stretches of {len(talkers)} talkers "
                  f"({', '.join(talkers)}) from the meeting recordings in the source distribution of {SDIST} "
                  "(tests/data; the package is MIT-licensed; its talker IDs follow the AMI Meeting Corpus, CC BY 4.0, "
                  "which the archive does not state), each mixed "
                  f"{COPIES} times with generated noise or babble of the other talkers at SNR U[-5, 15] dB. "
                  "Reserved for evaluation: never train or tune on it. Built by `python -m training.indepeval`.\n")
        return writer.commit(readme)
    except BaseException:
        writer.abort()
        raise


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="data/indep")
    ap.add_argument("--cache", default="data/indep-cache")
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args()
    try:
        print(f"wrote {build(a.out, a.cache, overwrite=a.overwrite)}")
    except DataGenError as exc:
        sys.exit(f"error: {exc}")
