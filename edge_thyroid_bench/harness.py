"""The harness behind ``edge-thyroid bench``: load every configuration (our engine on each backend,
with and without pane caching, and the peers), interleave them over the same frames, and build the
JSON record (latency distributions, stages, cold start, FLOP floor, validation AUC).

The command line (edge_thyroid/commands/bench.py) only parses options into :class:`BenchOptions`
and calls :func:`run_bench`; this package is outside the runtime's import graph.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from edge_thyroid.autoselect import AUTO
from edge_thyroid.backends import backend_class
from edge_thyroid.backends.base import EXECUTION_PRECISION
from edge_thyroid.bundle import Precision, Target, load_bundle
from edge_thyroid.errors import EdgeThyroidError, InputError
from edge_thyroid.graph import backbone_graph
from edge_thyroid.layout import load_layout, preset

from . import benchmarking as bm
from .peers import (PEER_KINDS, ConfigSpec, Kind, cold_start, make_runner, missing_peer_error, parse_peers,
                    peer_installed, write_backbone, write_reconstruction)

# Which modalities a screen with N panes shows (dual view = B-mode + elastography).
PANE_PREFERENCE = ("bmode", "swe", "smi")


@dataclass
class BenchOptions:
    bundles: list[str]
    models: list[str] = field(default_factory=list)
    panes: int = 3
    frames: int = 60
    warmup: int = 5
    rounds: int | None = None
    source: str | None = None
    layout: str | None = None          # with source: the panes (default: the source's own, else the whole frame)
    fps: float | None = None
    policy: str = "queue"
    peers: str | None = None           # None: every installed peer; "" / "none": no peers
    threads: int | None = None
    pin: bool = True
    cache: bool = True
    cold_start: bool = True
    flops: bool = True
    refresh: int = 15
    frame_size: tuple[int, int] = (1920, 1080)
    settle: float = 0.05
    progress: bool = True
    command: str | None = None         # the command line that reproduces this run
    backends: list[str] = field(default_factory=list)  # our engine's runtimes, one row set each (none: the default)
    backend_options: dict[str, str] = field(default_factory=dict)  # e.g. execution_precision, for backends taking it
    every_pane: bool = False           # also a row of our engine running the panes its model does not read


@dataclass
class _Config:
    spec: Any                      # peers.ConfigSpec
    bundle: Any                    # bundle.Bundle
    runner: Any = None
    reason: str | None = None      # why it did not run
    frames: list = field(default_factory=list)
    block_walls: list[float] = field(default_factory=list)
    block_p50: list[float] = field(default_factory=list)
    dropped: int = 0
    format: str = ""
    size_bytes: int = 0
    details: dict = field(default_factory=dict)


def pick_modalities(modalities: tuple[str, ...], panes: int) -> tuple[str, ...]:
    if panes > len(modalities):
        raise InputError(f"--panes {panes} asks for more panes than the bundle has modalities {list(modalities)}; "
                         f"expected 1 to {len(modalities)}")
    chosen = [m for m in PANE_PREFERENCE if m in modalities][:panes]
    chosen += [m for m in modalities if m not in chosen][:panes - len(chosen)]
    return tuple(m for m in modalities if m in chosen)


def _build_configs(options: BenchOptions, bundles: list, modalities: tuple[str, ...], threads: int,
                   scratch: Path) -> list[_Config]:
    explicit = options.peers is not None
    peer_kinds = parse_peers(options.peers) if explicit else list(PEER_KINDS)
    if explicit:
        for kind in peer_kinds:
            if not peer_installed(kind):
                raise missing_peer_error(kind)
    configs: list[_Config] = []
    seen_models: set[tuple[str, str]] = set()
    for number, bundle in enumerate(bundles):
        label = bundle.root.name if len(bundles) > 1 else ""
        available = [k for k, e in bundle.manifest.models.items() if e.target is Target.ONNXRUNTIME]
        keys = list(dict.fromkeys(options.models)) if options.models else _default_models(available)
        for key in keys:
            bundle.model_entry(key)  # a clear error for a model the bundle lacks
        if bundle.manifest.branched and peer_kinds:
            # The peers (torch eager, plain ORT, OpenVINO on the cut graph) each load one backbone file.
            raise InputError(f"{bundle.root} has a backbone per modality; the peers {[k.value for k in peer_kinds]} "
                             "measure one shared backbone: bench it with --peers none (engine rows only)")
        for key in keys:
            for backend in options.backends or [AUTO]:  # what stream/classify run without flags
                takes = {EXECUTION_PRECISION} if backend == AUTO else {o.name for o in backend_class(backend).options}
                settings = tuple((k, v) for k, v in options.backend_options.items() if k in takes)
                common = dict(bundle=str(bundle.root), model=key, modalities=modalities, threads=threads, label=label,
                              backend=backend, backend_options=settings)
                configs.append(_Config(ConfigSpec(Kind.ENGINE, **common), bundle))
                if options.cache:
                    configs.append(_Config(ConfigSpec(Kind.ENGINE, cached=True, **common), bundle))
                if options.every_pane:
                    configs.append(_Config(ConfigSpec(Kind.ENGINE, every_pane=True, **common), bundle))
        float_key, float_reason = _float_source(bundle, keys)
        for key in keys:
            entry = bundle.model_entry(key)[1]
            for kind in peer_kinds:
                # The float peers are the FP32 baselines a user starts from: one row per bundle, on its FP32
                # model, else on the FP32 reconstruction of its INT8 weights, else a row saying why not.
                if kind in FLOAT_PEERS and key != float_key:
                    continue
                reconstruct = kind in FLOAT_PEERS and entry.precision is not Precision.FP32 and float_reason is None
                digest = bundle.manifest.files.get(entry.file, f"{bundle.root}/{entry.file}")
                # The same model file in two bundles is one peer row, not two.
                if (kind.value, digest) in seen_models:
                    continue
                seen_models.add((kind.value, digest))
                stem = f"bundle{number}_{key}" + ("_fp32_reconstruction" if reconstruct else "")
                backbone = str(scratch / f"{stem}_backbone.onnx") if kind in (Kind.ORT_PLAIN, Kind.OPENVINO) else None
                spec = ConfigSpec(kind, str(bundle.root), key, modalities, threads, backbone_onnx=backbone, label=label,
                                  reconstruction=str(scratch / f"{stem}.onnx") if reconstruct else None)
                config = _Config(spec, bundle)
                if not peer_installed(kind):
                    config.reason = str(missing_peer_error(kind))
                elif kind in FLOAT_PEERS and float_reason is not None:
                    config.reason = float_reason
                configs.append(config)
    _prepare_models(configs)
    return configs


FLOAT_PEERS = (Kind.TORCH, Kind.ORT_PLAIN)


def _float_source(bundle: Any, keys: list[str]) -> tuple[str, str | None]:
    """The model the float peers run: an FP32 one among ``keys``, else an INT8 one to reconstruct in FP32;
    with neither, the reason the float peers cannot run."""
    precisions = {key: bundle.model_entry(key)[1].precision for key in keys}
    for wanted in (Precision.FP32, Precision.INT8):
        for key, precision in precisions.items():
            if precision is wanted:
                return key, None
    return keys[0], (f"needs an FP32 model or INT8 weights to reconstruct one from; the benched models are "
                     f"{', '.join(f'{k} ({p.value})' for k, p in precisions.items())}")


def _prepare_models(configs: list[_Config]) -> None:
    """Write the FP32 reconstructions and backbone-only graphs the peers run; a peer whose model cannot
    be prepared gets the reason as its row."""
    prepared: dict[str, str | None] = {}  # path -> error
    for config in configs:
        spec = config.spec
        if config.reason is not None:
            continue
        source = config.bundle.path(config.bundle.model_entry(spec.model)[1].file)
        for path, write in ((spec.reconstruction, lambda p: write_reconstruction(config.bundle, spec.model, Path(p))),
                            (spec.backbone_onnx, lambda p: write_backbone(spec.reconstruction or source, Path(p)))):
            if path is None or config.reason is not None:
                continue
            if path not in prepared:
                try:
                    write(path)
                    prepared[path] = None
                except EdgeThyroidError as exc:
                    prepared[path] = str(exc)
            config.reason = prepared[path]


def _default_models(available: list[str]) -> list[str]:
    preferred = [k for k in ("int8", "fp32") if k in available]
    return preferred or available[:1]


def _reference(configs: list[_Config], options: BenchOptions) -> _Config:
    ours = [c for c in configs if c.spec.kind is Kind.ENGINE and not c.spec.cached and not c.spec.every_pane
            and c.reason is None]
    return ours[0]


def run_bench(options: BenchOptions) -> dict[str, Any]:
    """Load every configuration, interleave them over the same frames, return the JSON record."""
    if options.peers is not None:
        parse_peers(options.peers)  # an unknown peer fails before any bundle is loaded
    if options.frames < 1:
        raise InputError(f"--frames {options.frames}: expected at least 1")
    if options.fps is not None and options.fps <= 0:
        raise InputError(f"--fps {options.fps}: expected a positive frame rate")
    if options.layout is not None and options.source is None:
        raise InputError("--layout describes the panes of a --source; synthetic screens use --panes")
    policy = bm.DropPolicy(options.policy)
    threads = options.threads or len(bm.allowed_cpus())
    if threads < 1:
        raise InputError(f"--threads {threads}: expected at least 1")
    affinity = bm.allowed_cpus()
    pinned = bm.pin_to_cpus(threads) if options.pin else None
    try:
        return _run_pinned(options, threads, pinned, policy)
    finally:
        if pinned is not None:
            bm.set_affinity(affinity)


def _run_pinned(options: BenchOptions, threads: int, pinned: list[int] | None, policy: Any) -> dict[str, Any]:
    machine = bm.machine_info(threads, pinned)
    started = time.time()
    bundles = [load_bundle(path) for path in options.bundles]
    rounds = options.rounds or min(options.frames, 10)
    blocks = bm.split_blocks(options.frames, rounds)
    if options.source is not None:
        screens = bm.record_source(options.source, options.warmup + options.frames + 1)
        modalities, rois = _source_panes(screens, options.layout)
    else:
        modalities = pick_modalities(bundles[0].manifest.modalities, options.panes)
        width, height = options.frame_size
        rois = bm.side_by_side_rois(len(modalities), width, height)
        screens = bm.SyntheticScreens(rois, width, height, refresh=options.refresh)
    for bundle in bundles:
        missing = [m for m in modalities if m not in bundle.manifest.modalities]
        if missing:
            raise InputError(f"bundle {bundle.root} has no {missing} modality; every bundle must have {list(modalities)}")
    interval = 1.0 / options.fps if options.fps else None
    progress = tqdm(total=0, desc="bench", unit="frame", file=sys.stderr, disable=not options.progress, leave=False)

    with tempfile.TemporaryDirectory(prefix="edge_thyroid_bench_") as scratch_dir:
        scratch = Path(scratch_dir)
        configs = _build_configs(options, bundles, modalities, threads, scratch)
        for config in configs:
            if config.reason:
                continue
            progress.set_postfix_str(f"loading {config.spec.name}")
            try:
                runner = make_runner(config.spec, config.bundle)
                runner.load()
            except Exception as exc:  # a peer that cannot load is reported, not fatal
                if config.spec.kind is Kind.ENGINE and not config.spec.cached and not config.spec.every_pane:
                    raise
                config.reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}" if str(exc) else type(exc).__name__
                continue
            config.runner = runner
            config.format, config.size_bytes, config.details = runner.format, runner.size_bytes(), runner.details
        active = [c for c in configs if c.runner is not None]
        reference = _reference(configs, options)
        progress.total = len(active) * (options.warmup + options.frames + len(blocks))
        progress.refresh()
        first = screens.frame(0)
        for config in active:
            progress.set_postfix_str(f"warm-up {config.spec.name}")
            for index in range(options.warmup):
                config.runner.process(first if index == 0 else screens.frame(index), rois, bm.StageTimer())
                progress.update(1)
        matmul_before = bm.measure_matmul_gflops(threads) if options.flops else None
        interrupted = False
        try:
            _interleave(active, blocks, screens, rois, interval, policy, options.settle, progress)
        except KeyboardInterrupt:
            # Keep what was measured: the record says it was cut short.
            interrupted = True
            if not reference.frames:
                raise
        for config in active:
            config.runner.close()
            config.runner = None
        progress.close()
        load_end = bm.loadavg()

        cold: dict[str, Any] = {}
        if options.cold_start and not interrupted:
            frame_path = scratch / "frame0.npy"
            np.save(frame_path, first)
            for config in tqdm(active, desc="cold start", file=sys.stderr, disable=not options.progress, leave=False):
                cold[config.spec.name] = cold_start(config.spec, frame_path, rois)

        flops = None
        if options.flops and not interrupted:
            flops = _flops(bundles[0], reference, threads, len(modalities), matmul_before)

    record = _record(options, machine, configs, reference, cold, flops, rois, modalities, threads, started, load_end,
                     rounds=len(blocks), interval=interval, policy=policy)
    record["interrupted"] = interrupted
    if isinstance(screens, bm.RecordedFrames):
        record["settings"]["source"] = {
            "spec": options.source, "description": screens.description, "frames_recorded": len(screens.frames),
            "frame_size": list(screens.frames[0].shape[1::-1]),
            "decode_ms": bm.Summary.of(screens.decode_ms).to_dict(),
            "note": "decoded once, replayed from memory to every configuration (decode is timed here, not per row)"}
    return record


def _source_panes(screens: Any, layout_spec: str | None) -> tuple[tuple[str, ...], Any]:
    """Modalities and ROIs of a recorded source: --layout, else the source's own, else the whole frame."""
    layout = load_layout(layout_spec) if layout_spec else (screens.layout_hint or preset("full"))
    height, width = screens.frames[0].shape[:2]
    panes = layout.resolve(width, height).engine_panes()
    return tuple(p.modality for p in panes), np.array([p.roi for p in panes], dtype=np.int64)


