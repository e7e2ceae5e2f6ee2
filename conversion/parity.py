"""Parity: how far a deployed model (ONNX / TFLite) is from the fake-quant PyTorch model.

Both sides get the same model input (the runtime's integer splitter on the same int16 audio), so only
the networks are compared: SNR of the combined output in dB, and per int8 output channel the largest
difference and the share of samples within 1 LSB.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime import modelmeta, pipeline, qmath
from runtime.audio import read_audio, to_int16
from runtime.backends import load_backend
from runtime.files import atomic_write
from runtime.metrics import si_snr, snr
from conversion.importers import load_any
from training.model import ConvTasNet


def torch_outputs(model: ConvTasNet, x: np.ndarray) -> np.ndarray:
    """Run the (eval, fake-quant) torch model on a model input [S, T']: outputs [C, T'] in the
    deployed model's units (int8 codes for QAT models, float values for float models)."""
    quantized = x.dtype == np.int8
    inp = torch.from_numpy(x.astype(np.float32) * (qmath.IO_SCALE if quantized else 1.0))[None]
    with torch.no_grad():
        outs = model.eval()(inp)
    y = np.stack([o[0, 0].numpy() for o in outs])
    return quantize_outputs(y, model) if quantized else y


def quantize_outputs(y: np.ndarray, model: ConvTasNet) -> np.ndarray:
    """Real output values [C, T] (on their int8 grids) -> int8 codes."""
    from conversion.graph import output_qparams
    return np.stack([qmath.quantize(c, s, z) for c, (s, z) in zip(y, output_qparams(model))]).astype(np.int8)


