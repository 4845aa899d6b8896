"""The in-graph preprocessing: an ONNX subgraph that takes the frame as captured and the pane ROIs
and produces the normalized NCHW batch, so no Python preprocessing runs per frame.

    frame uint8 [H, W, 3] (BGR), rois int64 [N, 4] (x, y, w, h)  ->  pixels float32 [N, 3, S, S]

Per pane (an ONNX Loop over the ROIs): Slice the crop while still uint8 (only the pane's pixels are
touched), Cast to float, Resize with sizes=[S, S] on axes [1, 2] of a 1 x h x w x 3 view (ORT's fast
NHWC bilinear path; half_pixel, no anti-aliasing: the reference's definition). After the loop: one
Transpose to NCHW, a Gather for BGR->RGB, and one Mul + Add for the per-channel affine
``(x / 255 - mean) / std``.

Orderings tried (3 panes of 600x600 from a 1080p frame, ORT 1.32, 2 threads, 2-core CPU under load;
see benchmarks/results/preprocess.md):

* Resize the uint8 crop, Transpose while uint8, Gather, Cast, one BatchNormalization (DESIGN.md's
  ordering): ~20% faster, but ORT's uint8 bilinear *truncates*: a -0.5 level bias on every pixel,
  up to 1.28 levels off (0.022 normalized). The model is trained through the float reference, so
  this is not taken.
* Gathering only the 2S source rows before the Cast (less to convert), a Scan instead of the Loop,
  BatchNormalization instead of Mul + Add, a fully vectorized GatherElements version with no Loop
  (4 taps per output gathered from the flat frame, AveragePool for the blend): all within +-10% of
  this graph or slower. The cost is ORT's float NHWC Resize (~3.5 ns per output value) and the
  Cast of the crop, neither of which standard ONNX ops avoid.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .graph_io import FRAME, PIXELS, ROIS
from .reference import PreprocessSpec

OPSET = 18  # Resize's ``axes`` attribute needs opset 18.


def _const(name: str, values, dtype=np.int64) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(values, dtype=dtype), name))


def _loop_body(size: int) -> onnx.GraphProto:
    nodes = [
        _const("b_yx_index", [1, 0]),
        _const("b_hw_index", [3, 2]),
        _const("b_axes01", [0, 1]),
        _const("b_zero", [0]),
        _const("b_sizes", [size, size]),
        helper.make_node("Gather", [ROIS, "iteration"], ["b_roi"], axis=0),
        helper.make_node("Gather", ["b_roi", "b_yx_index"], ["b_starts"], axis=0),
        helper.make_node("Gather", ["b_roi", "b_hw_index"], ["b_extent"], axis=0),
        helper.make_node("Add", ["b_starts", "b_extent"], ["b_ends"]),
        helper.make_node("Slice", [FRAME, "b_starts", "b_ends", "b_axes01"], ["b_crop"]),
        helper.make_node("Cast", ["b_crop"], ["b_crop_float"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["b_crop_float", "b_zero"], ["b_crop_nhwc"]),
        helper.make_node("Resize", ["b_crop_nhwc", "", "", "b_sizes"], ["b_resized"], axes=[1, 2], mode="linear",
                         coordinate_transformation_mode="half_pixel", antialias=0),
        helper.make_node("Squeeze", ["b_resized", "b_zero"], ["pane"]),
        helper.make_node("Identity", ["condition"], ["condition_out"]),
    ]
    return helper.make_graph(
        nodes, "pane_crop_resize",
        inputs=[helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
                helper.make_tensor_value_info("condition", TensorProto.BOOL, [])],
        outputs=[helper.make_tensor_value_info("condition_out", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("pane", TensorProto.FLOAT, [size, size, 3])],
    )


def build_preprocess_graph(spec: PreprocessSpec, output_name: str = PIXELS) -> onnx.ModelProto:
    """A standalone ONNX model: (frame, rois) -> normalized pixels [N, 3, S, S]."""
    spec.validate()
    size = spec.image_size
    mean = np.asarray(spec.mean, dtype=np.float64)
    std = np.asarray(spec.std, dtype=np.float64)
    scale = (1.0 / (255.0 * std)).reshape(1, 3, 1, 1).astype(np.float32)
    shift = (-mean / std).reshape(1, 3, 1, 1).astype(np.float32)
    nodes = [
        helper.make_node("Shape", [ROIS], ["roi_shape"]),
        _const("zero_index", 0),
        helper.make_node("Gather", ["roi_shape", "zero_index"], ["pane_count"], axis=0),
        helper.make_node("Constant", [], ["loop_true"], value=helper.make_tensor("loop_true", TensorProto.BOOL, [], [True])),
        helper.make_node("Loop", ["pane_count", "loop_true"], ["panes_bgr_nhwc"], body=_loop_body(size)),
        helper.make_node("Transpose", ["panes_bgr_nhwc"], ["panes_bgr"], perm=[0, 3, 1, 2]),
        _const("bgr_to_rgb", [2, 1, 0]),
        helper.make_node("Gather", ["panes_bgr", "bgr_to_rgb"], ["panes_rgb"], axis=1),
        helper.make_node("Constant", [], ["norm_scale"], value=numpy_helper.from_array(scale, "norm_scale")),
        helper.make_node("Constant", [], ["norm_shift"], value=numpy_helper.from_array(shift, "norm_shift")),
        helper.make_node("Mul", ["panes_rgb", "norm_scale"], ["panes_scaled"]),
        helper.make_node("Add", ["panes_scaled", "norm_shift"], [output_name]),
    ]
    graph = helper.make_graph(
        nodes, "edge_thyroid_preprocess",
        inputs=[helper.make_tensor_value_info(FRAME, TensorProto.UINT8, ["height", "width", 3]),
                helper.make_tensor_value_info(ROIS, TensorProto.INT64, ["panes", 4])],
        outputs=[helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["panes", 3, size, size])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edge_thyroid")
    onnx.checker.check_model(model)
    return model


class InGraphPreprocessor:
    """The preprocessing graph run alone in ONNX Runtime, in the NumPy calling convention of the
    other paths (checks and benchmarks). Grayscale frames are replicated to 3 channels first: the
    graph's input is HxWx3."""

    def __init__(self, spec: PreprocessSpec, threads: int | None = None, spinning: bool = True) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        if not spinning:
            # Idle ORT threads otherwise spin for a while after each run and steal the CPU from
            # whatever runs next (matters when paths are interleaved on a 2-core machine).
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.spec = spec
        self.session = ort.InferenceSession(build_preprocess_graph(spec).SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])

    def __call__(self, frame: np.ndarray, rois) -> np.ndarray:
        from .reference import as_bgr, validate_rois

        bgr = np.ascontiguousarray(as_bgr(frame))
        boxes = validate_rois(rois, bgr.shape[0], bgr.shape[1])
        return self.session.run(None, {FRAME: bgr, ROIS: boxes})[0]
