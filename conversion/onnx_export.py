"""The deploy graph as ONNX in QDQ form, with exactly the QAT scales (`fqse export`: conversion/pipeline.py).

Input: the splitter's S int8 code streams [1, S, T] (scale 1/128, zero point 0). Outputs: C int8
streams [1, 1, T] for the host combiner. Weights are int8 initializers (per output channel) followed
by DequantizeLinear; biases int32 at input_scale x weight_scale; every QAT activation quantizer is a
QuantizeLinear/DequantizeLinear pair. T is dynamic (a multiple of the hop).
"""
from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from conversion import ops
from conversion.graph import Graph
from runtime import modelmeta, qmath

OPSET = 17


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.qps: dict[str, tuple[float, int]] = {}

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def qdq(self, x: str, name: str, qp: tuple[float, int] | None, q_name: str | None = None) -> str:
        """Quantize x with qp and dequantize back (the float-domain tensor gets `name`)."""
        if qp is None:
            return self.node("Identity", [x], name)
        s = self.const(name + "_scale", np.float32(qp[0]))
        z = self.const(name + "_zp", np.int8(qp[1]))
        q = self.node("QuantizeLinear", [x, s, z], q_name or name + "_q")
        self.qps[name] = qp
        return self.node("DequantizeLinear", [q, s, z], name)


def graph_to_onnx(g: Graph, states: list | None = None) -> onnx.ModelProto:
    """Emit an ONNX model (QDQ when g.quantized) from the deploy graph (a step graph with its states):
    each op by its kind's ONNX emitter (conversion/ops/)."""
    ops.require(g.ops, ("onnx",))
    b = _Builder()
    states = states or []
    S, C = g.meta["n_splitter"], g.meta["n_combiner"]
    if g.quantized:
        inp = helper.make_tensor_value_info("codes", TensorProto.INT8, [1, S, g.meta.get("step_samples", "T")])
        b.qps["codes"] = (qmath.IO_SCALE, 0)
        s = b.const("io_scale", np.float32(qmath.IO_SCALE))
        z = b.const("io_zp", np.int8(0))
        b.node("DequantizeLinear", ["codes", s, z], g.input)
        b.qps[g.input] = (qmath.IO_SCALE, 0)
    else:
        inp = helper.make_tensor_value_info(g.input, TensorProto.FLOAT, [1, S, g.meta.get("step_samples", "T")])
    etype = TensorProto.INT8 if g.quantized else TensorProto.FLOAT
    state_inputs = []
    for st in states:
        state_inputs.append(helper.make_tensor_value_info(st.name + ("_q" if g.quantized else ""), etype, [1, st.channels, st.length]))
        if g.quantized:
            sc, zp = b.const(st.name + "_scale", np.float32(st.qp[0])), b.const(st.name + "_zp", np.int8(st.qp[1]))
            b.node("DequantizeLinear", [st.name + "_q", sc, zp], st.name)
            b.qps[st.name] = st.qp
    out_names = {name: f"out{i}" for i, name in enumerate(g.outputs)}
    out_names.update({st.next: st.name + "_next" for st in states})
    for op in g.ops:
        ops.rule(op, "onnx")(b, op, g.quantized)
        if op.output in out_names and not g.quantized:
            b.node("Identity", [op.output + "_f"], out_names[op.output])
            b.node("Identity", [op.output + "_f"], op.output)
        else:
            b.qdq(op.output + "_f", op.output, op.qp, out_names.get(op.output))
    T = g.meta.get("step_samples", "T")
    outs = [helper.make_tensor_value_info(f"out{i}", etype, [1, 1, T]) for i in range(C)]
    outs += [helper.make_tensor_value_info(st.name + "_next", etype, [1, st.channels, st.length]) for st in states]
    graph = helper.make_graph(b.nodes, "fqse_convtasnet", [inp, *state_inputs], outs, initializer=b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fqse")
    model.ir_version = 8
    helper.set_model_props(model, {"fqse": modelmeta.dumps(g.meta)})
    onnx.checker.check_model(model, full_check=True)
    return model


def as_uint8(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same QDQ model with uint8 activations and weights (every int8 code + 128, every int8 zero
    point + 128): the same real values, so the integer outputs equal the int8 form's + 128 exactly.
    onnxruntime runs it as U8U8 units, its fast int8 path on x86 (with or without VNNI); U8S8 (int8 weights) is
    not exact there (its AVX2 kernel saturates pairs of products to int16)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for i, init in enumerate(m.graph.initializer):
        if init.data_type == TensorProto.INT8:
            v = numpy_helper.to_array(init).astype(np.int16) + 128
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(v.astype(np.uint8), init.name))
    for v in [*m.graph.input, *m.graph.output]:
        if v.type.tensor_type.elem_type == TensorProto.INT8:
            v.type.tensor_type.elem_type = TensorProto.UINT8
    props = {p.key: p.value for p in m.metadata_props}
    meta = json.loads(props["fqse"])
    meta["activations"] = "uint8"
    del m.metadata_props[:]
    helper.set_model_props(m, {**props, "fqse": modelmeta.dumps(meta)})
    onnx.checker.check_model(m, full_check=True)
    return m


ACTIVATIONS = ("auto", "uint8", "int8")


def resolve_activations(activations: str) -> str:
    """"int8" (s8s8: for ARM), "uint8" (u8u8: fast on x86; the model's
    int8 boundary codes are shifted by the runtime), or "auto" (what suits this CPU,
    runtime.cpu.onnx_activations). Both forms give the same integer outputs."""
    if activations not in ACTIVATIONS:
        raise ValueError(f"activations {activations!r}: use one of {', '.join(ACTIVATIONS)}")
    if activations == "auto":
        from runtime.cpu import onnx_activations
        activations = onnx_activations()
    return activations


def to_onnx(g: Graph, states: list | None = None, activations: str = "int8") -> bytes:
    """The deploy graph (a step graph with its states) as the bytes of a sealed .onnx file."""
    proto = graph_to_onnx(g, states)
    if resolve_activations(activations) == "uint8" and g.quantized:
        proto = as_uint8(proto)
    return modelmeta.seal(proto.SerializeToString())
