"""Serving many workstations: the backbone in-process vs on a Triton server over loopback; the
server's aggregate throughput with 1, 2, 4 and 8 concurrent clients for each server layout, dynamic
batching on and off; and per-client fairness (a streaming client's latency alone and under a flood).

    python benchmarks/serve_bench.py [BUNDLE] --seconds 4 --json benchmarks/results/serving_layouts.json \
        --markdown benchmarks/results/serving_layouts.md

Each client is a thread with its own Engine (``--backend triton``), classifying fresh 3-pane frames
(pane cache off: every frame is a request of the panes the model reads, 1 of 3 for the B-mode-only
demo model, all 3 with --every-pane) as fast as the server answers. On one machine
the clients' host preprocessing and the server share the CPUs, so this measures the whole system
on this machine, not a server alone; the load average is recorded with every row.

Servers (all up at once, rows interleaved so drifting load hits them alike; passes/threads from
the CPUs this process may use, ``cores``):

* ``throughput``: the default of ``serve``: fair scheduling, ``cores`` single-threaded passes at once;
* ``latency``: ``serve --layout latency``: fair scheduling, one pass on ``cores`` threads;
* ``fifo-latency``: ``serve --scheduling fifo --layout latency``, Triton's dynamic batcher, one
  instance on ``cores`` threads (main's layout before the many-client default).

Fairness: one client keeps ``--flood-depth`` 3-pane requests in flight while a streaming client
classifies frames one at a time; its latency is compared with the same client alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_thyroid.engine import Engine  # noqa: E402
from edge_thyroid.layout import preset  # noqa: E402
from edge_thyroid.serving.repository import (CLIENT_PARAMETER, BatchingOptions, cores_available,  # noqa: E402
                                             default_queue_delay_us, layout_passes, write_model)
from edge_thyroid.serving.server import ServerOptions, TritonServer, free_ports  # noqa: E402
from edge_thyroid.sources import SourceOptions, create_source  # noqa: E402

DEMO_BUNDLE = REPO / "edge_thyroid" / "data" / "demo_bundle"
# Options of every Engine this script makes (--every-pane sets every_pane: run and send the panes the
# model does not read too, as a model reading all three modalities would).
ENGINE_OPTIONS: dict = {}


def frames_and_panes(count: int, size: tuple[int, int]) -> tuple[list[np.ndarray], list]:
    source = create_source(f"synthetic:triple?size={size[0]}x{size[1]}&frames={count}", SourceOptions(realtime=False))
    source.open()
    try:
        frames = [source.frame_at(i) for i in range(count)]
    finally:
        source.close()
    panes = preset("triple").resolve(size[0], size[1]).engine_panes()
    return frames, panes


def interleaved(engines: dict[str, Engine], frames: list[np.ndarray], panes: list, rounds: int,
                block: int = 1) -> list[dict]:
    """One warm-up frame each, then the frames through every engine in blocks of ``block`` consecutive
    frames, the engines' order rotating by one each block: [{name, ms, order (the engines' initials in that
    block's order), warm_up}], in the order run.

    block 1 interleaves frame by frame: every frame then meets the CPU state another configuration left
    behind (ONNX Runtime threads still spinning after an in-process pass, for one). A stream never
    alternates like that, so with block > 1 each engine runs its frames back to back as a stream does, and
    the first frame of each block is marked ``warm_up`` (it pays for the switch) and left out of the p50s;
    the blocks still alternate, so drifting load hits every configuration alike.
    """
    if block < 1:
        raise ValueError(f"block must be >= 1 frame, got {block}")
    for engine in engines.values():
        engine.classify(frames[0], panes)
    rows, order = [], list(engines)
    for _ in range(rounds):
        for first in range(0, len(frames), block):
            order = order[1:] + order[:1]
            for name in order:
                for index, frame in enumerate(frames[first:first + block]):
                    start = time.perf_counter()
                    engines[name].classify(frame, panes)
                    rows.append({"name": name, "ms": (time.perf_counter() - start) * 1000.0,
                                 "order": "".join(n[0] for n in order), "warm_up": block > 1 and index == 0})
    return rows


def latency_rows(bundle: Path, url: str, frames: list[np.ndarray], panes: list, rounds: int,
                 block: int = 1, flavor: str = "python") -> list[dict]:
    """Per-frame latency of the same frames through each configuration, interleaved as ``interleaved``
    does (frame by frame for block 1; in back-to-back blocks, each block's first frame not counted,
    otherwise): p50/p90 and the p50 overhead over the in-process engine that runs what the server runs
    (ONNX Runtime for the python flavour, OpenVINO for the openvino flavour)."""
    local = "openvino" if flavor == "openvino" else "onnxruntime"
    in_process = f"in-process ({local})"
    configs = {in_process: {"backend": local}, "triton grpc + shared memory": {"backend": "triton", "server": url},
               "triton grpc (tensors in the request)": {"backend": "triton", "server": url, "shared_memory": False}}
    engines = {name: Engine(bundle, **ENGINE_OPTIONS, **options) for name, options in configs.items()}
    sent = len([p for p in panes if p.modality not in engines[in_process].unread_modalities])
    times: dict[str, list[float]] = {name: [] for name in configs}
    try:
        for row in interleaved(engines, frames, panes, rounds, block):
            if not row["warm_up"]:
                times[row["name"]].append(row["ms"])
    finally:
        for engine in engines.values():
            engine.close()
    base = statistics.median(times[in_process])
    return [{"config": name, "frames": len(v), "block": block, "panes_run": sent, "p50_ms": round(statistics.median(v), 2),
             "p90_ms": round(float(np.percentile(v, 90)), 2), "overhead_p50_ms": round(statistics.median(v) - base, 2)}
            for name, v in times.items()]


def throughput(bundle: Path, url: str, frames: list[np.ndarray], panes: list, clients: int, seconds: float) -> dict:
    engines = [Engine(bundle, backend="triton", server=url, **ENGINE_OPTIONS) for _ in range(clients)]
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


class Flooder:
    """A client that keeps ``depth`` requests in flight (as fast as they are answered) under one client
    name: a gRPC stream for a fair (decoupled) model, unary async requests for a fifo one."""

    def __init__(self, url: str, model: str, decoupled: bool, pixels: np.ndarray, depth: int) -> None:
        import tritonclient.grpc as grpcclient

        self.module, self.model, self.decoupled, self.depth = grpcclient, model, decoupled, depth
        self.client = grpcclient.InferenceServerClient(url.removeprefix("grpc://"))
        self.tensor = grpcclient.InferInput("pixels", list(pixels.shape), "FP32")
        self.tensor.set_data_from_numpy(pixels)
        self.stopping = threading.Event()
        self.answered = self.failed = 0
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)
        self.in_flight = 0
        if decoupled:
            self.client.start_stream(callback=self._answer)

    def _send(self) -> None:
        with self.lock:
            self.in_flight += 1
        if self.decoupled:
            self.client.async_stream_infer(self.model, [self.tensor], parameters={CLIENT_PARAMETER: "flooder"})
        else:
            self.client.async_infer(self.model, [self.tensor], callback=self._answer, client_timeout=60)

    def _answer(self, result, error) -> None:
        with self.lock:
            self.in_flight -= 1
            self.answered += error is None
            self.failed += error is not None
            self.idle.notify_all()
        if not self.stopping.is_set():
            self._send()

    def start(self) -> None:
        for _ in range(self.depth):
            self._send()

    def stop(self) -> None:
        self.stopping.set()
        with self.idle:
            self.idle.wait_for(lambda: self.in_flight == 0, timeout=60)
        if self.decoupled:
            self.client.stop_stream()  # answers all in: nothing to cancel (cancelling wedges the model's unload)
        self.client.close()


def victim_latency(bundle: Path, url: str, frames: list[np.ndarray], panes: list, seconds: float) -> list[float]:
    """Per-frame latency (ms) of one streaming client classifying frames one after another."""
    engine = Engine(bundle, backend="triton", server=url, **ENGINE_OPTIONS)
    times: list[float] = []
    try:
        engine.classify(frames[0], panes)
        stop_at = time.monotonic() + seconds
        i = 0
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            engine.classify(frames[i % len(frames)], panes)
            times.append((time.perf_counter() - started) * 1000.0)
            i += 1
    finally:
        engine.close()
    return times


def fairness(bundle: Path, server: TritonServer, model, frames: list[np.ndarray], panes: list, seconds: float,
             depth: int) -> dict:
    """The streaming client's latency alone, then while a flooder keeps ``depth`` requests in flight."""
    size = model.image_size
    pixels = np.random.default_rng(0).standard_normal((len(panes), 3, size, size)).astype(np.float32)
    alone = victim_latency(bundle, server.grpc_url, frames, panes, seconds)
    flooder = Flooder(server.grpc_url, model.name, model.scheduling.value == "fair", pixels, depth)
    flooder.start()
    time.sleep(1.0)  # the flood is deep before the streaming client starts
    try:
        flooded = victim_latency(bundle, server.grpc_url, frames, panes, seconds)
    finally:
        flooder.stop()

    def summary(values: list[float]) -> dict:
        return {"frames": len(values), "p50_ms": round(statistics.median(values), 1),
                "p95_ms": round(float(np.percentile(values, 95)), 1)}

    return {"scheduling": model.scheduling.value, "flood_depth": depth, "alone": summary(alone),
            "under_flood": summary(flooded), "flood_answered": flooder.answered, "flood_failed": flooder.failed,
            "load_average": round(os.getloadavg()[0], 2)}


