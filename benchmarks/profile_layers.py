"""Where the time goes: per-layer timings of one bundle model on a fresh 3-pane 1080p frame, from ONNX
Runtime's profiler (the fused model, preprocessing in the graph, as our onnxruntime backend runs it)
and OpenVINO's performance counters (the backbone with OpenCV preprocessing on the host, as our
openvino backend runs it).

    python benchmarks/profile_layers.py [BUNDLE] [--model int8] [--frames 20] [--threads N]
                                        [--execution-precision f32] [--out benchmarks/results/profile_layers]

Writes OUT.json (every node's mean time per frame, grouped by network block and by operator type)
and OUT.md (the tables BENCHMARKS.md quotes). Profilers add overhead of their own, so the totals are
a little above an unprofiled run; read the shares, not the absolute figures. The load average is
recorded with the figures: on a shared machine they are not quiet.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = REPO / "edge_thyroid" / "data" / "demo_bundle"
BLOCK = re.compile(r"/(conv1|bn1|relu|maxpool|layer\d)(?:/|$|_)")


def block_of(node_name: str, op_type: str) -> str:
    """The network block a node belongs to ('layer3', 'conv1 (stem)', 'preprocessing', ...)."""
    if node_name.startswith("pre/") or op_type == "Loop":
        return "preprocessing (in the graph)"
    match = BLOCK.search(node_name)
    if not match:
        return "other (layout reorders, transposes, output)"
    return {"conv1": "stem (conv1, maxpool)", "bn1": "stem (conv1, maxpool)", "relu": "stem (conv1, maxpool)",
            "maxpool": "stem (conv1, maxpool)"}.get(match.group(1), match.group(1))


def summarise(nodes: dict[tuple[str, str], float], frames: int, extra: dict[str, float] | None = None) -> dict[str, Any]:
    """Mean ms per frame by node, block and operator type; ``extra``: stages outside the runtime."""
    per_frame = {key: total / frames for key, total in nodes.items()}
    by_block: dict[str, float] = defaultdict(float)
    by_op: dict[str, float] = defaultdict(float)
    for (name, op), ms in per_frame.items():
        by_block[block_of(name, op)] += ms
        by_op[op] += ms
    for stage, ms in (extra or {}).items():
        by_block[stage] += ms
        by_op[stage] += ms
    total = sum(by_block.values())
    top = sorted(per_frame.items(), key=lambda kv: -kv[1])[:15]
    return {"total_ms_per_frame": round(total, 3),
            "by_block_ms": {k: round(v, 3) for k, v in sorted(by_block.items(), key=lambda kv: -kv[1])},
            "by_op_type_ms": {k: round(v, 3) for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])},
            "top_nodes_ms": [{"node": name, "op": op, "ms": round(ms, 3)} for (name, op), ms in top]}


def frame_and_rois(panes: int) -> tuple[np.ndarray, np.ndarray]:
    from edge_thyroid.autoselect import trial_frame

    frame, rois = trial_frame(panes)
    return frame, np.asarray(rois, dtype=np.int64)


def profile_onnxruntime(model_path: Path, frame: np.ndarray, rois: np.ndarray, frames: int,
                        threads: int | None) -> dict[str, Any]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as scratch:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(scratch) / "ort")
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        feeds = {"frame": frame, "rois": rois}
        for _ in range(3):  # warm-up runs are profiled too: they are skipped below by run index
            session.run(None, feeds)
        started = time.perf_counter()
        for _ in range(frames):
            session.run(None, feeds)
        wall = (time.perf_counter() - started) / frames * 1000.0
        trace = json.loads(Path(session.end_profiling()).read_text())
    nodes: dict[tuple[str, str], float] = defaultdict(float)
    runs = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"]
    first_timed = runs[3]["ts"] if len(runs) > 3 else 0
    kernels = [e for e in trace if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    # A Loop's time includes its body's nodes, which the profiler also lists: count the Loop only.
    loops = [(e["ts"], e["ts"] + e["dur"]) for e in kernels if e.get("args", {}).get("op_name") == "Loop"]
    for event in kernels:
        inside_loop = any(start <= event["ts"] and event["ts"] + event["dur"] <= end for start, end in loops) \
            and event.get("args", {}).get("op_name") != "Loop"
        if event["ts"] < first_timed or inside_loop:
            continue
        name = event["name"][: -len("_kernel_time")]
        nodes[(name, event.get("args", {}).get("op_name", "?"))] += event["dur"] / 1000.0
    return {"runtime": f"ONNX Runtime {ort.__version__}", "what": "the bundle's fused model (preprocessing in the graph)",
            "wall_ms_per_frame_while_profiling": round(wall, 3), **summarise(nodes, frames)}


def profile_openvino(model_path: Path, spec: Any, frame: np.ndarray, rois: np.ndarray, frames: int,
                     threads: int | None, precision: str) -> dict[str, Any]:
    import openvino as ov

    from edge_thyroid.graph import backbone_graph, host_mirrored_input, write_mirror_images
    from edge_thyroid.kernels.opencv_path import OpenCVPreprocessor

    core = ov.Core()
    # As the openvino backend runs it: a mirror-image average's mirrored copies made on the host.
    backbone, host_mirror = host_mirrored_input(backbone_graph(model_path))
    model = core.read_model(backbone.SerializeToString())
    model.reshape([len(rois) * (2 if host_mirror else 1), 3, spec.image_size, spec.image_size])
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision, "PERF_COUNT": True}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    opencv = OpenCVPreprocessor(spec)
    buffer = np.empty((len(rois) * (2 if host_mirror else 1), 3, spec.image_size, spec.image_size), np.float32)

    def preprocess(frame: np.ndarray, rois: np.ndarray) -> np.ndarray:
        # As the backend: into one buffer, the mirror images written after the panes.
        opencv(frame, rois, out=buffer[:len(rois)])
        if host_mirror:
            write_mirror_images(buffer, len(rois))
        return buffer

    for _ in range(3):
        request.infer({0: preprocess(frame, rois)})
    nodes: dict[tuple[str, str], float] = defaultdict(float)
    # The kernel OpenVINO ran each node with names its precision (brgconv_avx512_I8: INT8; ..._f32 or
    # ..._bf16: a float layer left), which is what says whether anything still runs in float.
    kernels: dict[str, float] = defaultdict(float)
    host = 0.0
    started = time.perf_counter()
    for _ in range(frames):
        t0 = time.perf_counter()
        pixels = preprocess(frame, rois)
        host += (time.perf_counter() - t0) * 1000.0
        request.infer({0: pixels})
        for info in request.profiling_info:
            if info.status == info.Status.EXECUTED:
                ms = info.real_time.total_seconds() * 1000.0
                nodes[(info.node_name, info.node_type)] += ms
                kernels[f"{info.node_type}: {info.exec_type}"] += ms
    wall = (time.perf_counter() - started) / frames * 1000.0
    by_kernel = {k: round(v / frames, 3) for k, v in sorted(kernels.items(), key=lambda kv: -kv[1])}
    return {"runtime": f"OpenVINO {ov.__version__.split('-')[0]} ({precision} float parts)",
            "what": "the backbone cut out of the fused model, OpenCV preprocessing"
                    + (" and mirror images" if host_mirror else "") + " on the host",
            "wall_ms_per_frame_while_profiling": round(wall, 3),
            **summarise(nodes, frames, {"preprocessing (host, OpenCV)": host / frames}), "by_kernel_ms": by_kernel}


def markdown(record: dict[str, Any]) -> str:
    runtimes = [k for k in ("onnxruntime", "openvino") if k in record]
    header = (f"Model `{record['model']}` of `{record['bundle']}`, {record['panes']} panes of a {record['frame']} "
              f"frame, {record['frames']} profiled frames, {record['threads'] or 'default'} threads, "
              f"load average {record['loadavg_before']} before / {record['loadavg_after']} after; {record['cpu']}.")
    lines = [header, "", "| block | " + " | ".join(f"{record[r]['runtime']} ms (share)" for r in runtimes) + " |",
             "|---|" + "---:|" * len(runtimes)]
    blocks = list(dict.fromkeys(b for r in runtimes for b in record[r]["by_block_ms"]))
    for block in blocks:
        cells = []
        for r in runtimes:
            ms = record[r]["by_block_ms"].get(block)
            total = record[r]["total_ms_per_frame"]
            cells.append("" if ms is None else f"{ms:.2f} ({ms / total:.0%})")
        lines.append(f"| {block} | " + " | ".join(cells) + " |")
    lines.append("| **total (sum of nodes)** | " + " | ".join(f"**{record[r]['total_ms_per_frame']:.2f}**" for r in runtimes) + " |")
    for r in runtimes:
        lines += ["", f"{record[r]['runtime']}, by operator type (ms per frame): " + ", ".join(
            f"{op} {ms:.2f}" for op, ms in list(record[r]["by_op_type_ms"].items())[:8])]
        if "by_kernel_ms" in record[r]:
            lines += ["", f"{record[r]['runtime']}, by kernel (node type: implementation, ms per frame): " + ", ".join(
                f"{kernel} {ms:.2f}" for kernel, ms in record[r]["by_kernel_ms"].items() if ms >= 0.005)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", nargs="?", default=str(DEFAULT_BUNDLE))
    parser.add_argument("--model", default=None, help="model key of the bundle (default: int8 if present)")
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--panes", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--execution-precision", default="f32", choices=("f32", "bf16"))
    parser.add_argument("--runtimes", default="onnxruntime,openvino")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "profile_layers"))
    args = parser.parse_args(argv)

    from edge_thyroid.autoselect import cpu_model
    from edge_thyroid.bundle import load_bundle

    bundle = load_bundle(args.bundle)
    key, entry = bundle.model_entry(args.model)
    frame, rois = frame_and_rois(args.panes)
    shown = Path(args.bundle).resolve()
    shown = shown.relative_to(REPO) if shown.is_relative_to(REPO) else shown
    record: dict[str, Any] = {"bundle": str(shown), "model": key, "panes": args.panes,
                              "frame": f"{frame.shape[1]}x{frame.shape[0]}", "frames": args.frames,
                              "threads": args.threads, "cpu": cpu_model(), "loadavg_before": [round(v, 2) for v in os.getloadavg()],
                              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    wanted = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    if "onnxruntime" in wanted:
        record["onnxruntime"] = profile_onnxruntime(bundle.path(entry.file), frame, rois, args.frames, args.threads)
    if "openvino" in wanted:
        record["openvino"] = profile_openvino(bundle.path(entry.file), bundle.manifest.preprocessing, frame, rois,
                                              args.frames, args.threads, args.execution_precision)
    record["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(record))
    print(markdown(record))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
