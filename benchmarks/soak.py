"""Soak: many frames through the full streaming pipeline, watching for slow leaks.

Runs ``edge-thyroid stream`` as a subprocess on the synthetic source (as fast as possible) and
samples the process from outside (psutil) while it runs: resident memory, open file descriptors and
threads, against the number of records already in its JSONL. Latency comes from the JSONL records
themselves. Reports RSS growth after warm-up, fd/thread drift, and latency p50/p99 of the first thousand
frames after warm-up vs the last thousand; writes JSON to benchmarks/results/soak.json.

    .venv/bin/python benchmarks/soak.py --frames 10000                      # random-init 64 px bundle
    .venv/bin/python benchmarks/soak.py --bundle runs/int8 --frames 20000 --layout triple

The model's weights do not matter for leaks; a random-init bundle (exported on the fly when
--bundle is not given) keeps the run short. Say so when quoting the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


@dataclass
class Sample:
    seconds: float
    frames: int       # JSONL records written so far
    rss_mb: float
    fds: int
    threads: int


@dataclass
class SoakReport:
    frames: int
    records: int
    lost: int                      # records that are not valid JSON (must be 0)
    seconds: float
    fps: float
    warmup_frames: int
    rss_mb_after_warmup: float
    rss_mb_final: float
    rss_mb_peak: float
    rss_growth_pct: float          # (final - after warm-up) / after warm-up
    rss_slope_mb_per_1000: float   # least-squares slope after warm-up
    fds_after_warmup: int
    fds_final: int
    fds_max: int
    threads_after_warmup: int
    threads_final: int
    threads_max: int
    latency_warmup_ms: dict[str, float]       # the warm-up frames (first inferences, caches filling)
    latency_first_1000_ms: dict[str, float]   # the first 1000 frames after warm-up
    latency_last_1000_ms: dict[str, float]
    latency_p99_last_over_first: float | None  # > 1: latency drifted up over the run
    exit_code: int
    summary: str
    command: list[str]
    machine: dict[str, object] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as handle:
            return sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))
    except FileNotFoundError:
        return 0


class Sampler(threading.Thread):
    """Samples a process (and its children) every ``interval`` seconds until stopped or it exits."""

    def __init__(self, pid: int, jsonl: Path, interval: float) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.jsonl = jsonl
        self.interval = interval
        self.samples: list[Sample] = []
        self._stop_event = threading.Event()
        self._start = time.monotonic()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                with self.process.oneshot():
                    rss = self.process.memory_info().rss
                    fds = self.process.num_fds()
                    threads = self.process.num_threads()
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                return
            self.samples.append(Sample(time.monotonic() - self._start, count_lines(self.jsonl), rss / 2**20, fds, threads))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def read_records(path: Path) -> tuple[list[dict], int]:
    """Parsed frame records (the header and summary lines set aside) and the number of lines that are
    not valid JSON (results lost)."""
    records, bad = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            bad += 1
    return [r for r in records if r.get("type", "frame") == "frame"], bad


def latency_ms(record: dict) -> float | None:
    """End-to-end latency of one record (capture to result), whatever the pipeline names it."""
    latency = record.get("latency_ms")
    if isinstance(latency, dict):
        for key in ("total", "capture_to_result", "end_to_end"):
            if isinstance(latency.get(key), (int, float)):
                return float(latency[key])
        values = [v for v in latency.values() if isinstance(v, (int, float))]
        return float(sum(values)) if values else None
    return float(latency) if isinstance(latency, (int, float)) else None


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values, dtype=np.float64)
    return {"n": int(arr.size), "p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99)),
            "max": float(arr.max())}


def at_frame(samples: list[Sample], frame: int) -> Sample:
    """The first sample taken once ``frame`` records were written (the last one if never)."""
    return next((s for s in samples if s.frames >= frame), samples[-1])


def analyse(samples: list[Sample], records: list[dict], lost: int, warmup: int, seconds: float, exit_code: int,
            summary: str, command: list[str]) -> SoakReport:
    if not samples:
        raise RuntimeError("the stream exited before a single sample was taken")
    # Steady state: after warm-up and before the last record (shutdown joins threads and closes files).
    total = len(records)
    after = [s for s in samples if warmup <= s.frames < total] or [s for s in samples if s.frames >= warmup] or samples[-1:]
    base, final = after[0], after[-1]
    frames_axis = np.array([s.frames for s in after], dtype=np.float64)
    rss_axis = np.array([s.rss_mb for s in after])
    slope = float(np.polyfit(frames_axis, rss_axis, 1)[0] * 1000) if len(after) >= 3 and np.ptp(frames_axis) > 0 else 0.0
    latencies = [v for v in (latency_ms(r) for r in records) if v is not None]
    first, last = percentiles(latencies[warmup:warmup + 1000]), percentiles(latencies[-1000:])
    return SoakReport(
        frames=len(records), records=len(records), lost=lost, seconds=seconds, fps=len(records) / max(seconds, 1e-9),
        warmup_frames=warmup, rss_mb_after_warmup=base.rss_mb, rss_mb_final=final.rss_mb,
        rss_mb_peak=max(s.rss_mb for s in samples), rss_growth_pct=100.0 * (final.rss_mb - base.rss_mb) / base.rss_mb,
        rss_slope_mb_per_1000=slope, fds_after_warmup=base.fds, fds_final=final.fds, fds_max=max(s.fds for s in after),
        threads_after_warmup=base.threads, threads_final=final.threads, threads_max=max(s.threads for s in after),
        latency_warmup_ms=percentiles(latencies[:warmup]),
        latency_first_1000_ms=first, latency_last_1000_ms=last,
        latency_p99_last_over_first=last["p99"] / first["p99"] if first and last else None,
        exit_code=exit_code, summary=summary, command=command, samples=samples)


def machine() -> dict[str, object]:
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "load_average": list(os.getloadavg()), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)}


def export_random_bundle(folder: Path, image_size: int) -> Path:
    target = folder / "random-bundle"
    subprocess.run([sys.executable, "-m", "edge_thyroid", "export", "--random-init", "--image-size", str(image_size),
                    "-o", str(target)], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return target


DEFAULT_SOURCE = "synthetic:triple?size=480x270"


def stream_command(bundle: Path, jsonl: Path, frames: int, source: str, layout: str, extra: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "edge_thyroid", "stream", str(bundle), "--source", source, "--layout", layout,
            "--whole-pane", "--as-fast-as-possible", "--max-frames", str(frames), "--json-out", str(jsonl), "--quiet", *extra]


def soak(bundle: Path, frames: int, *, source: str = DEFAULT_SOURCE, layout: str = "triple", warmup: int = 1000,
         interval: float = 0.5, workdir: Path | None = None, extra: Sequence[str] = (),
         timeout: float | None = None) -> SoakReport:
    """Run the stream to completion while sampling it; on ``timeout`` it is stopped with SIGINT."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="edge_thyroid_soak_"))
    jsonl = workdir / "soak.jsonl"
    command = stream_command(bundle, jsonl, frames, source, layout, extra)
    start = time.monotonic()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = Sampler(process.pid, jsonl, interval)
    sampler.start()
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        sampler.stop()
    seconds = time.monotonic() - start
    if process.returncode != 0 and not jsonl.exists():
        raise RuntimeError(f"stream failed (rc {process.returncode}): {stderr[-2000:]}")
    records, lost = read_records(jsonl)
    summary = "\n".join(line for line in (stdout + stderr).splitlines()[-5:])
    report = analyse(sampler.samples, records, lost, warmup, seconds, process.returncode, summary, command)
    report.machine = machine()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="bundle to run (default: export a random-init one)")
    parser.add_argument("--image-size", type=int, default=64, help="image size of the random-init bundle")
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=1000, help="frames before the RSS baseline is taken")
    parser.add_argument("--source", default=DEFAULT_SOURCE, help="source spec (default: synthetic triple-view screens)")
    parser.add_argument("--layout", default="triple", help="layout preset or file")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between process samples")
    parser.add_argument("--out", type=Path, default=RESULTS / "soak.json")
    args, extra = parser.parse_known_args(argv)
    with tempfile.TemporaryDirectory(prefix="edge_thyroid_soak_") as folder:
        bundle = args.bundle or export_random_bundle(Path(folder), args.image_size)
        report = soak(bundle, args.frames, source=args.source, layout=args.layout, warmup=args.warmup,
                      interval=args.interval, workdir=Path(folder), extra=extra)
    record = asdict(report)
    record["bundle"] = str(args.bundle) if args.bundle else f"random-init resnet50, {args.image_size} px (exported for this run)"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{report.frames} frames in {report.seconds:.0f} s ({report.fps:.1f} fps), {report.lost} lost; "
          f"RSS {report.rss_mb_after_warmup:.0f} -> {report.rss_mb_final:.0f} MB ({report.rss_growth_pct:+.2f}%, "
          f"{report.rss_slope_mb_per_1000:+.2f} MB/1000 frames); fds {report.fds_after_warmup} -> {report.fds_final}; "
          f"threads {report.threads_after_warmup} -> {report.threads_final}; p99 first (after warm-up)/last 1000: "
          f"{report.latency_first_1000_ms.get('p99', float('nan')):.1f} / {report.latency_last_1000_ms.get('p99', float('nan')):.1f} ms")
    print(f"wrote {args.out}")
    return 0 if report.lost == 0 and report.exit_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
