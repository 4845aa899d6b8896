"""Streaming benchmark: a 1080p workstation screen at 30 fps, paced in real time, through the pipeline.

Views (synthetic screens, :mod:`edge_thyroid.sources.synthetic`):

* dual:   B-mode live + SWE refreshing at 2 Hz          goal p50 <= 40 ms, p99 <= 80 ms
* triple: B-mode + SMI live, SWE refreshing at 2 Hz     goal p50 <= 70 ms
  (goals for the trained INT8 bundle at 128 px on the 2-core CPU)

Measured per view: capture-to-result latency (from each frame's capture timestamp, the scheduled
arrival, to its result) p50/p90/p99/max, frames processed and dropped (latest frame wins), pane
cache hit rate, per-stage p50, and the process RSS sampled every 0.5 s against frames processed
(after-warm-up vs final, slope per 1000 frames). ``--no-cache`` rows run the same view with pane
caching off for comparison. The first second of each run is warm-up and left out of the latency.

    .venv/bin/python benchmarks/stream_bench.py                         # short: 300 frames per view
    .venv/bin/python benchmarks/stream_bench.py --bundle runs/int8 --tag int8_trained128
    .venv/bin/python benchmarks/stream_bench.py --soak                  # 10,000 frames per view (~6 min each)

Without --bundle it exports a random-init FP32 bundle at --image-size (needs torch): the weights do
not change the speed, but say "FP32, random init" when quoting those numbers. Writes
benchmarks/results/stream_<tag>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from edge_thyroid.backends import selectable_backends
from edge_thyroid.stream.stats import STAGES

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
GOALS = {"dual": {"p50": 40.0, "p99": 80.0}, "triple": {"p50": 70.0}}
WARMUP_S = 1.0


class Collector:
    """A sink that keeps each result's timings in preallocated arrays: the benchmark's own bookkeeping
    must not show up as memory growth in the RSS it measures."""

    name = "collector"
    needs_frames = False

    def __init__(self, capacity: int) -> None:
        self.count = 0
        self.captured = np.zeros(capacity)
        self.total = np.zeros(capacity)
        self.stages = np.zeros((capacity, len(STAGES)))

    def __len__(self) -> int:
        return self.count

    def open(self) -> None:
        pass

    def write(self, result: Any) -> None:
        if self.count >= len(self.total):
            return
        self.captured[self.count] = result.capture_ts
        self.total[self.count] = result.total_ms
        self.stages[self.count] = [result.stages_ms.get(s, 0.0) for s in STAGES]
        self.count += 1

    def event(self, gap: Any) -> None:
        pass

    def close(self) -> None:
        pass


class RssSampler(threading.Thread):
    def __init__(self, collector: Collector, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.collector, self.interval = collector, interval
        self.process = psutil.Process()
        self.samples: list[tuple[float, int, float]] = []   # (seconds, frames processed, RSS MB)
        self.done = threading.Event()
        self.start_time = time.monotonic()

    def run(self) -> None:
        while not self.done.is_set():
            self.samples.append((time.monotonic() - self.start_time, len(self.collector),
                                 self.process.memory_info().rss / 2**20))
            self.done.wait(self.interval)


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    from edge_thyroid_bench.benchmarking import Summary

    return Summary.of(values).to_dict(2) if values else {"count": 0}


def run_view(engine: Any, view: str, frames: int, cache: bool, fps: float) -> dict[str, Any]:
    from edge_thyroid.layout import preset
    from edge_thyroid.stream import Pipeline, PipelineConfig
    from edge_thyroid.sources import SourceOptions
    from edge_thyroid.sources.synthetic import SyntheticSource

    source = SyntheticSource(f"synthetic:{view}?size=1920x1080&fps={fps:g}&swe_hz=2&frames={frames}",
                             SourceOptions(realtime=True, layout=preset(view)))
    collector = Collector(frames)
    sampler = RssSampler(collector)
    source.open()
    sampler.start()
    try:
        summary = Pipeline(engine, source, [collector], PipelineConfig(cache=cache, whole_pane=True)).run()
    finally:
        sampler.done.set()
        sampler.join()
        source.close()
    count = len(collector)
    captured, totals = collector.captured[:count], collector.total[:count]
    steady = captured - (captured[0] if count else 0.0) >= WARMUP_S
    total = totals[steady].tolist()
    after = [s for s in sampler.samples if s[1] >= count * 0.1] or sampler.samples[-1:]
    xs = np.array([s[1] for s in after], dtype=float)
    ys = np.array([s[2] for s in after])
    slope = float(np.polyfit(xs, ys, 1)[0] * 1000) if len(after) >= 3 and np.ptp(xs) > 0 else 0.0
    rate = summary.cache_hit_rate
    record = {
        "view": view, "cache": cache, "frames": summary.frames, "processed": summary.processed,
        "dropped": summary.dropped, "drop_rate": round(summary.dropped / max(1, summary.frames), 4),
        "processed_fps": round(summary.processed / max(summary.seconds, 1e-9), 2),
        "cache_hit_rate": None if rate is None else round(rate, 4),
        "latency_ms": percentiles(total),
        "stages_p50_ms": {k: round(float(np.median(collector.stages[:count][steady, j])), 3)
                          for j, k in enumerate(STAGES)},
        "rss_mb": {"after_warmup": round(float(ys[0]), 1) if len(ys) else None,
                   "final": round(sampler.samples[-1][2], 1) if sampler.samples else None,
                   "peak": round(max(s[2] for s in sampler.samples), 1) if sampler.samples else None,
                   "slope_per_1000_frames": round(slope, 3)},
        "rss_samples": [[round(a, 1), b, round(c, 1)] for a, b, c in sampler.samples],
        "stopped_by": summary.stopped_by,
    }
    if len(total) >= 2000:
        record["latency_first_1000_ms"] = percentiles(total[:1000])
        record["latency_last_1000_ms"] = percentiles(total[-1000:])
    goal = GOALS.get(view, {})
    record["goal_ms"] = goal
    record["meets_goal"] = all(record["latency_ms"].get(k, float("inf")) <= v for k, v in goal.items()) if goal else None
    return record


def export_random(image_size: int, folder: Path) -> Path:
    target = folder / f"random{image_size}"
    subprocess.run([sys.executable, "-m", "edge_thyroid", "export", "--random-init", "--image-size", str(image_size),
                    "-o", str(target)], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return target


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| view | cache | frames | processed | dropped | cache hits | p50 ms | p90 ms | p99 ms | max ms | "
             "infer p50 ms | RSS MB (warm -> final) | goal |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lat, rss = r["latency_ms"], r["rss_mb"]
        goal = ", ".join(f"{k} <= {v:g}" for k, v in r["goal_ms"].items()) if r["goal_ms"] else "-"
        met = "" if r["meets_goal"] is None else (" (met)" if r["meets_goal"] else " (missed)")
        hits = "-" if r["cache_hit_rate"] is None else f"{100 * r['cache_hit_rate']:.0f}%"
        lines.append(f"| {r['view']} | {'on' if r['cache'] else 'off'} | {r['frames']} | {r['processed']} | "
                     f"{r['dropped']} | {hits} | {lat.get('p50')} | {lat.get('p90')} | {lat.get('p99')} | "
                     f"{lat.get('max')} | {r['stages_p50_ms'].get('infer')} | {rss['after_warmup']} -> {rss['final']} | "
                     f"{goal}{met} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="bundle to run (default: export a random-init FP32 one)")
    parser.add_argument("--model", default=None, help="model key in the bundle (fp32, int8, ...)")
    parser.add_argument("--image-size", type=int, default=128, help="image size of the random-init bundle")
    parser.add_argument("--frames", type=int, default=300, help="frames per view (10 s at 30 fps)")
    parser.add_argument("--soak", action="store_true", help="10,000 frames per view, cache on only")
    parser.add_argument("--views", default="dual,triple")
    parser.add_argument("--no-cache-compare", action="store_true", help="skip the cache-off rows")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=None, help="inference threads (default: ONNX Runtime's)")
    parser.add_argument("--backend", default=None, choices=selectable_backends(),
                        help="runtime of the engine (default: the one the model was built for)")
    parser.add_argument("--execution-precision", default=None, choices=["f32", "bf16"], help="openvino: float parts in f32 or bf16")
    parser.add_argument("--tag", default=None, help="results file name: stream_<tag>.json")
    parser.add_argument("--note", default="", help="free text stored with the results (bundle kind, machine state)")
    args = parser.parse_args(argv)

    from edge_thyroid_bench.benchmarking import git_state, loadavg, machine_info, package_versions, write_json_atomic
    from edge_thyroid.engine import Engine

    frames = 10_000 if args.soak else args.frames
    scratch = Path(tempfile.mkdtemp(prefix="stream_bench_"))
    bundle = args.bundle or export_random(args.image_size, scratch)
    tag = args.tag or f"{'soak_' if args.soak else ''}{'fp32_random' + str(args.image_size) if args.bundle is None else bundle.name}"
    rows = []
    backend_options = {"execution_precision": args.execution_precision} if args.execution_precision else {}
    with Engine(bundle, model=args.model, threads=args.threads, backend=args.backend, **backend_options) as engine:
        manifest = engine.bundle.manifest
        info = machine_info(args.threads or 0, None)
        for view in args.views.split(","):
            for cache in ([True] if args.soak or args.no_cache_compare else [True, False]):
                print(f"{view} cache={'on' if cache else 'off'}: {frames} frames at {args.fps:g} fps ...", file=sys.stderr)
                rows.append(run_view(engine, view, frames, cache, args.fps))
                lat = rows[-1]["latency_ms"]
                print(f"  p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms, processed {rows[-1]['processed']}, "
                      f"dropped {rows[-1]['dropped']}, cache hits {rows[-1]['cache_hit_rate']}", file=sys.stderr)
        record = {
            "schema": "edge-thyroid-stream-bench/1",
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "bundle": {"path": str(bundle), "model": engine.model_key,
                       "precision": manifest.models[engine.model_key].precision.value,
                       "random_init": bool((manifest.provenance.get("checkpoint") or {}).get("random_init")),
                       "image_size": manifest.preprocessing.image_size,
                       "backbone": manifest.backbone},
            "backend": {"name": engine.backend.name, "providers": engine.backend.providers},
            "screen": "1920x1080 synthetic, paced in real time", "fps": args.fps, "frames_per_view": frames,
            "warmup_excluded_s": WARMUP_S, "note": args.note,
            "machine": {**info, "loadavg_end": loadavg()}, "git": git_state(REPO),
            "versions": package_versions(["onnxruntime", "openvino", "cv2", "onnx"]), "results": rows,
        }
    path = write_json_atomic(RESULTS / f"stream_{tag}.json", record)
    print(table(rows))
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
