"""Signal metrics in numpy (runtime-safe): SI-SNR and SNR in dB."""
from __future__ import annotations

import numpy as np


def si_snr(est: np.ndarray, ref: np.ndarray, eps: float = 1e-12) -> float:
    """Scale-invariant SNR in dB (both signals made zero-mean)."""
    est = np.asarray(est, np.float64) - np.mean(est)
    ref = np.asarray(ref, np.float64) - np.mean(ref)
    proj = np.dot(est, ref) / (np.dot(ref, ref) + eps) * ref
    return float(10 * np.log10((np.dot(proj, proj) + eps) / (np.sum((est - proj) ** 2) + eps)))


def snr(est: np.ndarray, ref: np.ndarray) -> float:
    """Plain SNR of est against ref in dB (SDR for quality, and parity between two models)."""
    est, ref = np.asarray(est, np.float64), np.asarray(ref, np.float64)
    return float(10 * np.log10((np.sum(ref ** 2) + 1e-20) / (np.sum((est - ref) ** 2) + 1e-20)))
