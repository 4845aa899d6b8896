"""graph.host_mirrored_input: the mirror-image copy of a bundle with the mirror-image average (export
--test-time-flip) moved out of the graph to the host. The rewritten backbone fed [x; x mirrored] must
compute exactly what the exported one computes from x, and a graph without the pattern is left alone.
The shipped demo bundle (full INT8, mirror average) needs no torch, so CI always runs this."""

from __future__ import annotations

import numpy as np
import pytest

from edge_thyroid.commands.stream import DEMO_BUNDLE, data_path
from edge_thyroid.graph import backbone_graph, host_mirrored_input

from .conftest import needs_torch

ort = pytest.importorskip("onnxruntime")


def _maps(model, pixels: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"pixels": pixels})[0]


def _pixels(count: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, size, size)).astype(np.float32)


@pytest.mark.parametrize("count", [1, 3])
def test_the_shipped_int8_backbone_computes_the_same_maps_from_a_host_mirror(count):
    exported = backbone_graph(data_path(DEMO_BUNDLE) / "model.int8.onnx")
    rewritten, changed = host_mirrored_input(exported)
    assert changed
    kinds = [node.op_type for node in rewritten.graph.node]
    assert len(kinds) < len(exported.graph.node)
    # The input's width mirror (a Slice with step -1 reading the pixels) is gone; the tail's remain.
    slices_reading_input = [n for n in rewritten.graph.node if n.op_type == "Slice" and "pixels" in n.input[0]]
    assert not slices_reading_input
    x = _pixels(count, 128, seed=count)
    expected = _maps(exported, x)
    got = _maps(rewritten, np.ascontiguousarray(np.concatenate([x, x[:, :, :, ::-1]])))
    assert got.shape == expected.shape == (count, 2048, 4, 4)
    # Same quantization scales before and after the removed Slice/Concat: the same integers.
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_the_exported_graph_is_not_modified():
    exported = backbone_graph(data_path(DEMO_BUNDLE) / "model.int8.onnx")
    before = exported.SerializeToString()
    host_mirrored_input(exported)
    assert exported.SerializeToString() == before


def test_a_graph_without_the_mirror_is_returned_unchanged():
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["pixels"], ["feature_maps"])], "plain",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["panes", 3, 8, 8])],
        [helper.make_tensor_value_info("feature_maps", TensorProto.FLOAT, ["panes", 3, 8, 8])])
    model = helper.make_model(graph)
    same, changed = host_mirrored_input(model)
    assert not changed and same is model
    onnx.checker.check_model(same)


@needs_torch
def test_a_flipped_fp32_bundle_through_openvino_matches_onnxruntime(random_model, tmp_path):
    """End to end on an FP32 export with the mirror average: OpenVINO with the host mirror against ONNX
    Runtime running the fused graph as exported (the FP32 tolerance of test_backend_openvino)."""
    pytest.importorskip("openvino")
    import cv2

    from edge_thyroid.engine import Engine
    from edge_thyroid.export.bundle_export import CalibrationRequest, export_bundle
    from edge_thyroid.frames import Pane

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(2)
    for k in range(4):
        cv2.imwrite(str(images / f"{k}.png"), rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8))
    bundle = export_bundle(random_model, tmp_path / "flip", image_size=64, test_time_flip=True,
                           calibration=CalibrationRequest(images))
    frame = np.random.default_rng(6).integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
    panes = [Pane("bmode", (13, 7, 171, 164)), Pane("smi", (200, 20, 150, 200))]
    with Engine(bundle, threads=2, every_pane=True) as reference, \
            Engine(bundle, backend="openvino", threads=2, every_pane=True) as engine:
        assert "mirror" in engine.backend.providers[0]
        expected = reference.classify(frame, panes)
        got = engine.classify(frame, panes)
    for want, have in zip(expected.panes, got.panes):
        scale = max(float(np.abs(want.feature_maps).max()), 1e-12)
        assert float(np.abs(have.feature_maps - want.feature_maps).max()) / scale <= 1e-4
    assert abs(got.probability - expected.probability) <= 1e-4


def test_a_partial_shape_reader_leaves_the_graph_alone():
    """A reader of the input that is not a whole-shape Shape (here: Shape with end=1) would see 2N where
    it expects N in a way one Div cannot fix: the graph is returned unchanged."""
    import copy

    exported = backbone_graph(data_path(DEMO_BUNDLE) / "model.int8.onnx")
    model = copy.deepcopy(exported)
    shape = next(n for n in model.graph.node if n.op_type == "Shape")
    from onnx import helper

    shape.attribute.append(helper.make_attribute("end", 1))
    same, changed = host_mirrored_input(model)
    assert not changed and same is model


def test_nodes_without_names_are_rewritten_by_position():
    """Exporters may leave node names empty; the rewrite must not confuse such nodes with each other."""
    import copy

    exported = backbone_graph(data_path(DEMO_BUNDLE) / "model.int8.onnx")
    anonymous = copy.deepcopy(exported)
    for node in anonymous.graph.node:
        node.name = ""
    rewritten, changed = host_mirrored_input(anonymous)
    assert changed
    x = _pixels(2, 128, seed=9)
    np.testing.assert_allclose(_maps(rewritten, np.ascontiguousarray(np.concatenate([x, x[:, :, :, ::-1]]))),
                               _maps(exported, x), rtol=0, atol=1e-6)
