"""A real Triton Inference Server on 127.0.0.1 (free ports, started and stopped by the tests):
model repository export, remote vs local parity (fair and fifo scheduling), concurrent streams,
per-client fairness under a flood, a server killed mid-stream, refused requests, and the serve
command's lifecycle.

The server binary comes from ``pip install --no-deps nvidia-pytriton`` (.ci/run does it). Without it
these tests skip on a developer's machine and fail in CI, where they must run.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edge_thyroid.errors import BackendError, ServerUnavailableError
from edge_thyroid.serving.backbone_model import STAGE_LOG, FairQueue
from edge_thyroid.serving.repository import (CLIENT_PARAMETER, ONE_IN_FLIGHT_PARAMETER, ORDER, BatchingOptions,
                                            ServedModel, write_model)
from edge_thyroid.serving.server import (ServerError, ServerOptions, TritonServer, fill_free_ports, find_installation,
                                         free_port, free_ports)

from .conftest import REPO, needs_torch, screen_frame
from .reliability.helpers import assert_refused, parse_jsonl, run_cli

DEMO_BUNDLE = REPO / "edge_thyroid" / "data" / "demo_bundle"
PANES = [("bmode", (20, 50, 600, 620)), ("smi", (660, 50, 600, 620))]


def _installed() -> bool:
    try:
        find_installation()
    except ServerError:
        return False
    return True


# CI installs the server (.ci/run); there a missing binary is a failure, not a skip.
needs_server = pytest.mark.skipif(not _installed() and not os.environ.get("CI"),
                                  reason="no tritonserver: pip install --no-deps 'nvidia-pytriton==0.7.0'")
pytestmark = [needs_server, needs_torch]


@dataclass
class Served:
    server: TritonServer   # fair scheduling (the default): gRPC streaming clients
    fp32: ServedModel
    int8: ServedModel
    fp32_bundle: Path
    fifo: TritonServer     # Triton's dynamic batcher: unary gRPC and HTTP clients
    fifo_fp32: ServedModel


def start_server(repository: Path, **ports: int) -> TritonServer:
    names = ("grpc_port", "http_port", "metrics_port")
    ports = dict(zip(names, fill_free_ports([ports.get(name) for name in names])))
    return TritonServer(ServerOptions(repository, **ports)).start(timeout_s=120)


@pytest.fixture(scope="module")
def served(random_bundle, tmp_path_factory):
    repository = tmp_path_factory.mktemp("triton_models")
    batching = BatchingOptions(max_batch_size=4, max_queue_delay_us=1000)
    fp32 = write_model(random_bundle, repository, batching=batching, threads=1)
    int8 = write_model(DEMO_BUNDLE, repository, batching=batching, threads=1)
    fifo_repository = tmp_path_factory.mktemp("triton_models_fifo")
    fifo_fp32 = write_model(random_bundle, fifo_repository, threads=1,
                            batching=BatchingOptions(max_batch_size=4, max_queue_delay_us=1000, scheduling="fifo"))
    servers = []
    try:
        servers.append(start_server(repository))
        servers.append(start_server(fifo_repository))
        yield Served(servers[0], fp32, int8, random_bundle, servers[1], fifo_fp32)
    finally:
        for server in servers:
            server.cleanup()
    assert all(server.process is None for server in servers)


def engine(bundle: Path, **options):
    from edge_thyroid.engine import Engine

    return Engine(bundle, **options)


def classify(eng, frame: np.ndarray):
    from edge_thyroid.engine import Pane

    return eng.classify(frame, [Pane(m, roi) for m, roi in PANES])


# -- the model repository ---------------------------------------------------------------------------
def test_export_triton_writes_a_standard_repository_for_both_flavours(tmp_path):
    cpu = run_cli("export-triton", DEMO_BUNDLE, "-o", tmp_path / "cpu", "--instances", "2", "--max-batch-size", "6")
    assert cpu.returncode == 0, cpu.stderr
    fifo = run_cli("export-triton", DEMO_BUNDLE, "-o", tmp_path / "fifo", "--scheduling", "fifo", "--layout", "latency")
    assert fifo.returncode == 0, fifo.stderr
    write_model(DEMO_BUNDLE, tmp_path / "gpu", flavor="onnxruntime", tensorrt=True)  # the CLI's path, in-process
    (cpu_model,) = (tmp_path / "cpu").iterdir()
    (gpu_model,) = (tmp_path / "gpu").iterdir()
    assert cpu_model.name == gpu_model.name and cpu_model.name.startswith("thyroid_int8_")
    cpu_config, gpu_config = (m / "config.pbtxt" for m in (cpu_model, gpu_model))
    cpu_text, gpu_text = cpu_config.read_text(), gpu_config.read_text()
    assert sorted(p.name for p in (cpu_model / "1").iterdir()) == ["model.onnx", "model.py"]
    assert sorted(p.name for p in (gpu_model / "1").iterdir()) == ["model.onnx"]
    # Fair scheduling (the default): one decoupled instance whose 2 worker threads are the passes.
    assert 'backend: "python"' in cpu_text and "count: 1 kind: KIND_CPU" in cpu_text
    assert "model_transaction_policy { decoupled: true }" in cpu_text and "dynamic_batching" not in cpu_text
    assert 'key: "workers" value: { string_value: "2" }' in cpu_text and "max_batch_size: 6" in cpu_text
    assert 'name: "service_order" data_type: TYPE_INT64' in cpu_text
    from edge_thyroid.serving.repository import cores_available

    # fifo + latency layout: Triton's batcher, one instance running on every core this process may use.
    fifo_text = next((tmp_path / "fifo").iterdir()).joinpath("config.pbtxt").read_text()
    assert "dynamic_batching {" in fifo_text and "decoupled" not in fifo_text and "count: 1 kind: KIND_CPU" in fifo_text
    # ... that waits for no company: the latency layout serves one client alone.
    assert "max_queue_delay_microseconds: 0\n" in fifo_text
    assert f'key: "intra_op_threads" value: {{ string_value: "{cores_available()}" }}' in fifo_text
    refused = run_cli("export-triton", DEMO_BUNDLE, "-o", tmp_path / "x", "--flavor", "onnxruntime", "--scheduling", "fair")
    assert_refused(refused, "fair scheduling runs inside the python flavour", "--scheduling fifo")
    assert f'string_value: "{sys.prefix}"' in cpu_text  # EXECUTION_ENV_PATH: this interpreter's environment
    assert 'backend: "onnxruntime"' in gpu_text and "kind: KIND_GPU" in gpu_text and 'name: "tensorrt"' in gpu_text
    assert "EXECUTION_ENV_PATH" not in gpu_text and "dynamic_batching {" in gpu_text and "decoupled" not in gpu_text
    manifest = json.loads((DEMO_BUNDLE / "manifest.json").read_text())
    assert manifest["files"]["model.int8.onnx"] in cpu_text  # the sha256 a client checks
    # The backbone written is the bundle's own: the same weights give the same maps as the fused model.
    import onnxruntime as ort

    from edge_thyroid.graph import backbone_graph

    pixels = np.random.default_rng(0).standard_normal((2, 3, 128, 128)).astype(np.float32)
    written = ort.InferenceSession(str(cpu_model / "1" / "model.onnx")).run(None, {"pixels": pixels})[0]
    cut = ort.InferenceSession(backbone_graph(DEMO_BUNDLE / "model.int8.onnx").SerializeToString()).run(
        None, {"pixels": pixels})[0]
    np.testing.assert_array_equal(written, cut)
    again = run_cli("export-triton", DEMO_BUNDLE, "-o", tmp_path / "cpu")
    assert_refused(again, "already exists", "--overwrite")


# -- remote vs local ----------------------------------------------------------------------------------
@pytest.mark.parametrize("scheduling, url_kind, shared_memory", [
    ("fair", "grpc", None), ("fair", "grpc", False),
    ("fifo", "grpc", None), ("fifo", "http", None), ("fifo", "http", False)])
def test_remote_fp32_matches_in_process(served, scheduling, url_kind, shared_memory):
    server = served.server if scheduling == "fair" else served.fifo
    url = server.grpc_url if url_kind == "grpc" else server.http_url
    with engine(served.fp32_bundle) as local, \
            engine(served.fp32_bundle, backend="triton", server=url, shared_memory=shared_memory) as remote:
        assert remote.backend.use_shared_memory is (shared_memory is None)  # loopback: shared memory by default
        assert remote.backend.decoupled is (scheduling == "fair")  # fair: answers over a gRPC stream
        for seed in range(3):
            frame = screen_frame(seed=seed)
            want, got = classify(local, frame), classify(remote, frame)
            assert abs(got.probability - want.probability) <= 1e-4
            for a, b in zip(got.panes, want.panes):
                np.testing.assert_allclose(a.feature_maps, b.feature_maps, rtol=1e-3, atol=1e-4)


def test_remote_int8_agrees_with_in_process(served):
    with engine(DEMO_BUNDLE) as local, engine(DEMO_BUNDLE, backend="triton", server=served.server.grpc_url) as remote:
        for seed in range(3):
            frame = screen_frame(seed=seed)
            want, got = classify(local, frame), classify(remote, frame)
            # INT8: host preprocessing may move a few inputs across a quantization step; the accuracy
            # gate's |dp| for this bundle against FP32 is 0.07, so 0.01 is far inside it.
            assert abs(got.probability - want.probability) <= 0.01
            assert got.decision == want.decision


def test_a_bundle_the_server_does_not_serve_is_named_at_load(served, tmp_path):
    from tests.reliability.helpers import copy_bundle, rehash, replace_file

    other = copy_bundle(served.fp32_bundle, tmp_path / "other")
    model = next(p for p in other.iterdir() if p.suffix == ".onnx")
    replace_file(model, model.read_bytes() + b"\0")  # other weights, other sha256
    rehash(other, model.name)
    with pytest.raises(BackendError, match="serves no model for"):
        engine(other, backend="triton", server=served.server.grpc_url)


def test_an_http_client_of_a_fair_server_is_told_to_use_grpc(served):
    with pytest.raises(BackendError, match="needs gRPC streaming: use --server grpc://127.0.0.1"):
        engine(served.fp32_bundle, backend="triton", server=served.server.http_url)


def test_no_server_is_one_clear_error(random_bundle):
    url = f"grpc://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(ServerUnavailableError, match="no answer from the Triton server"):
        engine(random_bundle, backend="triton", server=url)
    assert time.monotonic() - started < 30  # bounded: a dead address must not hang a command
    result = run_cli("classify", random_bundle, REPO / "README.md", "--backend", "triton")
    assert_refused(result, "--backend triton needs --server")
    with pytest.raises(BackendError, match="grpc://HOST:PORT"):
        engine(random_bundle, backend="triton", server="ftp://127.0.0.1:1")


# -- bad requests -----------------------------------------------------------------------------------------
def test_malformed_and_oversized_requests_are_refused_and_the_server_stays_up(served):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from edge_thyroid.backends.triton import TritonBackend

    client = grpcclient.InferenceServerClient(served.fifo.grpc_url.removeprefix("grpc://"))
    size = served.fp32.image_size

    def send(array: np.ndarray, datatype: str = "FP32") -> InferenceServerException:
        tensor = grpcclient.InferInput("pixels", list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        with pytest.raises(InferenceServerException) as caught:
            client.infer(served.fifo_fp32.name, [tensor], client_timeout=30)
        assert not TritonBackend._unavailable(caught.value), caught.value  # refused, not retried
        return caught.value

    assert "batch-size must be <= 4" in send(np.zeros((5, 3, size, size), np.float32)).message()
    assert "shape" in send(np.zeros((1, 3, size + 1, size), np.float32)).message()
    assert "data-type" in send(np.zeros((1, 3, size, size), np.int64), "INT64").message().lower()
    # The fair model answers over a stream: the same requests are refused there, as answers to them.
    stream = StreamClient(served.server, served.fp32.name, "refusals")
    try:
        for array, datatype, words in [(np.zeros((5, 3, size, size), np.float32), "FP32", "batch-size must be <= 4"),
                                       (np.zeros((1, 3, size + 1, size), np.float32), "FP32", "shape"),
                                       (np.zeros((1, 3, size, size), np.int64), "INT64", "data-type")]:
            result, error = stream.ask(array, datatype)
            assert result is None and words in str(error).lower().replace("data type", "data-type"), error
            assert not TritonBackend._unavailable(error, streamed=True), error  # refused, not retried
    finally:
        stream.close()
    request = urllib.request.Request(f"{served.fifo.http_url}/v2/models/{served.fifo_fp32.name}/infer",
                                     data=b'{"inputs": [{"name": "pixels", "shape": [1, 3', method="POST",
                                     headers={"Content-Type": "application/json"})
    assert "error" in http_refusal(request)
    # A body far larger than its declared tensor (64 MiB behind a one-pane header) is refused too.
    header = json.dumps({"inputs": [{"name": "pixels", "shape": [1, 3, size, size], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 64 << 20}}]}).encode()
    request = urllib.request.Request(f"{served.fifo.http_url}/v2/models/{served.fifo_fp32.name}/infer",
                                     data=header + bytes(64 << 20), method="POST",
                                     headers={"Content-Type": "application/octet-stream",
                                              "Inference-Header-Content-Length": str(len(header))})
    assert "error" in http_refusal(request)
    client.close()
    assert client_is_ready(served.server) and client_is_ready(served.fifo)


def http_refusal(request: urllib.request.Request) -> dict:
    """The JSON error body of a request the server must refuse (Triton answers 400, or 500 for a body
    its JSON parser rejects)."""
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=60)
    assert caught.value.code in (400, 500)
    body = json.loads(caught.value.read())
    print("refused:", caught.value.code, body)
    return body


def client_is_ready(server: TritonServer) -> bool:
    with urllib.request.urlopen(f"{server.http_url}/v2/health/ready", timeout=10) as response:
        return response.status == 200


# -- fairness ----------------------------------------------------------------------------------------------
class StreamClient:
    """A plain gRPC streaming client of a fair model, naming itself ``name`` (what the triton backend
    sends for each workstation stream), with any number of requests in flight; ``one_in_flight``:
    it says (as the triton backend does) that it sends the next request only after the answer."""

    def __init__(self, server: TritonServer, model: str, name: str, one_in_flight: bool = False) -> None:
        import tritonclient.grpc as grpcclient

        self.module = grpcclient
        self.client = grpcclient.InferenceServerClient(server.grpc_url.removeprefix("grpc://"))
        self.answers: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.answers.put((result, error)))
        self.model, self.name = model, name
        self.parameters = {CLIENT_PARAMETER: name, **({ONE_IN_FLIGHT_PARAMETER: True} if one_in_flight else {})}
        self.ids = itertools.count()

    def send(self, array: np.ndarray, datatype: str = "FP32", outputs: tuple[str, ...] = ()) -> str:
        tensor = self.module.InferInput("pixels", list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        request_id = f"{self.name}-{next(self.ids)}"
        self.client.async_stream_infer(self.model, [tensor], request_id=request_id,
                                       outputs=[self.module.InferRequestedOutput(name) for name in outputs] or None,
                                       parameters=self.parameters)
        return request_id

    def receive(self, timeout: float = 120):
        return self.answers.get(timeout=timeout)  # queue.Empty: a hung request fails the test, bounded

    def ask(self, array: np.ndarray, datatype: str = "FP32", outputs: tuple[str, ...] = ()):
        self.send(array, datatype, outputs)
        return self.receive()

    def close(self) -> None:
        # Not cancel_requests=True: after a cancelled stream this Triton build cannot unload the
        # model, and the server's stop would run into its exit timeout.
        self.client.stop_stream()
        self.client.close()


def waited(result) -> int:
    """Requests the server took for a pass between this request's arrival and its own pass."""
    served_at_arrival, service_index = (int(v) for v in result.as_numpy(ORDER)[0])
    return service_index - served_at_arrival


