"""INT8 (calibrated QDQ) and FP16 models: what got quantized (node counts), numerics against the FP32
model, the calibration data path and its cache, and the export command's options."""

import json

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from edge_thyroid.bundle import load_bundle
from edge_thyroid.cli import cli, main
from edge_thyroid.errors import InputError
from edge_thyroid.frames import Pane
from edge_thyroid.head import FusionHead, pool
from edge_thyroid.kernels.reference import PreprocessSpec, preprocess_reference

from .conftest import needs_torch, screen_frame, ultrasound_like

pytestmark = needs_torch

SIZE = 64
SPEC = PreprocessSpec(image_size=SIZE)
FRAMES = 6
ROIS = np.array([[20, 50, 600, 620], [660, 50, 600, 620], [700, 300, 211, 97]], dtype=np.int64)
# INT8 budgets for an untrained ResNet50 at 64 px (a trained model is judged by the accuracy gate):
# pooled features keep their direction (cosine), p(malignant) moves by at most DP_BUDGET.
COSINE_MIN = 0.99
DP_BUDGET = 0.02
# FP16 weights and arithmetic: relative error of the feature maps.
FP16_RTOL = 5e-3


def write_frames(folder, count, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        h, w = 120 + 10 * i, 160 + 7 * i
        cv2.imwrite(str(folder / f"frame_{i:02d}.png"), ultrasound_like(h, w, seed=seed + i))
    return folder


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory):
    return write_frames(tmp_path_factory.mktemp("calib") / "frames", FRAMES)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def backbone(random_model):
    from edge_thyroid.export.onnx_export import export_backbone_onnx

    return export_backbone_onnx(random_model, SIZE)


@pytest.fixture(scope="module")
def frames(calib_dir):
    from edge_thyroid.export.calibration import calibration_set

    return calibration_set(calib_dir, count=FRAMES)


@pytest.fixture(scope="module")
def quantized(backbone, frames, cache_dir):
    from edge_thyroid.export.quantize import quantize_backbone

    return quantize_backbone(backbone, frames, SPEC, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def reference_maps(backbone):
    return fused_maps(backbone)


def session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def fused_maps(model):
    from edge_thyroid.export.quantize import fuse_preprocessing

    return session(fuse_preprocessing(model, SPEC)).run(None, {"frame": screen_frame(), "rois": ROIS})[0]


# --- calibration data -------------------------------------------------------------------------

def test_calibration_pixels_are_the_engines_preprocessing(calib_dir):
    from edge_thyroid.export.calibration import PanePreprocessor
    from edge_thyroid.frames import read_image

    image = sorted(calib_dir.iterdir())[3]
    frame = read_image(image)
    pixels = PanePreprocessor(SPEC)(frame)
    expected = preprocess_reference(frame, [(0, 0, frame.shape[1], frame.shape[0])], SPEC, dtype=np.float64)
    assert pixels.shape == (1, 3, SIZE, SIZE)
    np.testing.assert_allclose(pixels, expected, rtol=0, atol=1e-3)  # the in-graph preprocessing's tolerance


def test_reader_protocol_batches_ranges_and_rewinds():
    from onnxruntime.quantization import CalibrationDataReader

    from edge_thyroid.export.calibration import PixelsReader

    pixels = np.arange(10 * 3 * 4 * 4, dtype=np.float32).reshape(10, 3, 4, 4)
    reader = PixelsReader(pixels, batch_size=4)
    assert isinstance(reader, CalibrationDataReader) and len(reader) == 10
    sizes = [len(batch["pixels"]) for batch in iter(reader.get_next, None)]
    assert sizes == [4, 4, 2]
    reader.rewind()
    np.testing.assert_array_equal(reader.get_next()["pixels"], pixels[:4])
    reader.set_range(8, 20)
    batch = reader.get_next()
    np.testing.assert_array_equal(batch["pixels"], pixels[8:10])
    assert reader.get_next() is None
    with pytest.raises(InputError, match="expected \\[N>0, 3, S, S\\]"):
        PixelsReader(np.zeros((0, 3, 4, 4), np.float32))


def test_csv_calibration_takes_only_the_training_side(tmp_path):
    from edge_thyroid.dataset import read_samples, split_by_case
    from edge_thyroid.export.calibration import calibration_set

    images = write_frames(tmp_path / "images", 16)
    rows = ["image,label,case_id"] + [f"images/frame_{i:02d}.png,{'malignant' if i % 3 else 'benign'},{i // 2}"
                                      for i in range(16)]
    csv = tmp_path / "labels.csv"
    csv.write_text("\n".join(rows) + "\n")
    train, val = split_by_case(read_samples(csv), folds=4, fold=0, seed=0)
    chosen = calibration_set(csv, count=100)
    assert set(chosen.images) == {s.image for s in train} and not set(chosen.images) & {s.image for s in val}
    subset = calibration_set(csv, count=3)
    assert len(subset.images) == 3 and set(subset.images) <= set(chosen.images)
    assert calibration_set(csv, count=3).images == subset.images  # seeded: reproducible
    before = subset.digest()
    cv2.imwrite(str(subset.images[0]), ultrasound_like(50, 60, seed=99))
    assert subset.digest() != before  # the digest follows content, not names
    assert images.is_dir()


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "absent", "not found"),
    (lambda p: p, "holds no images"),
])
def test_calibration_data_errors(tmp_path, make, message):
    from edge_thyroid.export.calibration import calibration_set

    with pytest.raises(InputError, match=message):
        calibration_set(make(tmp_path), count=4)
    with pytest.raises(InputError, match="at least 1"):
        calibration_set(tmp_path, count=0)


