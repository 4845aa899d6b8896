"""Build serialized TensorRT engines (plans) from the backbone ONNX with the TensorRT 10 Python API.

- Precision: FP32, FP16 (``BuilderFlag.FP16``), or INT8 by *explicit* quantization: the Q/DQ nodes of
  a symmetric-int8 QDQ graph (see :mod:`.quantize`) carry the scales, so no TensorRT calibrator runs;
  FP16 is enabled alongside so the layers left in float use half precision.
- One optimization profile over the pane count: min 1, opt = max = 3 panes (a screen shows up to
  three modalities; the engine is tuned for the full screen).
- A timing cache per GPU + TensorRT version makes rebuilds (other precision, new weights) fast.
- An engine cache keyed by GPU name + compute capability + TensorRT version + model sha256 +
  precision + profile: a plan is only valid on the GPU model and TensorRT version that built it.

TensorRT needs a GPU and NVIDIA's packages: imports are lazy and fail with an install hint.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from edge_thyroid.backends.tensorrt import cuda_call, import_cudart, import_tensorrt
from edge_thyroid.bundle import Precision
from edge_thyroid.errors import BackendError, InputError
from edge_thyroid.kernels.onnx_graph import PIXELS

from .calibration import default_cache_dir

DEFAULT_WORKSPACE = 4 << 30


@dataclass(frozen=True)
class GpuIdentity:
    name: str
    compute_capability: tuple[int, int]

    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "-", self.name).strip("-").lower() + f"-sm{self.compute_capability[0]}{self.compute_capability[1]}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "compute_capability": ".".join(map(str, self.compute_capability))}


def gpu_identity(device: int = 0) -> GpuIdentity:
    """Name and compute capability of CUDA device ``device`` (via cuda-python)."""
    cudart = import_cudart()
    count = cuda_call(cudart, cudart.cudaGetDeviceCount(), "cudaGetDeviceCount (is there a GPU and an NVIDIA driver?)")
    if not 0 <= device < count:
        raise BackendError(f"CUDA device {device} does not exist; this machine has {count}")
    props = cuda_call(cudart, cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name.split(b"\0", 1)[0].decode() if isinstance(props.name, bytes) else str(props.name)
    return GpuIdentity(name, (int(props.major), int(props.minor)))


@dataclass(frozen=True)
class ProfileShapes:
    """An optimization profile over the pane count (the only dynamic dimension of the backbone)."""

    input_name: str
    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input_name, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def profile_shapes(image_size: int, *, max_panes: int = 3, opt_panes: int | None = None,
                   input_name: str = PIXELS) -> ProfileShapes:
    if not 8 <= image_size <= 2048:
        raise InputError(f"image size {image_size} is outside [8, 2048]")
    if not 1 <= max_panes <= 16:
        raise InputError(f"max panes {max_panes} is outside [1, 16]")
    opt_panes = max_panes if opt_panes is None else opt_panes
    if not 1 <= opt_panes <= max_panes:
        raise InputError(f"optimal pane count {opt_panes} is outside [1, {max_panes}]")

    def shape(n: int) -> tuple[int, int, int, int]:
        return (n, 3, image_size, image_size)

    return ProfileShapes(input_name, shape(1), shape(opt_panes), shape(max_panes))


def engine_cache_key(*, gpu: GpuIdentity, tensorrt_version: str, model_sha256: str, precision: Precision,
                     profile: ProfileShapes, workspace_bytes: int = DEFAULT_WORKSPACE) -> str:
    payload = {"gpu": gpu.name, "compute_capability": list(gpu.compute_capability), "tensorrt": tensorrt_version,
               "model": model_sha256, "precision": precision.value, "profile": profile.to_dict(),
               "workspace": workspace_bytes, "version": 1}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass
class EngineBuild:
    plan: Path                 # inside the engine cache; copy it into the bundle
    key: str
    cache_hit: bool
    details: dict[str, Any]


def _write_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)  # bytes or TensorRT's IHostMemory (buffer protocol)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def build_engine(model: onnx.ModelProto, precision: Precision, profile: ProfileShapes, *,
                 cache_dir: Path | None = None, gpu: GpuIdentity | None = None,
                 workspace_bytes: int = DEFAULT_WORKSPACE) -> EngineBuild:
    """A plan for ``model`` (a backbone ONNX: fp32 for FP32/FP16, symmetric-int8 QDQ for INT8)."""
    trt = import_tensorrt()
    gpu = gpu or gpu_identity()
    data = model.SerializeToString()
    digest = hashlib.sha256(data).hexdigest()
    key = engine_cache_key(gpu=gpu, tensorrt_version=trt.__version__, model_sha256=digest, precision=precision,
                           profile=profile, workspace_bytes=workspace_bytes)
    root = Path(cache_dir or default_cache_dir()) / "tensorrt"
    plan_path = root / "engines" / f"{key}.plan"
    details = {"gpu": gpu.to_dict(), "tensorrt": trt.__version__, "onnx_sha256": digest, "profile": profile.to_dict(),
               "quantization": "explicit (Q/DQ)" if precision is Precision.INT8 else "none", "engine_cache_key": key}
    if plan_path.is_file():
        return EngineBuild(plan_path, key, True, {**details, "cache_hit": True})

    started = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(data):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendError(f"TensorRT {trt.__version__} cannot parse the ONNX model: {errors[:400]}")
    inputs = [network.get_input(i).name for i in range(network.num_inputs)]
    if inputs != [profile.input_name]:
        raise BackendError(f"the ONNX model has inputs {inputs}; expected only {profile.input_name!r} (the backbone graph)")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision in (Precision.FP16, Precision.INT8):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision is Precision.INT8:
        config.set_flag(trt.BuilderFlag.INT8)
    optimization_profile = builder.create_optimization_profile()
    optimization_profile.set_shape(profile.input_name, profile.min, profile.opt, profile.max)
    config.add_optimization_profile(optimization_profile)
    timing_path = root / f"timing-{gpu.slug()}-trt{trt.__version__}.cache"
    timing_cache = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(timing_cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"TensorRT {trt.__version__} failed to build a {precision.value} engine on {gpu.name}; "
                           "run with a larger workspace or another precision")
    _write_atomic(plan_path, serialized)
    _write_atomic(timing_path, config.get_timing_cache().serialize())
    details = {**details, "cache_hit": False, "build_seconds": round(time.perf_counter() - started, 1)}
    _write_atomic(plan_path.with_suffix(".json"), (json.dumps(details, indent=2) + "\n").encode())
    return EngineBuild(plan_path, key, False, details)


__all__ = ["EngineBuild", "GpuIdentity", "ProfileShapes", "build_engine", "engine_cache_key", "gpu_identity",
           "profile_shapes"]