def to_wave(y: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """Combined float waveform of model outputs [C, T'] (before cropping)."""
    if y.dtype == np.int8:
        return qmath.combine([c / qmath.IO_SCALE for c in pipeline.dequantize_outputs(y, meta)])
    return qmath.combine([c / qmath.IO_SCALE for c in y]) if meta["splitter"] else y[0]


def compare(ref: np.ndarray, got: np.ndarray, meta: dict[str, Any]) -> dict[str, Any]:
    """SNR (dB) of the deployed output against the reference, and per-channel LSB statistics."""
    res: dict[str, Any] = {"snr_db": snr(to_wave(got, meta), to_wave(ref, meta))}
    if ref.dtype == np.int8:
        d = np.abs(ref.astype(np.int32) - got.astype(np.int32))
        res["max_lsb"] = [int(v) for v in d.max(axis=1)]
        res["within_1lsb"] = [float(v) for v in (d <= 1).mean(axis=1)]
        res["exact"] = [float(v) for v in (d == 0).mean(axis=1)]
    return res


def per_layer_onnx(model: ConvTasNet, onnx_path: str | Path, x: np.ndarray, tol_lsb: int = 1,
                   tflite: str | Path | None = None) -> list[dict[str, Any]]:
    """Every QAT-quantized tensor of the ONNX model (as int8 codes) against the fake-quant torch model,
    in graph order; the first entry over `tol_lsb` is where they diverge. With `tflite`: also against the
    integer reference's tensor of the same (scale, zero point, shape), fixed-point (`intref_differ`) and
    exact (`exact_differ`): where onnxruntime leaves TFLite's arithmetic, and exact arithmetic."""
    import onnx
    from conversion.graph import build_graph
    from runtime.backends import OnnxBackend
    g = build_graph(model)
    proto = onnx.load(str(onnx_path))
    qnames = {n.output[0] for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    ops = [op for op in g.ops if op.qp is not None and op.output + "_q" in qnames]
    code_type = proto.graph.input[0].type.tensor_type.elem_type  # INT8, or UINT8 (--activations uint8)
    for op in ops:
        proto.graph.output.append(onnx.helper.make_tensor_value_info(op.output + "_q", code_type, None))
    captured: dict[str, torch.Tensor] = {}
    hooks = [op.quantizer.register_forward_hook(lambda m, i, o, name=op.output: captured.__setitem__(name, o.detach()))
             for op in ops]
    try:
        torch_outputs(model, x)
    finally:
        for h in hooks:
            h.remove()
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "all.onnx"
        path.write_bytes(modelmeta.seal(proto.SerializeToString()))  # outputs added: sealed anew
        be = OnnxBackend(path)
        res = dict(zip(be.out_names, be.sess.run(be.out_names, {be.in_name: be.to_model(x)[None]})))
    refs = _intref_by_qparams(tflite, x) if tflite else {}
    rows = []
    for op in ops:
        s, z = op.qp
        ref = np.round(captured[op.output][0].numpy() / s) + z
        got = be.from_model(res[op.output + "_q"][0])
        d = np.abs(got.astype(np.float64) - ref)
        row = {"tensor": op.output, "max_lsb": int(d.max()), "frac_over_tol": float((d > tol_lsb).mean()),
               "frac_differ": float((d > 0).mean())}
        match = refs.get((float(np.float32(s)), int(z), got.shape))
        if match is not None:
            row["intref_differ"] = float((match[0] != got).mean())
            row["exact_differ"] = float((match[1] != got).mean())
        rows.append(row)
    return rows


def _intref_by_qparams(tflite_path: str | Path, x: np.ndarray) -> dict[tuple, tuple[np.ndarray, np.ndarray]]:
    """Integer-reference tensors (fixed point, exact) in ONNX layout [C, T], keyed by (scale, zero point,
    shape); keys that several tensors share are left out (no unique match)."""
    from runtime.intref import IntegerReference
    raw = Path(tflite_path).read_bytes()
    ref, ex = IntegerReference(raw, tflite_path), IntegerReference(raw, tflite_path, exact=True)
    xs = [np.ascontiguousarray(x.T[None, None])]
    vf, ve = ref.run(xs), ex.run(xs)
    out: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
    seen: set[tuple] = set()
    for _, _, outs, _ in ref.ops:
        t = ref.tensors[outs[0]]
        v = vf[outs[0]]
        if t.scale is None or len(t.scale) != 1 or v.ndim != 4:
            continue
        key = (float(t.scale[0]), int(t.zero_point[0]), (v.shape[3], v.shape[2]))
        if key in seen:
            out.pop(key, None)
            continue
        seen.add(key)
        out[key] = (v[0, 0].T, ve[outs[0]][0, 0].T)
    return out


def intref_outputs(tflite_path: str | Path, x: np.ndarray, exact: bool = False) -> np.ndarray:
    """The integer reference (TFLite reference-kernel arithmetic; exact=True: exact requantization) on a
    model input [S, T']: outputs [C, T']."""
    from runtime.intref import IntegerReference
    ref = IntegerReference.from_file(tflite_path, exact)
    vals = ref.run([np.ascontiguousarray(x.T[None, None])])
    return np.concatenate([vals[o].reshape(1, -1) for o in ref.outputs], axis=0)


def per_layer_tflite(tflite_path: str | Path, x: np.ndarray) -> list[dict[str, Any]]:
    """Layer by layer, each op fed the integer reference's int8 inputs: the share of output codes where
    TFLite's fixed-point requantization differs from exact arithmetic (`fixed_vs_exact`), and where the
    default kernels (XNNPACK, the op alone) differ from the reference kernels (`xnnpack_differ`, max LSB)
    and from exact arithmetic (`xnnpack_vs_exact`)."""
    from ai_edge_litert.interpreter import Interpreter
    from runtime.intref import IntegerReference, invoke, single_op_model
    raw = Path(tflite_path).read_bytes()
    ref, exact = IntegerReference(raw, tflite_path), IntegerReference(raw, tflite_path, exact=True)
    vals = ref.run([np.ascontiguousarray(x.T[None, None])])
    rows = []
    for k, (op, _, outs, _) in enumerate(ref.ops):
        it = Interpreter(model_content=single_op_model(raw, k))
        invoke(it, [vals[d["index"]] for d in it.get_input_details()])
        got = it.get_tensor(it.get_output_details()[0]["index"])
        d = np.abs(got.astype(np.int32) - vals[outs[0]])
        ex = exact.run_op(k, vals)
        rows.append({"op": op, "tensor": ref.tensors[outs[0]].name, "max_lsb": int(d.max()),
                     "xnnpack_differ": float((d > 0).mean()), "fixed_vs_exact": float((ex != vals[outs[0]]).mean()),
                     "xnnpack_vs_exact": float((ex != got).mean())})
    return rows


def by_op_type(rows: list[dict[str, Any]], key: str) -> dict[str, float]:
    """Per op type: the share of output codes with rows' `key` (weighted equally per layer)."""
    kinds = sorted({r["op"] for r in rows})
    return {k: float(np.mean([r[key] for r in rows if r["op"] == k])) for k in kinds}


def run_parity(checkpoint: str, audio: str, onnx: str | None = None, tflite: str | None = None,
               clean: str | None = None, json_out: str | None = None, float_checkpoint: str | None = None,
               per_layer: bool = False) -> dict[str, Any]:
    """`fqse parity`: fake-quant vs each deployed model (int8 LSB statistics), SNR between every pair
    of systems (float model too when given), SI-SNR of each against clean when given."""
    model = load_any(checkpoint)
    sr = model.cfg.sample_rate
    notes: list[str] = []
    pcm = to_int16(read_audio(audio, sr, notes=notes)[0])
    ref_clean = read_audio(clean, sr, notes=notes)[0] if clean else None
    for n in notes:
        print(f"note: {n}")
    result: dict[str, Any] = {"audio": str(audio), "models": {}}
    outputs: dict[str, np.ndarray] = {}
    for kind, path in (("onnx", onnx), ("tflite", tflite)):
        if not path:
            continue
        be = load_backend(path)
        x = pipeline.pre(pcm, be.meta)
        ref = torch_outputs(model, x)
        got = be.run(x)
        r = compare(ref, got, be.meta)
        outputs[kind] = pipeline.enhanced(got, pcm, be.meta)
        outputs.setdefault("fakequant", pipeline.enhanced(ref, pcm, be.meta))
        r["path"] = str(path)
        result["models"][kind] = r
    if tflite:  # error by source: float vs exact integer rounding, TFLite's fixed point, kernel sets
        be = load_backend(tflite)
        x = pipeline.pre(pcm, be.meta)
        iref, iexact = intref_outputs(tflite, x), intref_outputs(tflite, x, exact=True)
        src = {"fakequant vs exact integer": compare(torch_outputs(model, x), iexact, be.meta)["snr_db"],
               "exact integer vs intref (TFLite fixed point)": compare(iexact, iref, be.meta)["snr_db"],
               "intref vs tflite": compare(iref, be.run(x), be.meta)["snr_db"]}
        if onnx:
            ob = load_backend(onnx)
            src["intref vs onnx"] = compare(iref, ob.run(pipeline.pre(pcm, ob.meta)), be.meta)["snr_db"]
        result["by_source_snr_db"] = src
        outputs["intref"] = pipeline.enhanced(iref, pcm, be.meta)
        print("error by source (combined output SNR, dB): " + ", ".join(f"{k} {v:.1f}" for k, v in src.items()))
        if per_layer:
            rows = per_layer_tflite(tflite, x)
            result["per_layer_tflite"] = rows
            result["fixed_vs_exact_by_op"] = by_op_type(rows, "fixed_vs_exact")
            result["xnnpack_differ_by_op"] = by_op_type(rows, "xnnpack_differ")
            result["xnnpack_vs_exact_by_op"] = by_op_type(rows, "xnnpack_vs_exact")
            print("per layer (TFLite, each op fed the same int8 input), share of codes by op type: fixed point vs "
                  "exact: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in result["fixed_vs_exact_by_op"].items() if v)
                  + "; XNNPACK vs reference kernels: " + ", ".join(
                      f"{k} {100 * v:.2f}%" for k, v in result["xnnpack_differ_by_op"].items() if v)
                  + f" (max {max(r['max_lsb'] for r in rows)} LSB); XNNPACK vs exact: " + (", ".join(
                      f"{k} {100 * v:.4f}%" for k, v in result["xnnpack_vs_exact_by_op"].items() if v) or "none"))
    if per_layer and onnx:
        rows = per_layer_onnx(model, onnx, pipeline.pre(pcm, load_backend(onnx).meta), tflite=tflite)
        result["per_layer_onnx"] = rows
        first = next((r for r in rows if r["max_lsb"] > 1), None)
        matched = [r for r in rows if "intref_differ" in r]
        if matched:
            off = next((r for r in matched if r["intref_differ"] > 0), None)
            print(f"per layer (ONNX vs integer reference, {len(matched)} tensors matched): "
                  + (f"first differing tensor {off['tensor']} ({100 * off['intref_differ']:.3f} % of codes; vs exact "
                     f"arithmetic {100 * off['exact_differ']:.3f} %)" if off else "all equal"))
        print("per layer (ONNX vs fake-quant): " + (f"first tensor over 1 LSB: {first['tensor']} (max {first['max_lsb']} LSB, "
              f"{100 * first['frac_over_tol']:.3f} % of values)" if first else "no tensor differs by more than 1 LSB"))
    if float_checkpoint:
        from training.model import enhance
        with torch.no_grad():
            y = enhance(load_any(float_checkpoint), torch.from_numpy(pcm.astype(np.float32) / 32768)[None])[0].numpy()
        outputs["float"] = np.clip(np.round(y * 32768), -32768, 32767).astype(np.int16)
    names = list(outputs)
    result["pairwise_snr_db"] = {f"{a} vs {b}": snr(outputs[a] / 32768.0, outputs[b] / 32768.0)
                                 for i, a in enumerate(names) for b in names[i + 1:]}
    if ref_clean is not None:
        n = min(len(ref_clean), len(pcm))
        result["si_snr_vs_clean"] = {"noisy": si_snr(pcm[:n] / 32768.0, ref_clean[:n]),
                                     **{k: si_snr(v[:n] / 32768.0, ref_clean[:n]) for k, v in outputs.items()}}
    print(f"{'model':<8} {'SNR vs fake-quant (dB)':>24} {'max LSB':>10} {'within 1 LSB':>14}")
    for k, r in result["models"].items():
        lsb = ",".join(str(v) for v in r.get("max_lsb", []))
        w1 = ",".join(f"{100 * v:.3f}%" for v in r.get("within_1lsb", []))
        print(f"{k:<8} {r['snr_db']:>24.2f} {lsb:>10} {w1:>14}")
    for k, v in result["pairwise_snr_db"].items():
        print(f"SNR {k}: {v:.2f} dB")
    if "si_snr_vs_clean" in result:
        print("SI-SNR vs clean (dB): " + ", ".join(f"{k} {v:.2f}" for k, v in result["si_snr_vs_clean"].items()))
    if json_out:
        atomic_write(json_out, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1)))
    return result

