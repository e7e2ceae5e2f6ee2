"""`fqse data --source debian`: a LibriMix-layout set from real recordings that Debian ships.

Speech: Dutch and Czech game dialogue (fillets-ng-data-nl/-cs, several voice actors) and the Asterisk
telephony prompts (one talker per language). Noise: the game's music and sound effects, music on hold,
babble of the split's other talkers, and the synthetic kinds of `training.datagen`. Packages are fetched
with `apt-get download` + `dpkg-deb -x` (no install) into a cache, decoded to 16 kHz mono (soundfile for
ogg/wav, ffmpeg for G.722), trimmed, cut into 2-6 s utterances (clipped clips dropped) and mixed.

Splits never share a talker or a noise recording (see TALKER_SPLIT for the talker rule).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly
from tqdm import tqdm

from training.datagen import (SAMPLE_RATE, SPLITS, DataGenError, SetWriter, check_espeak, espeak_utterances,
                              make_noise, mix_at)

FILLETS = "usr/share/games/fillets-ng"
ASTERISK = "usr/share/asterisk/sounds"
GPL = ("GPL-2+", "Fish Fillets NG data, (c) 2004-2016 Michal Čihař, fabian linzberger, Alexander Schmehl "
       "and the ALTAR interactive team; https://fillets.sourceforge.net")
CC_SOUNDS = ("CC-BY-SA-3.0", "Asterisk core sound prompts, (c) 2003-2010 Allison Smith and Digium, Inc. "
             "(voice talents: Allison Smith, June Wallack, Carlo, IvrvoiceRU); https://www.asterisk.org")
CC_MOH = ("CC-BY-SA-3.0", "Asterisk music on hold (opsound.org): Macroform (Paul Shuler), Manolo Camp, "
          "Reno Project")


@dataclass(frozen=True)
class Package:
    name: str
    kind: str  # "speech" or "noise"
    license: str
    attribution: str


PACKAGES = {p.name: p for p in [
    Package("fillets-ng-data-nl", "speech", *GPL),
    Package("fillets-ng-data-cs", "speech", *GPL),
    *(Package(f"asterisk-core-sounds-{lang}-g722", "speech", *CC_SOUNDS) for lang in ("en", "es", "fr", "it", "ru")),
    Package("fillets-ng-data", "noise", *GPL),
    Package("asterisk-moh-opsound-wav", "noise", *CC_MOH),
]}
DEFAULT_PACKAGES = tuple(PACKAGES)

# Talker -> split. fillets clips are named <level>-<who>-<line>: `m` (the small fish) and `v` (the big fish)
# are each one actor per language; the minor characters have no labels and may be voiced by the main actors, so
# Dutch minor characters go with the Dutch actors (train) and Czech ones are dropped (their actors could be the
# Czech `v` actor of the test split). The Asterisk en and es prompts are the same talker (Allison Smith).
# Set version 2 moved fillets-nl-v to dev (so dev held a game voice as test does) and dropped the Dutch minor
# characters: a quarter less game dialogue to train on, and the model fine-tuned on it lost 0.7 dB SI-SNRi on the
# test split (1.2 dB on its game talker), so version 3 keeps them in train (README, "Results on real recordings").
TALKER_SPLIT = {
    "fillets-nl-m": "train", "fillets-nl-v": "train", "fillets-nl-other": "train",
    "fillets-cs-m": "train", "fillets-cs-v": "test", "fillets-cs-other": None,
    "asterisk-Allison": "train", "asterisk-June": "train", "asterisk-IvrvoiceRU": "dev", "asterisk-Carlo": "test",
}
NOISE_SHARE = {"train": 0.7, "dev": 0.15, "test": 0.15}
NOISE_MIX = {"music": 0.25, "effects": 0.2, "babble": 0.2, "white": 0.05, "pink": 0.1, "brown": 0.05,
             "hum": 0.05, "bursts": 0.1}
MIN_S, MAX_S = 2.0, 6.0
SET_VERSION = 3  # bump when the split rule or the mixing changes (the Makefile rebuilds an older set)


# --- fetching ----------------------------------------------------------------------------------------
def fetch(names: list[str], cache: Path, show_progress: bool = True,
          known: Collection[str] | None = None) -> dict[str, Path]:
    """Download and unpack each package into CACHE/pkgs/NAME (skipped when done: resumable). `known`: the package
    names allowed (default: the training sources, PACKAGES)."""
    known = PACKAGES if known is None else known
    debs, pkgs = cache.resolve() / "debs", cache.resolve() / "pkgs"
    try:
        debs.mkdir(parents=True, exist_ok=True)
        pkgs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataGenError(f"cannot write to the cache {cache}: {exc.strerror}") from None
    out = {}
    for name in tqdm(names, desc="packages", disable=not show_progress):
        if name not in known:
            raise DataGenError(f"unknown package {name!r}; known: {', '.join(known)}")
        dest = pkgs / name
        if not (dest / ".done").exists():
            found = sorted(debs.glob(f"{name}_*.deb"))
            if not found:
                if shutil.which("apt-get") is None:
                    raise DataGenError(f"apt-get not found: the debian source needs Debian's apt (or put "
                                       f"{name}_*.deb into {debs})")
                res = subprocess.run(["apt-get", "download", name], cwd=debs, capture_output=True, text=True)
                found = sorted(debs.glob(f"{name}_*.deb"))
                if res.returncode != 0 or not found:
                    msg = (res.stderr.strip().splitlines() or ["no .deb written"])[-1]
                    raise DataGenError(f"apt-get download {name} failed: {msg}")
            shutil.rmtree(dest, ignore_errors=True)
            res = subprocess.run(["dpkg-deb", "-x", str(found[-1]), str(dest)], capture_output=True, text=True)
            if res.returncode != 0:
                raise DataGenError(f"dpkg-deb -x {found[-1].name} failed: {res.stderr.strip()[:200]}")
            (dest / ".done").write_text(found[-1].name)
        out[name] = dest
    return out


# --- what each package holds ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Clip:
    path: Path
    package: str
    group: str  # talker (speech) or recording category (noise: music / effects)
    key: str  # stable id (relative path)


def speech_clips(name: str, root: Path) -> list[Clip]:
    """Speech clips of a package with their talker."""
    if name.startswith("fillets-ng-data-"):
        lang = name.rsplit("-", 1)[1]
        clips = []
        for p in sorted((root / FILLETS / "sound").glob(f"*/{lang}/*.ogg")):
            parts = p.stem.split("-")
            who = parts[-2] if len(parts) >= 3 and parts[-2] in ("m", "v") else "other"
            clips.append(Clip(p, name, f"fillets-{lang}-{who}", str(p.relative_to(root))))
        return clips
    clips = []
    for d in sorted((root / ASTERISK).iterdir()):
        talker = d.name.split("_")[-1]  # en_US_f_Allison -> Allison
        clips += [Clip(p, name, f"asterisk-{talker}", str(p.relative_to(root))) for p in sorted(d.rglob("*.g722"))]
    return clips


def noise_clips(name: str, root: Path) -> list[Clip]:
    """Noise recordings of a package: music and sound effects only (the game's other clips hold voices)."""
    if name == "fillets-ng-data":
        base = root / FILLETS
        music = sorted((base / "music").glob("*.ogg"))
        effects = sorted((base / "sound" / "share").glob("*.ogg")) + sorted((base / "sound").glob("*/en/*-x-*.ogg"))
        return ([Clip(p, name, "music", str(p.relative_to(root))) for p in music]
                + [Clip(p, name, "effects", str(p.relative_to(root))) for p in effects])
    return [Clip(p, name, "music", str(p.relative_to(root))) for p in sorted(root.rglob("*.wav"))]


def stable_fraction(key: str) -> float:
    """A number in [0, 1) fixed by the key (for deterministic splits)."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 2 ** 32


def noise_split(clips: list[Clip]) -> dict[str, list[Clip]]:
    """Each noise recording in exactly one split; every category reaches every split when it has >= 3 files."""
    out: dict[str, list[Clip]] = {s: [] for s in NOISE_SHARE}
    for cat in sorted({c.group for c in clips}):
        group = sorted((c for c in clips if c.group == cat), key=lambda c: stable_fraction(c.key))
        n = len(group)
        n_dev = max(1, round(NOISE_SHARE["dev"] * n)) if n >= 3 else 0
        n_test = max(1, round(NOISE_SHARE["test"] * n)) if n >= 3 else 0
        out["dev"] += group[:n_dev]
        out["test"] += group[n_dev:n_dev + n_test]
        out["train"] += group[n_dev + n_test:]
    return out


# --- decoding ------------------------------------------------------------------------------------------
def decode(clip: Clip, cache: Path) -> np.ndarray:
    """16 kHz mono float32 of a clip, cached as int16 wav under CACHE/decoded (resumable)."""
    dest = cache / "decoded" / clip.package / (clip.key + ".wav")
    if dest.exists():
        return sf.read(dest, dtype="float32")[0]
    if clip.path.suffix == ".g722":
        if shutil.which("ffmpeg") is None:
            raise DataGenError("ffmpeg not found: it decodes the G.722 prompts (apt-get install ffmpeg)")
        res = subprocess.run(["ffmpeg", "-v", "error", "-f", "g722", "-i", str(clip.path), "-ar", str(SAMPLE_RATE),
                              "-ac", "1", "-f", "s16le", "-"], capture_output=True)
        if res.returncode != 0:
            raise DataGenError(f"ffmpeg could not decode {clip.path}: {res.stderr.decode()[:200]}")
        x = np.frombuffer(res.stdout, dtype=np.int16).astype(np.float32) / 32768
    else:
        try:
            x, sr = sf.read(clip.path, dtype="float32", always_2d=True)
        except Exception as exc:
            raise DataGenError(f"cannot decode {clip.path}: {str(exc).splitlines()[0]}") from None
        x = x.mean(axis=1)
        if sr != SAMPLE_RATE:
            g = np.gcd(sr, SAMPLE_RATE)
            x = resample_poly(x, SAMPLE_RATE // g, sr // g).astype(np.float32)
    x = np.clip(x, -1, 32767 / 32768)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp.wav")
    sf.write(tmp, np.round(x * 32768).astype(np.int16), SAMPLE_RATE, subtype="PCM_16")
    tmp.replace(dest)
    return x


# --- utterances ----------------------------------------------------------------------------------------
def is_clipped(x: np.ndarray) -> bool:
    """More than 0.05 % of samples within 1 % of full scale."""
    return np.mean(np.abs(x) >= 0.99) > 5e-4


def trim(x: np.ndarray, frame: int = 320) -> np.ndarray:
    """Drop leading/trailing frames 40 dB below the loudest frame (keeps 50 ms margins)."""
    n = len(x) // frame
    if n == 0:
        return x[:0]
    e = 10 * np.log10(np.mean(x[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1) + 1e-12)
    active = np.flatnonzero(e > max(e.max() - 40, -70))
    if active.size == 0:
        return x[:0]
    a, b = active[0] * frame, (active[-1] + 1) * frame
    return x[max(a - 800, 0): min(b + 800, len(x))]


def utterances(clips: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Join consecutive trimmed clips of one talker (short pauses) into 2-6 s utterances; cut longer clips."""
    lo, hi = int(MIN_S * SAMPLE_RATE), int(MAX_S * SAMPLE_RATE)
    out, cur = [], []
    for x in clips:
        if len(x) == 0 or is_clipped(x):
            continue
        x = trim(x)
        if len(x) < 0.3 * SAMPLE_RATE:
            continue
        for k in range(int(np.ceil(len(x) / hi))):
            piece = x[k * hi:(k + 1) * hi]
            joined = sum(len(c) for c in cur)
            pause = np.zeros(int(rng.uniform(0.15, 0.4) * SAMPLE_RATE), np.float32)
            if cur and joined + len(pause) + len(piece) > hi:
                if joined >= lo:
                    out.append(np.concatenate(cur))
                cur = []
            cur += [pause, piece] if cur else [piece]
            if sum(len(c) for c in cur) >= lo and rng.random() < 0.5:
                out.append(np.concatenate(cur))
                cur = []
    if cur and sum(len(c) for c in cur) >= lo:
        out.append(np.concatenate(cur))
    return out


# --- noise ---------------------------------------------------------------------------------------------
def _segment(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    if len(x) <= n:
        return np.resize(x, n)
    start = int(rng.integers(0, len(x) - n))
    return x[start:start + n]


def noise_for(kind: str, n: int, rng: np.random.Generator, recordings: dict[str, list[tuple[str, np.ndarray]]],
              others: list[np.ndarray]) -> tuple[np.ndarray, str]:
    """A noise of length n and where it came from: the split's recordings (music / effects, as (key, audio)),
    its talkers (babble) or a generator."""
    if kind == "music":
        key, x = recordings["music"][rng.integers(len(recordings["music"]))]
        return _segment(x, n, rng), key
    if kind == "effects":
        y = 0.003 * make_noise("pink", rng, n, others) / 1.0
        pos, used = int(rng.integers(0, SAMPLE_RATE // 2)), []
        while pos < n:
            key, fx = recordings["effects"][rng.integers(len(recordings["effects"]))]
            fx = fx[: n - pos] * rng.uniform(0.3, 1.0) / (np.max(np.abs(fx)) + 1e-9)
            y[pos:pos + len(fx)] += fx
            used.append(key)
            pos += len(fx) + int(rng.integers(0, SAMPLE_RATE))
        return y, ";".join(dict.fromkeys(used))
    if kind == "babble":
        y = np.zeros(n)
        for i in rng.choice(len(others), size=min(int(rng.integers(3, 7)), len(others)), replace=False):
            o = _segment(others[i], n, rng)
            y += o / (np.std(o) + 1e-9)
        return y, "babble of the split's other talkers"
    return make_noise(kind, rng, n, others), f"synthetic {kind}"


def noise_kinds(recordings: dict[str, list[np.ndarray]]) -> tuple[list[str], np.ndarray]:
    """The noise kinds available in a split and their probabilities."""
    kinds = [k for k in NOISE_MIX if k not in ("music", "effects") or recordings.get(k)]
    p = np.array([NOISE_MIX[k] for k in kinds])
    return kinds, p / p.sum()


# --- the set -------------------------------------------------------------------------------------------
def build(out: str | Path, packages: tuple[str, ...] = DEFAULT_PACKAGES, cache: str | Path | None = None,
          max_clips: int | None = None, copies: int = 2, snr_range: tuple[float, float] = (-5.0, 20.0),
          espeak_share: float = 0.0, seed: int = 0, show_progress: bool = True, overwrite: bool = False) -> Path:
    """Fetch, decode, cut and mix; write OUT/wav16k/min (+ OUT/README.md with licenses); returns that folder.

    max_clips: at most this many clips per talker and per noise category (a quick slice for tests);
    copies: mixtures per training utterance (each with another noise); espeak_share: synthesized utterances
    added to each split, as a share of its real ones (espeak-ng voices are disjoint per split too).
    """
    cache = Path(cache) if cache else Path(out).parent / "debian-cache"
    writer = SetWriter(out, overwrite)
    try:
        dirs = fetch(list(packages), cache, show_progress)
        speech: dict[str, list[Clip]] = {}
        noise: list[Clip] = []
        for name, root in dirs.items():
            if PACKAGES[name].kind == "speech":
                for c in speech_clips(name, root):
                    speech.setdefault(c.group, []).append(c)
            else:
                noise += noise_clips(name, root)
        if max_clips:
            speech = {t: cs[:max_clips] for t, cs in speech.items()}
            noise = [c for cat in sorted({c.group for c in noise})
                     for c in [c for c in noise if c.group == cat][:max_clips]]
        by_split = {s: sorted(t for t in speech if TALKER_SPLIT.get(t) == s) for s in SPLITS}
        missing = [s for s in SPLITS if not by_split[s]]
        if missing:
            raise DataGenError(f"no talker for the {', '.join(missing)} split(s) in {', '.join(packages)} "
                               f"(talker rule: training.realdata.TALKER_SPLIT)")
        clips = [c for t in sorted(speech) if TALKER_SPLIT.get(t) for c in speech[t]] + noise
        audio = {c.key: decode(c, cache) for c in tqdm(clips, desc="decode", disable=not show_progress)}
        noise_by_split = noise_split(noise)
        taken: set[str] = set()
        manifest = {"version": SET_VERSION, "talkers": by_split,
                    "noise": {s: [c.key for c in cs] for s, cs in noise_by_split.items()}}
        for si, split in enumerate(SPLITS):
            rng = np.random.default_rng([seed, si, 7])
            utts = [(u, t) for t in by_split[split]
                    for u in utterances([audio[c.key] for c in speech[t]], rng)]
            recs = {cat: [(f"{c.package}:{c.key}", audio[c.key]) for c in noise_by_split[split]
                          if c.group == cat and len(audio[c.key]) > SAMPLE_RATE // 4] for cat in ("music", "effects")}
            kinds, probs = noise_kinds(recs)
            n_copies = copies if split == "train" else 1
            n_espeak = int(round(espeak_share * len(utts)))
            if n_espeak:
                check_espeak()
                utts += [(e[0], f"espeak-{e[1]}") for e in espeak_utterances(split, n_espeak, seed, taken,
                                                                             show_progress=show_progress)]
            # babble never holds the target's own voice: each talker's babble is drawn from the other talkers
            talk_besides = {t: [u for u, o in utts if o != t] for t in dict.fromkeys(t for _, t in utts)}
            for i in tqdm(range(len(utts) * n_copies), desc=f"mix {split}", disable=not show_progress):
                s, talker = utts[i % len(utts)]
                kind = str(rng.choice(kinds, p=probs))
                talk = talk_besides[talker]
                others = ([talk[j] for j in rng.choice(len(talk), size=min(8, len(talk)), replace=False)]
                          or [make_noise("pink", rng, len(s), [])])
                n, source = noise_for(kind, len(s), rng, recs, others)
                mix, s16, n16 = mix_at(s, n, rng, snr_range)
                writer.add(split, mix, s16, n16, noise_type=kind, generator="espeak-ng" if talker.startswith("espeak")
                           else "debian", talker=talker, noise_source=source)
        readme = dataset_readme(packages, manifest, snr_range)
        root = writer.commit(readme)
        (Path(out) / "sources.json").write_text(json.dumps(manifest, indent=1))
        return root
    except BaseException:
        writer.abort()
        raise


def dataset_readme(packages: tuple[str, ...], manifest: dict, snr_range: tuple[float, float]) -> str:
    """The set's README: where each recording comes from, its license, and the split rules."""
    lines = ["# Real-speech enhancement set (built by `fqse data --source debian`)", "",
             "LibriMix layout (`wav16k/min/{train,dev,test}/{mix_single,s1,noise}`, `metadata/*.csv`); "
             f"mixture SNR uniform in [{snr_range[0]:g}, {snr_range[1]:g}] dB; mixture = s1 + noise exactly (int16).",
             "", "## Sources and licenses", "", "| Debian package | kind | license | attribution |", "|---|---|---|---|"]
    lines += [f"| {p} | {PACKAGES[p].kind} | {PACKAGES[p].license} | {PACKAGES[p].attribution} |" for p in packages]
    lines += ["", "Derived audio keeps each source's license: files from GPL-2+ sources are GPL-2+, files from "
              "CC-BY-SA-3.0 sources are CC-BY-SA-3.0 (a mixture of both carries both). Synthetic noise and espeak-ng "
              "speech (GPL-3+ program; its output is not covered) are free of restrictions.", "",
              "## Splits (no talker and no noise recording in two splits)", ""]
    lines += [f"- {s}: talkers {', '.join(manifest['talkers'][s])}; {len(manifest['noise'][s])} noise recordings"
              for s in SPLITS]
    lines += ["", "Talker rule: `training.realdata.TALKER_SPLIT`; noise recordings are assigned by a hash of their "
              "path (70/15/15 per category); `sources.json` lists every assignment."]
    return "\n".join(lines) + "\n"


# --- shipped example pairs -----------------------------------------------------------------------------
def licenses_of(row: dict) -> set[str]:
    """The licenses a mixture row carries (speech talker and noise recordings; synthetic noise adds none)."""
    out = {GPL[0] if row["talker"].startswith("fillets") else CC_SOUNDS[0]}
    src = row.get("noise_source", "")
    if src.startswith("babble"):
        out.add("mixed")
    for key in filter(None, src.split(";")):
        pkg = key.split(":")[0]
        if pkg in PACKAGES:
            out.add(PACKAGES[pkg].license)
    return out


def export_pairs(split_dir: str | Path, out: str | Path, kinds: tuple[str, ...] = ("music", "effects", "pink", "bursts",
                 "hum", "white"), seconds: float = 3.0, seed: int = 0) -> list[dict]:
    """Write one noisy/clean pair per noise kind (first `seconds` of a mixture; talkers alternate; one license per
    file) as NN_KIND_+SNRdB_TALKER_{noisy,clean}.wav; returns the rows used (for the README)."""
    from runtime.audio import write_audio
    from training.data import read_rows
    rows = read_rows(split_dir)
    talkers = sorted({r["talker"] for r in rows})
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    out = Path(out)
    picked = []
    for i, kind in enumerate(kinds):
        ok = []
        for t in talkers[i % len(talkers):] + talkers[: i % len(talkers)]:  # alternate talkers where licenses allow
            ok = ok or [r for r in rows if r["noise_type"] == kind and r["talker"] == t and r["length"] >= n
                        and len(licenses_of(r)) == 1 and -2 <= float(r["snr_db"]) <= 12]
        if not ok:
            raise DataGenError(f"no single-license {kind} mixture in {split_dir}")
        r = ok[int(rng.integers(len(ok)))]
        mix = sf.read(r["mixture_path"], dtype="int16", frames=n)[0]
        clean = sf.read(r["source_1_path"], dtype="int16", frames=n)[0]
        snr = 10 * np.log10(np.sum(clean.astype(float) ** 2) / (np.sum((mix.astype(float) - clean) ** 2) + 1e-9))
        stem = f"{i:02d}_{kind}_{round(snr):+d}dB_{r['talker'].split('-', 1)[1]}"
        for tag, x in (("noisy", mix), ("clean", clean)):
            write_audio(out / f"{stem}_{tag}.wav", x, SAMPLE_RATE)
        picked.append({**r, "stem": stem, "license": licenses_of(r).pop(), "snr_3s": round(float(snr), 2)})
    return picked


def _credit(row: dict) -> str:
    """Attribution of one mixture: its speech package and each recorded noise source."""
    speech = GPL[1] if row["talker"].startswith("fillets") else CC_SOUNDS[1]
    noise = sorted({PACKAGES[k.split(":")[0]].attribution for k in row.get("noise_source", "").split(";")
                    if k.split(":")[0] in PACKAGES})
    return "; ".join([f"speech: {speech}", *(f"noise: {n}" for n in noise)])


def write_shipped_audio(set_dir: str | Path, samples: str | Path, calibration: str | Path) -> None:
    """samples/ (noisy/clean pairs from the test split) and calibration_data/ (noisy clips from the dev split), each
    with a README giving every file's source, license and attribution. `set_dir`: OUT/wav16k/min of the set."""
    from runtime.audio import write_audio
    from training.data import read_rows
    set_dir = Path(set_dir)
    for folder in (samples, calibration):
        for old in Path(folder).glob("*.wav"):
            old.unlink()
    picked = export_pairs(set_dir / "test", samples)
    lines = ["# samples/", "", f"{len(picked)} noisy/clean pairs (16 kHz mono int16 wav, the first 3 s of a mixture) "
             "from the **test** split of `fqse data --source debian`: real recorded speech of talkers no model "
             "was trained or tuned on, mixed with noise recordings (or synthetic noise kinds) no training file uses. "
             "Names: index, noise kind, SNR of the 3 s crop, talker. `fqse demo` and the tests use them.", "",
             "Remake: `python -m training.realdata data/real/wav16k/min` (after `make real-data`).", "",
             "| files | talker | noise | SNR | license | source mixture | attribution |", "|---|---|---|---:|---|---|---|"]
    for r in picked:
        lines.append(f"| `{r['stem']}_{{noisy,clean}}.wav` | {r['talker']} | {r['noise_type']} | {r['snr_3s']:+.1f} dB "
                     f"| {r['license']} | {r['mixture_ID']} | {_credit(r)} |")
    lines += ["", "Each file keeps its source's license (GPL-2+ or CC-BY-SA-3.0, as listed); they are shipped beside "
              "the MIT-licensed code as separate works (see LICENSE)."]
    Path(samples, "README.md").write_text("\n".join(lines) + "\n")
    rows = read_rows(set_dir / "dev")
    n, calib = int(3.0 * SAMPLE_RATE), []
    for kind in ("music", "effects", "babble", "pink", "bursts", "hum", "white"):
        if len(calib) == 4:
            break
        ok = [r for r in rows if r["noise_type"] == kind and r["length"] >= n and len(licenses_of(r)) == 1]
        if ok:
            r = ok[len(ok) // 2]
            name = f"{len(calib):02d}_{kind}_{float(r['snr_db']):+.0f}dB_noisy.wav"
            write_audio(Path(calibration) / name, sf.read(r["mixture_path"], dtype="int16", frames=n)[0], SAMPLE_RATE)
            calib.append((name, r))
    lines = ["# calibration_data/", "", f"{len(calib)} noisy 3-second clips (16 kHz mono int16 wav) from the **dev** "
             "split of `fqse data --source debian` (a talker and noise recordings that neither training nor the "
             "test split uses).", "",
             "What they are for: a QAT checkpoint needs **no calibration** (every deployed tensor has a learned "
             "range). `fqse convert` uses the first clip as the check signal of its stage-by-stage verification; "
             "post-training quantization (`fqse import --ptq`, `fqse convert --calibration`) and the integer gLN/cLN "
             "internals take their ranges from all of them. Add your own clips here (or pass `--calibration DIR`).",
             "", "Remake: `python -m training.realdata data/real/wav16k/min`.", "",
             "| file | talker | noise | license | source mixture | attribution |", "|---|---|---|---|---|---|"]
    for name, r in calib:
        lines.append(f"| `{name}` | {r['talker']} | {r['noise_type']} | {licenses_of(r).pop()} | {r['mixture_ID']} "
                     f"| {_credit(r)} |")
    Path(calibration, "README.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    import sys
    write_shipped_audio(sys.argv[1] if len(sys.argv) > 1 else "data/real/wav16k/min", "samples", "calibration_data")
