"""edge_thyroid: an edge inference engine for multimodal thyroid ultrasound classification.

The runtime imports numpy, OpenCV and ONNX Runtime only (TensorRT when asked); torch is build-time.
"""

__version__ = "0.1.0"

from .inputs import silence_native_logging as _silence_native_logging

# Before anything imports cv2: OpenCV's and FFmpeg's warnings become our one-line errors, not noise.
_silence_native_logging()
