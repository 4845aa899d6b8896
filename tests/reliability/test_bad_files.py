"""Bad and malicious bundle files through the real CLI: each is refused with one line naming the
problem, a non-zero exit and no traceback. Hashes are recomputed where the point is that the loader
itself (not the sha256 check) must cope with the content."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from onnx import TensorProto, helper

from edge_thyroid.bundle import MANIFEST, MAX_MANIFEST_BYTES

from ..conftest import needs_torch, ultrasound_like
from .helpers import assert_refused, copy_bundle, edit_manifest, rehash, replace_file, run_cli

pytestmark = needs_torch


@pytest.fixture()
def bundle(random_bundle, tmp_path) -> Path:
    return copy_bundle(random_bundle, tmp_path / "bundle")


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "pane.png"
    cv2.imwrite(str(path), ultrasound_like(96, 128, seed=3))
    return path


def outside_copy(bundle: Path, name: str) -> Path:
    """Move ``name`` out of the bundle and leave a symlink to it: same bytes, same hash."""
    outside = bundle.parent / f"outside_{name}"
    (bundle / name).rename(outside)
    os.symlink(outside, bundle / name)
    return outside


def nested_json(depth: int) -> str:
    return '{"format": "edge-thyroid-bundle", "format_version": 1, "metrics": ' + "[" * depth + "]" * depth + "}"


def tiny_wrong_model() -> bytes:
    """A valid ONNX model with the wrong signature (x -> y instead of frame + rois -> feature_maps)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "wrong", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


# (name, how to break the bundle, fragments the error line must contain). `info` verifies every
# hash and parses the manifest; model files are only parsed by `classify` (below).
MANIFEST_CASES = [
    ("wrong hash", lambda b: replace_file(b / "head.npz", (b / "head.npz").read_bytes()[:-7] + b"tamper!"),
     ["'head.npz' has sha256", "modified or corrupted"]),
    ("unknown format version", lambda b: edit_manifest(b, lambda d: d.update(format_version=3)),
     ["format_version 3 is not supported"]),
    ("branches in a version 1 manifest",   # a backbone per modality needs version 2: never half-read
     lambda b: edit_manifest(b, lambda d: d["models"]["fp32"].update(branches={"bmode": {"file": "model.onnx"}})),
     ["has branches, which need format_version 2"]),
    ("not a bundle format", lambda b: edit_manifest(b, lambda d: d.update(format="onnx-zoo")), ["format is 'onnx-zoo'"]),
    ("../ in a model path", lambda b: edit_manifest(b, lambda d: d["models"]["fp32"].update(file="../model.onnx")),
     ["'../model.onnx'", "escapes the bundle directory"]),
    ("absolute model path", lambda b: edit_manifest(b, lambda d: d["models"]["fp32"].update(file="/etc/passwd")),
     ["'/etc/passwd'", "escapes the bundle directory"]),
    ("backslash ../", lambda b: edit_manifest(b, lambda d: d["head"].update(file="..\\head.npz")), ["escapes the bundle directory"]),
    ("drive letter", lambda b: edit_manifest(b, lambda d: d["head"].update(file="C:head.npz")), ["escapes the bundle directory"]),
    ("symlinked file pointing outside", lambda b: outside_copy(b, "head.npz"), ["'head.npz' resolves outside the bundle"]),
    ("symlinked manifest pointing outside", lambda b: outside_copy(b, MANIFEST), ["manifest.json", "outside the bundle"]),
    ("huge manifest", lambda b: replace_file(b / MANIFEST, b" " * (MAX_MANIFEST_BYTES + 1) + b"{}"),
     [f"is {MAX_MANIFEST_BYTES + 3} bytes", f"at most {MAX_MANIFEST_BYTES}"]),
    ("deeply nested manifest", lambda b: replace_file(b / MANIFEST, nested_json(100_000).encode()), ["nested", "manifest.json"]),
    ("binary manifest", lambda b: replace_file(b / MANIFEST, b"\xff\xfe\x00garbage"), ["not valid JSON"]),
    ("manifest is a list", lambda b: replace_file(b / MANIFEST, b"[1, 2]"), ["expected a JSON object, got list"]),
    ("threshold too large for a float", lambda b: edit_manifest(b, lambda d: d["threshold"].update(value=10**400)),
     ["invalid value (int too large to convert to float)"]),
    ("infinite image size", lambda b: replace_file(b / MANIFEST, (b / MANIFEST).read_bytes().replace(
        b'"image_size": 64', b'"image_size": Infinity')), ["invalid value (cannot convert float infinity to integer)"]),
    ("NaN preprocessing mean", lambda b: edit_manifest(b, lambda d: d["preprocessing"].update(mean=[float("nan")] * 3)),
     ["mean values must be finite"]),
    ("NUL in a file name", lambda b: edit_manifest(b, lambda d: d["head"].update(file="head\x00.npz")),
     ["head\\x00.npz"]),
    ("file name too long", lambda b: edit_manifest(b, lambda d: (d["head"].update(file="h" * 5000),
                                                                 d["files"].update({"h" * 5000: "0" * 64}))),
     ["hhhh"]),
    ("used file without a hash", lambda b: edit_manifest(b, lambda d: d["files"].pop("head.npz")),
     ["['head.npz'] are used but have no sha256"]),
    ("missing field", lambda b: edit_manifest(b, lambda d: d.pop("models")), ["missing field 'models'"]),
    ("wrong type", lambda b: edit_manifest(b, lambda d: d.update(modalities="bmode")),
     ["'modalities' must be a list of strings"]),
]


