"""The loopback overhead goal over several back-to-back serve_bench runs (each starts its own server),
with how many of the shared-memory client's frames the server ran inline (serving/backbone_model.py
runs_inline) in each run, read from the server's stage log (EDGE_THYROID_STAGE_LOG):

    taskset -c 0,1 python benchmarks/loopback_runs.py --runs 5 \
        --markdown benchmarks/results/serving_loopback_quiet_runs2.md

A run's remote p50 is over serve_bench's 24 interleaved frames; a run whose p50 lands far from the
others is explained (or not) by its inline count. In serve_bench's latency rows the first Triton
client the process makes is the shared-memory one, so its client name ends in ":0".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHM_ROW = "triton grpc + shared memory"
STAGE_LOG = "EDGE_THYROID_STAGE_LOG"  # serving/backbone_model.py's; that file is the server's, not imported here


def shm_client_passes(stage_log: Path) -> dict:
    """The shared-memory client's latency-row passes (its warm-up included) from the server's stage log:
    how many ran inline, the server's time from execute to the answer sent, and the filed passes'
    wait between being filed and taken by the worker (p50s in ms; None when there is none)."""
    if not stage_log.is_file():  # the openvino flavour's server writes no stage log
        return {"inline": None, "passes": None, "server_p50_ms": None, "filed_wait_p50_ms": None}
    records = [json.loads(line) for line in stage_log.read_text(encoding="utf-8").splitlines()]
    mine = [r for r in records if str(r.get("client", "")).rsplit(":", 1)[-1] == "0"]
    filed = [r for r in mine if not r.get("inline")]

    def p50(values: list[float]) -> float | None:
        return round(1000.0 * statistics.median(values), 2) if values else None

    return {"inline": len(mine) - len(filed), "passes": len(mine),
            "server_p50_ms": p50([r["sending"] - r["execute"] for r in mine]),
            "filed_wait_p50_ms": p50([r["taken"] - r["read"] for r in filed])}


def one_run(scratch: Path, index: int, seconds: float, block: int = 1, rounds: int = 2,
            every_pane: bool = False, server: str = "latency") -> dict:
    record_path, log = scratch / f"run{index}.json", scratch / f"stages{index}.jsonl"
    command = [sys.executable, str(REPO / "benchmarks" / "serve_bench.py"), "--servers", server, "--clients", "1",
               "--seconds", str(seconds), "--fairness-seconds", "0", "--json", str(record_path),
               "--block", str(block), "--rounds", str(rounds)] + (["--every-pane"] if every_pane else [])
    load = os.getloadavg()[0]
    subprocess.run(command, cwd=REPO, check=True, env={**os.environ, STAGE_LOG: str(log)}, stdout=subprocess.DEVNULL)
    rows = {row["config"]: row for row in json.loads(record_path.read_text(encoding="utf-8"))["latency"]}
    in_process = next(name for name in rows if name.startswith("in-process"))
    return {"server": server, "in_process": in_process, "in_process_p50_ms": rows[in_process]["p50_ms"],
            "remote_p50_ms": rows[SHM_ROW]["p50_ms"],
            "overhead_p50_ms": rows[SHM_ROW]["overhead_p50_ms"], **shm_client_passes(log), "load_average": round(load, 2)}


def _cell(value: object, of: object = None) -> str:
    """A table cell; '-' where the server kept no stage log (the openvino flavour)."""
    if value is None:
        return "-"
    return f"{value}/{of}" if of is not None else str(value)


def markdown(runs: list[dict], command: str, machine: str, started: str, duration: float) -> str:
    lines = [f"# Loopback overhead: {len(runs)} back-to-back serve_bench runs ({started}, took {duration:.0f} s)", "",
             f"Machine: {machine}, {len(os.sched_getaffinity(0))} core(s) for this process. Command: `{command}`. Each run: `serve_bench.py --servers SERVER --clients 1 "
             "--seconds 2 --fairness-seconds 0` (its --block and --rounds as in the command) with its own server and the server's stage log on; inline = the "
             "shared-memory client's passes the server ran in execute itself (of all its latency-row passes); server = "
             "its p50 from execute to the answer sent; filed wait = p50 from filed to taken by the worker.", "",
             "| run | server | load before | in-process p50 ms | remote (gRPC + shared memory) p50 ms | overhead p50 ms "
             "| inline passes | server p50 ms | filed wait p50 ms |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['run']} | {r['server']} | {r['load_average']} | {r['in_process']} "
              f"{r['in_process_p50_ms']:.2f} | {r['remote_p50_ms']:.2f} | {r['overhead_p50_ms']:+.2f} | "
              f"{_cell(r['inline'], r['passes'])} | {_cell(r['server_p50_ms'])} | {_cell(r['filed_wait_p50_ms'])} |"
              for r in runs]
    lines.append("")
    for server in dict.fromkeys(r["server"] for r in runs):
        overheads = [r["overhead_p50_ms"] for r in runs if r["server"] == server]
        lines.append(f"{server}: median over runs **{statistics.median(overheads):+.2f} ms** (range "
                     f"{min(overheads):+.2f} to {max(overheads):+.2f}); {sum(o <= 2.0 for o in overheads)} of "
                     f"{len(overheads)} runs within the 2 ms goal.")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--settle", type=float, default=8.0, help="seconds of idle before each run")
    parser.add_argument("--seconds", type=float, default=2.0, help="serve_bench's --seconds")
    parser.add_argument("--block", type=int, default=1, help="serve_bench's --block (1: frame-by-frame interleave)")
    parser.add_argument("--rounds", type=int, default=2, help="serve_bench's --rounds")
    parser.add_argument("--every-pane", action="store_true", help="serve_bench's --every-pane (send all 3 panes)")
    parser.add_argument("--servers", default="latency",
                        help="serve_bench servers, comma-separated; each run runs each of them, in alternating "
                             "order (e.g. latency,openvino-latency)")
    parser.add_argument("--machine", default=platform.processor() or platform.machine())
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args()
    servers = args.servers.split(",")
    if args.runs < 1 or args.settle < 0 or args.seconds <= 0:
        parser.error(f"--runs {args.runs}, --settle {args.settle}, --seconds {args.seconds}: expected runs >= 1, "
                     "settle >= 0, seconds > 0")
    started, began = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), time.monotonic()
    runs = []
    with tempfile.TemporaryDirectory(prefix="edge_thyroid_loopback_") as scratch:
        turns = [(index, server) for index in range(args.runs)
                 for server in (servers if index % 2 == 0 else servers[::-1])]  # no server always first
        for index, server in turns:
            time.sleep(args.settle)
            runs.append(one_run(Path(scratch), len(runs), args.seconds, args.block, args.rounds,
                                args.every_pane, server) | {"run": index + 1})
            r = runs[-1]
            print(f"run {index + 1} {server}: {r['in_process']} {r['in_process_p50_ms']:.2f} ms, remote {r['remote_p50_ms']:.2f} ms, "
                  f"overhead {r['overhead_p50_ms']:+.2f} ms, inline {r['inline']}/{r['passes']}, server {r['server_p50_ms']} ms, "
                  f"filed wait {r['filed_wait_p50_ms']} ms", flush=True)
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    text = markdown(runs, command, args.machine, started, time.monotonic() - began)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
