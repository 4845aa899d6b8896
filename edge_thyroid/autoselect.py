"""``--backend auto``: run a bundle's model on the fastest installed configuration whose accuracy gate
passed, as measured on this machine.

Which runtime is fastest depends on the CPU (on one AVX-512 VNNI machine OpenVINO took 0.65x ONNX
Runtime's time per 3-pane frame, on another they were level), so the choice is measured, not guessed:
the first time a bundle's model meets a CPU model, every gated configuration runs a short interleaved
trial on a synthetic 3-pane 1080p frame, and the fastest by median wins. The decision and its figures
are cached under the user cache directory, keyed by CPU model, backend versions, the model file's
sha256, the candidates and the settings, so later starts pay nothing; ``--retune`` measures again.

A trial is only as good as the machine was quiet: on a 2-core VM a trial taken while a training job held
one core picked ONNX Runtime, which was slower than OpenVINO once the machine was quiet, and the cache
kept that choice. So the trial records how busy the CPUs were with *other* work while it ran
(:class:`LoadMonitor`: the machine's busy time from ``/proc/stat`` minus this process's own CPU time,
as a share of the machine's capacity). A decision taken with more than :data:`LOADED` of the machine
busy elsewhere is cached as provisional: a later start looks at the machine for a moment and measures
again once it is clearly quieter than during that trial, so a trial under load cannot lock in a slower
backend for good. A quiet trial's decision stays until ``--retune``.

A configuration is a candidate only when its backend is installed and the bundle records a passing
gate for it (see :mod:`edge_thyroid.gates`); ONNX Runtime running an FP32 model is the reference itself
and needs none. A bundle with no gated configuration runs on the runtime it was exported for, and the
choice says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .cpuinfo import cpu_model
from .errors import BackendError, EdgeThyroidError
from .gates import Configuration, recorded_gates

AUTO = "auto"   # the --backend value; never a registered backend's name
CACHE_ENV = "EDGE_THYROID_CACHE_DIR"
# 2: decisions carry the other work's share of the CPUs during their trial; version-1 decisions lack it,
# so they are measured once more rather than trusted blindly.
CACHE_VERSION = 2
LOADED = 0.25        # other work's share of the CPUs above which a trial's decision is provisional
QUIETER_BY = 0.15    # a provisional decision is re-measured when the machine is now this much quieter
QUIET_PROBE_S = 0.25 # how long a start looks at the machine before trusting a provisional decision


@dataclass
class AutoChoice:
    """What ``--backend auto`` chose and why: printed at start, written into a stream's JSONL header."""

    backend: str
    execution_precision: str | None
    how: str                                   # measured | cached | only candidate | ungated fallback
    p50_ms: dict[str, float] = field(default_factory=dict)        # configuration -> median per frame
    excluded: dict[str, str] = field(default_factory=dict)        # configuration -> why it was not a candidate
    cpu: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    panes: int = 0
    measured_unix: float | None = None
    loadavg: list[float] | None = None         # the machine's load when the trial ran (figures are not quiet otherwise)
    cache_file: str | None = None
    # Share of the machine's CPU capacity that other processes used while the trial ran (0 quiet, 1 every
    # CPU busy elsewhere); None: not known (no /proc/stat). Above LOADED the decision is provisional.
    others_busy: float | None = None
    remeasured_because: str | None = None      # why a cached decision was measured again, if it was

    @property
    def provisional(self) -> bool:
        """Taken by a trial under load: re-measured once the machine is quieter."""
        return self.others_busy is not None and self.others_busy > LOADED

    @property
    def configuration(self) -> Configuration:
        return Configuration(self.backend, self.execution_precision)

    def to_dict(self) -> dict[str, Any]:
        return {"configuration": self.configuration.key, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AutoChoice":
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})

    def line(self) -> str:
        """One line for the start of a run: the choice, the figures behind it, where they came from."""
        chosen = self.configuration.key
        figures = ", ".join(f"{key} {ms:.1f} ms" for key, ms in sorted(self.p50_ms.items(), key=lambda kv: kv[1]))
        text = f"backend auto: {chosen}"
        if figures:
            load = f", load {self.loadavg[0]:.2f}" if self.loadavg else ""
            if self.others_busy is not None:
                load += f", other work {self.others_busy:.0%} of the CPUs"
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.measured_unix)) if self.measured_unix else "?"
            text += (f" (p50 per {self.panes}-pane frame: {figures}; {self.how} on {self.cpu or 'this CPU'}"
                     f" at {when}{load})")
        else:
            text += f" ({self.how})"
        if self.excluded:
            text += "; not candidates: " + "; ".join(f"{k} ({why})" for k, why in sorted(self.excluded.items()))
        if self.remeasured_because:
            text += f"; measured again: {self.remeasured_because}"
        if self.provisional:
            text += "; provisional (trial under load): measured again when the machine is quieter"
        elif self.how == "cached":
            text += "; --retune measures again"
        return text


