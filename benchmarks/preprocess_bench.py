"""Preprocessing latency on this CPU: 3 panes of a 1080p frame -> N x 3 x S x S float32.

Every path computes the reference's function (bilinear, half-pixel, clamp-to-edge, BGR->RGB,
normalize, NCHW); each is first checked against the float64 reference on the benchmark frame (max
error recorded, in uint8 levels), then timed. Runs are interleaved (each round runs every path once,
in a rotating order) so machine drift hits all paths alike; median and p99 over --runs rounds.

Paths:
  reference        kernels.reference, float64 NumPy written for clarity (the naive implementation)
  numpy-fp32       kernels.numpy_path: NumPy gathering only the 4 bilinear taps, float32
  opencv-float     kernels.opencv_path, Resampling.FLOAT (default CPU path; exact to float32)
  opencv-uint8     kernels.opencv_path, Resampling.UINT8 (cv2.resize on uint8: <= 1 level)
  onnx-in-graph    kernels.onnx_graph: the graph fused in front of the exported model, run alone in ORT
  triton           kernels.triton_kernel on CUDA, when a GPU is present (else skipped)

    .venv/bin/python benchmarks/preprocess_bench.py [--sizes 128,224] [--runs 200] [--note "..."]

Writes benchmarks/results/preprocess_cpu.json (numbers, machine, git commit) and
benchmarks/results/preprocess.md (a fragment with the table). Quiet the machine first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge_thyroid.kernels.check import LEVEL
from edge_thyroid.kernels.numpy_path import preprocess_numpy
from edge_thyroid.kernels.onnx_graph import InGraphPreprocessor
from edge_thyroid.kernels.opencv_path import OpenCVPreprocessor, Resampling
from edge_thyroid.kernels.reference import PreprocessSpec, preprocess_reference

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
FRAME_SHAPE = (1080, 1920, 3)
PANES = ((20, 100, 600, 600), (660, 100, 600, 600), (1300, 100, 600, 600))


def machine_info() -> dict:
    from edge_thyroid.cpuinfo import cpu_model

    model = cpu_model()
    import cv2
    import onnxruntime

    return {
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_1_5_15": list(os.getloadavg()),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "opencv_threads": cv2.getNumThreads(),
        "onnxruntime": onnxruntime.__version__,
        "platform": platform.platform(),
    }


def git_commit() -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {"commit": git("rev-parse", "HEAD"), "kernels_dirty": bool(git("status", "--porcelain", "kernels", "benchmarks/preprocess_bench.py"))}


def triton_path(spec: PreprocessSpec, frame: np.ndarray) -> Callable[[], object] | None:
    """The Triton kernel on CUDA (input already on the device, as in the engine), or None without a GPU."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    from edge_thyroid.kernels.triton_kernel import device_rois, preprocess_triton

    device_frame = torch.from_numpy(frame).cuda()
    rois = device_rois(np.array(PANES), frame.shape[0], frame.shape[1], "cuda")
    out = torch.empty((len(PANES), 3, spec.image_size, spec.image_size), device="cuda")

    def run() -> object:
        preprocess_triton(device_frame, rois, spec, out)
        torch.cuda.synchronize()
        return out.cpu().numpy()

    return run


def paths_for(spec: PreprocessSpec, frame: np.ndarray, threads: int) -> dict[str, Callable[[], np.ndarray]]:
    rois = np.array(PANES, dtype=np.int64)
    size = spec.image_size
    exact = OpenCVPreprocessor(spec, resampling=Resampling.FLOAT)
    fast = OpenCVPreprocessor(spec, resampling=Resampling.UINT8)
    out_exact = np.empty((len(rois), 3, size, size), dtype=np.float32)
    out_fast = np.empty_like(out_exact)
    # Spinning off: an idle ORT thread pool otherwise spins after each run and slows the next path.
    in_graph = InGraphPreprocessor(spec, threads=threads, spinning=False)
    paths: dict[str, Callable[[], np.ndarray]] = {
        "reference": lambda: preprocess_reference(frame, rois, spec),
        "numpy-fp32": lambda: preprocess_numpy(frame, rois, spec),
        "opencv-float": lambda: exact(frame, rois, out=out_exact),
        "opencv-uint8": lambda: fast(frame, rois, out=out_fast),
        "onnx-in-graph": lambda: in_graph(frame, rois),
    }
    gpu = triton_path(spec, frame)
    if gpu is not None:
        paths["triton"] = gpu
    return paths