@dataclass(frozen=True)
class Config:
    name: str
    scheduling: str
    layout: str
    dynamic: bool
    flavor: str = "python"


CONFIGS = [Config("throughput", "fair", "throughput", True), Config("throughput", "fair", "throughput", False),
           Config("latency", "fair", "latency", True), Config("latency", "fair", "latency", False),
           Config("fifo-latency", "fifo", "latency", True), Config("fifo-latency", "fifo", "latency", False),
           # our C backend running OpenVINO in the server process (serve --flavor openvino), Triton's batcher
           Config("openvino-latency", "fifo", "latency", True, "openvino"),
           Config("openvino-latency", "fifo", "latency", False, "openvino"),
           Config("openvino-throughput", "fifo", "throughput", True, "openvino"),
           Config("openvino-throughput", "fifo", "throughput", False, "openvino")]


def serve(bundle: Path, root: Path, config: Config, cores: int, max_batch_size: int):
    """One server; no client queue limit, so the flood in the fairness rows is served, not refused."""
    passes, threads = layout_passes(config.layout, cores)
    batching = BatchingOptions(dynamic=config.dynamic, max_batch_size=max_batch_size, max_queue_delay_us=default_queue_delay_us(config.layout, config.flavor),
                               instances=passes, scheduling=config.scheduling, client_queue_limit=0)
    model = write_model(bundle, root, flavor=config.flavor, batching=batching, threads=threads, overwrite=True)
    grpc_port, http_port, metrics_port = free_ports(3)
    options = ServerOptions(root, grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port)
    return TritonServer(options).start(timeout_s=180), model, passes, threads


