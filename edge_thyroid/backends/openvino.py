"""OpenVINO backend: the bundle's own ONNX model compiled by OpenVINO for the CPU, behind the same
interface as every backend (uint8 frame + ROIs in, feature maps out), so the engine, the pane cache
and the head are unchanged.

OpenVINO can run the fused graph as exported, but it lowers the preprocessing Loop into slow
generic code (3 panes of 1080p: ~4 ms, against ~1 ms for OpenCV on the host). Given the bundle's
preprocessing spec (the engine passes it), the backend instead cuts the backbone out of the fused
graph and preprocesses on the host with :class:`kernels.opencv_path.OpenCVPreprocessor` in its exact
float mode (equal to the reference within float32 rounding), so the model sees the same pixels.
One network is compiled per pane count (1 to the bundle's modalities; 1 for a branch of a bundle
with a backbone per modality, which sees one pane a frame), with static shapes, at load; another
count is compiled when first asked for. A bundle with the mirror-image average in its graph gets each
pane's mirror image from the host too (``graph.host_mirrored_input``): in the graph, OpenVINO runs that
copy in reference code and the INT8 stem convolution in float. On CPUs with
AVX-512 BF16 or AMX, OpenVINO would by default run the float parts of a model in bfloat16. That
changes the numbers the accuracy gate approved, so this backend asks for f32 unless told otherwise;
``ExecutionPrecision.BF16`` is an opt-in to be judged with ``edge-thyroid verify --backend openvino
--execution-precision bf16`` before it is deployed. A CPU without BF16 would run a bf16 request in f32;
the backend refuses that at load rather than report, or gate, a precision that never ran.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BackendError, BundleError, MissingDependencyError
from ..kernels.graph_io import FRAME, ROIS
from .base import Backend, BackendOption

if TYPE_CHECKING:  # annotations only: a backend module imports light (the CLI reads its declarations)
    import numpy as np

    from ..bundle import Bundle, ModelEntry
    from ..kernels.reference import PreprocessSpec


class ExecutionPrecision(str, Enum):
    """What OpenVINO may use for the parts of the graph that are not already INT8."""

    F32 = "f32"     # the numbers the FP32 reference and the INT8 gate were measured with
    BF16 = "bf16"   # faster on CPUs with AVX-512 BF16 / AMX; must pass the gate first


class OpenVinoBackend(Backend):
    name = "openvino"
    display_name = "OpenVINO"
    tag = "ov"
    requires = "openvino"
    options = (BackendOption(
        "execution_precision", tuple(p.value for p in ExecutionPrecision), ExecutionPrecision.F32.value,
        "openvino only: precision of the graph's float parts (default f32, the numbers the gate approved; "
        "bf16 is faster on CPUs with AVX-512 BF16/AMX and must pass 'edge-thyroid verify' first)."),)

    @classmethod
    def from_bundle(cls, bundle: "Bundle", entry: "ModelEntry", *, threads: int | None = None,
                    **options: Any) -> "OpenVinoBackend":
        """Preprocessing on the host (the bundle's spec) with networks for up to every modality's pane,
        unless the caller says otherwise (``preprocessing=None``: the fused graph as exported)."""
        options.setdefault("preprocessing", bundle.manifest.preprocessing)
        # A branch sees one pane per frame; other batch sizes are compiled when first asked for.
        options.setdefault("max_panes", 1 if bundle.manifest.branched else len(bundle.manifest.modalities))
        return cls(bundle.path(entry.file), threads=threads, **options)

    def __init__(self, model_path: str | Path, *, threads: int | None = None, device: str = "CPU",
                 execution_precision: ExecutionPrecision | str = ExecutionPrecision.F32,
                 preprocessing: PreprocessSpec | None = None, max_panes: int = 3) -> None:
        """``preprocessing`` None: run the fused graph as exported (preprocessing inside OpenVINO).
        ``max_panes``: networks for 1..max_panes panes are compiled at load, because compiling one
        mid-stream (the pane cache asks for 1, 2 or 3 panes from frame to frame) stalls for ~0.2 s."""
        super().__init__(model_path, threads=threads)
        self.device = device
        try:
            self.execution_precision = ExecutionPrecision(execution_precision)
        except ValueError:
            raise BackendError(f"execution precision {execution_precision!r} is not supported; expected one of "
                               f"{[p.value for p in ExecutionPrecision]}") from None
        self.preprocessing = preprocessing
        if not isinstance(max_panes, int) or max_panes < 1:
            raise BackendError(f"max_panes {max_panes!r} is not a positive integer; expected the most panes a frame has")
        self.max_panes = max_panes
        self._core: Any = None
        self._model: Any = None
        self._config: dict[str, object] = {}
        self._networks: dict[int, tuple[Any, Any]] = {}  # pane count (0: dynamic) -> (compiled, request)
        self._preprocess: Any = None
        # graph.write_mirror_images when the graph's mirror-image copy of each pane is made here (host_mirrored_input)
        self._write_mirrors: Callable[[Any, int], None] | None = None
        self._output_names: list[str] = []
        self.version = ""

    def _load(self) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise MissingDependencyError("openvino", "openvino", "the openvino backend") from None
        core = ov.Core()
        if self.device not in core.available_devices:
            raise BackendError(f"OpenVINO device {self.device!r} is not available; this machine has {core.available_devices}")
        if not self.model_path.is_file():
            raise BundleError(f"model file {self.model_path} does not exist")
        self._config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": self.execution_precision.value}
        if self.threads:
            self._config["INFERENCE_NUM_THREADS"] = int(self.threads)
        try:
            if self.preprocessing is None:
                self._model = core.read_model(str(self.model_path))
            else:
                from ..graph import backbone_graph, host_mirrored_input, write_mirror_images
                from ..kernels.opencv_path import OpenCVPreprocessor

                backbone, mirrored = host_mirrored_input(backbone_graph(self.model_path))
                self._write_mirrors = write_mirror_images if mirrored else None
                self._model = core.read_model(backbone.SerializeToString())
                self._preprocess = OpenCVPreprocessor(self.preprocessing)
        except RuntimeError as exc:  # OpenVINO reports unreadable or unsupported models as RuntimeError
            raise BundleError(f"OpenVINO cannot load {self.model_path}: {_first_line(exc)}") from None
        except Exception as exc:  # onnx's DecodeError and friends, when the graph is cut first
            raise BundleError(f"cannot read {self.model_path} as ONNX: {_first_line(exc)}") from None
        self._core = core
        self._output_names = [port.get_any_name() for port in self._model.outputs]
        self.version = ov.__version__.split("-")[0]
        # Compile now every network a stream will ask for: a bad model fails at load, and no frame waits
        # for a compiler.
        try:
            for panes in ([0] if self.preprocessing is None else range(1, self.max_panes + 1)):
                self._network(panes)
        except BaseException:
            # close() does nothing for a backend that never finished loading: free what compiled now.
            self._close()
            raise

    def _network(self, panes: int) -> tuple[Any, Any]:
        if panes not in self._networks:
            model = self._model
            if panes:
                model = model.clone()
                size = self.preprocessing.image_size
                model.reshape([panes * (2 if self._host_mirror else 1), 3, size, size])
            try:
                compiled = self._core.compile_model(model, self.device, self._config)
            except RuntimeError as exc:
                raise BundleError(f"OpenVINO cannot compile {self.model_path}: {_first_line(exc)}") from None
            ran = executed_precision(compiled)
            if ran != self.execution_precision.value:
                # Running f32 for a bf16 request would be a silent swap: `verify --record` would file a bf16
                # gate measured in f32, and a stream would report a precision it never ran.
                raise BackendError(precision_refusal(self.execution_precision.value, ran, self._core))
            self._networks[panes] = (compiled, compiled.create_infer_request())
        return self._networks[panes]

    @property
    def _host_mirror(self) -> bool:
        return self._write_mirrors is not None

    @property
    def input_names(self) -> list[str]:
        if not self._networks:
            return []
        if self.preprocessing is not None:
            return [FRAME, ROIS]  # what the engine feeds; the backbone's "pixels" is internal
        compiled, _ = next(iter(self._networks.values()))
        return [port.get_any_name() for port in compiled.inputs]

    @property
    def providers(self) -> list[str]:
        if not self._networks:
            return []
        compiled, _ = next(iter(self._networks.values()))
        actual = executed_precision(compiled)
        where = "preprocessing in the graph"
        if self.preprocessing is not None:
            where = "OpenCV preprocessing" + (" and mirror images" if self._host_mirror else "") + " on the host"
        return [f"OpenVINO {self.version} {self.device} ({actual}; {where})"]

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.preprocessing is None:
            _, request = self._network(0)
            results = request.infer(dict(feeds), share_outputs=True)
        else:
            rois = feeds[ROIS]
            _, request = self._network(len(rois))
            # Preprocess straight into the request's own input tensor: no staging array per frame and no
            # copy of it into the request (infer() with inputs copies them unless shared).
            pixels = request.get_input_tensor(0).data
            count = len(rois)
            self._preprocess(feeds[FRAME], rois, out=pixels[:count])
            if self._write_mirrors is not None:
                self._write_mirrors(pixels, count)
            results = request.infer(share_outputs=True)
        # The request owns these buffers and overwrites them on the next call (the pane cache keeps maps):
        # one copy each, made here (share_outputs=False would copy them too, then this would be a second).
        return {name: results[i].copy() for i, name in enumerate(self._output_names)}

    def _close(self) -> None:
        self._networks.clear()
        self._model = self._core = self._preprocess = None


def executed_precision(compiled: Any) -> str:
    """The precision OpenVINO runs a compiled model's float parts in ("f32", "bf16", ...)."""
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    return hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)


CPU_SUPPORT = {"bf16": "AVX-512 BF16 or AMX"}


def precision_refusal(asked: str, ran: str, core: Any = None) -> str:
    """One line: OpenVINO compiled the float parts in ``ran``, not the ``asked`` precision, and what to do."""
    capabilities = ""
    if core is not None:
        try:
            capabilities = f" (this CPU offers {' '.join(core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES'))})"
        except RuntimeError:
            pass
    return (f"OpenVINO runs this model's float parts in {ran}, not in {asked} as --execution-precision asked"
            f"{capabilities}; {asked} needs a CPU with {CPU_SUPPORT.get(asked, 'support for it')}, expected "
            f"--execution-precision {ran} on this machine")


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)[:300]
