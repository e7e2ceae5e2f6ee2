"""Shared fixtures: the committed demo checkpoint, its exported models, a tiny generated data set."""
from __future__ import annotations

import collections
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO_CKPT = ROOT / "training" / "pretrained" / "demo_fqse_tiny.pt"
SAMPLES = ROOT / "samples"


def run_fqse(*args: str, **kw) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess."""
    return subprocess.run([sys.executable, "-m", "fqse", *args], capture_output=True, text=True, cwd=ROOT, **kw)


@pytest.fixture(scope="session")
def demo_ckpt() -> Path:
    assert DEMO_CKPT.exists(), "demo checkpoint missing"
    return DEMO_CKPT


@pytest.fixture(scope="session")
def demo_onnx(tmp_path_factory, demo_ckpt) -> Path:
    from conversion.pipeline import export_onnx
    return export_onnx(demo_ckpt, tmp_path_factory.mktemp("onnx") / "demo.onnx", activations="int8")


@pytest.fixture(scope="session")
def demo_tflite(tmp_path_factory, demo_ckpt) -> tuple[Path, dict]:
    from conversion.pipeline import convert_tflite
    out = tmp_path_factory.mktemp("tflite") / "demo.tflite"
    report = convert_tflite(demo_ckpt, out)
    return out, report


@pytest.fixture(scope="session")
def demo_step(tmp_path_factory, demo_ckpt) -> dict[str, Path]:
    """Streaming step models (16 ms per call) in both formats."""
    from conversion.pipeline import export_onnx
    from conversion.pipeline import convert_tflite
    d = tmp_path_factory.mktemp("step")
    convert_tflite(demo_ckpt, d / "step.tflite", step_frames=16)
    return {"onnx": export_onnx(demo_ckpt, d / "step.onnx", step_frames=16, activations="int8"), "tflite": d / "step.tflite"}


@pytest.fixture(scope="session")
def norm_onnx(tmp_path_factory):
    """norm -> (checkpoint, int8 ONNX) of small_norm_model(norm, n_combiner=2, decoder_gain=4): a non-causal
    gLN / cLN model with a residual output y1 (decoder gain 4 keeps y0's peak at ~80 of 128 codes on the
    samples: no clipping). Exported once per session."""
    from conversion.pipeline import export_onnx
    from training import checkpoint
    d, made = tmp_path_factory.mktemp("norm_onnx"), {}

    def get(norm: str) -> tuple[Path, Path]:
        if norm not in made:
            ckpt = d / f"{norm}.pt"
            checkpoint.save(ckpt, small_norm_model(norm, n_combiner=2, decoder_gain=4.0))
            made[norm] = ckpt, export_onnx(ckpt, d / f"{norm}.onnx", activations="int8")
        return made[norm]
    return get


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    from training.datagen import generate
    return generate(tmp_path_factory.mktemp("data"), "tiny", seed=3, show_progress=False)


def noisy_clean_pairs() -> list[tuple[Path, Path]]:
    from runtime.audio import noisy_clean_pairs as pairs
    return pairs(SAMPLES)


# --- independent reads of a written .tflite file (the interpreter's own tensor details, no conversion code) ---

def qat_quantizers(model) -> dict:
    """Every deployed activation quantizer of a ConvTasNet, by the layer name its TFLite ops carry (the
    model's attribute names, written out here rather than taken from conversion.graph)."""
    d = {"enc": model.q_enc, "bn_norm": model.q_bn_norm, "bottleneck": model.q_bottleneck}
    last = len(model.blocks) - 1
    for i, b in enumerate(model.blocks):
        p = f"b{i}_"
        d.update({p + "in": b.q_in, p + "prelu1": b.q_prelu1, p + "norm1": b.q_norm1, p + "dconv": b.q_dconv,
                  p + "prelu2": b.q_prelu2, p + "norm2": b.q_norm2, p + "skip": b.q_skip})
        if i < last:  # the last block's residual path feeds nothing (dropped from the deployed graph)
            d.update({p + "res": b.q_res, p + "out": b.q_add})
        if i:
            d[p + "skipsum"] = model.q_skips[i - 1]
    d.update(mask_prelu=model.q_mask_prelu, mask=model.q_mask, masked=model.q_masked, y0_frames=model.q_frames,
             y0=model.q_out)
    if model.cfg.n_combiner == 2:
        d.update(res_enc=model.q_res_enc, err=model.q_err, y1_frames=model.q_res_frames, y1=model.q_res_out)
    return d


def tflite_layer_outputs(path) -> tuple[dict, dict]:
    """From the interpreter: the output tensor of the last op of each layer
    (the first name scope of the op's output tensor: "b0_res/BiasAdd;b0_res/Conv2D" -> "b0_res"), and the
    weight tensor of each layer's (depthwise) conv."""
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=str(path))
    by_index = {d["index"]: d for d in it.get_tensor_details()}
    last, weights = {}, {}
    for op in it._get_ops_details():
        out = by_index[op["outputs"][0]]
        scope = out["name"].split(";")[0].split("/")[0]
        last[scope] = out
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            weights[scope] = by_index[op["inputs"][1]]
    return last, weights