# --- INT8 -------------------------------------------------------------------------------------

def test_every_convolution_is_int8_and_preprocessing_stays_float(quantized):
    from edge_thyroid.export.quantize import fuse_preprocessing, node_counts

    report = quantized.report
    assert report["convolutions"] == {"convs": 53, "int8_convs": 53, "float_convs": []}
    after = report["nodes"]["after"]
    assert after["QuantizeLinear"] >= 53 and after["DequantizeLinear"] >= 2 * 53
    assert report["scheme"]["activations"] == "uint8" and report["scheme"]["weights_per_channel"]
    assert report["data"]["count"] == FRAMES and len(report["data"]["sha256"]) == 64
    fused = fuse_preprocessing(quantized.model, SPEC)
    counts = node_counts(fused)
    assert counts["Loop"] == 1 and counts["Resize"] == 1
    loop = next(n for n in fused.graph.node if n.op_type == "Loop")
    assert not {"QuantizeLinear", "DequantizeLinear"} & {n.op_type for n in loop.attribute[0].g.node}
    # The first quantization happens on the preprocessed pixels, after the float normalization.
    first_q = next(n for n in fused.graph.node if n.op_type == "QuantizeLinear")
    producer = next(n for n in fused.graph.node if first_q.input[0] in n.output)
    assert producer.op_type == "Add" and producer.output[0] == "pre/pixels"
    # Quantized weights are stored as int8, per output channel.
    initializers = {i.name: i for i in quantized.model.graph.initializer}
    weight_dq = [n for n in quantized.model.graph.node if n.op_type == "DequantizeLinear"
                 and n.input[0] in initializers and len(initializers[n.input[0]].dims) == 4]
    assert len(weight_dq) == 53
    for node in weight_dq:  # int8 weights, one scale and zero point per output channel
        weight, scale = initializers[node.input[0]], initializers[node.input[1]]
        assert weight.data_type == onnx.TensorProto.INT8 and list(scale.dims) == [weight.dims[0]]
    inputs = {i.name: i.type.tensor_type.elem_type for i in fused.graph.input}
    assert inputs == {"frame": onnx.TensorProto.UINT8, "rois": onnx.TensorProto.INT64}
    assert fused.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_int8_tracks_fp32(reference_maps, quantized, random_model):
    from edge_thyroid.export.models import head_arrays

    reference, int8 = reference_maps, fused_maps(quantized.model)
    assert int8.shape == reference.shape == (3, 2048, 2, 2)
    a, b = pool(reference), pool(int8)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() >= COSINE_MIN
    arrays = head_arrays(random_model)
    head = FusionHead(random_model.modalities, arrays["weight"], arrays["presence_bias"], float(arrays["bias"]))
    for panes in ({"bmode": 0}, {"bmode": 0, "smi": 1, "swe": 2}):
        p_ref = head.predict({m: a[i] for m, i in panes.items()}).probability
        p_int8 = head.predict({m: b[i] for m, i in panes.items()}).probability
        assert abs(p_ref - p_int8) <= DP_BUDGET
    assert not np.array_equal(a, b)  # it really is a different (quantized) model


