"""Prints what the reliability suite did: JSONL records checked and results lost (must be 0)."""

from __future__ import annotations

from .helpers import TALLY


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if TALLY["jsonl_files"]:
        terminalreporter.write_line(
            f"reliability: {TALLY['jsonl_files']} JSONL outputs checked line by line, {TALLY['frame_records']} frame "
            f"records and {TALLY['gap_records']} gap records parsed, {TALLY['records_lost']} results lost")
