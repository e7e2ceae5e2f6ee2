"""Reliability and security: untrusted checkpoints, Enhancer input checks, work-dir protection, atomic writes."""
from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import run_fqse


class _Exploit:
    """Unpickling this runs `touch MARKER` (what a crafted .pt does with weights_only=False)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _evil_checkpoint(tmp: Path) -> tuple[Path, Path]:
    marker = tmp / "PWNED"
    evil = tmp / "evil.pt"
    torch.save({"format": "fqse-checkpoint-1", "model_config": {}, "state_dict": {}, "x": _Exploit(marker)}, evil)
    return evil, marker


def test_malicious_checkpoint_payload_is_live_without_weights_only(tmp_path):
    """Control: the crafted file really runs its command when loaded the unsafe way."""
    evil, marker = _evil_checkpoint(tmp_path)
    torch.load(evil, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("argv", [
    ["export", "--checkpoint", "{evil}", "-o", "{tmp}/m.onnx"],
    ["parity", "--checkpoint", "{evil}", "--audio", "samples/00_white_+3dB_noisy.wav"],
])
def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path, argv):
    evil, marker = _evil_checkpoint(tmp_path)
    res = run_fqse(*[a.format(evil=evil, tmp=tmp_path) for a in argv])
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "refused to load" in lines[0] and "posix.system" in lines[0], res.stderr
    assert not marker.exists()
    assert not (tmp_path / "m.onnx").exists()


def test_malicious_pretrained_and_plain_tensor_refused(tmp_path):
    from training import checkpoint
    from training.model import ConvTasNet, ModelConfig
    evil, marker = _evil_checkpoint(tmp_path)
    model = ConvTasNet(ModelConfig(n_filters=16, kernel_size=16, bn_chan=8, hid_chan=16, skip_chan=8, n_blocks=2,
                                   n_repeats=1))
    with pytest.raises(checkpoint.CheckpointError, match="refused to load"):
        checkpoint.init_from_float(model, evil)
    assert not marker.exists()
    torch.save(torch.zeros(3), tmp_path / "t.pt")
    with pytest.raises(checkpoint.CheckpointError, match="holds a Tensor, not a checkpoint dict"):
        checkpoint.load_model(tmp_path / "t.pt")
