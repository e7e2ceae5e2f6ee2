"""Load an exported model (.onnx via onnxruntime, .tflite via ai-edge-litert) and run it on int8 codes.

Both take the layout the exporters write: codes [1, S, T] int8 in, C outputs [1, 1, T] int8 out
(float graphs: waveform [1, 1, T] float32 in and out). The model file's own metadata says how.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from runtime import modelmeta
from runtime.modelmeta import ModelError  # noqa: F401 - the runtime's model error, importable from here too


class Backend:
    meta: dict[str, Any]  # the model's metadata as a dict (what `pipeline` and `meta[...]` readers take)
    info: modelmeta.ModelMeta  # the same, typed and checked (runtime/modelmeta.py)
    path: Path

    def _set_meta(self, raw_meta: Any, path: Path, sealed: bool) -> None:
        self.info = modelmeta.parse(raw_meta, path, sealed)
        self.meta = self.info.to_dict()

    def run(self, x: np.ndarray) -> np.ndarray:
        """x: [S, T] int8 codes (or [1, T] float) -> [C, T] int8 (or [1, T] float)."""
        raise NotImplementedError

    def run_step(self, x: np.ndarray, states: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Step models: x [S, K*hop] and states [C_i, n_i] -> outputs [C, K*hop] and new states."""
        raise NotImplementedError

    def initial_states(self) -> list[np.ndarray]:
        dtype = np.int8 if self.info.quantized else np.float32
        return [np.repeat(np.asarray(st.initial, dtype)[:, None], st.length, axis=1) for st in self.info.states or ()]


