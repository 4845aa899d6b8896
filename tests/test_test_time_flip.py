"""Test-time mirror averaging built into the exported graph (export/test_time.py): the module against a
direct float64 computation, the exported ONNX against the module, a bundle's p against the average of
the two views through a bundle without it, the manifest field, and the training-side scorer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from .conftest import have_torch

pytestmark = pytest.mark.skipif(not have_torch(), reason="torch/torchvision not installed")


def _conv_features():
    import torch

    torch.manual_seed(3)
    # Asymmetric kernels, so the two views really differ.
    return torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(5, 4, (1, 3)))


def test_flip_averaged_is_the_mean_of_the_two_views_and_mirror_equivariant():
    import torch

    from edge_thyroid.export.test_time import FlipAveraged

    features = _conv_features().double()
    x = torch.randn(3, 3, 17, 21, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    averaged = FlipAveraged(features)(x)
    expected = (features(x) + torch.flip(features(torch.flip(x, [3])), [3])) / 2
    torch.testing.assert_close(averaged, expected, rtol=0, atol=1e-12)
    assert not torch.allclose(averaged, features(x), atol=1e-3)  # the views differ: averaging did something
    torch.testing.assert_close(FlipAveraged(features)(torch.flip(x, [3])), torch.flip(averaged, [3]), rtol=0, atol=1e-12)
    # Rolled back by one cell (circularly): same pooled features, the mirrored view moved by one column.
    rolled = FlipAveraged(features, roll=1)(x)
    second = torch.roll(torch.flip(features(torch.flip(x, [3])), [3]), -1, dims=3)
    torch.testing.assert_close(rolled, (features(x) + second) / 2, rtol=0, atol=1e-12)
    torch.testing.assert_close(rolled.mean(dim=(2, 3)), averaged.mean(dim=(2, 3)), rtol=0, atol=1e-12)


def test_best_mirror_roll_finds_the_shift_that_lines_the_views_up():
    """Features that sit a known number of cells to one side of what they respond to: the mirrored view,
    mirrored back, is off by twice that, and best_mirror_roll finds the roll that undoes it."""
    import torch

    from edge_thyroid.export.test_time import best_mirror_roll, mirrored_back

    class Offset(torch.nn.Module):
        def forward(self, pixels):
            cells = torch.nn.functional.avg_pool2d(pixels, 8)        # 8 x 8 cells of a 64 x 64 input
            return torch.roll(cells, shifts=1, dims=-1)              # each cell reports its left neighbour

    pixels = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    roll, scores = best_mirror_roll(Offset(), pixels, candidates=(-2, -1, 0, 1, 2))
    assert roll == -2 and scores[-2] == pytest.approx(1.0, abs=1e-6) and scores[0] < 0.9
    mirrored = Offset()(pixels.flip(-1))
    torch.testing.assert_close(mirrored_back(mirrored, -2), Offset()(pixels), rtol=0, atol=1e-6)


def test_the_exported_graph_matches_the_module_for_any_batch(random_model):
    import onnxruntime as ort
    import torch

    from edge_thyroid.export.models import BackboneFeatures
    from edge_thyroid.export.onnx_export import export_backbone_onnx
    from edge_thyroid.export.test_time import FlipAveraged

    graph = export_backbone_onnx(random_model, 64, mirror_roll=1)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    module = FlipAveraged(BackboneFeatures(random_model.backbone_name, random_model.backbone), roll=1).eval()
    for batch in (1, 3):
        pixels = np.random.default_rng(batch).normal(size=(batch, 3, 64, 64)).astype(np.float32)
        onnx_maps = session.run(None, {session.get_inputs()[0].name: pixels})[0]
        with torch.no_grad():
            reference = module(torch.from_numpy(pixels)).numpy()
        assert onnx_maps.shape == reference.shape
        # float32 through ResNet50 in another summation order (ONNX Runtime's AVX2 or AVX-512 kernels against
        # PyTorch's): maps up to ~50 agree to ~4e-5 relative, so the bound is relative as well as absolute.
        np.testing.assert_allclose(onnx_maps, reference, rtol=1e-5, atol=1e-4)


def test_a_bundle_with_it_scores_the_average_of_a_pane_and_its_mirror_image(random_model, tmp_path):
    import cv2

    from edge_thyroid.bundle import load_bundle
    from edge_thyroid.engine import Engine
    from edge_thyroid.errors import InputError
    from edge_thyroid.export.bundle_export import CalibrationRequest, export_bundle
    from edge_thyroid.frames import Pane

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(8)
    for k in range(4):
        cv2.imwrite(str(images / f"{k}.png"), rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8))
    plain = export_bundle(random_model, tmp_path / "plain", image_size=64)
    with pytest.raises(InputError, match="give --calib or --verify-data"):
        export_bundle(random_model, tmp_path / "flip", image_size=64, test_time_flip=True)
    flipped = export_bundle(random_model, tmp_path / "flip", image_size=64, test_time_flip=True,
                            calibration=CalibrationRequest(images))
    manifest = load_bundle(flipped).manifest
    assert manifest.test_time_flip and not load_bundle(plain).manifest.test_time_flip
    roll = manifest.test_time["roll"]
    assert roll in (-1, 0, 1) and manifest.test_time["roll_chosen_on"].startswith("4 images of")
    frame = np.random.default_rng(5).integers(0, 256, size=(90, 140, 3), dtype=np.uint8)
    x, y, w, h = 13, 7, 71, 64
    mirrored_frame = np.ascontiguousarray(frame[:, ::-1])
    mirrored_roi = (frame.shape[1] - x - w, y, w, h)
    with Engine(plain) as a, Engine(flipped) as b:
        assert b.identity()["model"]["test_time_flip"] is True
        one = a.classify(frame, [Pane("bmode", (x, y, w, h))])
        mirror = a.classify(mirrored_frame, [Pane("bmode", mirrored_roi)])
        both = b.classify(frame, [Pane("bmode", (x, y, w, h))])
    # The mirror of a crop, resized, is the resized crop mirrored (half-pixel bilinear is symmetric) up to
    # float rounding: the graph's in-batch flip and the mirrored frame agree to ~1e-6 in the logit.
    assert both.logit == pytest.approx((one.logit + mirror.logit) / 2, abs=1e-4)
    expected_cam = (one.cam("bmode") + np.roll(mirror.cam("bmode")[:, ::-1], -roll, axis=1)) / 2
    np.testing.assert_allclose(both.cam("bmode"), expected_cam, rtol=0, atol=1e-4)


def test_manifest_field_round_trips_and_refuses_a_non_boolean(random_bundle, tmp_path):
    import shutil

    from edge_thyroid.bundle import MANIFEST, BundleError, Manifest

    data = json.loads((random_bundle / MANIFEST).read_text())
    assert "test_time" not in data and Manifest.from_dict(data).test_time_flip is False
    data["test_time"] = {"flip": True}
    manifest = Manifest.from_dict(data)
    assert manifest.test_time_flip and manifest.to_dict()["test_time"]["flip"] is True
    data["test_time"] = {"flip": "yes"}
    with pytest.raises(BundleError, match="test_time.flip is 'yes'; expected true or false"):
        Manifest.from_dict(data)
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_imported_models_are_exported_as_they_are(random_model, tmp_path):
    from edge_thyroid.errors import InputError
    from edge_thyroid.export.bundle_export import classifier_bundle_model, export_bundle

    bundle_model = classifier_bundle_model(random_model, 64)
    with pytest.raises(InputError, match="--test-time-flip builds the mirror-image average around the project's own"):
        export_bundle(bundle_model, tmp_path / "x", image_size=64, test_time_flip=True)


def test_the_training_scorer_averages_logits_and_cams_like_the_graph(random_model):
    from edge_thyroid.export.nodule_training import score

    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, size=(50, 61), dtype=np.uint8) for _ in range(3)]
    p, cams = score(random_model, images, [None] * 3, 64)
    p_mirror, cams_mirror = score(random_model, images, [None] * 3, 64, flip=True)
    p_both, cams_both = score(random_model, images, [None] * 3, 64, test_time_flip=True, mirror_roll=1)
    logit = lambda q: np.log(q / (1 - q))  # noqa: E731
    np.testing.assert_allclose(logit(p_both), (logit(p) + logit(p_mirror)) / 2, rtol=0, atol=1e-4)
    np.testing.assert_allclose(cams_both, (cams + np.roll(cams_mirror[:, :, ::-1], -1, axis=2)) / 2, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="a box would point at the wrong side"):
        score(random_model, images[:1], [(0, 0, 10, 10)], 64, flip=True)


def test_runs_saved_before_a_recipe_field_existed_stay_resumable():
    from edge_thyroid.export.nodule_training import NoduleRecipe, same_recipe

    recipe = NoduleRecipe(epochs=30, init="runs/pretrain/final.pt")
    saved = recipe.to_dict()
    assert same_recipe(saved, recipe)
    older = {k: v for k, v in saved.items() if k != "descriptor_weight"}
    assert same_recipe(older, recipe)                       # trained without it = with its default
    assert not same_recipe(older, NoduleRecipe(epochs=30, init="runs/pretrain/final.pt", descriptor_weight=0.5))
    assert not same_recipe({**saved, "lr": 1e-3}, recipe)
    assert not same_recipe({**saved, "retired_field": 1}, recipe)


def test_the_export_command_asks_for_images_to_line_the_mirror_up_on(tmp_path):
    from click.testing import CliRunner

    from edge_thyroid.cli import cli

    out = CliRunner().invoke(cli, ["export", "--random-init", "-o", str(tmp_path / "b"), "--image-size", "32",
                                   "--test-time-flip"])
    assert out.exit_code == 2 and "give --calib" in out.output and "Traceback" not in out.output
    assert not (tmp_path / "b").exists()
    images = tmp_path / "images"
    images.mkdir()
    import cv2

    for k in range(2):
        cv2.imwrite(str(images / f"{k}.png"), np.random.default_rng(k).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    out = CliRunner().invoke(cli, ["export", "--random-init", "-o", str(tmp_path / "b"), "--image-size", "32",
                                   "--test-time-flip", "--calib", str(images), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output[out.output.index("{"):])["test_time_flip"] is True
    info = CliRunner().invoke(cli, ["info", str(tmp_path / "b")])
    assert "mirror image" in info.output, info.output
