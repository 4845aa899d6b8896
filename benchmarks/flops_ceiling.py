"""The FLOP-bound floor of this CPU for a bundle's backbone.

Measures the GFLOP/s of large fp32 matmuls (NumPy's BLAS, exactly THREADS threads, in a child
process), counts the backbone's FLOPs from its ONNX graph (Conv/Gemm/MatMul, 2 x MACs), and prints
the fastest an FP32 run could possibly be per pane and per frame. Writes benchmarks/results/bench_flops.json.

    .venv/bin/python benchmarks/flops_ceiling.py BUNDLE [--threads 2] [--sizes 1024,2048,4096] [--panes 3]

Without a BUNDLE it reports ResNet50's published 4.09 GMAC at 224, scaled by (S/224)^2 for --image-size S.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from edge_thyroid_bench import benchmarking as bm

RESULTS = Path(__file__).resolve().parent / "results"
RESNET50_MACS_224 = 4.09e9


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", nargs="?", help="model bundle whose backbone FLOPs to count")
    parser.add_argument("--model", default="fp32", help="which model of the bundle (default fp32)")
    parser.add_argument("--threads", type=int, default=len(bm.allowed_cpus()), help="BLAS threads (default: usable CPUs)")
    parser.add_argument("--sizes", default="1024,2048,4096", help="matmul sizes N (N x N fp32)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--panes", type=int, default=3, help="panes per frame for the per-frame floor")
    parser.add_argument("--image-size", type=int, default=224, help="pane size without a bundle")
    parser.add_argument("--out", default=str(RESULTS / "bench_flops.json"))
    args = parser.parse_args(argv)

    pinned = bm.pin_to_cpus(args.threads)
    machine = bm.machine_info(args.threads, pinned)
    matmuls = []
    for size in (int(s) for s in args.sizes.split(",")):
        result = bm.measure_matmul_gflops(args.threads, size=size, repeats=args.repeats)
        matmuls.append(result)
        print(f"matmul {size}^2 fp32, {args.threads} threads: median {result['gflops_median']} GFLOP/s, "
              f"best {result['gflops_best']}", file=sys.stderr)
    best = max(matmuls, key=lambda m: m["gflops_median"])

    if args.bundle:
        from edge_thyroid.bundle import load_bundle
        from edge_thyroid_bench.peers import backbone_graph

        bundle = load_bundle(args.bundle)
        entry = bundle.model_entry(args.model)[1]
        flops = bm.count_flops(backbone_graph(bundle.path(entry.file)), panes=1)
        size, source = bundle.manifest.preprocessing.image_size, f"counted from {args.bundle} ({entry.file})"
    else:
        size = args.image_size
        flops = int(2 * RESNET50_MACS_224 * (size / 224) ** 2)
        source = "ResNet50 4.09 GMAC at 224, scaled by (S/224)^2"
    floor_pane = flops / (best["gflops_median"] * 1e9) * 1000.0
    record = {
        "schema": bm.SCHEMA + "/flops", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git": bm.git_state(),
        "machine": {**machine, "loadavg_end": bm.loadavg()}, "matmuls": matmuls,
        "flops_per_pane": flops, "flops_source": source, "image_size": size, "panes": args.panes,
        "floor_ms_per_pane": round(floor_pane, 3), "floor_ms_per_frame": round(floor_pane * args.panes, 3),
        "gflops_used": best["gflops_median"], "command": "python benchmarks/flops_ceiling.py " + " ".join(argv or sys.argv[1:]),
    }
    bm.write_json_atomic(args.out, record)
    print(f"{flops / 1e9:.3f} GFLOP per {size}x{size} pane ({source}); at {best['gflops_median']} GFLOP/s "
          f"(fp32 {best['size']}^2 matmul, {args.threads} threads) the FP32 floor is {floor_pane:.1f} ms per pane, "
          f"{floor_pane * args.panes:.1f} ms per {args.panes}-pane frame. Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