def small_norm_model(norm: str, causal: bool = False, n_combiner: int = 1, decoder_gain: float = 40.0, seed: int = 0):
    """A small random quantized ConvTasNet with gLN / cLN norms (trained-like affines), its activation ranges
    calibrated on calibration_data/ (min/max) and its weight ranges set: ready to export."""
    import torch
    from conversion import ptq
    from training.model import ConvTasNet, ModelConfig, enhance
    from training.quant import ActQuant
    torch.manual_seed(seed)
    m = ConvTasNet(ModelConfig(n_filters=16, kernel_size=16, bn_chan=8, hid_chan=16, skip_chan=8, n_blocks=2,
                               n_repeats=1, norm_type=norm, causal=causal, quantize=True, n_splitter=2,
                               n_combiner=n_combiner))
    with torch.no_grad():
        m.decoder_filters.mul_(decoder_gain)  # 40: an output well above the int8 output grid's step
        for norm_mod in (m.bottleneck_norm, m.blocks[0].norm1, m.blocks[0].norm2):
            norm_mod.gamma.uniform_(0.7, 1.3)  # trained-like affine (the others keep gamma 1, beta 0)
            norm_mod.beta.uniform_(-0.2, 0.2)
    clips = ptq.calibration_audio(None, 16000)
    ptq.calibrate(m.eval(), [q for q in m.modules() if isinstance(q, ActQuant) and q.fixed is None], clips,
                  "minmax", float_pass=True)
    enhance(m, torch.zeros(1, 800))  # sets the weight ranges (first forward with quantizers on)
    return m


def check_integer_tflite(path) -> tuple[list, list]:
    """Through the interpreter: every tensor of the .tflite file int8 or int32, its inputs and outputs int8.
    Returns the input and output details."""
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=str(path))
    dtypes = collections.Counter(np.dtype(d["dtype"]).name for d in it.get_tensor_details())
    assert set(dtypes) <= {"int8", "int32"} and dtypes["int8"] > 0, dtypes
    ins, outs = it.get_input_details(), it.get_output_details()
    assert [np.dtype(d["dtype"]) for d in ins + outs] == [np.dtype(np.int8)] * (len(ins) + len(outs))
    return ins, outs


def check_integer_with_qat_grids(path, model) -> int:
    """Read the written .tflite through the interpreter itself (not through conversion.checks, whose verdict
    convert_tflite already enforces): every tensor int8 or int32, int8 input and outputs on the model's fixed
    I/O grids, and each layer's output tensor on exactly its own QAT quantizer's (scale, zero point), layer by
    layer (a set comparison would pass swapped grids), and each conv's per-channel weight scales equal to its
    weight quantizer's. Returns the number of layers checked."""
    ins, outs = check_integer_tflite(path)
    qp = lambda q: q.qparams()[:2]  # noqa: E731
    assert ins[0]["quantization"] == qp(model.q_input) == (1 / 128, 0)
    out_q = [model.q_out] + ([model.q_res_out] if model.cfg.n_combiner == 2 else [])
    assert [o["quantization"] for o in outs] == [qp(q) for q in out_q]
    layer_out, weights = tflite_layer_outputs(path)
    quantizers = qat_quantizers(model)
    assert set(layer_out) >= set(quantizers), sorted(set(quantizers) - set(layer_out))
    for name, q in quantizers.items():
        scale, zp = qp(q)
        t_scale, t_zp = layer_out[name]["quantization"]
        # The converter recomputes the scale from the FakeQuant op's float32 range: measured at most one float32
        # step off (6.6e-8 relative, b2_skip of the demo model); a wrong or swapped grid is off by far more.
        assert abs(t_scale - np.float32(scale)) <= np.spacing(np.float32(scale)) and t_zp == zp, \
            (name, (scale, zp), (t_scale, t_zp))
    convs = {"enc": model.encoder, "bottleneck": model.bottleneck, "mask": model.mask_conv}  # mask_conv's ReLU is fused: "mask/Relu;..."
    for i, b in enumerate(model.blocks):
        convs.update({f"b{i}_in": b.in_conv, f"b{i}_dconv": b.dconv, f"b{i}_skip": b.skip_conv})
        if i < len(model.blocks) - 1:
            convs[f"b{i}_res"] = b.res_conv
    for name, c in convs.items():
        wq = weights[name]["quantization_parameters"]
        # per-channel weight scales: float32 both sides, measured bit-equal on the demo model
        assert np.array_equal(wq["scales"], c.wq.scales(c.conv.weight).numpy()) and not wq["zero_points"].any(), name
    return len(quantizers)
