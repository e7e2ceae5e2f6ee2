"""Integer reference of a deployed int8 TFLite model, in numpy: the TFLite int8 spec's arithmetic.

Every op computes what TFLite's reference kernels (`OpResolverType.BUILTIN_REF`) compute: int32
accumulators over (input - zero point) x weight, int32 biases, and requantization by a 32-bit fixed-point
multiplier and a shift (QuantizeMultiplier; SaturatingRoundingDoublingHighMul, then
RoundingDivideByPOT: "double rounding"), with the real multipliers formed in float32 or float64 exactly
where the kernels form them. It reads the .tflite file itself (quantization parameters, weights, op
options), so it runs the graph that is deployed, at any input length, and returns every tensor: the
basis of `fqse golden` and of the per-source error split in `fqse parity`.

Ops: CONV_2D, DEPTHWISE_CONV_2D (per-channel weights, zero point 0), LEAKY_RELU, ADD, SUB, MUL, PAD,
STRIDED_SLICE, RESHAPE, CONCATENATION (equal quantization). Anything else is a one-line error.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class IntRefError(ValueError):
    """A model the integer reference cannot run; one-line message."""


# --- the fixed-point arithmetic (tensorflow/lite/kernels/internal: quantization_util, common.h) ----------

def quantize_multiplier(m: float) -> tuple[int, int]:
    """Real multiplier -> (int32 significand q in [2^30, 2^31), shift) with m ~ q * 2^(shift - 31)."""
    if m == 0.0:
        return 0, 0
    frac, shift = np.frexp(np.float64(m))
    q = int(np.floor(abs(float(frac)) * (1 << 31) + 0.5)) * (1 if frac > 0 else -1)  # std::round
    if q == 1 << 31:
        q //= 2
        shift += 1
    if shift < -31:
        q, shift = 0, 0
    return q, int(shift)


def _srdhm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SaturatingRoundingDoublingHighMul of int32 values (int64 arrays in and out)."""
    ab = a * b
    nudged = ab + np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    return np.sign(nudged) * (np.abs(nudged) >> 31)  # C division by 2^31 truncates toward zero


