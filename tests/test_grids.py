"""Tie-free requantization grids (training/grids.py): the arithmetic, and what they buy on a deployed model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from training import grids
from training.quant import ActQuant

ROOT = Path(__file__).resolve().parent.parent


def _quant(lo: float, hi: float) -> ActQuant:
    q = ActQuant()
    q.min.data.fill_(lo)
    q.max.data.fill_(hi)
    return q


def test_odd_fraction_is_the_nearest_with_an_odd_denominator_and_keeps_codes_off_ties():
    rng = np.random.default_rng(0)
    m = np.exp(rng.uniform(np.log(1e-4), np.log(40), 300))
    f = grids.odd_fraction(m)
    q = np.arange(1, grids.TIE_DEN + 1, 2)
    den = np.array([q[np.abs(v * q - np.round(v * q)) < 1e-6][0] for v in f])  # its smallest exact denominator
    assert np.all(den % 2 == 1) and np.all(den <= grids.TIE_DEN)
    brute = np.array([np.min(np.abs(np.maximum(np.round(v * q), 1) / q - v)) for v in m])
    assert np.allclose(np.abs(f - m), brute, rtol=0, atol=1e-15)
    assert np.median(np.abs(f / m - 1)) < 1e-3  # measured: median move 3e-5 over this range
    # integer accumulators times the snapped multiplier, as float32 kernels form it, over the int8 output range
    # (beyond it the code saturates), never come near a half-integer
    acc = np.round(rng.uniform(-256, 256, (20_000, 1)) / m[None])
    near = lambda v: np.abs(np.abs(v - np.floor(v)) - 0.5).min()  # noqa: E731
    assert near(acc * np.float32(f)[None].astype(np.float64)) > 0.4 / grids.TIE_DEN
    assert near(acc * m[None]) < 1e-5  # unsnapped, they do: the property is the grid's, not the accumulators'


def test_snap_sum_puts_every_term_on_one_odd_denominator_and_keeps_zero_points():
    a, b, out = _quant(-1.3, 2.1), _quant(-0.4, 0.9), _quant(-1.7, 2.9)
    zps = [q.qparams()[1] for q in (a, b, out)]
    before = [grids.scale_of(q) for q in (a, b, out)]
    frozen: set[int] = set()
    assert grids.snap_sum([a, b], out, frozen)
    s_out = grids.scale_of(out)
    for q in (a, b):
        k = grids.scale_of(q) / s_out * grids.TIE_DEN
        assert abs(k - round(k)) < 1e-3
    assert [q.qparams()[1] for q in (a, b, out)] == zps
    assert max(abs(grids.scale_of(q) / s - 1) for q, s in zip((a, b, out), before)) < 2e-3
    assert grids.scale_of(a) == pytest.approx(before[0], rel=1e-7)  # the first input is the reference: kept
    # a later sum cannot move a frozen quantizer: only its own output and its unfrozen input move
    c, out2 = _quant(-0.2, 0.3), _quant(-1.9, 3.0)
    s_b = grids.scale_of(b)
    grids.snap_sum([out, c], out2, frozen)
    assert grids.scale_of(out) == s_out and grids.scale_of(b) == s_b


def test_snap_weights_moves_learned_ranges_so_each_channel_multiplier_is_an_odd_fraction():
    from training.quant import WeightQuant
    wq = WeightQuant(16)
    torch.manual_seed(0)
    gains = torch.cat([torch.linspace(0.05, 1, 15), torch.tensor([1e-4])])  # the last: a near-dead channel
    wq(torch.randn(16, 8, 3) * gains[:, None, None])
    s_in, s_out = 0.0123, 0.0456
    before = wq.scales(None).double().numpy()
    left = grids.snap_weights(wq, s_in, s_out)
    m = np.float64(np.float32(s_in)) * wq.scales(None).double().numpy() / s_out
    assert left == 1 and wq.scales(None)[-1].item() == pytest.approx(before[-1], rel=1e-6)  # it would move > 1 %
    assert m[:-1].min() < 1 / grids.TIE_DEN  # small multipliers take the finer grid
    assert np.allclose(grids.odd_fraction(m[:-1], grids.TIE_DEN_SMALL), m[:-1], rtol=1e-6, atol=0)
    assert np.abs(wq.scales(None).double().numpy() / before - 1).max() < grids.MAX_MOVE


@pytest.mark.parametrize("snap", [True, False])
def test_every_arithmetic_rounds_alike_on_the_fine_tuned_model(tmp_path, monkeypatch, snap):
    """The demo model (the jitter fine-tune of real_fqse_tiny_base.pt) is the model on which the kernels parted:
    unsnapped, its ONNX and TFLite int16 outputs differ (54.7 dB, measured on samples/00) and fake-quant
    departs from both. On tie-free grids, fake-quant (torch float32), onnxruntime s8s8, TFLite XNNPACK and the
    integer reference in exact arithmetic give identical int8 codes, sample for sample."""
    import soundfile as sf

    from conversion.parity import intref_outputs, torch_outputs
    from conversion.pipeline import convert_tflite, export_onnx
    from runtime import pipeline
    from runtime.backends import load_backend
    from training import checkpoint

    ckpt = ROOT / "training" / "pretrained" / "demo_fqse_tiny.pt"
    if not snap:  # the same weights, every grid as trained
        monkeypatch.setattr("conversion.importers.load_model",
                            lambda p, cfg=None: checkpoint.load_model(p, cfg, snap=False))
    onnx = export_onnx(ckpt, tmp_path / "m.onnx", activations="int8", strict=snap)
    tfl = tmp_path / "m.tflite"
    convert_tflite(ckpt, tfl, strict=snap)
    model = checkpoint.load_model(ckpt, snap=snap)
    pcm = (sf.read(ROOT / "samples" / "00_music_+0dB_cs-v_noisy.wav", dtype="int16")[0])[:16000 * 3]
    codes = {}
    for name, path in (("onnx", onnx), ("tflite", tfl)):
        be = load_backend(path)
        x = pipeline.pre(pcm, be.meta)
        codes[name] = be.run(x)
    codes["fakequant"] = torch_outputs(model, x)
    codes["exact"] = intref_outputs(tfl, x, exact=True)
    same = all(np.array_equal(codes["onnx"], c) for c in codes.values())
    assert same == snap, {k: int((c != codes["onnx"]).sum()) for k, c in codes.items()}


def test_residual_decoder_multipliers_get_an_odd_denominator_too():
    """y1's decoder reuses y0's weight scales: its multipliers are y0's times R = gain s_err s_frames /
    (s_masked s_res_frames). The demo model trained to R = 0.823 (the jitter model before it: 0.747; no odd
    denominator: ties possible); snapped, R = 4/5 with each scale moved < RES_MAX_MOVE, the SUB and overlap-add
    grids kept."""
    from training import checkpoint
    ckpt = ROOT / "training" / "pretrained" / "demo_fqse_tiny.pt"
    ratios, scales = {}, {}
    for snap in (False, True):
        m = checkpoint.load_model(ckpt, snap=snap).eval()
        s = {k: np.float64(grids.scale_of(getattr(m, k)))
             for k in ("q_masked", "q_err", "q_frames", "q_res_frames", "q_out", "q_res_enc")}
        ratios[snap] = m.cfg.res_gain * s["q_err"] * s["q_frames"] / (s["q_masked"] * s["q_res_frames"])
        scales[snap] = s
    odd_den = lambda r: next((w for w in range(1, grids.RES_MAX_DEN + 1, 2) if abs(r * w - round(r * w)) < 1e-6), None)  # noqa: E731
    assert odd_den(ratios[False]) is None and odd_den(ratios[True]) == 5
    s = scales[True]
    for num, den in (("q_masked", "q_err"), ("q_res_enc", "q_err"), ("q_frames", "q_out"), ("q_res_frames", "q_out")):
        k = s[num] / s[den] * grids.TIE_DEN  # up to 3e4: on the grid to float32 precision (one step: 3e-5)
        assert abs(k / round(k) - 1) < 1e-6, (num, den, k)
    assert max(abs(scales[True][k] / scales[False][k] - 1) for k in s) < grids.RES_MAX_MOVE


@pytest.mark.slow
def test_full_size_model_deploys_code_for_code(tmp_path):
    """The full-size model (random weights, trained-like ranges; python -m conversion.fullsize) was where three
    gaps showed (fake-quant vs ONNX/TFLite 20.2 dB): the PReLU grid's ties at x - zp = +-128, a weight 2e-6 LSB
    from a tie that torch's fake_quantize and export rounded apart, and the residual decoder's multipliers
    (73.9 dB on this sample); and with 2 threads the fake-quant model's own float32 convs, whose summation order
    put codes on the other side of a tie (53.7 dB on the converter's check clip). Now onnxruntime gives the
    fake-quant model's int8 codes exactly."""
    import soundfile as sf

    from conversion.fullsize import make_model
    from conversion.parity import torch_outputs
    from conversion.pipeline import export_onnx
    from runtime import pipeline
    from runtime.backends import load_backend
    from training import checkpoint

    from conversion.checks import check_audio
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the summation order of a float32 conv depends on it: the eval model must not
    try:
        ckpt = make_model("BN", True, tmp_path / "full.pt")
        onnx = export_onnx(ckpt, tmp_path / "m.onnx", activations="int8")
        be = load_backend(onnx)
        model = checkpoint.load_model(ckpt)
        for pcm in (sf.read(ROOT / "samples" / "02_pink_+13dB_Carlo_noisy.wav", dtype="int16")[0], check_audio(16000)):
            x = pipeline.pre(pcm, be.meta)
            got, ref = be.run(x), torch_outputs(model, x)
            assert np.array_equal(got, ref), int((got != ref).sum())
    finally:
        torch.set_num_threads(threads)