def test_fair_queue_serves_clients_round_robin_and_bounds_each():
    fair = FairQueue(limit=3)
    pane = {"pixels": np.zeros((1, 3, 2, 2), np.float32)}
    for client, count in [("flood", 3), ("a", 2), ("b", 1)]:
        for i in range(count):
            assert fair.put(client, {**pane, "id": f"{client}{i}"}) is None
    refused = fair.put("flood", {**pane, "id": "flood3"})
    assert "client flood already has 3 requests waiting" in refused and "at most 3 in flight" in refused
    one_at_a_time = [fair.take(max_panes=1, across=True)[0]["id"] for _ in range(6)]
    assert one_at_a_time == ["flood0", "a0", "b0", "flood1", "a1", "flood2"]
    for i in range(3):
        fair.put("flood", {**pane, "id": f"f{i}"})
    fair.put("x", {**pane, "id": "x0"})
    assert [item["id"] for item in fair.take(max_panes=3, across=True)] == ["f0", "x0", "f1"]  # one turn each, then again
    assert [item["id"] for item in fair.take(max_panes=3, across=False)] == ["f2"]            # batching off: one request
    fair.put("y", {**pane, "id": "y0"})
    assert [item["service_index"] for item in fair.take(max_panes=8, across=True)] == [10]  # the 11th served
    assert fair.close() == [] and fair.take(1, True) is None


