"""runtime/modelmeta.py: the typed model contract (ModelMeta), its checks and the sha256 seal; no model files."""
from __future__ import annotations

import json

import pytest

from runtime import modelmeta
from runtime.modelmeta import FORMAT, ModelError, ModelMeta, StateMeta

OFFLINE = {"format": FORMAT, "quantized": True, "sample_rate": 16000, "n_splitter": 2, "n_combiner": 2,
           "splitter": True, "splitter_bits": 8, "combiner_bits": 8, "io_scale": 0.0078125, "kernel_size": 32,
           "stride": 16, "causal": True, "norm_type": "BN", "receptive_field_frames": 43, "io_layout": "NCW",
           "host_padding": "one hop", "input_gain": "fixed", "output_qparams": [[0.0078125, 0], [0.0078125, 0]],
           "seal": "sha256:" + "0" * 64}
STEP = {**OFFLINE, "mode": "step", "step_frames": 16, "step_samples": 256, "stream_offset_samples": 32,
        "states": [{"name": "state_input_hop", "channels": 2, "length": 16, "scale": 0.0078125, "zero_point": 0,
                    "initial": [-1, -128]}], "activations": "uint8"}


@pytest.mark.parametrize("meta", [OFFLINE, STEP, {**OFFLINE, "quantized": False, "future_key": {"a": 1}}],
                         ids=["offline", "step-uint8", "float-with-unknown-key"])
def test_round_trip_keeps_the_dict(meta):
    info = ModelMeta.from_dict(json.loads(json.dumps(meta)))
    assert info.to_dict() == meta
    assert modelmeta.check(json.dumps(meta), "m.onnx", sealed=True) == meta


def test_typed_fields():
    info = ModelMeta.from_dict(STEP)
    assert info.step and info.uint8 and not info.peak_input_gain
    assert info.stride == 16 and info.step_samples == 256 and info.output_qparams == ((0.0078125, 0), (0.0078125, 0))
    assert info.states == (StateMeta("state_input_hop", 2, 16, 0.0078125, 0, (-1, -128)),)
    off = ModelMeta.from_dict(OFFLINE)
    assert not off.step and not off.uint8 and off.states is None and off.stream_offset_samples is None
    assert ModelMeta.from_dict({**OFFLINE, "input_gain": "peak"}).peak_input_gain


@pytest.mark.parametrize("change,field", [
    ({"stride": None}, "stride"), ({"stride": "16"}, "stride"), ({"causal": 1}, "causal"),
    ({"n_combiner": True}, "n_combiner"), ({"activations": "int4"}, "activations"),
    ({"input_gain": "auto"}, "input_gain"), ({"output_qparams": [[0.1, 0.5], [0.1, 0]]}, "output_qparams"),
    ({"kernel_size": 3.0}, "kernel_size"), ({"mode": "block"}, "mode")])
def test_bad_field_is_one_line_naming_it_and_the_supported_versions(change, field):
    meta = {k: v for k, v in {**OFFLINE, **change}.items() if v is not None}
    with pytest.raises(ModelError) as e:
        ModelMeta.from_dict(meta, "m.onnx")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("m.onnx: FQSE metadata lacks or mistypes ")
    assert field in msg.split("mistypes ")[1] and "this runtime reads fqse-2, fqse-3" in msg


@pytest.mark.parametrize("change,field", [({"states": None}, "states"), ({"step_samples": None}, "step_samples"),
                                          ({"states": [{"name": "s", "channels": 2, "length": 4, "initial": [0]}]},
                                           "states")])
def test_step_model_needs_its_step_keys(change, field):
    meta = {k: v for k, v in {**STEP, **change}.items() if v is not None}
    with pytest.raises(ModelError, match=f"lacks or mistypes {field}"):
        ModelMeta.from_dict(meta)


def test_format_seal_json_and_ranges():
    with pytest.raises(ModelError, match=r"m.tflite: model metadata format 'fqse-1'; this runtime reads fqse-2, fqse-3 "):
        modelmeta.check({**OFFLINE, "format": "fqse-1"}, "m.tflite", sealed=True)
    with pytest.raises(ModelError, match="model metadata format None"):
        modelmeta.check({k: v for k, v in OFFLINE.items() if k != "format"}, "m", sealed=True)
    with pytest.raises(ModelError, match="fqse-3 model without its sha256 seal"):
        modelmeta.check(OFFLINE, "m", sealed=False)
    with pytest.raises(ModelError, match="not valid JSON"):
        modelmeta.check("{", "m", sealed=True)
    with pytest.raises(ModelError, match="not a JSON object"):
        modelmeta.check("[1]", "m", sealed=True)
    with pytest.raises(ModelError, match=r"out of range \(stride 0"):
        modelmeta.check({**OFFLINE, "stride": 0}, "m", sealed=True)
    with pytest.raises(ModelError, match="output_qparams has 1 entries for n_combiner 2"):
        ModelMeta.from_dict({**OFFLINE, "output_qparams": [[0.1, 0]]})


def test_writer_cannot_store_metadata_the_runtime_refuses():
    assert json.loads(modelmeta.dumps({**OFFLINE, "format": "old"}))["format"] == FORMAT
    with pytest.raises(ModelError, match="lacks or mistypes receptive_field_frames"):
        modelmeta.dumps({k: v for k, v in OFFLINE.items() if k != "receptive_field_frames"})


def test_seal_and_verify():
    raw = b"head" + modelmeta.dumps(OFFLINE).encode() + b"tail"
    sealed = modelmeta.seal(raw)
    assert len(sealed) == len(raw) and modelmeta.verify(sealed, "m")
    assert modelmeta.verify(b"no seal here", "m") is False
    with pytest.raises(ModelError, match="corrupted or was modified"):
        modelmeta.verify(sealed.replace(b"tail", b"tall"), "m")


def test_what_the_exporters_write_passes_the_contract(demo_ckpt):
    """The metadata of the demo model's offline and step graphs (what both emitters store) types and
    round-trips unchanged."""
    from conversion.graph import build_graph
    from conversion.step_graph import build_step_graph
    from training.checkpoint import load_model
    g = build_graph(load_model(demo_ckpt))
    for meta in (g.meta, build_step_graph(g, 4)[0].meta):
        stored = json.loads(modelmeta.dumps(meta))
        info = ModelMeta.from_dict(stored)
        assert info.to_dict() == stored and info.format == FORMAT and info.n_combiner == len(info.output_qparams)
    assert info.step and len(info.states) == len(stored["states"])
