"""Every bad input of issue 13 through the real CLI: exit code and the one line the user sees.

`python -m tests.test_bad_inputs > docs/reliability.md` writes the table of docs/reliability.md from these cases.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = sorted((ROOT / "samples").glob("*_noisy.wav"))[0]
DEMO_CKPT = ROOT / "training" / "pretrained" / "demo_fqse_tiny.pt"


@dataclass
class Ctx:
    tmp: Path
    onnx: Path

    def fmt(self, s: str) -> str:
        return s.format(tmp=self.tmp, onnx=self.onnx, ckpt=DEMO_CKPT, wav=SAMPLE)


def _wav(path: Path, rate: int = 16000, n: int = 16000, dtype=np.int16, data=None) -> None:
    sf.write(path, np.zeros(n, dtype) if data is None else data, rate,
             subtype="PCM_16" if dtype == np.int16 else "FLOAT")


def _evil(c: Ctx) -> None:
    import torch

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {c.tmp / 'PWNED'}",)
    torch.save({"format": "fqse-checkpoint-1", "x": Exploit()}, c.tmp / "evil.pt")


def _tensor_ckpt(c: Ctx) -> None:
    import torch
    torch.save(torch.zeros(3), c.tmp / "t.pt")


def _gln_ckpt(c: Ctx) -> None:
    from training import checkpoint
    from training.model import ConvTasNet, ModelConfig
    checkpoint.save(c.tmp / "gln.pt", ConvTasNet(ModelConfig(n_filters=16, kernel_size=16, bn_chan=8, hid_chan=16,
                                                             skip_chan=8, n_blocks=2, n_repeats=1, quantize=True)))


def _config(text: str) -> Callable[[Ctx], None]:
    return lambda c: (c.tmp / "c.yml").write_text(text)


def _used_work_dir(c: Ctx) -> None:
    (c.tmp / "c.yml").write_text(f"work_dir: {c.tmp / 'work'}\n")
    (c.tmp / "work").mkdir()
    (c.tmp / "work" / "best.pt").write_bytes(b"a good model")


def _truncated(c: Ctx) -> None:
    _wav(c.tmp / "full.wav")
    raw = (c.tmp / "full.wav").read_bytes()
    (c.tmp / "trunc.wav").write_bytes(raw[: len(raw) // 2])


def _nan(c: Ctx) -> None:
    x = np.zeros(16000, np.float32)
    x[100] = np.nan
    _wav(c.tmp / "nan.wav", dtype=np.float32, data=x)


def _readonly(c: Ctx) -> None:
    _wav(c.tmp / "ro.wav")
    (c.tmp / "ro.wav").chmod(0o444)


def _flipped(c: Ctx) -> None:
    raw = bytearray(c.onnx.read_bytes())
    raw[len(raw) // 3] ^= 0x10
    (c.tmp / "flipped.onnx").write_bytes(bytes(raw))


def _old_format(c: Ctx) -> None:
    from runtime import modelmeta
    raw = c.onnx.read_bytes().replace(b'"format": "fqse-3"', b'"format": "fqse-1"')
    (c.tmp / "old.onnx").write_bytes(modelmeta.seal(raw))


@dataclass
class Case:
    id: str
    what: str
    argv: list[str]
    message: str  # regex for the one line on stderr (after "fqse CMD: ")
    code: int = 2
    make: Callable[[Ctx], None] | None = None
    stdin: bytes | None = b""  # None: stdin closed
    check: Callable[[Ctx], bool] | None = field(default=None)  # a property of the files afterwards


CASES = [
    Case("malicious-checkpoint", "checkpoint whose pickle runs a shell command", ["export", "--checkpoint",
         "{tmp}/evil.pt", "-o", "{tmp}/m.onnx"], r"error: .*evil.pt: refused to load: it references posix.system",
         make=_evil, check=lambda c: not (c.tmp / "PWNED").exists() and not (c.tmp / "m.onnx").exists()),
    Case("tensor-checkpoint", "`.pt` holding a plain tensor", ["export", "--checkpoint", "{tmp}/t.pt", "-o",
         "{tmp}/m.onnx"], r"error: .*t.pt: holds a Tensor, not a checkpoint dict", make=_tensor_ckpt),
    Case("missing-checkpoint", "checkpoint path that does not exist", ["convert", "--checkpoint", "{tmp}/no.pt",
         "-o", "{tmp}/m.tflite"], r"error: .*no.pt: no such checkpoint"),
    Case("gln-step", "`--step-ms` on a non-causal (gLN) model", ["export", "--checkpoint", "{tmp}/gln.pt", "-o",
         "{tmp}/m.onnx", "--step-ms", "16"], r"error: a step \(streaming\) model needs a causal model", make=_gln_ckpt),
    Case("step-too-short", "`--step-ms 0.001` (below one encoder hop)", ["export", "--checkpoint", "{ckpt}", "-o",
         "{tmp}/m.onnx", "--step-ms", "0.001"], r"error: --step-ms 0.001 is shorter than one encoder hop \(1 ms\)"),
    Case("export-wrong-ext", "`export -o x.tflite` (ONNX under a TFLite name)", ["export", "--checkpoint", "{ckpt}",
         "-o", "{tmp}/x.tflite"], r"error: -o .*x.tflite: this command writes .onnx; name the output \*.onnx"),
    Case("config-typo", "config typos `trainig:`, `epoch:`, `learning_rate:`, `augmentation.enable:`",
         ["train", "-y", "{tmp}/c.yml"], r"error: .*c.yml: unknown key trainig \(did you mean training\?\); "
         r"unknown key training.epoch \(did you mean training.epochs\?\); unknown key training.learning_rate "
         r"\(did you mean training.lr\?\); unknown key dataset.augmentation.enable \(did you mean "
         r"dataset.augmentation.enabled\?\)",
         make=_config("trainig: {}\ntraining:\n  epoch: 3\n  learning_rate: 0.1\ndataset:\n  augmentation:\n"
                      "    enable: true\n")),
    Case("config-types", "`epochs: ten`, `batch_size: 0`, `segment: abc`, `causal: 'no'`",
         ["train", "-y", "{tmp}/c.yml"], r"error: .*c.yml: training.epochs: 'ten' is not a whole number; "
         r"training.batch_size: 0: must be at least 1; dataset.segment: 'abc' is not a number; model.causal: 'no' "
         r"is not true or false",
         make=_config("training:\n  epochs: ten\n  batch_size: 0\ndataset:\n  segment: abc\nmodel:\n  causal: 'no'\n")),
    Case("config-list", "config that is a YAML list", ["train", "-y", "{tmp}/c.yml"],
         r"error: .*c.yml: config: must be a mapping of keys, got list", make=_config("- a\n- b\n")),
    Case("config-base-loop", "`base:` pointing to itself", ["train", "-y", "{tmp}/c.yml"],
         r"error: .*c.yml: `base:` loop \(c.yml -> c.yml\)", make=_config("base: c.yml\n")),
    Case("train-used-dir", "`fqse train` into a work dir holding best.pt", ["train", "-y", "{tmp}/c.yml"],
         r"error: .*work already holds best.pt; use --resume to continue that run or --overwrite to replace it",
         make=_used_work_dir, check=lambda c: (c.tmp / "work" / "best.pt").read_bytes() == b"a good model"),
    Case("wav-1hz", "20 KB WAV whose header says 1 Hz", ["enhance", "{tmp}/one.wav", "-o", "{tmp}/o.wav", "--model",
         "{onnx}", "--stream"], r"error: .*one.wav: sample rate 1 Hz in the header; supported 8000..192000 Hz",
         make=lambda c: _wav(c.tmp / "one.wav", rate=1, n=10000), check=lambda c: not (c.tmp / "o.wav").exists()),
    Case("wav-truncated", "WAV shorter than its header says (processed, warned)", ["enhance", "{tmp}/trunc.wav",
         "-o", "{tmp}/o.wav", "--model", "{onnx}"], r"warning: trunc.wav: truncated: the header announces 32000 data "
         r"bytes, the file holds 15978", code=0, make=_truncated),
    Case("wav-empty", "empty input file", ["enhance", "{tmp}/e.wav", "-o", "{tmp}/o.wav", "--model", "{onnx}"],
         r"error: .*e.wav: empty file", make=lambda c: (c.tmp / "e.wav").write_bytes(b"")),
    Case("wav-garbage", "input that is not audio", ["enhance", "{tmp}/g.wav", "-o", "{tmp}/o.wav", "--model",
         "{onnx}"], r"error: .*g.wav: not a readable audio file", make=lambda c: (c.tmp / "g.wav").write_bytes(b"x" * 99)),
    Case("wav-nan", "float WAV holding NaN", ["enhance", "{tmp}/nan.wav", "-o", "{tmp}/o.wav", "--model", "{onnx}"],
         r"error: .*nan.wav: contains NaN or infinite samples", make=_nan),
    Case("out-mp3", "`-o x.mp3` (a format not written)", ["enhance", "{wav}", "-o", "{tmp}/x.mp3", "--model",
         "{onnx}"], r"error: .*x.mp3: cannot write .mp3; use .wav, .flac, .ogg"),
    Case("out-is-input", "`-o` naming the input file", ["enhance", "{tmp}/in.wav", "-o", "{tmp}/in.wav", "--model",
         "{onnx}"], r"error: output would overwrite the input; choose another -o", make=lambda c: _wav(c.tmp / "in.wav")),
    Case("out-readonly", "existing read-only output (without --force)", ["enhance", "{wav}", "-o", "{tmp}/ro.wav",
         "--model", "{onnx}"], r"error: .*ro.wav: exists and is read-only; use --force to replace it", make=_readonly),
    Case("hop-zero", "`--hop-ms 0`", ["enhance", "{wav}", "-o", "{tmp}/o.wav", "--model", "{onnx}", "--hop-ms", "0"],
         r"error: argument --hop-ms: '0': must be above 0"),
    Case("hop-nan", "`--hop-ms nan`", ["stream", "--model", "{onnx}", "--hop-ms", "nan"],
         r"error: argument --hop-ms: 'nan': must be above 0"),
    Case("threads-zero", "`--threads 0`", ["bench", "--model", "{onnx}", "--threads", "0"],
         r"error: argument --threads: '0': must be at least 1"),
    Case("model-bitflip", "model file with one flipped bit", ["enhance", "{wav}", "-o", "{tmp}/o.wav", "--model",
         "{tmp}/flipped.onnx"], r"error: .*flipped.onnx: the model file is corrupted or was modified \(sha256 seal "
         r"does not match\)", make=_flipped),
    Case("model-old-format", "model metadata `format: fqse-1`", ["enhance", "{wav}", "-o", "{tmp}/o.wav", "--model",
         "{tmp}/old.onnx"], r"error: .*old.onnx: model metadata format 'fqse-1'; this runtime reads fqse-2, fqse-3",
         make=_old_format),
    Case("model-garbage", "`.onnx` that is not a model", ["bench", "--model", "{tmp}/g.onnx"],
         r"error: .*g.onnx: not a loadable ONNX model", make=lambda c: (c.tmp / "g.onnx").write_bytes(b"garbage")),
    Case("model-missing", "model path that does not exist", ["bench", "--model", "{tmp}/none.tflite"],
         r"error: .*none.tflite: no such model file"),
    Case("stream-stdin-closed", "`fqse stream` with stdin closed", ["stream", "--model", "{onnx}"],
         r"error: stdin or stdout is closed: pipe raw int16 PCM in and out", stdin=None),
    Case("stream-odd-byte", "`fqse stream` input ending in half a sample", ["stream", "--model", "{onnx}"],
         r"warning: input ended with an odd byte \(half an int16 sample\); it was dropped", code=0, stdin=b"\x01\x02\x03"),
]


def run_case(case: Case, ctx: Ctx) -> tuple[int, list[str]]:
    """Run one case; its exit code and the lines it wrote on stderr."""
    if case.make:
        case.make(ctx)
    kw = dict(input=case.stdin) if case.stdin is not None else dict(stdin=subprocess.DEVNULL,
                                                                     preexec_fn=lambda: os.close(0))
    res = subprocess.run([sys.executable, "-m", "fqse", *[ctx.fmt(a) for a in case.argv]], cwd=ROOT,
                         capture_output=True, timeout=300, **kw)
    return res.returncode, [ln for ln in res.stderr.decode(errors="replace").splitlines() if ln.strip()]


def _demo_onnx(tmp: Path) -> Path:
    from conversion.pipeline import export_onnx
    return export_onnx(DEMO_CKPT, tmp / "demo.onnx")


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    return _demo_onnx(tmp_path_factory.mktemp("bad_inputs_model"))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, onnx_model: Path):
    ctx = Ctx(tmp_path, onnx_model)
    code, lines = run_case(case, ctx)
    assert code == case.code, lines
    assert not any("Traceback" in ln for ln in lines), lines
    if case.code != 0:  # one error line; argparse puts its usage lines before it
        assert [ln for ln in lines if ": error: " in ln] == [lines[-1]], lines
        assert len(lines) == 1 or lines[0].startswith("usage: fqse"), lines
    assert re.search(case.message, lines[-1] if case.code else "\n".join(lines)), lines
    if case.check:
        assert case.check(ctx)


def test_reliability_doc_lists_every_case():
    doc = (ROOT / "docs" / "reliability.md").read_text()
    assert all(f"`{c.id}`" in doc for c in CASES)


def table() -> str:
    """docs/reliability.md: every case run now, with its exit code and the line the user sees."""
    rows = ["# Reliability: bad inputs and what `fqse` says", "",
            "Generated by `python -m tests.test_bad_inputs > docs/reliability.md` from the cases that",
            "`tests/test_bad_inputs.py` runs through the real CLI (each row is a test; paths shortened).", "",
            "Every failure is one line on stderr and exit code 2 (`--debug` shows the traceback, `--verbose` the",
            "native libraries' log lines); warnings are one line too. Also checked, in `tests/test_reliability.py`:",
            "a crafted checkpoint runs nothing (its payload is shown live without `weights_only`); `Enhancer` input",
            "(int16, or float in [-1, 1], mono) and its errors; `fqse train` keeps a used work dir's checkpoints;",
            "SIGTERM / SIGKILL during `enhance --stream` leave no partial output; outputs honour the umask;",
            "25 bit flips of each model file are refused (sha256 seal); a 1 Hz header and 10 min of 48 kHz audio",
            "stay under 200 MB peak; `fqse stream | head` ends quietly.", "",
            "| case | bad input | command | exit | what the user sees (stderr) |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as d:
        model = _demo_onnx(Path(d))
        for case in CASES:
            tmp = Path(d) / case.id
            tmp.mkdir()
            ctx = Ctx(tmp, model)
            code, lines = run_case(case, ctx)
            shown = (lines[-1] if lines else "").replace(str(tmp) + "/", "").replace(str(model), "demo.onnx")
            cmd = " ".join(["fqse", *case.argv]).replace("{tmp}/", "").replace("{onnx}", "demo.onnx").replace(
                "{ckpt}", "demo_fqse_tiny.pt").replace("{wav}", SAMPLE.name)
            if case.stdin is None:
                cmd += " <&-"
            ok = code == case.code and re.search(case.message, shown if code else "\n".join(lines))
            rows.append(f"| `{case.id}` | {case.what} | `{cmd}` | {code}{'' if ok else ' FAIL'} | "
                        f"{shown.replace('|', '/')} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(table())