@pytest.fixture(scope="module")
def fair_server(tmp_path_factory):
    """The many-client layout of a 2-core server: 2 single-threaded passes at once, fair scheduling;
    its model logs each request's stages (benchmarks/remote_breakdown.py reads them)."""
    yield from stage_logged_server(tmp_path_factory.mktemp("triton_fair"), passes=2)


def stage_logged_server(repository: Path, passes: int):
    """A fair server of the demo bundle with ``passes`` single-threaded passes at once, whose model
    logs each request's stages."""
    model = write_model(DEMO_BUNDLE, repository, threads=1,
                        batching=BatchingOptions(instances=passes, max_batch_size=8, client_queue_limit=40))
    stage_log = repository / "stages.jsonl"
    os.environ[STAGE_LOG] = str(stage_log)  # the server and its Python stub inherit it at start
    try:
        server = start_server(repository)
    finally:
        del os.environ[STAGE_LOG]
    try:
        yield server, model, stage_log
    finally:
        server.cleanup()


def test_a_flooding_client_does_not_starve_a_streaming_one(fair_server):
    """One client keeps 32 requests in flight; a streaming client (one request at a time) is served in
    the next pass after each of its requests arrives: at most one flood request (the one other client's
    turn) goes before it, where first-come-first-served would put the whole flood before it. Counted
    in requests by the server's own service order, not timed."""
    import onnxruntime as ort

    server, model, _ = fair_server
    depth = 32
    pixels = np.random.default_rng(1).standard_normal((3, 3, model.image_size, model.image_size)).astype(np.float32)
    flooder, victim = StreamClient(server, model.name, "flooder"), StreamClient(server, model.name, "victim")
    flood_waits: list[int] = []
    flood_errors: list[object] = []
    stop = threading.Event()

    def flood() -> None:
        for _ in range(depth):
            flooder.send(pixels)
        for _ in itertools.count():
            result, error = flooder.receive()
            if error is not None:
                flood_errors.append(error)
            else:
                flood_waits.append(waited(result))
            if stop.is_set():
                return
            flooder.send(pixels)  # keep the flood `depth` deep

    thread = threading.Thread(target=flood, daemon=True)
    victim_waits, victim_maps = [], []
    try:
        thread.start()
        assert wait_until(lambda: len(flood_waits) >= depth, 120)  # the flood has been deep for a while
        for _ in range(8):
            result, error = victim.ask(pixels)
            assert error is None, error
            victim_waits.append(waited(result))
            victim_maps.append(result.as_numpy("feature_maps"))
    finally:
        stop.set()
        thread.join(timeout=120)
        flooder.close()
        victim.close()
    assert not thread.is_alive() and not flood_errors, flood_errors
    assert max(victim_waits) <= 1, victim_waits
    # The flood was real: its own requests waited behind most of the flood (what FIFO would make anyone wait).
    assert statistics.median(flood_waits[depth:]) >= depth // 2, flood_waits
    # and fairness did not mix up answers: the victim got its own pixels' feature maps.
    # The backbone the server runs (the export test checks it is the bundle's own, cut from its graph).
    session = ort.InferenceSession(str(model.path / str(model.version) / "model.onnx"))
    want = session.run(None, {"pixels": pixels})[0]
    for maps in victim_maps:
        np.testing.assert_allclose(maps, want, rtol=1e-4, atol=1e-4)


