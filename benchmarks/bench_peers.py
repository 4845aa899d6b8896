"""Reproduce the latency table: our engine vs PyTorch eager, plain ONNX Runtime and OpenVINO.

One command runs `edge-thyroid bench` (a fresh process per pane count), writes
benchmarks/results/bench_<P>pane.json + .png, and benchmarks/results/latency.md (the tables, the
command, the machine). Quiet the machine first: the table is only as good as the CPU is idle.

    .venv/bin/python benchmarks/bench_peers.py BUNDLE [BUNDLE...] [--panes 1,3] [--frames 200] [--warmup 10]

Anything after `--` goes to `edge-thyroid bench` unchanged (e.g. `-- --peers torch,openvino --no-cache`).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from edge_thyroid_bench.benchmarking import format_table

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundles", nargs="+", help="model bundle(s); the first one's engine is the reference")
    parser.add_argument("--panes", default="3", help="comma list of pane counts, one table each (default 3)")
    parser.add_argument("--frames", type=int, default=200, help="timed frames per configuration (default 200)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--results", default=str(RESULTS), help="output folder (default benchmarks/results)")
    parser.add_argument("--note", default="", help="a line saying under what conditions this ran (goes into latency.md)")
    parser.add_argument("--name", default="bench",
                        help="results stem: <name>_<P>pane.json/.png and, unless 'bench', <name>.md instead of latency.md")
    args = parser.parse_args(argv)

    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    sections = []
    for panes in (int(p) for p in args.panes.split(",")):
        stem = results / f"{args.name}_{panes}pane"
        command = [sys.executable, "-m", "edge_thyroid", "bench", *args.bundles, "--panes", str(panes),
                   "--frames", str(args.frames), "--warmup", str(args.warmup),
                   "--json", f"{stem}.json", "--plot", f"{stem}.png", *passthrough]
        print("+ " + shlex.join(command), file=sys.stderr)
        started = time.time()
        finished = subprocess.run(command)
        if finished.returncode != 0:
            print(f"error: edge-thyroid bench exited {finished.returncode} for --panes {panes}; "
                  f"earlier results in {results} are kept", file=sys.stderr)
            return finished.returncode
        record = json.loads(Path(f"{stem}.json").read_text())
        sections.append((panes, record, time.time() - started))

    lines = ["# Latency: our engine vs peers", ""]
    if args.note:
        lines += [f"**{args.note}**", ""]
    if "--source" in passthrough:
        what = [f"What: capture-to-result latency per frame on frames of {passthrough[passthrough.index('--source') + 1]}",
                "(decoded once, replayed from memory to every configuration), every configuration on the same",
                "frames in interleaved rounds (order reversed every other round). Medians and ratios."]
    else:
        what = ["What: capture-to-result latency per frame (synthetic 1920x1080 workstation screens, panes side by side,",
                "B-mode changing every frame, other panes every 15 frames), every configuration on the same frames in",
                "interleaved rounds (order reversed every other round). Medians and ratios; the machine is shared."]
    lines += [
        *what,
        "",
        "Reproduce: `" + shlex.join([".venv/bin/python", "benchmarks/bench_peers.py", *(argv or []),
                                     *(["--", *passthrough] if passthrough else [])]) + "`",
        "",
    ]
    for panes, record, seconds in sections:
        lines += [f"## {panes} pane{'s' if panes > 1 else ''} per frame", "", format_table(record).rstrip(), "",
                  f"Raw record: `{args.name}_{panes}pane.json`; plot: `{args.name}_{panes}pane.png` ({seconds:.0f} s run).", ""]
    markdown = results / ("latency.md" if args.name == "bench" else f"{args.name}.md")
    markdown.write_text("\n".join(lines))
    print(f"wrote {markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
