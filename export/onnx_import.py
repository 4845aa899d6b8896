"""An ONNX image classifier made elsewhere -> the bundle's backbone graph and NumPy head.

Accepted: one float input [N, 3, H, W] (H = W, or dynamic with ``image_size`` given), one output of
class scores [N, K] (a trailing Softmax, or Sigmoid for K = 1, is dropped: the head applies it). When
the scores come from global average pooling followed by Gemm or MatMul(+Add) (with only Flatten,
Reshape or Squeeze between), the graph is cut at the pooling: the cut graph returns the feature maps
and the Gemm's weights become the head, so the CAM is exact. Any other tail keeps the model whole; its
scores are returned as K x 1 x 1 maps and the bundle records that there is no CAM.

The batch dimension is made symbolic and checked by running two panes through ONNX Runtime: a graph
that fixes batch 1 internally is refused rather than wrong on the second pane. A model whose opset is
below the preprocessing graph's is converted with onnx's version converter (merely relabelling the
opset would change what ops such as Reshape or ReduceMean mean).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_thyroid.errors import InputError
from edge_thyroid.head import CAM_EXACT, CAM_GRADIENT, CAM_NONE, FusionHead
from edge_thyroid.kernels.onnx_graph import OPSET, PIXELS

from .onnx_export import FEATURE_MAPS
from .class_scores import class_scores_head, malignant_set, outputs_record

POOLING_OPS = ("GlobalAveragePool", "ReduceMean")
RESHAPING_OPS = ("Flatten", "Reshape", "Squeeze")
ACTIVATIONS = ("Softmax", "Sigmoid")
BATCH = "panes"


@dataclass(frozen=True)
class ImportedOnnx:
    """The backbone graph (pixels -> feature_maps), its head, and what was found, for the model card."""

    backbone: onnx.ModelProto
    head: FusionHead
    image_size: int
    num_outputs: int
    outputs: dict
    split: str                     # "global average pooling -> Gemm" / "whole model (no CAM)"
    metadata: dict[str, str] = field(default_factory=dict)


def import_onnx(model: onnx.ModelProto, *, source: str, image_size: int | None = None, channel_order: str = "RGB",
                modality: str = "bmode", malignant: Sequence[int] | None = None) -> ImportedOnnx:
    """Check, normalise and cut an ONNX classifier (see the module docstring). ``channel_order`` is the
    order the model expects; BGR gets a channel flip in front of it (the preprocessing produces RGB)."""
    model = _at_supported_opset(model, source)
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise InputError(f"{source}: the graph has {len(inputs)} inputs and {len(graph.output)} outputs "
                         f"({', '.join(o.name for o in graph.output)}); expected an image classifier with one "
                         "image input and one output of class scores (detection and segmentation models are not supported)")
    size = _input_size(inputs[0], image_size, source)
    _make_batch_symbolic(inputs[0], graph.output[0])
    scores_name, activation = _drop_activation(model)
    num_outputs = _scores_width(model, scores_name, size, source)
    if activation == "Sigmoid" and num_outputs != 1:
        raise InputError(f"{source}: the model ends in a Sigmoid over {num_outputs} outputs (multi-label); expected "
                         "one logit with a Sigmoid, or class scores with a Softmax")
    chosen = malignant_set(num_outputs, malignant, source)
    tail = _gap_linear_tail(model, scores_name)
    if tail is not None:
        maps_name, weight, bias = tail
        backbone = _extract(model, inputs[0].name, maps_name)
        cam_mode = CAM_EXACT if num_outputs <= 2 else CAM_GRADIENT
        split = "global average pooling -> linear: cut there, the head runs in NumPy (exact CAM)"
    else:
        backbone = _extract(model, inputs[0].name, scores_name)
        backbone = _scores_as_maps(backbone)
        weight, bias = np.eye(num_outputs), np.zeros(num_outputs)
        cam_mode = CAM_NONE
        split = "kept whole: the scores do not come from global average pooling + linear, so no CAM"
    _rename_io(backbone, PIXELS, FEATURE_MAPS)
    if channel_order.upper() == "BGR":
        _flip_channels_in_front(backbone)
    elif channel_order.upper() != "RGB":
        raise InputError(f"--channel-order {channel_order!r}; expected RGB or BGR")
    _check_runs(backbone, size, source)
    head = class_scores_head(modality, weight, bias, chosen, cam_mode)
    outputs = {**outputs_record(num_outputs, chosen), "dropped_activation": activation}
    metadata = {p.key: p.value for p in model.metadata_props}
    return ImportedOnnx(backbone, head, size, num_outputs, outputs, split, metadata)


def _at_supported_opset(model: onnx.ModelProto, source: str) -> onnx.ModelProto:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    others = sorted(o.domain for o in model.opset_import if o.domain not in ("", "ai.onnx"))
    if opset is None:
        raise InputError(f"{source}: the model imports no standard ONNX opset; expected ai.onnx opset 7 to "
                         f"{onnx.defs.onnx_opset_version()}")
    if others:
        raise InputError(f"{source}: the model uses custom operator domains {others}; expected standard ONNX operators only")
    if model.ir_version > onnx.IR_VERSION:
        raise InputError(f"{source}: IR version {model.ir_version} is newer than this onnx reads ({onnx.IR_VERSION}); "
                         "re-export with an older exporter or upgrade onnx")
    if opset > onnx.defs.onnx_opset_version():
        raise InputError(f"{source}: opset {opset} is newer than this onnx supports ({onnx.defs.onnx_opset_version()})")
    try:
        onnx.checker.check_model(model)
        if opset < OPSET:
            from onnx import version_converter

            model = version_converter.convert_version(model, OPSET)
        return onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as exc:  # the checker and converter raise several types; each means "cannot use this graph"
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{source}: opset {opset} graph cannot be checked or converted to opset {OPSET} ({first}); "
                         "expected a valid ONNX model (re-export it with opset 18 or newer)") from None


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in value.type.tensor_type.shape.dim]


def _input_size(value: onnx.ValueInfoProto, image_size: int | None, source: str) -> int:
    dims = _dims(value)
    elem = value.type.tensor_type.elem_type
    if elem != TensorProto.FLOAT or len(dims) != 4 or (isinstance(dims[1], int) and dims[1] != 3):
        raise InputError(f"{source}: input {value.name!r} is {TensorProto.DataType.Name(elem).lower()} {dims}; "
                         "expected float32 [N, 3, H, W] (an NCHW image batch)")
    height, width = dims[2], dims[3]
    fixed = [d for d in (height, width) if isinstance(d, int) and d > 0]
    if len(fixed) == 2 and height != width:
        raise InputError(f"{source}: input is {height}x{width}; expected a square input (panes are resized to S x S)")
    if fixed and image_size is not None and image_size != fixed[0]:
        raise InputError(f"{source}: the model's input is fixed at {fixed[0]}x{fixed[0]}, but --image-size "
                         f"{image_size} was given")
    size = fixed[0] if fixed else image_size
    if size is None:
        raise InputError(f"{source}: the input size is dynamic ({dims}); pass --image-size S")
    return int(size)


def _make_batch_symbolic(graph_input: onnx.ValueInfoProto, graph_output: onnx.ValueInfoProto) -> None:
    for value in (graph_input, graph_output):
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = BATCH


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def _consumers(model: onnx.ModelProto, name: str) -> list[onnx.NodeProto]:
    return [node for node in model.graph.node if name in node.input]


def _drop_activation(model: onnx.ModelProto) -> tuple[str, str | None]:
    """The pre-activation scores: a final Softmax/Sigmoid is left to the head (it applies the same)."""
    output = model.graph.output[0].name
    node = _producers(model).get(output)
    if node is not None and node.op_type in ACTIVATIONS:
        return node.input[0], node.op_type
    return output, None


def _scores_width(model: onnx.ModelProto, name: str, size: int, source: str) -> int:
    shapes = {v.name: _dims(v) for v in [*model.graph.value_info, *model.graph.output]}
    dims = shapes.get(name)
    if dims is None or len(dims) != 2 or not isinstance(dims[1], int) or dims[1] < 1:
        raise InputError(f"{source}: the output is {dims if dims is not None else 'of unknown shape'}; expected class "
                         "scores [N, K] with K known (an image classifier)")
    return int(dims[1])


def _constant(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    node = _producers(model).get(name)
    if node is not None and node.op_type == "Constant":
        return numpy_helper.to_array(node.attribute[0].t)
    return None


def _gap_linear_tail(model: onnx.ModelProto, scores: str) -> tuple[str, np.ndarray, np.ndarray] | None:
    """(feature maps tensor, weight [K, C], bias [K]) when scores = linear(flatten(GAP(maps))), else None."""
    producers = _producers(model)
    node = producers.get(scores)
    bias = None
    if node is not None and node.op_type == "Add":
        constants = [(i, _constant(model, name)) for i, name in enumerate(node.input)]
        found = [(i, c) for i, c in constants if c is not None]
        if len(found) != 1:
            return None
        bias = found[0][1].reshape(-1)
        node = producers.get(node.input[1 - found[0][0]])
    if node is None or node.op_type not in ("Gemm", "MatMul"):
        return None
    weight = _constant(model, node.input[1])
    if weight is None or weight.ndim != 2:
        return None
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Gemm":
        if attributes.get("transA", 0):
            return None
        weight = weight.T if not attributes.get("transB", 0) else weight  # -> [K, C]
        weight = weight * attributes.get("alpha", 1.0)
        if len(node.input) > 2 and node.input[2]:
            gemm_bias = _constant(model, node.input[2])
            if gemm_bias is None:
                return None
            bias = np.broadcast_to(gemm_bias.reshape(-1) * attributes.get("beta", 1.0), weight.shape[:1]).copy()
    else:
        weight = weight.T
    if bias is None:
        bias = np.zeros(weight.shape[0])
    if bias.shape != (weight.shape[0],):
        return None
    pooled = node.input[0]
    while (step := producers.get(pooled)) is not None and step.op_type in RESHAPING_OPS:
        pooled = step.input[0]
    if step is None or step.op_type not in POOLING_OPS or not _pools_space(model, step):
        return None
    maps = step.input[0]
    # The cut keeps everything upstream of ``maps``; something else reading the pooled path would be lost.
    if len(_consumers(model, maps)) != 1:
        return None
    return maps, weight.astype(np.float64), bias.astype(np.float64)


def _pools_space(model: onnx.ModelProto, node: onnx.NodeProto) -> bool:
    if node.op_type == "GlobalAveragePool":
        return True
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    axes = attributes.get("axes")
    if axes is None and len(node.input) > 1:  # opset 18 moved ReduceMean's axes to an input
        axes_value = _constant(model, node.input[1])
        axes = None if axes_value is None else axes_value.tolist()
    return axes is not None and sorted(int(a) % 4 for a in axes) == [2, 3]


def _extract(model: onnx.ModelProto, input_name: str, output_name: str) -> onnx.ModelProto:
    from onnx.utils import Extractor

    return Extractor(model).extract_model([input_name], [output_name])


def _scores_as_maps(model: onnx.ModelProto) -> onnx.ModelProto:
    """[N, K] scores -> [N, K, 1, 1], so the runtime's pooling (identity on 1x1) and head apply unchanged."""
    graph = model.graph
    scores = graph.output[0].name
    axes = helper.make_tensor("scores_as_maps/axes", TensorProto.INT64, [2], [2, 3])
    graph.initializer.append(axes)
    graph.node.append(helper.make_node("Unsqueeze", [scores, axes.name], ["scores_as_maps/out"]))
    width = _dims(graph.output[0])[1]
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("scores_as_maps/out", TensorProto.FLOAT, [BATCH, width, 1, 1]))
    return model


