"""Stage-by-stage numerical checks of a conversion (conversion/pipeline.py runs them for both targets);
a failed check raises ConversionError.

TFLite: (1) the TF graph (with its FakeQuant ops) against the fake-quant torch model, (2) the TFLite
model: fully integer, QAT scales kept, outputs against the fake-quant torch model.
ONNX: (1) the same ONNX emitters with quantization off against the float torch model (the lowering
alone), (2) the QDQ model: every QAT grid on its own tensor (by name), outputs through onnxruntime against
the fake-quant torch model.
Step models (both): the scale checks, then streamed through the runtime against the offline fake-quant model.
The check audio is calibration_data/*.wav (shipped with the repo).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from conversion.errors import ConversionError
from conversion.graph import Graph
from conversion.onnx_export import graph_to_onnx
from conversion.parity import compare, torch_outputs
from conversion.tflite_export import tensor_report, tf_function
from runtime import pipeline, qmath
from runtime.audio import read_audio, to_int16

CALIBRATION_DIR = Path(__file__).resolve().parent.parent / "calibration_data"
# Bounds, dB of the combined output against the torch model.
# The lowering itself is checked without quantization, where both sides are float: >= 60 dB.
# With int8 rounding, values within ~0.003 LSB of a tie round one way in the fake-quant model and
# the other way in TF's FakeQuant graph or TFLite's kernels (0.2 % of the first conv's outputs in
# TFLite, optimized and reference kernels alike; upstream: tensorflow issues 99072, 104605), and
# these 1-LSB flips cascade through the TCN: measured 28.4 dB (TFLite, demo model, worst shipped
# sample) before the PReLUs were put on XNNPACK's exact grid (grids.snap_prelu; now 45.4 dB, README
# "Parity"), and 16.3 dB (TFLite) / 18.5 dB (TF graph) on the random full-size model, whose random
# weights amplify flips. So the int8 stages fail only below 15 dB, which still catches a wrong lowering
# (~0 dB); tests bound the parity on the demo model and the quality against clean speech.
# Since then load_model puts learned-range QAT models on tie-free grids (training/grids.py: no value within
# 4.9e-4 LSB of a tie), and their deployed models are bit-exact with fake-quant (demo model: every code of
# the six samples, ONNX and TFLite). The bounds stay for what those grids do not cover: vanilla QAT and
# imported models, random networks, integer norms.
MIN_SNR_TF_GRAPH = 15.0
MIN_SNR_TFLITE_INT8 = 15.0
MIN_SNR_FLOAT = 60.0
# The ONNX QDQ model through onnxruntime: its int8 kernels (QLinearConv, QLinearAdd, ...) requantize in
# their own float / fixed-point arithmetic, so the same ~0.003-LSB rounding ties flip against float32
# fake-quant as in TFLite and cascade the same way: the TFLite bound, for the same reason. Measured on
# the first check clip: demo model 218 dB (bit-exact there; 46.0-67.7 dB on the shipped samples,
# test_onnx.py), test_tflite's random gLN / cLN models 23.3 / 23.7 dB (as their TFLite models), the
# random full-size BN model (conversion/fullsize.py) 18.5 dB offline and as a uint8 step model. So this
# bound only catches gross errors (~0 dB: a missing op, a wrong grid); the lowering itself is checked by
# the float stage first (quantizers off, the same emitters, MIN_SNR_FLOAT; 138 dB on the demo model): a
# PReLU emitted as ReLU (tests/test_ops.py) gives 12.4 dB there, but still 15.8 dB at the int8 stage.
MIN_SNR_ONNX_INT8 = 15.0
# Models with integer gLN / cLN (int_norm ops): the fake-quant torch model computes its norms in float,
# the deployed models (TF graph, TFLite, ONNX alike) with int8 internals on grids no QAT quantizer
# learned, so every int8 stage also measures that approximation, compounded over the norms (each
# alone 27-34 dB from the float norm, README "gLN / cLN in integer arithmetic"). Measured: 17.5 dB
# (full-size random gLN, conversion/import_bench.py), 23.3 / 23.7 dB (test_tflite's random gLN / cLN),
# 13.5 dB (test_import's random asteroid-layout gLN model after PTQ: 13.49 dB in the TF graph, TFLite
# and ONNX alike, so not a lowering error). Their int8 stages fail below 10 dB; the float stage (60 dB)
# still checks their lowering.
MIN_SNR_INT_NORM = 10.0


def int8_bound(g: Graph, bound: float) -> float:
    """The bound of an int8 stage of graph g: `bound`, or MIN_SNR_INT_NORM with integer norms (above)."""
    return min(bound, MIN_SNR_INT_NORM) if any(op.kind == "int_norm" for op in g.ops) else bound


def check_audio(sample_rate: int, seconds: float = 2.0) -> np.ndarray:
    """int16 PCM of the first calibration clip, at most `seconds` long."""
    files = sorted(CALIBRATION_DIR.glob("*.wav"))
    if not files:
        raise ConversionError(f"no check audio in {CALIBRATION_DIR}")
    x, _ = read_audio(files[0], sample_rate)
    return to_int16(x[: int(seconds * sample_rate)])


def fully_integer(report: dict[str, Any]) -> list[str]:
    """Names of tensors that are neither int8 nor int32."""
    return [n for n, t in report["tensors"].items() if t["dtype"] not in ("int8", "int32")]


def scale_mismatches(g: Graph, report: dict[str, Any]) -> list[str]:
    """Per tensor: TFLite int8 activation tensors whose (scale, zero point) is not one their op may carry,
    and QAT quantizers with no tensor of exactly their (scale, zero point) among their op's tensors.

    TFLite names a tensor after the TF ops fused into it, each under its graph op's name scope
    ("b0_res/BiasAdd;b0_res/Conv2D"). A tensor of op X may carry X's own grid, the grid of one of X's
    inputs (a Pad or a slice before the kernel keeps its input's grid) or, for an integer norm, one of
    its calibrated internal grids. Tensors named after no graph op (the model input, ops a step model
    adds) need only carry some grid of the graph."""
    from conversion.ops.int_norm import internal_qparams
    key = lambda qp: (np.float32(qp[0]), int(qp[1]))  # noqa: E731
    qp_of = {g.input: (qmath.IO_SCALE, 0), **{op.output: op.qp for op in g.ops}}
    allowed = {op.output: {key(q) for q in [op.qp, *(qp_of.get(i) for i in op.inputs),
                                            *(op.attrs.get("int_qp") or {}).values()] if q is not None}
               for op in g.ops}
    anywhere = {key(q) for q in [*qp_of.values(), *internal_qparams(g)] if q is not None}
    close = lambda a, pool: any(abs(a[0] - b[0]) <= 1e-6 * a[0] and a[1] == b[1] for b in pool)  # noqa: E731
    bad, found = [], {}
    for name, t in report["tensors"].items():
        if t["dtype"] != "int8" or len(t["scales"]) != 1:
            continue
        have = (np.float32(t["scales"][0]), int(t["zero_points"][0]))
        scopes = {part.split("/")[0] for part in name.split(";") if "/" in part} & allowed.keys()
        for x in scopes:
            found.setdefault(x, []).append(have)
        if not close(have, set().union(*(allowed[x] for x in scopes)) if scopes else anywhere):
            where = f" (op {'/'.join(sorted(scopes))})" if scopes else ""
            bad.append(f"TFLite {name} {have[0]:.6g}/{have[1]}{where}")
    for op in g.ops:
        if op.qp is None:
            continue
        pool = found.get(op.output)
        if not close(key(op.qp), pool if pool is not None else
                     {(np.float32(t["scales"][0]), int(t["zero_points"][0])) for t in report["tensors"].values()
                      if t["dtype"] == "int8" and len(t["scales"]) == 1}):
            bad.append(f"QAT {op.output} {op.qp[0]:.6g}/{op.qp[1]}")
    return bad


def check_integer(g: Graph, raw: bytes, what: str) -> dict[str, Any]:
    """Op counts; for a quantized graph: every tensor int8/int32 and exactly the QAT scales."""
    rep = tensor_report(raw)
    report: dict[str, Any] = {"ops": {k: rep["ops"].count(k) for k in sorted(set(rep["ops"]))}}
    if g.quantized:
        floats = fully_integer(rep)
        report["fully_integer"] = not floats
        if floats:
            raise ConversionError(f"{what} has {len(floats)} non-integer tensors, e.g. {floats[:3]}")
        bad = scale_mismatches(g, rep)
        report["qat_scales_kept"] = not bad
        if bad:
            raise ConversionError(f"{what} scales differ from the QAT ones: {bad[:4]}")
    return report


def _run_tf(g: Graph, x: np.ndarray) -> np.ndarray:
    """The TF graph (any length) on a model input; outputs in the model's units."""
    fn = tf_function(g, length=None)
    tf_in = (x.astype(np.float32) * (qmath.IO_SCALE if x.dtype == np.int8 else 1.0)).T[None, None]
    outs = fn(tf_in)
    y = np.stack([outs[f"o{i:03d}"].numpy().reshape(-1) for i in range(len(g.outputs))])
    if x.dtype != np.int8:
        return y
    return np.stack([qmath.quantize(c, s, z) for c, (s, z) in zip(y, pipeline.output_qparams(g.meta))]).astype(np.int8)


def _run_onnx(g: Graph, x: np.ndarray) -> np.ndarray:
    """A float graph emitted as ONNX, run by onnxruntime on a float model input [S, T]: outputs [C, T]."""
    import onnxruntime as ort
    sess = ort.InferenceSession(graph_to_onnx(g).SerializeToString(), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)[None]})
    return np.stack([o.reshape(-1) for o in outs])


