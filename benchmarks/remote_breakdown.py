"""Where one 3-pane frame's remote backbone pass spends its time: the client's and the server's stages
on one clock, medians per stage, next to the same frames' in-process backbone pass.

    python benchmarks/remote_breakdown.py [BUNDLE] --frames 200 --layout latency --scheduling fair \
        --json benchmarks/results/remote_breakdown.json --markdown benchmarks/results/remote_breakdown.md

The client side replays exactly the calls of ``TritonBackend`` (host preprocessing, writing the input
shared-memory region, building the request, sending it, waiting for the answer, reading the output
region) with a timestamp between each; the server's model writes its own stage timestamps when
``EDGE_THYROID_STAGE_LOG`` names a file (serving/backbone_model.py). ``time.monotonic`` is
CLOCK_MONOTONIC, one clock for every process on the host, so client and server stamps subtract.
Remote and in-process frames alternate, so drifting load hits both alike. ``--compare`` adds the
whole ``Engine.extract`` of both backends (the number serve_bench.py's overhead row is made of).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
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
from edge_thyroid.frames import check_rois  # noqa: E402
from edge_thyroid.kernels.graph_io import FRAME, PIXELS, ROIS  # noqa: E402
from edge_thyroid.serving.backbone_model import STAGE_LOG  # noqa: E402
from edge_thyroid.serving.repository import (CLIENT_PARAMETER, ONE_IN_FLIGHT_PARAMETER, OUTPUT,  # noqa: E402
                                             BatchingOptions, cores_available, default_queue_delay_us,
                                             layout_passes, write_model)
from edge_thyroid.serving.server import ServerOptions, TritonServer, free_ports  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from serve_bench import DEMO_BUNDLE, frames_and_panes  # noqa: E402

# (label, from stamp, to stamp): consecutive stages of one frame; they add up to the whole remote pass.
STAGES = [("client: host preprocessing (OpenCV float path)", "c_start", "c_preprocessed"),
          ("client: write pixels into the input shm region", "c_preprocessed", "c_written"),
          ("client: build the request (InferInput, outputs)", "c_written", "c_built"),
          ("client -> server: gRPC send + Triton -> Python stub hand-over", "c_built", "execute"),
          ("server: read the input (copy out of Triton's buffer), file it", "execute", "read"),
          ("server: queue -> worker thread wake-up", "read", "taken"),
          ("server: worker takes the batch -> ORT run starts", "taken", "run_start"),
          ("server: ONNX Runtime run (backbone)", "run_start", "run_end"),
          ("server: output tensors built (Tensor.from_dlpack of the maps)", "run_end", "sending"),
          ("server -> client: response sender -> Triton -> gRPC -> client callback", "sending", "c_answered"),
          ("client: callback -> waiting thread wakes", "c_answered", "c_woken"),
          ("client: copy the maps out of the output shm region", "c_woken", "c_done")]
# With --trace, the two hops split further at Triton's own timestamps.
TRACE_SPLITS = {"c_built": [("client -> server: gRPC send, request read by the server", "c_built", "trace_GRPC_WAITREAD_END"),
                            ("server: Triton request -> scheduler -> backend execute", "trace_GRPC_WAITREAD_END",
                             "trace_COMPUTE_START"),
                            ("server: Python backend -> stub hand-over (execute entered)", "trace_COMPUTE_START", "execute")],
                "sending": [("server: response sender -> Python backend -> Triton response complete", "sending",
                             "trace_INFER_RESPONSE_COMPLETE"),
                            ("server: response -> gRPC write starts", "trace_INFER_RESPONSE_COMPLETE",
                             "trace_GRPC_SEND_START"),
                            ("server -> client: gRPC write -> client callback", "trace_GRPC_SEND_START", "c_answered")]}


class TimedRemote:
    """TritonBackend's request path, call for call, with a timestamp between each step."""

    def __init__(self, engine: Engine) -> None:
        import tritonclient.grpc as grpcclient
        import tritonclient.utils.shared_memory as shm

        self.backend, self.grpc, self.shm = engine.backend, grpcclient, shm
        self.answered = threading.Condition()
        self.answer: tuple | None = None
        self.answer_at = 0.0
        self.ids = 0
        if self.backend.decoupled:
            self.backend._stop_stream()  # the backend's own stream (opened by warm-up) makes room for ours
            self.backend._client.start_stream(callback=self._take)

    def _take(self, result, error) -> None:
        at = time.monotonic()
        with self.answered:
            self.answer, self.answer_at = (result, error), at
            self.answered.notify()

    def frame(self, frame: np.ndarray, rois: np.ndarray) -> tuple[np.ndarray, dict]:
        b, grpc = self.backend, self.grpc
        stamps = {"c_start": time.monotonic()}
        pixels = b._preprocess(frame, rois)
        stamps["c_preprocessed"] = time.monotonic()
        self.shm.set_shared_memory_region(b._regions["input"], [pixels])
        stamps["c_written"] = time.monotonic()
        feature = (len(pixels), *b.output_dims)
        pixels_in = grpc.InferInput(PIXELS, list(pixels.shape), "FP32")
        pixels_in.set_shared_memory(b._region_names["input"], pixels.nbytes)
        wanted = grpc.InferRequestedOutput(OUTPUT)
        wanted.set_shared_memory(b._region_names["output"], math.prod(feature) * 4)
        self.ids += 1
        request_id = f"breakdown-{self.ids}"
        stamps["c_built"] = time.monotonic()
        if b.decoupled:
            with self.answered:
                self.answer = None
                b._client.async_stream_infer(b.model_name, [pixels_in], outputs=[wanted], request_id=request_id,
                                             parameters={CLIENT_PARAMETER: b.client_id, ONE_IN_FLIGHT_PARAMETER: True})
                self.answered.wait_for(lambda: self.answer is not None, timeout=10)
                stamps["c_woken"] = time.monotonic()
                result, error = self.answer
            stamps["c_answered"] = self.answer_at
        else:
            result = b._client.infer(b.model_name, [pixels_in], outputs=[wanted], request_id=request_id)
            error = None
            stamps["c_answered"] = stamps["c_woken"] = time.monotonic()
        if error is not None:
            raise RuntimeError(str(error))
        maps = np.array(self.shm.get_contents_as_numpy(b._regions["output"], np.float32, feature))
        stamps["c_done"] = time.monotonic()
        return maps, {"id": request_id, **stamps}

    def close(self) -> None:
        if self.backend.decoupled:
            self.backend._client.stop_stream()


