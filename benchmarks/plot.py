"""Re-draw the latency histogram + CDF of a bench record (the JSON that `edge-thyroid bench --json` wrote).

    .venv/bin/python benchmarks/plot.py benchmarks/results/bench_3pane.json [-o benchmarks/results/bench_3pane.png]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge_thyroid_bench.benchmarking import SCHEMA, plot_latency


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("record", help="bench JSON record")
    parser.add_argument("-o", "--out", default=None, help="PNG to write (default: the record's name with .png)")
    args = parser.parse_args(argv)
    path = Path(args.record)
    record = json.loads(path.read_text())
    if record.get("schema") != SCHEMA:
        print(f"error: {path} has schema {record.get('schema')!r}; expected {SCHEMA!r} (a file from edge-thyroid bench --json)",
              file=sys.stderr)
        return 2
    out = plot_latency(record, args.out or path.with_suffix(".png"))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
