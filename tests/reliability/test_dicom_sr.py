"""DICOM SR out: written by stream (DICOM source) and classify (any image), read back with pydicom
with every field intact, valid to dciodvfy (dicom3tools), and no patient data on stdout, stderr or in
the JSONL."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import warnings
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from edge_thyroid.bundle import MANIFEST
from edge_thyroid.dicom_sr import Finding, ModelIdentity, write_report

from ..conftest import ultrasound_like
from .dicom_files import set_tags, write_dicom
from .helpers import REPO, assert_refused, parse_jsonl, run_cli

DEMO_BUNDLE = REPO / "edge_thyroid" / "data" / "demo_bundle"
DEMO_SHA = hashlib.sha256((DEMO_BUNDLE / MANIFEST).read_bytes()).hexdigest()
DEMO_THRESHOLD = json.loads((DEMO_BUNDLE / MANIFEST).read_text())["threshold"]["value"]


def content(sr: pydicom.Dataset) -> dict[str, pydicom.Dataset]:
    """The report's items by concept meaning."""
    return {item.ConceptNameCodeSequence[0].CodeMeaning: item for item in sr.ContentSequence}


def rectangle(roi) -> list[float]:
    x, y, w, h = roi
    return [float(v) for v in (x, y, x + w, y, x + w, y + h, x, y + h, x, y)]


def dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


needs_dciodvfy = pytest.mark.skipif(shutil.which("dciodvfy") is None,
                                    reason="dciodvfy not installed (apt-get install dicom3tools)")