# ---------------------------------------------------------------------------------------------
# Candidates


def gated_candidates(details: Mapping[str, Any], offered: Iterable[Configuration],
                     unavailable: Callable[[Configuration], str | None],
                     reference: Configuration | None = None) -> tuple[list[Configuration], dict[str, str]]:
    """Split ``offered`` into the configurations auto may run (installed, gate passed) and the others,
    each with the reason. ``reference``: the configuration that *is* the FP32 reference (needs no gate)."""
    gates = recorded_gates(details)
    chosen: list[Configuration] = []
    excluded: dict[str, str] = {}
    for configuration in offered:
        missing = unavailable(configuration)
        gate = gates.get(configuration.key)
        if missing:
            excluded[configuration.key] = missing
        elif configuration == reference:
            chosen.append(configuration)
        elif gate is None:
            excluded[configuration.key] = "no gate recorded (edge-thyroid verify records one)"
        elif gate.get("passed") is not True:
            excluded[configuration.key] = "gate failed"
        else:
            chosen.append(configuration)
    return chosen, excluded


# ---------------------------------------------------------------------------------------------
# The trial


FrameRunner = Callable[[], None]


def time_configurations(configurations: Sequence[Configuration],
                        open_runner: Callable[[Configuration], tuple[FrameRunner, Callable[[], None]]], *,
                        warmup: int = 3, rounds: int = 5, frames_per_round: int = 3, settle_frames: int = 1,
                        clock: Callable[[], float] = time.perf_counter) -> tuple[dict[str, float], dict[str, str]]:
    """Median milliseconds per frame of each configuration, measured in interleaved rounds (the order
    reversed every other round) so the machine's drift falls on all of them alike. The first
    ``settle_frames`` of a round run untimed: right after a switch, the previous runtime's worker
    threads still spin on the cores (ONNX Runtime's do for a while after each run), and timing that
    frame charged OpenVINO for ONNX Runtime's spinning (a quiet trial once measured OpenVINO at 10.9 ms
    against 7.5 ms run alone, and auto chose the slower runtime). ``open_runner`` returns (run one
    frame, close); a configuration that fails to open or run is returned with its error instead of a
    figure."""
    runners: dict[str, tuple[FrameRunner, Callable[[], None]]] = {}
    failed: dict[str, str] = {}
    samples: dict[str, list[float]] = {}
    try:
        for configuration in configurations:
            try:
                runner = open_runner(configuration)
                runners[configuration.key] = runner
                for _ in range(warmup):
                    runner[0]()
                samples[configuration.key] = []
            except EdgeThyroidError as exc:
                failed[configuration.key] = str(exc)
        order = [c.key for c in configurations if c.key in samples]
        for number in range(rounds):
            for key in (order if number % 2 == 0 else order[::-1]):
                if key in failed:
                    continue
                run = runners[key][0]
                try:
                    for _ in range(settle_frames):
                        run()
                    for _ in range(frames_per_round):
                        started = clock()
                        run()
                        samples[key].append(clock() - started)
                except EdgeThyroidError as exc:
                    failed[key] = str(exc)
    finally:
        for _, close in runners.values():
            close()
    figures = {key: round(statistics.median(values) * 1000.0, 3)
               for key, values in samples.items() if values and key not in failed}
    return figures, failed


# ---------------------------------------------------------------------------------------------
# The decision and its cache