def test_only_the_outputs_asked_for_are_answered_and_each_request_is_logged_stage_by_stage(fair_server):
    """A client that names its outputs gets those only (the serving client asks for the feature maps
    alone); one that names none gets all. With the stage log on, every request's server stages are
    one line, in the order they happen on one clock."""
    server, model, stage_log = fair_server
    pixels = np.random.default_rng(2).standard_normal((3, 3, model.image_size, model.image_size)).astype(np.float32)
    client = StreamClient(server, model.name, "stages")
    try:
        maps_only, error = client.ask(pixels, outputs=("feature_maps",))
        assert error is None, error
        everything, error = client.ask(pixels)
        assert error is None, error
    finally:
        client.close()
    assert maps_only.as_numpy("feature_maps").shape[0] == 3 and maps_only.as_numpy(ORDER) is None
    assert everything.as_numpy(ORDER).shape == (3, 2)
    np.testing.assert_array_equal(maps_only.as_numpy("feature_maps"), everything.as_numpy("feature_maps"))
    ids = {maps_only.get_response().id, everything.get_response().id}
    assert wait_until(lambda: ids <= {json.loads(line)["id"] for line in stage_log.read_text().splitlines()}, 30)
    for line in stage_log.read_text().splitlines():
        record = json.loads(line)
        if record["id"] in ids:
            order = ["execute", "read", "taken", "run_start", "run_end", "sending", "answered"]
            stamps = [record[name] for name in order]
            assert stamps == sorted(stamps) and record["panes"] == 3, record


