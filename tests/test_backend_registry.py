"""A backend is one file: the CLI's choices and settings come from the registry and the backend classes,
and a backend registered from the tests folder streams through the real command with no other edit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_thyroid import backends
from edge_thyroid.backends import (DEFAULT_BACKEND, backend_class, backend_for_target, backend_options,
                                   register_backend, selectable_backends)
from edge_thyroid.cli import main
from edge_thyroid.commands.stream import DEMO_BUNDLE, data_path
from edge_thyroid.engine import Engine
from edge_thyroid.errors import BackendError
from edge_thyroid.frames import Pane


def run_cli(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exc:
        return exc.code or 0
    return 0


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(backends._REGISTRY, "toy", "tests.toy_backend:ToyBackend")
    return backend_class("toy")


def test_every_registered_backend_declares_itself():
    for name in backends.available_backends():
        cls = backend_class(name)
        assert cls.name == name and cls.display_name and cls.targets
    assert DEFAULT_BACKEND in selectable_backends()
    assert all(name in selectable_backends() for _, owners in backend_options().values() for name in owners)


def test_a_model_target_picks_its_backend_and_a_mismatch_is_refused():
    assert backend_for_target("onnxruntime") == DEFAULT_BACKEND
    plan_runner = backend_for_target("tensorrt")
    assert "tensorrt" in backend_class(plan_runner).targets and not backend_class(plan_runner).selectable
    with pytest.raises(BackendError, match="cannot run model 'int8'"):
        Engine(data_path(DEMO_BUNDLE), backend=plan_runner)


def test_registered_backend_is_offered_by_the_cli(toy, capsys):
    assert run_cli(["stream", "--help"]) == 0
    assert f"[auto|{'|'.join(selectable_backends())}]" in capsys.readouterr().out and "toy" in selectable_backends()
    register_backend("toy-class", toy)
    assert backend_class("toy-class") is toy


def test_toy_backend_classifies_and_streams_through_the_cli(toy, tmp_path, capsys):
    bundle = data_path(DEMO_BUNDLE)
    with Engine(bundle, backend="toy") as engine:
        assert isinstance(engine.backend, toy)
        frame = np.full((120, 160, 3), 90, np.uint8)
        prediction = engine.classify(frame, [Pane("bmode", (0, 0, 160, 120))])
        assert 0.0 <= prediction.probability <= 1.0 and engine.backend.calls == 1
        # The head sees exactly what the toy computed: p follows the pixels.
        brighter = engine.classify(np.full((120, 160, 3), 200, np.uint8), [Pane("bmode", (0, 0, 160, 120))])
        assert brighter.logit != prediction.logit
    out = tmp_path / "toy.jsonl"
    loads = toy.loads
    code = run_cli(["stream", str(bundle), "--backend", "toy", "--source", "synthetic?size=320x180&frames=12",
                    "--as-fast-as-possible", "--quiet", "--json-out", str(out), "--whole-pane"])
    assert code == 0, capsys.readouterr().err
    assert toy.loads == loads + 1  # the stream ran on the toy, not on a default backend
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records[0]["backend"] == "toy"  # the header names the backend that ran
    frames = [r for r in records if r["type"] == "frame"]
    assert len(frames) == 12
    assert all(r["p"] is None or 0.0 <= r["p"] <= 1.0 for r in frames)
    assert any(r["p"] is not None for r in frames)
