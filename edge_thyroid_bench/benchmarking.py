"""Timing you can trust on a shared, noisy machine: percentiles, stage timers, paced runs without
coordinated omission, interleaved configurations, machine facts and JSON records.

No timing here depends on torch, ONNX Runtime or any other runtime: this module measures whatever
callables it is given (see :mod:`edge_thyroid_bench.peers` for what ``edge-thyroid bench`` gives it).

Definitions used everywhere in the bench output:

* **latency** of a frame: from its *capture timestamp* to the moment its result exists. With a paced
  source the capture timestamp is the frame's scheduled arrival, not the moment the engine got round
  to it, so a stall shows up in the latency of every frame queued behind it (no coordinated
  omission).
* **percentiles**: linear interpolation between closest ranks (NumPy's default ``linear`` method).
* **std**: population standard deviation (ddof = 0), like ``numpy.std``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from edge_thyroid import cpuinfo
from edge_thyroid.cpuinfo import cpu_model
from edge_thyroid.errors import InputError
from edge_thyroid.stream.stats import percentile  # the one definition, shared with the stream's console

SCHEMA = "edge-thyroid-bench/1"
PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0, 99.9)


class Stage(str, Enum):
    """Where a frame's time goes, in pipeline order."""

    CAPTURE = "capture"          # grab + decode a frame from the source
    PREPROCESS = "preprocess"    # crop/resize/normalize outside the model graph (peers)
    INFER = "infer"              # the model; our engine's in-graph preprocessing is inside it
    HEAD = "head"                # pooling, fusion head, CAM of every pane


class DropPolicy(str, Enum):
    """What a paced run does with frames that arrive while the engine is busy."""

    QUEUE = "queue"      # every frame is processed; lateness accumulates in latency
    LATEST = "latest"    # a live capture keeps only the newest frame; older ones are dropped (counted)


# ---------------------------------------------------------------------------------------------
# Statistics