def test_a_client_past_its_queue_limit_is_refused_at_once(fair_server):
    from edge_thyroid.backends.triton import TritonBackend

    server, model, _ = fair_server
    pane = np.zeros((1, 3, model.image_size, model.image_size), np.float32)
    greedy, other = StreamClient(server, model.name, "greedy"), StreamClient(server, model.name, "other")
    try:
        for _ in range(100):
            greedy.send(pane)
        answers = [greedy.receive() for _ in range(100)]  # every request is answered: served or refused
        result, error = other.ask(pane)                   # and another client is still served
    finally:
        greedy.close()
        other.close()
    refused = [error for result, error in answers if error is not None]
    assert error is None and result.as_numpy("feature_maps").shape[0] == 1
    assert 0 < len(refused) <= 100 - 40, len(refused)  # at least the limit's worth was taken
    for error in refused:
        assert "client greedy already has 40 requests waiting" in str(error), error
        assert TritonBackend._unavailable(error, streamed=True)  # a busy server: the triton backend backs off


@pytest.fixture(scope="module")
def one_pass_server(tmp_path_factory):
    """The single-workstation layout (serve --layout latency): one pass at once, fair scheduling,
    with the stage log."""
    yield from stage_logged_server(tmp_path_factory.mktemp("triton_one_pass"), passes=1)


