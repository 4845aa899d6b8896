"""Shared tools of the reliability suite: running the real CLI, cheap bundle copies, manifest edits."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from jsonschema import Draft202012Validator

from edge_thyroid.bundle import MANIFEST, sha256_file

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str | Path, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """``edge-thyroid ARGS`` in a fresh interpreter, exactly as a user runs it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "edge_thyroid", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=env, **kwargs)


def assert_refused(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Non-zero exit, no traceback, and one ``error:`` line naming the problem; returns that line."""
    assert result.returncode != 0, f"accepted (rc 0): {result.stdout[-500:]}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), result.stderr[-1000:]
    message = lines[-1]
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def copy_bundle(source: Path, target: Path) -> Path:
    """Hard-link copy (fast for a 90 MB model): change files only through :func:`replace_file`."""
    shutil.copytree(source, target, copy_function=os.link)
    return target


def replace_file(path: Path, data: bytes) -> None:
    """Write a new inode, so the hard-linked original stays untouched."""
    if path.exists() or path.is_symlink():
        path.unlink()
    path.write_bytes(data)


def edit_manifest(bundle: Path, change: Callable[[dict], object]) -> None:
    data = json.loads((bundle / MANIFEST).read_text())
    change(data)
    replace_file(bundle / MANIFEST, json.dumps(data).encode())


def rehash(bundle: Path, *names: str) -> None:
    """Record the current sha256 of ``names``: the loader itself must then cope with their content."""
    edit_manifest(bundle, lambda d: d["files"].update({n: sha256_file(bundle / n) for n in names}))


STREAM_RECORDS = Draft202012Validator(json.loads((REPO / "docs" / "stream-records.schema.json").read_text()))

# Tallies for the run's report (printed by this package's conftest at the end of the session).
TALLY = {"jsonl_files": 0, "frame_records": 0, "gap_records": 0, "records_lost": 0}


def parse_jsonl(path: Path) -> list[dict]:
    """Every line of a JSONL file must parse; a torn last line fails the test."""
    text = path.read_text(encoding="utf-8")
    records, lost = [], 0
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            lost += 1
    TALLY["jsonl_files"] += 1
    TALLY["frame_records"] += sum(r.get("type") == "frame" for r in records)
    TALLY["gap_records"] += sum(r.get("type") == "gap" for r in records)
    TALLY["records_lost"] += lost + (text != "" and not text.endswith("\n"))
    assert text == "" or text.endswith("\n"), f"{path} ends with a partial line: {text[-200:]!r}"
    assert lost == 0, f"{lost} lines of {path} are not JSON"
    for record in records:
        STREAM_RECORDS.validate(record)  # every JSONL the suite writes follows docs/stream-records.schema.json
    return records


def fake_bundle(root: Path) -> Path:
    """A bundle whose files are placeholders (nothing here parses them): manifest-level tests without torch."""
    from edge_thyroid.bundle import Manifest, ModelEntry, Precision, write_manifest
    from edge_thyroid.kernels.reference import PreprocessSpec

    root.mkdir(parents=True)
    (root / "model.onnx").write_bytes(b"model bytes")
    (root / "head.npz").write_bytes(b"head bytes")
    manifest = Manifest(backbone="resnet50", modalities=("bmode", "smi", "swe"), preprocessing=PreprocessSpec(image_size=64),
                        models={"fp32": ModelEntry("model.onnx", Precision.FP32)}, head_file="head.npz", feature_channels=2048)
    write_manifest(root, manifest)
    return root