def measure(size: int, runs: int, warmup: int, threads: int, seed: int, isolated_runs: int) -> dict:
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 256, size=FRAME_SHAPE, dtype=np.uint8)  # noise: the worst case for resampling error
    spec = PreprocessSpec(image_size=size)
    paths = paths_for(spec, frame, threads)
    expected = preprocess_reference(frame, np.array(PANES), spec, dtype=np.float64)
    accuracy = {}
    for name, run in paths.items():
        err = np.asarray(run(), dtype=np.float64) - expected
        accuracy[name] = {"max_abs_levels": float(np.abs(err).max() / LEVEL), "mean_abs_levels": float(np.abs(err).mean() / LEVEL),
                          "bias_levels": float(err.mean() / LEVEL)}
    names = list(paths)
    for _ in range(warmup):
        for name in names:
            paths[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in tqdm(range(runs), desc=f"S={size}", file=sys.stderr, leave=False):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]  # rotate the order every round
            start = time.perf_counter_ns()
            paths[name]()
            times[name].append((time.perf_counter_ns() - start) / 1e6)
    rows = {}
    for name in names:
        t = np.asarray(times[name])
        # Back to back (the frame and buffers stay in cache): a lower bound the engine rarely sees,
        # since the model's inference evicts the caches between frames.
        hot = []
        for _ in range(isolated_runs):
            start = time.perf_counter_ns()
            paths[name]()
            hot.append((time.perf_counter_ns() - start) / 1e6)
        rows[name] = {"median_ms": float(np.median(t)), "p99_ms": float(np.percentile(t, 99)), "min_ms": float(t.min()),
                      "runs": len(t), "back_to_back_median_ms": float(np.median(hot)) if hot else None, **accuracy[name]}
    return {"image_size": size, "paths": rows}


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "## Preprocessing kernels (3 panes of a 1080p frame)",
        "",
        f"3 panes of 600x600 from a 1920x1080 BGR uint8 frame -> 3x3xSxS float32 (BGR->RGB, ImageNet normalize, NCHW). "
        f"{result['runs']} interleaved rounds per size (order rotated each round), after {result['warmup']} warm-up rounds: "
        f"median and p99 are from these (the other paths evict the caches between runs, as the model does between frames); "
        f"'back-to-back' is the median of {result['isolated_runs']} consecutive runs of one path (cache-hot). "
        f"Error vs the float64 reference on a noise frame (worst case), in uint8 levels (1 level = {LEVEL:.4f} normalized).",
        "",
        f"Machine: {m['cpu_model']}, {m['usable_cpus']} usable CPUs, load average at start {m['load_average_1_5_15'][0]:.2f} "
        f"(shared with other work: absolute numbers are noisy, compare within a column). OpenCV {m['opencv']} "
        f"({m['opencv_threads']} threads), ONNX Runtime {m['onnxruntime']} ({result['ort_threads']} intra-op threads, spinning off), "
        f"NumPy {m['numpy']}. Commit {result['git']['commit'][:12]}{' (kernels dirty)' if result['git']['kernels_dirty'] else ''}.",
        "",
        f"Command: `{result['command']}`",
        "",
    ]
    if result.get("note"):
        lines += [f"Note: {result['note']}", ""]
    sizes = [s["image_size"] for s in result["sizes"]]
    header = "| path | " + " | ".join(f"S={s} median ms | p99 ms | back-to-back ms | vs opencv-float | max err (levels)" for s in sizes) + " |"
    lines += [header, "|---|" + "---|---|---|---|---|" * len(sizes)]
    names = list(result["sizes"][0]["paths"])
    for name in names:
        cells = []
        for s in result["sizes"]:
            row = s["paths"][name]
            base = s["paths"]["opencv-float"]["median_ms"]
            hot = f"{row['back_to_back_median_ms']:.3f}" if row.get("back_to_back_median_ms") is not None else "-"
            cells.append(f"{row['median_ms']:.3f} | {row['p99_ms']:.3f} | {hot} | {row['median_ms'] / base:.2f}x | {row['max_abs_levels']:.3g}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Paths: " + "; ".join(f"`{k}` {v}" for k, v in DESCRIPTIONS.items()), "", NOTES]
    return "\n".join(lines)


