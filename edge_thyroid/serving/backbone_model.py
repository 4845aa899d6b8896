"""The Triton Python-backend model that runs a bundle's backbone (pixels [N,3,S,S] -> feature maps)
with ONNX Runtime. ``edge-thyroid export-triton`` copies this file as ``<model>/<version>/model.py``.

It runs inside Triton's Python stub, with the interpreter of the environment named by the model's
``EXECUTION_ENV_PATH`` parameter, so it imports only NumPy and ONNX Runtime (never edge_thyroid).

Two schedulings, chosen by the config the repository writer emits:

* ``fair`` (a decoupled model): ``execute`` only files each request under its client (the request
  parameter ``edge_thyroid_client``; requests without one share one anonymous queue) and returns;
  ``workers`` threads each take the next backbone pass round-robin over the clients that wait, one
  request per client per turn, up to ``max_batch_size`` panes, and answer through the request's
  response sender. One exception (:func:`runs_inline`): with one worker, a request whose client
  has no other in flight (the request parameter ``edge_thyroid_one_in_flight``, which the triton
  backend sets) and that finds the model idle is run by ``execute`` itself, without the worker's
  wake-up or a copy of its input. A client that floods waits behind itself, not in front of the
  others; past ``client_queue_limit`` waiting requests its new ones are refused at once. Each
  answer carries ``service_order`` [requests served when it arrived, its own service index] so the
  order the server served requests in can be checked without clocks.
* ``fifo``: Triton's own dynamic batcher hands ``execute`` the requests in arrival order; their panes
  are stacked into one ONNX Runtime call and split back.

Worker threads share one ONNX Runtime session: ``run`` releases the GIL and runs on its caller's
thread when the session has one intra-op thread, so N workers are N passes at once in one process.
"""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from typing import Any

import numpy as np

INPUT = "pixels"
OUTPUT = "feature_maps"
ORDER = "service_order"
CLIENT_PARAMETER = "edge_thyroid_client"
ONE_IN_FLIGHT_PARAMETER = "edge_thyroid_one_in_flight"
# benchmarks/remote_breakdown.py: when set (in the server's environment, which the stub inherits),
# each request's stage timestamps (time.monotonic, one clock for every process on the host) are
# appended to this file as JSON lines, so the client can line them up with its own.
STAGE_LOG = "EDGE_THYROID_STAGE_LOG"


class StageLog:
    """Per-request stage timestamps, written once the answer is sent (fair) or built (fifo), so the
    writing itself is in no stage."""

    def __init__(self, path: str) -> None:
        self.file = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - lives as long as the model
        self.lock = threading.Lock()

    def write(self, stamps: dict) -> None:
        with self.lock:
            self.file.write(json.dumps(stamps) + "\n")


def runs_inline(*, requests: int, one_in_flight: bool, waiting: bool, running: int, workers: int,
                client: str, previous_inline: str | None) -> bool:
    """Whether ``execute`` runs this request's pass itself instead of filing it for a worker.

    Triton hands the stub one request per ``execute`` and none while ``execute`` runs: requests that
    arrive during an inline pass wait in Triton's own first-come queue, invisible here. So:

    * only with one worker: then the inline pass takes the place the worker would have, and nobody
      waits longer than for the worker (with more, an idle worker could start another pass at once);
    * only for a client with no other request in flight (``one_in_flight``, which the client says),
      so none of its own requests can be waiting behind it in Triton's queue;
    * only when nothing waits here and no pass runs, so it overtakes nobody filed;
    * right after an inline pass (``previous_inline``: that pass's client, None when the last
      ``execute`` filed), only for that same client: its next request was sent after its answer,
      while another client's request may have arrived during the pass, with others behind it in
      Triton's queue; that one is filed, so the backlog is served round-robin and batched as before.
    """
    return (workers == 1 and requests == 1 and one_in_flight and not waiting and running == 0
            and previous_inline in (None, client))


