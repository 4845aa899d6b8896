"""Model bundles: a directory (or a .zip of one) holding the engine files, the head weights and
``manifest.json``.

The manifest records the format version, the sha256 of every file, the input and preprocessing
spec, the modalities, the decision threshold and how it was chosen, validation metrics, calibration
and provenance. :func:`load_bundle` verifies every hash *before* any model file is parsed, refuses
paths that escape the bundle directory, and names what does not match.

Bundles are written atomically: into a temporary sibling directory, renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import weakref
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from .errors import BundleError
from .familiarity import manifest_entry
from .manifest_fields import file_name, mapping, strings
from .prevalence import model_prior
from .kernels.reference import PreprocessSpec
from .signing import SIGNATURE, SignatureStatus, TrustPolicy, check_signature

FORMAT = "edge-thyroid-bundle"
FORMAT_VERSION = 1
# Version 2 adds one backbone per modality (``branches`` in a model entry); a bundle with a single
# backbone is still written as version 1, byte for byte as before, so older engines keep reading it
# and refuse a branched bundle by its version instead of misreading it.
BRANCHED_FORMAT_VERSION = 2
READABLE_VERSIONS = (FORMAT_VERSION, BRANCHED_FORMAT_VERSION)
# A nodule box is grown by a factor in this range before the model sees it (Manifest.box_context).
MIN_BOX_CONTEXT, MAX_BOX_CONTEXT = 1.0, 4.0
BOX_CONTEXT_NOTE = ("every nodule box (operator, calipers, CSV roi) is grown this many times about its centre, "
                    "within its pane, before the model sees it; whole images and whole panes are unchanged")
TEST_TIME_NOTE = ("the model graph averages each pane's feature maps with those of its mirror image (mirrored "
                  "back); p and CAMs are of the averaged maps")
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 1 << 20
MAX_ZIP_BYTES = 16 << 30  # declared uncompressed size; zipfile never inflates a member past it (zip bombs)


class Precision(str, Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


class Target(str, Enum):
    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"


@dataclass(frozen=True)
class ModelEntry:
    """One compiled form of the backbone: which file, what precision, for which runtime.

    A bundle with a backbone per modality has no single ``file``: ``branches`` maps each modality to
    its own entry (same precision and target, its own file and details such as its quantization)."""

    file: str
    precision: Precision
    target: Target = Target.ONNXRUNTIME
    details: dict[str, Any] = field(default_factory=dict)
    branches: dict[str, "ModelEntry"] = field(default_factory=dict)

    @property
    def files(self) -> list[str]:
        return [b.file for b in self.branches.values()] if self.branches else [self.file]

    def to_dict(self) -> dict:
        if self.branches:
            return {"precision": self.precision.value, "target": self.target.value, **self.details,
                    "branches": {m: {"file": b.file, **b.details} for m, b in self.branches.items()}}
        return {"file": self.file, "precision": self.precision.value, "target": self.target.value, **self.details}

    @property
    def describe(self) -> str:
        """For messages: the file, or every branch's."""
        return ", ".join(f"{m}={b.file}" for m, b in self.branches.items()) if self.branches else self.file


@dataclass(frozen=True)
class Threshold:
    value: float = 0.5
    method: str = "default"
    chosen_on: str = "none"
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"value": self.value, "method": self.method, "chosen_on": self.chosen_on, **self.details}


