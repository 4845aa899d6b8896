"""Bring your own model: small random-weight classifiers built here (the four torchvision architectures,
ONNX classifiers with and without a global-average-pooling tail) exported by the real CLI, classified
by the engine and compared with torch on identical pixels; wrong models refused in one line; the
INT8 export of an imported ResNet50 judged by the accuracy gate."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from edge_thyroid.bundle import Precision, load_bundle, sha256_file
from edge_thyroid.cli import cli, main
from edge_thyroid.engine import Engine
from edge_thyroid.errors import InputError
from edge_thyroid.frames import Pane
from edge_thyroid.kernels.reference import PreprocessSpec, preprocess_reference

from .conftest import REPO, needs_torch, screen_frame

try:
    from edge_thyroid.export.torchvision_import import FINAL_LAYER
except ImportError:  # torch absent: every test here is skipped by needs_torch
    FINAL_LAYER = {}

pytestmark = needs_torch

SIZE = 64
ROI = (20, 50, 600, 620)
PANE = Pane("bmode", ROI)
MAX_DP = 1e-4  # FP32 parity budget with torch on identical pixels


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return screen_frame(seed=11)


def export(*args) -> str:
    result = CliRunner().invoke(cli, ["export", *map(str, args)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def refused(args, capsys) -> str:
    """exit 2, one ``error:`` line, no traceback; returns that line."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err and "weights_only" not in err, err
    return err


def torch_probability(scores, malignant) -> float:
    """p(malignant) from a classifier's raw scores [1, K] as torch computes it."""
    import torch

    scores = scores.double()
    if scores.shape[1] == 1:
        return float(torch.sigmoid(scores[0, 0]))
    return float(torch.softmax(scores, dim=1)[0, list(malignant)].sum())


def rescale_final_layer(layer, scores) -> None:
    """Random weights saturate p at 0 or 1, where any export agrees with torch; scale the last layer so
    the scores are O(1) and the parity check has something to measure."""
    import torch

    with torch.no_grad():
        spread = float(scores.std()) if scores.numel() > 1 else float(scores.abs().max())
        factor = 1.5 / max(spread, 1e-6)
        layer.weight.mul_(factor)
        layer.bias.mul_(factor)


# --- torchvision --------------------------------------------------------------------------------

TORCHVISION_CASES = [
    # architecture, outputs, --malignant-index, how the file wraps the state_dict
    ("resnet50", 1, None, "data_parallel_in_state_dict"),
    ("densenet121", 4, "1,3", "model"),
    ("googlenet", 2, "0", "attribute_with_aux_heads"),
]


def build_torchvision(architecture: str, outputs: int, frame: np.ndarray, malignant):
    import torch
    import torchvision

    torch.manual_seed(0)
    if architecture == "googlenet":  # aux heads present in the file, as a training run saves them
        model = torchvision.models.googlenet(weights=None, num_classes=outputs, aux_logits=True, init_weights=False)
    else:
        model = getattr(torchvision.models, architecture)(weights=None, num_classes=outputs)
    model.eval()
    final = model.get_submodule(FINAL_LAYER[architecture])
    pixels = torch.from_numpy(preprocess_reference(frame, [ROI], PreprocessSpec(image_size=SIZE)).astype(np.float32))
    with torch.no_grad():
        rescale_final_layer(final, model(pixels))
        p = torch_probability(model(pixels), [int(i) for i in (malignant or "1").split(",")] if outputs > 1 else [0])
    return model, p


def save_state(model, wrap: str, path) -> None:
    import torch

    state = model.state_dict()
    if wrap == "data_parallel_in_state_dict":
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 7}, path)
    elif wrap == "model":
        torch.save({"model": state, "best_auc": 0.9}, path)
    elif wrap == "attribute_with_aux_heads":  # self.backbone = googlenet(aux_logits=True) in the user's module
        torch.save({f"backbone.{k}": v for k, v in state.items()}, path)
    else:
        torch.save(state, path)


@pytest.mark.parametrize("architecture, outputs, malignant, wrap", TORCHVISION_CASES,
                         ids=[case[0] for case in TORCHVISION_CASES])