def read_server_stamps(path: Path) -> dict[str, dict]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        out[record["id"]] = record
    return out


def merge_trace(path: Path, server_stamps: dict[str, dict]) -> None:
    """Triton's trace timestamps (steady clock ns = CLOCK_MONOTONIC) into each request's stamps."""
    entries = json.loads(path.read_text(encoding="utf-8") or "[]")
    # One trace is several entries sharing an id; the one naming the model carries the request id.
    requests = {entry["id"]: entry["request_id"] for entry in entries if entry.get("request_id")}
    for entry in entries:
        stamps = server_stamps.get(requests.get(entry["id"], ""))
        if stamps is None:
            continue
        for stamp in entry.get("timestamps", []):
            stamps.setdefault(f"trace_{stamp['name']}", stamp["ns"] / 1e9)


def summarize(samples: list[dict]) -> list[dict]:
    rows = []
    traced = any("trace_COMPUTE_START" in s for s in samples)
    stages = [split for stage in STAGES for split in (TRACE_SPLITS.get(stage[1], [stage]) if traced else [stage])]
    for label, start, end in stages:
        values = [1000.0 * (s[end] - s[start]) for s in samples if start in s and end in s]
        if values:
            rows.append({"stage": label, "p50_ms": round(statistics.median(values), 3),
                         "p90_ms": round(float(np.percentile(values, 90)), 3)})
    return rows


def markdown(record: dict) -> str:
    lines = [f"# One remote 3-pane frame, stage by stage ({record['started']})", "",
             f"Machine: {record['machine']}, {record['cores']} core(s) for this process, load average "
             f"{record['load_average']} at the end. Server: `serve --layout {record['layout']} --scheduling "
             f"{record['scheduling']}` ({record['passes']} pass(es) x {record['threads']} ORT thread(s)), "
             f"{record['frames']} frames of {record['size']}, 3 panes each. Command: `{record['command']}`", "",
             "| stage | p50 ms | p90 ms |", "|---|---:|---:|"]
    lines += [f"| {r['stage']} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} |" for r in record["stages"]]
    lines += ["", "| whole frame (same frames, alternating) | p50 ms | p90 ms |", "|---|---:|---:|"]
    lines += [f"| {name} | {v['p50_ms']:.2f} | {v['p90_ms']:.2f} |" for name, v in record["totals"].items()]
    lines += ["", f"Remote minus in-process, p50: **{record['overhead_p50_ms']:+.2f} ms**"
              + (f"; whole `Engine.extract`: **{record['extract_overhead_p50_ms']:+.2f} ms**"
                 if record.get("extract_overhead_p50_ms") is not None else ""), ""]
    return "\n".join(lines)