class OnnxBackend(Backend):
    def __init__(self, path: Path, threads: int = 1, optimized_path: str | Path | None = None,
                 profile_prefix: str | Path | None = None):
        import onnxruntime as ort
        so = ort.SessionOptions()
        if profile_prefix:  # onnxruntime's per-kernel profiler (`fqse bench --profile`); end_profiling() writes it
            so.enable_profiling = True
            so.profile_file_prefix = str(profile_prefix)
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        # Let ORT fuse int8 (s8s8) QDQ units into QLinearConv/QLinearAdd/... on x86 too (default: ARM only).
        so.add_session_config_entry("session.qdqisint8allowed", "1")
        if optimized_path:
            so.optimized_model_filepath = str(optimized_path)
        raw = path.read_bytes()
        sealed = modelmeta.verify(raw, path)  # before onnxruntime parses a byte
        try:
            self.sess = ort.InferenceSession(raw, so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelError(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0][:150]})") from None
        props = self.sess.get_modelmeta().custom_metadata_map
        if "fqse" not in props:
            raise ModelError(f"{path}: ONNX model without FQSE metadata (export it with `fqse export`)")
        self._set_meta(props["fqse"], path, sealed)
        self.path = path
        self.in_name = self.sess.get_inputs()[0].name
        self.out_names = [o.name for o in self.sess.get_outputs()]
        # uint8-activation models (`fqse export --activations uint8`) hold every code + 128.
        self.uint8 = self.info.uint8

    def to_model(self, x: np.ndarray) -> np.ndarray:
        """int8 codes -> the model's input type (uint8 models: + 128, the same bytes with the top bit flipped)."""
        return x.view(np.uint8) ^ np.uint8(0x80) if self.uint8 and x.dtype == np.int8 else x

    def from_model(self, y: np.ndarray) -> np.ndarray:
        """A model output -> int8 codes (uint8 models: - 128)."""
        return (y ^ np.uint8(0x80)).view(np.int8) if y.dtype == np.uint8 else y

    def run(self, x: np.ndarray) -> np.ndarray:
        outs = self.sess.run(self.out_names, {self.in_name: self.to_model(x)[None]})
        return np.concatenate([self.from_model(o[0]) for o in outs], axis=0)

    def run_step(self, x: np.ndarray, states: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        feed = {self.in_name: self.to_model(x)[None],
                **{i.name: self.to_model(st)[None] for i, st in zip(self.sess.get_inputs()[1:], states)}}
        outs = [self.from_model(o[0]) for o in self.sess.run(self.out_names, feed)]
        C = self.info.n_combiner
        return np.concatenate(outs[:C], axis=0), outs[C:]


class TfliteBackend(Backend):
    def __init__(self, path: Path, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
        raw = path.read_bytes()
        sealed = modelmeta.verify(raw, path)  # before any parser or the interpreter reads a byte
        self._set_meta(read_tflite_metadata(raw, path), path, sealed)
        self.interp, self.kernels = None, ""
        # XNNPACK first; it fails to prepare some int8 graphs once the input is resized (seen with
        # ai-edge-litert 2.1.0 on this int8 ConvTasNet), then TFLite's built-in kernels are used.
        for resolver, label in ((OpResolverType.AUTO, "xnnpack"), (OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES, "builtin")):
            try:
                it = Interpreter(model_content=raw, num_threads=threads, experimental_op_resolver_type=resolver)
                d = it.get_input_details()[0]
                if not self.info.step:
                    it.resize_tensor_input(d["index"], [int(v) if v > 0 else 64 for v in d["shape_signature"]])
                it.allocate_tensors()
            except Exception as exc:  # noqa: BLE001 - try the next resolver, report the last failure
                err = exc
                continue
            self.interp, self.kernels = it, label
            break
        if self.interp is None:
            raise ModelError(f"{path}: not a loadable TFLite model ({str(err).splitlines()[0][:150]})")
        self.path = path
        self.inp = self.interp.get_input_details()[0]
        self.outs = self.interp.get_output_details()  # subgraph order: out0, out1, ...
        self._len = None

    def run_step(self, x: np.ndarray, states: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        ins = self.interp.get_input_details()
        self.interp.set_tensor(ins[0]["index"], np.ascontiguousarray(x.T[None, None]))
        for d, st in zip(ins[1:], states):  # layout [1, 1, n, C]
            self.interp.set_tensor(d["index"], np.ascontiguousarray(st.T[None, None]))
        self.interp.invoke()
        C = self.info.n_combiner
        outs = [self.interp.get_tensor(o["index"])[0, 0].T for o in self.outs]
        return np.concatenate(outs[:C], axis=0), outs[C:]

    def run(self, x: np.ndarray) -> np.ndarray:
        xt = np.ascontiguousarray(x.T[None, None])  # NHWC [1, 1, T, S]
        if self._len != xt.shape[2]:
            self.interp.resize_tensor_input(self.inp["index"], list(xt.shape))
            self.interp.allocate_tensors()
            self._len = xt.shape[2]
        self.interp.set_tensor(self.inp["index"], xt.astype(self.inp["dtype"]))
        self.interp.invoke()
        return np.concatenate([self.interp.get_tensor(o["index"]).reshape(1, -1) for o in self.outs], axis=0)


def read_tflite_metadata(raw: bytes, path: Path) -> str:
    """The JSON text that `fqse convert` stores as the TFLite metadata entry named "fqse"."""
    from ai_edge_litert import schema_py_generated as schema
    if len(raw) < 8 or raw[4:8] != b"TFL3":
        raise ModelError(f"{path}: not a TFLite model")
    try:
        model = schema.Model.GetRootAsModel(raw, 0)
        for i in range(model.MetadataLength()):
            md = model.Metadata(i)
            if md.Name() == b"fqse":
                return model.Buffers(md.Buffer()).DataAsNumpy().tobytes().decode()
    except Exception as exc:
        raise ModelError(f"{path}: corrupt TFLite model ({exc})") from None
    raise ModelError(f"{path}: TFLite model without FQSE metadata (convert it with `fqse convert`)")


def load_backend(path: str | Path, threads: int = 1) -> Backend:
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such model file")
    if path.stat().st_size == 0:
        raise ModelError(f"{path}: empty model file")
    if path.suffix == ".onnx":
        return OnnxBackend(path, threads)
    if path.suffix == ".tflite":
        return TfliteBackend(path, threads)
    raise ModelError(f"{path}: unknown model type (expected .onnx or .tflite)")
