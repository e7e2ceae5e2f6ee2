"""`fqse bench --compare-onnx2tf`: this project's TFLite against onnx2tf's full-integer PTQ of the float network.

The comparison itself needs the optional `onnx2tf` extra (`make onnx2tf`) and is skipped without it; the
one-line error for the missing extra is tested either way. Speed is reported, never asserted.
"""
from __future__ import annotations

import json
import math
import sys

import pytest

from tests.conftest import DEMO_CKPT, run_fqse


def test_missing_extra_is_one_line_naming_the_install(monkeypatch, capfd):
    from conversion.onnx2tf_compare import Onnx2tfError, require_onnx2tf
    from fqse.cli import main
    monkeypatch.setitem(sys.modules, "onnx2tf", None)  # as if not installed: find_spec gives None
    with pytest.raises(Onnx2tfError) as exc:
        require_onnx2tf()
    assert "\n" not in str(exc.value)
    code = main(["bench", "--compare-onnx2tf", str(DEMO_CKPT), "--verbose"])
    err = capfd.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert "make onnx2tf" in err and "pip install .[onnx2tf]" in err


def test_bench_without_model_or_checkpoint_is_usage_error():
    res = run_fqse("bench")
    assert res.returncode == 2 and "--compare-onnx2tf" in res.stderr and len(res.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> dict:
    pytest.importorskip("onnx2tf")
    out = tmp_path_factory.mktemp("onnx2tf")
    res = run_fqse("bench", "--compare-onnx2tf", str(DEMO_CKPT), "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "| TRANSPOSE |" in res.stdout  # the markdown table is printed
    for name in ("onnx2tf_compare.md", "fqse_int8.tflite", "onnx2tf_full_integer_quant.tflite", "float_static.onnx"):
        assert (out / name).stat().st_size > 0
    return json.loads((out / "onnx2tf_compare.json").read_text())


@pytest.mark.slow
def test_ours_keeps_parity_onnx2tf_does_not(compared):
    ours, theirs = compared["systems"]["fqse"], compared["systems"]["onnx2tf"]
    # `fqse convert` itself fails below MIN_SNR_TFLITE_INT8 = 15 dB (conversion/checks.py); measured 48.9 dB
    # pooled over the six samples. onnx2tf quantizes the float network with its own calibrated scales, so it
    # is about as far from the fake-quant model as the float network itself is (measured 11.6 dB; onnx2tf
    # 12.2 dB): a 20 dB margin leaves room for either to move.
    assert ours["parity_db"] >= 30.0
    assert ours["parity_db"] > theirs["parity_db"] + 20.0
    # onnx2tf's own PTQ error: its int8 model against the float network it was given (measured 22.2 dB). It must
    # be the float network (a wrong lowering would sit near 0 dB) and far from lossless.
    assert 10.0 < theirs["vs_float_db"] < 60.0


@pytest.mark.slow
def test_onnx2tf_adds_layout_ops(compared):
    ours, theirs = compared["systems"]["fqse"], compared["systems"]["onnx2tf"]
    # Ours is written NHWC from the start: no TRANSPOSE, 2 RESHAPEs (the decoder's overlap-add). onnx2tf
    # turns the NCW ONNX into NWC and lowers each Conv1d as a 2-D conv between RESHAPEs (measured: 2 TRANSPOSE,
    # 56 RESHAPE, 163 ops against our 107).
    assert ours["TRANSPOSE"] == 0 and theirs["TRANSPOSE"] > ours["TRANSPOSE"]
    assert theirs["RESHAPE"] > ours["RESHAPE"]
    assert theirs["ops_total"] > ours["ops_total"]
    assert ours["float_tensors"] == 0  # fully integer, I/O included
    assert ours["io"] == "int8 in / int8 out" and theirs["io"] == "int8 in / int8 out"  # asked for int8 I/O
    assert ours["xnnpack_partitions"] >= 1 and theirs["xnnpack_partitions"] >= 1
    assert all(compared["systems"][k]["s_per_s_audio"] > 0 for k in ("fqse", "onnx2tf"))  # reported, not bounded


@pytest.mark.slow
def test_both_enhance_within_a_db_or_two(compared):
    s = compared["systems"]
    for k in ("fqse", "onnx2tf", "float_torch"):
        assert math.isfinite(s[k]["si_snr"])
    # Measured mean SI-SNR on samples/ (shipped model since 2026-11-30): noisy 6.57, ours 9.03 (= fake-quant),
    # onnx2tf 7.53, float network 7.68 dB (the jitter model before it: 9.01, 8.31, 8.53). Both int8 models
    # enhance (> noisy + 0.5 dB), ours is the QAT model's quality (within 0.1 dB of fake-quant), onnx2tf's PTQ
    # keeps its float network's quality (within 0.5 dB; measured 0.15 and 0.22) and lands within 2 dB of ours.
    assert s["fqse"]["si_snr"] > compared["si_snr_noisy"] + 0.5
    assert s["onnx2tf"]["si_snr"] > compared["si_snr_noisy"] + 0.5
    assert abs(s["fqse"]["si_snr"] - compared["si_snr_fakequant"]) < 0.1
    assert abs(s["onnx2tf"]["si_snr"] - s["float_torch"]["si_snr"]) < 0.5
    assert abs(s["fqse"]["si_snr"] - s["onnx2tf"]["si_snr"]) < 2.0


def test_float_network_of_qat_checkpoint_as_static_onnx(tmp_path):
    """What onnx2tf is given: `fqse export --float` of the QAT checkpoint (checked against the torch model with
    quantizers off, >= MIN_SNR_FLOAT = 60 dB; it used to be checked against the fake-quant model and failed),
    its time axis fixed, NCW input [1, S, T]."""
    import onnx
    from conversion.onnx2tf_compare import static_float_onnx
    meta = static_float_onnx(DEMO_CKPT, tmp_path / "f.onnx", 16048)
    m = onnx.load(str(tmp_path / "f.onnx"))
    assert meta["quantized"] is False
    assert [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim] == [1, meta["n_splitter"], 16048]
    assert all(o.type.tensor_type.shape.dim[-1].dim_value == 16048 for o in m.graph.output)