def _float_lowering_snr(model: Any, x: np.ndarray, run=None) -> float:
    """SNR of the graph emitted with quantization off (run: _run_tf, the default, or _run_onnx) against
    the torch model with quantizers off, on the same (splitter) input: checks the lowering itself,
    free of int8 rounding."""
    import torch
    from conversion.graph import build_graph
    from conversion.parity import to_wave
    from runtime.metrics import snr
    from training.quant import without_quantizers
    plain = without_quantizers(model)
    g = build_graph(plain, quantized=False)
    xf = (x.astype(np.float32) * qmath.IO_SCALE)
    with torch.no_grad():
        ref = np.stack([o[0, 0].numpy() for o in plain.eval()(torch.from_numpy(xf)[None])])
    return snr(to_wave((run or _run_tf)(g, xf), g.meta), to_wave(ref, g.meta))


def check_tflite(model: Any, g: Graph, raw: bytes, pcm: np.ndarray | None = None) -> dict[str, Any]:
    """Run all checks; returns the measured figures."""
    from runtime.backends import TfliteBackend
    pcm = check_audio(g.meta["sample_rate"]) if pcm is None else pcm
    x = pipeline.pre(pcm, g.meta)
    ref = torch_outputs(model, x)
    # Stage 1: the TF graph itself, (a) without quantization: the lowering alone, to float precision;
    # (b) with its FakeQuant ops against the fake-quant model (rounding-tie flips cascade, see above).
    report: dict[str, Any] = {}
    if g.quantized:
        report["tf_graph_float"] = {"snr_db": _float_lowering_snr(model, x)}
        if report["tf_graph_float"]["snr_db"] < MIN_SNR_FLOAT:
            raise ConversionError(f"float TF graph disagrees with the float torch model: "
                                  f"{report['tf_graph_float']['snr_db']:.1f} dB < {MIN_SNR_FLOAT} dB")
    report["tf_graph"] = compare(ref, _run_tf(g, x), g.meta)
    bound = int8_bound(g, MIN_SNR_TF_GRAPH) if g.quantized else MIN_SNR_FLOAT
    if report["tf_graph"]["snr_db"] < bound:
        raise ConversionError(f"TF graph disagrees with the torch model: {report['tf_graph']['snr_db']:.1f} dB < {bound} dB")
    # Stage 2: the TFLite model.
    report.update(check_integer(g, raw, "TFLite model"))
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "m.tflite"
        p.write_bytes(raw)
        be = TfliteBackend(p)
        report["tflite"] = compare(ref, be.run(x), g.meta)
    bound = int8_bound(g, MIN_SNR_TFLITE_INT8) if g.quantized else MIN_SNR_FLOAT
    if report["tflite"]["snr_db"] < bound:
        raise ConversionError(f"TFLite model disagrees with the torch model: {report['tflite']['snr_db']:.1f} dB < {bound} dB")
    return report


