"""A torchvision classifier trained elsewhere (its own last layer included) -> what a bundle is built from.

The architecture is recognised from the state_dict's keys and then loaded strictly, so a ResNet101 or
a VGG16-BN is refused by name rather than half-loaded. Where the classifier is one linear layer after
global average pooling (ResNet50, DenseNet121, GoogLeNet) that layer becomes the NumPy fusion head and
CAMs stay exact; VGG16's classifier is an MLP over a 7x7 grid, so the whole network is exported, its
class scores become 1x1 "feature maps" and the bundle says it has no CAM.

Outputs: 1 logit (sigmoid), 2 classes (softmax; p(malignant) = sigmoid of the logit difference, so
the head stays linear and exact) or N classes with a named malignant set (see edge_thyroid.head.ClassMap).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from edge_thyroid.errors import InputError
from edge_thyroid.head import CAM_EXACT, CAM_GRADIENT, CAM_NONE, FusionHead

from .class_scores import class_scores_head, malignant_set, outputs_record
from .models import BackboneFeatures
from .onnx_export import FEATURE_MAPS, export_features_onnx

# Keys only this architecture's state_dict has (checked in order: the first match names it).
SIGNATURES: dict[str, tuple[str, ...]] = {
    "resnet50": ("layer3.5.conv3.weight", "layer4.2.conv3.weight", "fc.weight"),
    "densenet121": ("features.denseblock3.denselayer24.conv2.weight", "features.denseblock4.denselayer16.conv2.weight",
                    "classifier.weight"),
    "vgg16": ("features.28.weight", "classifier.6.weight"),
    "googlenet": ("inception5b.branch4.1.conv.weight", "fc.weight"),
}
# The final linear layer of each architecture, the one whose rows are the classes.
FINAL_LAYER = {"resnet50": "fc", "densenet121": "classifier", "vgg16": "classifier.6", "googlenet": "fc"}
# GoogLeNet's auxiliary classifiers only exist in training; inference never runs them.
TRAINING_ONLY_PREFIXES = ("aux1.", "aux2.")


@dataclass(frozen=True)
class ImportedClassifier:
    """A loaded torchvision classifier and the head that reproduces its p(malignant)."""

    architecture: str
    model: nn.Module              # the whole torchvision model, eval mode (the parity reference)
    features: nn.Module           # pixels -> feature maps (or class scores as N x K x 1 x 1)
    head: FusionHead
    num_outputs: int
    outputs: dict                 # how class scores map to p(malignant), for the model card


class VggScoresAsMaps(nn.Module):
    """VGG16 whole, its N x K scores presented as N x K x 1 x 1 maps, so the runtime's pooling (the
    identity on 1x1) and head apply unchanged.

    VGG's adaptive average pooling to 7x7 is written as two constant matrix products: the same
    arithmetic, but exportable to ONNX at any pane size (torch's exporter only takes sizes whose
    feature map is a multiple of 7, i.e. 224 or 448 px)."""

    def __init__(self, model: nn.Module, image_size: int) -> None:
        super().__init__()
        self.model = model
        grid = model.avgpool.output_size
        rows, cols = (grid, grid) if isinstance(grid, int) else grid
        size = image_size // 32  # VGG16's five 2x2 max-pools
        self.register_buffer("pool_rows", adaptive_pool_matrix(size, rows))
        self.register_buffer("pool_cols", adaptive_pool_matrix(size, cols))

    def pooled(self, pixels: torch.Tensor) -> torch.Tensor:
        maps = self.model.features(pixels)
        return torch.flatten(torch.matmul(torch.matmul(self.pool_rows, maps), self.pool_cols.transpose(0, 1)), 1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.classifier(self.pooled(pixels))[:, :, None, None]

    def to_onnx(self, image_size: int) -> onnx.ModelProto:
        """torch's exporter takes ~20 s over the classifier's 120M weights; the MLP is three Gemms, so
        only the convolutions go through it and the Gemms are appended with their weights as they are."""
        graph_model = export_features_onnx(_Pooled(self), image_size)
        graph = graph_model.graph
        current = "vgg/pooled"
        for node in graph.node:
            node.output[:] = [current if name == FEATURE_MAPS else name for name in node.output]
        for index, layer in enumerate(self.model.classifier):
            if isinstance(layer, nn.Dropout):
                continue  # the identity in eval mode
            out = f"vgg/classifier.{index}"
            if isinstance(layer, nn.Linear):
                weight, bias = f"{out}.weight", f"{out}.bias"
                graph.initializer.extend([numpy_helper.from_array(layer.weight.detach().numpy(), weight),
                                          numpy_helper.from_array(layer.bias.detach().numpy(), bias)])
                graph.node.append(helper.make_node("Gemm", [current, weight, bias], [out], transB=1))
            elif isinstance(layer, nn.ReLU):
                graph.node.append(helper.make_node("Relu", [current], [out]))
            else:
                raise InputError(f"VGG16 classifier layer {index} is a {type(layer).__name__}; expected Linear, ReLU or Dropout")
            current = out
        axes = numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "vgg/axes")
        graph.initializer.append(axes)
        graph.node.append(helper.make_node("Unsqueeze", [current, axes.name], [FEATURE_MAPS]))
        del graph.output[:]
        width = self.model.classifier[-1].out_features
        graph.output.append(helper.make_tensor_value_info(FEATURE_MAPS, onnx.TensorProto.FLOAT, ["panes", width, 1, 1]))
        return graph_model  # checked once fused with the preprocessing (a check here copies 500 MB again)


class _Pooled(nn.Module):
    def __init__(self, vgg: VggScoresAsMaps) -> None:
        super().__init__()
        self.vgg = vgg

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vgg.pooled(pixels)


def export_imported_onnx(imported: "ImportedClassifier", image_size: int) -> onnx.ModelProto:
    """The bundle's backbone graph (pixels -> feature_maps) of an imported classifier."""
    if isinstance(imported.features, VggScoresAsMaps):
        return imported.features.to_onnx(image_size)
    return export_features_onnx(imported.features, image_size)


