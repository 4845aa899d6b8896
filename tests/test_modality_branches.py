"""A backbone per modality (late fusion) in a bundle: a small random-weight model built here (ResNet50 for
B-mode, GoogLeNet for SMI and SWE, so the branches also differ in width) is exported from both import
layouts by the real CLI, classified with 1, 2 and 3 panes and compared with its own PyTorch forward on
identical pixels, on ONNX Runtime and OpenVINO; the pane cache keys by branch, a stream runs end to end,
INT8 goes through the gate, the signature covers every branch file and malformed files are refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from edge_thyroid.bundle import load_bundle
from edge_thyroid.cli import cli, main
from edge_thyroid.engine import Engine
from edge_thyroid.errors import BundleError
from edge_thyroid.frames import Pane
from edge_thyroid.kernels.reference import PreprocessSpec, preprocess_reference

from .conftest import needs_torch, screen_frame

pytestmark = needs_torch

SIZE = 64
ARCHITECTURES = {"bmode": "resnet50", "smi": "googlenet", "swe": "googlenet"}
WIDTHS = {"resnet50": 2048, "googlenet": 1024}
ROIS = {"bmode": (20, 50, 560, 600), "smi": (660, 50, 280, 300), "swe": (960, 360, 300, 300)}
MAX_DP = 1e-4  # FP32 parity budget with torch on identical pixels


def late_fusion_model(seed: int = 0):
    """The kind of model a user trains: nn.ModuleDict of torchvision backbones + one fusion linear."""
    import torch
    import torchvision
    from torch import nn

    from edge_thyroid.export.models import backbone_feature_maps

    class LateFusion(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.branches = nn.ModuleDict({
                m: (torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False) if a == "googlenet"
                    else getattr(torchvision.models, a)(weights=None))
                for m, a in ARCHITECTURES.items()})
            self.fusion = nn.Linear(sum(WIDTHS[a] for a in ARCHITECTURES.values()), 1)

        def pooled(self, pixels: dict) -> torch.Tensor:
            """Missing modalities are zeros: they add nothing to the fusion (masked, as the engine does)."""
            parts = []
            for modality, architecture in ARCHITECTURES.items():
                if modality in pixels:
                    maps = backbone_feature_maps(architecture, self.branches[modality], pixels[modality])
                    parts.append(maps.mean(dim=(2, 3)))
                else:
                    parts.append(torch.zeros(1, WIDTHS[architecture]))
            return torch.cat(parts, dim=1)

        def forward(self, pixels: dict) -> torch.Tensor:
            return self.fusion(self.pooled(pixels))[:, 0]

    torch.manual_seed(seed)
    return LateFusion().eval()


def pixels_of(frame: np.ndarray, modalities) -> dict:
    import torch

    spec = PreprocessSpec(image_size=SIZE)
    return {m: torch.from_numpy(preprocess_reference(frame, [ROIS[m]], spec).astype(np.float32)) for m in modalities}


def torch_p(model, frame: np.ndarray, modalities) -> float:
    import torch

    with torch.no_grad():
        return float(torch.sigmoid(model(pixels_of(frame, modalities)).double())[0])


@pytest.fixture(scope="module")
def frame() -> np.ndarray:
    return screen_frame(seed=5)


@pytest.fixture(scope="module")
def model(frame):
    import torch

    model = late_fusion_model()
    with torch.no_grad():  # each branch adds O(1) to the logit, so parity measures every branch, unsaturated
        features = model.pooled(pixels_of(frame, ARCHITECTURES))
        torch.nn.init.normal_(model.fusion.weight, std=1.0)
        start = 0
        for architecture, term in zip(ARCHITECTURES.values(), (0.7, -0.5, 0.6)):
            block = slice(start, start + WIDTHS[architecture])
            model.fusion.weight[:, block] *= term / float((model.fusion.weight[:, block] * features[:, block]).sum())
            start += WIDTHS[architecture]
        model.fusion.bias.fill_(0.1)
    return model


def export(*args) -> str:
    result = CliRunner().invoke(cli, ["export", *map(str, args)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def module_bundle(model, tmp_path_factory):
    """Layout (b): one module's state_dict with branches.<modality>.* and fusion.*, as DataParallel saves it."""
    import torch

    folder = tmp_path_factory.mktemp("branches")
    weights = folder / "late_fusion.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, weights)
    out = export(weights, "-o", folder / "bundle", "--image-size", SIZE, "--intended-use", "test only")
    assert "branch smi: model.smi.onnx (googlenet)" in out
    return folder / "bundle"


