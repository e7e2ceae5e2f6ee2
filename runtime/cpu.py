"""What the CPU this runs on is good at, for choosing the ONNX activation type (numpy-free, stdlib only)."""
from __future__ import annotations

import platform


def is_x86(machine: str | None = None) -> bool:
    return (machine or platform.machine()).lower() in ("x86_64", "amd64", "i386", "i686", "x86")


def onnx_activations(machine: str | None = None) -> str:
    """"uint8" on x86, "int8" (s8s8) on ARM.

    On x86 onnxruntime (1.23) runs the uint8 form 3-6x faster than s8s8, with VNNI as without it (measured:
    AVX2-only EPYC and AVX512-VNNI EPYC, demo and full-size models; README "ONNX activation type")."""
    return "uint8" if is_x86(machine) else "int8"