def decide(candidates: Sequence[Configuration], excluded: Mapping[str, str], *, fallback: Configuration,
           key_material: Mapping[str, Any], measure: Callable[[Sequence[Configuration]], tuple[dict[str, float], dict[str, str]]],
           cache_dir: Path | None, retune: bool = False, cpu: str = "", versions: Mapping[str, str] | None = None,
           panes: int = 0, monitor: "LoadMonitor | None" = None) -> AutoChoice:
    """The fastest candidate: from the cache when it holds this exact situation (and not ``retune``),
    else measured now and cached. One candidate is taken without a trial; none runs ``fallback``.
    ``monitor`` (None: no load accounting) records the other work during the trial, and decides whether
    a provisional cached decision is measured again (see the module docstring)."""
    common = dict(excluded=dict(excluded), cpu=cpu, versions=dict(versions or {}), panes=panes)
    if not candidates:
        return AutoChoice(fallback.backend, fallback.execution_precision,
                          "ungated fallback: no configuration of this model has a passing gate; "
                          "running the runtime it was exported for", **common)
    if len(candidates) == 1:
        only = candidates[0]
        return AutoChoice(only.backend, only.execution_precision, "only candidate", **common)
    cache_file = None
    remeasured_because = None
    if cache_dir is not None:
        digest = hashlib.sha256(json.dumps({"v": CACHE_VERSION, **key_material, "candidates": sorted(c.key for c in candidates)},
                                           sort_keys=True, default=str).encode()).hexdigest()
        cache_file = cache_dir / f"{digest[:32]}.json"
        if not retune:
            cached = _read_cache(cache_file, candidates)
            if cached is not None:
                remeasured_because = stale_reason(cached, monitor)
                if remeasured_because is None:
                    cached.how = "cached"
                    cached.excluded = dict(excluded)
                    return cached
    before = monitor.snapshot() if monitor is not None else None
    figures, failed = measure(candidates)
    after = monitor.snapshot() if monitor is not None else None
    excluded = {**excluded, **{key: f"failed in the trial: {why}" for key, why in failed.items()}}
    common["excluded"] = excluded
    if not figures:
        return AutoChoice(fallback.backend, fallback.execution_precision,
                          "ungated fallback: every candidate failed its trial", **common)
    fastest = Configuration.parse(min(figures, key=figures.get))
    choice = AutoChoice(fastest.backend, fastest.execution_precision, "measured", figures, **common,
                        measured_unix=round(time.time(), 3), loadavg=_loadavg(),
                        cache_file=str(cache_file) if cache_file else None,
                        others_busy=others_busy_share(before, after), remeasured_because=remeasured_because)
    if cache_file is not None and not failed:
        _write_cache(cache_file, choice)
    return choice


def stale_reason(cached: AutoChoice, monitor: "LoadMonitor | None") -> str | None:
    """Why a cached decision must be measured again (None: use it). Only a provisional one (its trial ran
    under load) is, and only when the machine is now clearly quieter than during that trial: a machine
    that is always busy keeps its decision instead of paying a trial at every start."""
    if not cached.provisional or monitor is None:
        return None
    now = monitor.probe(QUIET_PROBE_S)
    if now is None or now > cached.others_busy - QUIETER_BY:
        return None
    return (f"its trial ran with other work on {cached.others_busy:.0%} of the CPUs, now {now:.0%}")


# ---------------------------------------------------------------------------------------------
# How busy the machine is with other work


@dataclass(frozen=True)
class CpuSnapshot:
    """Cumulative CPU seconds at one moment: the whole machine busy (steal included: a VM's host took
    them), the machine's capacity (busy + idle, all CPUs), and this process's own use."""

    busy: float
    total: float
    own: float


def others_busy_share(before: CpuSnapshot | None, after: CpuSnapshot | None) -> float | None:
    """The share of the machine's capacity that *other* processes used between two snapshots (0..1);
    None when either is unknown or no time passed."""
    if before is None or after is None:
        return None
    capacity = after.total - before.total
    if capacity <= 0:
        return None
    others = (after.busy - before.busy) - (after.own - before.own)
    return round(min(1.0, max(0.0, others / capacity)), 3)


class LoadMonitor:
    """Reads the machine's CPU accounting (``/proc/stat``) and this process's CPU time (``os.times``)."""

    def __init__(self, stat_path: str = "/proc/stat") -> None:
        self.stat_path = stat_path
        self.tick = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0

    def snapshot(self) -> CpuSnapshot | None:
        try:
            with open(self.stat_path, encoding="ascii") as handle:
                fields = handle.readline().split()
        except OSError:
            return None  # not Linux: no load accounting, decisions are then never provisional
        if len(fields) < 5 or fields[0] != "cpu":
            return None
        # user nice system idle iowait irq softirq steal (guest time is already inside user)
        values = [float(v) for v in fields[1:9]] + [0.0] * max(0, 9 - len(fields))
        idle = values[3] + values[4]
        busy = sum(values[:8]) - idle
        own = os.times()
        return CpuSnapshot(busy / self.tick, (busy + idle) / self.tick, own.user + own.system)

    def probe(self, seconds: float) -> float | None:
        """Other work's share of the CPUs over the next ``seconds`` (this process sleeps meanwhile)."""
        before = self.snapshot()
        time.sleep(seconds)
        return others_busy_share(before, self.snapshot())


def _read_cache(path: Path, candidates: Sequence[Configuration]) -> AutoChoice | None:
    try:
        choice = AutoChoice.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None  # absent or unreadable: measure again rather than fail a start
    return choice if choice.configuration in candidates else None


def _write_cache(path: Path, choice: AutoChoice) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        staging.write_text(json.dumps(choice.to_dict(), indent=2) + "\n", encoding="utf-8")
        os.replace(staging, path)
    except OSError:
        pass  # a read-only home costs a trial per start, never the start itself


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------
# This machine


