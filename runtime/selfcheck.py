"""The runtime's outputs on this machine, for comparing CPUs bit for bit (`make aarch64-check`).

    python -m runtime.selfcheck --audio A.wav M1.tflite M2.onnx ...

Prints one JSON object: the machine, the ONNX activation type `auto` picks here, and per model the
kernels that ran and the SHA-256 of the enhanced int16 output (whole-signal enhance).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--audio", required=True)
    a = p.parse_args(argv)
    from runtime.audio import read_audio, to_int16
    from runtime.cpu import onnx_activations
    from runtime.enhancer import Enhancer
    res: dict = {"machine": platform.machine(), "onnx_activations": onnx_activations(), "models": {}}
    for m in a.models:
        enh = Enhancer.from_file(m)
        y = enh.enhance(to_int16(read_audio(a.audio, enh.sr)[0]))
        res["models"][m] = {"kernels": getattr(enh.be, "kernels", "onnxruntime"), "samples": int(len(y)),
                            "sha256": hashlib.sha256(y.astype("<i2").tobytes()).hexdigest()}
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
