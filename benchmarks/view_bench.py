"""What the live view costs the stream, and whether misbehaving browsers lose anything.

The bundled INT8 model streams the demo clip as fast as possible (lossless: the capture waits for the
model, so every captured frame must come out as a record) with a JSONL sink, in four configurations,
interleaved over ``--rounds`` so machine load drifts over all of them alike:

* ``no view``                     the baseline;
* ``view, nobody watching``       ``--view`` on, no browser: records go to the view's history only;
* ``view, one browser``           one client reads the MJPEG stream (frames drawn and encoded at 10 fps);
* ``view, misbehaving browsers``  two reading clients, one that never reads a byte, and one that
                                  disconnects in the middle of a frame.

Clients are separate processes (as browsers are), connected before the stream starts. Per frame, the
stream's own work is timed: the classify step plus handing the result to the sinks (``Fanout.frame``),
as the stream thread's CPU time (the work it does) and as wall time (which on a loaded 2-core machine
also counts waiting for a core or for the GIL); the view's cost is the difference of the p50s against
``no view``, per round, the median over rounds. The process's CPU time per frame (every thread: ONNX
Runtime's, the view's drawing and serving) is reported as well. "Nothing lost": frames captured ==
processed == JSONL records, no sink dropped anything, and the stream ended by the end of the source.

    .venv/bin/python benchmarks/view_bench.py                # 3 rounds x 4 configurations x 192 frames

Writes benchmarks/results/view.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_thyroid.commands.stream import DEMO_BUNDLE, DEMO_CLIP, DEMO_LAYOUT, data_path
from edge_thyroid.engine import Engine
from edge_thyroid.layout import load_layout
from edge_thyroid.sinks import JsonlSink
from edge_thyroid.sources import SourceOptions, create_source
from edge_thyroid.stream import Pipeline, PipelineConfig
from edge_thyroid.stream import pipeline as pipeline_module
from edge_thyroid.stream.classify import FrameClassifier
from edge_thyroid.view import ViewSink

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
WARMUP_FRAMES = 20
GOAL_MS = 0.5

# A browser stand-in: reads /stream.mjpg and prints how many parts it got ("read"), or never reads
# ("never"), or disconnects after 20 KB, inside the first JPEG ("quit").
CLIENT = r"""
import socket, sys, time
mode, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
if mode == "never":
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: bench\r\n\r\n")
if mode == "never":
    time.sleep(600)
received, parts = 0, 0
while True:
    data = s.recv(65536)
    if not data:
        break
    received += len(data)
    parts += data.count(b"--edge-thyroid-frame")
    if mode == "quit" and received > 20000:
        s.close()
        break