def test_calibration_cache_hits_and_keys_on_method(backbone, frames, quantized, cache_dir, tmp_path):
    from onnxruntime.quantization.calibrate import load_tensors_data

    from edge_thyroid.export.calibration import METHODS, CalibrationOptions, calibrate
    from edge_thyroid.export.quantize import model_sha256, prepare, quantize_backbone

    assert quantized.report["cache"]["hit"] is False
    again = quantize_backbone(backbone, frames, SPEC, cache_dir=cache_dir)
    assert again.report["cache"] == {"key": quantized.report["cache"]["key"], "hit": True}
    assert again.model.SerializeToString() == quantized.model.SerializeToString()

    digest = model_sha256(backbone)
    assert digest == quantized.report["backbone_sha256"]
    prepared = prepare(backbone, tmp_path, digest)
    assert calibrate(prepared, digest, frames, SPEC, CalibrationOptions(), cache_dir).key == quantized.report["cache"]["key"]
    minmax = calibrate(prepared, digest, frames, SPEC, CalibrationOptions(frame_average=False), cache_dir)
    assert not minmax.cache_hit and minmax.key != quantized.report["cache"]["key"]
    averaged = {name: data.range_value for name, data in load_tensors_data(calibrate(
        prepared, digest, frames, SPEC, CalibrationOptions(), cache_dir).ranges_path).items()}
    entropy = calibrate(prepared, digest, frames, SPEC, CalibrationOptions(METHODS["entropy"], entropy_bins=256), cache_dir)
    assert not entropy.cache_hit and entropy.key != minmax.key
    low_high = {name: data.range_value for name, data in load_tensors_data(minmax.ranges_path).items()}
    clipped = {name: data.range_value for name, data in load_tensors_data(entropy.ranges_path).items()}
    assert low_high.keys() == clipped.keys()
    # Entropy clips outliers: ranges only shrink, and some do (ORT's default 128 bins would equal min-max).
    widths = {n: (np.ptp(np.ravel(low_high[n])), np.ptp(np.ravel(clipped[n]))) for n in low_high}
    assert all(b <= a * (1 + 1e-5) for a, b in widths.values())
    assert sum(b < 0.9 * a for a, b in widths.values()) >= 10
    # Averaging per-frame ranges lies inside the extremes, and strictly inside where frames differ.
    inner = {n: np.ptp(np.ravel(averaged[n])) for n in low_high}
    assert all(inner[n] <= widths[n][0] * (1 + 1e-5) for n in low_high)
    assert sum(inner[n] < 0.95 * widths[n][0] for n in low_high) >= 10


def test_calibration_passes_keep_batch_shapes_uniform():
    from edge_thyroid.export.calibration import METHODS, CalibrationOptions

    entropy = CalibrationOptions(METHODS["entropy"], batch_size=8, batches_per_pass=4)
    assert entropy.passes(100) == (8, [(0, 32), (32, 64), (64, 96), (96, 100)])
    assert entropy.passes(30) == (8, [(0, 24), (24, 30)])  # a partial batch never shares a pass
    assert CalibrationOptions().passes(100) == (1, [(0, 100)])  # per-frame ranges: one frame per batch, one pass
    assert CalibrationOptions(frame_average=False).passes(40) == (8, [(0, 32), (32, 40)])