DESCRIPTIONS = {
    "reference": "float64 NumPy written for clarity (the naive implementation, the oracle)",
    "numpy-fp32": "NumPy gathering only the 4 bilinear taps per output, float32",
    "opencv-float": "the default CPU path, exact to float32: crops with >= 16x the output's pixels gather the 2S x 2S source pixels the bilinear taps read (cv2.remap, nearest) and blend in float32, smaller ones go crop -> float32 -> cv2.resize; then one blobFromImagesWithParams",
    "opencv-uint8": "cv2.resize on the uint8 crop (fixed point, rounds) -> blobFromImagesWithParams",
    "onnx-in-graph": "the preprocessing subgraph of the exported model, alone in ONNX Runtime",
    "triton": "one Triton launch on CUDA, frame already on the device, incl. synchronize + copy back",
}


NOTES = """### Tolerances (kernels/check.py; normalized units, 1 uint8 level = 0.0175)

| path | max | mean | why |
|---|---|---|---|
| reference -> float32/float16 | 2e-6 | 2e-6 | the final cast only |
| numpy-fp32, opencv-float, triton | 1e-4 (1/175 level) | 2e-5 | exact taps, float32 blend; observed <= 3e-6 |
| onnx-in-graph | 1e-3 (1/17 level) | 1e-4 | ORT's Resize derives the sample point from a float32 scale; observed <= 1.8e-4 at S=224 |
| opencv-uint8 | 1 level | 0.35 level | 11-bit fixed-point weights, truncating shifts, result rounded to uint8; observed max 0.79, mean 0.27, bias -0.12 level; output must decode to whole levels |

fp16 output adds fp16's rounding, |reference| x 2^-11. Where nothing is resampled (ROI exactly SxS,
constant frames) every path must match to 2e-6, uint8 paths included.

### Decisions
- OpenCV: float resampling is the default (`Resampling.FLOAT`): the network sees exactly the transform
  it was trained through. It converts each crop to float32 first; that pass dominates when the frame
  is not in cache. `Resampling.UINT8` meets the 1 ms budget in every regime at <= 0.8 level error
  (the INT8 models built here quantize their input in steps of 0.5-1.1 levels anyway); it is opt-in.
- In-graph ONNX: left as is (Slice uint8 -> Cast -> float NHWC Resize in a Loop; Transpose, Gather,
  affine). Tried: DESIGN.md's uint8 Resize then Cast (~20% faster, but ORT's uint8 bilinear
  truncates: -0.5 level bias, max 1.28 levels, fails the 1e-3 bound the exported graph is held to),
  gathering only the 2S needed rows before the Cast, Scan instead of Loop, BatchNormalization for the
  affine, a Loop-free GatherElements + AveragePool graph: at best ~10% faster at 128 and slower at
  224. ORT's float NHWC Resize (~3.5 ns per output value here) and the crop's Cast are the floor with
  standard ONNX ops.
- Triton: one launch for all panes; integer tap arithmetic (exact floor/clamp), 12 uint8 gathers per
  output pixel, fp16/fp32 NCHW stored straight into the caller's buffer. GPU timing: benchmarks/gpu_check.py.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="128,224", help="comma list of output sizes S (default 128,224)")
    parser.add_argument("--runs", type=int, default=200, help="timed rounds per size, each running every path once (default 200)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed rounds first (default 10)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ONNX Runtime intra-op threads (default: all CPUs)")
    parser.add_argument("--isolated-runs", type=int, default=50,
                        help="then this many back-to-back runs per path (cache-hot; default 50, 0 to skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default=str(RESULTS), help="output folder (default benchmarks/results)")
    parser.add_argument("--note", default="", help="a line on the conditions of this run (goes into the markdown)")
    parser.add_argument("--json", action="store_true", help="also print the result JSON to stdout")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}")
    sizes = [int(s) for s in args.sizes.split(",")]
    result = {
        "benchmark": "preprocess", "frame": list(FRAME_SHAPE), "panes": [list(p) for p in PANES],
        "runs": args.runs, "warmup": args.warmup, "isolated_runs": args.isolated_runs, "ort_threads": args.threads, "note": args.note,
        "command": shlex.join([".venv/bin/python", "benchmarks/preprocess_bench.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(), "git": git_commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "sizes": [measure(size, args.runs, args.warmup, args.threads, args.seed, args.isolated_runs) for size in sizes],
    }
    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "preprocess_cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "preprocess.md").write_text(markdown(result))
    print(markdown(result), file=sys.stderr)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
