"""`fqse export`: the deploy graph as ONNX in QDQ form, with exactly the QAT scales.

Input: the splitter's S int8 code streams [1, S, T] (scale 1/128, zero point 0). Outputs: C int8
streams [1, 1, T] for the host combiner. Weights are int8 initializers (per output channel) followed
by DequantizeLinear; biases int32 at input_scale x weight_scale; every QAT activation quantizer is a
QuantizeLinear/DequantizeLinear pair. T is dynamic (a multiple of the hop).
"""
from __future__ import annotations

from pathlib import Path

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from conversion.graph import Graph, Op, build_graph
from conversion.step_graph import build_step_graph
from runtime import modelmeta, qmath
from runtime.files import atomic_write
from conversion import int_norm
from conversion.importers import load_any
from training.config import load_config, model_config

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


def _i64(*v: int) -> np.ndarray:
    return np.array(v, np.int64)


def _frame_halves(b: _Builder, frames: str, raw: str, s: int) -> tuple[str, str]:
    """Decoder frames [1, 2s, F] -> their first and second halves [1, s, F]."""
    first = b.node("Slice", [frames, b.const(raw + "_s0", _i64(0)), b.const(raw + "_e0", _i64(s)), b.const(raw + "_ax", _i64(1))], raw + "_first")
    second = b.node("Slice", [frames, b.const(raw + "_s1", _i64(s)), b.const(raw + "_e1", _i64(2 * s)), raw + "_ax"], raw + "_second")
    return first, second


def _frames_to_samples(b: _Builder, blocks: str, raw: str) -> None:
    """[1, s, F] blocks of samples -> [1, 1, F*s] waveform named raw."""
    t = b.node("Transpose", [blocks], raw + "_t", perm=[0, 2, 1])
    b.node("Reshape", [t, b.const(raw + "_shape", _i64(1, 1, -1))], raw)


def _emit(b: _Builder, op: Op, quantized: bool) -> None:
    x = op.inputs[0]
    raw = op.output + "_f"
    a = op.attrs
    if op.kind == "conv":
        if quantized:
            w_int = b.const(op.output + "_w", a["w_int"].astype(np.int8))
            ws = b.const(op.output + "_w_scale", a["w_scale"].astype(np.float32))
            wz = b.const(op.output + "_w_zp", np.zeros(len(a["w_scale"]), np.int8))
            w = b.node("DequantizeLinear", [w_int, ws, wz], op.output + "_wdq", axis=0)
        else:
            w = b.const(op.output + "_w", a["w_float"])
        ins = [x, w]
        if a["bias"] is not None:
            if quantized:
                bscale = qmath.bias_scale(b.qps[x][0], a["w_scale"]).astype(np.float32)
                b_int = qmath.bias_codes(a["bias"], b.qps[x][0], a["w_scale"]).astype(np.int32)
                bi = b.const(op.output + "_b", b_int)
                bs = b.const(op.output + "_b_scale", bscale)
                bz = b.const(op.output + "_b_zp", np.zeros(len(bscale), np.int32))
                ins.append(b.node("DequantizeLinear", [bi, bs, bz], op.output + "_bdq", axis=0))
            else:
                ins.append(b.const(op.output + "_b", a["bias"]))
        b.node("Conv", ins, raw, kernel_shape=[a["w_float"].shape[-1]], strides=[a["stride"]],
               dilations=[a["dilation"]], group=a["groups"], pads=list(a["pad"]))
    elif op.kind == "prelu":
        b.node("LeakyRelu", [x], raw, alpha=a["alpha"])
    elif op.kind == "relu":
        b.node("Relu", [x], raw)
    elif op.kind in ("add", "sub", "mul"):
        b.node(op.kind.capitalize(), op.inputs, raw)
    elif op.kind == "norm" and quantized and a.get("int_qp"):
        _emit_int_norm(b, x, raw, a)
    elif op.kind == "norm":
        axes = [1, 2] if a["mode"] == "gLN" else [1]
        mean = b.node("ReduceMean", [x], raw + "_mean", axes=axes, keepdims=1)
        d = b.node("Sub", [x, mean], raw + "_d")
        var = b.node("ReduceMean", [b.node("Mul", [d, d], raw + "_d2")], raw + "_var", axes=axes, keepdims=1)
        std = b.node("Sqrt", [b.node("Add", [var, b.const(raw + "_eps", np.float32(a["eps"]))], raw + "_ve")], raw + "_std")
        n = b.node("Div", [d, std], raw + "_n")
        g = b.node("Mul", [n, b.const(raw + "_g", a["gamma"].reshape(1, -1, 1).astype(np.float32))], raw + "_ng")
        b.node("Add", [g, b.const(raw + "_b", a["beta"].reshape(1, -1, 1).astype(np.float32))], raw)
    elif op.kind == "concat_t":
        b.node("Concat", op.inputs, raw, axis=2)
    elif op.kind == "slice":
        big = np.iinfo(np.int64).max
        (c0, c1), (t0, t1) = a.get("ch", (0, None)), a.get("t", (0, None))
        b.node("Slice", [x, b.const(raw + "_st", _i64(c0, t0)), b.const(raw + "_en", _i64(big if c1 is None else c1, big if t1 is None else t1)),
                         b.const(raw + "_axes", _i64(1, 2))], raw)
    elif op.kind == "ola_step":  # second halves shifted by one frame, the first from the state
        first, second = _frame_halves(b, x, raw, a["stride"])
        cat = b.node("Concat", [op.inputs[1], second], raw + "_cat", axis=2)
        shifted = b.node("Slice", [cat, b.const(raw + "_s2", _i64(0)), b.const(raw + "_e2", _i64(-1)), b.const(raw + "_ax2", _i64(2))], raw + "_shift")
        _frames_to_samples(b, b.node("Add", [first, shifted], raw + "_sum"), raw)
    elif op.kind == "ola":  # second halves shifted by one frame, zeros first
        first, second = _frame_halves(b, x, raw, a["stride"])
        pa = b.node("Pad", [first, b.const(raw + "_pa", _i64(0, 0, 0, 0, 0, 1))], raw + "_fa")
        pb = b.node("Pad", [second, b.const(raw + "_pb", _i64(0, 0, 1, 0, 0, 0))], raw + "_fb")
        _frames_to_samples(b, b.node("Add", [pa, pb], raw + "_sum"), raw)
    else:
        raise ValueError(f"unknown op {op.kind}")