print(parts, received)
"""

CONFIGS = {
    "no view": [],
    "view, nobody watching": [],
    "view, one browser": ["read"],
    "view, misbehaving browsers": ["read", "read", "never", "quit"],
}


def clocks() -> np.ndarray:
    """(wall, this thread's CPU) now: on a loaded machine the wall clock also counts waiting for a core
    (or the GIL), the thread's CPU time only the work this thread did."""
    return np.array([time.perf_counter(), time.thread_time()])


class TimedClassifier(FrameClassifier):
    """The stream's classify step, timed per frame for this benchmark."""

    times: list[np.ndarray] = []

    def classify(self, item):  # type: ignore[override]
        start = clocks()
        result = super().classify(item)
        TimedClassifier.times.append(clocks() - start)
        return result


def run_once(engine: Engine, config: str, frames: int, workdir: Path) -> dict[str, Any]:
    layout = load_layout(str(data_path(DEMO_LAYOUT)))
    source = create_source(str(data_path(DEMO_CLIP)), SourceOptions(realtime=False, loop=True, layout=layout))
    jsonl = workdir / "records.jsonl"
    sinks: list[Any] = [JsonlSink(jsonl)]
    clients: list[tuple[str, subprocess.Popen]] = []
    view = None
    if config != "no view":
        def connect(_: str) -> None:
            for mode in CONFIGS[config]:
                clients.append((mode, subprocess.Popen([sys.executable, "-c", CLIENT, mode, str(view.server.port)],
                                                       stdout=subprocess.PIPE, text=True)))
            deadline = time.monotonic() + 20
            while view.state.viewers < len(CONFIGS[config]) and time.monotonic() < deadline:
                time.sleep(0.01)

        view = ViewSink("127.0.0.1", 0, fps=10.0, announce=connect)
        sinks.append(view)
    pipeline = Pipeline(engine, source, sinks, PipelineConfig(layout=layout, lossless=True, max_frames=frames,
                                                              handle_signals=False))
    fanout_times: list[np.ndarray] = []
    frame = pipeline.fanout.frame

    def timed_frame(result):
        start = clocks()
        frame(result)
        fanout_times.append(clocks() - start)

    pipeline.fanout.frame = timed_frame  # type: ignore[method-assign]
    TimedClassifier.times = []
    source.open()
    cpu = time.process_time()
    try:
        summary = pipeline.run()
    finally:
        source.close()
    cpu = time.process_time() - cpu
    received = []
    for mode, process in clients:
        if mode == "never":
            process.kill()
            process.wait()
            continue
        out, _ = process.communicate(timeout=30)
        if mode == "read":
            received.append(int(out.split()[0]))
    classify = np.array(TimedClassifier.times[WARMUP_FRAMES:]) * 1000    # [frames, (wall, thread CPU)] ms
    fanout = np.array(fanout_times[WARMUP_FRAMES:]) * 1000
    per_frame = classify + fanout
    records = sum(1 for line in jsonl.open() if json.loads(line)["type"] == "frame")   # not the header/summary
    return {"config": config, "captured": summary.frames, "processed": summary.processed, "jsonl_records": records,
            "sink_dropped": summary.sink_dropped, "stopped_by": summary.stopped_by, "error": summary.error,
            "seconds": round(summary.seconds, 3),
            "per_frame_ms": {"p50": float(np.median(per_frame[:, 0])), "p90": float(np.percentile(per_frame[:, 0], 90))},
            "per_frame_cpu_ms": {"p50": float(np.median(per_frame[:, 1])),
                                 "p90": float(np.percentile(per_frame[:, 1], 90))},
            "classify_ms_p50": float(np.median(classify[:, 0])), "fanout_ms_p50": float(np.median(fanout[:, 0])),
            "classify_cpu_ms_p50": float(np.median(classify[:, 1])), "fanout_cpu_ms_p50": float(np.median(fanout[:, 1])),
            "process_cpu_ms_per_frame": 1000 * cpu / max(1, summary.processed),
            "view_frames_encoded": view.rendered if view else 0, "browser_frames_received": received,
            "nothing_lost": (summary.frames == summary.processed == records and not any(summary.sink_dropped.values())
                             and summary.error is None)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=192, help="frames per run (the clip is 192)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "view.json")
    args = parser.parse_args()

    runs: list[dict[str, Any]] = []
    load_before = os.getloadavg()
    pipeline_module.FrameClassifier = TimedClassifier  # the run loop builds its classifier from this name
    with Engine(data_path(DEMO_BUNDLE)) as engine, tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.rounds):
            for config in CONFIGS:
                run = run_once(engine, config, args.frames, Path(tmp))
                run["round"] = round_index
                runs.append(run)
                print(f"round {round_index} {config}: per frame p50 {run['per_frame_ms']['p50']:.3f} ms, "
                      f"lost nothing: {run['nothing_lost']}", file=sys.stderr)
    rows = []
    for config in CONFIGS:
        mine = [r for r in runs if r["config"] == config]
        base = [r for r in runs if r["config"] == "no view"]
        # The cost in each round against that round's baseline, then the median over rounds.
        def cost(key: str) -> list[float]:
            return [m[key]["p50"] - b[key]["p50"] for m, b in zip(mine, base)]

        def median(key: str) -> float:
            return float(np.median([m[key] for m in mine]))

        rows.append({"config": config,
                     "per_frame_p50_ms": float(np.median([m["per_frame_ms"]["p50"] for m in mine])),
                     "per_frame_cpu_p50_ms": float(np.median([m["per_frame_cpu_ms"]["p50"] for m in mine])),
                     "fanout_p50_ms": median("fanout_ms_p50"), "fanout_cpu_p50_ms": median("fanout_cpu_ms_p50"),
                     "view_cost_p50_ms": float(np.median(cost("per_frame_ms"))),
                     "view_cost_cpu_p50_ms": float(np.median(cost("per_frame_cpu_ms"))),
                     "view_cost_by_round_ms": cost("per_frame_ms"), "view_cost_cpu_by_round_ms": cost("per_frame_cpu_ms"),
                     "process_cpu_ms_per_frame": median("process_cpu_ms_per_frame"),
                     "nothing_lost": all(m["nothing_lost"] for m in mine),
                     "browser_frames_received": [m["browser_frames_received"] for m in mine],
                     "frames_per_run": [m["processed"] for m in mine]})
    result = {"bench": "view", "bundle": "bundled demo model (INT8)", "source": "demo clip, as fast as possible",
              "frames_per_run": args.frames, "rounds": args.rounds, "warmup_frames": WARMUP_FRAMES,
              "goal_view_cost_p50_ms": GOAL_MS, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                                            "loadavg_before": load_before,
                                                            "loadavg_after": os.getloadavg()},
              "summary": rows, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print("| configuration | stream thread CPU per frame p50 (ms) | view cost, CPU (ms) | wall per frame p50 (ms) "
          "| view cost, wall (ms) | hand-off to sinks p50, CPU / wall (ms) | process CPU per frame (ms) | nothing lost |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for row in rows:
        print(f"| {row['config']} | {row['per_frame_cpu_p50_ms']:.2f} | {row['view_cost_cpu_p50_ms']:+.3f} | "
              f"{row['per_frame_p50_ms']:.2f} | {row['view_cost_p50_ms']:+.2f} | "
              f"{row['fanout_cpu_p50_ms']:.3f} / {row['fanout_p50_ms']:.3f} | {row['process_cpu_ms_per_frame']:.1f} | "
              f"{'yes' if row['nothing_lost'] else 'NO'} |")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
