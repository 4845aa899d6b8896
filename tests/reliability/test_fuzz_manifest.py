"""Fuzzing the manifest parser and the bundle loader: whatever the bytes, only a BundleError escapes
(never KeyError, TypeError, AttributeError, OverflowError, RecursionError, ...)."""

from __future__ import annotations

import copy
import gc
import json
import math
import shutil
import tempfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_thyroid.bundle import MANIFEST, Manifest, load_bundle
from edge_thyroid.errors import BundleError

from .helpers import fake_bundle

FUZZ = settings(max_examples=250, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

scalars = (st.none() | st.booleans() | st.integers(min_value=-10**30, max_value=10**400)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.sampled_from(["fp32", "int8", "tensorrt", "../x", "/etc/passwd", "a\x00b", "", "bmode", "C:x"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> tuple[Path, dict]:
    root = fake_bundle(tmp_path_factory.mktemp("fuzz") / "bundle")
    return root, json.loads((root / MANIFEST).read_text())


def paths(value, prefix=()):
    """Every (container path) in a JSON document, to pick a mutation site from."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths(item, (*prefix, index))


def mutate(document: dict, data: st.DataObject) -> dict:
    document = copy.deepcopy(document)
    for _ in range(data.draw(st.integers(1, 3))):
        sites = [p for p in paths(document) if p]
        if not sites:
            break
        site = data.draw(st.sampled_from(sites))
        parent = document
        for key in site[:-1]:
            parent = parent[key]
        action = data.draw(st.sampled_from(["replace", "delete", "wrap"]))
        if action == "delete" and isinstance(parent, dict):
            del parent[site[-1]]
        elif action == "wrap":
            parent[site[-1]] = [parent[site[-1]]]
        else:
            parent[site[-1]] = data.draw(json_values)
    return document


def parse_or_bundle_error(document) -> Manifest | None:
    try:
        return Manifest.from_dict(document)
    except BundleError as exc:
        assert "\n" not in str(exc)
        return None


@FUZZ
@given(data=st.data())
def test_mutated_manifest_parses_or_raises_bundle_error(valid, data):
    manifest = parse_or_bundle_error(mutate(valid[1], data))
    if manifest is not None:  # what it accepts must be usable: the fields have the promised types
        assert manifest.modalities and all(isinstance(m, str) for m in manifest.modalities)
        assert 0.0 <= manifest.threshold.value <= 1.0
        assert isinstance(manifest.feature_channels, int)
        assert all(math.isfinite(v) for v in (*manifest.preprocessing.mean, *manifest.preprocessing.std))
        assert all(".." not in f.split("/") and not f.startswith("/") for f in (manifest.head_file, *manifest.files))


@FUZZ
@given(document=json_values)
def test_arbitrary_json_raises_bundle_error(document):
    assert parse_or_bundle_error(document) is None


def write_and_load(root: Path, text: bytes) -> None:
    (root / MANIFEST).write_bytes(text)
    try:
        load_bundle(root)
    except BundleError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_manifest_bytes_are_loaded_or_refused(valid, tmp_path_factory, data):
    root = tmp_path_factory.mktemp("bytes") / "bundle"
    shutil.copytree(valid[0], root)
    text = bytearray((valid[0] / MANIFEST).read_bytes())
    for _ in range(data.draw(st.integers(1, 6))):
        position = data.draw(st.integers(0, len(text) - 1))
        kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if kind == "flip":
            text[position] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "cut":
            del text[position:]
            if not text:
                break
        else:
            text[position:position] = data.draw(st.sampled_from([b"[" * 5000, b"\xff", b"1e999", b'"..', b"\x00", b"{}"]))
    write_and_load(root, bytes(text))


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_zip_bundle_is_loaded_or_refused(valid, tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("zip")
    archive = folder / "bundle.zip"
    with zipfile.ZipFile(archive, "w", compression=data.draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]))) as zf:
        for path in sorted(valid[0].iterdir()):
            zf.write(path, f"bundle/{path.name}")
    raw = bytearray(archive.read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    if data.draw(st.booleans()):
        del raw[data.draw(st.integers(1, len(raw) - 1)):]
    archive.write_bytes(bytes(raw))
    try:
        load_bundle(archive)
    except BundleError as exc:
        assert "\n" not in str(exc)


def zip_of(folder: Path, archive: Path, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.iterdir()):
            zf.write(path, f"bundle/{path.name}")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return archive


def test_zip_bomb_is_refused_before_extraction(valid, tmp_path, monkeypatch):
    import edge_thyroid.bundle as bundle_module

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(bundle_module, "MAX_ZIP_BYTES", 1 << 20)  # the real limit (16 GiB) is too slow to build here
    archive = zip_of(valid[0], tmp_path / "bomb.zip", {"bundle/zeros.bin": bytes(4 << 20)})
    assert archive.stat().st_size < 64 << 10
    with pytest.raises(BundleError, match=r"unpacks to \d+ bytes; a bundle .zip is at most 1048576"):
        load_bundle(archive)
    assert [p.name for p in tmp_path.iterdir()] == ["bomb.zip"]


def test_extracted_zip_lives_as_long_as_its_bundle(valid, tmp_path, monkeypatch):
    """A workstation reloading a zipped bundle for hours must not fill /tmp with one copy per load."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    bundle = load_bundle(zip_of(valid[0], tmp_path / "b.zip"))
    assert bundle.path(bundle.manifest.head_file).read_bytes() == b"head bytes"
    assert len(list(scratch.iterdir())) == 1
    del bundle
    gc.collect()
    assert list(scratch.iterdir()) == []
    # Refused after extraction (hash mismatch), and refused while extracting (damaged member).
    tampered = tmp_path / "tampered"
    shutil.copytree(valid[0], tampered)
    (tampered / "head.npz").write_bytes(b"other bytes")
    with pytest.raises(BundleError, match="'head.npz' has sha256"):
        load_bundle(zip_of(tampered, tmp_path / "tampered.zip"))
    raw = bytearray((tmp_path / "b.zip").read_bytes())
    raw[40] ^= 0xFF
    (tmp_path / "damaged.zip").write_bytes(bytes(raw))
    with pytest.raises(BundleError):
        load_bundle(tmp_path / "damaged.zip")
    assert list(scratch.iterdir()) == []