def report(record: dict, text: str, json_path: str | None, markdown_path: str | None) -> None:
    """Print the table; write the record and the table where asked."""
    print(text)
    if json_path:
        Path(json_path).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if markdown_path:
        Path(markdown_path).write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", default=str(DEMO_BUNDLE))
    parser.add_argument("--frames", type=int, default=200, help="frames measured (each path)")
    parser.add_argument("--layout", default="latency", choices=["latency", "throughput"])
    parser.add_argument("--scheduling", default="fair", choices=["fair", "fifo"])
    parser.add_argument("--max-queue-delay-us", type=int, default=None,
                        help="fifo: serve's --max-queue-delay-us (default: serve's for the layout)")
    parser.add_argument("--cores", type=int, default=None)
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--trace", action="store_true", help="also Triton's own request trace (costs time itself): "
                        "splits the client -> stub hop into gRPC, queue and backend hand-over")
    parser.add_argument("--compare", action="store_true", help="also time Engine.extract of both backends")
    parser.add_argument("--machine", default=platform.processor() or platform.machine())
    parser.add_argument("--json", default=None)
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args()
    bundle = Path(args.bundle)
    cores = args.cores or cores_available()
    width, height = (int(v) for v in args.size.split("x"))
    frames, panes = frames_and_panes(12, (width, height))
    with tempfile.TemporaryDirectory(prefix="edge_thyroid_breakdown_") as scratch:
        log = Path(scratch) / "stages.jsonl"
        passes, threads = layout_passes(args.layout, cores)
        batching = BatchingOptions(max_batch_size=8, instances=passes, scheduling=args.scheduling,
                                   max_queue_delay_us=default_queue_delay_us(args.layout) if args.max_queue_delay_us is None
                                   else args.max_queue_delay_us)
        model = write_model(bundle, Path(scratch) / "models", batching=batching, threads=threads)
        os.environ[STAGE_LOG] = str(log)  # the server (and so its Python stub) inherits it
        trace = Path(scratch) / "trace.json"
        extra = ("--trace-config", f"triton,file={trace}", "--trace-config", "level=TIMESTAMPS",
                 "--trace-config", "rate=1") if args.trace else ()
        grpc_port, http_port, metrics_port = free_ports(3)
        options = ServerOptions(Path(scratch) / "models", grpc_port=grpc_port, http_port=http_port,
                                metrics_port=metrics_port, extra_args=extra)
        with TritonServer(options).start(timeout_s=180) as server:
            del os.environ[STAGE_LOG]
            local = Engine(bundle)  # as serve_bench.py: ONNX Runtime with its own thread count
            remote = Engine(bundle, backend="triton", server=server.grpc_url)
            rois = check_rois([p.roi for p in panes], height, width)
            local.extract(frames[0], [p.roi for p in panes])
            remote.extract(frames[0], [p.roi for p in panes])
            timed = TimedRemote(remote)
            samples, local_ms, remote_ms, extract = [], [], [], {"in-process": [], "remote": []}
            try:
                for i in range(args.frames + 5):
                    frame = frames[i % len(frames)]
                    start = time.perf_counter()
                    local.backend.infer({FRAME: frame, ROIS: rois})
                    if i >= 5:
                        local_ms.append(1000.0 * (time.perf_counter() - start))
                    start = time.perf_counter()
                    _, stamps = timed.frame(frame, rois)
                    if i >= 5:
                        remote_ms.append(1000.0 * (time.perf_counter() - start))
                        samples.append(stamps)
                if args.compare:
                    timed.close()
                    for i in range(args.frames):
                        for name, engine in ([("in-process", local), ("remote", remote)][:: 1 if i % 2 else -1]):
                            start = time.perf_counter()
                            engine.extract(frames[i % len(frames)], [p.roi for p in panes])
                            extract[name].append(1000.0 * (time.perf_counter() - start))
                else:
                    timed.close()
            finally:
                local.close()
                remote.close()
        server_stamps = read_server_stamps(log)
        if args.trace:
            merge_trace(trace, server_stamps)
    for stamps in samples:
        stamps.update({k: v for k, v in server_stamps.get(stamps["id"], {}).items() if k != "id"})

    def total(values: list[float]) -> dict:
        return {"p50_ms": round(statistics.median(values), 2), "p90_ms": round(float(np.percentile(values, 90)), 2)}

    totals = {"in-process backbone (ONNX Runtime, fused preprocessing)": total(local_ms),
              "remote backbone (the stages above)": total(remote_ms)}
    record = {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": args.machine,
              "cores": cores, "layout": args.layout, "scheduling": args.scheduling, "passes": passes,
              "threads": threads, "frames": len(samples), "size": args.size,
              "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
              "server_stamps_matched": sum("execute" in s for s in samples), "stages": summarize(samples),
              "totals": totals, "overhead_p50_ms": round(totals["remote backbone (the stages above)"]["p50_ms"]
                                                         - totals["in-process backbone (ONNX Runtime, fused preprocessing)"]["p50_ms"], 2),
              "load_average": round(os.getloadavg()[0], 2)}
    if args.compare:
        record["extract"] = {name: total(v) for name, v in extract.items()}
        record["extract_overhead_p50_ms"] = round(record["extract"]["remote"]["p50_ms"]
                                                  - record["extract"]["in-process"]["p50_ms"], 2)
        totals.update({f"Engine.extract, {name}": v for name, v in record["extract"].items()})
    report(record, markdown(record), args.json, args.markdown)


if __name__ == "__main__":
    main()
