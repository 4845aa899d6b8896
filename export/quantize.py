"""INT8 (static, calibrated, QDQ) and FP16 versions of the backbone, re-fused with the float
preprocessing graph.

Only the backbone (``pixels -> feature_maps``) is quantized or converted; the Loop/Slice/Resize
preprocessing stays float32 and is merged in front afterwards, exactly as :func:`export_fused_onnx`
does for FP32, so every precision takes the same uint8 frame + ROIs and returns float32 feature maps.

INT8 schemes (per target):
- ONNX Runtime (CPU): uint8 asymmetric activations, int8 symmetric per-channel weights. On AVX2
  without VNNI this is the fast path; the S8S8 default leaves convolutions in float and gains nothing.
- TensorRT: int8 symmetric activations and weights (TensorRT's explicit quantization accepts only
  zero-point-0 int8 Q/DQ).

What got quantized is checked by counting nodes: a convolution counts as int8 only when both its
activation and its weight come out of a DequantizeLinear.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx

from edge_thyroid.bundle import Target
from edge_thyroid.errors import InputError, MissingDependencyError
from edge_thyroid.kernels.reference import PreprocessSpec

from .calibration import CalibrationOptions, CalibrationSet, calibrate, default_cache_dir
from .onnx_export import fuse_preprocessing  # noqa: F401  (re-exported: bundle_export uses it from here)

# Aliases for --fp32-layers: the layers most often sensitive to 8-bit rounding.
LAYER_ALIASES = ("first", "last", "stem")


def model_sha256(model: onnx.ModelProto) -> str:
    """sha256 of the serialized model (torch's ONNX export is deterministic for the same weights)."""
    return hashlib.sha256(model.SerializeToString()).hexdigest()


@dataclass(frozen=True)
class QuantScheme:
    activation: str       # "uint8" / "int8"
    weight: str
    symmetric_activations: bool
    # quantize_static extra options beyond symmetry (TensorRT wants float weights behind a Q/DQ
    # pair and float biases: its explicit quantization has no int32 bias path).
    extra: tuple[tuple[str, bool], ...] = ()

    def quant_types(self) -> tuple[Any, Any]:
        from onnxruntime.quantization import QuantType

        names = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
        return names[self.activation], names[self.weight]


SCHEMES: dict[Target, QuantScheme] = {
    Target.ONNXRUNTIME: QuantScheme("uint8", "int8", symmetric_activations=False),
    Target.TENSORRT: QuantScheme("int8", "int8", symmetric_activations=True,
                                 extra=(("AddQDQPairToWeight", True), ("QuantizeBias", False), ("DedicatedQDQPair", True))),
}


@dataclass(frozen=True)
class QuantConfig:
    calibration: CalibrationOptions = field(default_factory=CalibrationOptions)
    target: Target = Target.ONNXRUNTIME
    fp32_layers: tuple[str, ...] = ()     # node names, or the aliases "first" / "last"
    per_channel: bool = True
    scheme_override: QuantScheme | None = None  # e.g. S8S8 for a benchmark; default: the target's

    @property
    def scheme(self) -> QuantScheme:
        return self.scheme_override or SCHEMES[self.target]


@dataclass
class QuantResult:
    model: onnx.ModelProto        # quantized backbone: pixels -> feature_maps
    report: dict[str, Any]


def node_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Op types of the top-level graph and every subgraph (the preprocessing Loop body included)."""
    counts: Counter[str] = Counter()

    def visit(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            counts[node.op_type] += 1
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    visit(attribute.g)

    visit(model.graph)
    return dict(sorted(counts.items()))


def conv_quantization(model: onnx.ModelProto) -> dict[str, Any]:
    """Which convolutions run in int8: both the activation and the weight come from a DequantizeLinear."""
    producers = {out: node for node in model.graph.node for out in node.output}

    def dequantized(name: str) -> bool:
        node = producers.get(name)
        return node is not None and node.op_type == "DequantizeLinear"

    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    float_convs = [node.name for node in convs if not (dequantized(node.input[0]) and dequantized(node.input[1]))]
    return {"convs": len(convs), "int8_convs": len(convs) - len(float_convs), "float_convs": float_convs}


def resolve_layers(model: onnx.ModelProto, layers: Sequence[str]) -> list[str]:
    """Node names for ``layers``: a node name; "first"/"last" (the first/last Conv in topological
    order); "stem" (every node before the first residual stage); or a module path such as "layer1"
    or "layer2/layer2.0", which takes every node of that module (its convolutions *and* its residual
    additions: keeping only the convolutions in float leaves the residual stream quantized)."""
    nodes = [node.name for node in model.graph.node]
    convs = [node.name for node in model.graph.node if node.op_type == "Conv"]
    # Module paths may sit under a wrapper's scope (the mirror-image average exports the backbone as
    # "/features/layer1/..."), so a module is matched as a path segment anywhere in the name.
    first_stage = next((i for i, name in enumerate(nodes) if "/layer" in name), None)
    resolved = []
    for layer in layers:
        segment = "/" + layer.strip("/") + "/"
        if layer == "first" and convs:
            resolved.append(convs[0])
        elif layer == "last" and convs:
            resolved.append(convs[-1])
        elif layer == "stem" and first_stage:
            resolved.extend(nodes[:first_stage])
        elif layer in nodes:
            resolved.append(layer)
        elif any(segment in name for name in nodes):
            resolved.extend(name for name in nodes if segment in name)
        else:
            raise InputError(f"layer {layer!r} is not in the backbone; expected {', '.join(LAYER_ALIASES)}, a module "
                             f"such as layer1 or layer2/layer2.0, or a node name such as {convs[:2]}")
    return list(dict.fromkeys(resolved))


# The last prepared backbone (sha256 -> bytes): trying several methods or layer exclusions on one
# model in one process prepares it once.
_prepared_memo: dict[str, bytes] = {}


def prepare(backbone: onnx.ModelProto, directory: Path, digest: str | None = None) -> Path:
    """ONNX Runtime's pre-quantization pass (constant folding, fusions, shape inference) to a file."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    digest = digest or model_sha256(backbone)
    source, prepared = directory / "backbone.onnx", directory / "backbone.prepared.onnx"
    if digest in _prepared_memo:
        prepared.write_bytes(_prepared_memo[digest])
        return prepared
    onnx.save_model(backbone, str(source))
    # The backbone's shapes are static apart from the pane count: ONNX shape inference is enough,
    # the (slow) symbolic pass adds nothing.
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    source.unlink()
    _prepared_memo.clear()
    _prepared_memo[digest] = prepared.read_bytes()
    return prepared


def quantize_backbone(backbone: onnx.ModelProto, frames: CalibrationSet, spec: PreprocessSpec,
                      config: QuantConfig | None = None, *, cache_dir: Path | None = None,
                      progress: bool = False) -> QuantResult:
    """Static INT8 quantization of the backbone, calibrated on ``frames`` (cached by model + data + method)."""
    from onnxruntime.quantization import QuantFormat, quantize_static

    config = config or QuantConfig()
    scheme = config.scheme
    calibration_options = replace(config.calibration, symmetric=scheme.symmetric_activations)
    started = time.perf_counter()
    digest = model_sha256(backbone)
    activation_type, weight_type = scheme.quant_types()
    with tempfile.TemporaryDirectory(prefix="edge_thyroid_quant_") as scratch:
        prepared = prepare(backbone, Path(scratch), digest)
        prepared_model = onnx.load(str(prepared))
        excluded = resolve_layers(prepared_model, config.fp32_layers)
        calibration = calibrate(prepared, digest, frames, spec, calibration_options,
                                Path(cache_dir or default_cache_dir()), progress=progress)
        output = Path(scratch) / "backbone.int8.onnx"
        extra = {"ActivationSymmetric": scheme.symmetric_activations, "WeightSymmetric": True, **dict(scheme.extra)}
        quant_logger = logging.getLogger()
        level = quant_logger.level
        quant_logger.setLevel(logging.ERROR)  # quantize_static logs advice we have already followed
        try:
            with contextlib.redirect_stdout(sys.stderr):
                quantize_static(str(prepared), str(output), None, quant_format=QuantFormat.QDQ,
                                per_channel=config.per_channel, activation_type=activation_type,
                                weight_type=weight_type, nodes_to_exclude=excluded,
                                calibrate_method=calibration_options.method, extra_options=extra,
                                calibration_cache_path=calibration.ranges_path)
        finally:
            quant_logger.setLevel(level)
        quantized = _prune_opsets(onnx.load(str(output)))
    convs = conv_quantization(quantized)
    report = {
        **calibration_options.describe(),
        "data": calibration.data,
        "scheme": {"activations": scheme.activation, "weights": scheme.weight,
                   "weights_per_channel": config.per_channel,
                   "activations_symmetric": scheme.symmetric_activations, "format": "QDQ", "target": config.target.value,
                   **dict(scheme.extra)},
        "fp32_layers": excluded,
        "nodes": {"before": node_counts(prepared_model), "after": node_counts(quantized)},
        "convolutions": convs,
        "backbone_sha256": digest,
        "cache": {"key": calibration.key, "hit": calibration.cache_hit},
        "seconds": round(time.perf_counter() - started, 2),
    }
    return QuantResult(quantized, report)


def convert_fp16(backbone: onnx.ModelProto) -> onnx.ModelProto:
    """FP16 weights and arithmetic with float32 I/O (Casts at the edges), for GPU execution providers."""
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise MissingDependencyError("onnxconverter-common", "export", "FP16 conversion") from None
    with contextlib.redirect_stdout(sys.stderr), _quiet_warnings():
        converted = float16.convert_float_to_float16(backbone, keep_io_types=True, disable_shape_infer=False)
    return _prune_opsets(converted)


@contextlib.contextmanager
def _quiet_warnings():
    import warnings

    with warnings.catch_warnings():
        # Values outside fp16's range are clamped and reported per tensor: ResNet weights never are.
        warnings.simplefilter("ignore")
        yield


def _prune_opsets(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop opset imports no node uses (ORT's optimizer adds a dozen; other runtimes may balk)."""
    used = {node.domain for node in model.graph.node}
    keep = [o for o in model.opset_import if o.domain in used or o.domain in ("", "ai.onnx")]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    return model


