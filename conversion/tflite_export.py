"""`fqse convert`: the deploy graph as a fully-integer TFLite model that keeps the QAT scales.

The graph is written in TensorFlow with FakeQuant ops carrying exactly the QAT ranges (weights per
channel, narrow range; activations per tensor, nudged ranges), which the TFLite converter turns into
int8 kernels without calibration. Layout NHWC [1, 1, T, C]; int8 input (S code streams) and C int8
outputs. Then every stage is checked: the TF graph against the ONNX/IR reference (float), the TFLite
model's scales against the QAT ones (tensor by tensor) and its outputs against the fake-quant model.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from conversion.graph import Graph, Op, build_graph
from conversion.step_graph import build_step_graph
from runtime import modelmeta, qmath
from runtime.files import atomic_write
from conversion import int_norm
from conversion.importers import load_any
from training.config import load_config, model_config


# Traced length (samples); the dilated convs only lower to native dilated int8 kernels with a static
# shape. The model is resized to any other length (a multiple of the hop) at run time.
TRACE_LEN = 4096


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's start-up noise (CUDA probes, oneDNN)


class ConversionError(RuntimeError):
    """A conversion stage disagreed with the one before it, or the model cannot be lowered."""


def _fq(tf, x, qp, name=None):
    if qp is None:
        return x
    scale, zp = qp
    lo, hi = qmath.grid_range(scale, zp)
    return tf.quantization.fake_quant_with_min_max_args(x, min=lo, max=hi, num_bits=8, name=name)


def _weights(tf, op: Op, quantized: bool, depthwise: bool):
    """Conv weights [Cout, Cin/g, K] -> TF layout, fake-quantized per output channel (narrow range)."""
    w = op.attrs["w_float"]
    if depthwise:  # [C, 1, K] -> [1, K, C, 1]
        wt = np.transpose(w[:, 0, :], (1, 0))[None, :, :, None]
    else:  # [Cout, Cin, K] -> [1, K, Cin, Cout]
        wt = np.transpose(w, (2, 1, 0))[None]
    wt = tf.constant(wt.astype(np.float32))
    if not quantized:
        return wt
    m = qmath.weight_absmax(op.attrs["w_scale"]).astype(np.float32)
    if depthwise:  # quantize over C (axis 2), which becomes the last axis of TFLite's depthwise filter
        wt = tf.transpose(wt, (0, 1, 3, 2))
        wt = tf.quantization.fake_quant_with_min_max_vars_per_channel(wt, -m, m, num_bits=8, narrow_range=True)
        return tf.transpose(wt, (0, 1, 3, 2))
    return tf.quantization.fake_quant_with_min_max_vars_per_channel(wt, -m, m, num_bits=8, narrow_range=True)


def _emit(tf, op: Op, env: dict, quantized: bool):
    a = op.attrs
    x = env[op.inputs[0]]
    if op.kind == "conv":
        depthwise = a["groups"] > 1
        if a["groups"] not in (1, a["w_float"].shape[0]):
            raise ConversionError(f"{op.output}: grouped conv with {a['groups']} groups is not supported")
        if any(a["pad"]):
            x = tf.pad(x, [[0, 0], [0, 0], list(a["pad"]), [0, 0]])
        w = _weights(tf, op, quantized, depthwise)
        if depthwise:
            y = tf.nn.depthwise_conv2d(x, w, strides=[1, 1, 1, 1], padding="VALID", dilations=[1, a["dilation"]])
        else:
            y = tf.nn.conv2d(x, w, strides=[1, 1, a["stride"], 1], padding="VALID", dilations=[1, 1, a["dilation"], 1])
        if a["bias"] is not None:
            y = tf.nn.bias_add(y, tf.constant(a["bias"]))
        return y
    if op.kind == "prelu":
        return tf.nn.leaky_relu(x, alpha=a["alpha"])
    if op.kind == "relu":
        return tf.nn.relu(x)
    if op.kind in ("add", "sub", "mul"):
        b = env[op.inputs[1]]
        return {"add": tf.add, "sub": tf.subtract, "mul": tf.multiply}[op.kind](x, b)
    if op.kind == "norm":
        return int_norm.emit_tf(tf, x, a, _fq)
    if op.kind == "concat_t":
        return tf.concat([x, env[op.inputs[1]]], axis=2)
    if op.kind == "slice":
        (c0, c1), (t0, t1) = a.get("ch", (0, None)), a.get("t", (0, None))
        return x[:, :, t0:t1, c0:c1]
    if op.kind == "ola_step":
        s = a["stride"]
        shifted = tf.concat([env[op.inputs[1]], x[:, :, :, s:]], axis=2)[:, :, :-1, :]
        return tf.reshape(x[:, :, :, :s] + shifted, [1, 1, -1, 1])
    if op.kind == "ola":
        s = a["stride"]
        first = tf.pad(x[:, :, :, :s], [[0, 0], [0, 0], [0, 1], [0, 0]])
        second = tf.pad(x[:, :, :, s:], [[0, 0], [0, 0], [1, 0], [0, 0]])
        return tf.reshape(first + second, [1, 1, -1, 1])
    raise ConversionError(f"unknown op {op.kind}")


def tf_function(g: Graph, length: int | None = TRACE_LEN, states: list | None = None):
    """A tf.function [1, 1, T, S] (+ states [1, 1, n, C]) -> C x [1, 1, T, 1] (+ new states), NHWC.

    T = length (None: any); a step graph has its own fixed T. Outputs are keyed o000, o001, ... so
    that their order in the TFLite model is: the C outputs, then the new states in `states` order."""
    import tensorflow as tf
    states = states or []
    S = g.meta["n_splitter"]
    T = g.meta.get("step_samples", length)
    io_qp = (qmath.IO_SCALE, 0) if g.quantized else None
    sig = [tf.TensorSpec([1, 1, T, S], tf.float32, name="codes")]
    sig += [tf.TensorSpec([1, 1, st.length, st.channels], tf.float32, name=st.name) for st in states]

    @tf.function(input_signature=sig)
    def fn(x, *state_values):
        env = {g.input: _fq(tf, x, io_qp)}
        for st, v in zip(states, state_values):
            env[st.name] = _fq(tf, v, st.qp if g.quantized else None)
        for op in g.ops:
            with tf.name_scope(op.output):  # TFLite tensor names start with the op's name (per-tensor scale check)
                env[op.output] = _fq(tf, _emit(tf, op, env, g.quantized), op.qp, op.output)
        names = list(g.outputs) + [st.next for st in states]
        return {f"o{i:03d}": env[n] for i, n in enumerate(names)}

    return fn


def to_tflite(g: Graph, states: list | None = None) -> bytes:
    if g.quantized and any(op.kind == "norm" and "int_qp" not in op.attrs for op in g.ops):
        raise ConversionError(f"{g.meta['norm_type']} normalization has no integer-only TFLite form without its "
                              "internal ranges (conversion.int_norm.prepare)")
    import tensorflow as tf
    fn = tf_function(g, states=states)
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    if g.quantized:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    raw = conv.convert()
    return add_metadata(raw, g.meta)


def add_metadata(raw: bytes, meta: dict) -> bytes:
    """Mark the time axis dynamic and store the runtime's metadata as a TFLite metadata buffer ("fqse")."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(raw, 0))
    sub = model.subgraphs[0]
    if meta.get("mode") != "step":
        for i in list(sub.inputs) + list(sub.outputs):  # traced at TRACE_LEN; runs at any length
            t = sub.tensors[i]
            t.shapeSignature = np.array([-1 if d == TRACE_LEN else int(d) for d in t.shape], dtype=np.int32)
    buf = schema.BufferT()
    buf.data = np.frombuffer(modelmeta.dumps(meta).encode(), dtype=np.uint8)
    model.buffers.append(buf)
    md = schema.MetadataT()
    md.name = "fqse"
    md.buffer = len(model.buffers) - 1
    model.metadata = (model.metadata or []) + [md]
    b = flatbuffers.Builder(len(raw) + 4096)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return modelmeta.seal(bytes(b.Output()))


