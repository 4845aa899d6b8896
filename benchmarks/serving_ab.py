"""Before/after of the serving model: the same 3-pane frames through a Triton server running the
model file of a git revision (``--baseline``, default ``main``) and one running this working tree's,
next to the in-process backbone, frame by frame.

    python benchmarks/serving_ab.py [BUNDLE] --frames 300 --scheduling fair,fifo --layout latency \
        --json benchmarks/results/serving_ab.json --markdown benchmarks/results/serving_ab.md

Every server is up for the whole run; each frame goes once through every configuration (the
in-process ONNX Runtime pass and, per scheduling, the baseline and the current server) in a fresh
random order (seeded), so drifting load and the previous configuration's threads still spinning
(in-process ONNX Runtime's above all) hit them alike, and a 5 ms pause before each pass (as between
a stream's frames) lets those threads stop: with a rotating order and no pause each configuration
nearly always followed the same one, and two identical servers differed by 2.5 ms p50. Timed is ``backend.infer`` (the backbone pass the engine waits on, as in
remote_breakdown.py). Both servers are asked by this tree's client (``TritonBackend``), so this
compares the server side; the paired column is the median over frames of (current - baseline).
Then (``--clients``) the many-client throughput of each server (serve_bench.py's client threads,
``classify`` as fast as answered), baseline and current in turns (ABBA rounds).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_thyroid.engine import Engine  # noqa: E402
from edge_thyroid.frames import check_rois  # noqa: E402
from edge_thyroid.kernels.graph_io import FRAME, ROIS  # noqa: E402
from edge_thyroid.serving.repository import (BatchingOptions, cores_available, default_queue_delay_us,  # noqa: E402
                                             layout_passes, write_model)
from edge_thyroid.serving.server import ServerOptions, TritonServer, free_ports  # noqa: E402

sys.path.insert(0, str(REPO / "benchmarks"))
from remote_breakdown import report  # noqa: E402
from serve_bench import DEMO_BUNDLE, frames_and_panes, throughput  # noqa: E402

MODEL_SOURCE = "edge_thyroid/serving/backbone_model.py"
IN_PROCESS = "in-process (onnxruntime)"
# Idle time before each timed pass, as between a stream's frames: the previous pass's threads (ONNX
# Runtime's spin after a run above all) have stopped, so no configuration pays for its predecessor.
GAP_S = 0.005


def baseline_source(revision: str) -> str:
    """The serving model file as it is at ``revision`` (git show), so no checkout is needed."""
    try:
        return subprocess.run(["git", "show", f"{revision}:{MODEL_SOURCE}"], cwd=REPO, check=True,
                              capture_output=True, text=True).stdout
    except subprocess.CalledProcessError as exc:
        sys.exit(f"serving_ab: cannot read {MODEL_SOURCE} at {revision!r}: {exc.stderr.strip()}; expected a git revision")


def summary(values: list[float]) -> dict:
    return {"p50_ms": round(statistics.median(values), 3), "p90_ms": round(float(np.percentile(values, 90)), 3)}


def markdown(record: dict) -> str:
    lines = [f"# Serving model before/after ({record['started']})", "",
             f"Machine: {record['machine']}, {record['cores']} core(s) for this process, load average "
             f"{record['load_before']} before, {record['load_after']} after. Layout `{record['layout']}` "
             f"({record['passes']} pass(es) x {record['threads']} ORT thread(s)); {record['frames']} frames of "
             f"{record['size']}, 3 panes each, every configuration per frame, in a random order. Baseline: model "
             f"file at `{record['baseline']}`; current: this tree. Command: `{record['command']}`", "",
             "| configuration | p50 ms | p90 ms | p50 over in-process | paired median (current - baseline) |",
             "|---|---:|---:|---:|---:|"]
    base = record["rows"][IN_PROCESS]["p50_ms"]
    for name, row in record["rows"].items():
        paired = record["paired"].get(name)
        over = "-" if name == IN_PROCESS else f"{row['p50_ms'] - base:+.2f}"
        pair = "" if paired is None else f"{paired:+.3f}"
        lines.append(f"| {name} | {row['p50_ms']:.2f} | {row['p90_ms']:.2f} | {over} | {pair} |")
    if record["throughput"]:
        lines += ["", f"{record['clients']} concurrent clients (`classify`, pane cache off), {record['seconds']:g} s per "
                  "round, baseline and current in ABBA turns:", "",
                  "| server | frames/s per round | p50 ms per round | per-client frames (fewest-most) per round | errors |",
                  "|---|---|---|---|---:|"]
        for name, rounds in record["throughput"].items():
            rate = " / ".join(f"{r['frames_per_s']:.1f}" for r in rounds)
            p50 = " / ".join(str(r["p50_ms"]) for r in rounds)
            spread = " / ".join(f"{min(r['per_client_frames'])}-{max(r['per_client_frames'])}" for r in rounds)
            lines.append(f"| {name} | {rate} | {p50} | {spread} | {sum(r['errors'] for r in rounds)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", default=str(DEMO_BUNDLE))
    parser.add_argument("--baseline", default="main", help="git revision whose serving model is the baseline")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--scheduling", default="fair,fifo", help="comma-separated: fair, fifo")
    parser.add_argument("--layout", default="latency", choices=["latency", "throughput"])
    parser.add_argument("--cores", type=int, default=None)
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients of the throughput rows (0: skip)")
    parser.add_argument("--seconds", type=float, default=3.0, help="per throughput round")
    parser.add_argument("--rounds", type=int, default=2, help="ABBA throughput rounds per scheduling")
    parser.add_argument("--machine", default=platform.processor() or platform.machine())
    parser.add_argument("--json", default=None)
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args()
    schedulings = [s for s in args.scheduling.split(",") if s]
    if not schedulings or set(schedulings) - {"fair", "fifo"}:
        sys.exit(f"serving_ab: --scheduling {args.scheduling!r}; expected a comma-separated list of fair, fifo")
    bundle = Path(args.bundle)
    cores = args.cores or cores_available()
    passes, threads = layout_passes(args.layout, cores)
    width, height = (int(v) for v in args.size.split("x"))
    frames, panes = frames_and_panes(12, (width, height))
    rois = check_rois([p.roi for p in panes], height, width)
    old_model = baseline_source(args.baseline)
    load_before = round(os.getloadavg()[0], 2)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    times: dict[str, list[float]] = {IN_PROCESS: []}
    with tempfile.TemporaryDirectory(prefix="edge_thyroid_ab_") as scratch:
        servers, engines, urls = [], {IN_PROCESS: Engine(bundle)}, {}
        rates: dict[str, list[dict]] = {}
        try:
            for scheduling in schedulings:
                batching = BatchingOptions(max_batch_size=8, instances=passes, scheduling=scheduling,
                                           max_queue_delay_us=default_queue_delay_us(args.layout))
                for side in ("baseline", "current"):
                    repository = Path(scratch) / f"{scheduling}_{side}"
                    model = write_model(bundle, repository, batching=batching, threads=threads)
                    if side == "baseline":
                        (model.path / str(model.version) / "model.py").write_text(old_model, encoding="utf-8")
                    grpc_port, http_port, metrics_port = free_ports(3)
                    options = ServerOptions(repository, grpc_port=grpc_port, http_port=http_port,
                                            metrics_port=metrics_port)
                    server = TritonServer(options).start(timeout_s=180)
                    servers.append(server)
                    name = f"{scheduling}, {side}"
                    engines[name] = Engine(bundle, backend="triton", server=server.grpc_url)
                    times[name] = []
                    urls[name] = server.grpc_url
            for engine in engines.values():  # warm-up
                for frame in frames[:3]:
                    engine.backend.infer({FRAME: frame, ROIS: rois})
            rng = random.Random(0)
            order = list(engines)
            for i in range(args.frames):
                rng.shuffle(order)
                for name in order:
                    time.sleep(GAP_S)
                    start = time.perf_counter()
                    engines[name].backend.infer({FRAME: frames[i % len(frames)], ROIS: rois})
                    times[name].append(1000.0 * (time.perf_counter() - start))
            for engine in engines.values():
                engine.close()  # the throughput clients have the machine to themselves
            for scheduling in schedulings if args.clients else []:
                for turn in range(args.rounds):
                    for side in ("baseline", "current") if turn % 2 == 0 else ("current", "baseline"):
                        name = f"{scheduling}, {side}"
                        rates.setdefault(name, []).append(throughput(bundle, urls[name], frames, panes,
                                                                     args.clients, args.seconds))
        finally:
            for engine in engines.values():
                engine.close()
            for server in servers:
                server.cleanup()
    paired = {}
    for scheduling in schedulings:
        before, after = times[f"{scheduling}, baseline"], times[f"{scheduling}, current"]
        paired[f"{scheduling}, current"] = round(statistics.median(b - a for a, b in zip(before, after)), 3)
    record = {"started": started, "machine": args.machine, "cores": cores, "layout": args.layout,
              "passes": passes, "threads": threads, "frames": args.frames, "size": args.size,
              "baseline": args.baseline, "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
              "load_before": load_before, "load_after": round(os.getloadavg()[0], 2),
              "rows": {name: summary(values) for name, values in times.items()}, "paired": paired,
              "clients": args.clients, "seconds": args.seconds, "throughput": rates}
    report(record, markdown(record), args.json, args.markdown)


if __name__ == "__main__":
    main()
