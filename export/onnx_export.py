"""ONNX export of the backbone with the preprocessing fused in front of it.

The exported graph: frame uint8 [H, W, 3] BGR + rois int64 [N, 4]  ->  feature_maps float32
[N, C, h, w]. The tiny fusion head runs in NumPy in the runtime (exact CAMs, per-pane caching).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import onnx
import torch
from onnx import compose

from edge_thyroid.kernels.onnx_graph import FRAME, OPSET, PIXELS, ROIS, build_preprocess_graph
from edge_thyroid.kernels.reference import PreprocessSpec

from .models import BackboneFeatures, MultimodalClassifier

FEATURE_MAPS = "feature_maps"


def export_backbone_onnx(model: MultimodalClassifier, image_size: int, mirror_roll: int | None = None) -> onnx.ModelProto:
    """Backbone alone: pixels [N, 3, S, S] -> feature_maps [N, C, h, w], dynamic N. ``mirror_roll`` not
    None: each pane's maps averaged with its mirror image's, rolled that many cells (export/test_time.py),
    inside the graph."""
    features: torch.nn.Module = BackboneFeatures(model.backbone_name, model.backbone)
    if mirror_roll is not None:
        from .test_time import FlipAveraged

        features = FlipAveraged(features, mirror_roll)
    return export_features_onnx(features, image_size)


def export_features_onnx(module: torch.nn.Module, image_size: int) -> onnx.ModelProto:
    """Any module pixels [N, 3, S, S] -> maps [N, C, h, w] as the bundle's backbone graph, dynamic N."""
    module = module.eval()
    # A batch of 2 keeps the batch dimension symbolic (a batch of 1 gets specialised away).
    example = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (example,), buffer, input_names=[PIXELS], output_names=[FEATURE_MAPS],
            opset_version=OPSET, dynamic_axes={PIXELS: {0: "panes"}, FEATURE_MAPS: {0: "panes"}},
            do_constant_folding=True, dynamo=False,
        )
    return onnx.load_from_string(buffer.getvalue())


def export_fused_onnx(model: MultimodalClassifier, spec: PreprocessSpec) -> onnx.ModelProto:
    """Preprocessing graph + backbone graph merged into one model: (frame, rois) -> feature_maps."""
    return fuse_preprocessing(export_backbone_onnx(model, spec.image_size), spec)


def fuse_preprocessing(backbone: onnx.ModelProto, spec: PreprocessSpec) -> onnx.ModelProto:
    """The float preprocessing graph in front of any backbone (fp32, fp16 or QDQ int8):
    (frame uint8, rois int64) -> feature_maps float32."""
    preprocess = build_preprocess_graph(spec, output_name=PIXELS)
    backbone = onnx.ModelProto.FromString(backbone.SerializeToString())
    # merge_models needs one opset per domain; the preprocessing ops (Loop, Slice, Resize, Gather,
    # Cast) mean the same in every opset from 18 on, so the higher of the two serves both.
    version = max([preprocess.opset_import[0].version] + [o.version for o in backbone.opset_import if o.domain in ("", "ai.onnx")])
    for model in (preprocess, backbone):
        for opset in model.opset_import:
            if opset.domain in ("", "ai.onnx"):
                opset.version = version
    backbone.ir_version = preprocess.ir_version = min(backbone.ir_version, preprocess.ir_version)
    fused = compose.merge_models(preprocess, backbone, io_map=[(PIXELS, PIXELS)],
                                 prefix1="pre/", prefix2="", producer_name="edge_thyroid")
    rename = {f"pre/{FRAME}": FRAME, f"pre/{ROIS}": ROIS}
    for graph_input in fused.graph.input:
        graph_input.name = rename.get(graph_input.name, graph_input.name)
    _rename_uses(fused.graph, rename)
    onnx.checker.check_model(fused)
    return fused


def _rename_uses(graph: onnx.GraphProto, rename: dict[str, str]) -> None:
    """Rename tensor uses in ``graph`` and every subgraph (the Loop body reads the frame from outside)."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _rename_uses(attribute.g, rename)


def save_onnx(model: onnx.ModelProto, path: str | Path) -> None:
    onnx.save_model(model, str(path))