def test_histogram_calibration_with_a_partial_last_batch(backbone, frames, tmp_path):
    """Six frames in batches of four: the histogram collector must never see two batch shapes at once."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    from edge_thyroid.export.calibration import METHODS, CalibrationOptions, calibrate
    from edge_thyroid.export.quantize import model_sha256, prepare

    digest = model_sha256(backbone)
    options = CalibrationOptions(METHODS["percentile"], batch_size=4, percentile=99.9, percentile_bins=256)
    result = calibrate(prepare(backbone, tmp_path, digest), digest, frames, SPEC, options, tmp_path / "cache")
    ranges = load_tensors_data(result.ranges_path)
    assert len(ranges.data) > 100 and ranges.calibration_method.name == "Percentile"


def test_fp32_layers_stay_float(backbone, frames, cache_dir):
    from edge_thyroid.export.quantize import QuantConfig, conv_quantization, quantize_backbone

    result = quantize_backbone(backbone, frames, SPEC, QuantConfig(fp32_layers=("first", "last")), cache_dir=cache_dir)
    convs = conv_quantization(result.model)
    assert convs["int8_convs"] == 51 and convs["float_convs"] == result.report["fp32_layers"]
    assert result.report["cache"]["hit"] is True  # exclusions do not change the calibrated ranges
    # A module keeps all of it in float, residual additions included; "stem" is everything before layer1.
    mixed = quantize_backbone(backbone, frames, SPEC, QuantConfig(fp32_layers=("stem", "layer1")), cache_dir=cache_dir)
    convs = conv_quantization(mixed.model)
    assert convs["convs"] == 53 and convs["int8_convs"] == 53 - 1 - 10
    excluded = mixed.report["fp32_layers"]
    assert "/conv1/Conv" in excluded and "/maxpool/MaxPool" in excluded
    assert sum(name.startswith("/layer1/") and name.endswith("/Add") for name in excluded) == 3
    assert not any(name.startswith("/layer2/") for name in excluded)
    with pytest.raises(InputError, match="not in the backbone"):
        quantize_backbone(backbone, frames, SPEC, QuantConfig(fp32_layers=("layer9",)), cache_dir=cache_dir)


# --- FP16 -------------------------------------------------------------------------------------

def test_fp16_has_half_weights_float_io_and_float_preprocessing(backbone, reference_maps):
    from edge_thyroid.export.quantize import convert_fp16, fuse_preprocessing

    half = convert_fp16(backbone)
    types = {i.data_type for i in half.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types and onnx.TensorProto.FLOAT not in types
    fused = fuse_preprocessing(half, SPEC)
    loop = next(n for n in fused.graph.node if n.op_type == "Loop")
    casts = [a.i for n in loop.attribute[0].g.node if n.op_type == "Cast" for a in n.attribute if a.name == "to"]
    assert casts == [onnx.TensorProto.FLOAT]  # the resize runs in float32
    assert fused.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    reference, fp16 = reference_maps, fused_maps(half)
    assert fp16.dtype == np.float32
    np.testing.assert_allclose(fp16, reference, rtol=0, atol=FP16_RTOL * np.abs(reference).max())
    assert not np.array_equal(fp16, reference)


# --- the export command -------------------------------------------------------------------------

def test_int8_only_export_is_small_hits_the_cache_and_is_the_default(tmp_path, calib_dir, cache_dir, quantized):
    out = tmp_path / "int8"
    result = CliRunner().invoke(cli, ["export", "--random-init", "--image-size", str(SIZE), "-o", str(out),
                                      "--precision", "int8", "--calib", str(calib_dir), "--calib-count", str(FRAMES),
                                      "--no-keep-fp32", "--cache-dir", str(cache_dir), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert sorted(summary["files"]) == ["head.npz", "manifest.json", "model.int8.onnx"]
    bundle = load_bundle(out)
    manifest = bundle.manifest
    assert list(manifest.models) == ["int8"]
    calibration = manifest.calibration
    assert calibration["cache"]["hit"] is True  # the same model and frames were calibrated above
    assert calibration["data"]["sha256"] == quantized.report["data"]["sha256"]
    assert calibration["method"] == "minmax" and calibration["convolutions"]["int8_convs"] == 53
    assert (out / "model.int8.onnx").stat().st_size < 0.3 * 94e6  # int8 weights: a quarter of the fp32 file
    from edge_thyroid.engine import Engine

    with Engine(out) as engine:
        assert engine.model_key == "int8"
        prediction = engine.classify(screen_frame(), [Pane("bmode", tuple(ROIS[0]))])
    assert 0.0 <= prediction.probability <= 1.0 and prediction.panes[0].feature_maps.shape == (2048, 2, 2)


@pytest.mark.parametrize("args, message", [
    (["--precision", "int8"], "needs --calib"),
    (["--precision", "fp32", "--no-keep-fp32"], "without a model"),
    (["--precision", "int8", "--calib", "/nonexistent/frames"], "not found"),
    (["--precision", "fp16", "--calib", "x.csv"], "only applies to --precision int8"),
])
def test_export_option_errors(tmp_path, args, message, capsys):
    out = tmp_path / "b"
    with pytest.raises(SystemExit) as exc:
        main(["export", "--random-init", "--image-size", str(SIZE), "-o", str(out), *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_layer_names_resolve_under_a_wrappers_scope():
    """The mirror-image average exports the backbone as "/features/...": "stem" must still stop at the
    first residual stage (it once took every node, so nothing was quantized) and modules must resolve."""
    from onnx import helper

    from edge_thyroid.export.quantize import resolve_layers

    names = [("/features/conv1/Conv", "Conv"), ("/features/relu/Relu", "Relu"), ("/features/maxpool/MaxPool", "MaxPool"),
             ("/features/layer1/layer1.0/conv1/Conv", "Conv"), ("/features/layer1/layer1.0/Add", "Add"),
             ("/features/layer4/layer4.2/conv3/Conv", "Conv"), ("/features/layer4/layer4.2/Add", "Add")]
    nodes = [helper.make_node(op, [f"x{i}"], [f"x{i + 1}"], name=name) for i, (name, op) in enumerate(names)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x0", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info(f"x{len(names)}", onnx.TensorProto.FLOAT, [1])])
    model = helper.make_model(graph)
    assert resolve_layers(model, ["stem"]) == [n for n, _ in names[:3]]
    assert resolve_layers(model, ["layer4"]) == [n for n, _ in names[5:]]
    assert resolve_layers(model, ["layer1/layer1.0"]) == [n for n, _ in names[3:5]]
    assert resolve_layers(model, ["last"]) == ["/features/layer4/layer4.2/conv3/Conv"]
    with pytest.raises(InputError, match="not in the backbone"):
        resolve_layers(model, ["layer2"])
