"""DICOM out: a Comprehensive Structured Report of one classification, written with highdicom.

The report holds the decision, p(malignant), the threshold, the model's identity (name, version,
manifest sha256, signer) and the pane ROI as a spatial coordinate on the image it was read from.
For a DICOM input that image is the source instance (and frame): the report joins the source's
study, and its evidence lists the source's study/series/instance. Any other input is first written
as a Secondary Capture (a new study), which the report then references.

Patient data stays inside the DICOM files: nothing here prints or logs an attribute of a dataset,
and the CLI reports only file names.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import InputError, MissingDependencyError

# Concepts without a standard code are in the project's private coding scheme (PS3.16 allows "99" local
# schemes); the standard ones are DCM (PS3.16) and SCT (SNOMED CT) codes.
SCHEME = "99EDGETHY"
MANUFACTURER = "edge-thyroid"


@dataclass(frozen=True)
class Finding:
    """One classification to report (the last frame of a stream, or one still image)."""

    decision: str                         # "malignant", "benign" or "abstain"
    p: float | None                       # p(malignant) of the frame; None when it abstained before the model
    p_smoothed: float | None
    threshold: float
    roi: tuple[int, int, int, int]        # x, y, w, h in pixels of the referenced image
    modality: str = "bmode"
    reason: str | None = None             # why it abstained
    frame_number: int | None = None       # 1-based frame of a multi-frame source
    prevalence: float | None = None       # the share of malignant nodules p and threshold are read at (None: the model's own)


@dataclass(frozen=True)
class ModelIdentity:
    name: str                  # backbone, e.g. resnet50
    version: str               # model key + precision, e.g. int8
    manifest_sha256: str
    signer: str                # "unsigned" or the signer and whether it was verified
    # What the model's "malignant" was in training (manifest metrics.label_source), e.g. TI-RADS 4a-5 rather
    # than pathology: a reader of the report must know what the probability is a probability of.
    label_source: str | None = None

    @classmethod
    def of(cls, engine: Any) -> "ModelIdentity":
        bundle = engine.bundle
        status = bundle.signature
        label_source = bundle.manifest.metrics.get("label_source")
        return cls(bundle.manifest.backbone, f"{engine.model_key} (edge-thyroid {__version__})",
                   status.manifest_sha256 if status else "unknown", status.describe() if status else "unknown",
                   str(label_source) if label_source else None)


def _hd() -> Any:
    try:
        import highdicom
    except ImportError:
        raise MissingDependencyError("highdicom", "dicom", "DICOM SR output") from None
    return highdicom


def _concept(value: str, meaning: str, scheme: str = SCHEME) -> Any:
    return _hd().sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


DECISIONS = {
    "malignant": ("86049000", "SCT", "Malignant neoplasm, primary"),
    "benign": ("3898006", "SCT", "Neoplasm, benign"),
    "abstain": ("abstain", SCHEME, "No decision: the classifier abstained"),
}


def secondary_capture(frame_bgr: np.ndarray, description: str) -> Any:
    """The classified image as a Secondary Capture in a new study (for inputs that are not DICOM).

    Written with pydicom: highdicom's SCImage wants a patient orientation, which a screen has not.
    Patient and study attributes are present and empty (Type 2): an image file names no patient.
    """
    import datetime

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    rgb = np.ascontiguousarray(frame_bgr[..., ::-1] if frame_bgr.ndim == 3 else np.repeat(frame_bgr[..., None], 3, -1))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    for keyword in (*PATIENT_AND_STUDY, "PatientOrientation", "Laterality"):
        setattr(ds, keyword, "")
    now = datetime.datetime.now()
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.ConversionType, ds.Manufacturer = "OT", "WSD", MANUFACTURER
    ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = 1, 1, description[:64]
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = rgb.tobytes()
    return ds


# Type 2 attributes of the Patient and General Study modules: present, possibly empty.
PATIENT_AND_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                     "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _as_evidence(source: Any) -> Any:
    """The source's header for highdicom, with absent Type 2 attributes present and empty (real files
    omit them; highdicom copies them into the report). The source itself is not changed."""
    from pydicom.dataset import Dataset

    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID") if k not in source]
    if missing:
        raise InputError(f"the DICOM source lacks {', '.join(missing)}; an SR can only reference a complete instance")
    header = Dataset()
    for tag in source.keys():
        if tag < 0x7FE00000:  # everything but the pixel data (never read for this)
            header.add(source[tag])
    for keyword in PATIENT_AND_STUDY:
        if keyword not in header or not _conformant(keyword, header[keyword].value):
            setattr(header, keyword, "")
    return header


_DICOM_FORM = {"StudyDate": r"\d{8}", "PatientBirthDate": r"\d{8}", "StudyTime": r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?"}


def _conformant(keyword: str, value: Any) -> bool:
    """Dates and times in DICOM form; legacy ACR-NEMA values ('14:04:38', '1997.04.24') are not, and
    would make the report invalid."""
    import re

    pattern = _DICOM_FORM.get(keyword)
    return pattern is None or value in (None, "") or re.fullmatch(pattern, str(value).strip()) is not None


def structured_report(finding: Finding, model: ModelIdentity, image: Any) -> Any:
    """A Comprehensive SR about ``finding`` on ``image`` (the source dataset or a Secondary Capture)."""
    hd = _hd()
    if finding.decision not in DECISIONS:
        raise InputError(f"decision {finding.decision!r} cannot be reported; expected one of {sorted(DECISIONS)}")
    rel = hd.sr.RelationshipTypeValues
    unit = _concept("1", "no units", "UCUM")
    items = [hd.sr.CodeContentItem(name=hd.sr.CodedConcept("121071", "DCM", "Finding"),
                                   value=hd.sr.CodedConcept(*DECISIONS[finding.decision]), relationship_type=rel.CONTAINS)]
    for value, code, meaning in ((finding.p, "p_malignant", "Probability of malignancy"),
                                 (finding.p_smoothed, "p_malignant_smoothed", "Probability of malignancy, smoothed over time"),
                                 (finding.threshold, "threshold", "Decision threshold on the probability of malignancy")):
        if value is not None:
            items.append(hd.sr.NumContentItem(name=_concept(code, meaning), value=float(value), unit=unit,
                                              relationship_type=rel.CONTAINS))
    if finding.prevalence is not None:
        items.append(hd.sr.NumContentItem(name=_concept("prevalence", "Share of malignant nodules the probability is read at"),
                                          value=float(finding.prevalence), unit=unit, relationship_type=rel.CONTAINS))
    if finding.reason:
        items.append(hd.sr.TextContentItem(name=_concept("abstain_reason", "Reason for abstaining"),
                                           value=finding.reason[:1024], relationship_type=rel.CONTAINS))
    for code, meaning, value in (("111001", "Algorithm Name", f"edge-thyroid {model.name}"),
                                 ("111003", "Algorithm Version", model.version),
                                 ("111002", "Algorithm Parameters",
                                  f"manifest sha256 {model.manifest_sha256}; signer {model.signer}")):
        items.append(hd.sr.TextContentItem(name=hd.sr.CodedConcept(code, "DCM", meaning), value=value[:1024],
                                           relationship_type=rel.CONTAINS))
    if model.label_source:
        items.append(hd.sr.TextContentItem(name=_concept("training_labels", "Reference standard of the training labels"),
                                           value=model.label_source[:1024], relationship_type=rel.CONTAINS))
    region = hd.sr.ScoordContentItem(name=hd.sr.CodedConcept("111030", "DCM", "Image Region"),
                                     graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                                     graphic_data=_rectangle(finding.roi), relationship_type=rel.CONTAINS)
    region.ContentSequence = [hd.sr.ImageContentItem(
        name=hd.sr.CodedConcept("121112", "DCM", "Source of Measurement"),
        referenced_sop_class_uid=image.SOPClassUID, referenced_sop_instance_uid=image.SOPInstanceUID,
        referenced_frame_numbers=finding.frame_number, relationship_type=rel.SELECTED_FROM)]
    items.append(region)
    items.append(hd.sr.TextContentItem(name=_concept("pane", "Pane modality"), value=finding.modality,
                                       relationship_type=rel.CONTAINS))
    root = hd.sr.ContainerContentItem(name=_concept("thyroid_ai_report", "Thyroid nodule classification by edge-thyroid"))
    root.ContentSequence = items
    return hd.sr.ComprehensiveSR(
        evidence=[_as_evidence(image)], content=root, series_instance_uid=hd.UID(), series_number=900,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=MANUFACTURER, is_complete=True,
        series_description="edge-thyroid classification")


def _rectangle(roi: tuple[int, int, int, int]) -> np.ndarray:
    """The ROI's outline as a closed polyline of pixel corners (column, row), as SCOORD expects."""
    x, y, w, h = roi
    return np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]], dtype=np.float32)


