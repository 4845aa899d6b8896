"""edge-thyroid export-triton / serve: a bundle's backbone as a Triton model repository, and a real
Triton Inference Server on it."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click


def batching_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """Scheduling options shared by export-triton and serve (applied bottom-up)."""
    options = [
        click.option("--client-queue-limit", type=click.IntRange(0), default=16, show_default=True,
                     help="fair scheduling: requests one client may have waiting; more are refused at once (0: no limit)."),
        click.option("--scheduling", type=click.Choice(["fair", "fifo"]), default=None,
                     help="fair (python flavour default): per-client round-robin queues in the model, gRPC clients; "
                          "fifo: Triton's dynamic batcher in arrival order, gRPC and HTTP clients."),
        click.option("--threads", type=click.IntRange(1), default=None,
                     help="Threads per backbone pass (ONNX Runtime's or OpenVINO's; default: from --layout)."),
        click.option("--instances", type=click.IntRange(1), default=None,
                     help="Backbone passes that run at once (default: from --layout)."),
        click.option("--layout", type=click.Choice(["throughput", "latency"]), default="throughput", show_default=True,
                     help="throughput: one single-threaded pass per core (many clients); latency: one pass on all "
                          "cores (a single client's frame soonest)."),
        click.option("--max-queue-delay-us", type=click.IntRange(0), default=None,
                     help="fifo scheduling: how long a request waits for others to join its batch (default: "
                          "2000 with --layout throughput, 0 with --layout latency or --flavor openvino)."),
        click.option("--max-batch-size", type=click.IntRange(1), default=8, show_default=True,
                     help="Most panes in one backbone pass; larger requests are refused."),
        click.option("--dynamic-batching/--no-dynamic-batching", default=True, show_default=True,
                     help="Batch panes of concurrent requests (different workstations) into one pass."),
        click.option("--model", "model_key", default=None,
                     help="Which model of the bundle: fp32, int8, ... (default: int8 if present, else fp32)."),
    ]
    for option in options:
        function = option(function)
    return function


def _batching(dynamic_batching: bool, max_batch_size: int, max_queue_delay_us: int | None, layout: str,
              instances: int | None, threads: int | None, scheduling: str | None, client_queue_limit: int,
              *, gpu: bool = False, flavor: str = "python"):
    """The model's scheduling and its ONNX Runtime threads per pass (None: ONNX Runtime's choice)."""
    from ..serving.repository import BatchingOptions, default_queue_delay_us, layout_passes

    if gpu:  # a GPU instance is one device, not cores: one instance unless told otherwise
        passes, per_pass = 1, None
    else:
        passes, per_pass = layout_passes(layout)
    if max_queue_delay_us is None:
        max_queue_delay_us = default_queue_delay_us(layout, flavor)
    options = BatchingOptions(dynamic=dynamic_batching, max_batch_size=max_batch_size,
                              max_queue_delay_us=max_queue_delay_us, instances=instances or passes,
                              scheduling=scheduling, client_queue_limit=client_queue_limit)
    return options, threads or per_pass


@click.command("export-triton")
@click.argument("bundle", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Model repository folder.")
@click.option("--flavor", type=click.Choice(["python", "openvino", "onnxruntime"]), default="python", show_default=True,
              help="python: Triton's Python backend + ONNX Runtime (the server 'edge-thyroid serve' embeds, CPU, fair "
                   "scheduling); openvino: our C backend running OpenVINO in the embedded server (CPU, fifo, the "
                   "fastest hop); onnxruntime: the onnxruntime backend of the stock Triton containers (GPU).")
@click.option("--cpu", "kind", flag_value="cpu", default=None, help="CPU instances (default for --flavor python).")
@click.option("--gpu", "kind", flag_value="gpu", help="GPU instances (default for --flavor onnxruntime).")
@click.option("--tensorrt", is_flag=True, help="onnxruntime flavour: run through ONNX Runtime's TensorRT execution provider.")
@click.option("--python-env", type=click.Path(file_okay=False), default=None,
              help="python flavour: the environment whose ONNX Runtime runs the model (default: this one).")
@click.option("--version", "model_version", type=click.IntRange(1), default=1, show_default=True,
              help="Version folder to write.")
@click.option("--overwrite", is_flag=True, help="Replace that version if it exists.")
@batching_options
def export_triton(bundle, output, flavor, kind, tensorrt, python_env, model_version, overwrite, model_key,
                  dynamic_batching, max_batch_size, max_queue_delay_us, layout, instances, threads, scheduling,
                  client_queue_limit) -> None:
    """Write BUNDLE's backbone into a Triton model repository (config.pbtxt + versioned model files).

    \b
      edge-thyroid export-triton bundle/ -o models/                       # loads in 'edge-thyroid serve'
      edge-thyroid export-triton bundle/ -o models/ --flavor openvino     # the same server, OpenVINO in-process
      edge-thyroid export-triton bundle/ -o models/ --flavor onnxruntime  # stock Triton GPU container
    """
    from ..serving.repository import write_model

    gpu = (flavor == "onnxruntime") if kind is None else kind == "gpu"
    batching, per_pass = _batching(dynamic_batching, max_batch_size, max_queue_delay_us, layout, instances, threads,
                                   scheduling, client_queue_limit, gpu=gpu, flavor=flavor)
    served = write_model(bundle, output, model=model_key, flavor=flavor, batching=batching, execution_env=python_env,
                         gpu=gpu, tensorrt=tensorrt, threads=per_pass, version=model_version, overwrite=overwrite)
    click.echo(f"wrote {served.path} (model {served.name!r}, version {served.version}, {served.flavor.value} backend; "
               f"input pixels [N,3,{served.image_size},{served.image_size}] -> feature_maps "
               f"[N,{','.join(map(str, served.output_dims))}])")


@click.command()
@click.argument("bundles", nargs=-1, required=True, type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; loopback by default, another address (e.g. 0.0.0.0) only when given.")
@click.option("--grpc-port", type=click.IntRange(0, 65535), default=8001, show_default=True, help="0: a free port.")
@click.option("--http-port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0: a free port.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=8002, show_default=True,
              help="Prometheus metrics at /metrics (queue and compute times, batch sizes). 0: a free port.")
@click.option("--repository", type=click.Path(file_okay=False), default=None,
              help="Write the model repository here and keep it (default: a temporary folder).")
@click.option("--ready-timeout", type=click.FloatRange(1), default=120.0, show_default=True,
              help="Seconds to wait for the server and its models to be ready.")
@click.option("--flavor", type=click.Choice(["python", "openvino"]), default="python", show_default=True,
              help="python: Python backend + ONNX Runtime, fair per-client scheduling (many workstations); "
                   "openvino: our C backend runs OpenVINO in the server process with Triton's dynamic batcher "
                   "(fifo): ~1 ms less per frame than python over loopback, no per-client fairness (one workstation, "
                   "or trusted clients). Compiled on first use (needs a C compiler).")
@batching_options
def serve(bundles, host, grpc_port, http_port, metrics_port, repository, ready_timeout, flavor, model_key,
          dynamic_batching, max_batch_size, max_queue_delay_us, layout, instances, threads, scheduling,
          client_queue_limit) -> None:
    """Serve the backbone of each of BUNDLES with a real Triton Inference Server until Ctrl-C/SIGTERM.

    Workstations then run 'edge-thyroid stream BUNDLE --backend triton --server grpc://HOST:PORT':
    capture, pane cache, head and temporal logic stay there; the backbone runs here.

    \b
      edge-thyroid serve bundle/                                        # many workstations, fair
      edge-thyroid serve bundle/ --flavor openvino --layout latency     # one workstation, fastest
    """
    from ..serving.repository import write_model
    from ..serving.server import ServerOptions, TritonServer, fill_free_ports

    ports = fill_free_ports([grpc_port, http_port, metrics_port],
                            host if host not in ("0.0.0.0", "::") else "127.0.0.1")
    if len(set(ports)) != 3:
        raise click.UsageError(f"--grpc-port, --http-port and --metrics-port must differ; got {ports}")
    keep = repository is not None
    root = Path(repository) if keep else Path(tempfile.mkdtemp(prefix="edge-thyroid-models-"))
    server = None
    try:
        batching, per_pass = _batching(dynamic_batching, max_batch_size, max_queue_delay_us, layout, instances,
                                       threads, scheduling, client_queue_limit, flavor=flavor)
        served = [write_model(bundle, root, model=model_key, flavor=flavor, batching=batching, threads=per_pass,
                              overwrite=True) for bundle in bundles]
        server = TritonServer(ServerOptions(root, host=host, grpc_port=ports[0], http_port=ports[1],
                                            metrics_port=ports[2]))
        started = time.monotonic()
        server.start(timeout_s=ready_timeout)
        click.echo(f"ready in {time.monotonic() - started:.1f} s: grpc {server.grpc_url}  http {server.http_url}  "
                   f"metrics {server.metrics_url}", err=True)
        for model in served:
            click.echo(f"  model {model.name} (pixels [N,3,{model.image_size},{model.image_size}], "
                       f"{model.flavor.value} flavour, {model.scheduling.value} scheduling, {batching.instances} pass(es) at once x "
                       f"{per_pass or 'default'} thread(s), max batch {batching.max_batch_size}, "
                       f"batching {'on' if batching.dynamic else 'off'})", err=True)
        click.echo("stop with Ctrl-C", err=True)
        while server.running:
            time.sleep(0.2)
        from ..serving.server import ServerError

        raise ServerError(f"tritonserver stopped on its own: {server.log_tail()}")
    except KeyboardInterrupt:
        status = server.stop() if server is not None else None
        click.echo(f"server stopped (exit status {status})", err=True)
    finally:
        if server is not None:
            server.cleanup()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
