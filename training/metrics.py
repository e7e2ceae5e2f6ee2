"""Quality metrics for training and evaluation: differentiable SI-SNR and SNR, STOI (numpy SI-SNR/SNR: runtime.metrics)."""
from __future__ import annotations

import numpy as np
import torch



def si_snr_torch(est: torch.Tensor, ref: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant SNR in dB over the last axis (zero-mean), differentiable."""
    est = est - est.mean(-1, keepdim=True)
    ref = ref - ref.mean(-1, keepdim=True)
    proj = (est * ref).sum(-1, keepdim=True) / ((ref ** 2).sum(-1, keepdim=True) + eps) * ref
    return 10 * torch.log10(((proj ** 2).sum(-1) + eps) / (((est - proj) ** 2).sum(-1) + eps))


def snr_torch(est: torch.Tensor, ref: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Plain SNR in dB over the last axis (scale-dependent), differentiable."""
    return 10 * torch.log10(((ref ** 2).sum(-1) + eps) / (((est - ref) ** 2).sum(-1) + eps))


def stoi(est: np.ndarray, ref: np.ndarray, sr: int) -> float:
    from pystoi import stoi as _stoi
    return float(_stoi(ref, est, sr, extended=False))