def cache_dir() -> Path:
    """Where decisions are cached: $EDGE_THYROID_CACHE_DIR, else the XDG user cache directory."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edge-thyroid" / "backend-auto"


# ---------------------------------------------------------------------------------------------
# A bundle on this machine


def offered_configurations(target: str, execution_precision: str | None) -> tuple[list[Configuration], dict[str, str]]:
    """Every registered backend's configuration that can load a ``target`` model at the requested
    execution precision (None: each backend's default), and why the others cannot."""
    from .backends import available_backends, backend_class

    offered: list[Configuration] = []
    excluded: dict[str, str] = {}
    for name in available_backends():
        cls = backend_class(name)
        if target not in cls.targets:
            continue
        precisions = cls.execution_precisions()
        if precisions:
            precision = execution_precision or precisions[0]
            if precision in precisions:
                offered.append(Configuration(name, precision))
            else:
                excluded[name] = f"cannot run float parts in {precision}"
        elif execution_precision in (None, "f32"):
            offered.append(Configuration(name))  # runs the model as exported: float parts in f32
        else:
            excluded[name] = f"runs the model as exported, not in {execution_precision}"
    return offered, excluded


def trial_frame(panes: int, width: int = 1920, height: int = 1080) -> tuple[Any, list[tuple[int, int, int, int]]]:
    """A synthetic screen with ``panes`` ultrasound-sized panes side by side, and their ROIs."""
    import numpy as np

    frame = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    pane_width = width // panes
    rois = [(i * pane_width + 8, 60, pane_width - 16, height - 120) for i in range(panes)]
    return frame, rois


def select_backend(bundle: Any, engine_type: Callable[..., Any], *, model: str | None = None,
                   execution_precision: str | None = None, threads: int | None = None, retune: bool = False,
                   panes: int | None = None, cache: Path | None | bool = True) -> AutoChoice:
    """The configuration ``--backend auto`` runs ``bundle``'s model on (see the module docstring).
    ``engine_type``: the :class:`~edge_thyroid.engine.Engine` the trial runs (passed in, because the
    engine asks this module and this module must not import it back). ``cache``: True for
    :func:`cache_dir`, a directory, or False/None for no cache."""
    from .backends import backend_class, backend_for_target
    from .bundle import Precision, Target

    model_key, entry = bundle.model_entry(model)
    offered, excluded = offered_configurations(entry.target.value, execution_precision)
    reference = Configuration(Target.ONNXRUNTIME.value) if (
        entry.precision is Precision.FP32 and entry.target is Target.ONNXRUNTIME) else None
    candidates, not_gated = gated_candidates(entry.details, offered,
                                             lambda c: backend_class(c.backend).unavailable(), reference)
    if execution_precision is not None and not candidates:
        # Asked for a precision, the user must get it or be told: running another one would be a silent swap.
        named = sorted({c.backend for c in offered}) or ["BACKEND"]
        reasons = "; ".join(f"{k}: {why}" for k, why in sorted({**excluded, **not_gated}.items()))
        raise BackendError(f"--backend auto found no configuration of model {model_key!r} running float parts in "
                           f"{execution_precision} with a passing gate ({reasons}); record one with 'edge-thyroid "
                           f"verify BUNDLE --data CSV --backend {named[0]} --execution-precision {execution_precision}', "
                           f"or run it ungated with --backend {' / '.join(named)}")
    panes = panes or len(bundle.manifest.modalities)
    versions = {c.backend: backend_class(c.backend).runtime_version() for c in candidates}
    cpu = cpu_model()
    key_material = {"cpu": cpu, "cpus": os.cpu_count(), "versions": versions, "model": model_key,
                    "model_sha256": ",".join(bundle.manifest.files.get(f, f) for f in entry.files), "threads": threads,
                    "panes": panes, "execution_precision": execution_precision}
    directory = cache_dir() if cache is True else (cache or None)

    def measure(configurations: Sequence[Configuration]) -> tuple[dict[str, float], dict[str, str]]:
        frame, rois = trial_frame(panes)

        def open_runner(configuration: Configuration) -> tuple[FrameRunner, Callable[[], None]]:
            options = {"execution_precision": configuration.execution_precision} if configuration.execution_precision else {}
            engine = engine_type(bundle, backend=configuration.backend, model=model_key, threads=threads, **options)
            return (lambda: engine.extract(frame, rois)), engine.close

        return time_configurations(configurations, open_runner)

    return decide(candidates, {**excluded, **not_gated}, fallback=Configuration(backend_for_target(entry.target.value)),
                  key_material=key_material, measure=measure, cache_dir=directory, retune=retune, cpu=cpu,
                  versions=versions, panes=panes, monitor=LoadMonitor())