class FairQueue:
    """Requests waiting, one FIFO per client, taken round-robin over the clients. With ``passes``
    (the model's workers), at most that many passes, workers' and inline ones, run at once, each
    taken pass ending with :meth:`finished`; without, passes are neither counted nor run inline."""

    def __init__(self, limit: int, passes: int | None = None) -> None:
        self.limit = limit
        self.passes = passes
        self.running = 0  # passes taken and not yet finished
        self.queues: dict[str, collections.deque] = {}
        self.turns: collections.deque[str] = collections.deque()  # clients with requests waiting, next first
        self.ready = threading.Condition()
        self.closed = False
        self.served = 0  # requests answered so far (the service index of the next one)

    def put(self, client: str, item: dict) -> str | None:
        """File one request; returns why it was refused, or None."""
        with self.ready:
            waiting = self.queues.setdefault(client, collections.deque())
            if self.limit and len(waiting) >= self.limit:
                return (f"client {client or '(anonymous)'} already has {len(waiting)} requests waiting on this "
                        f"server; expected at most {self.limit} in flight per client")
            item["served_at_arrival"] = self.served
            if not waiting:
                self.turns.append(client)
            waiting.append(item)
            self.ready.notify()
            return None

    def take(self, max_panes: int, across: bool) -> list[dict] | None:
        """The next pass: one request per client in turn while the panes fit (only one request when
        ``across`` is off). Blocks while nothing waits; None once closed."""
        with self.ready:
            while (not self.turns or (self.passes and self.running >= self.passes)) and not self.closed:
                self.ready.wait()
            if self.closed:
                return None
            batch: list[dict] = []
            panes = 0
            while self.turns:
                client = self.turns[0]
                waiting = self.queues[client]
                size = len(waiting[0]["pixels"])
                if batch and (panes + size > max_panes or not across):
                    break
                self.turns.popleft()
                batch.append(waiting.popleft())
                panes += size
                if waiting:
                    self.turns.append(client)  # its next request waits for everyone else's turn
                else:
                    del self.queues[client]
            for item in batch:
                item["service_index"] = self.served
                self.served += 1
            self.running += 1
            return batch

    def claim_inline(self, item: dict, client: str, *, requests: int, one_in_flight: bool,
                     previous_inline: str | None) -> bool:
        """Take ``item`` as a pass of its own, run by the caller, when :func:`runs_inline` says so
        (then, as for a taken batch, :meth:`finished` follows its run)."""
        with self.ready:
            if not runs_inline(requests=requests, one_in_flight=one_in_flight, waiting=bool(self.turns),
                               running=self.running, workers=self.passes or 0, client=client,
                               previous_inline=previous_inline):
                return False
            item["served_at_arrival"] = item["service_index"] = self.served
            self.served += 1
            self.running += 1
            return True

    def finished(self) -> None:
        """One pass run (its answers about to go out): a worker may take the next."""
        with self.ready:
            self.running -= 1
            self.ready.notify()

    def close(self) -> list[dict]:
        with self.ready:
            self.closed = True
            self.ready.notify_all()
            left = [item for waiting in self.queues.values() for item in waiting]
            self.queues.clear()
            self.turns.clear()
            return left


