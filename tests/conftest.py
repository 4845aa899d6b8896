from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("EDGE_THYROID_DATA", REPO.parent / "shared" / "data"))
DDTI_CSV = DATA_DIR / "ddti" / "labels.csv"

needs_data = pytest.mark.skipif(not DDTI_CSV.is_file(), reason=f"real data not found at {DATA_DIR}")


def have_torch() -> bool:
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError:
        return False
    return True


needs_torch = pytest.mark.skipif(not have_torch(), reason="torch/torchvision not installed (pip install -e '.[export]')")


def openvino_runs_bf16() -> bool:
    """Whether OpenVINO can run float parts in bf16 on this CPU (AVX-512 BF16 or AMX); without it the
    openvino backend refuses a bf16 request (backends/openvino.py), so tests expect one or the other."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def ultrasound_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A grayscale speckle image with a dark elliptical 'nodule': real-looking statistics, no data needed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    tissue = 90 + 40 * np.sin(yy / 17.0) * np.cos(xx / 23.0)
    nodule = ((yy - height * 0.5) / (height * 0.22)) ** 2 + ((xx - width * 0.5) / (width * 0.3)) ** 2 < 1
    tissue = np.where(nodule, 45, tissue)
    speckle = rng.rayleigh(1.0, size=(height, width)) / 1.25
    return np.clip(tissue * speckle, 0, 255).astype(np.uint8)


def screen_frame(height: int = 720, width: int = 1280, seed: int = 0) -> np.ndarray:
    """A BGR workstation screen: dark UI around two real-looking panes."""
    frame = np.full((height, width, 3), 12, dtype=np.uint8)
    pane = ultrasound_like(height - 100, width // 2 - 40, seed)
    frame[50 : height - 50, 20 : 20 + pane.shape[1]] = pane[:, :, None]
    frame[50 : height - 50, width // 2 + 20 : width // 2 + 20 + pane.shape[1]] = np.stack(
        [pane, np.roll(pane, 7, axis=1), pane // 2], axis=2)
    return frame


@pytest.fixture(scope="session")
def random_model():
    if not have_torch():
        pytest.skip("torch/torchvision not installed")
    import torch

    from edge_thyroid.export.models import MultimodalClassifier

    torch.manual_seed(0)
    model = MultimodalClassifier("resnet50").eval()
    torch.nn.init.normal_(model.head.weight, std=1e-3)
    return model


@pytest.fixture(scope="session")
def random_bundle(tmp_path_factory, random_model) -> Path:
    from edge_thyroid.export.bundle_export import export_bundle

    return export_bundle(random_model, tmp_path_factory.mktemp("bundles") / "random", image_size=64)


@pytest.fixture(scope="session", autouse=True)
def native_backend_cache(tmp_path_factory):
    """The openvino serving flavour's compiled backend goes to a test cache, never the user's."""
    from edge_thyroid.serving.native_backend import CACHE_VARIABLE

    folder = tmp_path_factory.mktemp("native-backend-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_VARIABLE, str(folder))
        yield folder


@pytest.fixture(scope="session", autouse=True)
def auto_backend_cache(tmp_path_factory):
    """--backend auto caches its decisions; tests keep theirs out of the user's cache directory."""
    from edge_thyroid.autoselect import CACHE_ENV

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("backend-auto-cache")))
        yield


def edited_demo_copy(destination: Path, edit) -> Path:
    """A copy of the shipped demo bundle whose manifest (a dict) ``edit`` changed in place. Editing the
    manifest voids the demo signature, so the copy is unsigned."""
    import json
    import shutil

    from edge_thyroid.commands.stream import DEMO_BUNDLE, data_path

    shutil.copytree(data_path(DEMO_BUNDLE), destination)
    manifest_path = destination / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    edit(manifest)
    manifest_path.write_text(json.dumps(manifest, indent=2))
    (destination / "manifest.sig").unlink(missing_ok=True)
    return destination


def ort_gated_demo_copy(destination: Path) -> Path:
    """A copy of the shipped demo bundle whose manifest keeps only the ONNX Runtime gate (the shipped one
    also records OpenVINO f32/bf16 gates): for tests of what happens when a configuration is ungated."""

    def keep_ort_gate(manifest: dict) -> None:
        for entry in manifest["models"].values():
            if entry.get("gates"):
                entry["gates"] = {k: v for k, v in entry["gates"].items() if k == "onnxruntime"}

    return edited_demo_copy(destination, keep_ort_gate)


def demo_copy_with_box_context(destination: Path, context: float) -> Path:
    """A copy of the demo bundle that grows nodule boxes ``context`` times (1: boxes as given)."""

    def set_context(manifest: dict) -> None:
        manifest.pop("nodule_box", None)
        if context != 1.0:
            manifest["nodule_box"] = {"context": context, "note": "test copy"}

    return edited_demo_copy(destination, set_context)
