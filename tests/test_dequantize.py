"""The FP32 reconstruction of a QDQ model: exact where the weights are representable, within the
activations' quantization error of the INT8 model, and the same network as the float model."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_thyroid.errors import BundleError
from edge_thyroid_bench.dequantize import dequantized_graph

RNG = np.random.default_rng(7)
C_IN, C_MID, C_OUT = 3, 4, 5
X_SCALE, X_ZERO = np.float32(2.0 ** -5), np.uint8(128)   # inputs in [-4, 3.97]


def _weights(out_channels: int, in_channels: int) -> tuple[np.ndarray, np.ndarray]:
    """int8 weights and per-channel power-of-two scales: (q * scale) is exact in float32."""
    q = RNG.integers(-127, 128, (out_channels, in_channels, 3, 3)).astype(np.int8)
    scales = (2.0 ** -np.arange(6, 6 + out_channels)).astype(np.float32)
    return q, scales


Q1, S1 = _weights(C_MID, C_IN)
Q2, S2 = _weights(C_OUT, C_MID)
B1 = RNG.integers(-500, 500, C_MID).astype(np.int32)   # bias in units of X_SCALE * S1, as quantizers write it
W1 = (Q1 * S1[:, None, None, None]).astype(np.float32)
W2 = (Q2 * S2[:, None, None, None]).astype(np.float32)
BIAS1 = (B1 * (X_SCALE * S1)).astype(np.float32)
BIAS2 = np.zeros(C_OUT, np.float32)


def _float_model() -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("Conv", ["a", "w2", "b2"], ["y"], pads=[1, 1, 1, 1])]
    inits = [numpy_helper.from_array(v, n) for n, v in (("w1", W1), ("b1", BIAS1), ("w2", W2), ("b2", BIAS2))]
    return _model(nodes, inits)


def _qdq_model(activation_scale: np.float32) -> onnx.ModelProto:
    """The float model as a QDQ quantizer writes it: int8 weights behind DequantizeLinear, the input
    and the ReLU's output quantized to uint8, the ReLU folded into a zero point of 0."""
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
        helper.make_node("DequantizeLinear", ["q1", "s1", "z1"], ["w1"], axis=0),
        helper.make_node("DequantizeLinear", ["bq1", "sb1"], ["b1"], axis=0),
        helper.make_node("Conv", ["xd", "w1", "b1"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("QuantizeLinear", ["h", "sa", "za"], ["aq"]),
        helper.make_node("DequantizeLinear", ["aq", "sa", "za"], ["a"]),
        helper.make_node("DequantizeLinear", ["q2", "s2", "z2"], ["w2"], axis=0),
        helper.make_node("Conv", ["a", "w2", "b2"], ["y"], pads=[1, 1, 1, 1]),
    ]
    values = {"sx": X_SCALE, "zx": X_ZERO, "q1": Q1, "s1": S1, "z1": np.zeros(C_MID, np.int8), "bq1": B1,
              "sb1": (X_SCALE * S1).astype(np.float32), "sa": activation_scale, "za": np.uint8(0), "q2": Q2,
              "s2": S2, "z2": np.zeros(C_OUT, np.int8), "b2": BIAS2}
    return _model(nodes, [numpy_helper.from_array(np.asarray(v), n) for n, v in values.items()])


def _model(nodes, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C_IN, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C_OUT, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray, name: str = "y") -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run([name], {"x": x})[0]


def _inputs() -> np.ndarray:
    return RNG.uniform(-3.9, 3.9, (1, C_IN, 8, 8)).astype(np.float32)


def _activation_scale(x: np.ndarray) -> np.float32:
    """uint8 range [0, 255 * scale] covering the ReLU's output: no saturation, only rounding."""
    model = _float_model()
    model.graph.output.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, C_MID, 8, 8]))
    return np.float32(max(float(_run(model, x, "h").max()), 1e-3) * 1.01 / 255.0)


def test_reconstruction_is_the_float_model_when_weights_are_representable():
    x = _inputs()
    reconstruction = dequantized_graph(_qdq_model(_activation_scale(x)))
    assert [n.op_type for n in reconstruction.graph.node] == ["Conv", "Relu", "Conv"]
    weights = {i.name: numpy_helper.to_array(i) for i in reconstruction.graph.initializer}
    for name, expected in (("w1", W1), ("b1", BIAS1), ("w2", W2), ("b2", BIAS2)):
        np.testing.assert_array_equal(weights[name], expected.astype(np.float32), err_msg=name)
    np.testing.assert_array_equal(_run(reconstruction, x), _run(_float_model(), x))


def test_reconstruction_is_within_the_activation_quantization_error_of_the_int8_model():
    x = _inputs()
    scale = _activation_scale(x)
    quantized = _qdq_model(scale)
    int8_out = _run(quantized, x)
    float_out = _run(dequantized_graph(quantized), x)
    # The two differ only by rounding the input (<= X_SCALE/2) and the ReLU's output (<= scale/2):
    # |dh| <= sum|w1| * X_SCALE/2 per channel, |da| <= |dh| + scale/2, |dy| <= sum|w2| * max|da|.
    dh = np.abs(W1).sum(axis=(1, 2, 3)) * X_SCALE / 2
    da = dh.max() + scale / 2
    bound = np.abs(W2).sum(axis=(1, 2, 3)) * da
    error = np.abs(int8_out - float_out).max(axis=(0, 2, 3))
    assert np.all(error <= bound * (1 + 1e-5)), (error, bound)
    assert np.abs(int8_out - float_out).max() > 0  # the INT8 model really is quantized


def test_the_callers_model_is_not_modified():
    quantized = _qdq_model(np.float32(0.05))
    before = quantized.SerializeToString()
    dequantized_graph(quantized)
    assert quantized.SerializeToString() == before


def test_qoperator_models_are_refused_with_the_reason():
    node = helper.make_node("QLinearConv", ["x", "s", "z", "w", "s", "z", "s", "z"], ["y"])
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("y", TensorProto.UINT8, None)])
    with pytest.raises(BundleError, match=r"QLinearConv.*expects QDQ"):
        dequantized_graph(helper.make_model(graph))