@dataclass
class Manifest:
    backbone: str
    modalities: tuple[str, ...]
    preprocessing: PreprocessSpec
    models: dict[str, ModelEntry]
    head_file: str
    feature_channels: int
    trained_modalities: tuple[str, ...] = ()
    threshold: Threshold = field(default_factory=Threshold)
    metrics: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    # Where an imported model came from and what it is for (file, sha256, architecture, outputs,
    # input spec, intended use); empty for the project's own checkpoints.
    model_card: dict[str, Any] = field(default_factory=dict)
    # How much tissue around a nodule box the model sees: every box handed to it (an operator's, the
    # calipers', a CSV's roi) is grown this many times about its centre within its pane (frames.widen_box).
    # 1: the box as given (bundles written before this field, whole images, imported models by default).
    box_context: float = 1.0
    # {"flip": true, "roll": ..., ...} when the model graph averages each pane's feature maps with its
    # mirror image's (export/test_time.py); informational (the graph does it), for info and reports.
    test_time: dict[str, Any] = field(default_factory=dict)
    # {"file", "modality", "neighbours", "threshold", ...}: its training crops' features (familiarity.py)
    familiarity: dict[str, Any] = field(default_factory=dict)
    # {"prior": 0.5, "basis": ...}: the share of malignant nodules the model's p assumes (prevalence.py);
    # empty: not recorded, and --prevalence refuses the bundle.
    probability: dict[str, Any] = field(default_factory=dict)

    @property
    def test_time_flip(self) -> bool:
        return bool(self.test_time.get("flip", False))

    @property
    def branched(self) -> bool:
        return any(entry.branches for entry in self.models.values())

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": BRANCHED_FORMAT_VERSION if self.branched else self.format_version,
            "backbone": self.backbone,
            "modalities": list(self.modalities),
            "trained_modalities": list(self.trained_modalities),
            "input": {
                "frame": {"dtype": "uint8", "layout": "HWC", "channels": 3, "color_order": "BGR",
                          "height": "any", "width": "any"},
                "rois": {"dtype": "int64", "shape": ["panes", 4], "order": "x, y, w, h", "panes": [1, len(self.modalities)]},
            },
            "output": {"feature_maps": {"dtype": "float32", "shape": ["panes", self.feature_channels, "h", "w"]}},
            "preprocessing": self.preprocessing.to_dict(),
            "models": {key: entry.to_dict() for key, entry in self.models.items()},
            "head": {"file": self.head_file, "channels": self.feature_channels},
            "threshold": self.threshold.to_dict(),
            "metrics": self.metrics,
            "calibration": self.calibration,
            "provenance": self.provenance,
            **({"model_card": self.model_card} if self.model_card else {}),
            **({"nodule_box": {"context": self.box_context, "note": BOX_CONTEXT_NOTE}} if self.box_context != 1.0 else {}),
            **({"test_time": {**self.test_time, "note": TEST_TIME_NOTE}} if self.test_time_flip else {}),
            **({"familiarity": self.familiarity} if self.familiarity else {}),
            **({"probability": self.probability} if self.probability else {}),
            "files": dict(sorted(self.files.items())),
        }

    @classmethod
    def from_dict(cls, data: Any, source: str = MANIFEST) -> "Manifest":
        """Parse and validate; every problem is a BundleError naming the field."""
        if not isinstance(data, dict):
            raise BundleError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise BundleError(f"{source}: format is {data.get('format')!r}; expected {FORMAT!r}")
        version = data.get("format_version")
        if version not in READABLE_VERSIONS or isinstance(version, bool):
            raise BundleError(f"{source}: format_version {version!r} is not supported; this edge-thyroid reads "
                              f"versions {list(READABLE_VERSIONS)}")
        try:
            modalities = tuple(strings(data["modalities"], "modalities"))
            if not modalities or len(set(modalities)) != len(modalities):
                raise BundleError(f"{source}: modalities must be distinct names, got {list(modalities)}")
            models = {str(key): _model_entry(key, entry, modalities, version, source)
                      for key, entry in mapping(data["models"], "models").items()}
            if not models:
                raise BundleError(f"{source}: models is empty; expected at least one model file")
            if len({bool(entry.branches) for entry in models.values()}) > 1:
                raise BundleError(f"{source}: some models have a backbone per modality and some one backbone; "
                                  "expected one kind for every model of a bundle")
            threshold = mapping(data.get("threshold", {}), "threshold")
            value = float(threshold.get("value", 0.5))
            if not 0.0 <= value <= 1.0:
                raise BundleError(f"{source}: threshold.value {value} is outside [0, 1]")
            head = mapping(data["head"], "head")
            box_context = float(mapping(data.get("nodule_box", {}), "nodule_box").get("context", 1.0))
            if not MIN_BOX_CONTEXT <= box_context <= MAX_BOX_CONTEXT:
                raise BundleError(f"{source}: nodule_box.context {box_context} is outside [{MIN_BOX_CONTEXT}, "
                                  f"{MAX_BOX_CONTEXT}]; expected how many times a nodule box is grown (1: as given)")
            test_time = dict(mapping(data.get("test_time", {}), "test_time"))
            test_time.pop("note", None)
            if not isinstance(test_time.get("flip", False), bool):
                raise BundleError(f"{source}: test_time.flip is {test_time['flip']!r}; expected true or false")
            files = {file_name(name, "files"): str(digest) for name, digest in mapping(data["files"], "files").items()}
            familiarity = manifest_entry(mapping(data.get("familiarity", {}), "familiarity"), modalities, source)
            probability = dict(mapping(data.get("probability", {}), "probability"))
            prior = model_prior(probability)
            if probability and not (prior is not None and 0.0 < prior < 1.0):
                raise BundleError(f"{source}: probability.prior is {probability.get('prior')!r}; expected the share of "
                                  "malignant nodules the model's p assumes, in (0, 1)")
            return cls(
                backbone=str(data["backbone"]),
                modalities=modalities,
                trained_modalities=tuple(strings(data.get("trained_modalities", []), "trained_modalities")),
                preprocessing=PreprocessSpec.from_dict(mapping(data["preprocessing"], "preprocessing")),
                models=models,
                head_file=file_name(head["file"], "head.file"),
                feature_channels=int(head["channels"]),
                threshold=Threshold(value, str(threshold.get("method", "default")), str(threshold.get("chosen_on", "none")),
                                    {k: v for k, v in threshold.items() if k not in ("value", "method", "chosen_on")}),
                metrics=dict(mapping(data.get("metrics", {}), "metrics")),
                calibration=dict(mapping(data.get("calibration", {}), "calibration")),
                provenance=dict(mapping(data.get("provenance", {}), "provenance")),
                files=files,
                format_version=version,
                model_card=dict(mapping(data.get("model_card", {}), "model_card")),
                box_context=box_context,
                test_time=test_time,
                familiarity=familiarity,
                probability=probability,
            )
        except BundleError:
            raise
        except KeyError as exc:
            raise BundleError(f"{source}: missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: JSON allows 1e999 and 10**400
            raise BundleError(f"{source}: invalid value ({exc})") from None


def _model_entry(key: Any, data: Any, modalities: tuple[str, ...], version: int, source: str) -> ModelEntry:
    """One ``models`` entry: a file, or (format version 2) one branch per modality."""
    data = mapping(data, f"models.{key}")
    precision, target = Precision(data["precision"]), Target(data.get("target", "onnxruntime"))
    if "branches" not in data:
        details = {k: v for k, v in data.items() if k not in ("file", "precision", "target")}
        return ModelEntry(file_name(data["file"], f"models.{key}.file"), precision, target, details)
    if version != BRANCHED_FORMAT_VERSION:
        raise BundleError(f"{source}: models.{key} has branches, which need format_version {BRANCHED_FORMAT_VERSION}; "
                          f"the manifest says {version}")
    raw = mapping(data["branches"], f"models.{key}.branches")
    if sorted(raw) != sorted(modalities):
        raise BundleError(f"{source}: models.{key}.branches are {sorted(raw)}; expected one per modality {list(modalities)}")
    branches = {}
    for modality in modalities:
        branch = mapping(raw[modality], f"models.{key}.branches.{modality}")
        branches[modality] = ModelEntry(file_name(branch["file"], f"models.{key}.branches.{modality}.file"),
                                        precision, target, {k: v for k, v in branch.items() if k != "file"})
    details = {k: v for k, v in data.items() if k not in ("branches", "precision", "target", "file")}
    return ModelEntry("", precision, target, details, branches)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Bundle:
    root: Path
    manifest: Manifest
    # sha256 of the manifest's bytes and who signed them; None only for a bundle still being written.
    signature: SignatureStatus | None = None

    def path(self, name: str) -> Path:
        return self.root / name

    def model_entry(self, key: str | Precision | None = None) -> tuple[str, ModelEntry]:
        """The model to run: by key ('fp32', 'int8', ...) or precision; default int8 > fp32 > first."""
        key = key.value if isinstance(key, Precision) else key
        models = self.manifest.models
        if key is None:
            for preferred in ("int8", "fp32"):
                if preferred in models and models[preferred].target is Target.ONNXRUNTIME:
                    return preferred, models[preferred]
            key = next(iter(models))
        if key not in models:
            raise BundleError(f"bundle {self.root} has no {key!r} model; it has {sorted(models)}")
        return key, models[key]


def load_bundle(path: str | Path, *, verify: bool = True, trust: TrustPolicy | None = None,
                ignore_signature: bool = False) -> Bundle:
    """Open a bundle directory (or .zip), check the manifest's signature against the trust policy
    (default: the CLI's --trust or $EDGE_THYROID_TRUSTED_KEYS, see :mod:`edge_thyroid.signing`),
    verify hashes of every listed file, parse the manifest.

    A .zip is extracted to a temporary directory that lives as long as the returned Bundle.
    ``ignore_signature`` is for the signer itself, which replaces the signature.
    """
    root = Path(path)
    if not (root.is_file() and zipfile.is_zipfile(root)):
        return _load_directory(root, path, verify, trust, ignore_signature)
    extracted = _extract_zip(root)
    try:
        bundle = _load_directory(_bundle_root(extracted), path, verify, trust, ignore_signature)
    except BaseException:
        shutil.rmtree(extracted, ignore_errors=True)
        raise
    # Engines hold their Bundle; a long-running process must not leave one copy per load on disk.
    weakref.finalize(bundle, shutil.rmtree, extracted, True)
    return bundle


def _load_directory(root: Path, path: str | Path, verify: bool, trust: TrustPolicy | None,
                    ignore_signature: bool) -> Bundle:
    if not root.exists():
        raise BundleError(f"bundle not found: {path}")
    if root.is_file():
        raise BundleError(f"{path} is a file but not a zip archive; expected a bundle folder with {MANIFEST} "
                          "or a .zip of one")
    if not root.is_dir():
        raise BundleError(f"{path} is not a bundle directory or .zip; expected a folder with {MANIFEST}")
    manifest_path = root / MANIFEST
    if manifest_path.is_symlink() and not manifest_path.resolve().is_relative_to(root.resolve()):
        raise BundleError(f"{manifest_path} is a symlink to {manifest_path.resolve()}, outside the bundle directory")
    if not manifest_path.is_file():
        raise BundleError(f"{path} has no {MANIFEST}; is it a bundle written by 'edge-thyroid export'?")
    if manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{manifest_path} is {manifest_path.stat().st_size} bytes; a manifest is at most {MAX_MANIFEST_BYTES}")
    # Read once: the signature is checked on exactly the bytes that are parsed.
    manifest_bytes = manifest_path.read_bytes()
    signature = (SignatureStatus(hashlib.sha256(manifest_bytes).hexdigest()) if ignore_signature
                 else check_signature(root, manifest_bytes, trust))
    try:
        data = json.loads(manifest_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{manifest_path} is not valid JSON ({exc})") from None
    except RecursionError:
        raise BundleError(f"{manifest_path} is nested too deeply to be a manifest") from None
    manifest = Manifest.from_dict(data, str(manifest_path))
    # Every backbone file, a branched bundle's included, must be hashed, so the signature covers it.
    needed = {manifest.head_file, *(name for entry in manifest.models.values() for name in entry.files),
              *filter(None, [manifest.familiarity.get("file")])}
    unlisted = sorted(needed - set(manifest.files))
    if unlisted:
        raise BundleError(f"{manifest_path}: {unlisted} are used but have no sha256 in 'files'")
    if verify:
        verify_files(root, manifest.files)
    return Bundle(root, manifest, signature)


def verify_files(root: Path, files: Mapping[str, str]) -> None:
    resolved_root = root.resolve()
    for name, expected in files.items():
        file_path = root / name
        try:
            if not file_path.resolve().is_relative_to(resolved_root):
                raise BundleError(f"bundle file {name!r} resolves outside the bundle directory {root}")
            if not file_path.is_file():
                raise BundleError(f"bundle file {name!r} is missing from {root}")
            actual = sha256_file(file_path)
        except OSError as exc:  # e.g. a name too long, a permission denied, an I/O error
            raise BundleError(f"bundle file {name[:80]!r} cannot be read ({exc.strerror or exc})") from None
        if actual != expected:
            raise BundleError(f"bundle file {name!r} has sha256 {actual[:16]}..., manifest expects {str(expected)[:16]}...; "
                              "the file was modified or corrupted")


def _extract_zip(path: Path) -> Path:
    target = Path(tempfile.mkdtemp(prefix="edge_thyroid_bundle_"))
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            for member in members:
                file_name(member.filename, f"zip member of {path.name}")
            total = sum(member.file_size for member in members)
            if total > MAX_ZIP_BYTES:
                raise BundleError(f"{path} unpacks to {total} bytes; a bundle .zip is at most {MAX_ZIP_BYTES}")
            archive.extractall(target)
    except BundleError:
        shutil.rmtree(target, ignore_errors=True)
        raise
    except Exception as exc:  # zipfile, zlib, bz2 and lzma raise their own types on damaged archives
        shutil.rmtree(target, ignore_errors=True)
        raise BundleError(f"{path} is a damaged .zip ({type(exc).__name__}: {str(exc)[:120]})") from None
    return target


def _bundle_root(extracted: Path) -> Path:
    entries = list(extracted.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else extracted


@contextmanager
def bundle_writer(destination: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory to fill; on success it is renamed to ``destination``.

    On any exception the temporary directory is removed: a half-written bundle never appears.
    """
    destination = Path(destination)
    if destination.exists() and not overwrite:
        raise BundleError(f"{destination} already exists; pass --force to replace it")
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent))
    try:
        yield staging
        if destination.exists():
            old = destination.with_name(f".{destination.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            destination.rename(old)
            staging.rename(destination)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_manifest(root: Path, manifest: Manifest) -> None:
    """Hash every file under ``root`` (except the manifest) into ``manifest.files`` and write it."""
    manifest.files = {
        str(p.relative_to(root).as_posix()): sha256_file(p)
        for p in sorted(root.rglob("*")) if p.is_file() and p.name not in (MANIFEST, SIGNATURE)
    }
    text = json.dumps(manifest.to_dict(), indent=2, default=_json_default) + "\n"
    with open(root / MANIFEST, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _json_default(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
