"""Write a standard Triton model repository for a bundle's backbone (``edge-thyroid export-triton``;
``edge-thyroid serve`` uses the same writer).

What runs where: the workstation keeps capture, preprocessing (the bundle's exact float path on the
host), the pane cache, the fusion head and temporal logic; the server runs only the backbone on
pixels [N, 3, S, S] -> feature maps [N, C, h, w]. Panes of one fixed size are what lets Triton's
dynamic batcher put panes from different workstations into one pass, and they are ~30x smaller on the
wire than a 1080p screen.

Two flavours of the same model:

* ``python``: Triton's Python backend runs the backbone with ONNX Runtime from a given Python
  environment (``EXECUTION_ENV_PATH``). This is what the server embedded by ``pip install
  'edge-thyroid[serve]'`` can load (it ships only the Python backend), CPU instances.
* ``onnxruntime``: the onnxruntime backend of the stock Triton containers, GPU instances by default,
  optionally with ONNX Runtime's TensorRT execution provider.
* ``openvino``: the backbone run by OpenVINO inside the embedded server's own process, through a small
  C backend of ours (``native/openvino_backend.c``, compiled on first use; ``native_backend.py``), with
  Triton's dynamic batcher. No Python stub between Triton and the pass, so the cheapest hop per request
  here (BENCHMARKS.md: serving); CPU instances, fifo scheduling only.

Each model is named after the bundle model's sha256, and its config carries that hash, so a client
can check that the server runs exactly the weights its local bundle verified.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BundleError, InputError
from ..kernels.graph_io import PIXELS
from .native_backend import NAME as NATIVE_BACKEND

if TYPE_CHECKING:  # the triton backend imports this module's names; it must stay light (no NumPy)
    from ..bundle import Bundle

OUTPUT = "feature_maps"
ORDER = "service_order"  # fair scheduling: [requests served when it arrived, its service index]
CLIENT_PARAMETER = "edge_thyroid_client"  # request parameter naming the client (a workstation stream)
# request parameter (bool): the client has no other request in flight (fair scheduling may then run
# its pass on Triton's thread; serving/backbone_model.py runs_inline)
ONE_IN_FLIGHT_PARAMETER = "edge_thyroid_one_in_flight"
SHA_PARAMETER = "edge_thyroid_model_sha256"
SIZE_PARAMETER = "edge_thyroid_image_size"
SCHEDULING_PARAMETER = "edge_thyroid_scheduling"
MODEL_FILE = "model.onnx"
HOST_MIRROR_PARAMETER = "edge_thyroid_host_mirror"  # openvino flavour: the input is N panes then their mirrors
PRECOMPILE_PARAMETER = "edge_thyroid_precompile_panes"  # openvino flavour: networks compiled at load
CPU_PINNING_PARAMETER = "edge_thyroid_cpu_pinning"  # openvino flavour: threads pinned to cores (one instance only)


class Flavor(str, Enum):
    PYTHON = "python"            # the embedded server here: Python backend + ONNX Runtime, CPU
    ONNXRUNTIME = "onnxruntime"  # stock Triton containers: onnxruntime backend (GPU by default)
    OPENVINO = "openvino"        # the embedded server here: our C backend + OpenVINO, CPU, in-process

    @property
    def backend(self) -> str:
        """The backend name config.pbtxt gives Triton."""
        return NATIVE_BACKEND if self is Flavor.OPENVINO else self.value


class Scheduling(str, Enum):
    FAIR = "fair"  # decoupled Python model: per-client round-robin queues, gRPC streaming clients
    FIFO = "fifo"  # Triton's dynamic batcher, arrival order; unary gRPC and HTTP clients


class Layout(str, Enum):
    THROUGHPUT = "throughput"  # one backbone pass per core, one thread each: many clients
    LATENCY = "latency"        # one pass at a time on every core: one client's frame soonest


def cores_available() -> int:
    """CPUs this process may run on (its affinity, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def layout_passes(layout: Layout | str, cores: int | None = None) -> tuple[int, int]:
    """(backbone passes at once, ONNX Runtime threads per pass) of a layout on ``cores`` CPUs.

    Throughput: one single-threaded pass per core. A 3-pane pass on one thread wastes nothing on
    thread hand-offs, and while one client's frame is on the wire or in host preprocessing another
    client's pass keeps the core busy. Latency: one pass spread over every core, the shortest time
    for one frame when a single client is alone (BENCHMARKS.md: serving, layouts)."""
    try:
        layout = Layout(layout)
    except ValueError:
        raise InputError(f"layout {layout!r} is not known; expected one of {[v.value for v in Layout]}") from None
    cores = cores or cores_available()
    return (cores, 1) if layout is Layout.THROUGHPUT else (1, cores)


def default_queue_delay_us(layout: Layout | str, flavor: "Flavor | str" = "python") -> int:
    """fifo scheduling: how long a request short of a full batch waits for company. The latency layout
    serves a client alone, so it waits for nobody: there the wait made each frame ~2 ms slower and
    batched nothing (BENCHMARKS.md: serving, where the remote pass spends its time). Nor does the
    openvino flavour: its passes run one thread per instance, where a bigger batch saves no compute,
    so waiting only delays (4 clients: 143 frames/s with 2 ms, 221 with none; requests that queue
    while an instance is busy are still batched)."""
    if Flavor(flavor) is Flavor.OPENVINO:
        return 0
    return 0 if Layout(layout) is Layout.LATENCY else 2000


@dataclass(frozen=True)
class BatchingOptions:
    """Server-side scheduling of one model.

    ``max_batch_size`` bounds the panes one backbone pass takes (and so the largest request the
    server accepts); ``instances`` is how many passes run at once. ``scheduling`` fair (the python
    flavour's default): the model queues requests per client and serves the clients round-robin,
    ``client_queue_limit`` requests waiting per client at most (0: no limit); ``dynamic`` then means
    panes of several clients' requests share a pass. fifo: Triton's dynamic batcher (``dynamic``),
    where ``max_queue_delay_us`` is how long the first request waits for others to join its batch.
    No ``default_queue_policy`` is written: with one the embedded Triton stalled single requests
    ~0.5 s (docs/serving.md says why)."""

    dynamic: bool = True
    max_batch_size: int = 8
    max_queue_delay_us: int = 2000
    instances: int = 1
    scheduling: Scheduling | str | None = None  # None: fair for the python flavour, fifo for onnxruntime
    client_queue_limit: int = 16

    def validate(self) -> None:
        for name in ("max_batch_size", "instances"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} is {getattr(self, name)}; expected a positive integer")
        for name in ("max_queue_delay_us", "client_queue_limit"):
            if getattr(self, name) < 0:
                raise InputError(f"{name} is {getattr(self, name)}; expected 0 or more")
        if self.scheduling is not None and self.scheduling not in [v.value for v in Scheduling]:
            raise InputError(f"scheduling {self.scheduling!r} is not known; expected one of "
                             f"{[v.value for v in Scheduling]}")

    def scheduling_for(self, flavor: "Flavor") -> Scheduling:
        if self.scheduling is None:
            return Scheduling.FAIR if flavor is Flavor.PYTHON else Scheduling.FIFO
        scheduling = Scheduling(self.scheduling)
        if scheduling is Scheduling.FAIR and flavor is not Flavor.PYTHON:
            raise InputError(f"fair scheduling runs inside the python flavour's model; the {flavor.value} flavour "
                             "uses Triton's own scheduler (--scheduling fifo)")
        return scheduling


@dataclass(frozen=True)
class ServedModel:
    """What a client needs to know about a model written into a repository."""

    name: str
    version: int
    sha256: str
    image_size: int
    output_dims: tuple[int, ...]  # per pane: (C, h, w)
    flavor: Flavor
    path: Path
    scheduling: Scheduling = Scheduling.FIFO


def model_name(sha256: str, key: str) -> str:
    """The served name of a bundle model: its precision key and the start of its hash."""
    return f"thyroid_{key}_{sha256[:12]}"


def write_model(bundle: "Bundle | str | Path", repository: str | Path, *, model: str | None = None,
                flavor: Flavor | str = Flavor.PYTHON, batching: BatchingOptions = BatchingOptions(),
                execution_env: str | Path | None = None, gpu: bool | None = None, tensorrt: bool = False,
                threads: int | None = None, version: int = 1, overwrite: bool = False) -> ServedModel:
    """Write one bundle model into ``repository`` (created if needed) and return its description.

    ``execution_env``: the Python environment whose ONNX Runtime and NumPy the python flavour runs
    with (default: the running interpreter's, ``sys.prefix``). ``gpu``: instance kind (default: CPU
    for python, GPU for onnxruntime). ``tensorrt``: ask the onnxruntime backend for its TensorRT
    execution provider."""
    import onnx

    from ..bundle import Bundle, load_bundle
    from ..graph import backbone_graph

    bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    try:
        flavor = Flavor(flavor)
    except ValueError:
        raise InputError(f"flavor {flavor!r} is not known; expected one of {[f.value for f in Flavor]}") from None
    batching.validate()
    batching.scheduling_for(flavor)  # refuse fair scheduling on a flavour without a Python model first
    if version < 1:
        raise InputError(f"version is {version}; expected a positive integer (Triton's version folders start at 1)")
    if tensorrt and flavor is not Flavor.ONNXRUNTIME:
        raise InputError(f"the TensorRT execution provider applies to the onnxruntime flavour; the {flavor.value} "
                         "flavour runs on CPU")
    if gpu and flavor is Flavor.OPENVINO:
        raise InputError("the openvino flavour runs on the server's CPU; for GPU instances use --flavor onnxruntime")
    key, entry = bundle.model_entry(model)
    if entry.target.value != "onnxruntime":
        raise BundleError(f"bundle model {key!r} targets {entry.target.value}; Triton serving needs an ONNX model "
                          "(pick one with --model)")
    if entry.branches:
        raise BundleError(f"bundle model {key!r} has a backbone per modality ({entry.describe}); Triton serving "
                          "serves one backbone: run this bundle with --backend onnxruntime or openvino")
    sha256 = bundle.manifest.files[entry.file]
    size = bundle.manifest.preprocessing.image_size
    name = model_name(sha256, key)
    model_dir = Path(repository) / name
    version_dir = model_dir / str(version)
    if version_dir.exists() and not overwrite:
        raise InputError(f"{version_dir} already exists; expected a new repository or --overwrite")
    backbone = backbone_graph(bundle.path(entry.file))
    dims = _output_dims(backbone, size)
    host_mirror = False
    if flavor is Flavor.OPENVINO:
        # The server's backend writes each pane's mirror image, so OpenVINO runs the INT8 stem in INT8
        # (graph.host_mirrored_input; the same function, as the in-process OpenVINO backend runs it).
        from ..graph import host_mirrored_input

        backbone, host_mirror = host_mirrored_input(backbone)
    staging = model_dir / f".{version}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        onnx.save(backbone, str(staging / MODEL_FILE))
        if flavor is Flavor.PYTHON:
            shutil.copyfile(Path(__file__).with_name("backbone_model.py"), staging / "model.py")
        if version_dir.exists():
            shutil.rmtree(version_dir)
        staging.rename(version_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    use_gpu = (flavor is Flavor.ONNXRUNTIME) if gpu is None else gpu
    config = model_config(name, size=size, output_dims=dims, sha256=sha256, flavor=flavor, batching=batching,
                          gpu=use_gpu, tensorrt=tensorrt, threads=threads,
                          execution_env=Path(execution_env or sys.prefix) if flavor is Flavor.PYTHON else None,
                          host_mirror=host_mirror,
                          precompile_panes=min(len(bundle.manifest.modalities), batching.max_batch_size))
    (model_dir / "config.pbtxt").write_text(config, encoding="utf-8")
    return ServedModel(name, version, sha256, size, dims, flavor, model_dir, batching.scheduling_for(flavor))


def model_config(name: str, *, size: int, output_dims: tuple[int, ...], sha256: str, flavor: Flavor,
                 batching: BatchingOptions, gpu: bool, tensorrt: bool = False, threads: int | None = None,
                 execution_env: Path | None = None, host_mirror: bool = False, precompile_panes: int = 1) -> str:
    """The config.pbtxt text (protobuf text format) of one backbone model."""
    scheduling = batching.scheduling_for(flavor)
    fair = scheduling is Scheduling.FAIR
    outputs = [f'  {{ name: "{OUTPUT}" data_type: TYPE_FP32 dims: [ {", ".join(map(str, output_dims))} ] }}']
    if fair:
        outputs.append(f'  {{ name: "{ORDER}" data_type: TYPE_INT64 dims: [ 2 ] }}')
    lines = [f'name: "{name}"', f'backend: "{flavor.backend}"', f"max_batch_size: {batching.max_batch_size}",
             "input [", f'  {{ name: "{PIXELS}" data_type: TYPE_FP32 dims: [ 3, {size}, {size} ] }}', "]",
             "output [", ",\n".join(outputs), "]",
             # fair: one Triton instance holds the one queue; its worker threads are the passes at once.
             f"instance_group [ {{ count: {1 if fair else batching.instances} kind: {'KIND_GPU' if gpu else 'KIND_CPU'} }} ]",
             "version_policy: { latest: { num_versions: 1 } }"]
    if fair:
        lines.append("model_transaction_policy { decoupled: true }")
    elif batching.dynamic:
        lines += ["dynamic_batching {", f"  max_queue_delay_microseconds: {batching.max_queue_delay_us}", "}"]
    parameters = {SHA_PARAMETER: sha256, SIZE_PARAMETER: str(size), SCHEDULING_PARAMETER: scheduling.value}
    if fair:
        parameters.update(workers=str(batching.instances), batch_requests="1" if batching.dynamic else "0",
                          client_queue_limit=str(batching.client_queue_limit))
    if execution_env is not None:
        parameters["EXECUTION_ENV_PATH"] = str(execution_env)
    if threads:
        parameters["intra_op_threads"] = str(int(threads))
    if flavor is Flavor.ONNXRUNTIME and threads:
        parameters["intra_op_thread_count"] = str(int(threads))
    if flavor is Flavor.OPENVINO:
        parameters[HOST_MIRROR_PARAMETER] = "1" if host_mirror else "0"
        parameters[PRECOMPILE_PARAMETER] = str(int(precompile_panes))
        parameters[CPU_PINNING_PARAMETER] = "1" if batching.instances == 1 else "0"
    for key, value in parameters.items():
        lines.append(f'parameters: {{ key: "{key}" value: {{ string_value: "{_escape(value)}" }} }}')
    if tensorrt:
        # The bundle's INT8 models are explicit QDQ graphs: TensorRT takes their scales as they are.
        lines += ["optimization { execution_accelerators { gpu_execution_accelerator: [ {",
                  '  name: "tensorrt"',
                  f'  parameters {{ key: "precision_mode" value: "{"INT8" if "int8" in name else "FP16"}" }}',
                  '  parameters { key: "max_workspace_size_bytes" value: "1073741824" }',
                  "} ] } }"]
    return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _output_dims(backbone: object, size: int) -> tuple[int, ...]:
    """Per-pane output dims (C, h, w), found by running the backbone once on one blank pane: exact
    for every graph ONNX Runtime can run, where symbolic shape inference may leave dims unknown."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(backbone.SerializeToString(), sess_options=options,  # type: ignore[attr-defined]
                                   providers=["CPUExecutionProvider"])
    out = session.run([OUTPUT], {PIXELS: np.zeros((1, 3, size, size), dtype=np.float32)})[0]
    return tuple(int(d) for d in out.shape[1:])