def test_torchvision_classifier_exports_with_parity(architecture, outputs, malignant, wrap, frame, tmp_path, capsys):
    model, p_torch = build_torchvision(architecture, outputs, frame, malignant)
    assert 0.02 < p_torch < 0.98  # not saturated: the comparison below can fail
    weights = tmp_path / f"{architecture}.pth"
    save_state(model, wrap, weights)
    bundle = tmp_path / "bundle"
    extra = ["--malignant-index", malignant] if malignant else []
    out = export(weights, "-o", bundle, "--image-size", SIZE, "--intended-use", "test only", *extra)
    assert f"as {architecture}" in out
    with Engine(bundle) as engine:
        prediction = engine.classify(frame, [PANE])
    assert abs(prediction.probability - p_torch) <= MAX_DP, (prediction.probability, p_torch)

    card = load_bundle(bundle).manifest.model_card
    assert card["architecture"] == architecture and card["source"]["sha256"] == sha256_file(weights)
    assert card["outputs"]["count"] == outputs and card["intended_use"] == "test only"
    capsys.readouterr()
    assert main(["info", str(bundle)]) is None
    info = capsys.readouterr().out
    assert f"architecture {architecture}" in info and sha256_file(weights) in info
    assert f"manifest    sha256 {sha256_file(bundle / 'manifest.json')}" in info
    if outputs <= 2:
        # Exact: the CAM averages to the pane's logit term.
        assert card["cam"] == "exact"
        assert prediction.cam("bmode").mean() + engine.head.bias == pytest.approx(prediction.logit, rel=1e-6, abs=1e-6)  # float32 pooling
    else:
        assert card["cam"] == "gradient" and np.isfinite(prediction.cam("bmode")).all()


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 9, 14])
def test_vgg_pooling_as_matrices_is_torchs_adaptive_pooling(size):
    import torch

    from edge_thyroid.export.torchvision_import import adaptive_pool_matrix

    maps = torch.randn(2, 4, size, size, generator=torch.Generator().manual_seed(size))
    rows = adaptive_pool_matrix(size, 7)
    torch.testing.assert_close(rows @ maps @ rows.T, torch.nn.functional.adaptive_avg_pool2d(maps, 7), rtol=0, atol=1e-6)