def mean_std(samples: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and population standard deviation (two-pass, so large offsets do not cancel)."""
    values = [float(v) for v in samples]
    if not values:
        raise ValueError("mean of no samples")
    mean = math.fsum(values) / len(values)
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))


@dataclass(frozen=True)
class Summary:
    """Distribution of one quantity, in the unit it was given (milliseconds in bench records)."""

    count: int
    mean: float
    std: float
    min: float
    p50: float
    p90: float
    p99: float
    p999: float
    max: float

    @classmethod
    def of(cls, samples: Sequence[float] | np.ndarray) -> "Summary":
        mean, std = mean_std(samples)
        p50, p90, p99, p999 = (percentile(samples, q) for q in PERCENTILES)
        return cls(len(samples), mean, std, float(min(samples)), p50, p90, p99, p999, float(max(samples)))

    def to_dict(self, digits: int = 4) -> dict[str, float | int]:
        return {k: (round(v, digits) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def median_of_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """Median of paired ratios: each pair was measured back to back, so slow drift cancels in it."""
    ratios = [n / d for n, d in zip(numerators, denominators) if d > 0]
    if not ratios:
        raise ValueError("no positive denominators to form ratios")
    return percentile(ratios, 50.0)


# ---------------------------------------------------------------------------------------------
# Timers


class StageTimer:
    """Accumulates per-stage durations (seconds) of one frame: ``with timer.stage(Stage.INFER): ...``."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.durations: dict[Stage, float] = {}

    @contextmanager
    def stage(self, stage: Stage) -> Iterator[None]:
        start = self.clock()
        try:
            yield
        finally:
            self.durations[stage] = self.durations.get(stage, 0.0) + self.clock() - start

    def add(self, stage: Stage, seconds: float) -> None:
        self.durations[stage] = self.durations.get(stage, 0.0) + seconds


@dataclass
class FrameTiming:
    """One processed frame. Times are seconds on the run's clock; ``latency`` = ``end - captured``."""

    index: int
    captured: float
    start: float
    end: float
    stages: dict[Stage, float] = field(default_factory=dict)
    value: float | None = None   # what the step returned (p(malignant)): lets configurations be compared

    @property
    def latency(self) -> float:
        return self.end - self.captured

    @property
    def service(self) -> float:
        return self.end - self.start


@dataclass
class RunTimings:
    frames: list[FrameTiming]
    dropped: int
    wall: float  # seconds from the run's first scheduled frame to its last result


Step = Callable[[int, StageTimer], "float | None"]


def run_frames(step: Step, indices: Sequence[int], *, interval: float | None = None,
               policy: DropPolicy = DropPolicy.QUEUE, ready_delay: Sequence[float] | None = None,
               clock: Callable[[], float] = time.perf_counter,
               sleep: Callable[[float], None] = time.sleep) -> RunTimings:
    """Run ``step(frame_index, timer)`` over ``indices`` and time every frame from its capture.

    ``interval=None``: closed loop, back to back; a frame is captured when the previous one is done.
    ``interval=T``: frame k of the block is captured at ``t0 + k*T`` whether or not the engine is free
    (a live source does not wait). With ``QUEUE`` every frame is processed and a late start counts in
    its latency; with ``LATEST`` the step always takes the newest captured frame and the skipped ones
    are counted as dropped. ``ready_delay[k]``: capture/decode time of frame k, it becomes available
    that long after its capture timestamp (and that time counts in its latency).
    """
    frames: list[FrameTiming] = []
    dropped = 0
    count = len(indices)
    delays = list(ready_delay) if ready_delay is not None else [0.0] * count
    if len(delays) != count:
        raise ValueError(f"ready_delay has {len(delays)} entries for {count} frames")
    t0 = clock()
    k = 0
    while k < count:
        now = clock()
        if interval is None:
            captured = now
        else:
            if policy is DropPolicy.LATEST:
                newest = min(count - 1, int((now - t0) // interval)) if now >= t0 else 0
                if newest > k:
                    dropped += newest - k
                    k = newest
            captured = t0 + k * interval
        ready = captured + delays[k]
        if ready > now:
            sleep(ready - now)
        timer = StageTimer(clock)
        if delays[k]:
            timer.add(Stage.CAPTURE, delays[k])
        start = max(clock(), ready)
        value = step(indices[k], timer)
        end = clock()
        frames.append(FrameTiming(indices[k], captured, start, end, dict(timer.durations),
                                  None if value is None else float(value)))
        k += 1
    return RunTimings(frames, dropped, (frames[-1].end - t0) if frames else 0.0)


def interleaved_order(names: Sequence[str], rounds: int) -> list[list[str]]:
    """Configuration order per round: forward, reversed, forward, ... (A B C, C B A, A B C).

    Every configuration sits at each position equally often over two rounds, so a linear drift of the
    machine's speed (thermal, a neighbour's job ramping) adds the same to all of them.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    order = list(names)
    return [order[:] if r % 2 == 0 else order[::-1] for r in range(rounds)]


def split_blocks(total: int, rounds: int) -> list[range]:
    """Frame indices 0..total-1 cut into ``rounds`` consecutive blocks of near-equal size."""
    if total < 1 or rounds < 1:
        raise ValueError(f"need at least one frame and one round, got frames={total}, rounds={rounds}")
    rounds = min(rounds, total)
    edges = [round(i * total / rounds) for i in range(rounds + 1)]
    return [range(edges[i], edges[i + 1]) for i in range(rounds)]


# ---------------------------------------------------------------------------------------------
# Machine facts


def cpu_flags() -> list[str]:
    """The SIMD features that decide conv speed (AVX2 / AVX-512 / VNNI / AMX)."""
    flags = cpuinfo.cpu_flags()
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
    return [f for f in wanted if f in flags]


def allowed_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def pin_to_cpus(count: int) -> list[int]:
    """Pin this process (and threads created after) to the first ``count`` allowed CPUs."""
    cpus = allowed_cpus()
    if count < 1:
        raise ValueError(f"thread count must be >= 1, got {count}")
    chosen = cpus[:count]
    set_affinity(chosen)
    return chosen


def set_affinity(cpus: Sequence[int]) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, list(cpus))


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MB.

    Linux: VmHWM of /proc/self/status, which starts afresh at exec. (getrusage's ru_maxrss does not:
    a child spawned by a 2 GB parent reports at least 2 GB.)
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024.0 if sys.platform != "darwin" else peak / (1024.0 * 1024.0)


def git_state(path: str | Path | None = None) -> dict[str, Any]:
    """Commit of the checkout the code runs from, and whether tracked files differ from it."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": bool(dirty) if commit else None}


def package_versions(names: Iterable[str]) -> dict[str, str]:
    """Versions of the packages already imported (asking never imports one)."""
    versions = {"python": sys.version.split()[0], "numpy": np.__version__}
    for name in names:
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = str(getattr(module, "__version__", "?"))
    return versions


def machine_info(threads: int, pinned: Sequence[int] | None) -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "allowed_cpus": allowed_cpus(),
        "threads": threads,
        "pinned_cpus": list(pinned) if pinned else None,
        "loadavg_start": [round(v, 2) for v in load],
        "platform": platform.platform(),
    }


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else []


# ---------------------------------------------------------------------------------------------
# FLOPs and the FLOP-bound floor


def count_flops(model: Any, panes: int = 1) -> int:
    """FLOPs (2 x multiply-accumulates) of the Conv, Gemm and MatMul nodes of an ONNX model whose
    one input is an image batch; the batch dimension is set to ``panes``. Element-wise ops are
    ignored: they are memory-bound and a few percent of a CNN's arithmetic."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.ModelProto.FromString(model.SerializeToString())
    initializers = {init.name for init in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
    for graph_input in graph_inputs:
        dims = graph_input.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_param")
            dims[0].dim_value = panes
    inferred = shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        dims = info.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[info.name] = [d.dim_value for d in dims]
    for init in inferred.graph.initializer:
        shapes[init.name] = list(numpy_helper.to_array(init).shape) if init.dims else []
    # Weights reached through Identity / DequantizeLinear keep the initializer's shape.
    for node in inferred.graph.node:
        if node.op_type in ("Identity", "DequantizeLinear") and node.input[0] in shapes:
            shapes.setdefault(node.output[0], shapes[node.input[0]])
    total = 0
    for node in inferred.graph.node:
        if node.op_type == "Conv":
            weight, out = shapes.get(node.input[1]), shapes.get(node.output[0])
            if weight is None or out is None:
                raise ValueError(f"cannot infer the shapes of Conv node {node.name!r}")
            # weight [Cout, Cin/groups, kh, kw]; out [N, Cout, H, W]
            total += 2 * int(np.prod(out)) * int(np.prod(weight[1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
            if a is None or out is None:
                raise ValueError(f"cannot infer the shapes of {node.op_type} node {node.name!r}")
            inner = a[0] if node.op_type == "Gemm" and any(
                att.name == "transA" and att.i for att in node.attribute) else a[-1]
            total += 2 * int(np.prod(out)) * int(inner)
    return total


_MATMUL_SCRIPT = """
import json, sys, time
import numpy as np
n, repeats = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
a = rng.standard_normal((n, n), dtype=np.float32)
b = rng.standard_normal((n, n), dtype=np.float32)
c = np.empty((n, n), dtype=np.float32)
np.matmul(a, b, out=c)
times = []
for _ in range(repeats):
    t = time.perf_counter(); np.matmul(a, b, out=c); times.append(time.perf_counter() - t)
print(json.dumps(times))
"""


def measure_matmul_gflops(threads: int, size: int = 2048, repeats: int = 7) -> dict[str, Any]:
    """GFLOP/s of an fp32 ``size``^2 matmul with exactly ``threads`` BLAS threads.

    Runs in a child process because BLAS reads its thread count once, at import. Returns the
    median and best over ``repeats`` (best = what the silicon can do when the neighbours are quiet).
    """
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    result = subprocess.run([sys.executable, "-c", _MATMUL_SCRIPT, str(size), str(repeats)], env=env,
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"matmul probe failed: {result.stderr.strip()[-300:]}")
    times = json.loads(result.stdout.strip().splitlines()[-1])
    flops = 2.0 * size ** 3
    return {"size": size, "threads": threads, "repeats": repeats,
            "gflops_median": round(flops / percentile(times, 50) / 1e9, 2),
            "gflops_best": round(flops / min(times) / 1e9, 2)}


# ---------------------------------------------------------------------------------------------
# Records


def write_json_atomic(path: str | Path, record: Mapping[str, Any]) -> Path:
    """Write JSON next to ``path`` then rename: a crash never leaves a half-written result file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(record, out, indent=2, default=_json_default)
            out.write("\n")
        os.chmod(temporary, 0o644)  # mkstemp makes it private; a results file is for sharing
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Summary):
        return value.to_dict()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def milliseconds(seconds: Iterable[float]) -> list[float]:
    return [s * 1000.0 for s in seconds]


