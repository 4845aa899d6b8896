"""Fused preprocessing kernels: crop 1..N pane ROIs out of a captured frame, resize each to SxS,
BGR->RGB, normalize and lay out NCHW.

Every implementation computes the same function, defined by :mod:`.reference` (the oracle):
bilinear interpolation with half-pixel centres and clamp-to-edge, no anti-aliasing, in float.
The model is trained through exactly this transform, so what it saw in training is what it sees
in the field.
"""

from .reference import PreprocessSpec, preprocess_reference

__all__ = ["PreprocessSpec", "preprocess_reference"]
