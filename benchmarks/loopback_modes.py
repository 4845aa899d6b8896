"""serve_bench's latency rows frame by frame, each remote frame joined with the server's stage log: did
the server run it inline (serving/backbone_model.py runs_inline) or file it for its worker, and where
did its time go, per position in serve_bench's rotating order.

    python benchmarks/loopback_modes.py --rounds 4 [--model-file OTHER_backbone_model.py] [--json OUT]

serve_bench interleaves three configurations in a rotating order (``sni``: shared memory, no shared
memory, in-process; then ``nis``, ``isn``); the two remote ones are two clients of one server, so the
server's inline rule sees two clients alternate. ``--model-file`` serves another version of the model
file (e.g. ``git show main:edge_thyroid/serving/backbone_model.py > /tmp/main_model.py``) for an A/B;
it must write the stage log's ``client``/``inline`` fields.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from edge_thyroid.engine import Engine  # noqa: E402
from edge_thyroid.serving.backbone_model import STAGE_LOG  # noqa: E402
from serve_bench import DEMO_BUNDLE, Config, frames_and_panes, interleaved, serve  # noqa: E402

STAGES = ["execute", "taken", "run_start", "run_end", "sending", "answered"]


def measure(rounds: int, log: Path, model_file: Path | None) -> tuple[list[dict], dict[str, str]]:
    """Per-frame rows {name, ms, order} of serve_bench's latency loop; the remote engines' client names."""
    frames, panes = frames_and_panes(12, (1920, 1080))
    os.environ[STAGE_LOG] = str(log)  # the server (and its Python stub) inherits it
    copy = shutil.copyfile
    if model_file is not None:  # the repository writer copies backbone_model.py: hand it the other file
        shutil.copyfile = lambda src, dst, *a, **k: copy(model_file if Path(src).name == "backbone_model.py" else src,
                                                          dst, *a, **k)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            server = serve(DEMO_BUNDLE, Path(scratch), Config("latency", "fair", "latency", True), 2, 8)[0]
            try:
                url = server.grpc_url
                engines = {"in-process": Engine(DEMO_BUNDLE), "shm": Engine(DEMO_BUNDLE, backend="triton", server=url),
                           "no-shm": Engine(DEMO_BUNDLE, backend="triton", server=url, shared_memory=False)}
                clients = {name: e.backend.client_id for name, e in engines.items() if name != "in-process"}
                try:
                    rows = interleaved(engines, frames, panes, rounds)
                finally:
                    for engine in engines.values():
                        engine.close()
            finally:
                server.cleanup()
    finally:
        shutil.copyfile = copy
        del os.environ[STAGE_LOG]
    return rows, clients


def join(rows: list[dict], clients: dict[str, str], log: Path) -> None:
    """Each remote row gets its server stamps (the client's requests in order, its warm-up first)."""
    records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    for name, client in clients.items():
        mine = [r for r in records if r.get("client") == client][1:]
        measured = [row for row in rows if row["name"] == name]
        if len(mine) != len(measured) or any("client" not in r for r in records):
            raise SystemExit(f"the stage log has {len(mine)} passes of {name}'s client for {len(measured)} frames; "
                             "expected one each (does the model file log client and inline?)")
        for row, record in zip(measured, mine):
            row["inline"], row["server"] = bool(record.get("inline")), record


def summary(rows: list[dict]) -> dict:
    local = statistics.median(r["ms"] for r in rows if r["name"] == "in-process")
    out: dict = {"in_process_p50_ms": round(local, 2), "remote": {}}
    for name in ("shm", "no-shm"):
        mine = [r for r in rows if r["name"] == name]
        groups = []
        for order in sorted({r["order"] for r in mine}):
            for inline in (True, False):
                group = [r for r in mine if r["order"] == order and r["inline"] == inline]
                if group:
                    stages = {f"{a}>{b}": round(statistics.median(1000.0 * (r["server"][b] - r["server"][a]) for r in group), 2)
                              for a, b in zip(STAGES, STAGES[1:])}
                    groups.append({"order": order, "inline": inline, "frames": len(group),
                                   "p50_ms": round(statistics.median(r["ms"] for r in group), 2), "server": stages})
        p50 = statistics.median(r["ms"] for r in mine)
        out["remote"][name] = {"p50_ms": round(p50, 2), "overhead_p50_ms": round(p50 - local, 2),
                               "inline": sum(r["inline"] for r in mine), "frames": len(mine),
                               "sequence": "".join("I" if r["inline"] else "f" for r in mine), "groups": groups}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds over 12 frames (serve_bench's default: 2)")
    parser.add_argument("--model-file", type=Path, default=None, help="serve this model file instead of this tree's")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.rounds < 1 or (args.model_file is not None and not args.model_file.is_file()):
        parser.error(f"--rounds {args.rounds}, --model-file {args.model_file}: expected rounds >= 1 and an existing file")
    with tempfile.TemporaryDirectory(prefix="edge_thyroid_modes_") as scratch:
        log = Path(scratch) / "stages.jsonl"
        rows, clients = measure(args.rounds, log, args.model_file)
        join(rows, clients, log)
    result = {"load_average": round(os.getloadavg()[0], 2), "model_file": str(args.model_file or "this tree's"),
              **summary(rows)}
    print(f"in-process p50 {result['in_process_p50_ms']:.2f} ms (load {result['load_average']})")
    for name, r in result["remote"].items():
        print(f"{name}: p50 {r['p50_ms']:.2f} ms, overhead {r['overhead_p50_ms']:+.2f}, inline {r['inline']}/{r['frames']} "
              f"{r['sequence']}")
        for g in r["groups"]:
            print(f"   order {g['order']} {'inline' if g['inline'] else 'filed '} {g['frames']:3d} frames p50 "
                  f"{g['p50_ms']:6.2f} ms  server " + " ".join(f"{k} {v:.2f}" for k, v in g["server"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