def _interleave(active: list[_Config], blocks: list[range], screens: Any, rois: Any, interval: float | None,
                policy: Any, settle: float, progress: Any) -> None:
    """Every configuration runs every block; the order reverses every other round."""
    by_name = {c.spec.name: c for c in active}
    for block, order in zip(blocks, bm.interleaved_order([c.spec.name for c in active], len(blocks))):
        before = max(0, block.start - 1)
        frames = {i: screens.frame(i) for i in [before, *block]}
        for name in order:
            config = by_name[name]
            progress.set_postfix_str(name)
            # One untimed frame first: the first frame after another runtime ran pays for its caches.
            config.runner.process(frames[before], rois, bm.StageTimer())
            progress.update(1)
            run = bm.run_frames(lambda i, timer, r=config.runner: r.process(frames[i], rois, timer),
                                list(block), interval=interval, policy=policy)
            config.frames.extend(run.frames)
            config.block_walls.append(run.wall)
            config.block_p50.append(bm.percentile([f.latency for f in run.frames], 50))
            config.dropped += run.dropped
            progress.update(len(block))
            time.sleep(settle)


def _flops(bundle: Any, reference: _Config, threads: int, panes: int,
           matmul_before: dict[str, Any] | None) -> dict[str, Any]:
    fp32 = "fp32" if "fp32" in bundle.manifest.models else reference.spec.model
    entry = bundle.model_entry(fp32)[1]
    # A bundle with a backbone per modality: the mean over its branches (each pane runs one of them).
    per_file = {name: bm.count_flops(backbone_graph(bundle.path(name)), panes=1) for name in entry.files}
    flops_per_pane = round(sum(per_file.values()) / len(per_file))
    after = bm.measure_matmul_gflops(threads)
    probes = [p for p in (matmul_before, after) if p]
    # The machine drifts: the rate is the mean of the probes taken before and after the timed rounds.
    matmul = {**after, "gflops_median": round(sum(p["gflops_median"] for p in probes) / len(probes), 2),
              "gflops_best": max(p["gflops_best"] for p in probes), "probes": probes}
    floor_ms = panes * flops_per_pane / (matmul["gflops_median"] * 1e9) * 1000.0
    return {"model": fp32, "flops_per_pane": flops_per_pane, "gflop_per_pane": round(flops_per_pane / 1e9, 3),
            "matmul": matmul, "floor_ms_per_frame": round(floor_ms, 3), "panes": panes,
            **({"flops_per_branch_file": per_file} if entry.branches else {}),
            "note": "FP32 floor: conv/matmul FLOPs at the median GFLOP/s of fp32 matmuls on the same threads, "
                    "probed before and after the timed rounds"}


