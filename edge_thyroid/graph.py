"""Graph surgery on a bundle's fused model, shared by the backends and the benchmark peers that run
the backbone without the in-graph preprocessing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import BundleError
from .kernels.onnx_graph import PIXELS


def backbone_graph(model_path: str | Path) -> Any:
    """The backbone-only ONNX model (pixels [N,3,S,S] -> feature_maps) cut out of a bundle's fused
    model: exactly the weights and quantization our engine runs, without the in-graph preprocessing."""
    import onnx
    from onnx import TensorProto, helper
    from onnx.utils import Extractor

    model = onnx.load(str(model_path))
    produced = {out for node in model.graph.node for out in node.output}
    candidates = [name for name in (PIXELS, f"pre/{PIXELS}") if name in produced]
    if not candidates:
        if any(i.name == PIXELS for i in model.graph.input):
            return model  # already a backbone-only graph
        raise BundleError(f"{model_path} has no {PIXELS!r} tensor between preprocessing and backbone; "
                          "expected a model written by 'edge-thyroid export'")
    pixels = candidates[0]
    size = _pixels_size(model)
    model.graph.value_info.append(helper.make_tensor_value_info(pixels, TensorProto.FLOAT, ["panes", 3, size, size]))
    sub = Extractor(model).extract_model([pixels], ["feature_maps"])
    if pixels != PIXELS:
        for node in sub.graph.node:
            for i, name in enumerate(node.input):
                if name == pixels:
                    node.input[i] = PIXELS
        sub.graph.input[0].name = PIXELS
    return sub


def _pixels_size(model: Any) -> int:
    for node in model.graph.node:
        if node.op_type == "Loop":
            body = next(a.g for a in node.attribute if a.name == "body")
            for out in body.output:
                dims = out.type.tensor_type.shape.dim
                if len(dims) == 3 and dims[0].dim_value:
                    return int(dims[0].dim_value)
    raise BundleError("cannot find the pane size in the fused model's preprocessing loop")

