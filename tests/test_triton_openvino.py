"""The openvino serving flavour: our C backend (edge_thyroid/serving/native/openvino_backend.c) compiled
here, loaded by a real Triton server on 127.0.0.1 (free ports, started and stopped by the tests), and
checked against the in-process OpenVINO and ONNX Runtime backends: the maps of one pane, of several
panes, of requests batched together by Triton's dynamic batcher; refused requests; the build's cache and
its errors; the serve command with --flavor openvino.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_thyroid.serving import native_backend
from edge_thyroid.serving.repository import BatchingOptions, write_model
from edge_thyroid.serving.server import ServerError

from .conftest import REPO, needs_torch, screen_frame
from .reliability.helpers import assert_refused, run_cli
from .test_triton_serving import DEMO_BUNDLE, classify, engine, needs_server, start_server, wait_until

pytestmark = [needs_server, needs_torch]


@pytest.fixture(scope="module")
def openvino_server(random_bundle, tmp_path_factory):
    """One server, two models: the random FP32 bundle (no mirror average) and the shipped INT8 bundle
    (mirror average: the backend writes the mirror images). A 0.5 s queue delay and room for 4 panes,
    so requests sent together are batched together."""
    repository = tmp_path_factory.mktemp("openvino_models")
    batching = BatchingOptions(max_batch_size=4, max_queue_delay_us=500_000, scheduling="fifo")
    fp32 = write_model(random_bundle, repository, flavor="openvino", batching=batching, threads=1)
    int8 = write_model(DEMO_BUNDLE, repository, flavor="openvino", batching=batching, threads=1)
    server = start_server(repository)
    try:
        yield server, fp32, int8
    finally:
        server.cleanup()


def test_export_triton_writes_the_openvino_flavour(tmp_path):
    done = run_cli("export-triton", DEMO_BUNDLE, "-o", tmp_path / "ov", "--flavor", "openvino", "--layout", "latency")
    assert done.returncode == 0, done.stderr
    (model,) = (tmp_path / "ov").iterdir()
    text = (model / "config.pbtxt").read_text()
    assert 'backend: "edge_thyroid_openvino"' in text and "dynamic_batching {" in text and "decoupled" not in text
    assert 'key: "edge_thyroid_host_mirror" value: { string_value: "1" }' in text  # the demo has the mirror average
    assert 'key: "edge_thyroid_precompile_panes" value: { string_value: "3" }' in text  # its three modalities
    assert "EXECUTION_ENV_PATH" not in text and "KIND_CPU" in text
    assert 'key: "edge_thyroid_cpu_pinning" value: { string_value: "1" }' in text  # one instance may pin its threads
    # The throughput layout: an instance per core, none pinned, and no wait for company (BENCHMARKS.md).
    done = run_cli("export-triton", DEMO_BUNDLE, "-o", tmp_path / "many", "--flavor", "openvino", "--instances", "2")
    assert done.returncode == 0, done.stderr
    many = next((tmp_path / "many").iterdir()).joinpath("config.pbtxt").read_text()
    assert "count: 2 kind: KIND_CPU" in many and "max_queue_delay_microseconds: 0\n" in many
    assert 'key: "edge_thyroid_cpu_pinning" value: { string_value: "0" }' in many
    assert sorted(p.name for p in (model / "1").iterdir()) == ["model.onnx"]
    # The file is the backbone with the mirror copy taken out: input [2N, 3, S, S], output [N, C, h, w].
    import onnxruntime as ort

    from edge_thyroid.graph import backbone_graph

    pixels = np.random.default_rng(0).standard_normal((2, 3, 128, 128)).astype(np.float32)
    written = ort.InferenceSession(str(model / "1" / "model.onnx"))
    mirrored = np.concatenate([pixels, pixels[..., ::-1]])
    want = ort.InferenceSession(backbone_graph(DEMO_BUNDLE / "model.int8.onnx").SerializeToString()).run(
        None, {"pixels": pixels})[0]
    np.testing.assert_allclose(written.run(None, {"pixels": mirrored})[0], want, atol=1e-6)
    assert_refused(run_cli("export-triton", DEMO_BUNDLE, "-o", tmp_path / "x", "--flavor", "openvino",
                           "--scheduling", "fair"), "fair scheduling runs inside the python flavour", "--scheduling fifo")
    assert_refused(run_cli("export-triton", DEMO_BUNDLE, "-o", tmp_path / "y", "--flavor", "openvino", "--gpu"),
                   "openvino flavour runs on the server's CPU", "--flavor onnxruntime")


def test_the_backend_is_built_once_and_cached(native_backend_cache):
    assert native_backend.cache_root() == native_backend_cache  # conftest: a test cache, never the user's
    first = native_backend.build()
    stamp = first.stat().st_mtime_ns
    assert first.is_file() and first.name == "libtriton_edge_thyroid_openvino.so"
    assert first.parent.name == "edge_thyroid_openvino"  # the folder name is the backend name Triton looks up
    assert native_backend.build() == first and first.stat().st_mtime_ns == stamp  # cached: not compiled again
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(first)], capture_output=True, text=True).stdout
    for entry in ("TRITONBACKEND_ModelInstanceExecute", "TRITONBACKEND_ModelInitialize", "TRITONBACKEND_Initialize"):
        assert f" T {entry}" in symbols


def test_a_failing_compiler_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "false")  # a "compiler" that exits 1
    with pytest.raises(ServerError, match="compiling the edge_thyroid_openvino Triton backend failed"):
        native_backend.build(tmp_path)
    # A compiler that reports an error: its first error line is what the user sees.
    fake = tmp_path / "fakecc"
    fake.write_text("#!/bin/sh\necho 'x.c:1:1: error: the real cause' >&2\necho 'compilation terminated.' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    with pytest.raises(ServerError, match="exited with 1\\): x.c:1:1: error: the real cause"):
        native_backend.build(tmp_path)
    # An unwritable cache folder is named, with the variable that moves it.
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder would go")
    with pytest.raises(ServerError, match="EDGE_THYROID_CACHE"):
        native_backend.build(blocked)
    monkeypatch.setenv("PATH", str(tmp_path))  # no compiler at all
    monkeypatch.delenv("CC")
    with pytest.raises(ServerError, match="found no C compiler"):
        native_backend.build(tmp_path)
    # A backend built before needs no compiler: a workstation without one reuses the cache.
    monkeypatch.undo()
    built = native_backend.build(tmp_path / "cache")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert native_backend.build(tmp_path / "cache") == built


def test_remote_maps_equal_in_process_openvino_and_onnxruntime(openvino_server, random_bundle):
    server, _, _ = openvino_server
    with engine(random_bundle, backend="triton", server=server.grpc_url) as remote, \
            engine(random_bundle, backend="openvino") as ov, engine(random_bundle, backend="onnxruntime") as ort_:
        assert remote.backend.use_shared_memory and not remote.backend.decoupled
        for seed in range(3):
            frame = screen_frame(seed=seed)
            got, same, reference = classify(remote, frame), classify(ov, frame), classify(ort_, frame)
            for a, b, c in zip(got.panes, same.panes, reference.panes):
                # The server runs the same OpenVINO on the same host-preprocessed pixels.
                np.testing.assert_allclose(a.feature_maps, b.feature_maps, rtol=0, atol=1e-5)
                np.testing.assert_allclose(a.feature_maps, c.feature_maps, rtol=1e-3, atol=1e-4)
            assert abs(got.probability - reference.probability) <= 1e-4


def test_the_int8_mirror_average_bundle_matches_in_process_openvino(openvino_server):
    server, _, _ = openvino_server
    with engine(DEMO_BUNDLE, backend="triton", server=server.grpc_url) as remote, \
            engine(DEMO_BUNDLE, backend="openvino") as local:
        for seed in range(2):
            frame = screen_frame(seed=seed)
            got, want = classify(remote, frame), classify(local, frame)
            for a, b in zip(got.panes, want.panes):
                np.testing.assert_allclose(a.feature_maps, b.feature_maps, rtol=0, atol=1e-5)
            assert abs(got.probability - want.probability) <= 1e-5


def test_requests_batched_together_each_get_their_own_panes(openvino_server):
    """1 + 2 + 1 panes from three clients at once fill the batch (4): one pass, and each answer must be
    the maps of its own panes, in order, as a lone request of it gets them."""
    import tritonclient.grpc as grpcclient

    server, fp32, _ = openvino_server
    url = server.grpc_url.removeprefix("grpc://")
    size = fp32.image_size
    rng = np.random.default_rng(7)
    requests = [rng.standard_normal((n, 3, size, size)).astype(np.float32) for n in (1, 2, 1)]

    def ask(client, pixels):
        tensor = grpcclient.InferInput("pixels", list(pixels.shape), "FP32")
        tensor.set_data_from_numpy(pixels)
        return client.infer(fp32.name, [tensor], client_timeout=60).as_numpy("feature_maps")

    clients = [grpcclient.InferenceServerClient(url) for _ in requests]
    alone = [ask(clients[0], pixels) for pixels in requests]  # each waits out the queue delay alone
    before = batch_counts(clients[0], fp32.name)
    answers: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda i=i: answers.__setitem__(i, ask(clients[i], requests[i])))
               for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for client in clients:
        client.close()
    assert sorted(answers) == [0, 1, 2]
    for i, pixels in enumerate(requests):
        assert answers[i].shape == (len(pixels), *fp32.output_dims)
        np.testing.assert_allclose(answers[i], alone[i], rtol=0, atol=1e-5)
    after = batch_counts(grpcclient.InferenceServerClient(url), fp32.name)
    assert after.get(4, 0) - before.get(4, 0) == 1, (before, after)  # the three ran as one 4-pane pass


def batch_counts(client, model: str) -> dict[int, int]:
    """Passes the server ran per batch size (Triton's own statistics)."""
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return {int(b["batch_size"]): int(b["compute_infer"].get("count", 0)) for b in stats.get("batch_stats", [])}


def test_malformed_requests_are_refused_and_the_server_stays_up(openvino_server):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    server, fp32, _ = openvino_server
    client = grpcclient.InferenceServerClient(server.grpc_url.removeprefix("grpc://"))
    size = fp32.image_size

    def refused(array: np.ndarray, datatype: str = "FP32") -> str:
        tensor = grpcclient.InferInput("pixels", list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        with pytest.raises(InferenceServerException) as caught:
            client.infer(fp32.name, [tensor], client_timeout=60)
        return caught.value.message()

    assert "batch-size must be <= 4" in refused(np.zeros((5, 3, size, size), np.float32))
    assert "shape" in refused(np.zeros((1, 3, size + 1, size), np.float32))
    assert "data-type" in refused(np.zeros((1, 3, size, size), np.int64), "INT64").lower()
    tensor = grpcclient.InferInput("pixels", [1, 3, size, size], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3, size, size), np.float32))
    assert client.infer(fp32.name, [tensor], client_timeout=60).as_numpy("feature_maps").shape[0] == 1
    client.close()


def test_serve_with_the_openvino_flavour(random_bundle, tmp_path):
    log = tmp_path / "serve.log"
    with open(log, "w") as handle:
        process = subprocess.Popen([sys.executable, "-m", "edge_thyroid", "serve", str(random_bundle), "--flavor",
                                    "openvino", "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0",
                                    "--layout", "latency"],
                                   cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert wait_until(lambda: "stop with Ctrl-C" in log.read_text(), 120, process), log.read_text()
        text = log.read_text()
        assert "openvino flavour, fifo scheduling" in text
        grpc_url = text.split("grpc ", 1)[1].split()[0]
        with engine(random_bundle, backend="triton", server=grpc_url) as remote, \
                engine(random_bundle, backend="openvino") as local:
            frame = screen_frame()
            assert abs(classify(remote, frame).probability - classify(local, frame).probability) <= 1e-5
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
    assert "server stopped (exit status 0)" in log.read_text()