def _auc(bundle: Any, model_key: str) -> float | None:
    """Validation AUC of this model of the bundle, from the manifest; None when not recorded.

    Preference: the accuracy gate's figure for this model (measured through the engine on the
    validation split), then a per-model metric, then (FP32) the training run's validation AUC.
    """
    entry = bundle.model_entry(model_key)[1]
    metrics = bundle.manifest.metrics

    def number(container: Any, *path: str) -> float | None:
        for step in path:
            container = container.get(step) if isinstance(container, dict) else None
        return float(container) if isinstance(container, (int, float)) and not isinstance(container, bool) else None

    found = (number(metrics, f"gate_{model_key}", "candidate", "auc") or number(metrics, f"gate_{model_key}", "auc")
             or number(entry.details, "gate", "auc") or number(entry.details, "metrics", "auc")
             or number(entry.details, "metrics", "val_auc"))
    if found is None and entry.precision.value == "fp32":
        gates = [v for k, v in metrics.items() if k.startswith("gate_") and isinstance(v, dict)]
        found = next((number(g, "reference", "auc") for g in gates
                      if isinstance(g.get("reference"), dict)
                      and str(g["reference"].get("model", model_key)).split(" ")[0] == model_key), None)
        found = found if found is not None else number(metrics, "val_auc")
    return found


