"""`fqse golden`: golden vectors for bringing the model up on another device (NPU, DSP, MCU).

From the integer reference (runtime/intref.py, bit-exact with TFLite's reference kernels) on one audio
file: the int8 input codes, every intermediate tensor and the outputs as .npy files, and index.json
with, per tensor, its name, shape, dtype, scale(s) and zero point(s), and, per op, its type and its
input/output tensors in execution order. A port checks its kernels layer by layer: feed an op the
golden inputs, compare its output with the golden output, bit for bit.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from runtime import pipeline
from runtime.audio import read_audio, to_int16
from runtime.backends import ModelError, load_backend
from runtime.intref import IntegerReference


def golden_inputs(be: Any, pcm: np.ndarray) -> list[np.ndarray]:
    """Model inputs in the interpreter's layout: a whole-utterance model gets the padded codes of pcm;
    a step model its first block of codes and its initial states."""
    if be.info.step:
        K = be.info.step_samples
        block = np.zeros(K, np.int16)
        block[: min(K, len(pcm))] = pcm[:K]
        xs = [pipeline.codes(block, be.meta)] + be.initial_states()
    else:
        xs = [pipeline.pre(pcm, be.meta)]
    return [np.ascontiguousarray(x.T[None, None]) for x in xs]  # [C, T] -> NHWC [1, 1, T, C]


def write_golden(model: str | Path, audio: str | Path, out: str | Path, max_seconds: float = 2.0) -> dict[str, Any]:
    """Run the integer reference on (at most max_seconds of) audio and write the vectors under out."""
    model, out = Path(model), Path(out)
    if model.suffix != ".tflite":
        raise ModelError(f"{model}: golden vectors come from the integer reference of an int8 .tflite model")
    be = load_backend(model)
    notes: list[str] = []
    sr = be.info.sample_rate
    pcm = to_int16(read_audio(audio, sr, notes=notes)[0])[: int(max_seconds * sr)]
    ref = IntegerReference.from_file(model)
    xs = golden_inputs(be, pcm)
    vals = ref.run(xs)
    out.mkdir(parents=True, exist_ok=True)
    produced = {outs[0]: k for k, (_, _, outs, _) in enumerate(ref.ops)}
    tensors: dict[str, Any] = {}
    for t in ref.tensors:
        if t.index not in vals or (t.data is not None and t.index not in produced and t.index not in ref.inputs):
            continue  # constants (weights, biases, shapes) live in the model file
        fname = f"t{t.index:04d}.npy"
        np.save(out / fname, vals[t.index])
        tensors[str(t.index)] = {"name": t.name, "file": fname, "dtype": str(vals[t.index].dtype),
                                 "shape": list(vals[t.index].shape),
                                 "scale": None if t.scale is None else [float(s) for s in t.scale],
                                 "zero_point": None if t.zero_point is None else [int(z) for z in t.zero_point],
                                 "produced_by": produced.get(t.index)}
    index = {"model": str(model), "audio": str(audio), "samples": int(len(pcm)), "layout": "NHWC [1, 1, T, C]",
             "reference": "runtime/intref.py (bit-exact with TFLite BUILTIN_REF kernels)",
             "inputs": [str(i) for i in ref.inputs], "outputs": [str(i) for i in ref.outputs],
             "ops": [{"index": k, "op": op, "inputs": [str(i) for i in ins if i >= 0], "outputs": [str(o) for o in outs]}
                     for k, (op, ins, outs, _) in enumerate(ref.ops)],
             "tensors": tensors, "fqse": be.meta, "notes": notes}
    (out / "index.json").write_text(json.dumps(index, indent=1))
    return index


def golden_cli(model: str, audio: str, out: str, max_seconds: float) -> None:
    index = write_golden(model, audio, out, max_seconds)
    for n in index["notes"]:
        print(f"note: {n}")
    print(f"wrote {len(index['tensors'])} tensors of {len(index['ops'])} ops ({index['samples']} samples) "
          f"and index.json under {out}")
