"""One conversion pipeline for both targets (`fqse export`: ONNX, `fqse convert`: TFLite):

checkpoint -> deploy graph -> the op kinds' prepare hooks -> (step graph) -> rules check -> emit ->
check stage by stage -> atomic write.

1. checkpoint: any format conversion/importers.py reads (a YAML config may override the model's);
2. graph: conversion/graph.py's deploy ops, then every op kind's `prepare` hook (conversion/ops/: e.g. the
   integer gLN / cLN calibrate their internal grids); with `step_frames`, the streaming step graph;
3. rules: every op is of a known kind and has each rule the target needs (else a one-line OpRuleError,
   before anything is emitted);
4. emit: the target's emitter, to the bytes of a sealed model file;
5. check: the target's stage checks (conversion/checks.py) against the torch model; a failed one raises
   ConversionError and nothing is written;
6. write: atomically (a crash leaves the old file or none).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from conversion import checks, ops
from conversion.errors import ConversionError, ExportError  # noqa: F401 - the pipeline's errors
from conversion.graph import Graph, build_graph
from conversion.importers import load_any
from conversion.onnx_export import ACTIVATIONS, resolve_activations, to_onnx  # noqa: F401
from conversion.step_graph import build_step_graph
from conversion.tflite_export import to_tflite
from runtime.files import atomic_write
from training.config import load_config, model_config


@dataclass(frozen=True)
class Target:
    name: str
    suffix: str
    rules: Callable[[bool], tuple[str, ...]]  # quantized -> op rules the emitter needs (conversion/ops/)
    emit: Callable[..., bytes]  # (graph, states, **options) -> model file bytes
    check: Callable[..., dict[str, Any]]  # (model, offline graph, emitted graph, bytes, audio) -> report


def _check_onnx(model: Any, g: Graph, emitted: Graph, raw: bytes, audio: np.ndarray | None) -> dict[str, Any]:
    if emitted is g:
        return checks.check_onnx(model, g, raw, audio)
    return {**checks.check_onnx_scales(emitted, raw, "ONNX step model"),
            **checks.check_stream(model, g, raw, audio, ".onnx", "ONNX")}


def _check_tflite(model: Any, g: Graph, emitted: Graph, raw: bytes, audio: np.ndarray | None) -> dict[str, Any]:
    if emitted is g:
        return checks.check_tflite(model, g, raw, audio)
    return checks.check_step(model, g, raw, audio)


TARGETS = {
    "onnx": Target("onnx", ".onnx", lambda quantized: ("onnx",), to_onnx, _check_onnx),
    "tflite": Target("tflite", ".tflite", lambda quantized: ("tf", "int8") if quantized else ("tf",),
                     lambda g, states: to_tflite(g, states), _check_tflite),
}


def convert(checkpoint: str | Path, output: str | Path, target: str, float_model: bool = False,
            yaml: str | None = None, step_frames: int | None = None, audio: np.ndarray | None = None,
            strict: bool = True, **emit_options: Any) -> dict[str, Any]:
    """Checkpoint -> model file of `target` (onnx | tflite), checked stage by stage; returns the checks'
    report (with "path"). With step_frames: the streaming step model (K frames per call, explicit state).
    audio: int16 check audio (default: the first calibration clip). strict=False (benchmarks of random
    networks only) writes the model even when a stage check fails, with the failure in report["check_failed"]."""
    t = TARGETS[target]
    cfg = model_config(load_config(yaml)) if yaml else None
    model = load_any(checkpoint, cfg)  # 1. checkpoint
    if float_model and model.cfg.quantize:  # the float network of a QAT checkpoint: checked against it
        from training.quant import without_quantizers
        model = without_quantizers(model)
    g = build_graph(model, quantized=not float_model)  # 2. graph
    ops.prepare(model, g)
    emitted, states = build_step_graph(g, step_frames) if step_frames else (g, None)
    ops.require(emitted.ops, t.rules(emitted.quantized))  # 3. rules
    raw = t.emit(emitted, states, **emit_options)  # 4. emit
    try:
        report = t.check(model, g, emitted, raw, audio)  # 5. check
    except ConversionError as e:
        if strict:
            raise
        report = {"check_failed": str(e)}
    atomic_write(output, lambda tmp: Path(tmp).write_bytes(raw))  # 6. write
    report["path"] = str(output)
    return report


def export_onnx(checkpoint: str | Path, output: str | Path, float_model: bool = False, yaml: str | None = None,
                step_frames: int | None = None, activations: str = "auto", audio: np.ndarray | None = None,
                strict: bool = True) -> Path:
    """Checkpoint -> .onnx, checked stage by stage, written atomically; with step_frames, the streaming
    step model. activations: "int8", "uint8" or "auto" (conversion.onnx_export.resolve_activations)."""
    activations = resolve_activations(activations)
    return Path(convert(checkpoint, output, "onnx", float_model, yaml, step_frames, audio, strict,
                        activations=activations)["path"])


def convert_tflite(checkpoint: str | Path, output: str | Path, float_model: bool = False,
                   yaml: str | None = None, audio: np.ndarray | None = None,
                   step_frames: int | None = None, strict: bool = True) -> dict[str, Any]:
    """Checkpoint -> .tflite, checked stage by stage; returns a report. Writes the file atomically.
    With step_frames: the streaming step model (K frames per call, explicit int8 state)."""
    return convert(checkpoint, output, "tflite", float_model, yaml, step_frames, audio, strict)