def test_stream_report_of_a_real_cine_reads_back_field_by_field(tmp_path):
    source = get_testdata_file("examples_ybr_color.dcm", download=False)
    report, records = tmp_path / "cine.sr.dcm", tmp_path / "out.jsonl"
    result = run_cli("stream", DEMO_BUNDLE, "--source", source, "--as-fast-as-possible", "--quiet",
                     "--json-out", records, "--dicom-sr", report, "--whole-pane")
    assert result.returncode == 0, result.stderr[-2000:]
    last = [r for r in parse_jsonl(records) if r.get("type") == "frame"][-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cine = pydicom.dcmread(source, stop_before_pixels=True)
        sr = pydicom.dcmread(report)
    assert sr.SOPClassUID == pydicom.uid.ComprehensiveSRStorage
    assert (sr.StudyInstanceUID, sr.PatientID) == (cine.StudyInstanceUID, cine.PatientID)
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == cine.StudyInstanceUID
    series = evidence.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == cine.SeriesInstanceUID
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == cine.SOPInstanceUID

    items = content(sr)
    expected_code = {"malignant": "86049000", "benign": "3898006", "abstain": "abstain"}[last["decision"]]
    assert items["Finding"].ConceptCodeSequence[0].CodeValue == expected_code
    p = float(items["Probability of malignancy"].MeasuredValueSequence[0].NumericValue)
    assert p == pytest.approx(last["p"], abs=1e-6)
    threshold = float(items["Decision threshold on the probability of malignancy"].MeasuredValueSequence[0].NumericValue)
    assert threshold == pytest.approx(DEMO_THRESHOLD, abs=1e-6)
    assert "resnet50" in items["Algorithm Name"].TextValue
    assert f"manifest sha256 {DEMO_SHA}" in items["Algorithm Parameters"].TextValue
    assert "int8" in items["Algorithm Version"].TextValue
    # what "malignant" meant in training travels with the probability
    assert items["Reference standard of the training labels"].TextValue == \
        "TI-RADS category (2-3 benign, 4a-5 malignant), not pathology"

    region = items["Image Region"]
    bmode = next(p for p in last["panes"] if p["modality"] == "bmode")
    assert [float(v) for v in region.GraphicData] == rectangle(bmode["roi"])
    image = region.ContentSequence[0]
    assert image.RelationshipType == "SELECTED FROM"
    reference = image.ReferencedSOPSequence[0]
    assert reference.ReferencedSOPInstanceUID == cine.SOPInstanceUID
    assert int(reference.ReferencedFrameNumber) == last["frame"] % int(cine.NumberOfFrames) + 1
    assert f"DICOM SR written: {report}" in result.stderr


def test_classify_report_references_a_secondary_capture_of_the_image(tmp_path):
    picture = np.dstack([ultrasound_like(180, 220, seed=5), ultrasound_like(180, 220, seed=6),
                         ultrasound_like(180, 220, seed=7)])
    image = tmp_path / "nodule.png"
    cv2.imwrite(str(image), picture)
    result = run_cli("classify", DEMO_BUNDLE, image, "--roi", "10,20,150,140", "--json", "--dicom-sr", tmp_path / "sr")
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(result.stdout)
    sr = pydicom.dcmread(record["dicom_sr"])
    sc = pydicom.dcmread(tmp_path / "sr" / "nodule.sc.dcm")
    assert np.array_equal(sc.pixel_array, picture[..., ::-1])  # RGB of the BGR image, pixel for pixel
    assert sr.StudyInstanceUID == sc.StudyInstanceUID and sr.PatientName == "" and sc.PatientID == ""
    items = content(sr)
    assert float(items["Probability of malignancy"].MeasuredValueSequence[0].NumericValue) == \
        pytest.approx(record["p_malignant"], abs=1e-6)
    assert [float(v) for v in items["Image Region"].GraphicData] == rectangle((10, 20, 150, 140))
    reference = items["Image Region"].ContentSequence[0].ReferencedSOPSequence[0]
    assert reference.ReferencedSOPInstanceUID == sc.SOPInstanceUID and "ReferencedFrameNumber" not in reference


def test_an_abstention_is_reported_with_its_reason_and_no_probability(tmp_path):
    model = ModelIdentity("resnet50", "int8", "ab" * 32, "unsigned")
    finding = Finding("abstain", None, None, 0.5, (0, 0, 64, 64), reason="blank: the B-mode pane is blank")
    path = write_report(tmp_path / "a.sr.dcm", finding, model, frame_bgr=np.zeros((64, 64, 3), np.uint8))[-1]
    items = content(pydicom.dcmread(path))
    assert items["Finding"].ConceptCodeSequence[0].CodeValue == "abstain"
    assert items["Reason for abstaining"].TextValue == "blank: the B-mode pane is blank"
    assert "Probability of malignancy" not in items
    assert "Reference standard of the training labels" not in items   # an identity without one: no item


def test_stream_refuses_a_report_without_a_dicom_source(tmp_path):
    result = run_cli("stream", DEMO_BUNDLE, "--source", "synthetic", "--max-frames", "2", "--dicom-sr", tmp_path / "x.dcm")
    assert result.returncode == 2 and "needs a DICOM source" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.dcm").exists()


SECRETS = {"PatientName": "SECRETNAME^PATIENT", "PatientID": "PID-4711-SECRET", "PatientBirthDate": "1960.01.01",
           "AccessionNumber": "ACC-SECRET-99"}


def test_patient_data_goes_into_the_report_and_nowhere_else(tmp_path):
    cine = write_dicom(tmp_path / "patient.dcm", set_tags(**SECRETS, StudyInstanceUID=pydicom.uid.generate_uid(),
                                                          SeriesInstanceUID=pydicom.uid.generate_uid()))
    report, records = tmp_path / "patient.sr.dcm", tmp_path / "out.jsonl"
    result = run_cli("stream", DEMO_BUNDLE, "--source", cine, "--as-fast-as-possible", "--json-out", records,
                     "--dicom-sr", report)
    assert result.returncode == 0, result.stderr[-2000:]
    logs = result.stdout + result.stderr + records.read_text()
    for value in SECRETS.values():
        assert value not in logs and value.split("^")[0] not in logs
    sr = pydicom.dcmread(report)
    assert str(sr.PatientName) == SECRETS["PatientName"] and sr.PatientID == SECRETS["PatientID"]
    assert sr.PatientBirthDate == ""  # a legacy date is not copied into a conformant report


def test_an_unwritable_report_path_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run_cli("stream", DEMO_BUNDLE, "--source", get_testdata_file("examples_rgb_color.dcm", download=False),
                     "--as-fast-as-possible", "--quiet", "--dicom-sr", blocker / "sub" / "r.dcm")
    assert_refused(result, "r.dcm")


@needs_dciodvfy
def test_reports_and_secondary_captures_pass_dciodvfy(tmp_path):
    model = ModelIdentity("resnet50", "int8", "ab" * 32, "unsigned")
    written = []
    for name in ("examples_ybr_color.dcm", "examples_palette.dcm", "ExplVR_BigEnd.dcm"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            source = pydicom.dcmread(get_testdata_file(name, download=False), defer_size=1024)
        finding = Finding("benign", 0.2, 0.25, 0.5, (10, 10, 50, 50), frame_number=3)
        written += write_report(tmp_path / f"{name}.sr.dcm", finding, model, source=source)
    written += write_report(tmp_path / "png.sr.dcm", Finding("malignant", 0.9, None, 0.5, (1, 2, 40, 40)), model,
                            frame_bgr=np.zeros((64, 80, 3), np.uint8))
    assert len(written) == 5
    for path in written:
        assert dciodvfy_errors(path) == [], path


def test_a_dicom_source_streamed_to_a_jsonl_gets_its_report_beside_it_by_default(tmp_path):
    """Issue 16: for a DICOM input the report is written without being asked (beside the JSONL, never beside
    the input); --no-dicom-sr leaves it out; a non-DICOM source never gets one."""
    source = get_testdata_file("examples_ybr_color.dcm", download=False)
    records = tmp_path / "out.jsonl"
    result = run_cli("stream", DEMO_BUNDLE, "--source", source, "--as-fast-as-possible", "--quiet",
                     "--json-out", records, "--whole-pane", "--max-frames", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    report = tmp_path / "out.sr.dcm"
    assert report.is_file() and "DICOM SR written" in result.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert pydicom.dcmread(report).SOPClassUID == pydicom.uid.ComprehensiveSRStorage
    frames = [r for r in parse_jsonl(records) if r.get("type") == "frame"]
    assert frames and all(r["media_ts"] is not None for r in frames)   # the cine's own timing
    opted_out = tmp_path / "opted"
    opted_out.mkdir()
    result = run_cli("stream", DEMO_BUNDLE, "--source", source, "--as-fast-as-possible", "--quiet", "--json-out",
                     opted_out / "out.jsonl", "--whole-pane", "--max-frames", "3", "--no-dicom-sr")
    assert result.returncode == 0 and not (opted_out / "out.sr.dcm").exists()
    result = run_cli("stream", DEMO_BUNDLE, "--source", "synthetic?frames=3", "--as-fast-as-possible", "--quiet",
                     "--json-out", tmp_path / "synthetic.jsonl", "--whole-pane")
    assert result.returncode == 0 and not (tmp_path / "synthetic.sr.dcm").exists()


def test_a_probability_read_at_a_site_prevalence_says_which(tmp_path):
    model = ModelIdentity("resnet50", "int8", "ab" * 32, "unsigned")
    frame = np.zeros((64, 64, 3), np.uint8)
    site = write_report(tmp_path / "a.sr.dcm", Finding("benign", 0.12, 0.11, 0.139, (0, 0, 64, 64), prevalence=0.1),
                        model, frame_bgr=frame)[-1]
    items = content(pydicom.dcmread(site))
    assert float(items["Share of malignant nodules the probability is read at"].MeasuredValueSequence[0].NumericValue) == 0.1
    assert float(items["Probability of malignancy"].MeasuredValueSequence[0].NumericValue) == pytest.approx(0.12)
    own = write_report(tmp_path / "b.sr.dcm", Finding("benign", 0.5, None, 0.593, (0, 0, 64, 64)), model,
                       frame_bgr=frame)[-1]
    assert "Share of malignant nodules the probability is read at" not in content(pydicom.dcmread(own))
