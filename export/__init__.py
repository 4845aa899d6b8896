"""Build-time tooling (needs the ``export`` extra: torch, torchvision, onnx).

Model definitions, training, ONNX export with fused preprocessing, quantization and TensorRT builds.
The runtime (:mod:`edge_thyroid`) never imports this package.
"""
