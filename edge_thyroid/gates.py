"""The accuracy gate per configuration: which (backend, execution precision) of a bundle's model was
judged against its FP32 reference, and with what result.

A gate measured on ONNX Runtime says nothing about OpenVINO running the float parts in bfloat16, so the
manifest keeps one gate per configuration, in the model entry::

    "models": {"int8": {..., "gates": {"onnxruntime": {...}, "openvino/f32": {...}, "openvino/bf16": {...}}}}

Keys are ``backend`` for runtimes that execute the model at the precision it was exported in (ONNX
Runtime, TensorRT) and ``backend/precision`` for runtimes that choose the precision of the float parts
(OpenVINO). Bundles written before this kept a single ``"gate"`` measured with ONNX Runtime; it is read
as the ``onnxruntime`` gate.

``edge-thyroid verify`` records the gate of the configuration it ran with :func:`record_gate`, which
rewrites only ``manifest.json``: the manifest is not among the hashed files, so the model files stay
verified (a signature over the old manifest is removed: sign the bundle again).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BundleError

LEGACY_GATE = "gate"        # the single gate of older manifests, measured with ONNX Runtime
GATES = "gates"
LEGACY_BACKEND = "onnxruntime"


@dataclass(frozen=True, order=True)
class Configuration:
    """One way to run a model: the backend and, for backends that choose it, the float parts' precision."""

    backend: str
    execution_precision: str | None = None

    @property
    def key(self) -> str:
        return self.backend if self.execution_precision is None else f"{self.backend}/{self.execution_precision}"

    @classmethod
    def parse(cls, key: str) -> "Configuration":
        backend, _, precision = key.partition("/")
        if not backend:
            raise BundleError(f"gate key {key!r} does not name a backend; expected 'backend' or 'backend/precision'")
        return cls(backend, precision or None)

    def __str__(self) -> str:
        return self.key


def recorded_gates(details: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The gates of one model entry's details, by configuration key (a legacy single gate as 'onnxruntime')."""
    gates: dict[str, dict[str, Any]] = {}
    legacy = details.get(LEGACY_GATE)
    if isinstance(legacy, Mapping):
        gates[LEGACY_BACKEND] = dict(legacy)
    recorded = details.get(GATES, {})
    if not isinstance(recorded, Mapping):
        raise BundleError(f"manifest field 'gates' must be an object keyed by configuration, got {type(recorded).__name__}")
    for key, gate in recorded.items():
        if not isinstance(gate, Mapping):
            raise BundleError(f"manifest gate {key!r} must be an object, got {type(gate).__name__}")
        gates[str(key)] = dict(gate)
    return gates


def gate_passed(details: Mapping[str, Any], configuration: Configuration) -> bool:
    """True only when this configuration's gate was recorded and passed."""
    gate = recorded_gates(details).get(configuration.key)
    return bool(gate and gate.get("passed") is True)


def record_gate(bundle_root: str | Path, model_key: str, configuration: Configuration,
                summary: Mapping[str, Any]) -> bool:
    """Write ``summary`` as ``configuration``'s gate of ``model_key`` into the bundle directory's manifest
    (atomically: a temporary file renamed over it). Other fields are kept as they are.

    A signature covers the manifest's exact bytes, so a signed bundle's ``manifest.sig`` no longer
    matches: it is removed (the bundle is then unsigned, refused wherever a trusted key is required,
    until it is signed again with ``edge-thyroid sign``). Returns True when a signature was removed."""
    from .bundle import MANIFEST, Manifest
    from .signing import SIGNATURE

    root = Path(bundle_root)
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(f"cannot record the gate: {root} is not a bundle directory with {MANIFEST} "
                          "(a .zip bundle is read-only; unpack it, verify, and pack it again)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"cannot record the gate: {path} cannot be read as JSON ({exc})") from None
    Manifest.from_dict(data, str(path))  # refuse to rewrite something that is not a valid manifest
    entry = data["models"].get(model_key)
    if not isinstance(entry, dict):
        raise BundleError(f"cannot record the gate: {path} has no model {model_key!r}; it has {sorted(data['models'])}")
    entry[GATES] = {**recorded_gates(entry), configuration.key: dict(summary)}
    # The legacy field stays as written so older readers keep their ONNX Runtime gate; a new ONNX Runtime
    # gate replaces it, because both name the same configuration.
    if configuration.key == LEGACY_BACKEND and LEGACY_GATE in entry:
        entry[LEGACY_GATE] = dict(summary)
    text = json.dumps(data, indent=2) + "\n"
    handle, staging = tempfile.mkstemp(prefix=f".{MANIFEST}.", dir=root)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    signature = root / SIGNATURE
    if signature.exists():
        signature.unlink()
        return True
    return False
