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



_QDQ = ("QuantizeLinear", "DequantizeLinear")


def _constant_ints(graph: Any, name: str) -> list[int] | None:
    """An int initializer's or Constant node's values, None when ``name`` is neither."""
    from onnx import numpy_helper

    for init in graph.initializer:
        if init.name == name:
            return [int(v) for v in numpy_helper.to_array(init).reshape(-1)]
    for node in graph.node:
        if node.op_type == "Constant" and name in node.output:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            return None if value is None else [int(v) for v in numpy_helper.to_array(value).reshape(-1)]
    return None


def write_mirror_images(pixels: Any, count: int) -> None:
    """The host's half of ``host_mirrored_input``: ``pixels`` [2N, 3, S, S] holds N preprocessed panes in
    its first ``count`` rows; write their mirror images (width reversed) into the rest, in place."""
    pixels[count:] = pixels[:count, :, :, ::-1]


def _whole_shape(node: Any) -> bool:
    """A Shape node that returns every dimension (no ``end``, ``start`` absent or 0)."""
    return all(a.name == "start" and a.i == 0 for a in node.attribute)


def host_mirrored_input(model: Any) -> tuple[Any, bool]:
    """A backbone-only graph with the mirror-image average (export --test-time-flip) whose mirrored copy of
    the input is made by the caller: ``pixels`` becomes [2N, 3, S, S], the N panes then their mirror
    images (``write_mirror_images``), and the graph's own ``Concat(pixels, Slice(pixels, step -1))`` is
    removed. Returns (model, True), or the model unchanged and False when it has no such pattern.

    Why: OpenVINO's low-precision pass cannot carry the INT8 input through that Slice and Concat (its
    Slice runs in reference code) and runs the stem convolution in float; with the copy made on the host
    the stem runs INT8 (~1 ms of a 2-pass frame on one core). The result is the same function: the
    mirror is exact and the quantization scales of pixels, mirror and concatenation are one."""
    graph = model.graph
    if len(graph.input) != 1 or graph.input[0].name != PIXELS:
        return model, False
    producers = {out: node for node in graph.node for out in node.output}

    def upstream(name: str) -> str:
        """``name`` traced back through quantize/dequantize pairs."""
        while name in producers and producers[name].op_type in _QDQ:
            name = producers[name].input[0]
        return name

    def is_width_mirror(node: Any) -> bool:
        if node is None or node.op_type != "Slice" or len(node.input) < 5 or upstream(node.input[0]) != PIXELS:
            return False
        axes, steps = _constant_ints(graph, node.input[3]), _constant_ints(graph, node.input[4])
        starts = _constant_ints(graph, node.input[1])
        return axes in ([3], [-1]) and steps == [-1] and starts == [-1]

    nodes = list(graph.node)
    at = next((k for k, n in enumerate(nodes) if n.op_type == "Concat" and len(n.input) == 2
               and any(a.name == "axis" and a.i == 0 for a in n.attribute)
               and upstream(n.input[0]) == PIXELS and is_width_mirror(producers.get(upstream(n.input[1])))), None)
    if at is None:
        return model, False
    # Nodes are told apart by position, not name: exporters may leave names empty.
    mirror_chain = set()
    name = nodes[at].input[1]
    while name in producers and producers[name].op_type in _QDQ + ("Slice",):
        mirror_chain.add(nodes.index(producers[name]))
        if producers[name].op_type == "Slice":
            break
        name = producers[name].input[0]
    # Every other reader of the input must be a whole-shape Shape (the tail splits the batch by it): it
    # now sees 2N, so its first entry is halved. Anything else would see different data: leave it alone.
    derived = {PIXELS} | {out for node in nodes if node.op_type in _QDQ and upstream(node.input[0]) == PIXELS
                          for out in node.output}
    readers = {k for k, n in enumerate(nodes) if k != at and k not in mirror_chain and n.op_type not in _QDQ
               and any(i in derived for i in n.input)}
    if not all(nodes[k].op_type == "Shape" and _whole_shape(nodes[k]) for k in readers):
        return model, False

    import copy

    import numpy as np
    from onnx import helper, numpy_helper

    model = copy.deepcopy(model)
    graph = model.graph
    concatenated = nodes[at].output[0]
    rewritten = []
    for k, node in enumerate(graph.node):
        if k == at:
            continue
        for i, name in enumerate(node.input):
            if name == concatenated:
                node.input[i] = PIXELS
        rewritten.append(node)
        if k in readers:
            halved = node.output[0]
            node.output[0] = f"{halved}/host_mirrored"
            divisor = f"{halved}/host_mirrored_divisor"
            graph.initializer.append(numpy_helper.from_array(np.array([2, 1, 1, 1], dtype=np.int64), divisor))
            rewritten.append(helper.make_node("Div", [node.output[0], divisor], [halved], name=f"{halved}/halved"))
    # Drop what no longer feeds anything (the mirror Slice and its quantization).
    wanted = {o.name for o in graph.output}
    while True:
        used = wanted | {i for n in rewritten for i in n.input}
        kept = [n for n in rewritten if any(o in used for o in n.output)]
        if len(kept) == len(rewritten):
            break
        rewritten = kept
    del graph.node[:]
    graph.node.extend(rewritten)
    used = {i for n in rewritten for i in n.input}
    for init in [init for init in graph.initializer if init.name not in used]:
        graph.initializer.remove(init)
    return model, True