def write_report(path: str | Path, finding: Finding, model: ModelIdentity, *, source: Any | None = None,
                 frame_bgr: np.ndarray | None = None) -> list[Path]:
    """Write the SR to ``path`` (and, without a DICOM ``source``, the Secondary Capture it references
    next to it as ``<stem>.sc.dcm``). Returns the files written."""
    path = Path(path)
    written = []
    if source is not None and int(source.get("NumberOfFrames", 1) or 1) == 1:
        finding = replace(finding, frame_number=None)  # a frame number only refers into a multi-frame image
    if source is None:
        if frame_bgr is None:
            raise InputError("a DICOM SR needs the image it refers to: a DICOM source or the classified frame")
        source = secondary_capture(frame_bgr, "edge-thyroid classified image")
        sc_path = path.with_name(f"{path.name.removesuffix('.dcm').removesuffix('.sr')}.sc.dcm")
        _save(source, sc_path)
        written.append(sc_path)
    with _quiet():
        report = structured_report(finding, model, source)
    _save(report, path)
    written.append(path)
    return written


@contextmanager
def _quiet() -> Iterator[None]:
    """highdicom and pydicom warn with attribute values in the text (e.g. an unusual patient name):
    such warnings would put patient data on stderr and into service logs, so none are let out."""
    loggers = [logging.getLogger(name) for name in ("highdicom", "pydicom")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def _save(dataset: Any, path: Path) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        dataset.save_as(staging, enforce_file_format=True)
        staging.replace(path)
    except OSError as exc:
        with suppress(OSError):
            staging.unlink(missing_ok=True)
        raise InputError(f"cannot write DICOM file {path}: {exc.strerror or exc}") from None


def stream_finding(result: Any, rows: int, columns: int, frames: int) -> Finding:
    """The report of a stream's last frame (a pipeline StreamResult) from a ``frames``-frame DICOM
    source of ``columns`` x ``rows`` pixels: its decision and the B-mode pane (else the first pane,
    else the whole image)."""
    pane = next((p for p in result.panes if p.modality == "bmode"), result.panes[0] if result.panes else None)
    reason = None
    if result.reason is not None:
        reason = result.reason.value + (f": {result.detail}" if result.detail else "")
    return Finding(result.decision.value, result.p, result.p_smoothed, result.threshold,
                   pane.roi if pane else (0, 0, columns, rows), pane.modality if pane else "bmode", reason,
                   frame_number=result.frame % frames + 1, prevalence=result.prevalence)
