"""The op registry (conversion/ops/) and the conversion pipeline's rules and stage checks: fast unit tests,
plus two exports of the demo model whose stage checks must fail."""
from __future__ import annotations

import ast
import copy

import numpy as np
import pytest

from conversion import ops
from conversion.errors import ConversionError, ExportError, OpRuleError
from conversion.graph import Op, build_graph
from conversion.onnx_export import graph_to_onnx
from conversion.ops import base
from conversion.step_graph import build_step_graph
from tests.conftest import DEMO_CKPT, ROOT
from training.checkpoint import load_model

DEMO_FLOAT = ROOT / "training" / "pretrained" / "demo_float_tiny.pt"


@pytest.fixture(scope="module")
def demo_graph():
    return build_graph(load_model(DEMO_CKPT))


@pytest.fixture(scope="module")
def float_graph():
    return build_graph(load_model(DEMO_FLOAT), quantized=False)


def _with_op(g, op: Op, after: str):
    """A copy of graph g with op inserted after the op that writes `after`, whose readers now read op."""
    g = copy.copy(g)
    new = []
    for o in g.ops:
        o = copy.copy(o)
        o.inputs = [op.output if i == after else i for i in o.inputs]
        new.append(o)
        if o.output == after:
            new.append(op)
    g.ops = new
    g.outputs = [op.output if n == after else n for n in g.outputs]
    return g


def test_every_kind_declares_its_rules_in_one_module():
    found = ops.kinds()
    assert {"conv", "prelu", "relu", "add", "sub", "mul", "norm", "int_norm", "ola", "ola_step", "concat_t",
            "slice"} <= set(found)
    from runtime.intref import IntegerReference
    for name, k in found.items():
        assert k.onnx is not None and k.tf is not None, name
        for builtin in k.intref:  # the integer reference the kind points at exists in runtime/intref.py
            assert hasattr(IntegerReference, "_op_" + builtin.lower()), (name, builtin)
    # every module of the package registers a kind of its own (the package finds them: one file per op)
    modules = {p.stem for p in (ROOT / "conversion" / "ops").glob("*.py")} - {"__init__", "base"}
    assert modules == {type(k).__module__.rsplit(".", 1)[1] for k in found.values()}


def test_graph_and_step_graph_ops_are_all_registered(demo_graph):
    sg, _ = build_step_graph(demo_graph, 4)
    assert {op.kind for op in demo_graph.ops + sg.ops} <= set(ops.kinds())


@pytest.mark.parametrize("where", ["onnx", "tflite", "step"])
def test_unknown_op_kind_is_one_line_error_at_export(demo_graph, where):
    g = _with_op(demo_graph, Op("fancy_norm", ["mask"], "mask_fancy", demo_graph.ops[0].qp), "mask")
    with pytest.raises(OpRuleError) as err:
        if where == "onnx":
            graph_to_onnx(g)
        elif where == "tflite":
            from conversion.tflite_export import to_tflite
            to_tflite(g)
        else:
            build_step_graph(g, 4)
    msg = str(err.value)
    assert "\n" not in msg and "mask_fancy" in msg and "'fancy_norm'" in msg and "unknown op kind" in msg
    assert isinstance(err.value, ExportError) and isinstance(err.value, ConversionError)


def test_missing_rules_are_one_line_errors(demo_graph):
    # a kind without a step rule: the step graph's own plumbing ops are not stepped again
    sg, _ = build_step_graph(demo_graph, 4)
    with pytest.raises(OpRuleError, match=r"^op \S+ \(kind '(slice|concat_t|ola_step)'\): no streaming-state"):
        build_step_graph(sg, 4)
    # a float norm in a quantized graph: no integer TFLite lowering (prepare makes it an int_norm)
    norm = Op("norm", ["bn_norm"], "extra_norm", demo_graph.ops[0].qp,
              {"mode": "cLN", "gamma": np.ones(1, np.float32), "beta": np.zeros(1, np.float32), "eps": 1e-8})
    g = _with_op(demo_graph, norm, "bn_norm")
    with pytest.raises(OpRuleError, match=r"^op extra_norm \(kind 'norm'\): no integer TFLite lowering rule: cLN "):
        ops.require(g.ops, ("tf", "int8"))
    ops.require(g.ops, ("onnx", "tf", "step"))  # the other rules exist
    # gLN has no streaming form: its step rule says so
    norm.attrs["mode"] = "gLN"
    with pytest.raises(ExportError, match="gLN has no streaming form"):
        build_step_graph(g, 4)


