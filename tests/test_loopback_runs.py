"""benchmarks/loopback_runs.py's reading of the server's stage log: only the shared-memory latency client
(the first Triton client a serve_bench process makes, ":0"), inline vs filed, and the stage medians."""

from __future__ import annotations

import json

from benchmarks import loopback_runs


def _record(client: str, execute: float, *, inline: bool, wait: float = 0.0, server: float = 0.010) -> dict:
    read = execute + 0.0001
    record = {"id": "0", "client": client, "execute": execute, "read": read, "taken": read + wait,
              "run_start": read + wait, "run_end": execute + server - 0.0001, "sending": execute + server,
              "answered": execute + server + 0.001, "panes": 3}
    if inline:
        record["inline"] = True
    return record


def test_only_the_shared_memory_clients_passes_are_counted(tmp_path):
    log = tmp_path / "stages.jsonl"
    records = [_record("vm:7:0", 1.0, inline=True, server=0.008),
               _record("vm:7:0", 2.0, inline=False, wait=0.003, server=0.012),
               _record("vm:7:0", 3.0, inline=True, server=0.009),
               _record("vm:7:1", 4.0, inline=False, wait=0.5, server=0.5),   # the other latency client
               _record("vm:7:10", 5.0, inline=False, wait=0.5, server=0.5)]  # a throughput client, not ":0"
    log.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    passes = loopback_runs.shm_client_passes(log)
    assert (passes["inline"], passes["passes"]) == (2, 3)
    assert abs(passes["server_p50_ms"] - 9.0) < 1e-6  # median of 8, 12, 9 ms
    assert abs(passes["filed_wait_p50_ms"] - 3.0) < 1e-6


def test_a_run_with_every_pass_inline_has_no_filed_wait(tmp_path):
    log = tmp_path / "stages.jsonl"
    log.write_text(json.dumps(_record("host:1:0", 1.0, inline=True)) + "\n", encoding="utf-8")
    passes = loopback_runs.shm_client_passes(log)
    assert (passes["inline"], passes["passes"], passes["filed_wait_p50_ms"]) == (1, 1, None)