def test_module_with_named_branches_exports_with_parity_for_1_2_3_panes(model, module_bundle, frame):
    manifest = load_bundle(module_bundle).manifest
    assert manifest.format_version == 2 and manifest.branched
    entry = manifest.models["fp32"]
    assert {m: b.details["architecture"] for m, b in entry.branches.items()} == ARCHITECTURES
    assert {m: b.details["channels"] for m, b in entry.branches.items()} == {m: WIDTHS[a] for m, a in ARCHITECTURES.items()}
    with Engine(module_bundle) as engine:
        assert engine.branched and set(engine.branches) == set(ARCHITECTURES)
        for present in (["bmode"], ["smi"], ["bmode", "swe"], ["swe", "smi"], ["bmode", "smi", "swe"]):
            prediction = engine.classify(frame, [Pane(m, ROIS[m]) for m in present])
            expected = torch_p(model, frame, present)
            assert 0.02 < expected < 0.98
            assert abs(prediction.probability - expected) <= MAX_DP, (present, prediction.probability, expected)
            assert set(prediction.contributions) == set(present)   # missing modalities stay masked
            assert all(abs(c) > 0.05 for c in prediction.contributions.values())   # every branch weighs in
            for modality in present:  # exact CAM per modality: its mean is that modality's logit term
                cam = prediction.cam(modality)
                index = engine.head.modality_index(modality)
                assert cam.mean() + engine.head.presence_bias[index] == pytest.approx(
                    prediction.contributions[modality], rel=1e-6, abs=1e-6)


def test_dict_of_per_modality_state_dicts_exports_with_parity_on_openvino(model, frame, tmp_path, capsys):
    import torch

    weights = tmp_path / "per_modality.pt"
    state = {m: branch.state_dict() for m, branch in model.branches.items()}  # each with its own unused fc
    torch.save({**state, "fusion": {"weight": model.fusion.weight.detach(), "bias": model.fusion.bias.detach()}}, weights)
    bundle = tmp_path / "bundle"
    export(weights, "-o", bundle, "--image-size", SIZE)
    panes = [Pane(m, ROIS[m]) for m in ("bmode", "smi", "swe")]
    expected = torch_p(model, frame, ARCHITECTURES)
    with Engine(bundle) as engine:
        assert abs(engine.classify(frame, panes).probability - expected) <= MAX_DP
    pytest.importorskip("openvino")
    with Engine(bundle, backend="openvino", threads=1) as engine:
        assert set(engine.branches) == set(ARCHITECTURES)
        for present in (["smi"], ["bmode", "smi", "swe"]):
            p = engine.classify(frame, [Pane(m, ROIS[m]) for m in present]).probability
            assert abs(p - torch_p(model, frame, present)) <= MAX_DP, present
    capsys.readouterr()
    assert main(["info", str(bundle)]) is None
    info = capsys.readouterr().out
    files = load_bundle(bundle).manifest.files
    for modality, architecture in ARCHITECTURES.items():
        line = next(line for line in info.splitlines() if line.strip().startswith(f"branch    {modality}:"))
        assert f"model.{modality}.onnx" in line and files[f"model.{modality}.onnx"] in line and architecture in line


