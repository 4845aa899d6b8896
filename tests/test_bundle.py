"""Bundle round trip and every way a bundle can be wrong."""

import json
import shutil
import zipfile

import numpy as np
import pytest

from edge_thyroid.bundle import MANIFEST, bundle_writer, load_bundle
from edge_thyroid.engine import Engine
from edge_thyroid.errors import BundleError
from edge_thyroid.frames import Pane

from .conftest import needs_torch, screen_frame

pytestmark = needs_torch


@pytest.fixture()
def bundle_copy(random_bundle, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(random_bundle, target)
    return target


def edit_manifest(path, change):
    data = json.loads((path / MANIFEST).read_text())
    change(data)
    (path / MANIFEST).write_text(json.dumps(data))


def test_round_trip_manifest_describes_the_model(random_bundle):
    bundle = load_bundle(random_bundle)
    m = bundle.manifest
    assert m.backbone == "resnet50" and m.modalities == ("bmode", "smi", "swe")
    assert m.preprocessing.image_size == 64 and m.feature_channels == 2048
    assert set(m.files) == {"model.onnx", "head.npz"}
    assert "torch" in m.provenance["tools"]
    again = json.loads((random_bundle / MANIFEST).read_text())
    assert again["files"] == m.files and again["input"]["frame"]["dtype"] == "uint8"


def test_zipped_bundle_loads(random_bundle, tmp_path):
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in random_bundle.iterdir():
            zf.write(f, f"random/{f.name}")
    with Engine(archive) as engine:
        assert 0 <= engine.classify(screen_frame(), [Pane("bmode", (20, 50, 300, 300))]).probability <= 1


def test_tampered_model_is_refused_before_loading(bundle_copy):
    with open(bundle_copy / "model.onnx", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02")
    with pytest.raises(BundleError, match="'model.onnx' has sha256 .* the file was modified or corrupted"):
        load_bundle(bundle_copy)


def test_missing_file_is_named(bundle_copy):
    (bundle_copy / "head.npz").unlink()
    with pytest.raises(BundleError, match="'head.npz' is missing"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(format_version=99), "format_version 99 is not supported"),
    (lambda d: d.update(format="something-else"), "format is 'something-else'"),
    (lambda d: d["models"]["fp32"].update(file="../outside.onnx"), "escapes the bundle directory"),
    (lambda d: d["models"]["fp32"].update(file="/etc/passwd"), "escapes the bundle directory"),
    (lambda d: d["threshold"].update(value=1.5), r"threshold.value 1.5 is outside \[0, 1\]"),
    (lambda d: d.pop("preprocessing"), "missing field 'preprocessing'"),
    (lambda d: d["preprocessing"].update(std=[0.2, 0.0, 0.2]), "std values must be finite and > 0"),
])
def test_bad_manifests_are_refused_with_the_field_named(bundle_copy, change, message):
    edit_manifest(bundle_copy, change)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_copy)


def test_not_json_and_not_a_bundle(bundle_copy, tmp_path):
    (bundle_copy / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle_copy)
    with pytest.raises(BundleError, match="bundle not found"):
        load_bundle(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="has no manifest.json"):
        load_bundle(tmp_path / "empty")


def test_writer_leaves_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with bundle_writer(target) as staging:
            (staging / "model.onnx").write_bytes(b"partial")
            raise RuntimeError("export failed half way")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_corrupt_onnx_with_matching_hash_is_a_clear_error(bundle_copy):
    from edge_thyroid.bundle import sha256_file

    (bundle_copy / "model.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    edit_manifest(bundle_copy, lambda d: d["files"].update({"model.onnx": sha256_file(bundle_copy / "model.onnx")}))
    with pytest.raises(BundleError, match="ONNX Runtime cannot load"):
        Engine(bundle_copy)
