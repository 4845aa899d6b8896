"""TensorRT without TensorRT: lazy imports and install hints, profile shapes, cache keys, and the
engine build + backend logic driven through test doubles of the ``tensorrt`` and
``cuda.bindings.runtime`` APIs (injected via sys.modules). The doubles record every call and "run" a
plan by executing the ONNX it was built from with ONNX Runtime, in host memory behind real pointers,
so the backend's buffer handling is exercised for real. The last test needs a GPU and TensorRT."""

import ctypes
import enum
import json
import subprocess
import sys
import types

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edge_thyroid.backends import available_backends, backend_class, create_backend
from edge_thyroid.backends.tensorrt import TensorRTBackend
from edge_thyroid.bundle import Precision, Target, load_bundle
from edge_thyroid.cli import main
from edge_thyroid.errors import BackendError, InputError, MissingDependencyError

from .conftest import needs_torch, screen_frame

SIZE = 64
ROIS = [(20, 50, 600, 620), (660, 50, 600, 620), (700, 300, 211, 97)]
PLAN_MAGIC = b"FAKEPLAN"


# --- test doubles -------------------------------------------------------------------------------

def fake_tensorrt(calls):
    """A stand-in for the TensorRT 10 Python API surface used by the builder and the backend."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.99.0-test-double"
    trt.float32 = "float32"
    trt.fail_parse = False
    trt.fail_build = False

    class Logger:
        WARNING = "warning"

        def __init__(self, severity):
            self.severity = severity

    trt.Logger = Logger
    trt.BuilderFlag = enum.Enum("BuilderFlag", "FP16 INT8")
    trt.MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE")
    trt.TensorIOMode = enum.Enum("TensorIOMode", "INPUT OUTPUT")

    class Network:
        def __init__(self):
            self.onnx, self.inputs = b"", []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return types.SimpleNamespace(name=self.inputs[i])

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        def parse(self, data):
            calls.append(("parse", len(data)))
            if trt.fail_parse:
                self.errors = ["node 7 (Loop): unsupported"]
                return False
            model = onnx.load_from_string(data)
            self.network.onnx, self.network.inputs = data, [i.name for i in model.graph.input]
            return True

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

    class TimingCache:
        def __init__(self, data):
            self.data = bytes(data)

        def serialize(self):
            return self.data + b"|entry"

    class Config:
        def __init__(self):
            self.flags, self.profiles, self.pools, self.timing = set(), [], {}, None

        def set_memory_pool_limit(self, pool, size):
            self.pools[pool] = size

        def set_flag(self, flag):
            self.flags.add(flag)

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)

        def create_timing_cache(self, data):
            calls.append(("timing_cache_loaded", bytes(data)))
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.timing = cache

        def get_timing_cache(self):
            return self.timing

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, low, opt, high):
            self.shapes[name] = (tuple(low), tuple(opt), tuple(high))

    class Builder:
        def __init__(self, logger):
            calls.append(("Builder",))

        def create_network(self, flags):
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("build", sorted(f.name for f in config.flags), config.profiles[0].shapes,
                          dict(config.pools), network.onnx))
            if trt.fail_build:
                return None
            high = config.profiles[0].shapes[network.inputs[0]][2][0]
            return PLAN_MAGIC + bytes([high]) + network.onnx

    class Context:
        def __init__(self, engine):
            self.engine, self.shape, self.addresses = engine, None, {}

        def set_input_shape(self, name, shape):
            if not 1 <= shape[0] <= self.engine.max_panes:
                return False
            self.shape = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            return (self.shape[0], *self.engine.map_shape)

        def set_tensor_address(self, name, address):
            self.addresses[name] = address

        def execute_async_v3(self, stream):
            calls.append(("execute", self.shape, stream))
            count = int(np.prod(self.shape))
            pixels = np.ctypeslib.as_array((ctypes.c_float * count).from_address(self.addresses["pixels"]))
            maps = self.engine.session.run(None, {"pixels": pixels.reshape(self.shape).copy()})[0]
            ctypes.memmove(self.addresses["feature_maps"], maps.ctypes.data, maps.nbytes)
            return True

    class Engine:
        num_io_tensors = 2

        def __init__(self, data):
            self.max_panes = data[len(PLAN_MAGIC)]
            self.session = ort.InferenceSession(data[len(PLAN_MAGIC) + 1:], providers=["CPUExecutionProvider"])
            size = self.session.get_inputs()[0].shape[2]
            probe = self.session.run(None, {"pixels": np.zeros((1, 3, size, size), np.float32)})[0]
            self.map_shape = probe.shape[1:]

        def get_tensor_name(self, i):
            return ["pixels", "feature_maps"][i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name == "pixels" else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return trt.float32

        def create_execution_context(self):
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            calls.append(("deserialize", len(data)))
            return Engine(data) if data.startswith(PLAN_MAGIC) else None

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt


def fake_cudart(calls, *, device_count_error=0):
    """A stand-in for cuda.bindings.runtime: 'device' memory is host memory at real addresses."""
    rt = types.ModuleType("cuda.bindings.runtime")
    rt.cudaError_t = enum.IntEnum("cudaError_t", {"cudaSuccess": 0, "cudaErrorInsufficientDriver": 35})
    rt.cudaMemcpyKind = enum.IntEnum("cudaMemcpyKind", {"cudaMemcpyHostToDevice": 1, "cudaMemcpyDeviceToHost": 2})
    ok = rt.cudaError_t.cudaSuccess
    rt.allocations = {}

    def malloc(nbytes):
        buffer = ctypes.create_string_buffer(nbytes)
        rt.allocations[ctypes.addressof(buffer)] = buffer
        calls.append(("cudaMalloc", nbytes))
        return ok, ctypes.addressof(buffer)

    def free(pointer):
        calls.append(("cudaFree", pointer))
        del rt.allocations[pointer]
        return (ok,)

    def memcpy(dst, src, nbytes, kind, stream):
        calls.append(("memcpy", kind.name, nbytes))
        ctypes.memmove(dst, src, nbytes)
        return (ok,)

    rt.cudaMalloc, rt.cudaFree, rt.cudaMemcpyAsync = malloc, free, memcpy
    rt.cudaSetDevice = lambda device: (ok,)
    rt.cudaStreamCreate = lambda: (ok, 7)
    rt.cudaStreamSynchronize = lambda stream: (ok,)
    rt.cudaStreamDestroy = lambda stream: calls.append(("cudaStreamDestroy", stream)) or (ok,)
    rt.cudaGetDeviceCount = lambda: (rt.cudaError_t(device_count_error), 1 if not device_count_error else None)
    rt.cudaGetDeviceProperties = lambda device: (ok, types.SimpleNamespace(name=b"NVIDIA Test GPU\0\0\0", major=9, minor=0))
    rt.cudaGetErrorName = lambda error: (ok, rt.cudaError_t(error).name.encode())
    return rt


@pytest.fixture
def calls():
    return []


@pytest.fixture
def fakes(monkeypatch, calls):
    """Install both doubles; returns (tensorrt, cudart)."""
    trt, cudart = fake_tensorrt(calls), fake_cudart(calls)
    install(monkeypatch, trt, cudart)
    return trt, cudart


def install(monkeypatch, trt, cudart):
    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    cuda.bindings, bindings.runtime = bindings, cudart
    for name, module in (("tensorrt", trt), ("cuda", cuda), ("cuda.bindings", bindings), ("cuda.bindings.runtime", cudart)):
        monkeypatch.setitem(sys.modules, name, module)


# --- without TensorRT ---------------------------------------------------------------------------

def test_backend_is_registered_and_imports_nothing_heavy():
    assert "tensorrt" in available_backends() and backend_class("tensorrt") is TensorRTBackend
    code = ("import sys, edge_thyroid.backends.tensorrt, edge_thyroid.commands.verify, edge_thyroid.verification;"
            "print(sorted(m for m in ('tensorrt', 'cuda', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_missing_tensorrt_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError, installed or not
    backend = create_backend("tensorrt", tmp_path / "model.fp16.plan")
    with pytest.raises(MissingDependencyError) as exc:
        backend.load()
    assert "TensorRT is not installed" in str(exc.value) and "pip install 'edge-thyroid[tensorrt]'" in str(exc.value)


@needs_torch
def test_export_for_tensorrt_without_it_fails_fast_and_writes_nothing(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    out = tmp_path / "trt"
    with pytest.raises(SystemExit) as exc:
        main(["export", "--random-init", "--image-size", str(SIZE), "-o", str(out), "--target", "tensorrt",
              "--precision", "fp16"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "TensorRT is not installed" in err and "edge-thyroid[tensorrt]" in err and "Traceback" not in err
    assert not out.exists()


def test_profile_covers_one_to_three_panes():
    from edge_thyroid.export.tensorrt_build import profile_shapes

    profile = profile_shapes(224)
    assert (profile.min, profile.opt, profile.max) == ((1, 3, 224, 224), (3, 3, 224, 224), (3, 3, 224, 224))
    assert profile_shapes(128, max_panes=2, opt_panes=1).to_dict() == {
        "input": "pixels", "min": [1, 3, 128, 128], "opt": [1, 3, 128, 128], "max": [2, 3, 128, 128]}
    for kwargs, message in (({"max_panes": 0}, "max panes"), ({"opt_panes": 4}, "optimal pane count")):
        with pytest.raises(InputError, match=message):
            profile_shapes(64, **kwargs)


def test_engine_cache_key_changes_with_every_ingredient():
    from edge_thyroid.export.tensorrt_build import GpuIdentity, engine_cache_key, profile_shapes

    base = dict(gpu=GpuIdentity("NVIDIA H100 80GB HBM3", (9, 0)), tensorrt_version="10.8.0", model_sha256="a" * 64,
                precision=Precision.INT8, profile=profile_shapes(224))
    key = engine_cache_key(**base)
    assert len(key) == 64 and key == engine_cache_key(**base)
    variants = [dict(gpu=GpuIdentity("NVIDIA H200", (9, 0))), dict(gpu=GpuIdentity("NVIDIA H100 80GB HBM3", (8, 9))),
                dict(tensorrt_version="10.9.0"), dict(model_sha256="b" * 64), dict(precision=Precision.FP16),
                dict(profile=profile_shapes(224, max_panes=2))]
    keys = {engine_cache_key(**{**base, **variant}) for variant in variants}
    assert len(keys) == len(variants) and key not in keys


def test_gpu_identity_and_cuda_errors(monkeypatch, calls):
    from edge_thyroid.export.tensorrt_build import gpu_identity

    install(monkeypatch, fake_tensorrt(calls), fake_cudart(calls))
    gpu = gpu_identity()
    assert gpu.name == "NVIDIA Test GPU" and gpu.compute_capability == (9, 0) and gpu.slug() == "nvidia-test-gpu-sm90"
    with pytest.raises(BackendError, match="does not exist"):
        gpu_identity(3)
    install(monkeypatch, fake_tensorrt(calls), fake_cudart(calls, device_count_error=35))
    with pytest.raises(BackendError, match="cudaGetDeviceCount .* failed: cudaErrorInsufficientDriver"):
        gpu_identity()


# --- the build logic, against the test double ---------------------------------------------------

@pytest.fixture(scope="module")
def backbone(random_model):
    from edge_thyroid.export.onnx_export import export_backbone_onnx

    return export_backbone_onnx(random_model, SIZE)


def test_build_sets_precision_profile_and_timing_cache_then_hits_the_engine_cache(fakes, calls, backbone, tmp_path):
    from edge_thyroid.export.tensorrt_build import GpuIdentity, build_engine, profile_shapes

    gpu = GpuIdentity("NVIDIA Test GPU", (9, 0))
    profile = profile_shapes(SIZE)
    first = build_engine(backbone, Precision.FP16, profile, cache_dir=tmp_path, gpu=gpu, workspace_bytes=1 << 30)
    builds = [c for c in calls if c[0] == "build"]
    assert len(builds) == 1
    _, flags, shapes, pools, parsed = builds[0]
    assert flags == ["FP16"]
    assert shapes == {"pixels": ((1, 3, SIZE, SIZE), (3, 3, SIZE, SIZE), (3, 3, SIZE, SIZE))}
    assert list(pools.values()) == [1 << 30] and parsed == backbone.SerializeToString()
    assert ("timing_cache_loaded", b"") in calls
    assert not first.cache_hit and first.plan.read_bytes().startswith(PLAN_MAGIC)
    assert first.details["gpu"] == {"name": "NVIDIA Test GPU", "compute_capability": "9.0"}
    assert json.loads(first.plan.with_suffix(".json").read_text())["engine_cache_key"] == first.key
    timing = next((tmp_path / "tensorrt").glob("timing-nvidia-test-gpu-sm90-trt*.cache"))
    assert timing.read_bytes() == b"|entry"

    calls.clear()
    again = build_engine(backbone, Precision.FP16, profile, cache_dir=tmp_path, gpu=gpu, workspace_bytes=1 << 30)
    assert again.cache_hit and again.plan == first.plan and again.key == first.key
    assert calls == []  # no builder, no parser: the plan came from the cache

    int8 = build_engine(backbone, Precision.INT8, profile, cache_dir=tmp_path, gpu=gpu, workspace_bytes=1 << 30)
    assert not int8.cache_hit and int8.key != first.key
    assert [c[1] for c in calls if c[0] == "build"] == [["FP16", "INT8"]]
    assert ("timing_cache_loaded", b"|entry") in calls  # the second build reused the first's timings
    assert timing.read_bytes() == b"|entry|entry"


def test_build_failures_name_the_problem(fakes, backbone, tmp_path):
    from edge_thyroid.export.quantize import fuse_preprocessing
    from edge_thyroid.export.tensorrt_build import GpuIdentity, build_engine, profile_shapes
    from edge_thyroid.kernels.reference import PreprocessSpec

    trt, _ = fakes
    gpu, profile = GpuIdentity("NVIDIA Test GPU", (9, 0)), profile_shapes(SIZE)
    with pytest.raises(BackendError, match="expected only 'pixels'"):
        build_engine(fuse_preprocessing(backbone, PreprocessSpec(image_size=SIZE)), Precision.FP16, profile,
                     cache_dir=tmp_path, gpu=gpu)
    trt.fail_parse = True
    with pytest.raises(BackendError, match="cannot parse the ONNX model: node 7 \\(Loop\\): unsupported"):
        build_engine(backbone, Precision.FP16, profile, cache_dir=tmp_path, gpu=gpu)
    trt.fail_parse, trt.fail_build = False, True
    with pytest.raises(BackendError, match="failed to build a fp32 engine on NVIDIA Test GPU"):
        build_engine(backbone, Precision.FP32, profile, cache_dir=tmp_path, gpu=gpu)
    assert not list((tmp_path / "tensorrt" / "engines").glob("*.plan"))


# --- export + the runtime backend, against the test doubles --------------------------------------

@pytest.fixture
def trt_bundle(fakes, random_model, tmp_path):
    from edge_thyroid.export.bundle_export import export_bundle

    return export_bundle(random_model, tmp_path / "trt", image_size=SIZE, precision=Precision.FP16,
                         target=Target.TENSORRT, cache_dir=tmp_path / "cache")


@needs_torch
def test_tensorrt_bundle_runs_through_the_engine_like_onnxruntime(trt_bundle, calls):
    from edge_thyroid.engine import Engine

    manifest = load_bundle(trt_bundle).manifest
    entry = manifest.models["tensorrt_fp16"]
    assert (entry.file, entry.precision, entry.target) == ("model.fp16.plan", Precision.FP16, Target.TENSORRT)
    assert entry.details["preprocess"] == "preprocess.onnx" and entry.details["tensorrt"].endswith("test-double")
    assert {"model.onnx", "model.fp16.plan", "preprocess.onnx"} <= set(manifest.files)
    frame = screen_frame()
    with Engine(trt_bundle, model="fp32") as reference:
        expected = reference.extract(frame, ROIS)
    calls.clear()
    with Engine(trt_bundle, model="tensorrt_fp16") as engine:
        assert isinstance(engine.backend, TensorRTBackend)
        for count in (3, 1, 2):
            maps = engine.extract(frame, ROIS[:count])
            np.testing.assert_allclose(maps, expected[:count], rtol=1e-5, atol=1e-5 * np.abs(expected).max())
        with pytest.raises(InputError, match="outside the TensorRT engine's optimization profile"):
            engine.extract(frame, ROIS + [(0, 0, 10, 10)])
    kinds = [c[1] for c in calls if c[0] == "memcpy"]
    assert kinds == ["cudaMemcpyHostToDevice", "cudaMemcpyDeviceToHost"] * 3
    assert [c[1] for c in calls if c[0] == "execute"] == [(3, 3, SIZE, SIZE), (1, 3, SIZE, SIZE), (2, 3, SIZE, SIZE)]
    mallocs, frees = [c for c in calls if c[0] == "cudaMalloc"], [c for c in calls if c[0] == "cudaFree"]
    assert len(mallocs) == 2 and len(frees) == 2  # sized for 3 panes once, reused, released on close
    assert ("cudaStreamDestroy", 7) in calls


@needs_torch
def test_backend_refuses_a_plan_from_elsewhere_and_a_missing_preprocess(fakes, trt_bundle):
    (trt_bundle / "model.fp16.plan").write_bytes(b"plan built by another TensorRT")
    with pytest.raises(BackendError, match="cannot deserialize .* rebuild it"):
        create_backend("tensorrt", trt_bundle / "model.fp16.plan").load()
    (trt_bundle / "preprocess.onnx").unlink()
    with pytest.raises(Exception, match="preprocessing graph .* is missing"):
        create_backend("tensorrt", trt_bundle / "model.fp16.plan").load()


@needs_torch
def test_int8_for_tensorrt_is_symmetric_int8_qdq(fakes, calls, random_model, tmp_path):
    """TensorRT's explicit quantization takes zero-point-0 int8 Q/DQ only: the INT8 plan is built
    from a symmetric-int8 graph (not the uint8 one ONNX Runtime's CPU path gets)."""
    import cv2

    from edge_thyroid.export.bundle_export import CalibrationRequest, export_bundle

    from .conftest import ultrasound_like

    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(4):
        cv2.imwrite(str(frames / f"{i}.png"), ultrasound_like(100, 130, seed=i))
    bundle = export_bundle(random_model, tmp_path / "trt8", image_size=SIZE, precision=Precision.INT8,
                           target=Target.TENSORRT, calibration=CalibrationRequest(frames, count=4),
                           keep_fp32=False, cache_dir=tmp_path / "cache")
    manifest = load_bundle(bundle).manifest
    assert list(manifest.models) == ["tensorrt_int8"] and manifest.calibration["scheme"]["activations"] == "int8"
    build = next(c for c in calls if c[0] == "build")
    assert build[1] == ["FP16", "INT8"]
    graph = onnx.load_from_string(build[4]).graph
    initializers = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    quant_nodes = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    zero_points = [initializers[n.input[2]] for n in quant_nodes]
    assert len(quant_nodes) > 100
    assert all(z.dtype == np.int8 and not z.any() for z in zero_points)
    # Weights stay float behind a Q/DQ pair (TensorRT folds it); biases stay float (no int32 Q/DQ).
    producers = {out: n for n in graph.node for out in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert len(convs) == 53
    for conv in convs:
        weight_dq = producers[conv.input[1]]
        assert weight_dq.op_type == "DequantizeLinear" and producers[weight_dq.input[0]].op_type == "QuantizeLinear"
        assert initializers[producers[weight_dq.input[0]].input[0]].dtype == np.float32
        assert len(conv.input) < 3 or conv.input[2] in initializers and initializers[conv.input[2]].dtype == np.float32


# --- on a GPU with TensorRT ---------------------------------------------------------------------

def _have_tensorrt_gpu() -> bool:
    try:
        import tensorrt  # noqa: F401

        from edge_thyroid.export.tensorrt_build import gpu_identity

        gpu_identity()
    except Exception:
        return False
    return True


@pytest.mark.gpu
@pytest.mark.skipif(not _have_tensorrt_gpu(), reason="needs TensorRT and a CUDA GPU (pip install 'edge-thyroid[tensorrt]')")
@needs_torch
def test_real_tensorrt_fp16_matches_onnxruntime(random_model, tmp_path):
    from edge_thyroid.engine import Engine
    from edge_thyroid.export.bundle_export import export_bundle

    bundle = export_bundle(random_model, tmp_path / "trt", image_size=SIZE, precision=Precision.FP16,
                           target=Target.TENSORRT, cache_dir=tmp_path / "cache")
    frame = screen_frame()
    with Engine(bundle, model="fp32") as reference, Engine(bundle, model="tensorrt_fp16") as engine:
        expected, maps = reference.extract(frame, ROIS), engine.extract(frame, ROIS)
    np.testing.assert_allclose(maps, expected, rtol=0, atol=1e-2 * np.abs(expected).max())