def _stream_float(path: Path, pcm: np.ndarray) -> np.ndarray:
    """A float step model streamed over pcm (no int16 rounding of its output): the waveform [len(pcm)]."""
    from conversion.parity import to_wave
    from runtime.backends import load_backend
    be = load_backend(path)
    K, skip = int(be.meta["step_samples"]), int(be.meta["stream_offset_samples"])
    n = -(-(len(pcm) + skip) // K) * K
    x = pipeline.codes(np.pad(pcm, (0, n - len(pcm))), be.meta)
    states, outs = be.initial_states(), []
    for i in range(0, n, K):
        y, states = be.run_step(x[:, i: i + K], states)
        outs.append(y)
    return to_wave(np.concatenate(outs, axis=1), be.meta)[skip: skip + len(pcm)]


def check_stream(model: Any, g: Graph, raw: bytes, pcm: np.ndarray | None = None, suffix: str = ".tflite",
                 what: str = "TFLite") -> dict[str, Any]:
    """A step (streaming) model file (`suffix`: .tflite or .onnx), streamed through the runtime: its output
    against the offline fake-quant torch model (g: the offline graph)."""
    from conversion.parity import to_wave
    from runtime.enhancer import Enhancer
    from runtime.metrics import snr
    pcm = check_audio(g.meta["sample_rate"]) if pcm is None else pcm
    x = pipeline.pre(pcm, g.meta)
    ref = to_wave(torch_outputs(model, x), g.meta)[g.meta["stride"]: g.meta["stride"] + len(pcm)]
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / ("step" + suffix)
        p.write_bytes(raw)
        if g.quantized:
            y = Enhancer.from_file(p).enhance(pcm) / 32768.0
            if g.meta.get("estimate") == "noise":  # the runtime subtracted the model's output from its input
                y = pcm / 32768.0 - y
        else:  # float outputs as they are: int16 PCM would cap the SNR at its rounding noise (45 dB measured
            y = _stream_float(p, pcm)  # on the full-size float model, whose output is quiet)
    key = suffix.lstrip(".")
    report = {key: {"snr_db": snr(y, ref)}}
    bound = int8_bound(g, MIN_SNR_TFLITE_INT8 if key == "tflite" else MIN_SNR_ONNX_INT8) if g.quantized else MIN_SNR_FLOAT
    if report[key]["snr_db"] < bound:
        raise ConversionError(f"streamed {what} step model disagrees with the torch model: {report[key]['snr_db']:.1f} dB < {bound} dB")
    return report


def check_step(model: Any, g: Graph, raw: bytes, pcm: np.ndarray | None = None) -> dict[str, Any]:
    """A step (streaming) TFLite model: fully integer, QAT scales kept, and streamed through the
    runtime its output against the offline fake-quant torch model."""
    report = check_integer(g, raw, "step model")
    report.update(check_stream(model, g, raw, pcm, ".tflite"))
    return report


def onnx_scale_mismatches(g: Graph, proto: Any) -> list[str]:
    """Per tensor, by name: each quantized op's output grid (`<op>_scale`, `<op>_zp`), each conv's per-channel
    weight scales (`<op>_w_scale`) and each integer norm's internal grids (`<op>_f_<k>_scale`) as the graph
    has them (zero points + 128 in a uint8 model). Returns what differs or is missing."""
    from onnx import TensorProto, numpy_helper
    inits = {i.name: i for i in proto.graph.initializer}
    shift = 128 if proto.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8 else 0
    want: dict[str, tuple[float, int]] = {}
    for op in g.ops:
        if op.qp is not None:
            want[op.output] = op.qp
        for k, qp in (op.attrs.get("int_qp") or {}).items() if op.kind == "int_norm" else ():
            if op.attrs["mode"] == "gLN" or not k.endswith("_t"):
                want[f"{op.output}_f_{k}"] = qp
    bad = []
    for name, (scale, zp) in want.items():
        if name + "_scale" not in inits or name + "_zp" not in inits:
            bad.append(f"{name}: no QDQ pair")
            continue
        s, z = numpy_helper.to_array(inits[name + "_scale"]), numpy_helper.to_array(inits[name + "_zp"])
        if s != np.float32(scale) or int(z) != zp + shift:
            bad.append(f"{name}: {float(s):.6g}/{int(z) - shift} instead of {scale:.6g}/{zp}")
    for op in g.ops:
        if op.kind == "conv" and "w_scale" in op.attrs:
            ws = inits.get(op.output + "_w_scale")
            if ws is None or not np.array_equal(numpy_helper.to_array(ws), op.attrs["w_scale"].astype(np.float32)):
                bad.append(f"{op.output}: weight scales differ from the QAT ones")
    return bad


def check_onnx_scales(g: Graph, raw: bytes, what: str) -> dict[str, Any]:
    """A quantized ONNX model (g: the graph it was emitted from) keeps every QAT grid, tensor by tensor."""
    import onnx
    if not g.quantized:
        return {}
    bad = onnx_scale_mismatches(g, onnx.load_from_string(raw))
    if bad:
        raise ConversionError(f"{what} scales differ from the QAT ones: {bad[:4]}")
    return {"qat_scales_kept": True}


def check_onnx(model: Any, g: Graph, raw: bytes, pcm: np.ndarray | None = None) -> dict[str, Any]:
    """An offline ONNX model: (1) the ONNX emitters with quantization off against the float torch model (the
    lowering alone), (2) every QAT grid kept tensor by tensor, outputs through onnxruntime against the
    fake-quant torch model. Returns the measured figures."""
    from runtime.backends import OnnxBackend
    pcm = check_audio(g.meta["sample_rate"]) if pcm is None else pcm
    x = pipeline.pre(pcm, g.meta)
    report: dict[str, Any] = {}
    if g.quantized:
        report["onnx_graph_float"] = {"snr_db": _float_lowering_snr(model, x, _run_onnx)}
        if report["onnx_graph_float"]["snr_db"] < MIN_SNR_FLOAT:
            raise ConversionError(f"float ONNX graph disagrees with the float torch model: "
                                  f"{report['onnx_graph_float']['snr_db']:.1f} dB < {MIN_SNR_FLOAT} dB")
    report.update(check_onnx_scales(g, raw, "ONNX model"))
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "m.onnx"
        p.write_bytes(raw)
        report["onnx"] = compare(torch_outputs(model, x), OnnxBackend(p).run(x), g.meta)
    bound = int8_bound(g, MIN_SNR_ONNX_INT8) if g.quantized else MIN_SNR_FLOAT
    if report["onnx"]["snr_db"] < bound:
        raise ConversionError(f"ONNX model disagrees with the torch model: {report['onnx']['snr_db']:.1f} dB < {bound} dB")
    return report