def adaptive_pool_matrix(size: int, output: int) -> torch.Tensor:
    """[output, size]: row i averages input cells floor(i*size/output) .. ceil((i+1)*size/output) - 1,
    exactly torch's adaptive_avg_pool along one axis."""
    matrix = torch.zeros(output, size)
    for i in range(output):
        start, end = (i * size) // output, -((-(i + 1) * size) // output)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def detect_architecture(state: dict[str, torch.Tensor]) -> str | None:
    for name, keys in SIGNATURES.items():
        if all(key in state for key in keys):
            return name
    return None


def strip_shared_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A torchvision model kept as an attribute (``self.backbone = resnet50()``, ``self.model = ...``) saves
    every key under that name; recognised when the keys without it name an architecture."""
    if detect_architecture(state) is not None or not state:
        return state
    first = {key.split(".", 1)[0] for key in state}
    if len(first) == 1 and all("." in key for key in state):
        inner = {key.split(".", 1)[1]: value for key, value in state.items()}
        if detect_architecture(inner) is not None:
            return inner
    return state


def import_torchvision(state: dict[str, torch.Tensor], *, source: str, image_size: int, modality: str = "bmode",
                       malignant: Sequence[int] | None = None) -> ImportedClassifier:
    """Recognise, load strictly and wrap a torchvision classifier's state_dict (see the module docstring).

    ``malignant``: the malignant class indices for 2 (default: index 1) or N outputs (required)."""
    state = {k: v for k, v in strip_shared_prefix(state).items() if not k.startswith(TRAINING_ONLY_PREFIXES)}
    architecture = detect_architecture(state)
    if architecture is None:
        raise InputError(f"{source}: its keys ({_sample(state)}) match none of {sorted(SIGNATURES)} with their own "
                         "classifier; expected a torchvision state_dict (e.g. resnet50's conv1.weight ... fc.weight)")
    final = FINAL_LAYER[architecture]
    weight, bias = state[f"{final}.weight"], state.get(f"{final}.bias")
    if weight.ndim != 2 or bias is None:
        raise InputError(f"{source}: {final}.weight has shape {tuple(weight.shape)} (bias {'present' if bias is not None else 'missing'}); "
                         f"expected a linear layer [classes, features] with a bias")
    num_outputs = int(weight.shape[0])
    with torch.device("meta"):  # no random init of weights about to be replaced (VGG16: 138M of them)
        model = _build(architecture, num_outputs)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise InputError(f"{source}: looks like a {architecture} but does not load into one "
                         f"({_load_problem(str(exc))}); expected torchvision's {architecture} with {num_outputs} outputs") from None
    model.eval()
    chosen = malignant_set(num_outputs, malignant, source)
    if architecture == "vgg16":
        scores_weight, scores_bias = np.eye(num_outputs), np.zeros(num_outputs)
        if image_size < 32:
            raise InputError(f"{source}: VGG16 needs panes of at least 32 px (five 2x2 poolings); got --image-size {image_size}")
        features: nn.Module = VggScoresAsMaps(model, image_size).eval()
        cam_mode = CAM_NONE
    else:
        scores_weight = weight.detach().double().numpy()
        scores_bias = bias.detach().double().numpy()
        features = BackboneFeatures(architecture, model).eval()
        cam_mode = CAM_EXACT if num_outputs <= 2 else CAM_GRADIENT
    head = class_scores_head(modality, scores_weight, scores_bias, chosen, cam_mode)
    outputs = outputs_record(num_outputs, chosen)
    return ImportedClassifier(architecture, model, features, head, num_outputs, outputs)


def _build(architecture: str, num_outputs: int) -> nn.Module:
    import torchvision

    if architecture == "googlenet":
        return torchvision.models.googlenet(weights=None, num_classes=num_outputs, aux_logits=False, init_weights=False)
    return getattr(torchvision.models, architecture)(weights=None, num_classes=num_outputs)


def _load_problem(message: str) -> str:
    """torch's load_state_dict message, cut to its first specific line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    detail = lines[1] if len(lines) > 1 else (lines[0] if lines else "mismatch")
    return detail[:200]


def _sample(state: dict) -> str:
    keys = list(state)
    return ", ".join(keys[:3]) + (f", ... {len(keys)} keys" if len(keys) > 3 else "")


