"""What the CPU this runs on is good at, for choosing the ONNX activation type (numpy-free, stdlib only)."""
from __future__ import annotations

import platform
from pathlib import Path

# CPU flags (Linux /proc/cpuinfo names) of x86 int8 dot-product instructions that make s8s8 fast.
_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_flags() -> set[str]:
    """The `flags` of /proc/cpuinfo (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def is_x86(machine: str | None = None) -> bool:
    return (machine or platform.machine()).lower() in ("x86_64", "amd64", "i386", "i686", "x86")


def onnx_activations(machine: str | None = None, flags: set[str] | None = None) -> str:
    """"uint8" on x86 without VNNI (onnxruntime's fast int8 path there takes uint8 activations),
    "int8" on ARM and on x86 with VNNI (where s8s8 is the fast path)."""
    if not is_x86(machine):
        return "int8"
    flags = cpu_flags() if flags is None else flags
    return "int8" if any(f in flags for f in _VNNI_FLAGS) else "uint8"
