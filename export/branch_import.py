"""A model with one backbone per modality (late fusion) -> what a branched bundle is written from.

Two layouts of one PyTorch file are read (``torch.load(weights_only=True)``; DataParallel's ``module.``
prefix and a ``state_dict``/``model`` wrapper are removed first):

(a) a dict of per-modality state_dicts plus the fusion layer::

        {"bmode": {<torchvision keys>}, "smi": {...}, "swe": {...},
         "fusion": {"weight": [K, D], "bias": [K]}}          # or "fusion.weight" / "fusion.bias"

(b) one nn.Module's state_dict with named branches::

        branches.bmode.<torchvision keys>, branches.smi.*, branches.swe.*, fusion.weight, fusion.bias

Each branch is a torchvision resnet50 / densenet121 / vgg16 / googlenet (the project's own backbone is
one of these), recognised from its keys; its own classifier keys, if saved, are ignored (the fusion
layer classifies). The fusion layer is linear over the branches' globally average-pooled features
concatenated in the order bmode, smi, swe (the modalities present): D = sum of the branches' widths,
or that plus one presence bias per modality (the project's own head layout). K = 1 (a logit) or
2 (softmax; malignant class index 1 unless told). Because it is linear over pooled features, each
modality's CAM stays exact. Anything else is refused with one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from edge_thyroid.errors import InputError
from edge_thyroid.head import FusionHead

from .model_file import STATE_DICT_KEYS, strip_data_parallel
from .models import BACKBONE_CHANNELS, MODALITIES, BackboneFeatures
from .torchvision_import import FINAL_LAYER, SIGNATURES, TRAINING_ONLY_PREFIXES, _build, _load_problem, _sample

BRANCH_PREFIX = "branches."
FUSION = "fusion"
# A branch's own classifier (whatever it was trained with) is not part of its features.
CLASSIFIER_PREFIXES = {"resnet50": ("fc.",), "densenet121": ("classifier.",), "vgg16": ("classifier.",),
                       "googlenet": ("fc.",)}
LAYOUT = ("expected {'bmode': state_dict, 'smi': ..., 'swe': ..., 'fusion': {'weight', 'bias'}} or one "
          "state_dict with branches.<modality>.* and fusion.weight / fusion.bias")


@dataclass(frozen=True)
class ImportedBranches:
    """Per modality: the feature extractor and its architecture; the fusion layer as the NumPy head."""

    features: dict[str, nn.Module]     # pixels -> feature maps, eval mode (the parity reference)
    architectures: dict[str, str]
    head: FusionHead
    outputs: dict[str, Any]


def is_branched(payload: dict[str, Any]) -> bool:
    """Does a loaded torch file hold a per-modality model (either layout)? Decided by its keys only."""
    return _has_branches(_unwrap(payload))


def split_branches(payload: dict[str, Any], source: str) -> tuple[dict[str, dict[str, torch.Tensor]], torch.Tensor, torch.Tensor]:
    """Either layout -> ({modality: state_dict} in bmode, smi, swe order, fusion weight, fusion bias)."""
    payload = _unwrap(payload)
    if isinstance(payload.get("branches"), dict):  # layout (a) kept under "branches"
        payload = {**{k: v for k, v in payload.items() if k != "branches"}, **payload["branches"]}
    nested = {k for k, v in payload.items() if isinstance(v, dict) and k != FUSION}
    flat = {k for k in payload if isinstance(k, str) and k.startswith(BRANCH_PREFIX)}
    if nested and flat:
        raise InputError(f"{source}: holds both per-modality dicts {sorted(nested)} and flat branches.* keys; {LAYOUT}")
    branches: dict[str, dict[str, torch.Tensor]] = {}
    if nested:
        for name in nested:
            branches[name] = _tensors(payload[name], f"{source}: branch {name!r}")
    for key in flat:
        name, _, rest = key[len(BRANCH_PREFIX):].partition(".")
        if not rest:
            raise InputError(f"{source}: key {key!r} names no parameter; expected branches.<modality>.<parameter>")
        branches.setdefault(name, {})[rest] = payload[key]
    unknown = sorted(set(branches) - set(MODALITIES))
    if unknown:
        raise InputError(f"{source}: branches {unknown} are not modalities; expected branches named {list(MODALITIES)}")
    if not branches:
        raise InputError(f"{source}: no per-modality branches found; {LAYOUT}")
    fusion = payload.get(FUSION)
    if isinstance(fusion, dict):
        weight, bias = fusion.get("weight"), fusion.get("bias")
    else:
        weight, bias = payload.get(f"{FUSION}.weight"), payload.get(f"{FUSION}.bias")
    if not isinstance(weight, torch.Tensor) or not isinstance(bias, torch.Tensor):
        raise InputError(f"{source}: branches {sorted(branches)} but no fusion layer (fusion.weight and fusion.bias "
                         f"tensors); {LAYOUT}")
    leftover = sorted(str(k) for k in payload if k not in nested | flat | {FUSION, f"{FUSION}.weight", f"{FUSION}.bias"})
    if leftover:
        raise InputError(f"{source}: keys {leftover[:4]} are neither a branch nor the fusion layer; {LAYOUT}")
    ordered = {m: branches[m] for m in MODALITIES if m in branches}
    return ordered, weight, bias


def import_branches(payload: dict[str, Any], *, source: str, malignant: Sequence[int] | None = None) -> ImportedBranches:
    """Recognise and load each branch strictly, and turn the fusion layer into the NumPy head."""
    states, weight, bias = split_branches(payload, source)
    features, architectures = {}, {}
    for modality, state in states.items():
        architectures[modality], model = load_branch(state, f"{source}: branch {modality!r}")
        features[modality] = BackboneFeatures(architectures[modality], model).eval()
    widths = [BACKBONE_CHANNELS[architectures[m]] for m in states]
    head, outputs = fusion_head(tuple(states), widths, weight, bias, malignant, source)
    return ImportedBranches(features, architectures, head, outputs)


def load_branch(state: dict[str, torch.Tensor], what: str) -> tuple[str, nn.Module]:
    """A branch's state_dict (its own classifier optional) -> (architecture, the loaded torchvision model)."""
    state = strip_data_parallel(state)
    architecture = _architecture(state)
    if architecture is None and state and len({k.split(".", 1)[0] for k in state}) == 1 and all("." in k for k in state):
        inner = {k.split(".", 1)[1]: v for k, v in state.items()}  # kept as an attribute: self.backbone = resnet50()
        if _architecture(inner) is not None:
            state, architecture = inner, _architecture(inner)
    if architecture is None:
        raise InputError(f"{what}: its keys ({_sample(state)}) match none of {sorted(SIGNATURES)}; expected a "
                         "torchvision backbone's state_dict (e.g. resnet50's conv1.weight ... layer4.2.conv3.weight)")
    classifier = CLASSIFIER_PREFIXES[architecture]
    features = {k: v for k, v in state.items() if not k.startswith(classifier + TRAINING_ONLY_PREFIXES)}
    with torch.device("meta"):
        model = _build(architecture, 1)
    try:  # the classifier stays on the meta device: the features never run it
        result = model.load_state_dict(features, strict=False, assign=True)
    except RuntimeError as exc:  # a shape mismatch, which even a non-strict load refuses
        raise InputError(f"{what}: looks like a {architecture} but does not load into one ({_load_problem(str(exc))})") from None
    missing = [k for k in result.missing_keys if not k.startswith(classifier)]
    if missing or result.unexpected_keys:
        problem = f"missing {missing[:3]}" if missing else f"unexpected {result.unexpected_keys[:3]}"
        raise InputError(f"{what}: looks like a {architecture} but does not load into one ({problem}); expected "
                         f"torchvision's {architecture} keys")
    return architecture, model.eval()