def _rename_io(model: onnx.ModelProto, input_name: str, output_name: str) -> None:
    graph = model.graph
    rename = {graph.input[0].name: input_name, graph.output[0].name: output_name}
    for node in graph.node:
        node.input[:] = [rename.get(name, name) for name in node.input]
        node.output[:] = [rename.get(name, name) for name in node.output]
    graph.input[0].name, graph.output[0].name = input_name, output_name


def _flip_channels_in_front(model: onnx.ModelProto) -> None:
    """The preprocessing produces RGB; a BGR model gets its channels reversed in-graph (the mean and std
    given for it are reversed to match by the caller)."""
    graph = model.graph
    flipped = "bgr_flip/out"
    for node in graph.node:
        node.input[:] = [flipped if name == PIXELS else name for name in node.input]
    order = helper.make_tensor("bgr_flip/order", TensorProto.INT64, [3], [2, 1, 0])
    graph.initializer.append(order)
    graph.node.insert(0, helper.make_node("Gather", [PIXELS, order.name], [flipped], axis=1))


def _check_runs(model: onnx.ModelProto, size: int, source: str) -> None:
    """Two panes through ONNX Runtime: catches a batch of 1 baked into a Reshape, and anything else
    the runtime refuses, at export rather than at the first frame."""
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        out = session.run(None, {PIXELS: np.zeros((2, 3, size, size), np.float32)})[0]
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidArgument/RuntimeException types
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{source}: the model does not run on a batch of 2 panes of {size}x{size} ({first}); "
                         "expected a classifier with a free batch dimension (no batch size of 1 fixed inside the graph)") from None
    if out.ndim != 4 or out.shape[0] != 2:
        raise InputError(f"{source}: the cut model returns shape {out.shape} for 2 panes; expected [2, C, h, w]")
