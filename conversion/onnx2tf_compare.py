"""`fqse bench --compare-onnx2tf CHECKPOINT`: this project's fully-integer TFLite (`fqse convert`) against
onnx2tf's full-integer post-training quantization of the same float network, measured in one run.

(a) `fqse convert CHECKPOINT`: the QAT scales carried into TFLite, int8 in and out.
(b) the float network (the same weights, quantizers off: `fqse export --float`) as a static-length NCW float
    ONNX, converted by onnx2tf with full-integer PTQ calibrated on calibration_data/*.wav (handed over as a
    numpy file, so onnx2tf downloads nothing); its `*_full_integer_quant.tflite` (int8 in and out, scales
    onnx2tf's calibration chose).

Measured for both: seconds per second of audio (runtime/bench.py's timing, each in its own process), op
counts (TRANSPOSE, RESHAPE, total, XNNPACK delegate partitions), parity with the fake-quant PyTorch model (SNR
of the combined waveform, as conversion/parity.py computes it) and SI-SNR against clean on samples/.
onnx2tf is the optional `onnx2tf` extra (`make onnx2tf`).
"""
from __future__ import annotations

import collections
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from runtime import pipeline

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
CALIBRATION_DIR = ROOT / "calibration_data"
MISSING = "onnx2tf is not installed: run `make onnx2tf` or `pip install .[onnx2tf]` (the optional onnx2tf extra)"


class Onnx2tfError(RuntimeError):
    """onnx2tf is missing or its conversion failed (one line)."""


def require_onnx2tf() -> None:
    """Raise Onnx2tfError (one line, naming the install command) where onnx2tf is not importable."""
    try:
        found = importlib.util.find_spec("onnx2tf") is not None
    except (ImportError, ValueError):  # ValueError: a module stub without a spec
        found = False
    if not found:
        raise Onnx2tfError(MISSING)


def static_float_onnx(checkpoint: str | Path, path: Path, length: int) -> dict[str, Any]:
    """The float network of `checkpoint` (`fqse export --float`, checked against torch) as ONNX with the time
    axis fixed to `length` samples (input [1, S, length] NCW); returns the model's metadata."""
    import onnx
    from conversion.pipeline import export_onnx
    export_onnx(checkpoint, path, float_model=True)
    m = onnx.load(str(path))
    for v in [*m.graph.input, *m.graph.output]:
        d = v.type.tensor_type.shape.dim[-1]
        d.ClearField("dim_param")
        d.dim_value = length
    del m.graph.value_info[:]
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))
    return json.loads({p.key: p.value for p in m.metadata_props}["fqse"])


def padded_input(pcm: np.ndarray, meta: dict[str, Any], length: int) -> np.ndarray:
    """The runtime's model input for int16 `pcm` [S, T'] (pipeline.pre), zero-padded to `length` samples."""
    x = pipeline.pre(pcm, meta)
    if x.shape[1] > length:
        raise Onnx2tfError(f"{x.shape[1]} input samples do not fit the static onnx2tf model ({length}); "
                           "raise --seconds")
    return np.pad(x, ((0, 0), (0, length - x.shape[1])))


def calibration_file(meta: dict[str, Any], length: int, path: Path, clips: Path = CALIBRATION_DIR) -> int:
    """The calibration clips (conversion.ptq.calibration_audio) as the float network's input in TF layout
    [n, length, S] (NWC, what onnx2tf's -cind wants), saved as .npy; returns n."""
    from conversion.ptq import calibration_audio
    from runtime.audio import to_int16
    data = [padded_input(to_int16(w), meta, length).T for w in calibration_audio(clips, meta["sample_rate"])]
    np.save(path, np.stack(data).astype(np.float32))
    return len(data)