def stage_records(stage_log: Path, ids: set[str], timeout: float = 30) -> dict[str, dict]:
    assert wait_until(lambda: ids <= {json.loads(line)["id"] for line in stage_log.read_text().splitlines()}, timeout)
    return {r["id"]: r for r in map(json.loads, stage_log.read_text().splitlines()) if r["id"] in ids}


def test_a_lone_request_runs_inline_and_a_flood_is_still_served_round_robin(one_pass_server):
    """On an idle one-pass server, the request of a client with nothing else in flight is run by
    execute itself (its stage log has no queue wait: read and taken are one stamp), one from a client
    that does not say so is filed for the worker; under a flood the lone client is still in the next
    pass (service order, as in the fairness test above) and gets its own pixels' maps."""
    import onnxruntime as ort

    server, model, stage_log = one_pass_server
    rng = np.random.default_rng(3)
    pixels = rng.standard_normal((3, 3, model.image_size, model.image_size)).astype(np.float32)
    session = ort.InferenceSession(str(model.path / str(model.version) / "model.onnx"))
    want = session.run(None, {"pixels": pixels})[0]
    lone = StreamClient(server, model.name, "lone", one_in_flight=True)
    plain = StreamClient(server, model.name, "plain")
    flooder = StreamClient(server, model.name, "flooder")
    try:
        answers = [lone.ask(pixels) for _ in range(3)] + [plain.ask(pixels)]
        for result, error in answers:
            assert error is None, error
            np.testing.assert_allclose(result.as_numpy("feature_maps"), want, rtol=1e-4, atol=1e-4)
        ids = [result.get_response().id for result, _ in answers]
        records = stage_records(stage_log, set(ids))
        assert [records[i]["read"] == records[i]["taken"] for i in ids] == [True, True, True, False], records
        depth = 16
        for _ in range(depth):
            flooder.send(pixels)
        lone_waits = []
        for _ in range(4):
            result, error = lone.ask(pixels)
            assert error is None, error
            lone_waits.append(waited(result))
            np.testing.assert_allclose(result.as_numpy("feature_maps"), want, rtol=1e-4, atol=1e-4)
        flood_answers = [flooder.receive() for _ in range(depth)]
    finally:
        lone.close()
        plain.close()
        flooder.close()
    assert all(error is None for _, error in flood_answers), flood_answers
    assert max(lone_waits) <= 1, lone_waits