def _rdbpot(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """RoundingDivideByPOT: x / 2^exponent rounded half away from zero."""
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def _wrap32(x: np.ndarray) -> np.ndarray:
    return x.astype(np.int64).astype(np.int32).astype(np.int64)


def requantize(acc: np.ndarray, q: np.ndarray | int, shift: np.ndarray | int) -> np.ndarray:
    """MultiplyByQuantizedMultiplier(int32 acc, q, shift) (q, shift per channel along the last axis)."""
    q, shift = np.asarray(q, np.int64), np.asarray(shift, np.int64)
    left, right = np.maximum(shift, 0), np.maximum(-shift, 0)
    x = _wrap32(acc.astype(np.int64) * (np.int64(1) << left))  # int32 multiply, as in C
    return _rdbpot(_srdhm(x, q), right)


def _clamp8(x: np.ndarray, lo: int = -128, hi: int = 127) -> np.ndarray:
    return np.clip(x, lo, hi).astype(np.int8)


# --- the graph ------------------------------------------------------------------------------------------

@dataclass
class Tensor:
    index: int
    name: str
    dtype: str
    scale: np.ndarray | None  # float32, one per channel or one
    zero_point: np.ndarray | None
    data: np.ndarray | None  # constants
    shape: tuple[int, ...]


_TYPES = {0: "float32", 2: "int32", 3: "uint8", 4: "int64", 9: "int8", 7: "int16"}


class IntegerReference:
    """`IntegerReference(raw_tflite).run([x, *states])` -> every tensor by index (int8/int32 arrays).

    exact=True: the same graph with every requantization done in exact arithmetic instead (float64 real
    multiplier, rounded half away from zero): what the fixed-point form approximates, for diagnosis."""

    def __init__(self, raw: bytes, path: str | Path = "model", exact: bool = False):
        self.exact = exact
        from ai_edge_litert import schema_py_generated as schema
        try:
            model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(raw, 0))
        except Exception as exc:
            raise IntRefError(f"{path}: not a readable TFLite model ({exc})") from None
        names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        sg = model.subgraphs[0]
        self.tensors: list[Tensor] = []
        for i, t in enumerate(sg.tensors):
            qp = t.quantization
            scale = np.asarray(qp.scale, np.float32) if qp is not None and qp.scale is not None else None
            zp = np.asarray(qp.zeroPoint, np.int64) if qp is not None and qp.zeroPoint is not None else None
            dtype = _TYPES.get(t.type, str(t.type))
            buf = model.buffers[t.buffer].data if t.buffer < len(model.buffers) else None
            shape = tuple(int(v) for v in (t.shape if t.shape is not None else []))
            data = None
            if buf is not None and len(buf) and dtype in ("int8", "int32", "int64", "uint8", "int16"):
                data = np.frombuffer(bytes(bytearray(buf)), dtype=dtype).reshape(shape)
            self.tensors.append(Tensor(i, t.name.decode() if isinstance(t.name, bytes) else str(t.name), dtype,
                                       scale, zp, data, shape))
        self.ops = [(names[model.operatorCodes[o.opcodeIndex].builtinCode], list(o.inputs), list(o.outputs),
                     o.builtinOptions) for o in sg.operators]
        self.inputs, self.outputs = list(sg.inputs), list(sg.outputs)
        bad = sorted({op for op, *_ in self.ops if not hasattr(self, "_op_" + op.lower())})
        if bad:
            raise IntRefError(f"{path}: ops without an integer reference: {', '.join(bad)}")
        for i in self.inputs:
            if self.tensors[i].dtype != "int8":
                raise IntRefError(f"{path}: input {self.tensors[i].name} is {self.tensors[i].dtype}, not int8 "
                                  "(the integer reference runs fully-integer models)")

    @classmethod
    def from_file(cls, path: str | Path, exact: bool = False) -> "IntegerReference":
        return cls(Path(path).read_bytes(), path, exact)

    def _rq(self, acc: np.ndarray, m: np.ndarray | float) -> np.ndarray:
        """acc x real multiplier m: TFLite's fixed-point form, or exact (self.exact)."""
        m = np.asarray(m, np.float64)
        if self.exact:
            v = acc.astype(np.float64) * m
            return (np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(np.int64)
        qs = [quantize_multiplier(float(v)) for v in m.reshape(-1)]
        q = np.array([a for a, _ in qs]).reshape(m.shape)
        sh = np.array([b for _, b in qs]).reshape(m.shape)
        return requantize(acc, q, sh)

    def run(self, inputs: list[np.ndarray]) -> dict[int, np.ndarray]:
        """inputs: int8 arrays in the interpreter's layout (NHWC, [1, 1, T, C]); returns all tensors."""
        if len(inputs) != len(self.inputs):
            raise IntRefError(f"{len(inputs)} inputs given, the model takes {len(self.inputs)}")
        vals: dict[int, np.ndarray] = {t.index: t.data for t in self.tensors if t.data is not None}
        for i, x in zip(self.inputs, inputs):
            vals[i] = np.asarray(x, np.int8)
        for k, (_, _, outs, _) in enumerate(self.ops):
            vals[outs[0]] = self.run_op(k, vals)
        return vals

    def run_op(self, k: int, vals: dict[int, np.ndarray]) -> np.ndarray:
        """Op k on the tensors in vals (by index): its output."""
        op, ins, outs, opts = self.ops[k]
        return getattr(self, "_op_" + op.lower())([vals.get(i) if i >= 0 else None for i in ins],
                                                  [self.tensors[i] if i >= 0 else None for i in ins],
                                                  self.tensors[outs[0]], opts)

    # --- ops (inputs: arrays; ts: their Tensors; out: the output Tensor) ---
    @staticmethod
    def _act_range(out: Tensor, fused: int) -> tuple[int, int]:
        zp, s = int(out.zero_point[0]), float(out.scale[0])
        if fused == 0:
            return -128, 127
        if fused == 1:  # RELU
            return max(-128, zp), 127
        if fused == 3:  # RELU6
            return max(-128, zp), min(127, zp + int(round(6.0 / s)))
        raise IntRefError(f"fused activation {fused} not supported")

    def _conv(self, x: np.ndarray, w: np.ndarray, b: np.ndarray | None, tx: Tensor, tw: Tensor, out: Tensor,
              opts, depthwise: bool) -> np.ndarray:
        """x [1, 1, T, Cin] int8, w [Cout, 1, K, Cin] (conv) or [1, 1, K, Cout] (depthwise)."""
        if x.shape[1] != 1 or w.shape[1] != 1:
            raise IntRefError("only 1-D convolutions ([1, 1, T, C]) are supported")
        if tw.zero_point is not None and np.any(tw.zero_point != 0):
            raise IntRefError(f"{tw.name}: weights with a non-zero zero point")
        stride, dil = int(opts.strideW), int(opts.dilationWFactor)
        K = w.shape[2]
        T = x.shape[2]
        xi = x[0, 0].astype(np.int64) - int(tx.zero_point[0])  # padded positions contribute 0 (skipped)
        span = (K - 1) * dil + 1
        if opts.padding == 0:  # SAME
            t_out = -(-T // stride)
            pad = max(0, (t_out - 1) * stride + span - T)
            xi = np.pad(xi, ((pad // 2, pad - pad // 2), (0, 0)))
        else:  # VALID
            t_out = (T - span) // stride + 1
        wk = w[:, 0].astype(np.float64)
        acc = np.zeros((t_out, wk.shape[0] if not depthwise else wk.shape[-1]), np.float64)
        for k in range(K):  # sums of int8 products stay far below 2^53: float64 is exact here
            xs = xi[k * dil: k * dil + (t_out - 1) * stride + 1: stride].astype(np.float64)
            acc += xs * wk[0, k] if depthwise else xs @ wk[:, k, :].T
        acc = acc.astype(np.int64)
        if b is not None:
            acc += b.astype(np.int64)
        in_s = np.float64(np.float32(tx.scale[0]))
        eff = in_s * tw.scale.astype(np.float64) / np.float64(out.scale[0])
        y = self._rq(acc, np.broadcast_to(eff, (acc.shape[1],))) + int(out.zero_point[0])
        return _clamp8(y, *self._act_range(out, opts.fusedActivationFunction))[None, None]

    def _op_conv_2d(self, v, ts, out, opts):
        return self._conv(v[0], v[1], v[2] if len(v) > 2 else None, ts[0], ts[1], out, opts, False)

    def _op_depthwise_conv_2d(self, v, ts, out, opts):
        if int(opts.depthMultiplier) not in (0, 1):
            raise IntRefError("depthwise conv with a depth multiplier is not supported")
        return self._conv(v[0], v[1], v[2] if len(v) > 2 else None, ts[0], ts[1], out, opts, True)

    def _op_leaky_relu(self, v, ts, out, opts):
        s_in, s_out = np.float32(ts[0].scale[0]), np.float32(out.scale[0])
        ma = np.float32(np.float32(s_in * np.float32(opts.alpha)) / s_out)  # float32 in TFLite
        mi = np.float32(s_in / s_out)
        if self.exact:
            mi = np.float64(s_in) / np.float64(s_out)
            ma = mi * np.float64(np.float32(opts.alpha))
        x = v[0].astype(np.int64) - int(ts[0].zero_point[0])
        y = np.where(x >= 0, self._rq(x, mi), self._rq(x, ma)) + int(out.zero_point[0])
        return _clamp8(y)

    def _add_sub(self, v, ts, out, opts, sign: int) -> np.ndarray:
        left = 20
        s1, s2 = np.float32(ts[0].scale[0]), np.float32(ts[1].scale[0])
        x1, x2 = v[0].astype(np.int64) - int(ts[0].zero_point[0]), v[1].astype(np.int64) - int(ts[1].zero_point[0])
        if self.exact:
            r = (np.float64(s1) * x1 + sign * np.float64(s2) * x2) / np.float64(out.scale[0])
            y = (np.sign(r) * np.floor(np.abs(r) + 0.5)).astype(np.int64) + int(out.zero_point[0])
            return _clamp8(y, *self._act_range(out, opts.fusedActivationFunction))
        twice_max = 2.0 * np.float64(max(s1, s2))
        q1, sh1 = quantize_multiplier(float(np.float64(s1) / twice_max))
        q2, sh2 = quantize_multiplier(float(np.float64(s2) / twice_max))
        qo, sho = quantize_multiplier(float(twice_max / np.float64(np.float32((1 << left) * np.float32(out.scale[0])))))
        a = requantize(x1 << left, q1, sh1)
        b = requantize(x2 << left, q2, sh2)
        y = requantize(a + sign * b, qo, sho) + int(out.zero_point[0])
        return _clamp8(y, *self._act_range(out, opts.fusedActivationFunction))

    def _op_add(self, v, ts, out, opts):
        return self._add_sub(v, ts, out, opts, 1)

    def _op_sub(self, v, ts, out, opts):
        return self._add_sub(v, ts, out, opts, -1)

    def _op_mul(self, v, ts, out, opts):
        s1, s2, so = np.float32(ts[0].scale[0]), np.float32(ts[1].scale[0]), np.float32(out.scale[0])
        m = np.float64(s1) * np.float64(s2) / np.float64(so) if self.exact else np.float32(np.float32(s1 * s2) / so)
        prod = (v[0].astype(np.int64) - int(ts[0].zero_point[0])) * (v[1].astype(np.int64) - int(ts[1].zero_point[0]))
        y = self._rq(prod, m) + int(out.zero_point[0])
        return _clamp8(y, *self._act_range(out, opts.fusedActivationFunction))

    def _op_pad(self, v, ts, out, opts):
        pad_value = int(v[2].reshape(-1)[0]) if len(v) > 2 and v[2] is not None else int(out.zero_point[0])
        return np.pad(v[0], [tuple(int(p) for p in row) for row in v[1]], constant_values=pad_value)

    def _op_strided_slice(self, v, ts, out, opts):
        x, begin, end, strides = v[0], v[1].reshape(-1), v[2].reshape(-1), v[3].reshape(-1)
        if opts.ellipsisMask or opts.newAxisMask or opts.shrinkAxisMask or getattr(opts, "offset", False):
            raise IntRefError("STRIDED_SLICE with ellipsis/new-axis/shrink masks or offset is not supported")
        sl = tuple(slice(None if opts.beginMask >> i & 1 else int(begin[i]),
                         None if opts.endMask >> i & 1 else int(end[i]), int(strides[i])) for i in range(x.ndim))
        return x[sl]

    def _op_reshape(self, v, ts, out, opts):
        shape = v[1].reshape(-1) if len(v) > 1 and v[1] is not None else np.asarray(opts.newShape)
        return v[0].reshape([int(s) for s in shape])

    def _op_concatenation(self, v, ts, out, opts):
        for t in ts:
            if not (np.array_equal(t.scale, out.scale) and np.array_equal(t.zero_point, out.zero_point)):
                raise IntRefError(f"CONCATENATION of {t.name} with its own quantization is not supported")
        return np.concatenate(v, axis=int(opts.axis))


def invoke(it: Any, xs: list[np.ndarray]) -> Any:
    """Run a TFLite interpreter on inputs of any length: resize each input to its array, allocate, set, invoke."""
    ins = it.get_input_details()
    for d, x in zip(ins, xs):
        it.resize_tensor_input(d["index"], list(x.shape))
    it.allocate_tensors()
    for d, x in zip(ins, xs):
        it.set_tensor(d["index"], x)
    it.invoke()
    return it


def single_op_model(raw: bytes, k: int) -> bytes:
    """The model cut down to its k-th op: that op's non-constant inputs in, its output out (so a kernel
    set can be checked layer by layer, each layer fed the same int8 input)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(raw, 0))
    sg = model.subgraphs[0]
    op = sg.operators[k]
    const = lambda i: sg.tensors[i].buffer > 0 and model.buffers[sg.tensors[i].buffer].data is not None \
        and len(model.buffers[sg.tensors[i].buffer].data) > 0  # noqa: E731
    sg.operators = [op]
    sg.inputs = np.array([i for i in op.inputs if i >= 0 and not const(i)], np.int32)
    sg.outputs = np.array(list(op.outputs), np.int32)
    for i in list(sg.inputs) + list(sg.outputs):
        sg.tensors[i].shapeSignature = None
    model.signatureDefs = []
    b = flatbuffers.Builder(len(raw) + 4096)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())
