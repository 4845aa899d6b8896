"""Reading a model file a user hands to ``edge-thyroid export``: a PyTorch weights file (state_dict or
checkpoint dict) or an ONNX model, told apart by content, never by trusting the extension alone.

PyTorch files are read with ``torch.load(weights_only=True)`` only: a pickle that holds anything but
tensors and plain containers is refused, and the refusal never suggests ``weights_only=False``
(that would run whatever code the file carries). Every failure is one :class:`InputError` line that
names the file, what was found and what is expected.
"""

from __future__ import annotations

import argparse
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_thyroid.errors import InputError

# The containers checkpoints commonly wrap their state_dict in (training loops, Lightning, timm, ...).
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "net", "weights")
DATA_PARALLEL_PREFIX = "module."
ONNX_SUFFIX = ".onnx"
PICKLE_PROTOCOL_BYTE = 0x80  # a legacy (non-zip) torch.save file starts with a pickle PROTO opcode
EXPECTED = ("expected a PyTorch state_dict / checkpoint (torch.save of tensors) or an ONNX image classifier")


@dataclass(frozen=True)
class WeightsFile:
    """A PyTorch weights file: its flat state_dict (DataParallel prefix removed) and the dict it came in."""

    path: Path
    state_dict: dict[str, Any]
    payload: dict[str, Any]


def is_onnx_file(path: str | Path) -> bool:
    """By content: a torch file is a zip or starts with a pickle opcode; an ONNX model is neither."""
    path = Path(path)
    if path.suffix.lower() == ONNX_SUFFIX:
        return True
    with open(path, "rb") as handle:
        head = handle.read(4)
    return bool(head) and not head.startswith(b"PK") and head[0] != PICKLE_PROTOCOL_BYTE and _parses_as_onnx(path)


def check_readable(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"model file not found: {path}; {EXPECTED}")
    if not path.is_file():
        raise InputError(f"{path} is not a file; {EXPECTED}")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes); {EXPECTED}")
    return path


def read_weights(path: str | Path) -> WeightsFile:
    """Load a PyTorch weights file safely and find its state_dict."""
    path = check_readable(path)
    payload = read_payload(path)
    state = find_state_dict(payload, path)
    return WeightsFile(path, strip_data_parallel(state), payload)


def read_payload(path: str | Path) -> dict[str, Any]:
    """Load a PyTorch weights file safely: the dict it holds (tensors and plain containers only)."""
    import torch

    path = check_readable(path)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing; the refusal says it all
            warnings.simplefilter("ignore")
            # Training scripts often save their argparse arguments beside the weights; a Namespace only
            # holds attributes, so allowing it runs no code from the file.
            with torch.serialization.safe_globals([argparse.Namespace]):
                payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch, pickle, zipfile and zlib each raise their own types on bad bytes
        raise InputError(f"{path} cannot be read as PyTorch weights ({_reason(exc)}); {EXPECTED}") from None
    if not isinstance(payload, dict):
        raise InputError(f"{path} holds a {type(payload).__name__}; expected a dict (a state_dict, or a "
                         f"checkpoint with one under {'/'.join(STATE_DICT_KEYS)})")
    return payload


def find_state_dict(payload: dict[str, Any], path: Path) -> dict[str, Any]:
    """The payload itself when it maps names to tensors, else the first wrapper key that does."""
    import torch

    def is_state_dict(value: Any) -> bool:
        return (isinstance(value, dict) and bool(value) and all(isinstance(k, str) for k in value)
                and any(isinstance(v, torch.Tensor) for v in value.values()))

    if is_state_dict(payload) and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return payload
    for key in STATE_DICT_KEYS:
        if is_state_dict(payload.get(key)):
            return {k: v for k, v in payload[key].items() if isinstance(v, torch.Tensor)}
    keys = sorted(map(str, payload))[:8]
    raise InputError(f"{path} is a dict with keys {keys} but no state_dict of tensors; expected tensors at the "
                     f"top level or under one of {list(STATE_DICT_KEYS)}")


def strip_data_parallel(state: dict[str, Any]) -> dict[str, Any]:
    """nn.DataParallel / DistributedDataParallel save every key under ``module.``."""
    if state and all(key.startswith(DATA_PARALLEL_PREFIX) for key in state):
        return {key[len(DATA_PARALLEL_PREFIX):]: value for key, value in state.items()}
    return state


def read_onnx(path: str | Path) -> Any:
    """Parse an ONNX model; a damaged or foreign file is one InputError line."""
    import onnx

    path = check_readable(path)
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf's DecodeError, a missing external-data file, ...
        raise InputError(f"{path} cannot be read as an ONNX model ({_reason(exc)}); {EXPECTED}") from None
    if not model.graph.node:
        raise InputError(f"{path} parses as ONNX but its graph has no nodes; {EXPECTED}")
    return model


def _parses_as_onnx(path: Path) -> bool:
    import onnx

    try:
        return bool(onnx.load(str(path)).graph.node)
    except Exception:  # any parse failure just means "not ONNX"; the torch reader then names the problem
        return False


def _reason(exc: BaseException) -> str:
    """One short line from an exception, without torch's advice to unpickle arbitrary code."""
    message = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", message)
    if found:
        return (f"it pickles the Python object {found.group(1)}, not only tensors; loading it would run code "
                "from the file, so save the model's state_dict() instead")
    if "Invalid magic number" in message:
        return "a plain pickle or other bytes, not a file written by torch.save"
    # A pickle reader meeting bytes that are no pickle opcode raises KeyError(the byte), e.g. a text file.
    if "Unsupported operand" in message or "invalid load key" in message or isinstance(exc, KeyError):
        return "its bytes are neither a torch.save zip archive nor a pickle of tensors"
    if "weights_only" in message or isinstance(exc, pickle.UnpicklingError):
        return "it holds Python objects other than tensors and plain containers, which are not loaded"
    if isinstance(exc, zipfile.BadZipFile) or "central directory" in message:
        return "a damaged or truncated zip archive"
    first_line = message.strip().splitlines()[0] if message.strip() else ""
    return f"{type(exc).__name__}: {first_line[:120]}" if first_line else type(exc).__name__
