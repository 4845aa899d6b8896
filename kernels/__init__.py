"""Fused preprocessing kernels: crop 1..N pane ROIs out of a captured frame, resize each to SxS,
BGR->RGB, normalize and lay out NCHW.

Every implementation computes the same function, defined by :mod:`.reference` (the oracle):
bilinear interpolation with half-pixel centres and clamp-to-edge, no anti-aliasing, in float.
The model is trained through exactly this transform, so what it saw in training is what it sees
in the field.

- :mod:`.reference`: float64 NumPy, written for clarity.
- :mod:`.numpy_path`: NumPy float32, gathering only the bilinear taps (no OpenCV needed).
- :mod:`.opencv_path`: the CPU fast path (cv2.resize + blobFromImagesWithParams) for graphs without
  preprocessing.
- :mod:`.onnx_graph`: the in-graph version fused in front of the exported model.
- :mod:`.triton_kernel`: the GPU kernel (triton/torch imported lazily).
- :mod:`.check`: ``check_kernel``, the one equality check every implementation passes.
"""


from __future__ import annotations

from typing import Any

__all__ = ["PreprocessSpec", "preprocess_reference"]


def __getattr__(name: str) -> Any:
    # Resolved on first use, so importing a light submodule (graph_io) does not import NumPy.
    if name in __all__:
        from . import reference

        return getattr(reference, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