def test_unknown_op_fails_before_anything_is_written(monkeypatch, tmp_path):
    from conversion import pipeline
    real = pipeline.build_graph
    monkeypatch.setattr(pipeline, "build_graph", lambda m, quantized=True: _with_op(
        real(m, quantized), Op("warp", ["mask"], "mask_warp", None), "mask"))
    for target in ("onnx", "tflite"):
        with pytest.raises(OpRuleError, match="mask_warp .kind 'warp'.: unknown op kind"):
            pipeline.convert(DEMO_CKPT, tmp_path / f"m.{target}", target)
        assert not (tmp_path / f"m.{target}").exists()


class _Neg(base.OpKind):
    """A new op kind, declared in one place (what a module conversion/ops/neg.py would hold)."""
    kind = "neg"
    step = staticmethod(base.stateless)

    def onnx(self, b, op, quantized):
        b.node("Neg", [op.inputs[0]], op.output + "_f")

    def tf(self, tf, op, env, quantized):
        return tf.negative(env[op.inputs[0]])


def test_adding_an_op_kind_needs_no_other_change(monkeypatch, float_graph):
    import onnxruntime as ort
    monkeypatch.setitem(base._REGISTRY, "neg", _Neg())
    g = _with_op(float_graph, Op("neg", ["y0"], "y0_neg", None), "y0")
    x = np.random.default_rng(0).standard_normal((1, g.meta["n_splitter"], 1024)).astype(np.float32) * 0.1

    def run(graph):
        sess = ort.InferenceSession(graph_to_onnx(graph).SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_array_equal(run(g), -run(float_graph))
    sg, states = build_step_graph(g, 4)  # its streaming rule: stateless
    assert "y0_neg" in [op.output for op in sg.ops] and len(states) == len(build_step_graph(float_graph, 4)[1])


def test_onnx_stage_check_catches_a_wrong_lowering(monkeypatch, tmp_path):
    from conversion.pipeline import export_onnx
    monkeypatch.setattr(type(ops.kinds()["prelu"]), "onnx",
                        lambda self, b, op, quantized: b.node("Relu", [op.inputs[0]], op.output + "_f"))
    with pytest.raises(ConversionError, match="float ONNX graph disagrees with the float torch model"):
        export_onnx(DEMO_CKPT, tmp_path / "m.onnx", activations="int8")
    assert not (tmp_path / "m.onnx").exists()


def test_onnx_scale_check_matches_tensor_by_tensor(demo_graph):
    """Two tensors with their scales swapped keep the set of scales; the ONNX check matches by name."""
    from onnx import numpy_helper
    from conversion.checks import onnx_scale_mismatches
    proto = graph_to_onnx(demo_graph)
    assert onnx_scale_mismatches(demo_graph, proto) == []
    inits = {i.name: i for i in proto.graph.initializer}
    a, b = "b0_prelu1_scale", "b0_norm1_scale"
    va, vb = numpy_helper.to_array(inits[a]), numpy_helper.to_array(inits[b])
    assert va != vb
    inits[a].CopyFrom(numpy_helper.from_array(vb, a))
    inits[b].CopyFrom(numpy_helper.from_array(va, b))
    bad = onnx_scale_mismatches(demo_graph, proto)
    assert len(bad) == 2 and bad[0].startswith("b0_prelu1:") and bad[1].startswith("b0_norm1:")


def test_conversion_modules_import_no_cycle():
    """The import graph of conversion/ (function-level imports included) has no cycle: checks.py reads
    both emitters, the pipeline reads checks, no emitter reads either."""
    deps: dict[str, set[str]] = {}
    for p in (ROOT / "conversion").rglob("*.py"):
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        deps[name] = set()
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("conversion"):
                deps[name] |= {f"{n.module}.{a.name}" if f"{n.module}.{a.name}" in _modules() else n.module
                               for a in n.names}
    for start in deps:
        seen, todo = set(), list(deps[start])
        while todo:
            m = todo.pop()
            assert m != start, f"import cycle through {start}"
            if m not in seen:
                seen.add(m)
                todo += deps.get(m, ())


def _modules() -> set[str]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            for p in (ROOT / "conversion").rglob("*.py")}