def test_extract_batches_per_branch_and_pane_cache_keys_by_branch(module_bundle, frame):
    from edge_thyroid.stream.cache import PaneCache

    with Engine(module_bundle) as engine:
        calls = []
        for modality, backend in engine.branches.items():
            infer = backend.infer
            backend.infer = lambda feeds, infer=infer, modality=modality: calls.append((modality, len(feeds["rois"]))) or infer(feeds)
        maps = engine.extract(frame, [ROIS["bmode"], ROIS["smi"], ROIS["smi"]], ["bmode", "smi", "smi"])
        assert sorted(calls) == [("bmode", 1), ("smi", 2)]   # the two SMI panes in one batch
        assert [m.shape[0] for m in maps] == [2048, 1024, 1024]
        cache = PaneCache(engine)
        same_roi = ROIS["smi"]   # one ROI seen by two branches: never each other's maps
        checks = [cache.check(frame, same_roi, "smi"), cache.check(frame, same_roi, "swe")]
        first = cache.run(frame, checks)
        assert cache.misses == 2 and first[0].shape == first[1].shape and not np.allclose(first[0], first[1], rtol=1e-3, atol=0)
        calls.clear()
        again = cache.run(frame, [cache.check(frame, same_roi, "smi"), cache.check(frame, same_roi, "swe")])
        assert cache.hits == 2 and calls == [] and np.array_equal(again[0], first[0])
        cache.retain([same_roi], ["swe"])
        assert set(cache.entries) == {("swe", same_roi)}
        # The bench's cached path: panes in the bundle's modality order, widths differ -> a list, per pane.
        listed = PaneCache(engine).extract(frame, [ROIS[m] for m in ARCHITECTURES])
        assert [m.shape[0] for m in listed] == [2048, 1024, 1024] and np.array_equal(listed[0], maps[0])


def test_bench_engine_rows_send_each_pane_to_its_own_branch_and_count_every_branch_file(module_bundle, frame):
    """bench --panes 2 shows B-mode + SWE: the engine rows must run the SWE pane through the SWE backbone
    (the engine's default order sent it through SMI's, same width here, so p was silently wrong), and the
    row's model size is every branch file's (it was the bundle folder's st_size)."""
    from edge_thyroid_bench.benchmarking import StageTimer
    from edge_thyroid_bench.harness import pick_modalities
    from edge_thyroid_bench.peers import ConfigSpec, Kind, make_runner

    modalities = pick_modalities(tuple(ARCHITECTURES), 2)
    assert modalities == ("bmode", "swe")
    rois = np.array([ROIS[m] for m in modalities])
    bundle = load_bundle(module_bundle)
    with Engine(bundle, backend="onnxruntime") as engine:
        expected = engine.extract(frame, rois, list(modalities))
        expected_p = engine.classify(frame, [Pane(m, ROIS[m]) for m in modalities]).probability
    files = bundle.model_entry("fp32")[1].files
    for cached in (False, True):
        runner = make_runner(ConfigSpec(Kind.ENGINE, str(module_bundle), "fp32", modalities, 1, cached=cached,
                                        backend="onnxruntime"), bundle)
        runner.load()
        try:
            maps = runner.features(frame, rois, StageTimer())
            assert all(np.array_equal(got, want) for got, want in zip(maps, expected))
            assert runner.process(frame, rois, StageTimer()) == pytest.approx(expected_p, abs=1e-9)
            assert runner.size_bytes() == sum((module_bundle / name).stat().st_size for name in files)
        finally:
            runner.close()


def test_stream_runs_end_to_end_on_a_branched_bundle(module_bundle, tmp_path):
    """The synthetic three-pane screen (B-mode, SMI, SWE refreshing at 2 Hz) streamed with the real CLI."""
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(cli, ["stream", str(module_bundle), "--source", "synthetic:triple?frames=12&fps=30",
                                      "--as-fast-as-possible", "--whole-pane", "--json-out", str(out)])
    assert result.exit_code == 0, result.output
    frames = [r for r in map(json.loads, out.read_text().splitlines()) if r["type"] == "frame"]
    assert len(frames) >= 6 and all(r["p"] is not None for r in frames)
    assert {p["modality"] for p in frames[0]["panes"]} == set(ARCHITECTURES)
    # SWE refreshes at 2 Hz: within 0.4 s of media its pane is served from its own branch's cache.
    assert any(p["cached"] for r in frames[1:] for p in r["panes"] if p["modality"] == "swe")
    summary = [r for r in map(json.loads, out.read_text().splitlines()) if r["type"] == "summary"][0]
    assert summary["cache_hits"] > 0


