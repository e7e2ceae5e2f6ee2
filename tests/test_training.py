"""Training: asteroid checkpoints, config/checkpoint mismatch, data errors, resume after a kill."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tests.conftest import ROOT
from training import checkpoint, grids
from training.config import ConfigError, load_config, model_config
from training.data import DataError, MixDataset
from training.model import ConvTasNet, ModelConfig, enhance

SMALL = dict(n_filters=16, kernel_size=16, bn_chan=8, hid_chan=16, skip_chan=8, n_blocks=2, n_repeats=1)


def _write_config(tmp: Path, data: Path, **model) -> Path:
    conf = {"work_dir": str(tmp / "work"), "seed": 0,
            "model": {**SMALL, "norm_type": "BN", "causal": True, "n_splitter": 2, "n_combiner": 2,
                      "quantization": {"enabled": True, "gradient_based": True}, **model},
            "dataset": {"train_dir": str(data / "train"), "valid_dir": str(data / "dev"), "segment": 0.5},
            "training": {"epochs": 3, "batch_size": 2, "save_every": 1, "max_steps_per_epoch": 5}}
    p = tmp / "conf.yml"
    p.write_text(yaml.safe_dump(conf))
    return p


def _asteroid_state(cfg: ModelConfig) -> dict:
    """A checkpoint in asteroid's layout and key names, made from a float model of ours."""
    m = ConvTasNet(cfg)
    sd = {"encoder.filterbank._filters": m.encoder.conv.weight.detach().clone(),
          "decoder.filterbank._filters": m.decoder_filters.detach().clone(),
          "masker.bottleneck.0.gamma": m.bottleneck_norm.gamma.detach().clone() + 0.5,
          "masker.bottleneck.0.beta": m.bottleneck_norm.beta.detach().clone(),
          "masker.bottleneck.1.weight": m.bottleneck.conv.weight.detach().clone(),
          "masker.bottleneck.1.bias": m.bottleneck.conv.bias.detach().clone(),
          "masker.mask_net.0.weight": torch.tensor([0.3]),
          "masker.mask_net.1.weight": m.mask_conv.conv.weight.detach().clone(),
          "masker.mask_net.1.bias": m.mask_conv.conv.bias.detach().clone()}
    names = {"in_conv.conv": "0", "prelu1": "1", "norm1": "2", "dconv.conv": "3", "prelu2": "4", "norm2": "5"}
    for k, blk in enumerate(m.blocks):
        for ours, idx in names.items():
            mod = blk.get_submodule(ours)
            for pname, p in mod.named_parameters(recurse=False):
                sd[f"masker.TCN.{k}.shared_block.{idx}.{pname}"] = p.detach().clone() + 0.1
        for r in ("res_conv", "skip_conv"):
            sd[f"masker.TCN.{k}.{r}.weight"] = getattr(blk, r).conv.weight.detach().clone()
            sd[f"masker.TCN.{k}.{r}.bias"] = getattr(blk, r).conv.bias.detach().clone()
    return {"model_name": "ConvTasNet", "model_args": {"n_filters": cfg.n_filters, "norm_type": cfg.norm_type},
            "state_dict": sd}


def test_loads_asteroid_checkpoint(tmp_path):
    cfg = ModelConfig(**SMALL, norm_type="gLN")
    ast = _asteroid_state(cfg)
    torch.save(ast, tmp_path / "pytorch_model.bin")
    model = ConvTasNet(ModelConfig(**SMALL, norm_type="gLN", quantize=True, n_splitter=2, n_combiner=2))
    checkpoint.init_from_float(model, tmp_path / "pytorch_model.bin")
    sd = ast["state_dict"]
    assert torch.equal(model.blocks[1].dconv.conv.weight, sd["masker.TCN.1.shared_block.3.weight"])
    assert torch.equal(model.blocks[0].norm2.gamma, sd["masker.TCN.0.shared_block.5.gamma"])
    assert torch.equal(model.mask_prelu.weight, sd["masker.mask_net.0.weight"])
    # the second splitter channel starts as the first one / 256
    enc = model.encoder.conv.weight
    assert torch.allclose(enc[:, 1], sd["encoder.filterbank._filters"][:, 0] / 256)


