"""The FP32 reconstruction of an INT8 (QDQ) bundle model, for the benchmark peers that run float
models (PyTorch eager, plain ONNX Runtime) when a bundle no longer carries its FP32 model. Bench
tooling, not runtime: an edge device never needs it."""

from __future__ import annotations

from typing import Any

from edge_thyroid.errors import BundleError


def dequantized_graph(model: Any) -> Any:
    """The FP32 reconstruction of a QDQ-quantized model: every quantized initializer dequantized to the
    float values the INT8 model computes with ((q - zero_point) * scale, per channel where it was), and
    the activations' QuantizeLinear -> DequantizeLinear pairs removed. What remains is a float model
    with the INT8 model's weights: what PyTorch eager or plain ONNX Runtime would run if a user had only
    the INT8 bundle. Its outputs differ from the INT8 model's by the activations' quantization error.

    Only the QDQ format (what ``edge-thyroid export`` writes) is handled; QLinear* operators are refused."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())  # never edit the caller's copy
    graph = model.graph
    qoperators = sorted({n.op_type for n in graph.node if n.op_type.startswith(("QLinear", "ConvInteger", "MatMulInteger"))})
    if qoperators:
        raise BundleError(f"the model uses quantized operators {qoperators} (QOperator format); the FP32 "
                          "reconstruction expects QDQ (QuantizeLinear/DequantizeLinear around float operators)")
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)

    def broadcast(values: np.ndarray, like: np.ndarray, node: Any) -> np.ndarray:
        attributes = {a.name: a for a in node.attribute}
        if "block_size" in attributes and attributes["block_size"].i:
            raise BundleError(f"{node.op_type} {node.name!r} uses blocked quantization, which the FP32 reconstruction does not handle")
        if values.ndim == 0 or values.size == 1:
            return values.reshape(())
        axis = attributes["axis"].i if "axis" in attributes else 1
        shape = [1] * like.ndim
        shape[axis % like.ndim] = values.size
        return values.reshape(shape)

    folded: dict[str, np.ndarray] = {}
    kept = []
    for node in graph.node:  # topological order: a weight's QuantizeLinear comes before its DequantizeLinear
        inputs = [constants.get(name, folded.get(name)) for name in node.input]
        if node.op_type == "QuantizeLinear" and all(v is not None for v in inputs):
            x, scale = inputs[0], inputs[1]
            zero = inputs[2] if len(inputs) > 2 else np.zeros((), np.uint8)
            info = np.iinfo(zero.dtype)
            q = np.rint(x / broadcast(scale, x, node)) + broadcast(zero, x, node).astype(np.float64)
            folded[node.output[0]] = np.clip(q, info.min, info.max).astype(zero.dtype)
        elif node.op_type == "DequantizeLinear" and all(v is not None for v in inputs):
            q, scale = inputs[0], inputs[1]
            zero = inputs[2] if len(inputs) > 2 else np.zeros((), q.dtype)
            # (q - zp) * scale in the scale's float type, as the runtime computes it
            folded[node.output[0]] = ((q.astype(scale.dtype) - broadcast(zero, q, node).astype(scale.dtype))
                                      * broadcast(scale, q, node)).astype(scale.dtype)
        else:
            kept.append(node)
    # Activations: DequantizeLinear(QuantizeLinear(x)) is x, except that a range starting exactly at 0
    # is a ReLU the quantizer folded into the QuantizeLinear (uint8, zero point 0): it becomes a Relu again.
    producers = {out: node for node in kept for out in node.output}
    rename: dict[str, str] = {}
    relus: dict[str, str] = {}  # DequantizeLinear output -> the QuantizeLinear input it rectifies
    for node in kept:
        source = producers.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if source is not None and source.op_type == "QuantizeLinear":
            zero = constants.get(source.input[2]) if len(source.input) > 2 else np.zeros((), np.uint8)
            if zero is not None and zero.size == 1 and int(zero.reshape(())) == np.iinfo(zero.dtype).min:
                relus[node.output[0]] = source.input[0]
            else:
                rename[node.output[0]] = source.input[0]
    outputs = {o.name for o in graph.output}
    nodes = []
    for node in kept:
        if node.output and node.output[0] in rename and node.output[0] not in outputs:
            continue
        for i, name in enumerate(node.input):
            node.input[i] = rename.get(name, name)
        if node.output and node.output[0] in relus:
            node.CopyFrom(onnx.helper.make_node("Relu", [relus[node.output[0]]], [node.output[0]], name=node.name))
        elif node.output and node.output[0] in rename:  # a graph output stays a named tensor
            node.CopyFrom(onnx.helper.make_node("Identity", [rename[node.output[0]]], [node.output[0]]))
        nodes.append(node)
    nodes = _live_nodes(nodes, outputs)
    used = {name for node in nodes for name in [*node.input, *_subgraph_names(node)]}
    initializers = [i for i in graph.initializer if i.name in used and i.name not in folded]
    initializers += [numpy_helper.from_array(np.ascontiguousarray(v), name) for name, v in folded.items() if name in used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    live = {out for node in nodes for out in node.output} | {i.name for i in graph.input} | {i.name for i in initializers}
    kept_info = [v for v in graph.value_info if v.name in live]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    return model


def _subgraph_names(node: Any) -> set[str]:
    """Every tensor name a node's subgraphs (Loop/If bodies) read, so outer tensors they use stay alive."""
    names: set[str] = set()
    for attribute in node.attribute:
        for graph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
            for inner in graph.node:
                names.update(inner.input)
                names |= _subgraph_names(inner)
    return names


def _live_nodes(nodes: list[Any], outputs: set[str]) -> list[Any]:
    """The nodes the graph outputs depend on, in their original order."""
    needed = set(outputs)
    live = []
    for node in reversed(nodes):
        if any(out in needed for out in node.output):
            live.append(node)
            needed.update(node.input)
            needed |= _subgraph_names(node)
    return live[::-1]
