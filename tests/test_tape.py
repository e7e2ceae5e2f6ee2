"""The deploy graph recorded from the forward (training/tape.py): no side effects, no unrecorded op,
bias links that match what the forward actually feeds each conv."""
from __future__ import annotations

import pytest
import torch

from training.model import Block, ConvTasNet, ModelConfig, Norm, QConv
from training.quant import ActQuant, WeightQuant

SMALL = dict(n_filters=16, kernel_size=8, bn_chan=8, hid_chan=12, skip_chan=8, n_blocks=2, n_repeats=2)


def _qat(**kw) -> ConvTasNet:
    torch.manual_seed(0)
    return ConvTasNet(ModelConfig(**{**SMALL, "norm_type": "BN", "causal": True, "n_splitter": 2, "n_combiner": 2,
                                     "quantize": True, **kw}))


def test_trace_leaves_the_model_untouched():
    """Tracing a fresh QAT model in training mode must not observe ranges, initialize weight scales or
    change modes (it runs at construction, before pretrained weights are loaded)."""
    model = _qat()  # construction traces once (bias links)
    assert not any(bool(m.initialized) for m in model.modules() if isinstance(m, WeightQuant))
    assert all(int(m.steps) == 0 for m in model.modules() if isinstance(m, ActQuant))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model._record()
    after = model.state_dict()
    assert model.training and all(m.enabled for m in model.modules() if hasattr(m, "enabled"))
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, changed


def test_an_unrecorded_op_in_the_forward_fails_loudly(monkeypatch):
    """A torch op added to the forward outside tape.op would be missing from the deployed graph."""
    real = Block.forward
    monkeypatch.setattr(Block, "forward", lambda self, x, p="": real(self, x * 1.0, p))
    with pytest.raises(RuntimeError, match="without going through op"):
        _qat()


@pytest.mark.parametrize("kw", [{}, {"norm_type": "gLN", "causal": False, "encoder_split": True,
                                     "encoder_bias": True}])
def test_bias_links_are_the_quantizers_the_forward_feeds(kw):
    """Checked independently of the tape with hooks: each biased conv / BN affine is linked to the
    quantizer whose output tensor it reads (its int32 bias grid uses that scale)."""
    model = _qat(**kw).eval()
    produced, consumed = {}, {}
    hooks = [m.register_forward_hook(lambda mod, i, o: produced.__setitem__(id(o), mod))
             for m in model.modules() if isinstance(m, ActQuant)]
    hooks += [m.register_forward_pre_hook(lambda mod, i: consumed.__setitem__(mod, i[0]))
              for m in model.modules() if isinstance(m, (QConv, Norm))]
    with torch.no_grad():
        model(torch.zeros(1, 2, 64))
    for h in hooks:
        h.remove()
    biased = [m for m in consumed if (m.conv.bias is not None if isinstance(m, QConv) else m.kind == "BN")]
    assert len(biased) >= 10
    for m in biased:
        assert m.in_quant is produced[id(consumed[m])], m
