"""Host pre/post-processing around a deployed model, in integer arithmetic (numpy only).

int16 PCM -> pad one hop each side (length a multiple of the hop) -> splitter -> S int8 streams ->
model -> C int8 streams -> combiner -> int16 PCM, cropped (a noise estimate: subtracted from the input). Float graphs take and give float waveforms.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from runtime import qmath


def padded_length(n: int, hop: int) -> int:
    """Model input length for n samples: one hop of zeros before, then rounded up to the hop plus two
    hops of zeros after (the residual block looks one frame further than the main output)."""
    return -(-n // hop) * hop + 3 * hop


def pre(pcm: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """int16 PCM [T] -> model input: int8 codes [S, T'] (or float [1, T'] for float graphs)."""
    hop = meta["stride"]
    total = padded_length(len(pcm), hop)
    x = np.zeros(total, np.int16)
    x[hop: hop + len(pcm)] = pcm
    return codes(x, meta)


def codes(x: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """int16 PCM [T] -> model input [S, T] without padding (streaming blocks)."""
    if meta["splitter"] and meta.get("quantized", True):
        return qmath.split_int16(x, meta["n_splitter"])
    if meta["splitter"]:  # float graph of a QAT model: float splitter values
        return np.stack(qmath.split(x.astype(np.float64) / 32768.0, meta["n_splitter"])).astype(np.float32) * qmath.IO_SCALE
    return (x.astype(np.float32) / 32768.0)[None]


def post(y: np.ndarray, n: int, meta: dict[str, Any]) -> np.ndarray:
    """Model outputs [C, T'] -> int16 PCM [n] (integer combiner), cropped to the input."""
    hop = meta["stride"]
    return combine(y, meta)[hop: hop + n]


def finish(pcm: np.ndarray, y: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """int16 model output aligned with the int16 input pcm -> the enhanced PCM: a noise-estimating model's
    output (metadata `estimate: noise`) is subtracted from the input; a speech estimate is the output."""
    return qmath.subtract_int16(pcm, y) if meta.get("estimate") == "noise" else y


def enhanced(y: np.ndarray, pcm: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """Model outputs [C, T'] for the int16 input pcm -> the enhanced int16 PCM [len(pcm)] (post, then finish)."""
    return finish(pcm, post(y, len(pcm), meta), meta)


def output_qparams(meta: dict[str, Any]) -> list[tuple[float, int]]:
    """(scale, zero point) of each int8 output (the fixed 1/128 grid unless the model says otherwise)."""
    return [(float(s), int(z)) for s, z in meta.get("output_qparams") or [(qmath.IO_SCALE, 0)] * meta["n_combiner"]]


def dequantize_outputs(y: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """int8 output codes [C, T] -> their real values (float64)."""
    return np.stack([qmath.dequantize(c.astype(np.float64), s, z) for c, (s, z) in zip(y, output_qparams(meta))])


def combine(y: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """Model outputs [C, T] -> int16 PCM [T] (integer combiner for int8 outputs on the 1/128 grid;
    outputs on learned grids are dequantized with their own scale and zero point first)."""
    if y.dtype == np.int8:
        if all(qp == (qmath.IO_SCALE, 0) for qp in output_qparams(meta)):
            return qmath.combine_int16(y)
        y = dequantize_outputs(y, meta)
    comb = qmath.combine([c / qmath.IO_SCALE for c in y]) if meta["splitter"] else y[0]
    return np.clip(np.round(comb * 32768.0), -32768, 32767).astype(np.int16)