def test_asteroid_checkpoint_with_other_config_is_clear_error(tmp_path):
    torch.save(_asteroid_state(ModelConfig(**SMALL, norm_type="gLN")), tmp_path / "a.bin")
    model = ConvTasNet(ModelConfig(**{**SMALL, "hid_chan": 24}, norm_type="gLN"))
    with pytest.raises(checkpoint.CheckpointError, match="shapes do not match"):
        checkpoint.init_from_float(model, tmp_path / "a.bin")


def test_checkpoint_config_mismatch_is_clear_error(tmp_path):
    m = ConvTasNet(ModelConfig(**SMALL, norm_type="BN", causal=True))
    checkpoint.save(tmp_path / "c.pt", m)
    with pytest.raises(checkpoint.CheckpointError, match="norm_type: checkpoint 'BN', config 'gLN'"):
        checkpoint.load_model(tmp_path / "c.pt", ModelConfig(**SMALL, norm_type="gLN"))


def test_bad_config_values_are_clear_errors(tmp_path):
    p = tmp_path / "c.yml"
    p.write_text("model: {norm_type: XN}\n")
    with pytest.raises(ConfigError, match="norm_type"):
        model_config(load_config(p))
    p.write_text("model: {norm_type: gLN, causal: true}\n")
    with pytest.raises(ConfigError, match="causal model needs"):
        model_config(load_config(p))


def test_empty_data_folder_and_missing_column(tmp_path, tiny_data):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no metadata CSV"):
        MixDataset(tmp_path / "empty")
    bad = tmp_path / "bad" / "train"
    bad.mkdir(parents=True)
    (bad / "mix_single.csv").write_text("mixture_ID,mixture_path,length\nx,a.wav,3\n")
    with pytest.raises(DataError, match="missing column.*source_1_path"):
        MixDataset(bad)


def _tone_set(folder: Path, noise_hz: list[int], speech_hz: int = 1000, n: int = 16000) -> Path:
    """A split whose speech is a tone at speech_hz and whose row i's noise is a tone at noise_hz[i]."""
    import soundfile as sf
    folder.mkdir(parents=True)
    t = np.arange(n) / 16000
    lines = ["mixture_ID,mixture_path,source_1_path,noise_path,length"]
    for i, f in enumerate(noise_hz):
        s, z = 0.3 * np.sin(2 * np.pi * speech_hz * t), 0.1 * np.sin(2 * np.pi * f * t)
        for name, x in ((f"s{i}", s), (f"n{i}", z), (f"m{i}", s + z)):
            sf.write(folder / f"{name}.wav", x, 16000, subtype="PCM_16")
        lines.append(f"{i},{folder}/m{i}.wav,{folder}/s{i}.wav,{folder}/n{i}.wav,{n}")
    (folder / "mix_single.csv").write_text("\n".join(lines) + "\n")
    return folder


def _peak_hz(x: np.ndarray) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(x * np.hanning(len(x))))) * 16000 / len(x))


def test_speed_and_dynamic_mix_augmentation(tmp_path):
    noise_hz = [200 + 100 * i for i in range(8)]
    split = _tone_set(tmp_path / "train", noise_hz)
    items = {}
    for speed, dyn in ((0.0, False), (0.1, True)):
        ds = MixDataset(split, 0.5, snr_range=(0.0, 10.0), speed=speed, dynamic_mix=dyn)
        items[speed] = [(i, *(x.numpy() for x in ds[i])) for i in range(len(ds)) for ds.epoch in range(4)]
    for speed, rows in items.items():
        for i, mix, clean in rows:
            assert len(mix) == len(clean) == 8000
            snr = 10 * np.log10(np.sum(clean ** 2) / np.sum((mix - clean) ** 2))
            assert -0.1 < snr < 10.1  # re-mixed at the drawn SNR
    plain = items[0.0]
    assert {_peak_hz(c) for _, _, c in plain} == {1000.0}
    assert all(abs(_peak_hz(m - c) - noise_hz[i]) <= 2 for i, m, c in plain)  # each row keeps its own noise
    aug = items[0.1]
    # speed factors 20/p for p in 18..22: the tone moves to 1000 * p / 20 Hz (900 ... 1100 in 50 Hz steps)
    speeds = [_peak_hz(c) for _, _, c in aug]
    assert all(min(abs(f - h) for h in (900, 950, 1000, 1050, 1100)) <= 2 for f in speeds)
    assert len({round(f / 50) for f in speeds}) == 5
    noises = [_peak_hz(m - c) for _, m, c in aug]
    assert all(min(abs(f - h) for h in noise_hz) <= 2 for f in noises)  # noise of some row of the split
    assert sum(abs(f - noise_hz[i]) > 2 for f, (i, _, _) in zip(noises, aug)) > len(aug) // 2  # mostly another's