def test_signature_covers_every_branch_file(module_bundle, tmp_path):
    from edge_thyroid.signing import TrustPolicy, generate_keypair, load_trusted_keys
    from edge_thyroid.signer import sign_bundle

    bundle = tmp_path / "signed"
    shutil.copytree(module_bundle, bundle)
    private, public = generate_keypair(tmp_path / "keys", "lab")
    sign_bundle(bundle, private)
    policy = TrustPolicy(load_trusted_keys([public]))
    assert load_bundle(bundle, trust=policy).signature.verified
    target = bundle / "model.swe.onnx"
    data = bytearray(target.read_bytes())
    data[-10] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.swe.onnx"):
        load_bundle(bundle, trust=policy)
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["files"]["model.smi.onnx"]   # unlisted branch file: refused even before hashing
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="model.smi.onnx"):
        load_bundle(bundle, ignore_signature=True)


def refused(args, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_malformed_per_modality_files_are_refused_in_one_line(model, tmp_path, capsys):
    import torch

    state = {m: b.state_dict() for m, b in model.branches.items()}
    fusion = {"weight": model.fusion.weight.detach(), "bias": model.fusion.bias.detach()}
    cases = {
        "no_fusion": ({**state}, "no fusion layer"),
        "unknown_modality": ({"bmode": state["bmode"], "doppler": state["smi"], "fusion": fusion}, "not modalities"),
        "wrong_width": ({"bmode": state["bmode"], "smi": state["smi"], "fusion": fusion}, "expected [K, 3072]"),
        "not_a_backbone": ({"bmode": {"conv.weight": torch.zeros(3, 3)}, "fusion": fusion}, "match none of"),
        "truncated_branch": ({**state, "smi": {k: v for k, v in state["smi"].items() if "inception5b" not in k},
                              "fusion": fusion}, "match none of"),
        "both_layouts": ({"bmode": state["bmode"], "branches.smi.conv1.conv.weight": torch.zeros(1), "fusion": fusion},
                         "both per-modality dicts"),
        "stray_key": ({**state, "fusion": fusion, "optimizer_lr": torch.zeros(1)}, "neither a branch"),
        "three_outputs": ({**state, "fusion": {"weight": torch.zeros(3, 4096), "bias": torch.zeros(3)}}, "K = 1 or 2"),
    }
    for name, (payload, expected) in cases.items():
        path = tmp_path / f"{name}.pt"
        torch.save(payload, path)
        err = refused(["export", path, "-o", tmp_path / name, "--image-size", SIZE], capsys)
        assert expected in err, (name, err)
        assert not (tmp_path / name).exists()
    torch.save({**state, "fusion": fusion}, tmp_path / "ok.pt")
    assert "--backbone does not apply" in refused(["export", tmp_path / "ok.pt", "-o", tmp_path / "x", "--backbone",
                                                   "resnet50"], capsys)


def test_fusion_layer_with_presence_biases_and_two_classes():
    import torch

    from edge_thyroid.export.branch_import import fusion_head

    weight = torch.randn(2, 3 + 2 + 2, dtype=torch.float64)
    bias = torch.tensor([0.3, -0.2], dtype=torch.float64)
    head, outputs = fusion_head(("bmode", "swe"), [3, 2], weight, bias, None, "t")
    assert outputs == {"count": 2, "activation": "softmax", "malignant": [1]}
    f_b, f_s = np.array([0.5, -1.0, 2.0]), np.array([1.5, 0.25])
    scores = weight.numpy() @ np.concatenate([f_b, f_s, [1.0, 1.0]]) + bias.numpy()
    p_softmax = float(torch.softmax(torch.from_numpy(scores), 0)[1])
    assert head.predict({"bmode": f_b, "swe": f_s}).probability == pytest.approx(p_softmax, abs=1e-12)
    only_b = weight.numpy()[:, :3] @ f_b + weight.numpy()[:, 5] + bias.numpy()   # SWE absent: its terms drop out
    assert head.predict({"bmode": f_b}).probability == pytest.approx(float(torch.softmax(torch.from_numpy(only_b), 0)[1]))


def test_int8_export_quantizes_every_branch_through_the_gate(tmp_path):
    import cv2
    import torch

    from edge_thyroid.dataset import read_samples
    from edge_thyroid.export.model_import import ImportOptions, import_branched_model
    from edge_thyroid.verification import score_engines

    from .test_byo import gated_int8_export
    from .test_verify import make_data

    csv = make_data(tmp_path / "data")
    model = late_fusion_model(seed=2)
    samples = read_samples(csv)
    spec = PreprocessSpec(image_size=SIZE)
    with torch.no_grad():  # nearest class mean per branch (each sees the image), each branch adding +-4/3
        pooled = torch.cat([model.pooled({m: torch.from_numpy(preprocess_reference(
            f, [(0, 0, f.shape[1], f.shape[0])], spec).astype(np.float32)) for m in ARCHITECTURES})
            for f in (cv2.imread(str(s.image)) for s in samples)]).double()
        labels = torch.tensor([s.label for s in samples])
        start, bias = 0, 0.0
        for architecture in ARCHITECTURES.values():
            block = slice(start, start + WIDTHS[architecture])
            malignant, benign = pooled[labels == 1, block].mean(0), pooled[labels == 0, block].mean(0)
            direction = malignant - benign
            scale = (4.0 / 3) / float(direction @ direction / 2)
            model.fusion.weight[0, block] = (scale * direction).float()
            bias -= float(scale * direction @ (malignant + benign) / 2)
            start += WIDTHS[architecture]
        model.fusion.bias[0] = bias
    weights = tmp_path / "late_fusion.pt"
    torch.save(model.state_dict(), weights)
    imported = import_branched_model(weights, ImportOptions(image_size=SIZE))
    bundle = gated_int8_export(imported, tmp_path, csv)
    manifest = load_bundle(bundle).manifest
    assert manifest.metrics["gate_int8"]["passed"]
    int8 = manifest.models["int8"]
    assert set(int8.branches) == set(ARCHITECTURES)
    for modality, branch in int8.branches.items():
        facts = branch.details["quantization"]
        assert facts["int8_convolutions"] > 0 and "8 B-mode frames" in facts["calibrated_on"]
        assert ("stand-in" in facts["calibrated_on"]) == (modality != "bmode")
        assert branch.file == f"model.{modality}.int8.onnx" and branch.file in manifest.files
    assert set(manifest.calibration["branches"]) == set(ARCHITECTURES)
    # The gate scores every branch: each image goes through all three backbones.
    frame = cv2.imread(str(samples[0].image))
    whole = (0, 0, frame.shape[1], frame.shape[0])
    with Engine(bundle, model="int8") as engine:
        gate_p = score_engines([engine], samples[:1])[0, 0]
        all_branches = engine.classify(frame, [Pane(m, whole) for m in ARCHITECTURES]).probability
        bmode_only = engine.classify(frame, [Pane("bmode", whole)]).probability
    assert gate_p == pytest.approx(all_branches, abs=1e-12) and abs(gate_p - bmode_only) > 1e-3


def test_a_runtime_that_cannot_run_the_target_names_every_branch_file(module_bundle, tmp_path):
    """The refusal named entry.file, which a branched entry leaves empty: '(, target tensorrt)'."""
    from edge_thyroid.errors import BackendError

    bundle = tmp_path / "trt"
    shutil.copytree(module_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["models"]["fp32"]["target"] = "tensorrt"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BackendError, match=r"\(bmode=model\.bmode\.onnx, smi=model\.smi\.onnx, swe=model\.swe\.onnx, "
                                           r"target tensorrt\)"):
        Engine(bundle, backend="onnxruntime")


def test_triton_refuses_a_branched_bundle_in_one_line_and_help_documents_the_layouts(module_bundle):
    from edge_thyroid.errors import BackendError

    with pytest.raises(BackendError, match="cannot run a bundle with a backbone per modality"):
        Engine(module_bundle, backend="triton", server="grpc://127.0.0.1:1")
    text = CliRunner().invoke(cli, ["export", "--help"]).output
    assert "branches.bmode.*" in text and '"fusion": {"weight"' in text
