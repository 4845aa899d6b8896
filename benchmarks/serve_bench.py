"""Serving many workstations: the backbone in-process vs on a Triton server over loopback, and the
server's aggregate throughput with 1, 2, 4 and 8 concurrent clients, dynamic batching on and off.

    python benchmarks/serve_bench.py [BUNDLE] --seconds 6 --json benchmarks/results/serving.json

Each client is a thread with its own Engine (``--backend triton``), classifying fresh 3-pane frames
(pane cache off: every frame is a request of 3 panes) as fast as the server answers. On one machine
the clients' host preprocessing and the server share the CPUs, so this measures the whole system
on this machine, not a server alone; the load average is recorded with every run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_thyroid.engine import Engine  # noqa: E402
from edge_thyroid.layout import preset  # noqa: E402
from edge_thyroid.serving.repository import BatchingOptions, write_model  # noqa: E402
from edge_thyroid.serving.server import ServerOptions, TritonServer, free_port  # noqa: E402
from edge_thyroid.sources import SourceOptions, create_source  # noqa: E402

DEMO_BUNDLE = REPO / "edge_thyroid" / "data" / "demo_bundle"


def frames_and_panes(count: int, size: tuple[int, int]) -> tuple[list[np.ndarray], list]:
    source = create_source(f"synthetic:triple?size={size[0]}x{size[1]}&frames={count}", SourceOptions(realtime=False))
    source.open()
    try:
        frames = [source.frame_at(i) for i in range(count)]
    finally:
        source.close()
    panes = preset("triple").resolve(size[0], size[1]).engine_panes()
    return frames, panes


def latency_rows(bundle: Path, url: str, frames: list[np.ndarray], panes: list, rounds: int) -> list[dict]:
    """Per-frame latency of the same frames, the configurations interleaved frame by frame in a rotating
    order: the one that runs right after the in-process engine shares the CPU with ONNX Runtime
    threads that still spin after their run, and must not always be the same one."""
    configs = {"in-process (onnxruntime)": {}, "triton grpc + shared memory": {"backend": "triton", "server": url},
               "triton grpc (tensors in the request)": {"backend": "triton", "server": url, "shared_memory": False}}
    engines = {name: Engine(bundle, **options) for name, options in configs.items()}
    times: dict[str, list[float]] = {name: [] for name in configs}
    try:
        for name, engine in engines.items():  # warm-up
            engine.classify(frames[0], panes)
        order = list(engines)
        for _ in range(rounds):
            for frame in frames:
                order = order[1:] + order[:1]
                for name in order:
                    engine = engines[name]
                    start = time.perf_counter()
                    engine.classify(frame, panes)
                    times[name].append((time.perf_counter() - start) * 1000.0)
    finally:
        for engine in engines.values():
            engine.close()
    base = statistics.median(times["in-process (onnxruntime)"])
    return [{"config": name, "frames": len(v), "p50_ms": round(statistics.median(v), 2),
             "p90_ms": round(float(np.percentile(v, 90)), 2), "overhead_p50_ms": round(statistics.median(v) - base, 2)}
            for name, v in times.items()]


def throughput(bundle: Path, url: str, frames: list[np.ndarray], panes: list, clients: int, seconds: float) -> dict:
    engines = [Engine(bundle, backend="triton", server=url) for _ in range(clients)]
    done = [0] * clients
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    start_line = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(index: int) -> None:
        engine = engines[index]
        engine.classify(frames[index % len(frames)], panes)  # warm-up, not counted
        start_line.wait()
        i = index
        while time.monotonic() < stop_at[0]:
            started = time.perf_counter()
            try:
                engine.classify(frames[i % len(frames)], panes)
            except Exception as exc:  # noqa: BLE001 - reported in the row, the run goes on
                errors.append(str(exc)[:200])
                continue
            latencies[index].append((time.perf_counter() - started) * 1000.0)
            done[index] += 1
            i += clients

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.monotonic() + 3600
    start_line.wait()
    began = time.monotonic()
    stop_at[0] = began + seconds
    for thread in threads:
        thread.join(timeout=seconds + 60)
    elapsed = time.monotonic() - began
    for engine in engines:
        engine.close()
    flat = [v for per in latencies for v in per]
    return {"clients": clients, "frames": sum(done), "frames_per_s": round(sum(done) / elapsed, 2),
            "per_client_frames": done, "p50_ms": round(statistics.median(flat), 1) if flat else None,
            "p90_ms": round(float(np.percentile(flat, 90)), 1) if flat else None, "errors": len(errors)}


def serve(bundle: Path, root: Path, batching: BatchingOptions, threads: int | None) -> TritonServer:
    write_model(bundle, root, batching=batching, threads=threads, overwrite=True)
    options = ServerOptions(root, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    return TritonServer(options).start(timeout_s=180)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", default=str(DEMO_BUNDLE))
    parser.add_argument("--seconds", type=float, default=6.0, help="measuring time per throughput row")
    parser.add_argument("--clients", default="1,2,4,8")
    parser.add_argument("--frames", type=int, default=12, help="distinct frames (cycled)")
    parser.add_argument("--rounds", type=int, default=3, help="latency rounds over the frames")
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--server-threads", type=int, default=None, help="ONNX Runtime threads of the server's model")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    bundle = Path(args.bundle)
    size = tuple(int(v) for v in args.size.split("x"))
    frames, panes = frames_and_panes(args.frames, size)  # type: ignore[arg-type]
    record: dict = {"bundle": str(bundle), "frame_size": args.size, "panes": len(panes), "cpus": os.cpu_count(),
                    "load_average_before": os.getloadavg(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "seconds_per_row": args.seconds, "latency": [], "throughput": []}
    counts = [int(c) for c in args.clients.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        # Both servers run side by side and the rows alternate (on, off, on, off, ...), so the load of
        # this shared machine drifts over both alike.
        servers: dict[bool, TritonServer] = {}
        try:
            for dynamic in (True, False):
                batching = BatchingOptions(dynamic=dynamic, max_batch_size=24, max_queue_delay_us=2000)
                servers[dynamic] = serve(bundle, Path(scratch) / ("batching" if dynamic else "plain"), batching,
                                         args.server_threads)
            record["latency"] = latency_rows(bundle, servers[True].grpc_url, frames, panes, args.rounds)
            for row in record["latency"]:
                print(f"latency  {row['config']:<40} p50 {row['p50_ms']:7.2f} ms  p90 {row['p90_ms']:7.2f} ms  "
                      f"overhead p50 {row['overhead_p50_ms']:+.2f} ms", flush=True)
            # Warm-up, not counted: a fresh server's first seconds are slow (one client saw 4.7 frames/s
            # in its first 5 s against 7.1 in the next 5), and every batch size the rows will see.
            for server in servers.values():
                throughput(bundle, server.grpc_url, frames, panes, 1, 5.0)
                throughput(bundle, server.grpc_url, frames, panes, max(counts), 2.0)
            for turn, clients in enumerate(counts):
                for dynamic in ((True, False) if turn % 2 == 0 else (False, True)):  # neither always first
                    server = servers[dynamic]
                    row = {"dynamic_batching": dynamic, **throughput(bundle, server.grpc_url, frames, panes, clients,
                                                                     args.seconds),
                           "load_average": round(os.getloadavg()[0], 2)}
                    record["throughput"].append(row)
                    print(f"batching {'on ' if dynamic else 'off'} clients {clients}: {row['frames_per_s']:6.2f} "
                          f"frames/s (p50 {row['p50_ms']} ms, per client {row['per_client_frames']}, "
                          f"load {row['load_average']})", flush=True)
        finally:
            for server in servers.values():
                server.cleanup()
    record["load_average_after"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
