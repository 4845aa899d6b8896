"""Files a user might hand to ``edge-thyroid export``: truncated, random, pickled objects, wrong models.
Each is refused with one InputError line naming the file, what was found and what is expected; none
raises anything else, and none is answered with advice to unpickle (``weights_only=False``)."""

from __future__ import annotations

import argparse
import datetime
import io
import pickle
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_thyroid.cli import main
from edge_thyroid.errors import InputError

from ..conftest import needs_torch

pytestmark = needs_torch

FUZZ = settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory) -> dict[str, bytes]:
    """A small torch state_dict and a small ONNX classifier, as bytes to damage."""
    import onnx
    import torch
    from onnx import TensorProto, helper, numpy_helper

    buffer = io.BytesIO()
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3), "fc.weight": torch.zeros(2, 4), "fc.bias": torch.zeros(2)}, buffer)
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 16, 16])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 2])
    weight = numpy_helper.from_array(torch.zeros(3, 2).numpy(), "w")
    graph = helper.make_graph([helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
                               helper.make_node("Flatten", ["pooled"], ["flat"]),
                               helper.make_node("MatMul", ["flat", "w"], ["scores"])], "tiny", [image], [scores], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    return {"pt": buffer.getvalue(), "onnx": model.SerializeToString()}


def refused_cleanly(path: Path) -> str | None:
    """None when the file imports; else the refusal line (any other exception fails the test)."""
    from edge_thyroid.export.model_import import ImportOptions, import_model, is_project_checkpoint

    try:
        if not is_project_checkpoint(path):
            import_model(path, ImportOptions(image_size=16))
    except InputError as exc:
        message = str(exc)
        assert "\n" not in message and "weights_only" not in message, message
        assert str(path) in message, message
        return message
    return None


@FUZZ
@given(data=st.data())
def test_truncated_and_bit_flipped_files_are_refused_in_one_line(valid_files, tmp_path, data):
    kind = data.draw(st.sampled_from(sorted(valid_files)))
    original = valid_files[kind]
    cut = data.draw(st.integers(0, len(original) - 1))
    damaged = bytearray(original[:cut])
    for _ in range(data.draw(st.integers(0, 3))):
        if damaged:
            damaged[data.draw(st.integers(0, len(damaged) - 1))] ^= data.draw(st.integers(1, 255))
    path = tmp_path / f"model.{kind}"
    path.write_bytes(bytes(damaged))
    refused_cleanly(path)


@FUZZ
@given(content=st.binary(min_size=0, max_size=4096), suffix=st.sampled_from([".pt", ".pth", ".onnx", ".bin", ""]))
def test_random_bytes_are_refused(tmp_path, content, suffix):
    path = tmp_path / f"random{suffix}"
    path.write_bytes(content)
    assert refused_cleanly(path) is not None


def test_pickled_model_is_refused_without_unsafe_advice(tmp_path, capsys):
    """A whole pickled module (torch.save(model)) would run code to load: refused, naming its class."""
    import torch

    path = tmp_path / "whole_model.pt"
    torch.save(torch.nn.Linear(2, 1), path)
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(path), "-o", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert "torch.nn.modules.linear.Linear" in err and "state_dict()" in err and "weights_only" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("payload, fragment", [
    (pickle.dumps({"a": ValueError("x")}, protocol=2), "not a file written by torch.save"),
    (b"PK\x03\x04" + b"\x00" * 64, "zip archive"),
    (b"", "empty (0 bytes)"),
])
def test_foreign_contents_name_what_was_found(tmp_path, payload, fragment):
    path = tmp_path / "weights.pt"
    path.write_bytes(payload)
    message = refused_cleanly(path)
    assert message is not None and fragment in message, message


def test_torch_file_with_arbitrary_objects_names_the_object(tmp_path):
    import torch

    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "saved_at": datetime.datetime(2020, 1, 1)}, path)
    message = refused_cleanly(path)
    assert message is not None and "Python object datetime.datetime" in message, message


def test_training_arguments_beside_the_weights_are_read(tmp_path):
    """argparse.Namespace (a training script's arguments) holds only attributes: allowed, and the weights
    are then judged on their own (here: an unknown architecture, named as such)."""
    import torch

    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "args": argparse.Namespace(lr=0.1)}, path)
    message = refused_cleanly(path)
    assert message is not None and "match none of" in message, message


def test_dict_without_tensors_names_its_keys(tmp_path):
    import torch

    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, path)
    message = refused_cleanly(path)
    assert message is not None and "['epoch', 'optimizer']" in message and "state_dict" in message


def test_missing_file_and_directory(tmp_path):
    assert "not found" in refused_cleanly(tmp_path / "absent.pt")
    assert "is not a file" in refused_cleanly(tmp_path)