def _emit_int_norm(b: _Builder, x: str, raw: str, a: dict) -> None:
    """gLN / cLN with every intermediate on its calibrated int8 grid (as in TFLite, conversion/int_norm.py)."""
    qp = a["int_qp"]
    fold = int_norm.folded(a)

    def mean(v: str, k: str) -> str:
        if a["mode"] == "gLN":  # over channels, then time
            v = b.qdq(b.node("ReduceMean", [v], f"{raw}_{k}_tf", axes=[1], keepdims=1), f"{raw}_{k}_t", qp[k + "_t"])
            axis = 2
        else:
            axis = 1
        return b.qdq(b.node("ReduceMean", [v], f"{raw}_{k}_f", axes=[axis], keepdims=1), f"{raw}_{k}", qp[k])

    m = mean(x, "mean")
    d = b.qdq(b.node("Sub", [x, m], raw + "_d_f"), raw + "_d", qp["d"])
    var = mean(b.qdq(b.node("Mul", [d, d], raw + "_d2_f"), raw + "_d2", qp["d2"]), "var")
    r = b.node("Reciprocal", [b.node("Sqrt", [var], raw + "_sqrt")], raw + "_rsqrt_f")
    r = b.qdq(r, raw + "_rsqrt", qp["rsqrt"])
    if "rg" not in fold:  # rsqrt * gamma: a [C] vector
        gamma = b.qdq(b.const(raw + "_gamma_c", a["gamma"].reshape(1, -1, 1).astype(np.float32)), raw + "_gamma", qp["gamma"])
        r = b.qdq(b.node("Mul", [r, gamma], raw + "_rg_f"), raw + "_rg", qp["rg"])
    if "beta" in fold:
        b.node("Mul", [d, r], raw)
        return
    g = b.qdq(b.node("Mul", [d, r], raw + "_g_f"), raw + "_g", qp["g"])
    beta = b.qdq(b.const(raw + "_beta_c", a["beta"].reshape(1, -1, 1).astype(np.float32)), raw + "_beta", qp["beta"])
    b.node("Add", [g, beta], raw)


def graph_to_onnx(g: Graph, states: list | None = None) -> onnx.ModelProto:
    """Emit an ONNX model (QDQ when g.quantized) from the deploy graph (a step graph with its states)."""
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
        _emit(b, op, g.quantized)
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
    onnxruntime runs it as U8U8 units, its fast int8 path on x86 without VNNI; U8S8 (int8 weights) is
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


def export_onnx(checkpoint: str | Path, output: str | Path, float_model: bool = False, yaml: str | None = None,
                step_frames: int | None = None, activations: str = "auto") -> Path:
    """Checkpoint -> .onnx (written atomically); with step_frames, the streaming step model.
    activations: "int8" (s8s8: fast on ARM and x86 with VNNI), "uint8" (u8u8: fast on x86 without
    VNNI; the model's int8 boundary codes are shifted by the runtime), or "auto" (what suits this CPU,
    runtime.cpu.onnx_activations). Both forms give the same integer outputs."""
    if activations not in ACTIVATIONS:
        raise ValueError(f"activations {activations!r}: use one of {', '.join(ACTIVATIONS)}")
    if activations == "auto":
        from runtime.cpu import onnx_activations
        activations = onnx_activations()
    cfg = model_config(load_config(yaml)) if yaml else None
    model = load_any(checkpoint, cfg)
    g = build_graph(model, quantized=not float_model)
    int_norm.prepare(model, g)  # gLN / cLN: int8 internals, calibrated
    states = None
    if step_frames:
        g, states = build_step_graph(g, step_frames)
    proto = graph_to_onnx(g, states)
    if activations == "uint8" and g.quantized:
        proto = as_uint8(proto)
    raw = modelmeta.seal(proto.SerializeToString())
    atomic_write(output, lambda tmp: Path(tmp).write_bytes(raw))
    return Path(output)