# -- streams ----------------------------------------------------------------------------------------------
def spawn_stream(bundle: Path, url: str, out: Path, *extra: str) -> subprocess.Popen:
    log = open(out.with_suffix(".log"), "w")
    return subprocess.Popen([sys.executable, "-m", "edge_thyroid", "stream", str(bundle), "--backend", "triton",
                             "--server", url, "--json-out", str(out), "--quiet", "--whole-pane", *extra],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def frame_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()[:-1]  # the last may be half written
    return [record for record in map(json.loads, lines) if record["type"] == "frame"]


def wait_until(condition, timeout: float, *processes: subprocess.Popen) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if any(p.poll() is not None for p in processes):
            return condition()
        time.sleep(0.05)
    return False


def inference_successes(server: TritonServer, model: str) -> int:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
               if line.startswith("nv_inference_request_success{") and f'model="{model}"' in line)


def test_four_concurrent_streams_share_the_server(served, tmp_path):
    frames = 8
    before = inference_successes(served.server, served.fp32.name)
    outs = [tmp_path / f"client{i}.jsonl" for i in range(4)]
    processes = [spawn_stream(served.fp32_bundle, served.server.grpc_url, out, "--source",
                              f"synthetic:dual?size=640x360&frames={frames}", "--as-fast-as-possible", "--no-cache")
                 for out in outs]
    try:
        for process in processes:
            assert process.wait(timeout=120) == 0, process.args
    finally:
        for process in processes:
            process.kill()
    for out in outs:
        records = [r for r in parse_jsonl(out) if r["type"] == "frame"]
        assert len(records) == frames
        assert all(r["reason"] != "server_unavailable" and r["p"] is not None for r in records)
    # Every frame of every client was one request the server answered (pane cache off).
    assert inference_successes(served.server, served.fp32.name) - before == 4 * frames


