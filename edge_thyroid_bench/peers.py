"""What ``edge-thyroid bench`` runs: our engine and the peers a user would otherwise reach for, each
behind one small interface so the harness times them all the same way on the same frames.

* ``ours``      -- :class:`edge_thyroid.engine.Engine` on the bundle's model (preprocessing in the graph).
* ``ort-plain`` -- ONNX Runtime with default session options on the backbone-only graph, OpenCV
  resize + NumPy normalisation per pane (what the ONNX Runtime tutorials show).
* ``openvino``  -- OpenVINO on that same backbone graph (FP32, or the INT8 QDQ graph when the bundle
  has one), same host preprocessing, latency hint.
* ``torch``     -- PyTorch eager, torchvision ``transforms.v2`` per pane, the bundle's weights loaded
  into the torchvision model (what a researcher runs).

Every runner ends with the same NumPy head (pooling, fusion, a CAM per pane), so the stages differ
only where the runtimes differ. torch and openvino are imported only when their runner loads.

``python -m edge_thyroid_bench.peers cold-start SPEC FRAME.npy`` measures one configuration's cold start
(process start to first result) and peak RSS in a fresh process; :func:`cold_start` drives it.
"""

from __future__ import annotations

import abc
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from edge_thyroid.autoselect import AUTO
from edge_thyroid.backends import DEFAULT_BACKEND, backend_class
from edge_thyroid.bundle import Bundle, Precision, load_bundle
from edge_thyroid.engine import Engine, fuse, panes_to_run, place_maps
from edge_thyroid.errors import BackendError, BundleError, InputError, MissingDependencyError
from edge_thyroid.frames import Pane
from edge_thyroid.graph import backbone_graph
from edge_thyroid.head import FusionHead
from edge_thyroid.kernels.onnx_graph import PIXELS
from edge_thyroid.stream.cache import PaneCache

from .benchmarking import Stage, StageTimer, peak_rss_mb


class Kind(str, Enum):
    ENGINE = "ours"
    ORT_PLAIN = "ort-plain"
    OPENVINO = "openvino"
    TORCH = "torch"


PEER_KINDS: tuple[Kind, ...] = (Kind.TORCH, Kind.ORT_PLAIN, Kind.OPENVINO)
_PEER_PACKAGES = {Kind.TORCH: ("torch", "export"), Kind.OPENVINO: ("openvino", "bench"),
                  Kind.ORT_PLAIN: ("onnxruntime", "bench")}