def output_capsules(arrays: list[tuple[str, np.ndarray]]) -> list[tuple[str, Any]]:
    """(name, DLPack capsule) of each response array (C-contiguous: a batch's leading rows are).

    The fair path hands these to ``Tensor.from_dlpack`` and holds them until the answer is sent:
    ``from_dlpack`` of the NumPy array itself (an object with ``__dlpack__``, the capsule then made
    and released inside the call) took 0.37 ms for 3-pane maps, of a held capsule 0.08 ms. Part of
    that reappeared in ``send`` (+0.26 ms p50 in one run); the client's frame was still faster in
    both interleaved A/Bs (-0.23 and -0.61 ms paired medians, one loaded core). Where exactly the
    stub spends the rest was not pinned down. The fifo path returns its responses from
    ``execute`` (sent after it returns), so it keeps ``from_dlpack`` of the arrays."""
    return [(name, np.ascontiguousarray(array).__dlpack__()) for name, array in arrays]


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        import onnxruntime as ort
        import triton_python_backend_utils as pb_utils

        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"] for key, value in config.get("parameters", {}).items()}
        threads = int(parameters.get("intra_op_threads", "0") or 0)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        model_file = os.path.join(args["model_repository"], args["model_version"], parameters.get("onnx_file", "model.onnx"))
        self.session = ort.InferenceSession(model_file, sess_options=options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        self.stages = StageLog(os.environ[STAGE_LOG]) if os.environ.get(STAGE_LOG) else None
        self.workers: list[threading.Thread] = []
        if self.decoupled:
            self.max_panes = int(config.get("max_batch_size", 0)) or 1
            self.across = parameters.get("batch_requests", "1") == "1"
            workers = max(1, int(parameters.get("workers", "1") or 1))
            self.queue = FairQueue(int(parameters.get("client_queue_limit", "0") or 0), passes=workers)
            self.inline_client: str | None = None  # the client whose pass the last execute ran; None: it filed
            for index in range(workers):
                worker = threading.Thread(target=self._serve, name=f"backbone-{index}", daemon=True)
                worker.start()
                self.workers.append(worker)

    # -- fifo: Triton's dynamic batcher ----------------------------------------------------------------
    def execute(self, requests: list[Any]) -> list[Any] | None:
        import triton_python_backend_utils as pb_utils

        entered = time.monotonic()
        if self.decoupled:
            previous, self.inline_client = self.inline_client, None
            for request in requests:
                self._file(request, entered, len(requests), previous)
            return None
        # Tensors cross the stub through DLPack, not as_numpy()/Tensor(name, array): the stub's
        # NumPy bridge was compiled against NumPy 1's array layout and, under NumPy 2, reads an item
        # size of 0 (responses arrive with 0 bytes of data).
        batches = [np.from_dlpack(pb_utils.get_input_tensor_by_name(request, INPUT)) for request in requests]
        read = time.monotonic()
        maps = self._run(batches)
        ran = time.monotonic()
        responses, start = [], 0
        for batch in batches:
            part = maps[start : start + len(batch)]
            start += len(batch)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor.from_dlpack(OUTPUT, np.ascontiguousarray(part))]))
        if self.stages:
            answered = time.monotonic()
            for request in requests:
                self.stages.write({"id": request.request_id(), "execute": entered, "read": read, "run_start": read,
                                   "run_end": ran, "sending": answered, "panes": len(maps)})
        return responses

    def _run(self, batches: list[np.ndarray]) -> np.ndarray:
        stacked = batches[0] if len(batches) == 1 else np.concatenate(batches, axis=0)
        return self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(stacked, dtype=np.float32)})[0]

    # -- fair: per-client round-robin ------------------------------------------------------------------
    def _file(self, request: Any, entered: float, requests: int, previous_inline: str | None) -> None:
        """Run the request's pass here (runs_inline) or file it for a worker."""
        import triton_python_backend_utils as pb_utils

        sender = request.get_response_sender()
        try:
            parameters = json.loads(request.parameters() or "{}")
        except (ValueError, AttributeError):
            parameters = {}
        client = str(parameters.get(CLIENT_PARAMETER, ""))
        pixels = np.from_dlpack(pb_utils.get_input_tensor_by_name(request, INPUT))
        wanted = set(request.requested_output_names() or ())
        item = {"pixels": pixels, "sender": sender, "wanted": wanted}
        if self.stages:
            item["stamps"] = {"id": request.request_id(), "client": client, "execute": entered}
        if self.queue.claim_inline(item, client, requests=requests, previous_inline=previous_inline,
                                   one_in_flight=parameters.get(ONE_IN_FLIGHT_PARAMETER) is True):
            self.inline_client = client
            # The input is read where Triton put it: the request lives until execute returns.
            if self.stages:
                item["stamps"]["read"] = item["stamps"]["taken"] = time.monotonic()
                item["stamps"]["inline"] = True
            self._answer([item])
            return
        # A copy: the request's input buffer belongs to Triton and may go once execute returns.
        item["pixels"] = np.array(pixels, dtype=np.float32)
        if self.stages:
            item["stamps"]["read"] = time.monotonic()
        refused = self.queue.put(client, item)
        if refused:
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(refused)),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _serve(self) -> None:
        while True:
            batch = self.queue.take(self.max_panes, self.across)
            if batch is None:
                return
            if self.stages:
                taken = time.monotonic()
                for item in batch:
                    item["stamps"]["taken"] = taken
            self._answer(batch)
            # Nothing of the batch may outlive its answers: a response sender still referenced keeps
            # Triton from ever unloading the model (the server then cannot stop).
            del batch

    def _answer(self, batch: list[dict]) -> None:
        import triton_python_backend_utils as pb_utils

        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        started = time.monotonic()
        failure: Exception | None = None
        try:
            maps = self._run([item["pixels"] for item in batch])
        except Exception as exc:  # noqa: BLE001 - every waiting client gets the reason, the worker lives on
            failure = exc
        finally:
            # The pass is over before its answers go out. send() returns only after Triton has taken the
            # response, by when the client may have it and its next request may be in execute: still
            # counted as running, the pass would make that request be filed instead of run inline, at
            # random, and a run of serve_bench would land in its slow mode or not (BENCHMARKS.md: serving).
            self.queue.finished()
        if failure is not None:
            for item in batch:
                item["sender"].send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"backbone failed: {failure}")),
                                    flags=final)
            return
        ran = time.monotonic()
        start = 0
        for item in batch:
            count = len(item["pixels"])
            part, start = maps[start : start + count], start + count
            # Only what the request asked for (a client that names no outputs gets all): every tensor
            # handed to the response is one more copy into the stub's shared memory.
            arrays = []
            if not item["wanted"] or OUTPUT in item["wanted"]:
                arrays.append((OUTPUT, part))
            if not item["wanted"] or ORDER in item["wanted"]:
                order = np.array([[item["served_at_arrival"], item["service_index"]]], np.int64)
                arrays.append((ORDER, np.repeat(order, count, axis=0)))
            # Handed over as DLPack capsules that live until the answer is sent (see output_capsules).
            capsules = output_capsules(arrays)
            tensors = [pb_utils.Tensor.from_dlpack(name, capsule) for name, capsule in capsules]
            sending = time.monotonic()
            item["sender"].send(pb_utils.InferenceResponse(output_tensors=tensors), flags=final)
            del tensors, capsules  # released once sent
            if self.stages:
                self.stages.write({**item["stamps"], "run_start": started, "run_end": ran, "sending": sending,
                                   "answered": time.monotonic(), "panes": count})

    def finalize(self) -> None:
        if self.decoupled:
            import triton_python_backend_utils as pb_utils

            for item in self.queue.close():
                item["sender"].send(pb_utils.InferenceResponse(error=pb_utils.TritonError("the model is unloading")),
                                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            for worker in self.workers:
                worker.join(timeout=10)
        if self.stages:
            self.stages.file.close()
        self.session = None

