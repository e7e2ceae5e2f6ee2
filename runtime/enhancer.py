"""Streaming and file enhancement with a deployed int8 model (numpy, soundfile, onnxruntime/LiteRT).

Two streaming modes, chosen from the model's metadata:
- causal models: each call runs the model on the new hops plus enough past input to cover the
  receptive field, and keeps only outputs whose whole receptive field was inside the window, so the
  streamed output equals the offline run bit for bit. Latency: one encoder window (2 hops).
- step models (`fqse export/convert --step-ms`): one call per block of K hops with explicit int8
  state carried by the host; also bit-exact with the offline model, and the cost per hop is constant.
  Latency: the block plus one (two with the residual block) hop.
- non-causal models (gLN): blocks of `block_ms` with 50 % overlap, triangular weights, overlap-add.
  Latency: one block.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from runtime import pipeline
from runtime.audio import AudioError, AudioWarning, audio_info, check_file, output_format, check_signal, read_audio, to_int16, write_audio
from runtime.backends import Backend, load_backend


ACCEPTED = "int16 PCM, or float32/float64 in [-1, 1]; mono, 1-D or shape (N, 1)"
UNSCALED_FLOAT = 2.0  # float input beyond this is PCM that was not scaled to [-1, 1] (int16 PCM / 32768)


def _pcm(x: np.ndarray, what: str = "input", allow_empty: bool = False) -> np.ndarray:
    """Accepted Enhancer input -> native int16 PCM [N]; anything else is a one-line AudioError.

    int16 of either byte order is taken as PCM; float must be finite and within [-1, 1]: values up to
    UNSCALED_FLOAT are clipped with an AudioWarning, larger ones (unscaled PCM) are refused.
    """
    x = np.asarray(x)
    if x.ndim == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 1:
        ch = f"; {x.shape[1]} channels: downmix first, e.g. x.mean(axis=1)" if x.ndim == 2 else ""
        raise AudioError(f"{what}: shape {x.shape}, expected mono 1-D or (N, 1){ch}")
    if x.dtype.kind == "i" and x.dtype.itemsize == 2:
        x = x.astype(np.int16)  # native byte order, same values
    elif x.dtype in (np.float32, np.float64):
        if x.size and not np.all(np.isfinite(x)):
            raise AudioError(f"{what}: contains NaN or infinite samples")
        peak = float(np.max(np.abs(x))) if x.size else 0.0
        if peak > UNSCALED_FLOAT:
            raise AudioError(f"{what}: float samples reach {peak:.6g}; float input must be in [-1, 1] "
                             "(divide int16 PCM by 32768, or pass it as int16)")
        if peak > 1.0:
            warnings.warn(f"{what}: float samples reach {peak:.4g} > 1; clipped to [-1, 1]", AudioWarning,
                          stacklevel=3)
        x = to_int16(np.clip(x, -1.0, 1.0))
    else:
        hint = " (int32 PCM: convert with (x >> 16).astype(np.int16))" if x.dtype.kind == "i" and \
            x.dtype.itemsize == 4 else ""
        raise AudioError(f"{what}: dtype {x.dtype} not accepted; expected {ACCEPTED}{hint}")
    if x.size == 0 and not allow_empty:
        raise AudioError(f"{what}: empty")
    return x


class Enhancer:
    """`from_file(path)`, then `process(chunk)` / `flush()`, or `enhance_file(in, out)`."""

    # Whole-signal runs go through windows (self.window_s seconds), so memory does not grow with the
    # length: causal models carry their receptive field as context (exact) in windows of causal_window_s;
    # non-causal ones run in one piece up to long_s, beyond that in 50 %-overlapping blocks of
    # block_window_s (triangular weights). A run's memory grows with its length: 2 s windows keep the
    # full-size model under 200 MB (measured: README "Streaming"); 6 s ones took it to 260-314 MB.
    causal_window_s = 2.0
    block_window_s = 6.0
    long_s = 60.0

    def __init__(self, backend: Backend, hop_ms: float = 16.0, block_ms: float = 1000.0):
        self.be = backend
        self.meta = backend.meta
        self.info = info = backend.info
        self.sr = info.sample_rate
        self.hop = info.stride  # encoder hop (samples)
        self.chunk = max(self.hop, int(round(hop_ms * self.sr / 1000 / self.hop)) * self.hop)
        self.causal = info.causal
        self.window_s = self.causal_window_s if self.causal else self.block_window_s
        self.step = info.step
        if self.step:
            self.chunk = info.step_samples
        self.block = max(4 * self.hop, int(round(block_ms * self.sr / 1000 / (2 * self.hop))) * 2 * self.hop)
        self.reset()

    @classmethod
    def from_file(cls, path: str | Path, threads: int = 1, **kw) -> "Enhancer":
        return cls(load_backend(path, threads), **kw)

    @property
    def latency_samples(self) -> int:
        """Input samples held back before their output appears, fed in blocks of `chunk` samples
        (a block, plus the encoder look-ahead; the windowed causal mode runs once a whole block is ready)."""
        if self.step:
            return self.chunk + self.info.stream_offset_samples
        return self.chunk + (1 + (self.info.n_combiner > 1)) * self.hop if self.causal else self.block

    def reset(self) -> None:
        self._buf = np.zeros(0, np.int16)  # input from absolute sample _buf_start to _seen
        self._buf_start = 0
        self._seen = 0  # input samples received
        self._done = 0  # output samples emitted
        self._next_block = 0  # block mode: index of the next block to run
        self._acc = np.zeros(0, np.float64)  # block mode: weighted outputs from sample _done on
        self._wsum = np.zeros(0, np.float64)
        self._states = self.be.initial_states() if self.step else []
        self._dry = np.zeros(0, np.int16)  # step mode, noise-estimating model: input from sample _done on
        self._to_skip = self.info.stream_offset_samples or 0  # step mode: leading outputs

    def run_offline(self, pcm: np.ndarray) -> np.ndarray:
        """Run the model on pcm as one whole utterance, no windows (host pre/post in integers)."""
        return pipeline.enhanced(self.be.run(pipeline.pre(pcm, self.meta)), pcm, self.meta)

    def _segment(self, start: int, stop: int) -> np.ndarray:
        return self._buf[start - self._buf_start: stop - self._buf_start]

    def _drop_before(self, pos: int) -> None:
        pos = max(pos, self._buf_start)
        self._buf = self._buf[pos - self._buf_start:]
        self._buf_start = pos

    # --- causal: windowed recompute, exact ------------------------------------------------------------
    def _causal_step(self, final: bool) -> np.ndarray:
        s = self.hop
        context = (self.info.receptive_field_frames + 2) * s
        # Output k needs input up to the end of hop k // s + 1 (one encoder window of look-ahead),
        # one hop more with the residual block (its encoder reads the next output hop).
        ahead = 1 + (self.info.n_combiner > 1)
        ready = self._seen if final else max(0, (self._seen // s - ahead) * s)
        if ready <= self._done or (not final and ready - self._done < self.chunk):
            return np.zeros(0, np.int16)
        w0 = max(0, (self._done - context) // s * s)  # hop-aligned, the receptive field fits inside
        y = self.run_offline(self._segment(w0, self._seen))
        out = y[self._done - w0: ready - w0]
        self._drop_before(max(0, (ready - context) // s * s))
        return out

    # --- step model: explicit state --------------------------------------------------------------------
    def _step_step(self, final: bool) -> np.ndarray:
        K = self.chunk
        out = []
        produced = lambda: self._done + sum(len(o) for o in out)  # noqa: E731
        while len(self._buf) >= K or (final and produced() < self._seen):
            block = self._buf[:K]
            if len(block) < K:
                block = np.concatenate([block, np.zeros(K - len(block), np.int16)])
            self._buf, self._buf_start = self._buf[K:], self._buf_start + K
            y, self._states = self.be.run_step(pipeline.codes(block, self.meta), self._states)
            pcm = pipeline.combine(y, self.meta)
            skip = min(self._to_skip, len(pcm))
            self._to_skip -= skip
            out.append(pcm[skip:])
        y = np.concatenate(out) if out else np.zeros(0, np.int16)
        y = y[: max(0, self._seen - self._done)] if final else y
        if self.info.noise_estimate:  # output sample i belongs to input sample i
            y, self._dry = pipeline.finish(self._dry[: len(y)], y, self.meta), self._dry[len(y):]
        return y

    # --- non-causal: overlapping blocks -----------------------------------------------------------------
    def _block_step(self, final: bool) -> np.ndarray:
        step = self.block // 2
        win = np.bartlett(self.block + 2)[1:-1]
        while True:
            b0 = self._next_block * step
            if not (self._seen >= b0 + self.block or (final and b0 < self._seen)):
                break
            seg = self._segment(b0, min(b0 + self.block, self._seen))
            y = self.run_offline(seg) * win[: len(seg)]
            end = b0 + len(seg) - self._done
            if len(self._acc) < end:
                self._acc = np.pad(self._acc, (0, end - len(self._acc)))
                self._wsum = np.pad(self._wsum, (0, end - len(self._wsum)))
            self._acc[b0 - self._done: end] += y
            self._wsum[b0 - self._done: end] += win[: len(seg)]
            self._next_block += 1
        final_upto = self._seen if final else min(self._next_block * step, self._seen)
        n = max(0, final_upto - self._done)
        out = self._acc[:n] / np.maximum(self._wsum[:n], 1e-9)
        self._acc, self._wsum = self._acc[n:], self._wsum[n:]
        self._drop_before(self._next_block * step)
        return np.clip(np.round(out), -32768, 32767).astype(np.int16)

    # --- public API -------------------------------------------------------------------------------------
    def _check_rate(self, sample_rate: int | None) -> None:
        if sample_rate is not None and int(sample_rate) != self.sr:
            raise AudioError(f"input at {sample_rate} Hz, the model runs at {self.sr} Hz: resample first "
                             "(enhance_file resamples files)")

    def process(self, chunk: np.ndarray, sample_rate: int | None = None) -> np.ndarray:
        """Feed int16 PCM (or float in [-1, 1]); returns the enhanced samples ready so far (int16)."""
        self._check_rate(sample_rate)
        chunk = _pcm(chunk, "input chunk", allow_empty=True)
        self._buf = np.concatenate([self._buf, chunk])
        if self.step and self.info.noise_estimate:
            self._dry = np.concatenate([self._dry, chunk])
        self._seen += len(chunk)
        out = self._advance(False)
        self._done += len(out)
        return out

    def _advance(self, final: bool) -> np.ndarray:
        if self.step:
            return self._step_step(final)
        return self._causal_step(final) if self.causal else self._block_step(final)

    def flush(self) -> np.ndarray:
        """Everything still buffered; the total output then equals the input length."""
        out = self._advance(True)
        self.reset()
        return out

    def enhance(self, pcm: np.ndarray, sample_rate: int | None = None) -> np.ndarray:
        """Whole signal at once (offline; a step model streams it through)."""
        self._check_rate(sample_rate)
        pcm = _pcm(pcm, "input")
        if self.step:
            self.reset()
            return np.concatenate([self.process(pcm), self.flush()])
        peak = int(np.abs(pcm.astype(np.int32)).max()) if len(pcm) else 0
        if self.info.peak_input_gain and peak:  # as the reference trained (offline only;
            g = 32767.0 / peak  # streaming keeps the fixed full scale: no peak is known in advance)
            y = self._windowed(np.round(pcm * g).astype(np.int16))
            return np.clip(np.round(y / g), -32768, 32767).astype(np.int16)
        return self._windowed(pcm)

    def _windowed(self, pcm: np.ndarray) -> np.ndarray:
        """Whole signal, window by window (see `window_s`); the stream state is reset before and after."""
        w = int(self.window_s * self.sr)
        if len(pcm) <= w or (not self.causal and len(pcm) <= self.long_s * self.sr):
            return self.run_offline(pcm)
        block = self.block
        if not self.causal:
            self.block = max(4 * self.hop, w // (2 * self.hop) * 2 * self.hop)
        self.reset()
        try:
            out = [self.process(pcm[i: i + w]) for i in range(0, len(pcm), w)] + [self.flush()]
        finally:
            self.block = block
            self.reset()
        return np.concatenate(out)

    def enhance_file(self, src: str | Path, dst: str | Path, stream: bool = False, progress: bool = True,
                     notes: list[str] | None = None) -> np.ndarray:
        """Read, enhance (streaming hop by hop or offline), write atomically; returns int16 output."""
        x, _ = read_audio(src, self.sr, notes=notes)
        pcm = to_int16(x)
        if not stream:
            y = self.enhance(pcm)
        else:
            parts = []
            show = progress and len(pcm) > 5 * self.sr
            for i in tqdm(range(0, len(pcm), self.chunk), disable=not show, desc="enhance", unit="hop"):
                parts.append(self.process(pcm[i: i + self.chunk]))
            parts.append(self.flush())
            y = np.concatenate(parts)
        write_audio(dst, y, self.sr)
        return y


    def stream_file(self, src: str | Path, dst: str | Path, progress: bool = True,
                    notes: list[str] | None = None, block_s: float = 1.0) -> int:
        """Enhance a file block by block with constant memory (read, process, write as it goes);
        the output appears only when complete. Returns the number of samples written."""
        import soundfile as sf
        from runtime.files import atomic_write
        from runtime.resample import StreamResampler
        src = check_file(src)
        fmt, subtype = output_format(dst)
        info = audio_info(src, notes)
        if info.channels > 1 and notes is not None:
            notes.append(f"{src.name}: {info.channels} channels downmixed to mono")
        rs = StreamResampler(info.samplerate, self.sr) if info.samplerate != self.sr else None
        if rs is not None and notes is not None:
            notes.append(f"{src.name}: resampled {info.samplerate} Hz -> {self.sr} Hz")
        total = 0

        def write(tmp: str) -> None:
            nonlocal total
            block = int(block_s * info.samplerate)
            with sf.SoundFile(tmp, "w", self.sr, 1, subtype, format=fmt) as out, \
                    tqdm(total=info.frames, disable=not progress or info.frames < 5 * info.samplerate,
                         desc="enhance", unit="sample", unit_scale=True) as bar:
                blocks = sf.blocks(str(src), blocksize=block, dtype="float32", always_2d=True)
                for x in blocks:
                    x = check_signal(x.mean(axis=1), f"{src}")
                    bar.update(len(x))
                    if rs is not None:
                        x = rs.push(x)
                    y = self.process(to_int16(np.clip(x, -1, 1)))
                    out.write(y)
                    total += len(y)
                if rs is not None:
                    y = self.process(to_int16(np.clip(rs.flush(), -1, 1)))
                    out.write(y)
                    total += len(y)
                y = self.flush()
                out.write(y)
                total += len(y)
        if info.frames == 0:
            raise AudioError(f"{src}: no samples")
        self.reset()
        atomic_write(dst, write)
        return total


def enhance_cli(src: str, dst: str, model: str, stream: bool = False, hop_ms: float = 16.0, threads: int = 1) -> None:
    if Path(dst).resolve() == Path(src).resolve():
        raise AudioError("output would overwrite the input; choose another -o")
    output_format(dst)
    check_file(src)
    enh = Enhancer.from_file(model, threads, hop_ms=hop_ms)
    notes: list[str] = []
    if stream:
        enh.stream_file(src, dst, notes=notes)
    elif enh.causal:  # window by window as it reads (flat memory), the same output as one run
        enh.stream_file(src, dst, notes=notes, block_s=enh.window_s)
    else:
        enh.enhance_file(src, dst, notes=notes)
    for n in notes:
        print(f"note: {n}")
    mode = "streaming (" + ("causal, exact" if enh.causal else "blocks") + ")" if stream else "offline"
    print(f"wrote {dst} ({mode}, latency {1000 * enh.latency_samples / enh.sr:.0f} ms)")


def stream_stdio(model: str, hop_ms: float = 16.0, threads: int = 1) -> None:
    """Raw int16 mono PCM at the model's rate on stdin -> enhanced PCM on stdout."""
    if sys.stdin is None or sys.stdout is None:
        raise AudioError("stdin or stdout is closed: pipe raw int16 PCM in and out")
    enh = Enhancer.from_file(model, threads, hop_ms=hop_ms)
    if not enh.step:
        print(f"fqse stream: note: {Path(model).name} is not a step model: every hop re-runs the model on its "
              f"receptive field (not real time at full size); make one with `fqse convert/export --step-ms "
              f"{hop_ms:g}`", file=sys.stderr)
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    nbytes = enh.chunk * 2
    odd = b""
    while True:
        data = inp.read(nbytes)
        if not data:
            break
        data = odd + data
        odd = data[len(data) // 2 * 2:]  # a sample split across reads waits for its second byte
        data = data[: len(data) // 2 * 2]
        out.write(enh.process(np.frombuffer(data, "<i2")).tobytes())
        out.flush()
    if odd:
        print("fqse stream: warning: input ended with an odd byte (half an int16 sample); it was dropped",
              file=sys.stderr)
    out.write(enh.flush().tobytes())
    out.flush()