def parse_peers(text: str) -> list[Kind]:
    """``"torch,ort-plain"`` -> kinds; ``all`` = every peer, ``none`` or ``""`` = no peers."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if names in ([], ["none"]):
        return []
    if names == ["all"]:
        return list(PEER_KINDS)
    known = {k.value: k for k in PEER_KINDS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InputError(f"unknown peer {unknown[0]!r}; expected a comma-separated list of "
                         f"{', '.join(known)} (or all / none)")
    return list(dict.fromkeys(known[n] for n in names))


def peer_installed(kind: Kind) -> bool:
    import importlib.util

    return importlib.util.find_spec(_PEER_PACKAGES[kind][0]) is not None


def missing_peer_error(kind: Kind) -> MissingDependencyError:
    package, extra = _PEER_PACKAGES[kind]
    return MissingDependencyError(package, extra, f"the {kind.value} peer of edge-thyroid bench")


@dataclass(frozen=True)
class ConfigSpec:
    """Everything needed to rebuild a configuration in another process (for cold start)."""

    kind: Kind
    bundle: str
    model: str                      # the bundle's model key whose weights run (fp32 / int8)
    modalities: tuple[str, ...]     # one per pane, in ROI order
    threads: int
    cached: bool = False
    backbone_onnx: str | None = None
    label: str = ""                 # prefix when several bundles share a table
    backend: str = DEFAULT_BACKEND  # our engine's runtime (ENGINE only)
    backend_options: tuple[tuple[str, str], ...] = ()  # our engine's backend settings, e.g. execution_precision
    # A float peer of a bundle without an FP32 model: the FP32 reconstruction of ``model``'s INT8 weights
    # (edge_thyroid_bench.dequantize), written here; None: the bundle's model file as it is.
    reconstruction: str | None = None
    every_pane: bool = False        # our engine (ENGINE only) also runs panes its model does not read

    @property
    def name(self) -> str:
        base = {Kind.ENGINE: "ours", Kind.ORT_PLAIN: "ort-plain", Kind.OPENVINO: "openvino",
                Kind.TORCH: "torch-eager"}[self.kind]
        if self.kind is Kind.ENGINE and self.backend == AUTO:
            base += f"-{AUTO}" + "".join(f"-{v}" for _, v in self.backend_options)
        elif self.kind is Kind.ENGINE and self.backend != DEFAULT_BACKEND:
            backend = backend_class(self.backend)
            naming = {o.name for o in backend.options if o.names_rows}
            base += f"-{backend.tag or backend.name}" + "".join(f"-{v}" for k, v in self.changed_options() if k in naming)
        model = f"fp32-from-{self.model}" if self.reconstruction else self.model
        name = f"{base}-{model}" + ("-cached" if self.cached else "") + ("-every-pane" if self.every_pane else "")
        return f"{self.label}/{name}" if self.label else name

    def precision(self, bundle: Bundle) -> str:
        """The precision this row computes in (a reconstruction is FP32 whatever the model it came from)."""
        precision = bundle.model_entry(self.model)[1].precision.value
        return f"fp32 (dequantized {precision})" if self.reconstruction else precision

    def changed_options(self) -> list[tuple[str, str]]:
        """The backend settings that differ from the backend's defaults (they name the row)."""
        defaults = {o.name: o.default for o in backend_class(self.backend).options}
        return [(k, v) for k, v in self.backend_options if v != defaults.get(k)]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = self.kind.value
        data["modalities"] = list(self.modalities)
        data["backend_options"] = dict(self.backend_options)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ConfigSpec":
        return cls(**{**data, "kind": Kind(data["kind"]), "modalities": tuple(data["modalities"]),
                      "backend_options": tuple(data.get("backend_options", {}).items())})


# ---------------------------------------------------------------------------------------------
# The backbone-only graph the ONNX peers run (cut out of the bundle's fused model)


def write_backbone(model_path: str | Path, destination: Path) -> Path:
    """The backbone-only graph of a fused model file (a bundle's, or a reconstruction of one)."""
    import onnx

    destination.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(backbone_graph(model_path), str(destination))
    return destination


def write_reconstruction(bundle: Bundle, model_key: str, destination: Path) -> Path:
    """The FP32 reconstruction of a bundle's INT8 model (fused, as the bundle keeps it) at ``destination``."""
    import onnx

    from .dequantize import dequantized_graph

    _, entry = bundle.model_entry(model_key)
    destination.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(dequantized_graph(onnx.load(str(bundle.path(entry.file)))), str(destination))
    return destination


# ---------------------------------------------------------------------------------------------
# Host-side preprocessing for the peers