def _architecture(state: dict[str, Any]) -> str | None:
    for name, keys in SIGNATURES.items():
        if all(key in state for key in keys if not key.startswith(FINAL_LAYER[name].split(".")[0] + ".")):
            return name
    return None


def fusion_head(modalities: tuple[str, ...], widths: list[int], weight: torch.Tensor, bias: torch.Tensor,
                malignant: Sequence[int] | None, source: str) -> tuple[FusionHead, dict[str, Any]]:
    """The fusion linear [K, D] -> the head: per-modality weight rows (zero-padded to the widest branch),
    presence biases, bias. K = 2 becomes the logit difference (softmax of two = sigmoid of it)."""
    w, b = weight.detach().double().numpy(), bias.detach().double().numpy().reshape(-1)
    total, count = sum(widths), len(widths)
    if w.ndim != 2 or w.shape[1] not in (total, total + count) or w.shape[0] not in (1, 2) or b.shape != (w.shape[0],):
        raise InputError(f"{source}: fusion.weight {tuple(weight.shape)} and fusion.bias {tuple(bias.shape)}; expected "
                         f"[K, {total}] (the pooled features of {', '.join(f'{m} {c}' for m, c in zip(modalities, widths))}) "
                         f"or [K, {total + count}] (plus a presence bias per modality) with K = 1 or 2, and bias [K]")
    if w.shape[0] == 2:
        index = 1 if malignant is None else (malignant[0] if len(malignant) == 1 and malignant[0] in (0, 1) else None)
        if index is None:
            raise InputError(f"{source}: --malignant-index {list(malignant)} for a 2-output fusion layer; expected 0 or 1")
        w, b = w[index:index + 1] - w[1 - index:2 - index], b[index:index + 1] - b[1 - index:2 - index]
        outputs = {"count": 2, "activation": "softmax", "malignant": [index]}
    else:
        outputs = {"count": 1, "activation": "sigmoid", "malignant": [0]}
    rows = np.zeros((count, max(widths)))
    start = 0
    for index, width in enumerate(widths):
        rows[index, :width] = w[0, start:start + width]
        start += width
    presence = w[0, total:] if w.shape[1] == total + count else np.zeros(count)
    if not (np.all(np.isfinite(rows)) and np.all(np.isfinite(presence)) and np.all(np.isfinite(b))):
        raise InputError(f"{source}: the fusion layer contains NaN or infinity")
    same = len(set(widths)) == 1
    return FusionHead(modalities, rows, presence, float(b[0]), modality_channels=None if same else tuple(widths)), outputs


def _has_branches(payload: dict[str, Any]) -> bool:
    return (any(isinstance(payload.get(m), dict) for m in (*MODALITIES, "branches"))
            or any(isinstance(k, str) and k.startswith(BRANCH_PREFIX) for k in payload))


def _unwrap(payload: dict[str, Any]) -> dict[str, Any]:
    """DataParallel's prefix off; a checkpoint's state_dict/model wrapper opened when it holds the branches."""
    payload = _strip(payload)
    if not _has_branches(payload):
        for key in STATE_DICT_KEYS:
            inner = payload.get(key)
            if isinstance(inner, dict) and _has_branches(_strip(inner)):
                return _strip(inner)
    return payload


def _strip(payload: dict[str, Any]) -> dict[str, Any]:
    return strip_data_parallel(payload) if payload and all(isinstance(k, str) for k in payload) else payload


def _tensors(value: dict, what: str) -> dict[str, torch.Tensor]:
    if not value or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()):
        raise InputError(f"{what} is not a state_dict (names -> tensors); {LAYOUT}")
    return value
