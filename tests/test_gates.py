"""The accuracy gate per configuration in the manifest: reading, legacy single gates, recording."""

import json
import shutil

import pytest

from edge_thyroid.bundle import load_bundle
from edge_thyroid.errors import BundleError
from edge_thyroid.gates import Configuration, gate_passed, record_gate, recorded_gates

from .conftest import REPO, edited_demo_copy

DEMO = REPO / "edge_thyroid" / "data" / "demo_bundle"


def legacy_demo_copy(destination):
    """The demo bundle as a manifest written before per-configuration gates: one ONNX Runtime 'gate'."""

    def to_legacy(manifest: dict) -> None:
        entry = manifest["models"]["int8"]
        entry["gate"] = entry.pop("gates")["onnxruntime"]

    return edited_demo_copy(destination, to_legacy)


def test_configuration_keys_round_trip():
    assert Configuration("onnxruntime").key == "onnxruntime"
    assert Configuration("openvino", "bf16").key == "openvino/bf16"
    assert Configuration.parse("openvino/f32") == Configuration("openvino", "f32")
    assert Configuration.parse("tensorrt") == Configuration("tensorrt")
    with pytest.raises(BundleError, match="does not name a backend"):
        Configuration.parse("/f32")


def test_legacy_single_gate_reads_as_the_onnxruntime_gate():
    details = {"gate": {"passed": True, "auc_drop": 0.0}}
    assert recorded_gates(details) == {"onnxruntime": {"passed": True, "auc_drop": 0.0}}
    assert gate_passed(details, Configuration("onnxruntime"))
    assert not gate_passed(details, Configuration("openvino", "f32"))


def test_per_configuration_gates_and_failed_gates():
    details = {"gates": {"openvino/f32": {"passed": True}, "openvino/bf16": {"passed": False}}}
    assert gate_passed(details, Configuration("openvino", "f32"))
    assert not gate_passed(details, Configuration("openvino", "bf16"))
    assert not gate_passed(details, Configuration("onnxruntime"))
    with pytest.raises(BundleError, match="'gates' must be an object"):
        recorded_gates({"gates": ["openvino/f32"]})


def test_the_shipped_bundle_keeps_its_onnxruntime_gate():
    entry = load_bundle(DEMO).model_entry("int8")[1]
    assert gate_passed(entry.details, Configuration("onnxruntime"))


def test_record_gate_rewrites_only_the_manifest(tmp_path):
    bundle_dir = legacy_demo_copy(tmp_path / "b")
    before = json.loads((bundle_dir / "manifest.json").read_text())
    signed = (bundle_dir / "manifest.sig").exists()
    assert record_gate(bundle_dir, "int8", Configuration("openvino", "bf16"), {"passed": False, "auc_drop": 0.02}) == signed
    assert record_gate(bundle_dir, "int8", Configuration("openvino", "f32"), {"passed": True, "auc_drop": 0.001}) is False
    assert not (bundle_dir / "manifest.sig").exists()  # it signed the old manifest's bytes; now it would be a lie
    bundle = load_bundle(bundle_dir)  # hashes of the model files still verify
    gates = recorded_gates(bundle.model_entry("int8")[1].details)
    assert gates["openvino/f32"] == {"passed": True, "auc_drop": 0.001}
    assert gates["openvino/bf16"]["passed"] is False
    assert gates["onnxruntime"] == before["models"]["int8"]["gate"]  # the legacy gate is kept
    after = json.loads((bundle_dir / "manifest.json").read_text())
    assert {k: v for k, v in after.items() if k != "models"} == {k: v for k, v in before.items() if k != "models"}
    assert not [p for p in bundle_dir.iterdir() if p.name.startswith(".")]  # no staging file left


def test_a_new_onnxruntime_gate_replaces_the_legacy_one(tmp_path):
    bundle_dir = legacy_demo_copy(tmp_path / "b")
    record_gate(bundle_dir, "int8", Configuration("onnxruntime"), {"passed": False})
    entry = json.loads((bundle_dir / "manifest.json").read_text())["models"]["int8"]
    assert entry["gate"] == {"passed": False} and entry["gates"]["onnxruntime"] == {"passed": False}
    assert not gate_passed(entry, Configuration("onnxruntime"))


def test_record_gate_names_what_is_wrong(tmp_path):
    with pytest.raises(BundleError, match="not a bundle directory"):
        record_gate(tmp_path, "int8", Configuration("onnxruntime"), {"passed": True})
    bundle_dir = tmp_path / "b"
    shutil.copytree(DEMO, bundle_dir)
    with pytest.raises(BundleError, match="has no model 'fp16'"):
        record_gate(bundle_dir, "fp16", Configuration("onnxruntime"), {"passed": True})


def test_info_lists_every_configurations_gate(tmp_path):
    from click.testing import CliRunner

    from edge_thyroid.cli import cli

    bundle_dir = tmp_path / "b"
    shutil.copytree(DEMO, bundle_dir)
    record_gate(bundle_dir, "int8", Configuration("openvino", "bf16"), {"passed": False, "auc_drop": 0.02, "agreement": 0.9})
    out = CliRunner().invoke(cli, ["info", str(bundle_dir)]).output
    assert "gate      onnxruntime: passed" in out
    assert "gate      openvino/bf16: FAILED (auc_drop +0.0200, agreement 0.9000)" in out
