"""edge-thyroid bench: latency of our engine and its peers, interleaved on the same frames.

A thin command: it parses the options and hands them to the harness in :mod:`edge_thyroid_bench`
(outside the runtime, with its own dependencies), imported only when the command runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..errors import MissingDependencyError
from .params import make_output_folder, parse_size
from .runtime_options import BackendChoice, backend_option_decorators
from .trust_options import trust_option


def _harness() -> Any:
    """The benchmark harness package, or a one-line install hint when this install has no bench tooling."""
    try:
        import edge_thyroid_bench.harness as harness
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("edge_thyroid_bench"):
            raise
        raise MissingDependencyError("the benchmark harness (edge_thyroid_bench)", "bench",
                                     "edge-thyroid bench") from None
    return harness


def backend_options_of_rows(function: Any) -> Any:
    """The settings backends declare (e.g. --execution-precision), for our engine's rows that take them."""
    for decorator in backend_option_decorators():
        function = decorator(function)
    return function


def _row_settings(backends: list[str], given: dict[str, str | None]) -> dict[str, str]:
    """The backend settings given; each must apply to one of the chosen --backend rows."""
    from ..autoselect import AUTO
    from ..backends import backend_options
    from ..backends.base import EXECUTION_PRECISION

    declared = backend_options()
    settings = {name: value for name, value in given.items() if value is not None}
    chosen = backends or [AUTO]  # no --backend: the auto row, as the other commands run by default
    for name in settings:
        option, owners = declared[name]
        if AUTO in chosen and name == EXECUTION_PRECISION:
            continue  # the auto row chooses among the configurations gated at this precision
        if not set(owners) & set(chosen):
            raise click.UsageError(f"{option.flag} applies to our engine's {' / '.join(owners)} rows; add "
                                   f"--backend {owners[0]}")
    return settings


def _command_line(ctx: click.Context) -> str:
    """The options that differ from their defaults, as one shell line that reruns this bench."""
    import shlex

    words = ["edge-thyroid", "bench"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if isinstance(param, click.Argument):
            words += [str(v) for v in value]
        elif param.name in ("json_out", "plot_out", "quiet") or value == param.default or value in (None, ()):
            continue
        elif isinstance(param, click.Option) and param.is_bool_flag and param.secondary_opts:
            words.append(param.opts[0] if value else param.secondary_opts[0])
        elif isinstance(param, click.Option) and param.multiple:
            for item in value:
                words += [param.opts[0], str(item)]
        else:
            words += [param.opts[0], str(value)]
    return " ".join(shlex.quote(w) for w in words)


@click.command()
@click.argument("bundles", nargs=-1, required=True, type=click.Path())
@click.option("--model", "models", multiple=True, type=click.Choice(["fp32", "int8", "fp16"]),
              help="Our engine's model(s) to run; repeat for several (default: int8 and fp32, those the bundle has). "
                   "The first is the reference the ratios are against.")
@click.option("--panes", type=click.IntRange(1, 3), default=3, show_default=True,
              help="Panes per frame (1 B-mode; 2 + SWE; 3 + SMI), side by side on the screen.")
@click.option("--frames", type=click.IntRange(1), default=60, show_default=True, help="Timed frames per configuration.")
@click.option("--warmup", type=click.IntRange(0), default=5, show_default=True, help="Untimed frames per configuration first.")
@click.option("--rounds", type=click.IntRange(1), default=None, help="Interleaving rounds (default: min(frames, 10)).")
@click.option("--source", default=None,
              help="Bench on frames from a capture source (video file, DICOM cine, image folder, device, URL; "
                   "decoded once, then replayed from memory to every configuration). Default: synthetic screens.")
@click.option("--layout", default=None,
              help="With --source: the panes (a preset or a .yaml/.json layout file); default: the source's own "
                   "(DICOM ultrasound regions) or the whole frame. --panes is then not used.")
@click.option("--fps", type=float, default=None,
              help="Pace frames at this rate; latency then counts from each frame's scheduled capture time. "
                   "Default: closed loop, back to back.")
@click.option("--policy", type=click.Choice(["queue", "latest"]), default="queue", show_default=True,
              help="With --fps: queue every frame (lateness accumulates) or keep only the latest (drops counted).")
@click.option("--peers", default=None,
              help="Comma list of torch, ort-plain, openvino (or all / none). Default: every installed peer.")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="Threads for every runtime (default: the CPUs this process may use).")
