"""The accuracy gate: its arithmetic on known scores, the verify command's exit codes on a good INT8
bundle and on deliberately broken ones, and the gate run by export."""

import copy
import json
import shutil

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edge_thyroid.bundle import Precision, load_bundle, write_manifest
from edge_thyroid.cli import cli, main
from edge_thyroid.engine import Engine
from edge_thyroid.errors import InputError
from edge_thyroid.gates import recorded_gates
from edge_thyroid.head import FusionHead
from edge_thyroid.metrics import operating_point, roc_auc, youden_threshold
from edge_thyroid.verification import GateBudget, GateFailedError, Split, compare_scores, labelled_split

from .conftest import needs_torch, openvino_runs_bf16, ultrasound_like

SIZE = 64
IMAGES = 24


# --- the arithmetic -----------------------------------------------------------------------------

def test_identical_scores_pass_with_zero_drift():
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 20)
    scores = np.clip(0.5 + 0.3 * (labels - 0.5) + rng.normal(0, 0.2, labels.size), 0, 1)
    report = compare_scores(labels, scores, scores, reference_threshold=0.5)
    assert report.passed and report.failures == []
    assert report.auc_drop == 0.0 and report.agreement == 1.0 and report.delong_p == 1.0
    assert report.abs_dp == {"p50": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
    assert report.reference["auc"] == pytest.approx(roc_auc(labels, scores))
    assert report.candidate["refit"]["threshold"] == youden_threshold(labels, scores)
    assert report.lines()[-1] == "PASSED"


def test_known_scores_give_known_figures_and_fail_both_budgets():
    labels = [0, 0, 0, 1, 1, 1]
    reference = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    candidate = np.array([0.1, 0.2, 0.6, 0.4, 0.8, 0.9])
    report = compare_scores(labels, reference, candidate, reference_threshold=0.5)
    assert report.reference["auc"] == 1.0
    assert report.candidate["auc"] == pytest.approx(8 / 9)  # one benign/malignant pair swapped
    assert report.auc_drop == pytest.approx(1 / 9)
    assert report.agreement == pytest.approx(4 / 6)
    assert report.abs_dp["max"] == pytest.approx(0.3) and report.abs_dp["p50"] == 0.0
    at = report.candidate["at_threshold"]
    assert (at["sensitivity"], at["specificity"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert at == operating_point(labels, candidate, 0.5).to_dict()
    assert not report.passed and len(report.failures) == 2
    assert "AUC dropped by 0.1111" in report.failures[0] and "agree on 0.6667" in report.failures[1]
    assert report.lines()[-1].startswith("FAILED")
    # The candidate decides at its own bundle threshold; the re-fitted one is reported beside it.
    shifted = compare_scores(labels, reference, candidate, reference_threshold=0.5, candidate_threshold=0.65)
    assert shifted.agreement == pytest.approx(5 / 6)  # 0.6 is now benign, as in the reference
    assert shifted.candidate["at_threshold"]["threshold"] == 0.65
    generous = compare_scores(labels, reference, candidate, reference_threshold=0.5,
                              budget=GateBudget(max_auc_drop=0.2, min_agreement=0.6))
    assert generous.passed


@pytest.mark.parametrize("drop, agreement", [(-0.1, 0.98), (0.01, 1.5)])
def test_budget_must_be_a_fraction(drop, agreement):
    with pytest.raises(InputError, match="outside \\[0, 1\\]"):
        GateBudget(drop, agreement)


def test_labelled_split_needs_both_classes(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("image,label,case_id\n" + "".join(f"{i}.png,benign,{i}\n" for i in range(8)))
    with pytest.raises(InputError, match="needs benign and malignant"):
        labelled_split(csv, Split.ALL)
    with pytest.raises(InputError, match="not found"):
        labelled_split(tmp_path / "absent.csv")


# --- bundles ------------------------------------------------------------------------------------

def make_data(folder):
    """Speckled (malignant) vs smoothed (benign) panes: a task an untrained backbone separates by a
    wide margin, so an honest INT8 model keeps every decision and a broken one cannot."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["image,label,case_id"]
    for i in range(IMAGES):
        label = i % 2
        image = ultrasound_like(100 + 5 * i, 140 + 3 * i, seed=100 + i)
        if not label:
            image = cv2.GaussianBlur(image, (0, 0), 6)
        cv2.imwrite(str(folder / f"{i:02d}.png"), image)
        rows.append(f"{i:02d}.png,{'malignant' if label else 'benign'},case{i}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder / "labels.csv"


def fit_head(model, csv):
    """A nearest-class-mean head on the FP32 pooled features (the backbone stays untrained); logits +-4."""
    import torch

    from edge_thyroid.dataset import read_samples
    from edge_thyroid.kernels.reference import PreprocessSpec, preprocess_reference

    samples = read_samples(csv)
    spec = PreprocessSpec(image_size=SIZE)
    pixels = np.concatenate([preprocess_reference(f, [(0, 0, f.shape[1], f.shape[0])], spec)
                             for f in (cv2.imread(str(s.image)) for s in samples)])
    with torch.no_grad():
        pooled = model.feature_maps(torch.from_numpy(pixels.astype(np.float32))).mean(dim=(2, 3)).double()
    labels = torch.tensor([s.label for s in samples])
    malignant, benign = pooled[labels == 1].mean(0), pooled[labels == 0].mean(0)
    direction = malignant - benign
    scale = 4.0 / float(direction @ (malignant - benign) / 2)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.weight[0, : model.channels] = (scale * direction).float()
        model.head.bias.fill_(float(-scale * direction @ (malignant + benign) / 2))
    return model


@pytest.fixture(scope="module")
def data_csv(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("gate_data"))


@pytest.fixture(scope="module")
def fitted_model(random_model, data_csv):
    return fit_head(copy.deepcopy(random_model), data_csv)


@pytest.fixture(scope="module")
def int8_bundle(fitted_model, data_csv, tmp_path_factory):
    """An INT8 bundle that kept its FP32 model, gated at export on the same labelled images."""
    from edge_thyroid.export.bundle_export import CalibrationRequest, GateRequest, export_bundle

    root = tmp_path_factory.mktemp("gate_bundles")
    return export_bundle(fitted_model, root / "int8", image_size=SIZE, precision=Precision.INT8,
                         calibration=CalibrationRequest(data_csv.parent, count=8),
                         gate=GateRequest(data_csv, split=Split.ALL), cache_dir=root / "cache")


def broken_copy(bundle, destination):
    """The same bundle with the head weights perturbed: a 'quantized' model that lost the plot."""
    shutil.copytree(bundle, destination)
    loaded = load_bundle(destination)
    head = FusionHead.load(destination / "head.npz", loaded.manifest.modalities)
    noise = np.random.default_rng(0).normal(0, 3 * np.abs(head.weight).max(), head.weight.shape)
    FusionHead(head.modalities, head.weight + noise, head.presence_bias, head.bias).save(destination / "head.npz")
    write_manifest(destination, loaded.manifest)
    return destination


def verify(*args):
    return CliRunner().invoke(cli, ["verify", *map(str, args)])


@needs_torch
def test_export_gate_records_both_thresholds_and_the_report(int8_bundle):
    manifest = load_bundle(int8_bundle).manifest
    gate = manifest.metrics["gate_int8"]
    assert gate["passed"] and gate["n"] == IMAGES and gate["reference"]["auc"] == 1.0
    assert recorded_gates(manifest.models["int8"].details)["onnxruntime"]["agreement"] == gate["agreement"] == 1.0
    refit = manifest.threshold.details["refit"]["int8"]
    assert refit["method"] == "youden" and refit["value"] == gate["candidate"]["refit"]["threshold"]
    assert manifest.threshold.value == 0.5  # the bundle keeps deciding at the reference threshold


@needs_torch
def test_verify_passes_int8_against_the_fp32_it_kept(int8_bundle, data_csv):
    result = verify(int8_bundle, "--data", data_csv, "--split", "all", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and report["n"] == IMAGES
    assert report["reference"]["model"].startswith("fp32") and report["candidate"]["model"].startswith("int8")
    assert report["agreement"] == 1.0 and report["auc_drop"] <= 0.01
    assert 0 < report["abs_dp"]["max"] <= 0.05  # INT8 moves p a little, never across the margin
    assert report["abs_dp"]["p50"] <= report["abs_dp"]["p99"] <= report["abs_dp"]["max"]
    text = verify(int8_bundle, "--data", data_csv, "--split", "all")
    assert text.exit_code == 0 and "PASSED" in text.stdout and "re-fitted" in text.stdout


@needs_torch
def test_verify_fails_a_broken_bundle_with_exit_1(int8_bundle, data_csv, tmp_path):
    broken = broken_copy(int8_bundle, tmp_path / "broken")
    result = verify(broken, "--reference", int8_bundle, "--data", data_csv, "--split", "all", "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert not report["passed"] and report["agreement"] < 0.98
    assert any("agree on" in failure for failure in report["failures"])
    with pytest.raises(SystemExit) as exc:
        main(["verify", str(broken), "--reference", str(int8_bundle), "--data", str(data_csv), "--split", "all"])
    assert exc.value.code == 1


@pytest.mark.parametrize("extra, message", [
    (["--model", "fp32"], "are the same model"),
    (["--model", "fp16"], "has no 'fp16' model"),
    (["--providers", "NoSuchExecutionProvider"], "are not available"),
])
@needs_torch
def test_verify_usage_errors_exit_2(int8_bundle, data_csv, extra, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["verify", str(int8_bundle), "--data", str(data_csv), "--split", "all", *extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@needs_torch
def test_export_gate_failure_writes_nothing(fitted_model, data_csv, tmp_path, capsys):
    """An activation outlier (one channel scaled up 1000x and scaled back in the next layers: the FP32
    function is unchanged) wrecks per-tensor INT8 activations; the gate must stop the export."""
    import torch

    from edge_thyroid.export.checkpoint import CheckpointInfo, save_checkpoint

    model = copy.deepcopy(fitted_model)
    backbone, alpha = model.backbone, 1000.0
    with torch.no_grad():
        backbone.bn1.weight[5] *= alpha
        backbone.bn1.bias[5] *= alpha
        backbone.layer1[0].conv1.weight[:, 5] /= alpha
        backbone.layer1[0].downsample[0].weight[:, 5] /= alpha
    checkpoint = tmp_path / "outlier.pt"
    save_checkpoint(checkpoint, model, CheckpointInfo(image_size=SIZE))
    out = tmp_path / "bundle"
    with pytest.raises(SystemExit) as exc:
        main(["export", str(checkpoint), "-o", str(out), "--precision", "int8", "--calib", str(data_csv.parent),
              "--calib-count", "8", "--verify-data", str(data_csv), "--cache-dir", str(tmp_path / "cache")])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "accuracy gate failed" in err and "was not written" in err
    assert not out.exists() and not list(tmp_path.glob(".bundle.*"))


@needs_torch
def test_verify_records_the_gate_of_the_configuration_it_ran(int8_bundle, data_csv, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(int8_bundle, bundle)
    result = verify(bundle, "--data", data_csv, "--split", "all", "--backend", "openvino", "--execution-precision", "f32")
    assert result.exit_code == 0, result.output
    assert "recorded the openvino/f32 gate of model int8 (passed)" in result.stderr
    gates = recorded_gates(load_bundle(bundle).manifest.models["int8"].details)  # the files still verify
    assert gates["openvino/f32"]["passed"] is True and gates["openvino/f32"]["n"] == IMAGES
    assert gates["openvino/f32"]["budget"] == {"max_auc_drop": 0.01, "min_agreement": 0.98}
    assert gates["onnxruntime"] == recorded_gates(load_bundle(int8_bundle).manifest.models["int8"].details)["onnxruntime"]
    before = (bundle / "manifest.json").read_text()
    result = verify(bundle, "--data", data_csv, "--split", "all", "--backend", "openvino", "--execution-precision",
                    "bf16", "--no-record")
    if openvino_runs_bf16():
        assert result.exit_code == 0, result.output
    else:  # a CPU without BF16 would measure f32 and call it bf16: refused (test_backend_openvino.py)
        assert result.exit_code != 0 and "not in bf16 as --execution-precision asked" in str(result.exception)
    assert (bundle / "manifest.json").read_text() == before


@needs_torch
def test_verify_files_no_bf16_gate_from_a_cpu_that_would_run_f32(int8_bundle, data_csv, tmp_path, monkeypatch, capsys):
    """Before the backend refused, `verify --execution-precision bf16` on a CPU without BF16 recorded an
    openvino/bf16 gate measured in f32; `--backend auto` on a BF16 workstation would then have run bf16
    numbers no gate had seen. The CPU's answer is stood in for, so this holds on every CPU."""
    pytest.importorskip("openvino")
    from edge_thyroid.backends import openvino as ov_backend

    monkeypatch.setattr(ov_backend, "executed_precision", lambda compiled: "f32")
    bundle = tmp_path / "bundle"
    shutil.copytree(int8_bundle, bundle)
    before = (bundle / "manifest.json").read_text()
    with pytest.raises(SystemExit) as exited:
        main(["verify", str(bundle), "--data", str(data_csv), "--split", "all", "--backend", "openvino",
              "--execution-precision", "bf16"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "runs this model's float parts in f32, not in bf16" in err
    assert "recorded" not in err and "Traceback" not in err
    assert (bundle / "manifest.json").read_text() == before


@needs_torch
def test_verify_records_a_failed_gate_and_auto_then_skips_it(int8_bundle, data_csv, tmp_path):
    from edge_thyroid.autoselect import select_backend

    broken = broken_copy(int8_bundle, tmp_path / "broken")
    result = verify(broken, "--reference", int8_bundle, "--data", data_csv, "--split", "all")
    assert result.exit_code == 1 and "recorded the onnxruntime gate of model int8 (FAILED)" in result.stderr
    assert recorded_gates(load_bundle(broken).manifest.models["int8"].details)["onnxruntime"]["passed"] is False
    choice = select_backend(load_bundle(broken), Engine, cache=False)
    assert choice.excluded["onnxruntime"] == "gate failed" and choice.how.startswith("ungated fallback")


@needs_torch
def test_verify_does_not_record_against_a_reference_that_is_not_fp32(int8_bundle, data_csv, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(int8_bundle, bundle)
    before = (bundle / "manifest.json").read_text()
    result = verify(bundle, "--data", data_csv, "--split", "all", "--reference-model", "int8", "--backend", "openvino")
    assert "gate not recorded: the reference model 'int8' is int8" in result.stderr
    assert (bundle / "manifest.json").read_text() == before


def test_gate_failed_error_carries_exit_code_1():
    report = compare_scores([0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8], [0.9, 0.1, 0.8, 0.2], reference_threshold=0.5)
    error = GateFailedError(report)
    assert error.exit_code == 1 and "accuracy gate failed" in str(error)