def _record(options: BenchOptions, machine: dict, configs: list[_Config], reference: _Config, cold: dict,
            flops: dict | None, rois: Any, modalities: tuple[str, ...], threads: int, started: float,
            load_end: list[float], *, rounds: int, interval: float | None, policy: Any) -> dict[str, Any]:
    ref_values = {f.index: f.value for f in reference.frames}
    rows = []
    for config in configs:
        spec = config.spec
        row: dict[str, Any] = {
            "name": spec.name, "kind": spec.kind.value, "bundle": spec.bundle, "model": spec.model,
            "cached": spec.cached, "precision": spec.precision(config.bundle),
            "auc": _auc(config.bundle, spec.model), "available": not config.reason and bool(config.frames),
            "reason": config.reason,
        }
        if config.frames:
            latency = bm.milliseconds(f.latency for f in config.frames)
            stages = sorted({s for f in config.frames for s in f.stages}, key=list(bm.Stage).index)
            wall = sum(config.block_walls)
            deltas = [abs(f.value - ref_values[f.index]) for f in config.frames
                      if f.value is not None and ref_values.get(f.index) is not None]
            row.update({
                "format": config.format, "size_mb": round(config.size_bytes / 1e6, 2),
                "latency_ms": bm.Summary.of(latency).to_dict(),
                "stages_ms": {s.value: bm.Summary.of(bm.milliseconds(f.stages.get(s, 0.0) for f in config.frames)).to_dict()
                              for s in stages},
                "throughput_fps": round(len(config.frames) / wall, 3) if wall > 0 else None,
                "frames": len(config.frames), "dropped": config.dropped,
                "ratio_vs_reference": round(bm.median_of_ratios(config.block_p50, reference.block_p50), 4),
                "p50_ratio_vs_reference": round(bm.percentile(latency, 50) / bm.percentile(
                    bm.milliseconds(f.latency for f in reference.frames), 50), 4),
                "ratio_vs_flop_floor": (round(bm.percentile(latency, 50) / flops["floor_ms_per_frame"], 3)
                                        if flops else None),
                "max_abs_dp_vs_reference": round(max(deltas), 6) if deltas else None,
                "block_p50_ms": [round(v * 1000.0, 4) for v in config.block_p50],
                "samples_ms": [round(v, 4) for v in latency],
                "details": config.details,
            })
            start = cold.get(spec.name)
            if start is not None:
                row.update({"cold_start_s": start.seconds, "peak_rss_mb": start.peak_rss_mb,
                            "cold_start_phases_s": start.phases, "cold_start_error": start.error})
        rows.append(row)
    machine = {**machine, "loadavg_end": load_end,
               "versions": bm.package_versions(["onnxruntime", "onnx", "openvino", "torch", "torchvision", "cv2"])}
    return {
        "schema": bm.SCHEMA,
        "created_unix": round(started, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "git": bm.git_state(),
        "command": options.command,
        "machine": machine,
        "settings": {
            "panes": len(modalities), "modalities": list(modalities), "rois": rois.tolist(),
            "frame_size": list(options.frame_size), "frames": options.frames, "warmup": options.warmup,
            "rounds": rounds, "order": "interleaved, reversed every other round; 1 untimed frame per block",
            "pacing": {"fps": options.fps, "interval_s": interval, "policy": policy.value} if interval
            else {"fps": None, "mode": "closed loop (next frame captured when the previous result exists)"},
            "source": options.source or "synthetic screens",
            "refresh_frames": options.refresh, "threads": threads, "pinned": options.pin,
        },
        "reference": reference.spec.name,
        "flops": flops,
        "configs": rows,
        "seconds": round(time.time() - started, 1),
    }