@click.option("--pin/--no-pin", default=True, show_default=True, help="Pin the process to the first THREADS CPUs.")
@click.option("--cache/--no-cache", default=True, show_default=True,
              help="Also run our engine with pane caching (B-mode live, other panes refresh every --refresh frames).")
@click.option("--every-pane", is_flag=True,
              help="Also time our engine running every pane: by default panes of modalities the model does not read "
                   "(zero weights in its head, e.g. SMI and SWE for a B-mode-only model) are not run.")
@click.option("--refresh", type=click.IntRange(0), default=15, show_default=True,
              help="Non-B-mode panes change every this many frames (15 = 2 Hz at 30 fps; 0 = static).")
@click.option("--cold-start/--no-cold-start", default=True, show_default=True,
              help="Measure process start -> first result and peak RSS of each configuration in a fresh process.")
@click.option("--flops/--no-flops", default=True, show_default=True,
              help="Measure fp32 matmul GFLOP/s and show each p50 against the FLOP-bound floor.")
@click.option("--frame-size", default="1920x1080", show_default=True, help="Synthetic screen size WIDTHxHEIGHT.")
@click.option("--backend", "backends", multiple=True, type=BackendChoice(auto=True),
              help="Runtime(s) of our engine's rows; repeat for several (default: auto, what stream/demo/classify run "
                   "without flags: the fastest gated configuration on this machine). The first is the reference.")
@backend_options_of_rows
@click.option("--json", "json_out", default=None, help="Write the full record (JSON) here; '-' for stdout.")
@click.option("--plot", "plot_out", default=None, help="Write a latency histogram + CDF (PNG) here.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@trust_option
def bench(bundles, models, panes, frames, warmup, rounds, source, layout, fps, policy, peers, threads, pin, cache,
          every_pane, refresh, cold_start, flops, frame_size, backends, json_out, plot_out, quiet, **backend_settings) -> None:
    """Benchmark BUNDLE(s): our engine against PyTorch eager, plain ONNX Runtime and OpenVINO, on the
    same frames, in one run, in alternating order so the machine's drift cancels.

    \b
    Per configuration: capture-to-result latency p50/p90/p99/p99.9/max, mean, std; per-stage times
    (preprocess, infer, head+CAM; our engine preprocesses inside its graph, so inside 'infer');
    throughput; dropped frames (with --fps --policy latest); cold start and peak RSS (fresh process);
    model size; validation AUC from the bundle manifest; p50 ratio to our engine and to the FLOP floor.

    \b
    Examples:
      edge-thyroid bench bundle/ --frames 100 --json benchmarks/results/bench.json --plot latency.png
      edge-thyroid bench bundle/ --model int8 --panes 3 --peers torch,openvino
      edge-thyroid bench bundle/ --fps 30 --policy latest --peers none
      edge-thyroid bench bundle/ --backend onnxruntime --backend openvino --peers openvino
      edge-thyroid bench bundle/ --source clip.mp4 --layout clip.layout.json --frames 100
    """
    harness = _harness()
    bm = harness.bm
    settings = _row_settings(list(backends), backend_settings)
    options = harness.BenchOptions(list(bundles), list(models), panes, frames, warmup, rounds, source, layout, fps,
                                   policy, peers, threads, pin, cache, cold_start, flops, refresh,
                                   parse_size(frame_size, low=64, high=8192), progress=not quiet,
                                   command=_command_line(click.get_current_context()),
                                   backends=list(dict.fromkeys(backends)), backend_options=settings,
                                   every_pane=every_pane)
    if plot_out:
        bm.require_matplotlib()
    for flag, target in (("--json", json_out), ("--plot", plot_out)):
        if target and target != "-":  # before the run: not a traceback once every frame was measured
            make_output_folder(Path(target).parent, flag)
    record = harness.run_bench(options)
    if json_out == "-":
        click.echo(json.dumps(record, indent=2, default=str))
    else:
        click.echo(bm.format_table(record))
        if json_out:
            bm.write_json_atomic(json_out, record)
            click.echo(f"wrote {json_out}", err=True)
    if plot_out:
        bm.plot_latency(record, plot_out)
        click.echo(f"wrote {plot_out}", err=True)
