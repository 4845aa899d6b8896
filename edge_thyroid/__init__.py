"""edge_thyroid: an edge inference engine for multimodal thyroid ultrasound classification.

The runtime imports numpy, OpenCV and ONNX Runtime only (TensorRT when asked); torch is build-time.
"""

__version__ = "0.1.0"