def test_eq_augmentation_is_a_zero_phase_random_gain_within_its_range(tmp_path):
    """On a 1 kHz tone, the random EQ is a pure gain (linear phase, centred: no delay, no phase shift) drawn
    anew per item and epoch within +-eq dB; the mixture keeps the drawn SNR (noise EQ'd on its own)."""
    split = _tone_set(tmp_path / "train", [300, 500, 700, 900])
    plain = MixDataset(split, None, snr_range=(0.0, 10.0))
    ds = MixDataset(split, None, snr_range=(0.0, 10.0), eq=6.0)
    gains = []
    for ds.epoch in range(6):
        plain.epoch = ds.epoch
        for i in range(len(ds)):
            (m0, c0), (m, c) = (tuple(x.numpy().astype(np.float64) for x in d[i]) for d in (plain, ds))
            core = slice(100, -100)  # the FIR's half length (32) from either end sees zero padding
            g = np.dot(c[core], c0[core]) / np.dot(c0[core], c0[core])
            resid = c[core] - g * c0[core]
            assert 10 * np.log10(np.sum((g * c0[core]) ** 2) / np.sum(resid ** 2)) > 40  # a gain, nothing else
            snr, snr0 = (10 * np.log10(np.sum(a ** 2) / np.sum((b - a) ** 2)) for a, b in ((c, m), (c0, m0)))
            assert abs(snr - snr0) < 0.05  # same drawn SNR
            gains.append(20 * np.log10(abs(g)))
    assert max(np.abs(gains)) <= 6.5  # within the drawn range (+ the 65-tap FIR's ripple)
    assert np.std(gains) > 1.5  # and really drawn: U(-6, 6) at both breakpoints around 1 kHz
    with pytest.raises(DataError, match="eq augmentation"):
        MixDataset(split, None, snr_range=(0.0, 10.0), eq=-1)


def test_narrowband_augmentation_band_limits_speech_and_noise_of_a_drawn_share_of_items(tmp_path):
    """narrowband=p puts an item's speech and noise through an 8 kHz channel with probability p (own random stream):
    the noise's 6 kHz tone vanishes from the mixture (its 3 kHz tone and the 1 kHz speech tone stay); items not
    drawn are the plain ones, sample for sample."""
    import soundfile as sf
    split = _tone_set(tmp_path / "train", [3000] * 4, speech_hz=1000)
    t = np.arange(16000) / 16000
    for i in range(4):
        sf.write(split / f"n{i}.wav", 0.1 * np.sin(2 * np.pi * 3000 * t) + 0.1 * np.sin(2 * np.pi * 6000 * t), 16000,
                 subtype="PCM_16")
    plain = MixDataset(split, None, snr_range=(0.0, 10.0))
    always, half = (MixDataset(split, None, snr_range=(0.0, 10.0), narrowband=p) for p in (1.0, 0.5))

    def hf(x: np.ndarray) -> float:  # share of power above 4.5 kHz
        p = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
        return float(p[np.fft.rfftfreq(len(x), 1 / 16000) > 4500].sum() / p.sum())
    drawn = 0
    for ep in range(10):
        plain.epoch = always.epoch = half.epoch = ep
        for i in range(len(plain)):
            (m0, c0), (m1, c1), (mh, ch) = (tuple(x.numpy() for x in d[i]) for d in (plain, always, half))
            assert hf(m0) > 0.01 and hf(m1) < 1e-3 and hf(c1) < 1e-4  # the 6 kHz tone is gone, the speech stays
            assert abs(np.std(c1) / np.std(c0) - 1) < 0.02
            limited = hf(mh) < 1e-3
            assert limited or (np.array_equal(mh, m0) and np.array_equal(ch, c0))
            drawn += limited
    assert 12 <= drawn <= 28  # 40 items at p = 0.5 (binomial: 5th-95th percentile 15-25)
    with pytest.raises(DataError, match="narrowband augmentation"):
        MixDataset(split, None, snr_range=(0.0, 10.0), narrowband=1.5)


