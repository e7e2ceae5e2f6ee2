"""Noise-estimating models (model.estimate: noise): the network outputs the noise and the host subtracts it
from its int16 input. The fixture is the shipped demo FQSE model with its mask flipped (checkpoint.flip_mask),
a real network whose output is far from zero, so a missing or shifted subtraction shows."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import DEMO_CKPT, SAMPLES


@pytest.fixture(scope="module")
def noise_models(tmp_path_factory) -> dict:
    from conversion.pipeline import convert_tflite, export_onnx
    from training import checkpoint
    from training.model import ConvTasNet, ModelConfig
    d = tmp_path_factory.mktemp("noise")
    cfg = dict(checkpoint.read(DEMO_CKPT)["model_config"], estimate="noise")
    model = ConvTasNet(ModelConfig(**cfg))
    checkpoint.init_from_float(model, DEMO_CKPT)
    ckpt = d / "noise.pt"
    checkpoint.save(ckpt, model)
    convert_tflite(ckpt, d / "noise.tflite")
    convert_tflite(ckpt, d / "step.tflite", step_frames=16)
    return {"ckpt": ckpt, "tflite": d / "noise.tflite", "step": d / "step.tflite",
            "onnx": export_onnx(ckpt, d / "noise.onnx", activations="int8")}


def _sample() -> np.ndarray:
    from runtime.audio import read_audio, to_int16
    return to_int16(read_audio(sorted(SAMPLES.glob("*_noisy.wav"))[0], 16000)[0])


@pytest.mark.parametrize("kind", ["tflite", "onnx"])
def test_runtime_subtracts_the_noise_estimate_like_the_torch_model(kind, noise_models):
    """Runtime output = input - model output, code for code with the fake-quant torch pipeline."""
    from runtime import pipeline
    from runtime.enhancer import Enhancer
    from training.checkpoint import load_model
    from training.model import enhance
    pcm = _sample()
    enh = Enhancer.from_file(noise_models[kind])
    assert enh.meta["estimate"] == "noise" and enh.meta["format"] == "fqse-3"
    got = enh.enhance(pcm)
    raw = pipeline.post(enh.be.run(pipeline.pre(pcm, enh.meta)), len(pcm), enh.meta)
    assert np.abs(raw).max() > 1000  # the flipped mask's estimate is loud: a missing subtraction would show
    np.testing.assert_array_equal(got, np.clip(pcm.astype(np.int32) - raw, -32768, 32767))
    with torch.no_grad():
        ref = enhance(load_model(noise_models["ckpt"]), torch.from_numpy(pcm / 32768.0).float()[None])[0].numpy()
    np.testing.assert_array_equal(got, np.round(ref * 32768).astype(np.int16))


@pytest.mark.parametrize("chunk", [160, 256, 1000])
def test_streaming_subtracts_the_aligned_input(chunk, noise_models):
    """Step model fed in chunks (its output is delayed by its stream offset) = offline model, bit for bit:
    the input it subtracts is the one its output belongs to."""
    from runtime.enhancer import Enhancer
    pcm = _sample()
    offline = Enhancer.from_file(noise_models["tflite"]).enhance(pcm)
    enh = Enhancer.from_file(noise_models["step"])
    out = [enh.process(pcm[i: i + chunk]) for i in range(0, len(pcm), chunk)] + [enh.flush()]
    np.testing.assert_array_equal(np.concatenate(out), offline)
    windowed = Enhancer.from_file(noise_models["tflite"])
    windowed.window_s = 0.5  # 3 s in 0.5 s windows: the causal windowed path
    np.testing.assert_array_equal(windowed.enhance(pcm), offline)


def test_fqse2_model_files_still_load_as_speech_estimates():
    """Models written before format fqse-3 have no `estimate`: they are speech estimates."""
    from runtime.enhancer import Enhancer
    from tests.conftest import ROOT
    enh = Enhancer.from_file(ROOT / "docs" / "report_indep" / "model_int8.tflite")
    assert enh.meta["format"] == "fqse-2" and not enh.info.noise_estimate


def test_flipped_mask_is_one_minus_the_speech_mask():
    """checkpoint.flip_mask: relu(1 - (w x + b)) = 1 - relu(w x + b) wherever the speech mask is in [0, 1]."""
    from training.checkpoint import flip_mask
    torch.manual_seed(0)
    w, b, x = torch.randn(8, 4), torch.rand(8) * 0.5, torch.randn(4, 100) * 0.1
    sd = flip_mask({"mask_conv.conv.weight": w, "mask_conv.conv.bias": b})
    speech = w @ x + b[:, None]
    noise = torch.relu(sd["mask_conv.conv.weight"] @ x + sd["mask_conv.conv.bias"][:, None])
    inside = (speech >= 0) & (speech <= 1)
    assert inside.float().mean() > 0.5
    torch.testing.assert_close(noise[inside], 1 - speech[inside])


def test_checkpoint_and_config_must_agree_on_the_estimate(noise_models):
    """A noise checkpoint evaluated or resumed under a speech config is refused in one line."""
    from training.checkpoint import CheckpointError, load_model, read
    from training.model import ModelConfig
    speech = ModelConfig(**dict(read(noise_models["ckpt"])["model_config"], estimate="speech"))
    with pytest.raises(CheckpointError, match=r"does not match the config: estimate: checkpoint 'noise', config 'speech'$"):
        load_model(noise_models["ckpt"], speech)