def run_onnx2tf(onnx_path: Path, calib: Path, out_dir: Path, input_name: str, channels: int) -> Path:
    """onnx2tf's full-integer PTQ of `onnx_path` (in its own process, output captured); returns its
    `*_full_integer_quant.tflite` (int8 in and out)."""
    require_onnx2tf()
    args = dict(input_onnx_file_path=str(onnx_path), output_folder_path=str(out_dir),
                output_integer_quantized_tflite=True, quant_type="per-channel",
                custom_input_op_name_np_data_path=[[input_name, str(calib), [[[0.0] * channels]], [[[1.0] * channels]]]],
                input_quant_dtype="int8", output_quant_dtype="int8", non_verbose=True)
    code = ("import numpy as np, onnx2tf, sys; a = " + repr(args) + "; "
            "a['custom_input_op_name_np_data_path'] = [[n, p, np.asarray(m, np.float32), np.asarray(s, np.float32)] "
            "for n, p, m, s in a['custom_input_op_name_np_data_path']]; onnx2tf.convert(**a)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=out_dir.parent)
    found = sorted(out_dir.glob("*_full_integer_quant.tflite"))
    if res.returncode != 0 or not found:
        lines = [ln for ln in (res.stderr + res.stdout).splitlines() if ln.strip()]
        raise Onnx2tfError(f"onnx2tf failed (exit {res.returncode}): {lines[-1] if lines else 'no output'}")
    return found[0]


class PlainTflite:
    """A TFLite model without FQSE metadata (onnx2tf's): NWC input [1, T, S], outputs `out0..` [1, 1, T] by
    signature name, int8 or float I/O; run on the runtime's float model input [S, T'] -> float [C, T']."""

    def __init__(self, path: str | Path, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter
        self.it = Interpreter(model_path=str(path), num_threads=threads)
        self.it.allocate_tensors()
        sig = self.it._get_full_signature_list()["serving_default"]  # names onnx2tf keeps from the ONNX model
        details = {d["index"]: d for d in self.it.get_tensor_details()}
        self.inp = details[next(iter(sig["inputs"].values()))]
        self.outs = [details[sig["outputs"][k]] for k in sorted(sig["outputs"])]
        self.length = int(self.inp["shape"][1])

    @property
    def io_types(self) -> str:
        return f"{np.dtype(self.inp['dtype']).name} in / {np.dtype(self.outs[0]['dtype']).name} out"

    def run(self, x: np.ndarray) -> np.ndarray:
        n = x.shape[1]
        xt = np.pad(x, ((0, 0), (0, self.length - n))).T[None]
        s, z = self.inp["quantization"]
        if self.inp["dtype"] != np.float32:
            xt = np.clip(np.round(xt / s) + z, -128, 127)
        self.it.set_tensor(self.inp["index"], xt.astype(self.inp["dtype"]))
        self.it.invoke()
        ys = []
        for d in self.outs:
            y = self.it.get_tensor(d["index"]).reshape(-1)[:n].astype(np.float64)
            s, z = d["quantization"]
            ys.append((y - z) * s if d["dtype"] != np.float32 else y)
        return np.stack(ys)


def measure_plain(model: str, meta_json: str, threads: int, seconds: float) -> dict[str, Any]:
    """runtime.bench.measure's offline timing for a PlainTflite model: host pre-processing, model, integer
    combiner, on the same test signal (call through runtime.bench.run_isolated)."""
    from runtime.audio import to_int16
    from runtime.bench import _signal, peak_rss_mb, seconds_per_second
    meta = json.loads(meta_json)
    m = PlainTflite(model, threads)
    pcm = to_int16(_signal(seconds, meta["sample_rate"]))
    run = lambda: pipeline.post(m.run(pipeline.pre(pcm, meta)), len(pcm), meta)  # noqa: E731
    return {"model": model, "threads": threads, "audio_s": seconds, "size_bytes": Path(model).stat().st_size,
            "kernels": "xnnpack", "s_per_s_audio": seconds_per_second(run, seconds), "peak_rss_mb": peak_rss_mb()}


def op_stats(path: str | Path, interp: Any) -> dict[str, Any]:
    """Op counts of a .tflite (delegate nodes left out), its non-integer tensors, and the XNNPACK delegate
    partitions of `interp` (an allocated interpreter of it: one DELEGATE node per partition)."""
    from conversion.checks import fully_integer
    from conversion.tflite_export import tensor_report
    rep = tensor_report(Path(path).read_bytes())
    ops = collections.Counter(op for op in rep["ops"] if op != "DELEGATE")
    return {"ops_total": sum(ops.values()), "TRANSPOSE": ops.get("TRANSPOSE", 0), "RESHAPE": ops.get("RESHAPE", 0),
            "ops": dict(sorted(ops.items())), "float_tensors": len(fully_integer(rep)),
            "xnnpack_partitions": sum(o["op_name"] == "DELEGATE" for o in interp._get_ops_details())}


def sample_pairs(samples: Path = SAMPLES) -> list[tuple[Path, Path]]:
    """samples/*_noisy.wav with their *_clean.wav (samples/README.md)."""
    from runtime.audio import noisy_clean_pairs
    pairs = noisy_clean_pairs(samples)
    if not pairs:
        raise Onnx2tfError(f"{samples}: no *_noisy.wav / *_clean.wav pairs")
    return pairs


def quality(checkpoint: str | Path, ours: Path, theirs: Path, fmeta: dict[str, Any],
            samples: Path = SAMPLES) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """Per sample pair: SNR (dB) of each system's combined output against the fake-quant torch model
    (conversion/parity.py's measure) and against the float network (torch), SI-SNR (dB) against clean. Also
    the two SNRs over all samples pooled (one exact sample would dominate a mean of dB values)."""
    import torch
    from conversion.importers import load_any
    from conversion.parity import compare, to_wave, torch_outputs
    from runtime.audio import read_audio
    from runtime.backends import load_backend
    from runtime.metrics import si_snr, snr
    from training.quant import without_quantizers
    model = load_any(checkpoint)
    plain = without_quantizers(model)
    be, o2t = load_backend(ours), PlainTflite(theirs)
    qmeta, sr = be.meta, be.meta["sample_rate"]
    rows = []
    waves: dict[str, list[np.ndarray]] = collections.defaultdict(list)
    for noisy, clean in sample_pairs(samples):
        pcm = read_pcm(noisy, sr)
        ref_clean = read_audio(clean, sr)[0]
        n = min(len(pcm), len(ref_clean))
        x, xf = pipeline.pre(pcm, qmeta), pipeline.pre(pcm, fmeta)
        fq = torch_outputs(model, x)
        got = {"fqse": (be.run(x), qmeta), "onnx2tf": (o2t.run(xf), fmeta)}
        with torch.no_grad():
            got["float_torch"] = (np.stack([o[0, 0].numpy() for o in plain.eval()(torch.from_numpy(xf)[None])]), fmeta)
        row: dict[str, Any] = {"sample": noisy.name, "si_snr_noisy": si_snr(pcm[:n] / 32768.0, ref_clean[:n]),
                               "si_snr_fakequant": si_snr(pipeline.enhanced(fq, pcm[:n], qmeta) / 32768.0,
                                                          ref_clean[:n])}
        fl = to_wave(got["float_torch"][0], fmeta)
        waves["fakequant"].append(to_wave(fq, qmeta))
        for k, (y, meta) in got.items():
            par = compare(fq, y, qmeta)["snr_db"] if y.dtype == np.int8 else snr(to_wave(y, meta), to_wave(fq, qmeta))
            row[k] = {"parity_db": par,
                      "si_snr": si_snr(pipeline.enhanced(y, pcm[:n], meta) / 32768.0, ref_clean[:n])}
            waves[k].append(to_wave(y, meta))
            if k != "float_torch":
                row[k]["vs_float_db"] = snr(to_wave(y, meta), fl)
        rows.append(row)
    cat = {k: np.concatenate(v) for k, v in waves.items()}
    pooled = {k: {"parity_db": snr(cat[k], cat["fakequant"]), "vs_float_db": snr(cat[k], cat["float_torch"])}
              for k in got}
    del pooled["float_torch"]["vs_float_db"]
    return rows, pooled


def compare_onnx2tf(checkpoint: str | Path, threads: int = 1, seconds: float = 4.0, out: str | Path | None = None,
                    samples: Path = SAMPLES, calibration: Path = CALIBRATION_DIR) -> dict[str, Any]:
    """Convert `checkpoint` both ways and measure both models (module docstring); prints a markdown table and,
    with `out` (a folder), writes onnx2tf_compare.json / .md and the three model files there."""
    require_onnx2tf()
    from importlib.metadata import version
    from conversion.pipeline import convert_tflite
    from runtime.backends import TfliteBackend
    from runtime.bench import measure_isolated, run_isolated
    with tempfile.TemporaryDirectory(prefix="fqse-onnx2tf-") as tmp:
        t = Path(tmp)
        ours = t / "fqse_int8.tflite"
        convert_tflite(checkpoint, ours)
        be = TfliteBackend(ours, threads)
        sr = be.meta["sample_rate"]
        longest = max([int(seconds * sr)] + [len(read_pcm(p, sr)) for p, _ in sample_pairs(samples)])
        length = pipeline.padded_length(longest, be.meta["stride"])
        fmeta = static_float_onnx(checkpoint, t / "float_static.onnx", length)
        n_cal = calibration_file(fmeta, length, t / "calibration.npy", calibration)
        theirs = run_onnx2tf(t / "float_static.onnx", t / "calibration.npy", t / "onnx2tf", "input", fmeta["n_splitter"])
        o2t = PlainTflite(theirs, threads)
        be.run(pipeline.pre(np.zeros(int(seconds * sr), np.int16), be.meta))  # at the measured length (XNNPACK or not)
        speed = {"fqse": measure_isolated(str(ours), threads, seconds, False, 16.0),
                 "onnx2tf": run_isolated("conversion.onnx2tf_compare", "measure_plain", str(theirs), json.dumps(fmeta),
                                         threads, seconds, label=theirs.name)}
        rows, pooled = quality(checkpoint, ours, theirs, fmeta, samples)
        systems: dict[str, Any] = {
            "fqse": {"name": "fqse convert (QAT scales)", "io": "int8 in / int8 out", **op_stats(ours, be.interp),
                     "kernels": speed["fqse"]["kernels"]},
            "onnx2tf": {"name": f"onnx2tf {version('onnx2tf')} full-integer PTQ", "io": o2t.io_types,
                        **op_stats(theirs, o2t.it), "kernels": "xnnpack"},
            "float_torch": {"name": "float network (torch, reference)"}}
        for k in ("fqse", "onnx2tf"):
            systems[k].update(s_per_s_audio=speed[k]["s_per_s_audio"], size_bytes=speed[k]["size_bytes"],
                              peak_rss_mb=speed[k]["peak_rss_mb"])
        for k in systems:
            systems[k]["si_snr"] = float(np.mean([r[k]["si_snr"] for r in rows]))
            systems[k].update(pooled[k])
        result = {"checkpoint": str(checkpoint), "threads": threads, "audio_s": seconds, "static_length": length,
                  "calibration_clips": n_cal, "samples": len(rows),
                  "si_snr_noisy": float(np.mean([r["si_snr_noisy"] for r in rows])),
                  "si_snr_fakequant": float(np.mean([r["si_snr_fakequant"] for r in rows])),
                  "systems": systems, "per_sample": rows}
        md = markdown(result)
        print(md)
        if out:
            write(result, md, Path(out), {ours: "fqse_int8.tflite", theirs: "onnx2tf_full_integer_quant.tflite",
                                          t / "float_static.onnx": "float_static.onnx"})
    return result


def read_pcm(path: Path, sr: int) -> np.ndarray:
    """A file as int16 PCM at `sr`."""
    from runtime.audio import read_audio, to_int16
    return to_int16(read_audio(path, sr)[0])


def markdown(r: dict[str, Any]) -> str:
    """The comparison as a markdown table (one column per system)."""
    s = r["systems"]
    keys = ("fqse", "onnx2tf", "float_torch")
    f = lambda k, field, fmt: format(s[k][field], fmt) if field in s[k] else "–"  # noqa: E731
    lines = ["| | " + " | ".join(s[k]["name"] for k in keys) + " |", "|---|" + "---:|" * len(keys)]
    table = [("I/O", "io", ""), (f"s per s of audio ({r['threads']} thread, {r['audio_s']:g} s)", "s_per_s_audio", ".4f"),
             ("kernels", "kernels", ""), ("ops (total)", "ops_total", "d"), ("TRANSPOSE", "TRANSPOSE", "d"),
             ("RESHAPE", "RESHAPE", "d"), ("XNNPACK partitions", "xnnpack_partitions", "d"),
             ("float tensors", "float_tensors", "d"), ("size (KB)", "size_bytes", ""),
             (f"parity: SNR vs fake-quant torch (dB, {r['samples']} samples pooled)", "parity_db", ".1f"),
             ("SNR vs the float network (torch; dB, pooled)", "vs_float_db", ".1f"),
             (f"SI-SNR vs clean (dB, mean of {r['samples']} samples)", "si_snr", ".2f")]
    for label, field, fmt in table:
        if field == "size_bytes":
            cells = [f"{s[k][field] / 1024:.1f}" if field in s[k] else "–" for k in keys]
        else:
            cells = [f(k, field, fmt) for k in keys]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(f"\nSI-SNR of the noisy input {r['si_snr_noisy']:.2f} dB, of the fake-quant torch model "
                 f"{r['si_snr_fakequant']:.2f} dB; onnx2tf's model has a static length of {r['static_length']} samples, "
                 f"calibrated on {r['calibration_clips']} clips of calibration_data/.")
    return "\n".join(lines)


def write(result: dict[str, Any], md: str, out: Path, files: dict[Path, str]) -> None:
    """onnx2tf_compare.json / .md and the compared model files into folder `out` (each written atomically)."""
    from runtime.files import atomic_write
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "onnx2tf_compare.json", lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1)))
    atomic_write(out / "onnx2tf_compare.md", lambda tmp: Path(tmp).write_text(md + "\n"))
    for src, name in files.items():
        atomic_write(out / name, lambda tmp, src=src: shutil.copyfile(src, tmp))