def test_fqse_models_quantize_every_tensor_on_integer_grid():
    torch.manual_seed(0)
    m = ConvTasNet(ModelConfig(**SMALL, norm_type="BN", causal=True, quantize=True, n_splitter=2, n_combiner=2))
    m.train()
    enhance(m, torch.rand(2, 4000) - 0.5)
    m.eval()
    from conversion.graph import build_graph
    g = build_graph(m)
    assert all(op.qp is not None for op in g.ops if op.output != "mask_conv_f")
    for op in g.ops:
        if op.kind == "conv":
            assert op.attrs["w_int"].min() >= -127  # narrow symmetric range


def test_qat_biases_sit_on_the_int32_grid():
    """Every biased conv (and BN affine) of the fake-quant model adds a bias that is an integer
    multiple of input scale x weight scale (the int32 bias of the int8 kernels), and export writes
    those same biases. Fed zeros (an exact code of its input grid), a conv outputs its bias."""
    from runtime import qmath
    from training.model import Norm, QConv
    torch.manual_seed(0)
    m = ConvTasNet(ModelConfig(**SMALL, norm_type="BN", causal=True, quantize=True, n_splitter=2, n_combiner=2))
    with torch.no_grad():  # BN with a non-zero affine bias (fresh statistics give b = 0)
        for mod in m.modules():
            if isinstance(mod, Norm):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.beta.uniform_(-0.2, 0.2)
    m.train()
    for _ in range(30):  # observed ranges near their EMA limit (the first step sees 10 % of the range)
        enhance(m, torch.rand(2, 4000) - 0.5)
    m.eval()
    checked, sizes = 0, []
    with torch.no_grad():
        for name, mod in m.named_modules():
            q_in = getattr(mod, "in_quant", None)
            if q_in is None or (isinstance(mod, QConv) and mod.conv.bias is None):
                continue
            if isinstance(mod, QConv):
                w = mod.conv.weight
                b = mod(torch.zeros(1, mod.conv.in_channels, w.shape[-1] + 8))[0, :, 0]
            else:
                assert isinstance(mod, Norm) and mod.kind == "BN"
                w = mod.affine()[0][:, None]
                b = mod(torch.zeros(1, w.shape[0], 4))[0, :, 0]
            s = qmath.bias_scale(q_in.qparams()[0], mod.wq.scales(w)).double()
            k = b.double() / s
            # float32 biases: k is an integer to within float32's relative precision
            assert ((k - k.round()).abs() <= k.abs() * 2.0 ** -22 + 1e-9).all(), (name, k)
            sizes.append(k.abs().median().item())
            checked += 1
    assert checked >= 2 * len(m.blocks) + 3
    assert 0 < np.median(sizes) < 2 ** 16, sizes  # so the check above resolves a fraction of a code
    from conversion.graph import build_graph
    g = build_graph(m)
    conv_bias = {n: mod(torch.zeros(1, mod.conv.in_channels, mod.conv.kernel_size[0] + 8))[0, :, 0].detach().numpy()
                 for n, mod in m.named_modules() if isinstance(mod, QConv) and mod.conv.bias is not None}
    exported = {op.output: op.attrs["bias"] for op in g.ops if op.kind == "conv" and op.attrs["bias"] is not None}
    assert np.array_equal(exported["bottleneck"], conv_bias["bottleneck"])
    assert np.array_equal(exported["b0_in"], conv_bias["blocks.0.in_conv"])


