"""The deploy graph as a fully-integer TFLite model that keeps the QAT scales (`fqse convert`:
conversion/pipeline.py).

The graph is written in TensorFlow with FakeQuant ops carrying exactly the QAT ranges (weights per
channel, narrow range; activations per tensor, nudged ranges), which the TFLite converter turns into
int8 kernels without calibration. Layout NHWC [1, 1, T, C]; int8 input (S code streams) and C int8
outputs. The pipeline then checks every stage (conversion/checks.py): the TF graph against the torch
model (float and fake-quant), the TFLite model's scales against the QAT ones and its outputs against
the fake-quant model.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from conversion import ops
from conversion.errors import ConversionError  # noqa: F401 - importable from here too
from conversion.graph import Graph
from conversion.ops import fake_quant
from runtime import modelmeta, qmath


# Traced length (samples); the dilated convs only lower to native dilated int8 kernels with a static
# shape. The model is resized to any other length (a multiple of the hop) at run time.
TRACE_LEN = 4096


os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's start-up noise (CUDA probes, oneDNN)


_fq = fake_quant  # the FakeQuant of one int8 grid (conversion/ops/base.py)


def tf_function(g: Graph, length: int | None = TRACE_LEN, states: list | None = None):
    """A tf.function [1, 1, T, S] (+ states [1, 1, n, C]) -> C x [1, 1, T, 1] (+ new states), NHWC.

    T = length (None: any); a step graph has its own fixed T. Outputs are keyed o000, o001, ... so
    that their order in the TFLite model is: the C outputs, then the new states in `states` order.
    Each op by its kind's TF emitter (conversion/ops/)."""
    ops.require(g.ops, ("tf",))
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
                env[op.output] = _fq(tf, ops.rule(op, "tf")(tf, op, env, g.quantized), op.qp, op.output)
        names = list(g.outputs) + [st.next for st in states]
        return {f"o{i:03d}": env[n] for i, n in enumerate(names)}

    return fn


def to_tflite(g: Graph, states: list | None = None) -> bytes:
    ops.require(g.ops, ("tf", "int8") if g.quantized else ("tf",))
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