@pytest.mark.parametrize("name, breaker, fragments", MANIFEST_CASES, ids=[c[0] for c in MANIFEST_CASES])
def test_bad_bundle_is_refused_by_info(bundle, name, breaker, fragments):
    breaker(bundle)
    assert_refused(run_cli("info", bundle), *fragments)


def zipped(bundle: Path, target: Path, extra: dict[str, bytes], *, symlink: tuple[str, str] | None = None) -> Path:
    with zipfile.ZipFile(target, "w") as archive:
        for path in bundle.iterdir():
            archive.write(path, f"random/{path.name}")
        for name, data in extra.items():
            archive.writestr(name, data)
        if symlink:
            member = zipfile.ZipInfo(symlink[0])
            member.external_attr = 0o120777 << 16  # a symlink entry, as `zip --symlinks` writes it
            archive.writestr(member, symlink[1])
    return target


@pytest.mark.parametrize("member", ["../evil.txt", "random/../../evil.txt", "/tmp/evil.txt"])
def test_zip_member_escaping_the_bundle_is_refused_before_extraction(bundle, tmp_path, member):
    archive = zipped(bundle, tmp_path / "b.zip", {member: b"owned"})
    assert_refused(run_cli("info", archive), repr(member), "escapes the bundle directory")
    assert not (tmp_path / "evil.txt").exists()


def test_zip_symlink_member_is_not_followed(bundle, tmp_path):
    (bundle / "head.npz").unlink()
    archive = zipped(bundle, tmp_path / "b.zip", {}, symlink=("random/head.npz", str(bundle.parent / "outside.npz")))
    # Extracted as a small file holding the link text, never as a link: its hash cannot match.
    assert_refused(run_cli("info", archive), "'head.npz'", "modified or corrupted")


# Files only the model loaders read: hashes recomputed, so the loaders themselves must refuse them.
def truncate_model(bundle: Path) -> None:
    replace_file(bundle / "model.onnx", (bundle / "model.onnx").read_bytes()[:100_000])


def flip_header(bundle: Path) -> None:
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[:64] = bytes(b ^ 0xA5 for b in data[:64])
    replace_file(bundle / "model.onnx", bytes(data))


