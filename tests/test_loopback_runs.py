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


class _Recorder:
    """An engine stand-in that records which frame it was handed, in order."""

    def __init__(self, name: str, calls: list) -> None:
        self.name, self.calls = name, calls

    def classify(self, frame, panes) -> None:
        self.calls.append((self.name, int(frame)))


def _run_interleaved(block: int, rounds: int = 2, frames: int = 6):
    from benchmarks import serve_bench

    calls: list = []
    engines = {name: _Recorder(name, calls) for name in ("in", "shm", "req")}
    rows = serve_bench.interleaved(engines, list(range(frames)), [], rounds, block)
    return calls, rows


def test_frame_by_frame_interleave_rotates_every_frame_and_counts_every_frame():
    calls, rows = _run_interleaved(block=1)
    assert calls[:3] == [("in", 0), ("shm", 0), ("req", 0)]          # one warm-up each, not in rows
    timed = calls[3:]
    assert len(timed) == len(rows) == 2 * 6 * 3
    assert [n for n, _ in timed[:6]] == ["shm", "req", "in", "req", "in", "shm"]
    assert [f for _, f in timed[:6]] == [0, 0, 0, 1, 1, 1]
    assert not any(r["warm_up"] for r in rows)


def test_block_interleave_streams_each_engine_and_marks_only_each_blocks_first_frame():
    calls, rows = _run_interleaved(block=3)
    timed = calls[3:]
    assert len(timed) == len(rows) == 2 * 6 * 3
    # First block: frames 0-2 back to back per engine, order rotated by one; then frames 3-5, rotated again.
    assert timed[:9] == [("shm", 0), ("shm", 1), ("shm", 2), ("req", 0), ("req", 1), ("req", 2),
                         ("in", 0), ("in", 1), ("in", 2)]
    assert [n for n, _ in timed[9:18:3]] == ["req", "in", "shm"]
    assert [f for _, f in timed[9:12]] == [3, 4, 5]
    warm = [r["warm_up"] for r in rows]
    assert warm == [k % 3 == 0 for k in range(len(rows))]
    for engine in ("in", "shm", "req"):                               # 2 of 3 frames per block counted
        assert sum(1 for r in rows if r["name"] == engine and not r["warm_up"]) == 2 * 2 * 2


def test_block_must_be_positive():
    import pytest

    with pytest.raises(ValueError, match="block must be >= 1"):
        _run_interleaved(block=0)


def test_a_server_without_a_stage_log_and_two_servers_summarised_apart(tmp_path):
    """The openvino flavour's server keeps no stage log; runs of two servers get a median each."""
    assert loopback_runs.shm_client_passes(tmp_path / "absent.jsonl") == {
        "inline": None, "passes": None, "server_p50_ms": None, "filed_wait_p50_ms": None}
    runs = [{"run": run, "server": server, "in_process": "in-process (x)", "in_process_p50_ms": 5.0,
             "remote_p50_ms": 5.0 + overhead, "overhead_p50_ms": overhead, "inline": None, "passes": None,
             "server_p50_ms": None, "filed_wait_p50_ms": None, "load_average": 1.0}
            for run, server, overhead in [(1, "latency", 2.5), (1, "openvino-latency", 1.0), (2, "openvino-latency", 1.4),
                                          (2, "latency", 1.5), (3, "latency", 2.1), (3, "openvino-latency", 0.9)]]
    text = loopback_runs.markdown(runs, "cmd", "vm", "now", 1.0)
    assert "latency: median over runs **+2.10 ms** (range +1.50 to +2.50); 1 of 3 runs within" in text
    assert "openvino-latency: median over runs **+1.00 ms** (range +0.90 to +1.40); 3 of 3 runs within" in text
    assert "| 2 | openvino-latency | 1.0 | in-process (x) 5.00 | 6.40 | +1.40 | - | - | - |" in text