@pytest.mark.parametrize("flavor", ["python", "openvino"])
def test_a_server_killed_and_restarted_mid_stream(random_bundle, tmp_path, flavor):
    repository = tmp_path / "models"
    model = write_model(random_bundle, repository, flavor=flavor, threads=1)
    ports = dict(zip(("grpc_port", "http_port", "metrics_port"), free_ports(3)))
    server = start_server(repository, **ports)
    out = tmp_path / "stream.jsonl"
    stream = spawn_stream(random_bundle, server.grpc_url, out, "--source", "synthetic:dual?size=640x360",
                          "--fps", "15", "--max-frames", "3000", "--no-cache")
    restarted = None
    try:
        assert wait_until(lambda: len(frame_records(out)) >= 5, 120, stream), out.with_suffix(".log").read_text()
        crashed_group = server.process.pid
        os.kill(server.process.pid, signal.SIGKILL)  # a crash: no goodbye to the clients
        server.process.wait(timeout=30)
        assert wait_until(lambda: sum(r["reason"] == "server_unavailable" for r in frame_records(out)) >= 5, 60, stream)
        restarted = start_server(repository, **ports)
        back = time.time()
        assert wait_until(lambda: any(r["wall_time"] > back and r["p"] is not None for r in frame_records(out)),
                          60, stream), out.with_suffix(".log").read_text()
        stream.send_signal(signal.SIGTERM)
        assert stream.wait(timeout=60) == 0  # no hung client: it stops cleanly when asked
    finally:
        stream.kill()
        server.cleanup()
        if restarted is not None:
            restarted.cleanup()
    with pytest.raises(ProcessLookupError):  # the crashed server's backend stubs were stopped with it
        os.killpg(crashed_group, 0)
    records = parse_jsonl(out)  # every line parses
    from .test_stream_records import STREAM_RECORDS

    for record in records:  # and follows the published record schema, server gaps included
        STREAM_RECORDS.validate(record)
    frames = [r for r in records if r["type"] == "frame"]
    gaps = [r for r in records if r["type"] == "gap"]
    assert [r["frame"] for r in frames] == sorted(r["frame"] for r in frames)
    abstained = [r for r in frames if r["reason"] == "server_unavailable"]
    assert abstained and all(r["p"] is None and r["decision"] == "abstain" for r in abstained)
    assert len(gaps) == 1 and gaps[0]["kind"] == "server" and gaps[0]["resumed"] is True
    assert gaps[0]["attempts"] == len(abstained)  # each abstained frame is counted in the gap record
    first_back = next(r for r in frames if r["frame"] > abstained[-1]["frame"])
    assert first_back["p"] is not None
    recovery = first_back["wall_time"] - back
    print(f"recovered {recovery:.2f} s after the server was ready again; {len(abstained)} frames abstained; "
          f"model {model.name}")


# -- the serve command ----------------------------------------------------------------------------------
def test_serve_starts_reports_where_it_listens_and_stops_on_sigterm(random_bundle, tmp_path):
    import psutil

    log = tmp_path / "serve.log"
    with open(log, "w") as handle:
        process = subprocess.Popen([sys.executable, "-m", "edge_thyroid", "serve", str(random_bundle), "--grpc-port", "0",
                                    "--http-port", "0", "--metrics-port", "0", "--threads", "1"],
                                   cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert wait_until(lambda: "stop with Ctrl-C" in log.read_text(), 120, process), log.read_text()
        text = log.read_text()
        grpc_url = text.split("grpc ", 1)[1].split()[0]
        assert grpc_url.startswith("grpc://127.0.0.1:")  # loopback unless told otherwise
        children = psutil.Process(process.pid).children(recursive=True)
        assert any(c.name() == "tritonserver" for c in children)
        with engine(random_bundle, backend="triton", server=grpc_url) as remote:
            assert 0.0 <= classify(remote, screen_frame()).probability <= 1.0
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
    assert "server stopped (exit status 0)" in log.read_text()
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)
