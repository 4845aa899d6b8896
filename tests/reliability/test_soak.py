"""A short soak (500 frames) through the real `edge-thyroid stream`: no file descriptor or thread
leak, no record lost. Memory growth and latency drift are measured by benchmarks/soak.py (10,000+
frames), never asserted here."""

from __future__ import annotations

import importlib.util
import statistics
import sys

from ..conftest import needs_torch
from .helpers import REPO

pytestmark = needs_torch


def load_soak_module():
    spec = importlib.util.spec_from_file_location("edge_thyroid_soak", REPO / "benchmarks" / "soak.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def test_short_soak_leaks_no_descriptors_or_threads_and_loses_nothing(random_bundle, tmp_path):
    soak = load_soak_module()
    report = soak.soak(random_bundle, 500, warmup=100, interval=0.1, workdir=tmp_path, timeout=600)
    assert report.exit_code == 0, report.summary
    assert report.frames == 500 and report.lost == 0
    steady = [s for s in report.samples if 100 <= s.frames < 500]
    assert len(steady) >= 5, "too few samples to judge"
    # A leak of one descriptor or thread per frame (or per pane cache miss) would add hundreds by the
    # end; short-lived worker threads come and go, so compare the typical counts of both ends.
    fifth = max(1, len(steady) // 5)
    for what in ("fds", "threads"):
        series = [getattr(s, what) for s in steady]
        start, end = statistics.median(series[:fifth]), statistics.median(series[-fifth:])
        assert end - start <= 1, (what, series)
    assert report.latency_warmup_ms["n"] == 100 and report.latency_first_1000_ms["n"] == 400
    assert report.latency_last_1000_ms["n"] == 500