def test_vgg16_is_exported_whole_without_cam_with_parity(frame):
    """VGG16's classifier is an MLP over a 7x7 grid: the whole network is the graph, its scores the
    "maps", and the head says there is no CAM. (Checked on the graph the bundle would hold: writing a
    528 MB bundle takes a minute on a loaded 2-core machine; the bundle path itself is the ONNX
    whole-model test below.)"""
    import onnxruntime
    import torch

    from edge_thyroid.export.torchvision_import import export_imported_onnx, import_torchvision
    from edge_thyroid.head import pool

    model, p_torch = build_torchvision("vgg16", 2, frame, None)
    assert 0.02 < p_torch < 0.98
    imported = import_torchvision(model.state_dict(), source="vgg16.pth", image_size=SIZE)
    assert imported.architecture == "vgg16" and imported.head.cam_mode == "none"
    graph = export_imported_onnx(imported, SIZE)
    session = onnxruntime.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    pixels = preprocess_reference(frame, [ROI, (0, 0, 300, 300)], PreprocessSpec(image_size=SIZE)).astype(np.float32)
    maps = session.run(None, {"pixels": pixels})[0]
    assert maps.shape == (2, 2, 1, 1)
    assert abs(imported.head.predict({"bmode": pool(maps[0])}).probability - p_torch) <= MAX_DP
    with torch.no_grad():
        np.testing.assert_allclose(maps[:, :, 0, 0], model(torch.from_numpy(pixels)).numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(InputError, match="no class activation map"):
        imported.head.cam("bmode", maps[0])


# --- ONNX ---------------------------------------------------------------------------------------

def small_cnn(outputs: int, gap_tail: bool):
    import torch
    from torch import nn

    class GapClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                                          nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
            self.fc = nn.Linear(16, outputs)

        def forward(self, x):
            return torch.softmax(self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)), 1)

    class FlattenClassifier(nn.Module):  # a linear layer over the whole grid: no exact CAM exists
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 4, 3, 4, 1), nn.ReLU())
            self.fc = nn.Linear(4 * (SIZE // 4) ** 2, outputs)

        def forward(self, x):
            return torch.sigmoid(self.fc(self.features(x).flatten(1)))

    torch.manual_seed(2)
    return (GapClassifier() if gap_tail else FlattenClassifier()).eval()


def onnx_bytes(model, opset: int, dynamic_batch: bool, metadata: dict | None = None) -> bytes:
    import onnx
    import torch

    buffer = io.BytesIO()
    torch.onnx.export(model, (torch.zeros(1, 3, SIZE, SIZE),), buffer, opset_version=opset, input_names=["image"],
                      output_names=["scores"], dynamic_axes={"image": {0: "n"}} if dynamic_batch else None, dynamo=False)
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in (metadata or {}).items():
        proto.metadata_props.add(key=key, value=value)
    return proto.SerializeToString()


def test_onnx_with_gap_tail_is_cut_there_with_exact_parity(tmp_path, frame):
    """3 classes ending in Softmax, opset 13 (converted), dynamic batch: cut at GAP -> Gemm."""
    import torch

    model = small_cnn(3, gap_tail=True)
    path = tmp_path / "gap.onnx"
    path.write_bytes(onnx_bytes(model, 13, True))
    export(path, "-o", tmp_path / "b", "--malignant-index", "2", "--image-size", SIZE)
    pixels = torch.from_numpy(preprocess_reference(frame, [ROI], PreprocessSpec(image_size=SIZE)).astype(np.float32))
    with torch.no_grad():
        p_torch = float(model(pixels).double()[0, 2])
    with Engine(tmp_path / "b") as engine:
        prediction = engine.classify(frame, [PANE])
        maps = engine.extract(frame, [ROI])
    assert maps.shape == (1, 16, SIZE // 4, SIZE // 4)  # the cut graph returns the conv maps, not scores
    assert abs(prediction.probability - p_torch) <= MAX_DP
    card = load_bundle(tmp_path / "b").manifest.model_card
    assert card["cam"] == "gradient" and card["outputs"]["dropped_activation"] == "Softmax"
    assert "global average pooling" in card["graph"]

    # It streams like any bundle: a B-mode-only layout, a record per frame, the overlay with its CAM.
    result = subprocess.run([sys.executable, "-m", "edge_thyroid", "stream", str(tmp_path / "b"), "--source",
                             "synthetic:single?size=480x270&fps=30", "--max-frames", "8", "--as-fast-as-possible",
                             "--json", "--overlay", str(tmp_path / "overlay.mp4")],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["processed"] == 8 and summary["dropped"] == 0 and (tmp_path / "overlay.mp4").stat().st_size > 0


def test_onnx_without_gap_is_kept_whole_bgr_from_metadata(tmp_path, frame):
    """1 logit + Sigmoid, batch fixed at 1 by the exporter, BGR with its own mean/std in the metadata."""
    import cv2
    import torch

    mean_bgr, std_bgr = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    model = small_cnn(1, gap_tail=False)
    path = tmp_path / "whole.onnx"
    path.write_bytes(onnx_bytes(model, 18, False, {"channel_order": "BGR", "mean": "0.4,0.5,0.6", "std": "[0.2, 0.25, 0.3]"}))
    export(path, "-o", tmp_path / "b")
    # Reference pixels computed independently: [0, 1] RGB crop, flipped to BGR, normalised in BGR order.
    unit = preprocess_reference(frame, [ROI], PreprocessSpec(image_size=SIZE, mean=(0, 0, 0), std=(1, 1, 1)))
    bgr = (unit[:, ::-1] - np.array(mean_bgr)[:, None, None]) / np.array(std_bgr)[:, None, None]
    with torch.no_grad():
        p_torch = float(model(torch.from_numpy(np.ascontiguousarray(bgr, dtype=np.float32))).double()[0, 0])
    with Engine(tmp_path / "b") as engine:
        prediction = engine.classify(frame, [PANE])
        two = engine.extract(frame, [ROI, (0, 0, 300, 300)])  # the fixed batch of 1 was freed
    assert 0.02 < p_torch < 0.98 and abs(prediction.probability - p_torch) <= MAX_DP
    assert two.shape == (2, 1, 1, 1) and not engine.head.has_cam
    card = load_bundle(tmp_path / "b").manifest.model_card
    assert card["cam"] == "none" and card["input"]["from"]["channel_order"] == "BGR (model metadata)"
    assert card["input"]["image_size"] == SIZE and card["input"]["from"]["image_size"] == "model input shape"
    assert card["input"]["from"]["mean_std"] == "model metadata"

    # No CAM exists: `classify --cam` writes no heatmap and says why; `info` says so too.
    image = tmp_path / "pane.png"
    cv2.imwrite(str(image), frame[50:670, 20:620])
    result = CliRunner().invoke(cli, ["classify", str(tmp_path / "b"), str(image), "--cam", str(tmp_path / "cam.png"), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["cam"] is None and "no class activation map" in record["cam_note"]
    assert record["p_malignant"] == pytest.approx(prediction.probability, abs=1e-6)
    assert not (tmp_path / "cam.png").exists()
    info = CliRunner().invoke(cli, ["info", str(tmp_path / "b")]).output
    assert "CAM          none" in info and "kept whole" in info


# --- refusals -----------------------------------------------------------------------------------

def two_output_onnx() -> bytes:
    """A detection-like graph: boxes and scores."""
    from onnx import TensorProto, helper

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 1, 1]) for n in ("boxes", "scores")]
    nodes = [helper.make_node("GlobalAveragePool", ["image"], ["boxes"]), helper.make_node("Identity", ["boxes"], ["scores"])]
    graph = helper.make_graph(nodes, "detector", [image], outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


def rank2_onnx() -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "tabular", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


def batch_one_reshape_onnx() -> bytes:
    """Scores through a Reshape to [1, K]: runs on one pane, silently wrong or failing on two."""
    import torch
    from torch import nn

    class Fixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3, 2, 1)

        def forward(self, x):
            return self.conv(x).mean(dim=(2, 3)).reshape(1, 2)

    buffer = io.BytesIO()
    torch.onnx.export(Fixed().eval(), (torch.zeros(1, 3, 32, 32),), buffer, opset_version=18, dynamo=False)
    return buffer.getvalue()


def test_wrong_models_are_refused_in_one_line(tmp_path, capsys):
    import torch
    import torchvision

    cases = []
    for name, content, fragment in [("detector.onnx", two_output_onnx(), "one output of class scores"),
                                    ("tabular.onnx", rank2_onnx(), "expected float32 [N, 3, H, W]"),
                                    ("fixed.onnx", batch_one_reshape_onnx(), "free batch dimension")]:
        (tmp_path / name).write_bytes(content)
        cases.append((name, fragment, []))
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth")
    cases.append(("resnet18.pth", "match none of ['densenet121', 'googlenet', 'resnet50', 'vgg16']", []))
    torch.save(torchvision.models.googlenet(weights=None, num_classes=5, aux_logits=False, init_weights=False).state_dict(),
               tmp_path / "five.pth")
    cases.append(("five.pth", "has 5 classes; name the malignant ones with --malignant-index", []))
    cases.append(("five.pth", "--malignant-index [0, 1, 2, 3, 4] for 5 classes", ["--malignant-index", "0,1,2,3,4"]))
    for name, fragment, extra in cases:
        err = refused(["export", tmp_path / name, "-o", tmp_path / "out", "--image-size", 32, *extra], capsys)
        assert fragment in err and name in err, err
        assert not (tmp_path / "out").exists()


# --- the project's own checkpoints ----------------------------------------------------------------

def test_project_checkpoint_drops_auxiliary_training_heads(tmp_path):
    """Training may add aux*/seg_head.* heads; export ignores them, and any other stray key still fails."""
    import torch

    from edge_thyroid.export.checkpoint import CheckpointInfo, load_checkpoint, save_checkpoint
    from edge_thyroid.export.models import MultimodalClassifier

    torch.manual_seed(3)
    model = MultimodalClassifier("googlenet", ("bmode", "swe")).eval()
    path = tmp_path / "best.pt"
    extra_heads = {"aux.fc.weight": torch.zeros(2, 4), "aux_swe.weight": torch.zeros(1), "seg_head.0.weight": torch.zeros(3)}
    save_checkpoint(path, model, CheckpointInfo("googlenet", ("bmode", "swe"), image_size=SIZE))
    payload = torch.load(path, weights_only=True)
    payload["state_dict"].update(extra_heads)
    torch.save(payload, path)
    loaded, info, _ = load_checkpoint(path)
    assert info.modalities == ("bmode", "swe")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    payload["state_dict"]["decoder.weight"] = torch.zeros(1)
    torch.save(payload, path)
    with pytest.raises(ValueError, match="unexpected \\['decoder.weight'\\]"):
        load_checkpoint(path)


# --- INT8 through the gate ----------------------------------------------------------------------

def gated_int8_export(imported, tmp_path, csv):
    """INT8 export of an imported model, calibrated on 8 of the labelled images and gated on all of them."""
    from edge_thyroid.export.bundle_export import CalibrationRequest, GateRequest, export_bundle
    from edge_thyroid.verification import Split

    return export_bundle(imported.model, tmp_path / "int8", image_size=SIZE, precision=Precision.INT8,
                         calibration=CalibrationRequest(csv.parent, count=8), gate=GateRequest(csv, split=Split.ALL),
                         cache_dir=tmp_path / "cache", model_card=imported.model_card,
                         preprocessing=imported.preprocessing)


def test_int8_export_of_an_imported_resnet50_passes_the_gate(tmp_path):
    """A 2-class ResNet50 whose fc separates the test_verify task; INT8 export is judged by the gate
    against the FP32 model on the labelled images, and the report is recorded in the manifest."""
    import cv2
    import torch
    import torchvision

    from edge_thyroid.dataset import read_samples
    from edge_thyroid.export.model_import import ImportOptions, import_model

    from .test_verify import make_data

    csv = make_data(tmp_path / "data")
    torch.manual_seed(4)
    model = torchvision.models.resnet50(weights=None, num_classes=2).eval()
    spec = PreprocessSpec(image_size=SIZE)
    samples = read_samples(csv)
    pixels = np.concatenate([preprocess_reference(f, [(0, 0, f.shape[1], f.shape[0])], spec)
                             for f in (cv2.imread(str(s.image)) for s in samples)])
    with torch.no_grad():  # nearest class mean on the pooled features, logits about +-4
        pooled = torch.flatten(torch.nn.Sequential(*list(model.children())[:-1])(torch.from_numpy(pixels.astype(np.float32))), 1).double()
        labels = torch.tensor([s.label for s in samples])
        malignant, benign = pooled[labels == 1].mean(0), pooled[labels == 0].mean(0)
        direction = malignant - benign
        scale = 4.0 / float(direction @ direction / 2)
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        model.fc.weight[1] = (scale * direction).float()
        model.fc.bias[1] = float(-scale * direction @ (malignant + benign) / 2)
    weights = tmp_path / "resnet50.pth"
    torch.save(model.state_dict(), weights)
    imported = import_model(weights, ImportOptions(image_size=SIZE))
    manifest = load_bundle(gated_int8_export(imported, tmp_path, csv)).manifest
    gate = manifest.metrics["gate_int8"]
    assert gate["passed"] and gate["agreement"] >= 0.98 and gate["auc_drop"] <= 0.01
    from edge_thyroid.gates import recorded_gates

    assert recorded_gates(manifest.models["int8"].details)["onnxruntime"]["passed"]
    assert manifest.model_card["architecture"] == "resnet50"