def _state(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def test_resume_after_kill_matches_uninterrupted_run(tmp_path, tiny_data):
    conf = _write_config(tmp_path, tiny_data)
    full = subprocess.run([sys.executable, "-m", "fqse", "train", "-y", str(conf), "--work-dir", str(tmp_path / "a"),
                           "--max-steps", "8"], cwd=ROOT, capture_output=True, text=True)
    assert full.returncode == 0, full.stderr[-2000:]
    # the same run, killed (SIGKILL) once a mid-epoch checkpoint exists, then resumed
    proc = subprocess.Popen([sys.executable, "-m", "fqse", "train", "-y", str(conf), "--work-dir", str(tmp_path / "b"),
                             "--max-steps", "8"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "b" / "last.pt"
    deadline = time.time() + 120
    while time.time() < deadline:
        if last.exists() and _state(last)["train_state"]["step"] >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _state(last)["train_state"]
    assert killed_at["step"] < 8  # killed before the end
    res = subprocess.run([sys.executable, "-m", "fqse", "train", "-y", str(conf), "--work-dir", str(tmp_path / "b"),
                          "--max-steps", "8", "--resume"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    a, b = _state(tmp_path / "a" / "last.pt"), _state(last)
    assert a["train_state"]["step"] == b["train_state"]["step"] == 8
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.allclose(sa[k]["exp_avg"], sb[k]["exp_avg"], atol=1e-6)
    for k, v in a["state_dict"].items():
        assert torch.allclose(v.float(), b["state_dict"][k].float(), atol=1e-5), k


_DDP_RUN = """
import os, sys, torch
import training.train as T
from training.config import load_config
made = []
class Recorded(T.ConvTasNet):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        made.append(self)
T.ConvTasNet = Recorded
T.train(load_config(sys.argv[1]), sys.argv[2], max_steps=int(sys.argv[3]), show_progress=False)
torch.save(made[0].state_dict(), os.path.join(sys.argv[2], "rank%s.pt" % os.environ["RANK"]))
"""


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_two_gloo_processes(tmp_path, tiny_data):
    """Two gloo processes (torchrun) train in step: after the steps both ranks hold the same weights and
    quantizer ranges, bit for bit, and rank 0's checkpoint is that state. Each rank saves its own model."""
    conf = _write_config(tmp_path, tiny_data)
    script = tmp_path / "ddp_run.py"
    script.write_text(_DDP_RUN)
    work = tmp_path / "ddp"
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(script), str(conf),
                          str(work), "3"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})  # this checkout's training/, as -m fqse has
    assert res.returncode == 0, res.stderr[-2000:]
    st = _state(work / "last.pt")
    assert st["train_state"]["step"] == 3
    r0, r1 = (torch.load(work / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0.keys() == r1.keys() == st["state_dict"].keys()
    differ = [k for k in r0 if not torch.equal(r0[k], r1[k])]
    assert not differ, differ  # DDP averages the gradients: identical steps on identical weights
    assert all(torch.equal(v, st["state_dict"][k]) for k, v in r0.items())
    init = ConvTasNet(ModelConfig(**SMALL, norm_type="BN", causal=True, quantize=True, n_splitter=2, n_combiner=2))
    moved = [k for k, v in r0.items() if k.endswith("conv.weight") and not torch.equal(v, init.state_dict()[k])]
    assert len(moved) >= 10, moved  # the two processes trained the model


def test_snapped_prelus_sit_on_xnnpack_grid(demo_ckpt):
    """After load_model, each PReLU's input/output scale ratio is (a + 1/256)/256 and slope x ratio (b - 1/256)/256
    with a, b odd (XNNPACK's int8 LeakyReLU computes with a and b and is then exact); snapping again changes
    nothing."""
    import numpy as np
    from training.checkpoint import load_model
    from training.grids import LRELU_NUDGE, snap_prelu
    m = load_model(demo_ckpt)
    pairs = [(b.prelu1, b.q_in, b.q_prelu1) for b in m.blocks] + [(b.prelu2, b.q_dconv, b.q_prelu2) for b in m.blocks]
    for prelu, qi, qo in pairs:
        ratio = 256 * np.float64(np.float32(qi.qparams()[0])) / np.float64(np.float32(qo.qparams()[0]))
        a = round(float(ratio))
        b = float(prelu.weight) * ratio
        assert abs(ratio - a - LRELU_NUDGE) < 1e-4 and a % 2 == 1
        assert abs(b - round(b) + LRELU_NUDGE) < 1e-4 and round(b) % 2 == 1
        before = (qo.min.item(), qo.max.item(), float(prelu.weight), qo.qparams()[1])
        snap_prelu(prelu, qi, qo)
        assert (qo.min.item(), qo.max.item(), float(prelu.weight), qo.qparams()[1]) == pytest.approx(before, rel=1e-9)


_VANILLA = {"n_splitter": 1, "n_combiner": 1, "quantization": {"enabled": True, "gradient_based": False, "ema_steps": 2}}


@pytest.fixture(scope="module")
def vanilla_run(tmp_path_factory, tiny_data):
    """Vanilla QAT (S = 1, C = 1, observed EMA ranges, ema_steps 2) trained 4 steps by training.train itself; the
    batch extremes each range quantizer saw in training mode are recorded step by step."""
    import training.train as T
    from training.config import load_config
    from training.quant import ActQuant
    tmp = tmp_path_factory.mktemp("vanilla")
    made = []

    class Recorded(T.ConvTasNet):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.seen = {}
            for name, q in self.named_modules():
                if isinstance(q, ActQuant) and q.fixed is None:
                    q.register_forward_pre_hook(lambda mod, inp, name=name: self.seen.setdefault(name, []).append(
                        (inp[0].detach().min(), inp[0].detach().max())) if mod.training else None)
            made.append(self)

    orig, T.ConvTasNet = T.ConvTasNet, Recorded
    try:
        T.train(load_config(_write_config(tmp, tiny_data, **_VANILLA)), tmp / "work", max_steps=4, show_progress=False)
    finally:
        T.ConvTasNet = orig
    return made[0], tmp / "work" / "last.pt"


def test_vanilla_qat_ranges_follow_the_activations_not_the_optimizer(vanilla_run):
    model, last = vanilla_run
    assert not model.cfg.gradient_based and model.cfg.n_splitter == model.cfg.n_combiner == 1
    ranges = {n: q for n, q in model.named_modules() if n in model.seen}
    assert len(ranges) >= 20 and all(len(v) == 4 for v in model.seen.values())  # observed at every step, also
    # past ema_steps (2)
    for name, q in ranges.items():
        lo, hi = torch.tensor(0.0), torch.tensor(0.0)
        for mn, mx in model.seen[name]:  # the EMA (alpha 0.9, from 0) of the observed extremes, in float32 as
            lo, hi = lo.mul(0.9).add(0.1 * mn), hi.mul(0.9).add(0.1 * mx)  # ActQuant computes it: bit-exact
        assert torch.equal(q.min.detach(), lo) and torch.equal(q.max.detach(), hi), (name, q.min, lo, q.max, hi)
        assert q.min.grad is None and q.max.grad is None and not q.min.requires_grad
    # the checkpoint's optimizer state holds the trained weights, no range: Adam never touched them
    st = _state(last)
    names = [n for n, _ in model.named_parameters()]
    with_state = {names[i] for i in st["optimizer"]["state"]}
    assert "encoder.conv.weight" in with_state and "blocks.0.dconv.conv.weight" in with_state
    assert not [n for n in with_state if n.endswith((".min", ".max"))]
    assert all(torch.equal(st["state_dict"][f"{n}.min"], q.min.detach()) for n, q in ranges.items())


@pytest.mark.slow
def test_vanilla_qat_model_exports_with_parity(tmp_path):
    """A vanilla-QAT model (S = 1: the input quantized to int8, C = 1, EMA-observed ranges) as int8 ONNX and
    fully-integer TFLite, against its fake-quant model on a speech sample."""
    from conversion import ptq
    from conversion.parity import compare, torch_outputs
    from conversion.pipeline import convert_tflite, export_onnx
    from runtime import pipeline
    from runtime.audio import read_audio, to_int16
    from runtime.backends import load_backend
    from tests.conftest import check_integer_tflite, noisy_clean_pairs
    torch.manual_seed(0)
    m = ConvTasNet(ModelConfig(**SMALL, norm_type="BN", causal=True, quantize=True, gradient_based=False, ema_steps=2))
    clips = [torch.from_numpy(c)[None].float() for c in ptq.calibration_audio(None, 16000, max_seconds=2.0)]
    with torch.no_grad():
        m.train()
        quantizers = [q for q in m.modules() if hasattr(q, "enabled")]
        for q in quantizers:  # the float output (a disabled quantizer neither observes nor rounds)
            q.enabled = False
        peak = enhance(m, clips[0]).abs().max()
        for q in quantizers:
            q.enabled = True
        m.decoder_filters.mul_(0.3 / peak)  # a random network's output is far below the int8 output grid: peak 0.3
        for _ in range(10):  # vanilla QAT's ranges: the EMA of what training-mode forwards observe
            for c in clips:
                enhance(m, c)
    checkpoint.save(tmp_path / "v.pt", m.eval())
    model = checkpoint.load_model(tmp_path / "v.pt")
    paths = [export_onnx(tmp_path / "v.pt", tmp_path / "v.onnx", activations="int8"),
             Path(convert_tflite(tmp_path / "v.pt", tmp_path / "v.tflite")["path"])]
    check_integer_tflite(paths[1])
    for p in paths:
        be = load_backend(p)
        assert be.meta["n_splitter"] == 1 and be.meta["n_combiner"] == 1
        for noisy, _ in noisy_clean_pairs():
            x = pipeline.pre(to_int16(read_audio(noisy, 16000)[0]), be.meta)
            assert x.shape[0] == 1 and x.dtype == np.int8
            ref, got = torch_outputs(model, x), be.run(x)
            r = compare(ref, got, be.meta)
            assert np.abs(ref.astype(int)).max() >= 16  # an output well above the grid's step: parity means something
            # measured: ONNX and TFLite bit-exact with the fake-quant model on every sample (max 0 LSB); the demo
            # model's bounds leave room for the rounding-tie flips other int8 kernels may take (test_onnx.py)
            assert r["snr_db"] >= 42.0 and r["max_lsb"][0] <= 1, (p.suffix, noisy.name, r)


def test_grown_model_starts_as_the_trained_one(tmp_path):
    """A checkpoint with 4 blocks per repeat grown to 8 (training.checkpoint.grow_blocks): block (r, x) keeps its
    weights at r * 8 + x, the new blocks start near identity, so the grown float model's output is the trained
    one's within 30 dB (measured 48.9 dB on this sample with GROW_GAIN 0.05; 29.5 dB on white noise).
    A grown QAT model keeps the learned ranges."""
    import dataclasses

    import soundfile as sf

    from runtime.metrics import si_snr
    pre = ROOT / "training" / "pretrained"
    x = torch.from_numpy(sf.read(ROOT / "samples" / "02_pink_+13dB_Carlo_noisy.wav", dtype="float32")[0])[None]
    small = checkpoint.load_model(pre / "demo_float_tiny.pt")
    torch.manual_seed(0)  # the new blocks' init
    grown = ConvTasNet(dataclasses.replace(small.cfg, n_blocks=8))
    checkpoint.init_from_float(grown, pre / "demo_float_tiny.pt")
    assert torch.equal(grown.blocks[8 + 3].dconv.conv.weight, small.blocks[4 + 3].dconv.conv.weight)
    with torch.no_grad():
        a, b = enhance(small, x)[0].numpy(), enhance(grown.eval(), x)[0].numpy()
    assert si_snr(b, a) > 30
    qat = checkpoint.load_model(pre / "demo_fqse_tiny.pt", snap=False)  # the ranges as stored
    gq = ConvTasNet(dataclasses.replace(qat.cfg, n_blocks=8))
    checkpoint.init_from_float(gq, pre / "demo_fqse_tiny.pt")
    assert gq.blocks[9].q_res.max.item() == qat.blocks[5].q_res.max.item() != 0
    assert gq.q_skips[8].max.item() == qat.q_skips[4].max.item()  # skip sum after old block 5 = new block 9
    assert gq.blocks[12].q_res.steps.item() == 0  # a new block's ranges are observed afresh
    with pytest.raises(checkpoint.CheckpointError, match="only growing"):
        checkpoint.init_from_float(ConvTasNet(dataclasses.replace(small.cfg, n_blocks=2)), pre / "demo_float_tiny.pt")


def test_speed_without_augmentation_is_a_config_error(tmp_path, tiny_data):
    import training.train as T
    conf = load_config(_write_config(tmp_path, tiny_data))
    conf["dataset"]["augmentation"].update(speed=0.1)  # augmentation.enabled stays false: nothing is re-mixed
    with pytest.raises(ConfigError, match="need dataset.augmentation.enabled"):
        T.train(conf, tmp_path / "work", show_progress=False)
    assert not (tmp_path / "work" / "last.pt").exists()


def test_fine_tuned_qat_model_starts_as_the_trained_one():
    """Fine-tuning a QAT checkpoint into the same architecture and quantization keeps every weight, learned range
    and the residual encoder, so in train mode (quantizers live) it computes what the shipped model computes. Before
    this, ranges were observed afresh and the residual encoder reset: the first steps' loss was ~0 dB."""
    import soundfile as sf
    pre = ROOT / "training" / "pretrained"
    x = torch.from_numpy(sf.read(ROOT / "samples" / "02_pink_+13dB_Carlo_noisy.wav", dtype="float32")[0])[None]
    shipped = checkpoint.load_model(pre / "demo_fqse_tiny.pt")
    tuned = ConvTasNet(shipped.cfg)
    checkpoint.init_from_float(tuned, pre / "demo_fqse_tiny.pt")
    assert torch.equal(tuned.res_encoder.conv.weight, shipped.res_encoder.conv.weight)
    with torch.no_grad():
        a, b = enhance(shipped, x)[0], enhance(grids.snap_grids(tuned.eval()), x)[0]  # as load_model does
    assert torch.equal(a, b)


def test_finished_run_writes_the_last_epoch_model_only(tmp_path, tiny_data):
    """A run that ends writes final.pt: the last epoch's weights without optimizer state (what fixed-schedule
    configs ship); a copy of best.pt or of an earlier save would differ in its weights or epoch."""
    import training.train as T
    conf = load_config(_write_config(tmp_path, tiny_data))
    conf["training"].update(epochs=2, max_steps_per_epoch=2)
    T.train(conf, tmp_path / "work", show_progress=False)
    final = checkpoint.read(tmp_path / "work" / "final.pt")
    last = checkpoint.read(tmp_path / "work" / "last.pt")
    assert "optimizer" not in final and final["epoch"] == 1 == last["train_state"]["history"][-1]["epoch"]
    assert all(torch.equal(v, last["state_dict"][k]) for k, v in final["state_dict"].items())
    checkpoint.load_model(tmp_path / "work" / "final.pt")


def test_average_of_checkpoints(tmp_path):
    """`fqse average`: a checkpoint averaged with itself is the same model (outputs bit-exact: integer buffers
    kept, PReLUs snapped once, at load); two runs average tensor by tensor, BN statistics included; another
    architecture is refused in one line and nothing is written."""
    cfg = ModelConfig(**SMALL, norm_type="BN", causal=True, quantize=True, n_splitter=2, n_combiner=2)
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = ConvTasNet(cfg).train()
        enhance(m, torch.rand(2, 4000) - 0.5)  # quantizers initialised, BN statistics moved
        paths.append(tmp_path / f"m{seed}.pt")
        checkpoint.save(paths[-1], m)
    from tests.conftest import run_fqse
    res = run_fqse("average", str(paths[0]), str(paths[0]), "-o", str(tmp_path / "same.pt"))
    assert res.returncode == 0, res.stderr
    x = torch.rand(1, 4000) - 0.5
    with torch.no_grad():
        a, same = (enhance(checkpoint.load_model(p), x) for p in (paths[0], tmp_path / "same.pt"))
    assert torch.equal(a, same)
    checkpoint.average(paths, tmp_path / "avg.pt")
    sa, sb, avg = (checkpoint.read(p)["state_dict"] for p in (*paths, tmp_path / "avg.pt"))
    bn = [k for k in sa if k.endswith("running_var")]
    assert bn and all(torch.allclose(avg[k], (sa[k] + sb[k]) / 2) for k in bn)
    assert torch.allclose(avg["encoder.conv.weight"], (sa["encoder.conv.weight"] + sb["encoder.conv.weight"]) / 2)
    other = ConvTasNet(ModelConfig(**{**SMALL, "n_blocks": 3}, norm_type="BN", causal=True, quantize=True,
                                   n_splitter=2, n_combiner=2))
    checkpoint.save(tmp_path / "other.pt", other)
    res = run_fqse("average", str(paths[0]), str(tmp_path / "other.pt"), "-o", str(tmp_path / "bad.pt"))
    assert res.returncode != 0 and "n_blocks" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad.pt").exists()


def test_ae_weight_makes_the_filterbank_more_transparent(tmp_path, tiny_data):
    """training.ae_weight adds the loss of clean speech through encoder -> decoder (an all-ones mask): from the
    same start and batches, the pass-through of held-out clean speech comes out measurably closer to its input
    than without it (a loss term computed but not added, or added with the wrong sign, fails this)."""
    import soundfile as sf

    import training.train as T
    from runtime.metrics import si_snr
    from training.data import read_rows
    from training.model import passthrough
    clean = [sf.read(r["source_1_path"], dtype="float32")[0] for r in read_rows(tiny_data / "dev")]
    res = {}
    for w in (0.0, 1.0):
        conf = load_config(_write_config(tmp_path, tiny_data, n_splitter=1, n_combiner=1,
                                         quantization={"enabled": False}))
        conf["training"].update(epochs=2, max_steps_per_epoch=5, ae_weight=w)
        T.train(conf, tmp_path / f"w{w}", show_progress=False)
        model = checkpoint.load_model(tmp_path / f"w{w}" / "final.pt").eval()
        with torch.no_grad():
            res[w] = np.mean([si_snr(passthrough(model, torch.from_numpy(c)[None])[0].numpy(), c) for c in clean])
    assert res[1.0] > res[0.0] + 1.5, res  # measured: -11.0 -> -8.4 dB after 10 steps (float, random start)