def numpy_preprocess(frame: np.ndarray, rois: Sequence[Sequence[int]], size: int,
                     mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Per pane: crop, cv2.resize (bilinear, half-pixel: the bundle's definition), BGR->RGB,
    (x/255 - mean)/std, HWC->CHW; stacked to N x 3 x S x S float32."""
    import cv2

    mean_arr = np.asarray(mean, dtype=np.float32)
    std_arr = np.asarray(std, dtype=np.float32)
    panes = []
    for x, y, w, h in rois:
        resized = cv2.resize(frame[y:y + h, x:x + w], (size, size), interpolation=cv2.INTER_LINEAR)
        rgb = resized[:, :, ::-1].astype(np.float32) / 255.0
        panes.append(((rgb - mean_arr) / std_arr).transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(panes))


# ---------------------------------------------------------------------------------------------
# Runners


def run_head(head: FusionHead, modalities: Sequence[str], rois: np.ndarray, maps: Sequence[np.ndarray | None],
             unread: frozenset[str] = frozenset()) -> float:
    """Pooling + fusion head + the CAM of every pane: identical for every configuration (a None in
    ``maps``: a pane of an ``unread`` modality that was not run, see Engine.fuse)."""
    prediction = fuse(head, [Pane(m, tuple(r)) for m, r in zip(modalities, rois.tolist())], maps, unread=unread)
    for modality in modalities:
        prediction.cam(modality)
    return prediction.probability


class Runner(abc.ABC):
    """Load once; ``process(frame, rois, timer)`` runs one frame and returns p(malignant)."""

    format: str = ""
    unread_modalities: frozenset[str] = frozenset()  # panes this runner leaves out (the peers run every pane)

    def __init__(self, spec: ConfigSpec, bundle: Bundle | None = None) -> None:
        self.spec = spec
        self.bundle = bundle if bundle is not None else load_bundle(spec.bundle)
        self.head = FusionHead.load(self.bundle.path(self.bundle.manifest.head_file), self.bundle.manifest.modalities)
        self.preprocessing = self.bundle.manifest.preprocessing
        self.details: dict[str, Any] = {}

    @property
    def precision(self) -> str:
        return self.spec.precision(self.bundle)

    @abc.abstractmethod
    def load(self) -> None: ...

    @abc.abstractmethod
    def features(self, frame: np.ndarray, rois: np.ndarray, timer: StageTimer) -> Sequence[np.ndarray | None]: ...

    @abc.abstractmethod
    def size_bytes(self) -> int: ...

    def process(self, frame: np.ndarray, rois: np.ndarray, timer: StageTimer) -> float:
        maps = self.features(frame, rois, timer)
        with timer.stage(Stage.HEAD):
            return run_head(self.head, self.spec.modalities, rois, maps, self.unread_modalities)

    def close(self) -> None:
        """Drop the runtime session so its memory and threads go away before the next runner loads."""


class EngineRunner(Runner):
    format = "edge-thyroid: ONNX Runtime, preprocessing in the graph"

    def load(self) -> None:
        self.engine = Engine(self.bundle, model=self.spec.model, threads=self.spec.threads, backend=self.spec.backend,
                             every_pane=self.spec.every_pane, **dict(self.spec.backend_options))
        self.details["providers"] = self.engine.backend.providers
        runtime = type(self.engine.backend).display_name
        choice = self.engine.auto_choice
        if choice is not None:
            self.details["auto_choice"] = choice.to_dict()
            runtime = f"auto -> {choice.configuration} ({runtime})"
        changed = self.spec.changed_options() if self.spec.backend not in (DEFAULT_BACKEND, AUTO) else []
        if changed:
            runtime += " (" + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in changed) + ")"
        host = getattr(self.engine.backend, "preprocessing", None) is not None
        self.details["preprocessing"] = "host" if host else "graph"  # timed inside the backend call either way
        self.format = f"edge-thyroid: {runtime}, " + ("OpenCV preprocessing" if host else "preprocessing in the graph")
        self.cache = PaneCache(self.engine).extract if self.spec.cached else None
        # As in the engine's classify and the stream: panes of modalities the head does not read are not run.
        self.unread_modalities = self.engine.unread_modalities
        self.run = panes_to_run(self.spec.modalities, self.unread_modalities)
        skipped = sorted({m for m, runs in zip(self.spec.modalities, self.run) if not runs})
        if skipped:
            self.details["panes_not_run"] = skipped
            self.format += f"; {', '.join(skipped)} pane(s) not run (the model does not read them)"

    def features(self, frame: np.ndarray, rois: np.ndarray, timer: StageTimer) -> Sequence[np.ndarray | None]:
        # The panes' modalities go along: with a backbone per modality, the engine's default (its modalities
        # in order) sent e.g. --panes 2's SWE pane (bmode, swe) through the SMI backbone.
        modalities = [m for m, runs in zip(self.spec.modalities, self.run) if runs]
        with timer.stage(Stage.INFER):
            extract = self.cache if self.cache is not None else self.engine.extract
            maps = extract(frame, rois[np.asarray(self.run)], modalities)
        return maps if all(self.run) else place_maps(self.run, maps)

    def size_bytes(self) -> int:
        # Every branch's file: a branched entry has no single file (its "" named the bundle folder).
        return sum(self.bundle.path(name).stat().st_size for name in self.bundle.model_entry(self.spec.model)[1].files)

    def close(self) -> None:
        self.engine.close()


class OrtPlainRunner(Runner):
    format = "ONNX Runtime, default options + NumPy preprocessing"

    def load(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # Only the thread count is set, so every configuration gets the same cores.
        options.intra_op_num_threads = self.spec.threads
        self.session = ort.InferenceSession(self._model_path(), sess_options=options,
                                            providers=["CPUExecutionProvider"])
        self.details["providers"] = self.session.get_providers()
        if self.spec.reconstruction:
            source = self.bundle.model_entry(self.spec.model)[1].precision.value
            self.format = f"{type(self).format}; FP32 reconstruction of the {source} weights"

    def _model_path(self) -> str:
        if not self.spec.backbone_onnx:
            raise BackendError(f"{self.spec.name} needs the backbone-only graph; none was prepared")
        return self.spec.backbone_onnx

    def preprocess(self, frame: np.ndarray, rois: np.ndarray, timer: StageTimer) -> np.ndarray:
        spec = self.preprocessing
        with timer.stage(Stage.PREPROCESS):
            return numpy_preprocess(frame, rois, spec.image_size, spec.mean, spec.std)

    def features(self, frame: np.ndarray, rois: np.ndarray, timer: StageTimer) -> np.ndarray:
        pixels = self.preprocess(frame, rois, timer)
        with timer.stage(Stage.INFER):
            return self.session.run(["feature_maps"], {PIXELS: pixels})[0]

    def size_bytes(self) -> int:
        return Path(self._model_path()).stat().st_size

    def close(self) -> None:
        self.session = None


class OpenVinoRunner(OrtPlainRunner):
    format = "OpenVINO + NumPy preprocessing"

    def load(self) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise missing_peer_error(Kind.OPENVINO) from None
        core = ov.Core()
        model = core.read_model(self._model_path())
        size = self.preprocessing.image_size
        # A static shape for the pane count in use: what a deployment would compile.
        model.reshape([len(self.spec.modalities), 3, size, size])
        config = {"INFERENCE_NUM_THREADS": self.spec.threads, "PERFORMANCE_HINT": "LATENCY"}
        if self.bundle.model_entry(self.spec.model)[1].precision is Precision.FP32:
            # Some CPUs default to bf16 execution; an FP32 row must run FP32.
            config["INFERENCE_PRECISION_HINT"] = "f32"
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        from edge_thyroid.backends.openvino import executed_precision

        executed = executed_precision(self.compiled)
        self.details.update({"openvino": ov.__version__, "config": {k: str(v) for k, v in config.items()},
                             "execution_precision": executed})
        # OpenVINO's own default; on CPUs with AVX-512 BF16/AMX it runs an INT8 model's float parts in bf16.
        self.format = f"OpenVINO {ov.__version__.split('-')[0]} + NumPy preprocessing ({executed} float parts)"

    def features(self, frame: np.ndarray, rois: np.ndarray, timer: StageTimer) -> np.ndarray:
        pixels = self.preprocess(frame, rois, timer)
        with timer.stage(Stage.INFER):
            result = self.request.infer({0: pixels})
            return np.asarray(result[self.compiled.output(0)])

    def close(self) -> None:
        self.request = self.compiled = None


class TorchRunner(Runner):
    format = "PyTorch eager + torchvision transforms per pane"

    def load(self) -> None:
        try:
            import torch
            import torchvision  # noqa: F401
        except ImportError:
            raise missing_peer_error(Kind.TORCH) from None
        from edge_thyroid.export.models import BackboneFeatures, build_torchvision_model

        self.torch = torch
        self._previous_threads = torch.get_num_threads()
        torch.set_num_threads(self.spec.threads)
        manifest = self.bundle.manifest
        module = BackboneFeatures(manifest.backbone, build_torchvision_model(manifest.backbone)).eval()
        _, entry = self.bundle.model_entry(self.spec.model)
        self.details["weights"] = load_onnx_weights(module, self.spec.reconstruction or self.bundle.path(entry.file))
        if self.spec.reconstruction:
            self.format += f"; FP32 reconstruction of the {entry.precision.value} weights"
        if manifest.test_time_flip:
            # The bundle's graph averages each pane with its mirror image: so does the same model in torch.
            from edge_thyroid.export.test_time import FlipAveraged

            module = FlipAveraged(module, int(manifest.test_time.get("roll", 0))).eval()
            self.format += "; mirror-image average as in the bundle"
        self.module = module
        self.details["torch"] = torch.__version__

    def features(self, frame: np.ndarray, rois: np.ndarray, timer: StageTimer) -> np.ndarray:
        import torchvision.transforms.v2.functional as F

        torch = self.torch
        spec = self.preprocessing
        with torch.inference_mode():
            with timer.stage(Stage.PREPROCESS):
                panes = []
                for x, y, w, h in rois.tolist():
                    crop = torch.from_numpy(frame[y:y + h, x:x + w]).permute(2, 0, 1).flip(0).float() / 255.0
                    crop = F.resize(crop, [spec.image_size, spec.image_size],
                                    interpolation=F.InterpolationMode.BILINEAR, antialias=False)
                    panes.append(F.normalize(crop, list(spec.mean), list(spec.std)))
                batch = torch.stack(panes)
            with timer.stage(Stage.INFER):
                maps = self.module(batch)
            return maps.numpy()

    def size_bytes(self) -> int:
        tensors = [*self.module.parameters(), *self.module.buffers()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def close(self) -> None:
        self.module = None
        self.torch.set_num_threads(self._previous_threads)


def load_onnx_weights(module: Any, onnx_path: str | Path) -> dict[str, Any]:
    """Put the bundle's weights into the torchvision module, so the torch peer computes what our
    engine computes.

    The exporter folded every BatchNorm into the Conv before it; Convs appear in the graph in the
    order the module runs them. Each Conv gets the folded weight, its BatchNorm becomes the identity
    plus the folded bias (still executed, as a researcher's model would). Returns how the weights
    were matched; raises BundleError when the graph does not line up with the module.
    """
    import onnx
    import torch
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    initializers = {i.name: i for i in model.graph.initializer}
    alias = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Identity"}

    def tensor(name: str) -> np.ndarray:
        while name in alias:
            name = alias[name]
        if name not in initializers:
            raise BundleError(f"{onnx_path}: Conv weight {name!r} is not a float initializer (a quantized graph?)")
        return numpy_helper.to_array(initializers[name])

    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    pairs = _conv_bn_pairs(module)
    if len(convs) != len(pairs):
        raise BundleError(f"{onnx_path} has {len(convs)} Conv nodes, the torchvision model {len(pairs)}")
    convs = _in_module_order(convs, [conv for conv, _ in pairs], module)
    with torch.no_grad():
        for node, (conv, bn) in zip(convs, pairs):
            weight = tensor(node.input[1])
            if tuple(weight.shape) != tuple(conv.weight.shape):
                raise BundleError(f"{onnx_path}: Conv {node.name!r} weight {weight.shape} does not match "
                                  f"the torchvision layer {tuple(conv.weight.shape)}")
            conv.weight.copy_(torch.from_numpy(np.array(weight)))
            bias = tensor(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(weight.shape[0], np.float32)
            if bn is None:
                if conv.bias is None:
                    raise BundleError(f"{onnx_path}: Conv {node.name!r} has a bias the torchvision layer lacks")
                conv.bias.copy_(torch.from_numpy(np.array(bias)))
                continue
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
            bn.weight.fill_(1.0)
            bn.bias.copy_(torch.from_numpy(np.array(bias)))
    return {"source": str(onnx_path), "convs": len(convs), "batchnorm": "folded into conv, kept as identity + bias"}


def _in_module_order(nodes: list[Any], convs: list[Any], module: Any) -> list[Any]:
    """The Conv nodes in the order of the module's convolutions, matched by the exporter's scope names
    ('/layer1/layer1.0/downsample/downsample.0/Conv' is layer1.0.downsample.0): an exporter or a quantizer
    may order them otherwise (the mirror-image average's graph runs a block's downsample first). Graphs
    whose names do not place every conv keep their graph order."""
    paths = {}
    for node in nodes:
        parts: list[str] = []
        for part in node.name.strip("/").split("/")[:-1]:
            if parts and part.startswith(parts[-1] + "."):
                parts[-1] = part  # 'layer1' then 'layer1.0': the Sequential's child, named with its parent
            else:
                parts.append(part)
        paths[".".join(parts)] = node
    names = {id(m): name for name, m in module.named_modules()}
    wanted = [names.get(id(conv), "") for conv in convs]
    if not wanted or not all(wanted):
        return nodes
    # The graph's scopes and the module's names are the same layers under different wrappers (e.g.
    # 'features.layer1.0.conv1' for a backbone exported inside the mirror-image average, 'backbone.layer1.0.conv1'
    # in the peer's module): drop the module's leading parts until one graph prefix places every conv.
    for cut in range(max(len(name.split(".")) for name in wanted)):
        tails = [".".join(name.split(".")[cut:]) for name in wanted]
        if not all(tails):
            break
        prefixes = sorted({path[:len(path) - len(tails[0])] for path in paths if path.endswith(tails[0])}, key=len)
        for prefix in prefixes:
            if (not prefix or prefix.endswith(".")) and all(prefix + tail in paths for tail in tails):
                ordered = [paths[prefix + tail] for tail in tails]
                return ordered if len({id(n) for n in ordered}) == len(nodes) else nodes
    return nodes


def _conv_bn_pairs(module: Any) -> list[tuple[Any, Any]]:
    """(conv, the BatchNorm that follows it or None) in registration order."""
    import torch

    layers = [m for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.BatchNorm2d))]
    pairs = []
    for i, layer in enumerate(layers):
        if isinstance(layer, torch.nn.Conv2d):
            following = layers[i + 1] if i + 1 < len(layers) else None
            bn = following if isinstance(following, torch.nn.BatchNorm2d) and following.num_features == layer.out_channels else None
            pairs.append((layer, bn))
    return pairs


RUNNERS: dict[Kind, type[Runner]] = {
    Kind.ENGINE: EngineRunner,
    Kind.ORT_PLAIN: OrtPlainRunner,
    Kind.OPENVINO: OpenVinoRunner,
    Kind.TORCH: TorchRunner,
}


def make_runner(spec: ConfigSpec, bundle: Bundle | None = None) -> Runner:
    return RUNNERS[spec.kind](spec, bundle)


# ---------------------------------------------------------------------------------------------
# Cold start: process start -> first result, in a fresh interpreter


@dataclass
class ColdStart:
    seconds: float | None
    peak_rss_mb: float | None
    error: str | None = None
    phases: dict[str, float] = field(default_factory=dict)


def cold_start(spec: ConfigSpec, frame_path: Path, rois: np.ndarray, frames: int = 3,
               timeout: float = 600.0) -> ColdStart:
    """Start a fresh Python that loads ``spec`` and classifies the saved frame; the clock runs from
    just before the process is spawned to the moment its first result exists. Peak RSS is the
    child's, after ``frames`` results, so each configuration is measured alone."""
    payload = json.dumps({"spec": spec.to_dict(), "rois": rois.tolist(), "frames": frames})
    started = time.time()
    result = subprocess.run([sys.executable, "-m", "edge_thyroid_bench.peers", "cold-start", payload, str(frame_path)],
                            capture_output=True, text=True, timeout=timeout)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        return ColdStart(None, None, (result.stderr.strip().splitlines() or ["no output"])[-1][:300])
    child = json.loads(lines[-1])
    return ColdStart(round(child["first_result_unix"] - started, 4), round(child["peak_rss_mb"], 1),
                     phases={k: round(v - started, 4) for k, v in child["phases"].items()})


def _cold_start_child(payload: str, frame_path: str) -> None:
    phases = {"imports_done": time.time()}
    data = json.loads(payload)
    spec = ConfigSpec.from_dict(data["spec"])
    rois = np.asarray(data["rois"], dtype=np.int64)
    runner = make_runner(spec)
    runner.load()
    phases["loaded"] = time.time()
    frame = np.load(frame_path)
    runner.process(frame, rois, StageTimer())
    first = time.time()
    for _ in range(max(0, int(data["frames"]) - 1)):
        runner.process(frame, rois, StageTimer())
    print(json.dumps({"first_result_unix": first, "peak_rss_mb": peak_rss_mb(), "phases": phases}))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "cold-start":
        _cold_start_child(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: python -m edge_thyroid_bench.peers cold-start SPEC_JSON FRAME.npy")
