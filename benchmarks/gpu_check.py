"""One self-contained GPU check, run once on a lent H100/H200 (torch CUDA + triton there; our package
is not installed, so kernels/ and export/ are imported by path from the repo root).

    # on the GPU machine, from the repo root (< 4 min on an H100):
    PYTHONPATH=. python3 benchmarks/gpu_check.py --out "$OUT"
    # here, on the CPU: the same logic on tiny sizes, kernel in TRITON_INTERPRET=1
    .venv/bin/python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_check

What it does:
  (a) the Triton kernel against the NumPy float64 reference via kernels.check.check_kernel on seeded
      random frames/ROIs (edge-touching, 1-pixel, grayscale, odd sizes), fp32 and fp16 output, plus
      3 panes of a 1080p frame at S=128 and 224;
  (b) times it (triton.testing.do_bench median, launch included; do_bench_cudagraph median, launch
      overhead removed) for 3 panes of 1080p at S=128/224, fp16/fp32, and compares with the
      memory-bandwidth floor: the bytes it must read (distinct taps; and the 32-byte sectors they
      lie in) + write, over the device-to-device copy bandwidth measured here;
  (c) times the torch CUDA path of the ResNet50 backbone (export.models.MultimodalClassifier feature
      extractor, random weights) for 1 and 3 panes at 128/224: fp32, fp16 (.half()), fp16 +
      channels_last, the latter in a CUDA graph; plus torch-native preprocessing (F.interpolate) vs
      the kernel, and kernel + backbone in one CUDA graph;
  (d) writes everything to --out/gpu_check.json and prints a short table last.
Exit status: 0 when every correctness check passed, 1 otherwise (timings are still written).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PANES_1080P = ((20, 100, 600, 600), (660, 100, 600, 600), (1300, 100, 600, 600))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", str(REPO / "benchmarks" / "results" / "gpu")),
                        help="folder for gpu_check.json (default: $OUT, else benchmarks/results/gpu)")
    parser.add_argument("--dry-run", action="store_true",
                        help="no GPU: run the kernel in TRITON_INTERPRET=1 on CPU tensors, tiny sizes, CPU timers")
    parser.add_argument("--rep-ms", type=int, default=60, help="do_bench rep time per measurement in ms (default 60)")
    parser.add_argument("--skip-model", action="store_true", help="skip (c), the backbone timings")
    return parser.parse_args(argv)


class Bench:
    """Timing on CUDA via triton.testing (median); on the CPU (dry run) a wall-clock median."""

    def __init__(self, cuda: bool, rep_ms: int) -> None:
        self.cuda = cuda
        self.rep_ms = rep_ms

    def launch_ms(self, fn) -> float:
        if self.cuda:
            import triton.testing

            return float(triton.testing.do_bench(fn, warmup=max(10, self.rep_ms // 4), rep=self.rep_ms, return_mode="median"))
        return self._cpu(fn)

    def graph_ms(self, fn) -> float | None:
        """Launch overhead removed: fn captured in a CUDA graph and replayed (CUDA only; L2 stays warm)."""
        if not self.cuda:
            return None
        import triton.testing

        return float(triton.testing.do_bench_cudagraph(fn, rep=self.rep_ms, return_mode="median"))

    def graph_cold_ms(self, torch, fn) -> float | None:
        """Like graph_ms, but with L2 flushed before every call (a 256 MB memset captured in the same
        graph, its own time subtracted): the DRAM-bound time the bandwidth floor speaks of."""
        if not self.cuda:
            return None
        flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")

        def flushed() -> None:
            flush.zero_()
            fn()

        return max(0.0, self.graph_ms(flushed) - self.graph_ms(flush.zero_))

    @staticmethod
    def _cpu(fn, runs: int = 1) -> float:
        """The dry run checks that the code runs, not how fast: one warm-up, one timed call."""
        fn()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)


def environment(torch, triton, cuda: bool) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
           "cuda_available": cuda, "triton_interpret": os.environ.get("TRITON_INTERPRET", "")}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        env.update({"device": props.name, "sm_count": props.multi_processor_count,
                    "memory_gib": round(props.total_memory / 2**30, 1), "capability": f"{props.major}.{props.minor}",
                    "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                    "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                    "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32})
    return env


def copy_bandwidth(torch, bench: Bench, device: str) -> dict:
    """Device-to-device copy: bytes read + written per second (the memory-bandwidth yardstick)."""
    count = (256 << 20) if bench.cuda else (4 << 20)
    src = torch.empty(count, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = bench.launch_ms(lambda: dst.copy_(src))
    return {"bytes": 2 * count, "ms": ms, "gb_per_s": 2 * count / (ms * 1e-3) / 1e9}


def footprint(np, rois, size: int, elem_bytes: int, row_bytes: int) -> dict:
    """Bytes the kernel must move: the distinct frame bytes its taps read (and the 32-byte sectors
    they lie in, the DRAM access granularity), plus the output it writes."""
    from kernels.reference import bilinear_taps

    unique, sectors = 0, 0
    for x, y, w, h in rois:
        y0, y1, _ = bilinear_taps(h, size)
        x0, x1, _ = bilinear_taps(w, size)
        rows = np.unique(np.concatenate([y0, y1]) + y)
        cols = np.unique(np.concatenate([x0, x1]) + x)
        channel_bytes = (cols[:, None] * 3 + np.arange(3)[None, :]).ravel()
        unique += len(rows) * channel_bytes.size
        # Sectors are counted per row: the frame rows here are 32-byte aligned (row_bytes % 32 == 0).
        sectors += len(rows) * len(np.unique(channel_bytes // 32)) * 32 if row_bytes % 32 == 0 else len(rows) * w * 3
    written = len(rois) * 3 * size * size * elem_bytes
    return {"read_unique_bytes": unique, "read_sector_bytes": sectors, "write_bytes": written}


def check_correctness(np, torch, dry: bool, device: str) -> dict:
    from kernels.check import FLOAT32, check_kernel, kernel_cases
    from kernels.reference import PreprocessSpec, preprocess_reference
    from kernels.triton_kernel import numpy_adapter

    results: dict = {"passed": True}
    impl = numpy_adapter(device, block=64 if dry else 256)
    cases = (kernel_cases(21, count=6, max_frame=40, sizes=(8, 13, 16)) if dry
             else kernel_cases(21, count=40, max_frame=400, sizes=(8, 13, 16, 31, 64, 97, 128, 224)))
    try:
        report = check_kernel(impl, FLOAT32, name="triton", dtypes=(np.float32, np.float16), cases=cases)
        results["random_cases"] = report.to_dict()
    except AssertionError as exc:
        results["passed"] = False
        results["random_cases"] = {"failed": str(exc)}
    # The production shape: 3 panes of a 1080p frame (tiny stand-in in the dry run).
    rng = np.random.default_rng(22)
    frame = rng.integers(0, 256, size=(60, 100, 3) if dry else (1080, 1920, 3), dtype=np.uint8)
    rois = np.array([(0, 0, 33, 40), (33, 5, 30, 51), (70, 20, 30, 40)] if dry else PANES_1080P, dtype=np.int64)
    production = {}
    for size in ((16, 24) if dry else (128, 224)):
        spec = PreprocessSpec(image_size=size)
        expected = preprocess_reference(frame, rois, spec, dtype=np.float64)
        for dtype, bound in ((np.float32, FLOAT32.max_abs), (np.float16, FLOAT32.max_abs + 2.7 * 2.0**-11)):
            err = float(np.abs(impl(frame, rois, spec, dtype).astype(np.float64) - expected).max())
            production[f"S{size}_{np.dtype(dtype).name}_max_abs"] = err
            if not err <= bound:
                results["passed"] = False
                production[f"S{size}_{np.dtype(dtype).name}_failed"] = f"max |err| {err:.3g} > {bound:.3g}"
    results["production"] = production
    return results


def time_kernel(np, torch, bench: Bench, dry: bool, device: str, bandwidth: float) -> list[dict]:
    from kernels.reference import PreprocessSpec
    from kernels.triton_kernel import device_rois, launcher

    rng = np.random.default_rng(23)
    configs = []
    shape = (60, 100, 3) if dry else (1080, 1920, 3)
    rois = [(0, 0, 33, 40), (33, 5, 30, 51), (70, 20, 30, 40)] if dry else list(PANES_1080P)
    frame = torch.from_numpy(rng.integers(0, 256, size=shape, dtype=np.uint8)).to(device)
    # A bandwidth-sized case as well: 24 panes of 800x800 from a 4K frame at 224 (a batch of frames).
    big_shape = (120, 160, 3) if dry else (2160, 3840, 3)
    big_rois = ([(0, 0, 30, 30), (130, 90, 30, 30)] if dry
                else [(x, y, 800, 800) for x in range(0, 3840 - 800, 500) for y in (0, 680, 1360)][:24])
    big_frame = torch.from_numpy(rng.integers(0, 256, size=big_shape, dtype=np.uint8)).to(device)
    sizes = (16, 24) if dry else (128, 224)
    for label, frm, boxes, size_list in (("3 panes 1080p", frame, rois, sizes),
                                         (f"{len(big_rois)} panes 4K", big_frame, big_rois, (sizes[-1],))):
        roi_tensor = device_rois(np.array(boxes), frm.shape[0], frm.shape[1], device)
        for size in size_list:
            for dtype in (torch.float16, torch.float32):
                out = torch.empty((len(boxes), 3, size, size), dtype=dtype, device=device)
                launch = launcher(frm, roi_tensor, PreprocessSpec(image_size=size), out, block=64 if dry else 256)
                elem = 2 if dtype == torch.float16 else 4
                foot = footprint(np, boxes, size, elem, frm.stride(0))
                row = {"config": label, "S": size, "dtype": str(dtype).replace("torch.", ""), "panes": len(boxes),
                       "launch_ms": bench.launch_ms(launch), "graph_ms": bench.graph_ms(launch),
                       "graph_cold_ms": bench.graph_cold_ms(torch, launch), **foot}
                # Against the floor: the L2-cold kernel time without launch overhead where there is one.
                kernel_ms = next(v for v in (row["graph_cold_ms"], row["graph_ms"], row["launch_ms"]) if v is not None)
                for model in ("unique", "sector"):
                    floor_ms = (foot[f"read_{model}_bytes"] + foot["write_bytes"]) / (bandwidth * 1e9) * 1e3
                    row[f"floor_{model}_ms"] = floor_ms
                    row[f"x_floor_{model}"] = kernel_ms / floor_ms
                configs.append(row)
    return configs


def torch_preprocess(torch, frame, rois, size: int, mean, std):
    """Torch-native preprocessing for comparison: per-pane F.interpolate (bilinear, half-pixel, no antialias)."""
    import torch.nn.functional as F

    panes = []
    for x, y, w, h in rois:
        crop = frame[y : y + h, x : x + w].permute(2, 0, 1)[None].float()
        panes.append(F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=False))
    batch = torch.cat(panes).flip(1) / 255.0
    return (batch - mean) / std


def time_model(np, torch, bench: Bench, dry: bool, device: str) -> dict:
    from export.models import MultimodalClassifier
    from kernels.reference import PreprocessSpec, preprocess_reference
    from kernels.triton_kernel import device_rois, launcher

    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    model = MultimodalClassifier("resnet50").eval()

    def features(module):
        return lambda x: module.feature_maps(x)

    rows, preprocessing = [], []
    sizes = (32,) if dry else (128, 224)
    variants = [("fp32", torch.float32, False, False), ("fp16", torch.float16, False, False),
                ("fp16+channels_last", torch.float16, True, False), ("fp16+channels_last+cuda_graph", torch.float16, True, True)]
    with torch.inference_mode():
        for name, dtype, channels_last, graph in variants:
            if graph and not bench.cuda:
                rows.append({"variant": name, "skipped": "CUDA graphs need a GPU"})
                continue
            module = model.to(device=device, dtype=dtype)
            module = module.to(memory_format=torch.channels_last) if channels_last else module
            fn = features(module)
            for size in sizes:
                for batch in (1, 3):
                    x = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    try:
                        ms = bench.graph_ms(lambda: fn(x)) if graph else bench.launch_ms(lambda: fn(x))
                        rows.append({"variant": name, "S": size, "panes": batch, "ms": ms, "ms_per_pane": ms / batch})
                    except (RuntimeError, NotImplementedError) as exc:  # e.g. fp16 conv on a CPU build
                        rows.append({"variant": name, "S": size, "panes": batch, "error": str(exc).splitlines()[0][:200]})
        model.to(device=device, dtype=torch.float32, memory_format=torch.contiguous_format)

        # Preprocessing: torch-native F.interpolate vs the Triton kernel, same 3 panes; and kernel +
        # fp16 channels_last backbone in one CUDA graph (the whole GPU frame).
        rng = np.random.default_rng(24)
        shape = (60, 100, 3) if dry else (1080, 1920, 3)
        boxes = [(0, 0, 33, 40), (33, 5, 30, 51), (70, 20, 30, 40)] if dry else list(PANES_1080P)
        host_frame = rng.integers(0, 256, size=shape, dtype=np.uint8)
        frame = torch.from_numpy(host_frame).to(device)
        roi_tensor = device_rois(np.array(boxes), shape[0], shape[1], device)
        half_model = model.to(dtype=torch.float16).to(memory_format=torch.channels_last) if bench.cuda else None
        for size in ((16,) if dry else (128, 224)):
            spec = PreprocessSpec(image_size=size)
            mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
            std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)
            expected = preprocess_reference(host_frame, np.array(boxes), spec, dtype=np.float64)
            native = torch_preprocess(torch, frame, boxes, size, mean, std)
            out = torch.empty((len(boxes), 3, size, size), device=device)
            launch = launcher(frame, roi_tensor, spec, out, block=64 if dry else 256)
            row = {"S": size, "panes": len(boxes),
                   "torch_interpolate_ms": bench.launch_ms(lambda: torch_preprocess(torch, frame, boxes, size, mean, std)),
                   "torch_interpolate_max_abs": float(np.abs(native.cpu().double().numpy() - expected).max()),
                   "triton_ms": bench.launch_ms(launch)}
            if half_model is not None:
                out16 = torch.empty((len(boxes), 3, size, size), device=device, dtype=torch.float16)
                launch16 = launcher(frame, roi_tensor, spec, out16)

                def frame_step() -> None:
                    launch16()
                    half_model.feature_maps(out16.contiguous(memory_format=torch.channels_last))

                row["triton_fp16_plus_backbone_graph_ms"] = bench.graph_ms(frame_step)
            preprocessing.append(row)
    return {"backbone": rows, "preprocessing": preprocessing}


def table(results: dict) -> str:
    lines = ["", "== Triton preprocessing kernel =="]
    corr = results.get("correctness", {})
    lines.append(f"correctness vs reference: {'PASS' if corr.get('passed') else 'FAIL'}  "
                 f"{json.dumps(corr.get('production', {}))}")
    lines.append(f"copy bandwidth: {results.get('bandwidth', {}).get('gb_per_s', float('nan')):.0f} GB/s (read + write)")
    lines.append("launch: do_bench (L2 flushed, launch overhead in); graph: CUDA graph (L2 warm); cold: CUDA graph, "
                 "L2 flushed; floor: (distinct tap bytes | their 32 B sectors) + output bytes at copy bandwidth")
    lines.append(f"{'config':<16} {'S':>4} {'dtype':>8} {'launch ms':>10} {'graph ms':>9} {'cold ms':>8} "
                 f"{'floor ms':>9} {'x floor':>8} {'floor(sect)':>11} {'x floor(sect)':>13}")

    def cell(value, width: int, digits: int = 4) -> str:
        return f"{value:>{width}.{digits}f}" if value is not None else f"{'-':>{width}}"

    for r in results.get("kernel", []):
        lines.append(f"{r['config']:<16} {r['S']:>4} {r['dtype']:>8} {cell(r['launch_ms'], 10)} {cell(r.get('graph_ms'), 9)} "
                     f"{cell(r.get('graph_cold_ms'), 8)} {cell(r.get('floor_unique_ms'), 9)} {cell(r.get('x_floor_unique'), 8, 2)} "
                     f"{cell(r.get('floor_sector_ms'), 11)} {cell(r.get('x_floor_sector'), 13, 2)}")
    model = results.get("model", {})
    if model.get("backbone"):
        lines += ["", "== ResNet50 backbone (random weights), torch =="]
        for r in model["backbone"]:
            if "ms" in r:
                lines.append(f"{r['variant']:<32} S={r['S']:<4} panes={r['panes']}  {r['ms']:.3f} ms  ({r['ms_per_pane']:.3f} ms/pane)")
            else:
                lines.append(f"{r['variant']:<32} {r.get('error') or r.get('skipped')}")
        for r in model.get("preprocessing", []):
            lines.append(f"preprocess S={r['S']} 3 panes: torch F.interpolate {r['torch_interpolate_ms']:.4f} ms "
                         f"(max err {r['torch_interpolate_max_abs']:.2g}), triton {r['triton_ms']:.4f} ms"
                         + (f", triton fp16 + backbone in one graph {r['triton_fp16_plus_backbone_graph_ms']:.3f} ms"
                            if r.get("triton_fp16_plus_backbone_graph_ms") is not None else ""))
    if results.get("errors"):
        lines += ["", "errors:"] + [f"  {e.splitlines()[-1]}" for e in results["errors"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # must be set before triton is first imported
    sys.path.insert(0, str(REPO))  # kernels/ and export/ by path: the package is not installed there
    started = time.time()
    import numpy as np
    import torch
    import triton

    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        print("error: no CUDA device found; on a CPU machine run with --dry-run", file=sys.stderr)
        return 2
    device = "cuda" if cuda else "cpu"
    bench = Bench(cuda, args.rep_ms)
    results: dict = {"dry_run": args.dry_run, "environment": environment(torch, triton, cuda), "errors": []}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    steps = [("correctness", lambda: check_correctness(np, torch, args.dry_run, device)),
             ("bandwidth", lambda: copy_bandwidth(torch, bench, device)),
             ("kernel", lambda: time_kernel(np, torch, bench, args.dry_run, device,
                                            results.get("bandwidth", {}).get("gb_per_s", 1.0)))]
    if not args.skip_model:
        steps.append(("model", lambda: time_model(np, torch, bench, args.dry_run, device)))
    for name, step in steps:
        t0 = time.time()
        print(f"[gpu_check] {name} ...", file=sys.stderr, flush=True)
        try:
            results[name] = step()
        except Exception:  # keep going: one failing part must not cost the others' numbers
            results["errors"].append(f"{name}: {traceback.format_exc()}")
        results.setdefault("seconds", {})[name] = round(time.time() - t0, 1)
        (out_dir / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    results["seconds"]["total"] = round(time.time() - started, 1)
    (out_dir / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(table(results))
    print(f"\nwrote {out_dir / 'gpu_check.json'} in {results['seconds']['total']} s")
    ok = results.get("correctness", {}).get("passed", False) and not results["errors"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
