"""`fqse bench`: speed, size and peak memory of deployed models (each measured in its own process).

Offline: seconds of compute per second of audio (median of repeats after two warm-up runs at the
measured length), one run of the model over the whole length. Streaming (--stream): per-hop compute time (median, p99, max, the share of hops over
the hop duration) after one untimed second of warm-up, real-time factor, peak RSS. --profile (ONNX): onnxruntime's
kernel time by layer kind and operator.
"""
from __future__ import annotations

import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from runtime.files import atomic_write


def _signal(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    """Speech-like test signal: noise bursts shaped at syllable rate (content does not change speed)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * np.arange(n) / sr)
    return (0.1 * rng.standard_normal(n) * env).clip(-1, 1).astype(np.float32)


def seconds_per_second(run: Callable[[], object], seconds: float, repeats: int = 3) -> float:
    """Seconds of compute per second of audio: median of `repeats` timed calls of `run` (which processes
    `seconds` of audio) after two untimed warm-up calls (onnxruntime needs two runs at a new length)."""
    for _ in range(2):
        run()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) / seconds


def _offline_run(enh) -> Callable[[np.ndarray], np.ndarray]:
    """One run of the model over the whole length: what the offline speed is of. (`enhance` would cut a causal
    model's input into 2 s windows that each recompute the receptive field: README "Streaming".) A step model
    streams."""
    return enh.enhance if enh.step else enh.run_offline


def measure(model: str, threads: int, seconds: float, stream: bool, hop_ms: float, repeats: int = 3) -> dict[str, Any]:
    """Measure in this process (call through `measure_isolated` for a clean peak RSS)."""
    from runtime.audio import to_int16
    from runtime.enhancer import Enhancer
    enh = Enhancer.from_file(model, threads, hop_ms=hop_ms)
    res: dict[str, Any] = {"model": model, "threads": threads, "audio_s": seconds,
                           "size_bytes": Path(model).stat().st_size, "quantized": bool(enh.meta.get("quantized")),
                           "norm_type": enh.meta.get("norm_type"), "causal": enh.causal,
                           "kernels": getattr(enh.be, "kernels", "onnxruntime")}
    if not stream:
        pcm = to_int16(_signal(seconds, enh.sr))
        run = _offline_run(enh)
        res["s_per_s_audio"] = seconds_per_second(lambda: run(pcm), seconds, repeats)
    else:
        # Warm-up (untimed): one second of hops, then the stream starts afresh.
        warm = to_int16(_signal(1.0, enh.sr, seed=10**6))
        for i in range(0, len(warm) - enh.chunk + 1, enh.chunk):
            enh.process(warm[i: i + enh.chunk])
        enh.flush()
        # The signal is made a second at a time, so memory does not grow with its length.
        per_hop = np.zeros(int(seconds * enh.sr) // enh.chunk + 1)
        n = 0
        for sec in range(int(np.ceil(seconds))):
            pcm = to_int16(_signal(min(1.0, seconds - sec), enh.sr, seed=sec))
            for i in range(0, len(pcm) - enh.chunk + 1, enh.chunk):
                t = time.perf_counter()
                enh.process(pcm[i: i + enh.chunk])
                per_hop[n] = time.perf_counter() - t
                n += 1
        per_hop = per_hop[:n]
        enh.flush()
        hop_s = enh.chunk / enh.sr
        res.update(hop_ms=1000 * hop_s, hop_median_ms=1000 * float(np.median(per_hop)),
                   hop_p99_ms=1000 * float(np.percentile(per_hop, 99)), hop_max_ms=1000 * float(np.max(per_hop)),
                   over_budget=float(np.mean(per_hop > hop_s)), rtf=float(np.sum(per_hop)) / seconds,
                   latency_ms=1000 * enh.latency_samples / enh.sr)
    res["peak_rss_mb"] = peak_rss_mb()
    return res


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss would carry a parent's peak over exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_isolated(model: str, threads: int, seconds: float, stream: bool, hop_ms: float) -> dict[str, Any]:
    return run_isolated("runtime.bench", "measure", model, threads, seconds, stream, hop_ms, label=model)


def run_isolated(module: str, func: str, *args: Any, label: str = "") -> dict[str, Any]:
    """`module.func(*args)` in a fresh Python process (its own peak RSS, no other library loaded); the
    function returns a JSON-able dict."""
    code = f"import json; from {module} import {func}; print(json.dumps({func}(*{args!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no error output"])[-1]
        raise RuntimeError(f"bench of {label or func} failed: {last}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def layer_kind(node: str) -> str:
    """A node's layer kind: its exported name without the block index and onnxruntime's fusion suffix
    ("b3_in_f_token_96" -> "b*_in")."""
    node = re.sub(r"(_token_\d+)+$", "", node.removesuffix("_kernel_time"))
    return re.sub(r"_f$", "", re.sub(r"^b\d+_", "b*_", node))


def profile(model: str, threads: int = 1, seconds: float = 4.0, repeats: int = 3) -> dict[str, Any]:
    """onnxruntime's kernel times of one offline run over `seconds`, summed by (layer kind, operator) over
    `repeats` runs after two warm-up runs: where the time of an ONNX model goes."""
    import tempfile

    from runtime.audio import to_int16
    from runtime.backends import ModelError, OnnxBackend
    from runtime.enhancer import Enhancer
    if Path(model).suffix != ".onnx":
        raise ModelError(f"{model}: --profile reads onnxruntime's profiler, so it takes .onnx models only")
    with tempfile.TemporaryDirectory() as tmp:
        enh = Enhancer(OnnxBackend(Path(model), threads, profile_prefix=Path(tmp) / "ort"))
        pcm = to_int16(_signal(seconds, enh.sr))
        run = _offline_run(enh)
        for _ in range(2 + repeats):
            run(pcm)
        events = json.loads(Path(enh.be.sess.end_profiling()).read_text())
    starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    cutoff = starts[2] if len(starts) > 2 else 0  # the warm-up runs' kernels are not counted
    totals: dict[tuple[str, str], float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= cutoff:
            key = (layer_kind(e["name"]), e["args"]["op_name"])
            totals[key] = totals.get(key, 0.0) + e["dur"]
    total = sum(totals.values())
    rows = [{"layer": k, "op": op, "share": v / total, "ms_per_s_audio": v / 1000 / repeats / seconds}
            for (k, op), v in sorted(totals.items(), key=lambda kv: -kv[1])]
    return {"model": model, "threads": threads, "audio_s": seconds, "kernels": rows}


def bench_cli(models: list[str], threads: list[int], seconds: float, stream: bool, hop_ms: float,
              json_out: str | None, show_profile: bool = False) -> list[dict[str, Any]]:
    from runtime.backends import load_backend
    for m in models:  # a bad model file: its own one-line error here, not a child process's last line
        load_backend(m)
    if show_profile:
        rows = [profile(m, t, seconds) for m in models for t in threads]
        for r in rows:
            print(f"{r['model']} ({r['threads']} thread(s)): onnxruntime kernel time by layer kind")
            print(f"{'layer':<36} {'operator':<18} {'share':>7} {'ms per s audio':>15}")
            for k in r["kernels"]:
                if k["share"] >= 0.001:
                    print(f"{k['layer']:<36} {k['op']:<18} {100 * k['share']:>6.1f}% {k['ms_per_s_audio']:>15.2f}")
        if json_out:
            atomic_write(json_out, lambda tmp: Path(tmp).write_text(json.dumps(rows, indent=1)))
        return rows
    rows = [measure_isolated(m, t, seconds, stream, hop_ms) for m in models for t in threads]
    if stream:
        print(f"{'model':<40} {'thr':>3} {'hop ms':>7} {'median ms':>10} {'p99 ms':>8} {'over budget':>12} "
              f"{'RTF':>7} {'peak MB':>8}")
        for r in rows:
            print(f"{Path(r['model']).name:<40} {r['threads']:>3} {r['hop_ms']:>7.1f} {r['hop_median_ms']:>10.3f} "
                  f"{r['hop_p99_ms']:>8.3f} {100 * r['over_budget']:>11.2f}% {r['rtf']:>7.3f} {r['peak_rss_mb']:>8.1f}")
    else:
        print(f"{'model':<40} {'thr':>3} {'s per s audio':>14} {'size KB':>9} {'peak MB':>8}")
        for r in rows:
            print(f"{Path(r['model']).name:<40} {r['threads']:>3} {r['s_per_s_audio']:>14.4f} "
                  f"{r['size_bytes'] / 1024:>9.1f} {r['peak_rss_mb']:>8.1f}")
    if json_out:
        atomic_write(json_out, lambda tmp: Path(tmp).write_text(json.dumps(rows, indent=1)))
    return rows
