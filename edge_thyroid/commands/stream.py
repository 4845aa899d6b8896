"""edge-thyroid stream / demo: classify a live screen (or a recording) in real time."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import click

from ..errors import BundleError, EdgeThyroidError, InputError
from .params import parse_size, prevalence_option
from .runtime_options import backend_settings, print_auto_choice, runtime_options
from .trust_options import trust_option

DEMO_CLIP = "demo_clip.mp4"
DEMO_LAYOUT = "demo_clip.layout.json"
DEMO_BUNDLE = "demo_bundle"
DEMO_VIEW = ("127.0.0.1", 8765)   # the demo's live view; a free port when this one is taken
DEMO_CREDIT = ("demo clip: thyroid B-mode crops from DDTI (Pedraza et al., Proc. SPIE 9287, 2015), "
               "composed into a workstation screen")


def data_path(name: str) -> Path:
    """A file or folder shipped in edge_thyroid/data (resolved through the installed package)."""
    return Path(str(resources.files("edge_thyroid").joinpath("data", name)))


@dataclass
class StreamOptions:
    layout: str | None
    json_out: str | None
    overlay: str | None
    show: bool
    max_frames: int | None
    as_fast_as_possible: bool
    as_json: bool
    model: str | None
    threads: int | None
    loop: bool
    fps: float | None
    capture_size: str | None
    fourcc: str | None
    smoothing: str
    tau: float
    window: int
    hysteresis: float
    frozen_after: float
    unstable_std: float
    change_threshold: float
    cache: bool
    reconnect_attempts: int
    quiet: bool
    whole_pane: bool = False
    control: str | None = None
    calipers: bool = True
    abstain_unfamiliar: bool = False
    prevalence_share: float | None = None   # read p where this share of the nodules are malignant
    backend_settings: dict[str, Any] = field(default_factory=dict)   # Engine keywords: backend and its options
    view: tuple[str, int] | None = None     # serve the live view here (host, port)
    view_fps: float = 10.0
    dicom_sr: str | None = None
    no_dicom_sr: bool = False               # a DICOM source with --json-out gets an SR beside it unless this


def _view_address(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, int] | None:
    if value is None:
        return None
    from ..view.server import parse_address

    try:
        return parse_address(value)
    except InputError as exc:
        raise click.BadParameter(str(exc)) from None


def stream_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """The options `stream` and `demo` share (applied bottom-up, so listed here in reverse help order)."""
    options = [
        click.option("--view-fps", type=click.FloatRange(0, 60, min_open=True), default=10.0, show_default=True,
                     help="Most frames a second the live view sends to each browser."),
        click.option("--view", "view", metavar="[HOST:]PORT", default=None, callback=_view_address,
                     help="Serve a live view (overlay, p over the last minute, abstain reasons, latency) to a browser "
                          "at http://HOST:PORT/. A bare port listens on 127.0.0.1 only; 0.0.0.0:PORT exposes it."),
        click.option("--no-calipers", "calipers", flag_value=False, default=True,
                     help="Do not look for measurement calipers on a frozen B-mode pane."),
        click.option("--control", default=None, metavar="ADDR",
                     help="Listen for the workstation UI's nodule box: a Unix socket path or tcp://127.0.0.1:PORT "
                          "(loopback only). JSON lines: {\"roi\": [x, y, w, h]}, {\"roi\": null}, {\"layout\": ...}."),
        click.option("--whole-pane", is_flag=True,
                     help="Without a nodule box, classify the whole B-mode pane (default: abstain with no_roi; the "
                          "model was trained on nodule-centred crops)."),
        click.option("--abstain-unfamiliar", is_flag=True,
                     help="Abstain (reason unfamiliar) on a frame whose B-mode pane the bundle's familiarity reference "
                          "finds unlike the model's training crops; p stays in the record (default: only flag it). "
                          "Needs a bundle given one by 'edge-thyroid familiarize'."),
        click.option("--quiet", is_flag=True, help="No live status line on stderr."),
        click.option("--dicom-sr", default=None, metavar="OUT.dcm",
                     help="DICOM source only: write a DICOM Structured Report of the last frame's decision (p, "
                          "threshold, model and manifest sha256, the pane ROI on the source frame) here. Needs "
                          "pip install 'edge-thyroid[dicom]'. A DICOM source streamed with --json-out gets one by "
                          "default beside the JSONL (RESULTS.sr.dcm); --no-dicom-sr leaves it out."),
        click.option("--no-dicom-sr", is_flag=True, help="No automatic DICOM SR for a DICOM source."),
        click.option("--reconnect-attempts", type=click.IntRange(0, 1000), default=8, show_default=True,
                     help="Reopen tries (back-off 0.25 s doubling to 4 s) before a lost device/network source ends the stream."),
        click.option("--no-cache", "cache", flag_value=False, default=True,
                     help="Re-run every pane on every frame (pane caching off; for comparison)."),
        click.option("--change-threshold", type=click.FloatRange(0, 255), default=1.0, show_default=True,
                     help="Mean absolute pixel difference (grey levels) under which a pane counts as unchanged."),
        click.option("--unstable-std", type=click.FloatRange(0, 1, min_open=True), default=0.2, show_default=True,
                     help="Abstain when the std of p over the last 10 frames exceeds this (the model's own p, as "
                          "--hysteresis)."),
        click.option("--frozen-after", type=click.FloatRange(0), default=0.0, show_default=True,
                     help="Abstain after this many seconds without any pane changing (0: never; a freeze is when the "
                          "sonographer reviews and measures, so the last result holds)."),
        click.option("--hysteresis", type=click.FloatRange(0, 0.5, max_open=True), default=0.05, show_default=True,
                     help="The decision flips only when smoothed p crosses threshold +/- this margin (in the model's "
                          "own p: --prevalence moves what is shown, not where decisions flip)."),
        click.option("--window", type=click.IntRange(1, 1000), default=8, show_default=True,
                     help="Frames averaged by --smoothing window."),
        click.option("--tau", type=click.FloatRange(0, min_open=True), default=0.5, show_default=True,
                     help="EMA time constant in seconds (--smoothing ema)."),
        click.option("--smoothing", type=click.Choice(["ema", "window", "none"]), default="ema", show_default=True,
                     help="How p(malignant) is smoothed over time."),
        click.option("--fourcc", default=None, help="Capture device pixel format to request, e.g. MJPG or YUYV."),
        click.option("--capture-size", default=None, help="Capture device resolution to request (or synthetic screen size), WxH."),
        click.option("--fps", type=float, default=None,
                     help="Capture device rate to request; for files/folders/DICOM: replay at this rate instead of the stated one."),
        click.option("--loop", is_flag=True, help="Replay a file, folder or DICOM from the start when it ends."),
        click.option("--threads", type=int, default=None, help="Inference threads (default: ONNX Runtime's choice)."),
        click.option("--model", default=None, help="Which model of the bundle: int8, fp32, fp16 (default: int8 if present)."),
        click.option("--json", "as_json", is_flag=True, help="Print the final summary as JSON on stdout."),
        click.option("--as-fast-as-possible", is_flag=True,
                     help="Replay files without pacing; capture waits for the model, so no frame is dropped."),
        click.option("--max-frames", type=click.IntRange(1), default=None, help="Stop after this many captured frames."),
        click.option("--show", is_flag=True, help="Show the overlay in a window (needs a display and OpenCV with GUI)."),
        click.option("--overlay", default=None, help="Write an annotated video (CAM heatmap + decision): out.mp4 / .avi / .mkv."),
        click.option("--json-out", default=None, help="Write one JSON record per processed frame (and per source gap) here; '-' = stdout."),
        click.option("--layout", default=None,
                     help="Pane layout: a preset (single, dual, triple, full) or a .yaml/.json file. Default: the source's "
                          "own (DICOM ultrasound regions, the demo clip) or the whole frame as one B-mode pane."),
    ]
    for option in options:
        function = option(function)
    return runtime_options(prevalence_option(function))


def run_stream(bundle: str | Path, source_spec: str, options: StreamOptions, *, default_layout: str | None = None,
               banner: str | None = None, view_any_port: bool = False) -> None:
    """Stream ``source_spec`` through ``bundle`` into the sinks the options ask for. ``view_any_port``: when the
    view's port is taken, serve it on a free one instead of failing (the demo's default port)."""
    from ..engine import Engine
    from ..layout import load_layout
    from ..prevalence import site_prevalence
    from ..stream import Pipeline, PipelineConfig, ReconnectPolicy
    from ..sinks import ConsoleSink, JsonlSink, OverlayVideoSink, WindowSink
    from ..sources import SourceOptions, create_source
    from ..temporal import Smoothing, TemporalConfig

    layout_spec = options.layout or default_layout
    layout = load_layout(layout_spec) if layout_spec else None
    temporal = TemporalConfig(smoothing=Smoothing(options.smoothing), tau_s=options.tau, window=options.window,
                              margin=options.hysteresis, unstable_std=options.unstable_std,
                              frozen_after_s=options.frozen_after)
    config = PipelineConfig(layout=layout, lossless=options.as_fast_as_possible, max_frames=options.max_frames,
                            cache=options.cache, change_threshold=options.change_threshold, temporal=temporal,
                            reconnect=ReconnectPolicy(attempts=options.reconnect_attempts),
                            whole_pane=options.whole_pane, calipers=options.calipers, control=options.control,
                            abstain_unfamiliar=options.abstain_unfamiliar)
    source = create_source(source_spec, SourceOptions(
        realtime=not options.as_fast_as_possible, fps=options.fps, size=parse_size(options.capture_size) if options.capture_size else None,
        fourcc=options.fourcc, loop=options.loop, layout=layout))
    automatic_sr = False
    if (source.kind == "dicom" and not options.dicom_sr and not options.no_dicom_sr and options.json_out
            and options.json_out != "-"):
        # A workstation that reads DICOM expects DICOM back: the report goes beside the JSONL, never beside
        # the input (an archive may be read-only), and a missing highdicom is a notice, not a failure.
        options.dicom_sr, automatic_sr = str(Path(options.json_out).with_suffix(".sr.dcm")), True
    if options.dicom_sr and source.kind != "dicom":
        raise click.UsageError(f"--dicom-sr needs a DICOM source (the report references its image); {source_spec} "
                               "is not one. For still images use 'edge-thyroid classify --dicom-sr DIR'")
    with Engine(bundle, model=options.model, threads=options.threads,
                **options.backend_settings) as engine:
        if options.abstain_unfamiliar and engine.familiarity is None:
            raise click.UsageError(f"--abstain-unfamiliar needs a bundle with a familiarity reference; {bundle} has "
                                   "none (give it one: edge-thyroid familiarize BUNDLE --data TRAINING_CSV)")
        config = replace(config, prevalence=site_prevalence(options.prevalence_share, engine.bundle.manifest.probability,
                                                            str(bundle)))
        if not options.quiet:
            print_auto_choice(engine)
        source.open()
        try:
            sinks = []
            if options.json_out:
                sinks.append(JsonlSink(options.json_out))
            if not options.quiet:
                sinks.append(ConsoleSink())
            if options.overlay:
                sinks.append(OverlayVideoSink(options.overlay, source.fps or 30.0))
            if options.show:
                sinks.append(WindowSink())
            if options.view is not None:
                from ..view import ViewSink

                # The address is printed even with --quiet: without it the view cannot be found.
                # With a control channel, the page's box tool sends its box down the same channel (same
                # checks, applied from the next frame, logged); without one the page offers no box tool.
                on_roi = None
                if options.control:
                    def on_roi(roi: Any) -> None:
                        pipeline.control.submit({"roi": list(roi) if roi else None})
                sinks.append(ViewSink(*options.view, fps=options.view_fps, any_port=view_any_port,
                                      announce=lambda line: click.echo(line, err=True), on_roi=on_roi))
            if banner and not options.quiet:
                click.echo(banner, err=True)
            pipeline = Pipeline(engine, source, sinks, config)
            summary = pipeline.run()
        finally:
            source.close()
        # A stream that failed has no final state to report; the error below says why.
        if options.dicom_sr and pipeline.last_result is not None and not summary.error:
            try:
                _write_stream_report(options.dicom_sr, pipeline.last_result, engine, source)
            except EdgeThyroidError as exc:
                # Asked for, a report that cannot be written is an error; written unasked, it must not turn
                # a good stream into a failed one (no highdicom, or a source too incomplete to reference).
                if not automatic_sr:
                    raise
                click.echo(f"notice: no DICOM SR written: {exc}", err=True)
    if summary.error and summary.processed == 0 and pipeline.fanout.failed() is None:
        # Nothing was classified (no frame, or a layout that does not fit it): one line, no summary. A sink
        # that failed before the first frame (noticed at the header record) still gets the summary below.
        raise InputError(summary.error)
    # With the records on stdout, the summary goes to stderr so stdout stays pure JSONL.
    to_stderr = options.json_out == "-"
    if options.as_json:
        click.echo(json.dumps(summary.to_dict(), allow_nan=False), err=to_stderr)
    else:
        click.echo(summary.text(), err=to_stderr)
    if summary.error:
        raise InputError(summary.error)


def _write_stream_report(path: str, result: Any, engine: Any, source: Any) -> None:
    from ..dicom_sr import ModelIdentity, stream_finding, write_report

    info = source.info
    finding = stream_finding(result, info.rows, info.columns, info.frames)
    for written in write_report(path, finding, ModelIdentity.of(engine), source=source.dataset):
        click.echo(f"DICOM SR written: {written}", err=True)  # the file name only: never patient data


def _options(kwargs: dict[str, Any]) -> StreamOptions:
    settings = backend_settings(kwargs)
    return StreamOptions(**{name: kwargs[name] for name in StreamOptions.__dataclass_fields__ if name in kwargs},
                         backend_settings=settings)


@click.command()
@click.argument("bundle", type=click.Path())
@click.option("--source", "source_spec", default=None,
              help="Capture source: device (0, /dev/video0), video file, rtsp:// tcp:// udp:// URL, DICOM cine, image "
                   "folder, or synthetic[:dual|triple][?size=WxH&fps=30&swe_hz=2&frames=N&freeze=A-B]. "
                   "Default: the bundled demo clip.")
@stream_options
@trust_option
def stream(bundle: str, source_spec: str | None, **kwargs: Any) -> None:
    """Classify a live ultrasound screen with BUNDLE, in real time.

    \b
    Frames are captured on their own thread; the model always takes the newest frame (older ones are
    dropped and counted), re-runs only the panes whose pixels changed, and smooths p(malignant) over
    time with hysteresis. It classifies a nodule box in the B-mode pane: the layout's `nodule`, one
    sent over --control, or one measured with calipers on a frozen image (then followed as the probe
    moves). Without a box it abstains (no_roi) unless --whole-pane; it also abstains (with a reason)
    on blank or unstable input.
    \b
    Examples:
      edge-thyroid stream bundle/ --source 0 --layout dual --json-out results.jsonl
      edge-thyroid stream bundle/ --source cine.dcm --overlay review.mp4
      edge-thyroid stream bundle/ --source rtsp://scanner.local/live --layout triple.yaml
      edge-thyroid stream bundle/ --source synthetic:triple --max-frames 300 --whole-pane
      edge-thyroid stream bundle/ --source 0 --layout single --control /run/edge-thyroid.sock
    \b
    Ctrl-C or SIGTERM stops cleanly: the JSONL is complete (every line parses) and a summary
    (frames, processed, dropped, cache hits, latency p50/p90/p99) is printed.
    """
    options = _options(kwargs)
    if source_spec is None:
        clip = _demo_clip()
        run_stream(bundle, str(clip), options, default_layout=str(data_path(DEMO_LAYOUT)), banner=DEMO_CREDIT)
    else:
        run_stream(bundle, source_spec, options)


def _demo_clip() -> Path:
    clip = data_path(DEMO_CLIP)
    if not clip.is_file():
        raise InputError(f"the bundled demo clip is missing at {clip}; reinstall edge-thyroid or pass --source")
    return clip


@click.command()
@click.option("--bundle", default=None, type=click.Path(),
              help="Model bundle to run (default: the bundled demo model).")
@click.option("--no-view", is_flag=True,
              help=f"Do not serve the live view (by default at http://{DEMO_VIEW[0]}:{DEMO_VIEW[1]}/, or a free port).")
@stream_options
@trust_option
def demo(bundle: str | None, no_view: bool, **kwargs: Any) -> None:
    """Stream the bundled demo clip through the bundled model, printing live results and serving a live
    view to a browser (the address is printed).

    \b
    The clip is a few thyroid B-mode crops from the public DDTI database composed into a workstation
    screen. The bundled model is signed with the project's demo key and checked against its public
    half (shipped in the package) unless --trust names other keys. Every option of 'edge-thyroid
    stream' applies, e.g.:
      edge-thyroid demo --loop                   keep the clip going while you watch the view
      edge-thyroid demo --overlay demo.mp4 --json-out demo.jsonl --no-view
    """
    from contextlib import nullcontext

    from ..signing import TrustPolicy, active_policy, demo_public_key, load_trusted_keys, use_policy

    trust = nullcontext()
    if bundle is None:
        default = data_path(DEMO_BUNDLE)
        if not (default / "manifest.json").is_file():
            raise BundleError(f"the bundled demo model is missing at {default}; pass --bundle DIR "
                              "(e.g. one made by 'edge-thyroid export')")
        bundle = str(default)
        policy = active_policy()
        if not policy.enforced:
            # The shipped model is checked against the shipped demo key: a damaged or edited install is
            # refused. The demo key's private half is public, so it vouches for the install, not the model.
            trust = use_policy(TrustPolicy(load_trusted_keys([demo_public_key()], origin="demo key"), policy.notice))
    options = _options(kwargs)
    explicit = options.view is not None
    if no_view:
        options.view = None
    elif not explicit:
        options.view = DEMO_VIEW
    with trust:
        run_stream(bundle, str(_demo_clip()), options, default_layout=str(data_path(DEMO_LAYOUT)),
                   banner=DEMO_CREDIT, view_any_port=not explicit)


__all__ = ["demo", "run_stream", "stream"]
