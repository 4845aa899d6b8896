"""A real Triton Inference Server on 127.0.0.1 (free ports, started and stopped by the tests):
model repository export, remote vs local parity, concurrent streams, a server killed mid-stream,
refused requests, and the serve command's lifecycle.

The server binary comes from ``pip install --no-deps nvidia-pytriton`` (.ci/run does it). Without it
these tests skip on a developer's machine and fail in CI, where they must run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edge_thyroid.errors import BackendError, ServerUnavailableError
from edge_thyroid.serving.repository import BatchingOptions, ServedModel, write_model
from edge_thyroid.serving.server import ServerError, ServerOptions, TritonServer, find_installation, free_port

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
    server: TritonServer
    fp32: ServedModel
    int8: ServedModel
    fp32_bundle: Path


def start_server(repository: Path, **ports: int) -> TritonServer:
    ports = {name: ports.get(name) or free_port() for name in ("grpc_port", "http_port", "metrics_port")}
    return TritonServer(ServerOptions(repository, **ports)).start(timeout_s=120)


@pytest.fixture(scope="module")
def served(random_bundle, tmp_path_factory):
    repository = tmp_path_factory.mktemp("triton_models")
    batching = BatchingOptions(max_batch_size=4, max_queue_delay_us=1000)
    fp32 = write_model(random_bundle, repository, batching=batching, threads=1)
    int8 = write_model(DEMO_BUNDLE, repository, batching=batching, threads=1)
    server = start_server(repository)
    try:
        yield Served(server, fp32, int8, random_bundle)
    finally:
        server.cleanup()
    assert server.process is None


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
    write_model(DEMO_BUNDLE, tmp_path / "gpu", flavor="onnxruntime", tensorrt=True)  # the CLI's path, in-process
    (cpu_model,) = (tmp_path / "cpu").iterdir()
    (gpu_model,) = (tmp_path / "gpu").iterdir()
    assert cpu_model.name == gpu_model.name and cpu_model.name.startswith("thyroid_int8_")
    cpu_config, gpu_config = (m / "config.pbtxt" for m in (cpu_model, gpu_model))
    cpu_text, gpu_text = cpu_config.read_text(), gpu_config.read_text()
    assert sorted(p.name for p in (cpu_model / "1").iterdir()) == ["model.onnx", "model.py"]
    assert sorted(p.name for p in (gpu_model / "1").iterdir()) == ["model.onnx"]
    assert 'backend: "python"' in cpu_text and "count: 2 kind: KIND_CPU" in cpu_text
    assert "max_batch_size: 6" in cpu_text and "dynamic_batching {" in cpu_text
    assert f'string_value: "{sys.prefix}"' in cpu_text  # EXECUTION_ENV_PATH: this interpreter's environment
    assert 'backend: "onnxruntime"' in gpu_text and "kind: KIND_GPU" in gpu_text and 'name: "tensorrt"' in gpu_text
    assert "EXECUTION_ENV_PATH" not in gpu_text
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
@pytest.mark.parametrize("url_kind, shared_memory", [("grpc", None), ("grpc", False), ("http", None), ("http", False)])
def test_remote_fp32_matches_in_process(served, url_kind, shared_memory):
    frame = screen_frame()
    url = served.server.grpc_url if url_kind == "grpc" else served.server.http_url
    with engine(served.fp32_bundle) as local, \
            engine(served.fp32_bundle, backend="triton", server=url, shared_memory=shared_memory) as remote:
        assert remote.backend.use_shared_memory is (shared_memory is None)  # loopback: shared memory by default
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

    client = grpcclient.InferenceServerClient(served.server.grpc_url.removeprefix("grpc://"))
    size = served.fp32.image_size

    def send(array: np.ndarray, datatype: str = "FP32") -> InferenceServerException:
        tensor = grpcclient.InferInput("pixels", list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        with pytest.raises(InferenceServerException) as caught:
            client.infer(served.fp32.name, [tensor], client_timeout=30)
        assert not TritonBackend._unavailable(caught.value), caught.value  # refused, not retried
        return caught.value

    assert "batch-size must be <= 4" in send(np.zeros((5, 3, size, size), np.float32)).message()
    assert "shape" in send(np.zeros((1, 3, size + 1, size), np.float32)).message()
    assert "data-type" in send(np.zeros((1, 3, size, size), np.int64), "INT64").message().lower()
    request = urllib.request.Request(f"{served.server.http_url}/v2/models/{served.fp32.name}/infer",
                                     data=b'{"inputs": [{"name": "pixels", "shape": [1, 3', method="POST",
                                     headers={"Content-Type": "application/json"})
    assert "error" in http_refusal(request)
    # A body far larger than its declared tensor (64 MiB behind a one-pane header) is refused too.
    header = json.dumps({"inputs": [{"name": "pixels", "shape": [1, 3, size, size], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 64 << 20}}]}).encode()
    request = urllib.request.Request(f"{served.server.http_url}/v2/models/{served.fp32.name}/infer",
                                     data=header + bytes(64 << 20), method="POST",
                                     headers={"Content-Type": "application/octet-stream",
                                              "Inference-Header-Content-Length": str(len(header))})
    assert "error" in http_refusal(request)
    client.close()
    assert client_is_ready(served.server)


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


def test_a_server_killed_and_restarted_mid_stream(random_bundle, tmp_path):
    repository = tmp_path / "models"
    model = write_model(random_bundle, repository, threads=1)
    ports = {"grpc_port": free_port(), "http_port": free_port(), "metrics_port": free_port()}
    server = start_server(repository, **ports)
    out = tmp_path / "stream.jsonl"
    stream = spawn_stream(random_bundle, server.grpc_url, out, "--source", "synthetic:dual?size=640x360",
                          "--fps", "15", "--max-frames", "3000", "--no-cache")
    restarted = None
    try:
        assert wait_until(lambda: len(frame_records(out)) >= 5, 120, stream), out.with_suffix(".log").read_text()
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