def tensor_report(raw: bytes) -> dict[str, Any]:
    """Tensor dtypes and quantization parameters of a .tflite file, by tensor name."""
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_content=raw)
    out = {}
    for d in it.get_tensor_details():
        qp = d["quantization_parameters"]
        out[d["name"]] = {"dtype": np.dtype(d["dtype"]).name, "scales": qp["scales"], "zero_points": qp["zero_points"]}
    ops = [o["op_name"] for o in it._get_ops_details()]
    return {"tensors": out, "ops": ops}


def convert_tflite(checkpoint: str | Path, output: str | Path, float_model: bool = False,
                   yaml: str | None = None, audio: np.ndarray | None = None,
                   step_frames: int | None = None) -> dict[str, Any]:
    """Checkpoint -> .tflite, checked stage by stage; returns a report. Writes the file atomically.
    With step_frames: the streaming step model (K frames per call, explicit int8 state)."""
    from conversion.checks import check_step, check_tflite
    cfg = model_config(load_config(yaml)) if yaml else None
    model = load_any(checkpoint, cfg)
    g = build_graph(model, quantized=not float_model)
    int_norm.prepare(model, g)  # gLN / cLN: int8 internals, calibrated
    if step_frames:
        sg, states = build_step_graph(g, step_frames)
        raw = to_tflite(sg, states)
        report = check_step(model, g, raw, audio)
    else:
        raw = to_tflite(g)
        report = check_tflite(model, g, raw, audio)
    atomic_write(output, lambda tmp: Path(tmp).write_bytes(raw))
    report["path"] = str(output)
    return report
