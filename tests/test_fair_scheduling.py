"""The fair model's scheduling decisions as pure logic (no server): when ``execute`` runs a pass itself
instead of filing it for a worker, and that such a pass holds the worker's place in the queue.
tests/test_triton_serving.py checks the same model on a real server."""

from __future__ import annotations

import threading

import numpy as np

from edge_thyroid.serving import backbone_model, repository
from edge_thyroid.serving.backbone_model import FairQueue, runs_inline

IDLE = {"requests": 1, "one_in_flight": True, "waiting": False, "running": 0, "workers": 1, "client": "a",
        "previous_inline": None}


def pane(name: str) -> dict:
    return {"pixels": np.zeros((1, 3, 2, 2), np.float32), "id": name}


def test_the_model_and_its_clients_name_the_request_parameters_alike():
    # The model file imports only NumPy and ONNX Runtime, so it carries its own copies of the names.
    assert backbone_model.CLIENT_PARAMETER == repository.CLIENT_PARAMETER
    assert backbone_model.ONE_IN_FLIGHT_PARAMETER == repository.ONE_IN_FLIGHT_PARAMETER
    assert backbone_model.OUTPUT == repository.OUTPUT and backbone_model.ORDER == repository.ORDER


def test_a_pass_runs_inline_only_for_a_lone_request_on_an_idle_one_worker_model():
    assert runs_inline(**IDLE)
    assert runs_inline(**{**IDLE, "previous_inline": "a"})  # the same client, back after its answer
    for change in [{"workers": 2},             # another worker could start a second pass at once
                   {"requests": 2},            # execute holds another request to file
                   {"one_in_flight": False},   # its own further requests may wait in Triton's queue
                   {"waiting": True},          # it would overtake a filed request
                   {"running": 1},             # a worker's pass runs
                   {"previous_inline": "b"}]:  # it may have arrived during b's inline pass, with others behind it
        assert not runs_inline(**{**IDLE, **change}), change


def test_an_inline_pass_is_counted_in_the_service_order_and_holds_the_workers_place():
    fair = FairQueue(limit=4, passes=1)
    fair.put("a", pane("a0"))
    first = fair.take(max_panes=8, across=True)
    assert [item["id"] for item in first] == ["a0"] and first[0]["service_index"] == 0
    lone = pane("b0")
    assert not fair.claim_inline(lone, "b", requests=1, one_in_flight=True, previous_inline=None)  # a0 runs
    fair.finished()
    assert fair.claim_inline(lone, "b", requests=1, one_in_flight=True, previous_inline=None)
    assert lone["served_at_arrival"] == lone["service_index"] == 1
    # While the inline pass runs, a request filed meanwhile is not taken: one worker, one pass at once.
    fair.put("c", pane("c0"))
    taken: list = []
    worker = threading.Thread(target=lambda: taken.append(fair.take(max_panes=8, across=True)), daemon=True)
    worker.start()
    worker.join(timeout=0.3)
    assert worker.is_alive() and not taken
    fair.finished()
    worker.join(timeout=30)
    assert [item["id"] for item in taken[0]] == ["c0"] and taken[0][0]["service_index"] == 2
    # Something filed waits: no inline pass, whoever asks.
    fair.finished()
    fair.put("d", pane("d0"))
    assert not fair.claim_inline(pane("e0"), "e", requests=1, one_in_flight=True, previous_inline=None)
    assert fair.close() != [] and fair.take(1, True) is None


class _Sender:
    """A response sender that records what the model's queue said when each answer went out."""

    def __init__(self, fair: FairQueue, seen: list) -> None:
        self.fair, self.seen = fair, seen

    def send(self, response, flags) -> None:
        self.seen.append((self.fair.running, response))


def test_a_pass_is_finished_before_its_answers_go_out(monkeypatch):
    # A client may hold its answer (and send its next request) before send() returns: by then the
    # pass must no longer count as running, or that request is filed instead of run inline at random.
    import types

    class Response:
        def __init__(self, output_tensors=None, error=None):
            self.tensors, self.error = output_tensors, error

    utils = types.SimpleNamespace(TRITONSERVER_RESPONSE_COMPLETE_FINAL=1, InferenceResponse=Response,
                                  TritonError=str, Tensor=types.SimpleNamespace(
                                      from_dlpack=lambda name, capsule: (name, np.from_dlpack(_Capsule(capsule)))))
    monkeypatch.setitem(__import__("sys").modules, "triton_python_backend_utils", utils)
    weights = np.arange(1, 4, dtype=np.float32).reshape(1, 3, 1, 1)

    class Session:  # a 1x1 convolution over the 3 channels, the reference below in float64
        def run(self, names, feeds):
            (pixels,) = feeds.values()
            if not np.isfinite(pixels).all():
                raise ValueError("non-finite pixels")
            return [(pixels * weights).sum(axis=1, keepdims=True)]

    model = backbone_model.TritonPythonModel()
    model.session, model.input_name, model.output_name, model.stages = Session(), "pixels", "maps", None
    model.queue = FairQueue(limit=0, passes=1)
    seen: list = []
    rng = np.random.default_rng(0)
    items = [{"pixels": rng.standard_normal((n, 3, 2, 2)).astype(np.float32), "sender": _Sender(model.queue, seen),
              "wanted": set(), "served_at_arrival": 0, "service_index": i} for i, n in enumerate((2, 1))]
    for client, item in zip("ab", items):
        model.queue.put(client, item)
    batch = model.queue.take(max_panes=8, across=True)  # one pass of both requests' panes
    assert len(batch) == 2 and model.queue.running == 1
    model._answer(batch)
    assert [running for running, _ in seen] == [0, 0] and model.queue.running == 0
    for item, (_, response) in zip(items, seen):
        maps = dict(response.tensors)[backbone_model.OUTPUT]
        reference = (item["pixels"].astype(np.float64) * weights.astype(np.float64)).sum(axis=1, keepdims=True)
        np.testing.assert_allclose(maps, reference, rtol=1e-6, atol=1e-6)
    # A failed run too frees its place before the client hears of it.
    model.queue.put("c", {**items[1], "pixels": np.full_like(items[1]["pixels"], np.nan)})
    model._answer(model.queue.take(max_panes=8, across=True))
    assert [running for running, _ in seen] == [0, 0, 0] and "non-finite pixels" in seen[2][1].error
    assert model.queue.running == 0


class _Capsule:
    """np.from_dlpack wants an object with __dlpack__: this one hands over an already made capsule."""

    def __init__(self, capsule) -> None:
        self.capsule = capsule

    def __dlpack__(self, **_):
        return self.capsule

    def __dlpack_device__(self):
        return (1, 0)
