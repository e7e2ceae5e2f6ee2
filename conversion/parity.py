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

from runtime import pipeline, qmath
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
    return np.stack([np.round(c / s) + z for c, (s, z) in zip(y, output_qparams(model))]).astype(np.int8)


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


def per_layer_onnx(model: ConvTasNet, onnx_path: str | Path, x: np.ndarray, tol_lsb: int = 1) -> list[dict[str, Any]]:
    """Every QAT-quantized tensor of the ONNX model (as int8 codes) against the fake-quant torch model,
    in graph order; the first entry over `tol_lsb` is where they diverge."""
    import onnx
    from conversion.graph import build_graph
    from runtime.backends import OnnxBackend
    g = build_graph(model)
    proto = onnx.load(str(onnx_path))
    qnames = {n.output[0] for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    ops = [op for op in g.ops if op.qp is not None and op.output + "_q" in qnames]
    for op in ops:
        proto.graph.output.append(onnx.helper.make_tensor_value_info(op.output + "_q", onnx.TensorProto.INT8, None))
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
        onnx.save(proto, str(path))
        be = OnnxBackend(path)
        res = dict(zip(be.out_names, be.sess.run(be.out_names, {be.in_name: x[None]})))
    rows = []
    for op in ops:
        s, z = op.qp
        ref = np.round(captured[op.output][0].numpy() / s) + z
        d = np.abs(res[op.output + "_q"][0].astype(np.float64) - ref)
        rows.append({"tensor": op.output, "max_lsb": int(d.max()), "frac_over_tol": float((d > tol_lsb).mean()),
                     "frac_differ": float((d > 0).mean())})
    return rows


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
        outputs[kind] = pipeline.post(got, len(pcm), be.meta)
        outputs.setdefault("fakequant", pipeline.post(ref, len(pcm), be.meta))
        r["path"] = str(path)
        result["models"][kind] = r
    if per_layer and onnx:
        rows = per_layer_onnx(model, onnx, pipeline.pre(pcm, load_backend(onnx).meta))
        result["per_layer_onnx"] = rows
        first = next((r for r in rows if r["max_lsb"] > 1), None)
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
