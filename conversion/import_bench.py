"""Full-size import figures: a reference-format FQSE checkpoint (N=512, S=C=2, gLN; random weights,
trained-like ranges from calibration audio) converted straight to int8 ONNX and fully-integer TFLite
(timed), the deployable model against the reference semantics, and the integer-gLN TFLite speed
against the causal-BN int8 TFLite model of the same size.

    python -m conversion.import_bench --out artifacts/import_bench
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from conversion import importers, ptq
from conversion.fullsize import make_model
from conversion.pipeline import export_onnx
from conversion.reference import ActFQ, RefConfig, ReferenceFQSE, WeightFQ, make_trained_like, preprocess
from conversion.pipeline import convert_tflite
from runtime.bench import measure_isolated


@torch.no_grad()
def _ref_vs_float(ref: ReferenceFQSE, plain: ReferenceFQSE, model, clips) -> float:
    """SNR (dB) of the reference fake-quant model against its float self, worst clip."""
    from conversion.reference import postprocess
    from runtime.metrics import snr
    from training.model import Pipeline
    out = []
    for wav in clips:
        x, _ = Pipeline(model.cfg).pre(torch.from_numpy(importers.peak_normalize(wav))[None])
        out.append(snr(postprocess(ref(x))[0].numpy(), postprocess(plain(x))[0].numpy()))
    return min(out)


def _norm_cost(model, clips) -> dict:
    """The TF graph with integer norms and with float norms (else identical), each against the
    fake-quant torch model: the cost of the int8 norm internals, on the first check clip."""
    from conversion.checks import _run_tf, check_audio
    from conversion.graph import build_graph
    from conversion.ops.int_norm import calibrate_norms, norm_snr, to_float
    from conversion.parity import compare, torch_outputs
    from runtime import pipeline
    g = build_graph(model)
    calibrate_norms(model, g, clips)
    x = pipeline.pre(check_audio(16000), g.meta)
    ref = torch_outputs(model, x)
    res = {"int_norm_vs_fakequant_db": compare(ref, _run_tf(g, x), g.meta)["snr_db"]}
    per = norm_snr(model, g, check_audio(16000) / 32768.0)
    res["per_norm_db"] = {"min": min(per.values()), "median": float(np.median(list(per.values()))),
                          "max": max(per.values()), "n": len(per)}
    to_float(g)
    res["float_norm_vs_fakequant_db"] = compare(ref, _run_tf(g, x), g.meta)["snr_db"]
    return res


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="artifacts/import_bench")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--no-bench", action="store_true")
    p.add_argument("--small", action="store_true", help="N=64, 8 blocks (quick)")
    a = p.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    clips = ptq.calibration_audio(None, 16000)
    torch.manual_seed(0)
    ref = ReferenceFQSE(RefConfig(n_filters=64, bn_chan=32, hid_chan=64, n_blocks=8, n_repeats=1) if a.small else RefConfig())
    with torch.no_grad():
        make_trained_like(ref, preprocess(torch.from_numpy(clips[0][:32000])[None], 2))
    pth = out / "fqse_8bit.pth"
    torch.save(ref.state_dict(), pth)
    r: dict = {}
    t = time.time()
    model = importers.from_reference(importers.read_any(pth), clips=clips)
    r["import_s"] = time.time() - t
    r["snr_vs_reference_db"] = importers.reference_snr(ref.eval(), model, clips)
    # Yardstick: how much this random network amplifies int8 noise (the reference against its own
    # float computation, quantizers off)
    plain = copy.deepcopy(ref)
    for m in plain.modules():
        if isinstance(m, (ActFQ, WeightFQ)):
            m.enabled = False
    r["reference_fakequant_vs_its_float_db"] = _ref_vs_float(ref, plain, model, clips)
    r["integer_norm_cost"] = _norm_cost(model, clips)
    t = time.time()
    export_onnx(pth, out / "fqse_gln_int8.onnx")
    r["export_onnx_s"] = time.time() - t
    t = time.time()
    rep = convert_tflite(pth, out / "fqse_gln_int8.tflite")
    r["convert_tflite_s"] = time.time() - t
    r["tflite"] = {"fully_integer": rep["fully_integer"], "qat_scales_kept": rep["qat_scales_kept"],
                   "vs_fakequant_db": rep["tflite"]["snr_db"], "tf_graph_vs_fakequant_db": rep["tf_graph"]["snr_db"],
                   "ops": rep["ops"]}
    print(json.dumps(r, indent=1, default=float))
    if not a.no_bench:
        bn = make_model("BN", True, out / "fqse_BN.pt")
        convert_tflite(bn, out / "fqse_BN_int8.tflite")
        for name in ("fqse_gln_int8.tflite", "fqse_BN_int8.tflite", "fqse_gln_int8.onnx"):
            m = measure_isolated(str(out / name), 1, a.seconds, False, 16.0)
            r[name] = {"s_per_s_audio": m["s_per_s_audio"], "size_mb": m["size_bytes"] / 2 ** 20,
                       "peak_rss_mb": m["peak_rss_mb"], "kernels": m["kernels"]}
            print(f"{name:<24} {m['s_per_s_audio']:.4f} s per s of audio ({m['kernels']})")
        r["gln_over_bn_tflite_speed"] = r["fqse_gln_int8.tflite"]["s_per_s_audio"] / r["fqse_BN_int8.tflite"]["s_per_s_audio"]
    (out / "import_bench.json").write_text(json.dumps(r, indent=1, default=float))
    print(json.dumps(r, indent=1, default=float))
    return r


if __name__ == "__main__":
    main()