# ---------------------------------------------------------------------------------------------
# Synthetic workstation screens


def side_by_side_rois(panes: int, width: int, height: int, margin: int = 20, top: int = 90) -> np.ndarray:
    """ROIs (x, y, w, h) of ``panes`` equal panes side by side under a title bar, like a
    dual/triple-view ultrasound screen."""
    if panes < 1:
        raise ValueError(f"panes must be >= 1, got {panes}")
    pane_w = (width - (panes + 1) * margin) // panes
    pane_h = height - top - margin
    if pane_w < 8 or pane_h < 8:
        raise ValueError(f"a {width}x{height} screen has no room for {panes} panes")
    return np.array([[margin + i * (pane_w + margin), top, pane_w, pane_h] for i in range(panes)], dtype=np.int64)


class SyntheticScreens:
    """Deterministic screens: speckle panes with a dark 'nodule'. Pane 0 (B-mode) changes every
    frame; the others change every ``refresh`` frames (an SWE/SMI pane refreshes at 1-2 Hz;
    ``refresh=0``: never), so a pane cache sees the hits it would see live."""

    def __init__(self, rois: np.ndarray, width: int, height: int, refresh: int = 15,
                 variants: int = 6, seed: int = 0) -> None:
        self.rois = np.asarray(rois, dtype=np.int64)
        self.width, self.height = width, height
        self.refresh = refresh
        rng = np.random.default_rng(seed)
        self.variants = [[self._pane(int(w), int(h), rng, colour=p > 0) for _ in range(variants)]
                         for p, (_, _, w, h) in enumerate(self.rois.tolist())]
        self.background = np.full((height, width, 3), 14, dtype=np.uint8)

    @staticmethod
    def _pane(width: int, height: int, rng: np.random.Generator, colour: bool) -> np.ndarray:
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        cy, cx = height * rng.uniform(0.4, 0.6), width * rng.uniform(0.4, 0.6)
        tissue = 90 + 40 * np.sin(yy / rng.uniform(12, 20)) * np.cos(xx / rng.uniform(18, 28))
        nodule = ((yy - cy) / (height * 0.2)) ** 2 + ((xx - cx) / (width * 0.28)) ** 2 < 1
        tissue = np.where(nodule, 45, tissue)
        gray = np.clip(tissue * rng.rayleigh(0.8, size=(height, width)), 0, 255).astype(np.uint8)
        if not colour:
            return np.repeat(gray[:, :, None], 3, axis=2)
        # An elastography-like colour overlay inside the nodule box.
        bgr = np.repeat(gray[:, :, None], 3, axis=2)
        bgr[nodule, 0] = np.clip(gray[nodule].astype(np.int16) + 80, 0, 255)
        bgr[nodule, 2] = gray[nodule] // 3
        return bgr

    def pane_variant(self, pane: int, index: int) -> int:
        if pane == 0:
            return index % len(self.variants[0])
        if self.refresh <= 0:
            return 0
        return (index // self.refresh) % len(self.variants[pane])

    def frame(self, index: int) -> np.ndarray:
        frame = self.background.copy()
        for p, (x, y, w, h) in enumerate(self.rois.tolist()):
            frame[y:y + h, x:x + w] = self.variants[p][self.pane_variant(p, index)]
        return frame


class RecordedFrames:
    """Frames read once from a capture source, replayed from memory in a loop: every configuration
    sees the same pixels, and decoding is timed once (``decode_ms``) instead of inside each runner."""

    def __init__(self, frames: Sequence[np.ndarray], decode_ms: Sequence[float], description: str,
                 layout_hint: Any = None) -> None:
        if not frames:
            raise ValueError("no frames recorded")
        self.frames = list(frames)
        self.decode_ms = list(decode_ms)
        self.description = description
        self.layout_hint = layout_hint  # the source's own layout (DICOM ultrasound regions), if any

    def frame(self, index: int) -> np.ndarray:
        return self.frames[index % len(self.frames)]


def record_source(spec: str, count: int, max_bytes: int = 1 << 30) -> RecordedFrames:
    """Read up to ``count`` frames (and at most ``max_bytes`` of pixels) from a capture source, as
    fast as it delivers them. Frames the source flags as not an image are skipped."""
    from edge_thyroid.sources import SourceOptions, create_source

    source = create_source(spec, SourceOptions(realtime=False))
    frames: list[np.ndarray] = []
    decode: list[float] = []
    size = 0
    source.open()
    try:
        description = source.describe()
        while len(frames) < count and size < max_bytes:
            captured = source.read()
            if captured is None:
                break
            if captured.problem:
                continue
            frames.append(captured.frame)
            decode.append(captured.decode_ms)
            size += captured.frame.nbytes
        hint = source.layout_hint
    finally:
        source.close()
    if not frames:
        raise InputError(f"source {spec!r} delivered no frames; expected a video, DICOM cine, image folder or live source")
    return RecordedFrames(frames, decode, description, hint)


# ---------------------------------------------------------------------------------------------
# Reports: a markdown table and a latency plot, both from the JSON record alone


def _fmt(value: Any, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}{suffix}"


def format_table(record: Mapping[str, Any]) -> str:
    """The Ultralytics-style comparison table (markdown) plus a detail table and the run's facts."""
    settings, machine, flops = record["settings"], record["machine"], record.get("flops")
    git = record.get("git") or {}
    commit = (git.get("commit") or "unknown")[:10] + (" (uncommitted changes)" if git.get("dirty") else "")
    pinned = machine.get("pinned_cpus")
    source = settings.get("source")
    if isinstance(source, dict):  # frames recorded from a capture source
        width, height = source["frame_size"]
        screen = (f"{width}x{height} frames of {source['description']}, {source['frames_recorded']} decoded once "
                  f"(decode p50 {_fmt(source['decode_ms'].get('p50'), 2)} ms) and replayed")
    else:
        screen = f"{settings['frame_size'][0]}x{settings['frame_size'][1]} synthetic screen"
    lines = [
        f"Latency per {settings['panes']}-pane frame ({'+'.join(settings['modalities'])}, "
        f"{screen}), {settings['frames']} frames per "
        f"configuration in {settings['rounds']} interleaved rounds; reference: {record['reference']}.",
        f"Machine: {machine['cpu_model']} ({', '.join(machine.get('cpu_flags') or []) or 'flags unknown'}), "
        f"{machine['threads']} threads" + (f" pinned to CPUs {pinned}" if pinned else " (not pinned)")
        + f"; load average {machine.get('loadavg_start')} at start, {machine.get('loadavg_end')} at end; git {commit}.",
        "",
        "| configuration | format | precision | size (MB) | AUC (val) | p50 ms | p99 ms | fps "
        "| p50 / ours (x the reference's time; >1 slower) | p50 / FLOP floor |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in record["configs"]:
        if not row.get("available"):
            lines.append(f"| {row['name']} | not run: {row.get('reason') or 'no frames'} | {row['precision']} "
                         "| - | - | - | - | - | - | - |")
            continue
        latency = row["latency_ms"]
        ratio = "1.00 (ref)" if row["name"] == record["reference"] else _fmt(row["ratio_vs_reference"], 2, "x")
        lines.append(
            f"| {row['name']} | {row['format']} | {row['precision']} | {_fmt(row['size_mb'])} | "
            f"{_fmt(row['auc'], 3)} | {_fmt(latency['p50'])} | {_fmt(latency['p99'])} | "
            f"{_fmt(row['throughput_fps'])} | {ratio} | {_fmt(row.get('ratio_vs_flop_floor'), 2, 'x')} |")
    lines += ["", "| configuration | preprocess p50 | infer p50 | head+CAM p50 | p90 | p99.9 | max | mean +- std "
              "| dropped | cold start (s) | peak RSS (MB) | max abs dp vs ref |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in record["configs"]:
        if not row.get("available"):
            continue
        stages, latency = row["stages_ms"], row["latency_ms"]
        # Our engine preprocesses inside its backend call: in the graph, or on the host (openvino).
        inside = "in infer" if (row.get("details") or {}).get("preprocessing") == "host" else "in graph"
        stage = lambda s: _fmt(stages[s]["p50"], 2) if s in stages else inside if s == "preprocess" else "-"  # noqa: E731
        lines.append(
            f"| {row['name']} | {stage('preprocess')} | {stage('infer')} | {stage('head')} | {_fmt(latency['p90'])} | "
            f"{_fmt(latency['p999'])} | {_fmt(latency['max'])} | {_fmt(latency['mean'])} +- {_fmt(latency['std'])} | "
            f"{row['dropped']} | {_fmt(row.get('cold_start_s'), 2)} | {_fmt(row.get('peak_rss_mb'), 0)} | "
            f"{_fmt(row.get('max_abs_dp_vs_reference'), 4)} |")
    lines.append("")
    lines.append("p50 / ours = median over rounds of (block p50 / reference block p50), each pair run back to back: >1 is slower than ours. "
                 "Latency counts from each frame's capture" + (
                     f" (paced at {settings['pacing']['fps']} fps, policy {settings['pacing']['policy']})."
                     if settings["pacing"].get("fps") else " (closed loop: a frame is captured when the previous result exists)."))
    if flops:
        matmul = flops["matmul"]
        lines.append(f"FLOP floor: {flops['gflop_per_pane']} GFLOP per pane x {flops['panes']} panes at "
                     f"{matmul['gflops_median']} GFLOP/s (median of fp32 {matmul['size']}^2 matmuls, "
                     f"{matmul['threads']} threads; best {matmul['gflops_best']}) = {flops['floor_ms_per_frame']:.1f} ms "
                     "per frame (an FP32 bound; INT8 can go below it).")
    if record.get("interrupted"):
        lines.append("Interrupted: the run was stopped early; each configuration has only the frames it finished.")
    if record.get("command"):
        lines.append(f"Command: `{record['command']}`")
    return "\n".join(lines) + "\n"


def require_matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        from edge_thyroid.errors import MissingDependencyError

        raise MissingDependencyError("matplotlib", "bench", "the latency plot") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency(record: Mapping[str, Any], path: str | Path) -> Path:
    """Histogram and CDF of capture-to-result latency, one colour per configuration."""
    plt = require_matplotlib()
    rows = [r for r in record["configs"] if r.get("available") and r.get("samples_ms")]
    if not rows:
        raise ValueError("the record has no latency samples to plot")
    figure, (hist_axes, cdf_axes) = plt.subplots(1, 2, figsize=(13, 4.8))
    low = min(min(r["samples_ms"]) for r in rows)
    high = max(max(r["samples_ms"]) for r in rows)
    bins = np.geomspace(max(low * 0.9, 1e-3), high * 1.1, 60)
    for row in rows:
        samples = np.sort(np.asarray(row["samples_ms"]))
        label = f"{row['name']} (p50 {row['latency_ms']['p50']:.1f} ms)"
        hist_axes.hist(samples, bins=bins, histtype="step", linewidth=1.5, label=label)
        cdf_axes.step(samples, np.arange(1, len(samples) + 1) / len(samples), where="post", label=label)
    from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

    nice = [m * 10.0 ** e for e in range(-2, 6) for m in (1, 2, 5) if low * 0.8 <= m * 10.0 ** e <= high * 1.25]
    for axes in (hist_axes, cdf_axes):
        axes.set_xscale("log")
        axes.xaxis.set_major_locator(FixedLocator(nice))
        axes.xaxis.set_major_formatter(ScalarFormatter())
        axes.xaxis.set_minor_formatter(NullFormatter())
        axes.set_xlabel("capture-to-result latency (ms, log scale)")
        axes.grid(True, which="both", alpha=0.3)
    hist_axes.set_ylabel("frames")
    cdf_axes.set_ylabel("fraction of frames <= x")
    for q in (0.5, 0.99):
        cdf_axes.axhline(q, color="grey", linewidth=0.8, linestyle="--")
    cdf_axes.legend(fontsize=7, loc="lower right")
    settings, machine = record["settings"], record["machine"]
    figure.suptitle(f"{settings['panes']}-pane frames, {settings['frames']} per configuration, interleaved; "
                    f"{machine['cpu_model']}, {machine['threads']} threads", fontsize=10)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