LOADER_CASES = [
    ("truncated ONNX", "model.onnx", truncate_model, ["ONNX Runtime cannot load", "model.onnx"]),
    ("corrupted ONNX header", "model.onnx", flip_header, ["ONNX Runtime cannot load"]),
    ("empty ONNX", "model.onnx", lambda b: replace_file(b / "model.onnx", b""), ["ONNX Runtime cannot load"]),
    ("ONNX with the wrong signature", "model.onnx", lambda b: replace_file(b / "model.onnx", tiny_wrong_model()),
     ["model.onnx", "['x']", "frame", "rois"]),
    ("truncated head", "head.npz", lambda b: replace_file(b / "head.npz", (b / "head.npz").read_bytes()[:300]),
     ["head weights", "unreadable"]),
    ("head with NaN", "head.npz", lambda b: replace_file(b / "head.npz", npz_bytes(
        weight=np.full((3, 2048), np.nan), presence_bias=np.zeros(3), bias=np.float64(0))), ["NaN or infinity"]),
    ("head of the wrong shape", "head.npz", lambda b: replace_file(b / "head.npz", npz_bytes(
        weight=np.zeros((2, 5)), presence_bias=np.zeros(2), bias=np.float64(0))), ["head weights", "expected (3, C)"]),
    ("pickled head", "head.npz", lambda b: replace_file(b / "head.npz", npz_bytes(
        weight=np.array([{"run": "code"}], dtype=object), presence_bias=np.zeros(3), bias=np.float64(0))),
     ["head weights", "unreadable"]),
]


@pytest.mark.parametrize("name, file, breaker, fragments", LOADER_CASES, ids=[c[0] for c in LOADER_CASES])
def test_corrupt_file_with_matching_hash_is_refused_by_classify(bundle, image, name, file, breaker, fragments):
    breaker(bundle)
    rehash(bundle, file)
    assert run_cli("info", bundle).returncode == 0  # the hashes match: refusing is up to the loader
    assert_refused(run_cli("classify", bundle, image), *fragments)


def test_engine_file_for_an_absent_runtime_is_refused_with_an_install_hint(bundle, image):
    """A TensorRT plan (here garbage) on a machine without TensorRT: an install hint, not a crash."""
    replace_file(bundle / "model.plan", os.urandom(4096))
    replace_file(bundle / "preprocess.onnx", (bundle / "model.onnx").read_bytes())
    edit_manifest(bundle, lambda d: d["models"].update(fp32={"file": "model.plan", "precision": "fp32", "target": "tensorrt"}))
    rehash(bundle, "model.plan", "preprocess.onnx")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert_refused(run_cli("classify", bundle, image), "pip install 'edge-thyroid[tensorrt]'")
    else:
        assert_refused(run_cli("classify", bundle, image), "model.plan")


def test_wrong_hash_is_refused_before_the_model_is_parsed(bundle, image, monkeypatch, capsys):
    """The supply-chain guarantee: a tampered model never reaches ONNX Runtime's parser."""
    import onnxruntime

    from edge_thyroid.cli import main

    replace_file(bundle / "model.onnx", tiny_wrong_model())
    parsed = []
    monkeypatch.setattr(onnxruntime, "InferenceSession", lambda *args, **kwargs: parsed.append(args))
    with pytest.raises(SystemExit) as exit_info:
        main(["classify", str(bundle), str(image)])
    assert exit_info.value.code != 0
    assert "'model.onnx' has sha256" in capsys.readouterr().err
    assert parsed == []


def test_error_lines_are_single_lines_even_for_long_inputs(bundle):
    edit_manifest(bundle, lambda d: d.update(modalities=["x" * 10_000, 7]))
    message = assert_refused(run_cli("info", bundle), "'modalities' must be a list of strings")
    assert len(message) < 400
    json.dumps(message)


def png_declaring(width: int, height: int) -> bytes:
    """A 1 kB PNG whose header claims width x height pixels (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(1000))) + chunk(b"IEND", b"")


BAD_IMAGES = {
    "truncated": (lambda ok: ok[: len(ok) // 2], "truncated"),
    "empty": (lambda ok: b"", "is empty"),
    "not an image": (lambda ok: b"GIF? no, text", "cannot decode image"),
    "decompression bomb": (lambda ok: png_declaring(30_000, 30_000), "cannot decode image"),
}


@pytest.mark.parametrize("kind", BAD_IMAGES)
def test_bad_image_is_refused_by_classify(random_bundle, image, tmp_path, kind):
    bad = tmp_path / "bad.png"
    breaker, fragment = BAD_IMAGES[kind]
    bad.write_bytes(breaker(image.read_bytes()))
    assert_refused(run_cli("classify", random_bundle, bad), fragment, "bad.png")