def markdown(record: dict) -> str:
    lines = [f"# Serving layouts and fairness ({record['started']})", "",
             f"Machine: {record['machine']}; {record['cores']} CPU(s) for this run; load average before "
             f"{record['load_average_before'][0]:.2f}; bundle {Path(record['bundle']).name}; "
             f"{record['panes']} panes of {record['frame_size']} per frame; {record['seconds_per_row']} s per row; "
             f"max batch {record['max_batch_size']} panes; run took {record['duration_s']} s.", "",
             "| server | passes x threads | batching | " + " | ".join(f"{c} client(s) frames/s (p50 ms)" for c in record["clients"])
             + " | 1 -> 4 |", "|---|---|---|" + "---:|" * (len(record["clients"]) + 1)]
    for server in record["servers"]:
        for dynamic in (True, False):
            rows = {r["clients"]: r for r in record["throughput"] if r["server"] == server["name"] and r["dynamic_batching"] == dynamic}
            if not rows:
                continue
            cells = [f"{rows[c]['frames_per_s']:.1f} ({rows[c]['p50_ms']})" if c in rows else "-" for c in record["clients"]]
            ratio = (f"{rows[4]['frames_per_s'] / rows[1]['frames_per_s']:.2f}x" if 1 in rows and 4 in rows else "-")
            lines.append(f"| {server['name']} ({server['scheduling']}) | {server['passes']} x {server['threads']} | "
                         f"{'on' if dynamic else 'off'} | " + " | ".join(cells) + f" | {ratio} |")
    if record["latency"]:
        block = record["latency"][0].get("block", 1)
        how = ("frames interleaved one by one" if block == 1 else
               f"each configuration streaming blocks of {block} frames back to back, blocks alternating, "
               "each block's first frame not counted")
        run = record["latency"][0].get("panes_run", record["panes"])
        how += f"; {run} of the {record['panes']} panes run per frame" + (
            " (the others are not read by the model)" if run < record["panes"] else "")
        lines += ["", f"Per-frame latency, one client, {how}:", "", "| configuration | p50 ms | p90 ms | p50 vs in-process |",
                  "|---|---:|---:|---:|"]
        lines += [f"| {r['config']} | {r['p50_ms']} | {r['p90_ms']} | {r['overhead_p50_ms']:+.2f} |" for r in record["latency"]]
    if record["fairness"]:
        lines += ["", "Fairness: a streaming client alone and while another client keeps requests in flight:", "",
                  "| server | flood depth | alone p50 / p95 ms | under flood p50 / p95 ms | flood requests answered |",
                  "|---|---:|---:|---:|---:|"]
        for f in record["fairness"]:
            lines.append(f"| {f['server']} ({f['scheduling']}) | {f['flood_depth']} | {f['alone']['p50_ms']} / "
                         f"{f['alone']['p95_ms']} | {f['under_flood']['p50_ms']} / {f['under_flood']['p95_ms']} | "
                         f"{f['flood_answered']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", default=str(DEMO_BUNDLE))
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time per throughput row")
    parser.add_argument("--clients", default="1,2,4,8")
    parser.add_argument("--servers", default="throughput,latency,fifo-latency",
                        help="comma-separated, the first one's server runs the latency rows: "
                             + ", ".join(dict.fromkeys(c.name for c in CONFIGS)))
    parser.add_argument("--frames", type=int, default=12, help="distinct frames (cycled)")
    parser.add_argument("--rounds", type=int, default=2, help="latency rounds over the frames (0: skip)")
    parser.add_argument("--every-pane", action="store_true",
                        help="every client runs (and sends) every pane, also those the model does not read")
    parser.add_argument("--block", type=int, default=1,
                        help="latency frames per configuration back to back (1: frame-by-frame interleave; N > 1: "
                             "streaming blocks, each block's first frame not counted)")
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--cores", type=int, default=None, help="CPUs the layouts are sized for (default: this process's)")
    parser.add_argument("--flood-depth", type=int, default=32)
    parser.add_argument("--max-batch-size", type=int, default=8, help="panes per pass (serve's default)")
    parser.add_argument("--fairness-seconds", type=float, default=4.0, help="per fairness phase (0: skip)")
    parser.add_argument("--machine", default=platform.processor() or platform.machine())
    parser.add_argument("--json", default=None)
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args()
    if args.block < 1 or (args.block > 1 and args.block > args.frames):
        parser.error(f"--block {args.block}: expected 1 (frame-by-frame) or 2..--frames ({args.frames})")
    if args.every_pane:
        ENGINE_OPTIONS["every_pane"] = True
    bundle = Path(args.bundle)
    size = tuple(int(v) for v in args.size.split("x"))
    frames, panes = frames_and_panes(args.frames, size)  # type: ignore[arg-type]
    cores = args.cores or cores_available()
    counts = [int(c) for c in args.clients.split(",")]
    wanted = args.servers.split(",")
    configs = [c for c in CONFIGS if c.name in wanted]
    record: dict = {"bundle": str(bundle), "frame_size": args.size, "panes": len(panes), "every_pane": args.every_pane, "cores": cores,
                    "machine": args.machine, "load_average_before": os.getloadavg(),
                    "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds_per_row": args.seconds,
                    "clients": counts, "max_batch_size": args.max_batch_size, "servers": [], "latency": [], "throughput": [], "fairness": []}
    began = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        servers: dict[Config, tuple] = {}
        try:
            for config in configs:
                servers[config] = serve(bundle, Path(scratch) / f"{config.name}-{config.dynamic}", config, cores,
                                        args.max_batch_size)
                if config.dynamic:
                    _, model, passes, threads = servers[config]
                    record["servers"].append({"name": config.name, "scheduling": config.scheduling, "flavor": config.flavor,
                                              "layout": config.layout, "passes": passes, "threads": threads})
            first = servers[configs[0]][0]
            if args.rounds:
                record["latency"] = latency_rows(bundle, first.grpc_url, frames, panes, args.rounds, args.block,
                                                 configs[0].flavor)
                for row in record["latency"]:
                    print(f"latency  {row['config']:<40} p50 {row['p50_ms']:7.2f} ms  p90 {row['p90_ms']:7.2f} ms  "
                          f"overhead p50 {row['overhead_p50_ms']:+.2f} ms", flush=True)
            # Warm-up, not counted: a fresh server's first seconds are slow, and every batch size.
            for server, *_ in servers.values():
                throughput(bundle, server.grpc_url, frames, panes, 1, 2.0)
                throughput(bundle, server.grpc_url, frames, panes, max(counts), 1.5)
            for turn, clients in enumerate(counts):
                order = configs if turn % 2 == 0 else configs[::-1]  # no server always first
                for config in order:
                    server = servers[config][0]
                    row = {"server": config.name, "scheduling": config.scheduling, "dynamic_batching": config.dynamic,
                           **throughput(bundle, server.grpc_url, frames, panes, clients, args.seconds),
                           "load_average": round(os.getloadavg()[0], 2)}
                    record["throughput"].append(row)
                    print(f"{config.name:<13} batching {'on ' if config.dynamic else 'off'} clients {clients}: "
                          f"{row['frames_per_s']:6.2f} frames/s (p50 {row['p50_ms']} ms, per client "
                          f"{row['per_client_frames']}, load {row['load_average']})", flush=True)
            if args.fairness_seconds:
                for config in configs:
                    if not config.dynamic:
                        continue
                    server, model, *_ = servers[config]
                    row = {"server": config.name, **fairness(bundle, server, model, frames, panes,
                                                             args.fairness_seconds, args.flood_depth)}
                    record["fairness"].append(row)
                    print(f"fairness {config.name:<13} alone p50/p95 {row['alone']['p50_ms']}/{row['alone']['p95_ms']} ms, "
                          f"under a flood of {args.flood_depth} {row['under_flood']['p50_ms']}/"
                          f"{row['under_flood']['p95_ms']} ms", flush=True)
        finally:
            for server, *_ in servers.values():
                server.cleanup()
    record["load_average_after"] = os.getloadavg()
    record["duration_s"] = round(time.monotonic() - began, 1)
    text = markdown(record)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.markdown:
        Path(args.markdown).write_text(text)
        print(f"wrote {args.markdown}")


if __name__ == "__main__":
    main()
