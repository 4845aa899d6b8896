"""The openvino backend against ONNX Runtime (the reference runtime every gate was measured with):
the same feature maps and p(malignant) within per-precision tolerances, host preprocessing equal to
the in-graph one, one lifecycle, clear errors, and the CLI/bench wiring."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from edge_thyroid.cli import main
from edge_thyroid.commands.stream import DEMO_BUNDLE, DEMO_CLIP, DEMO_LAYOUT, data_path
from edge_thyroid.engine import Engine
from edge_thyroid.errors import BackendError, BundleError, MissingDependencyError
from edge_thyroid.frames import Pane

from .conftest import needs_torch, openvino_runs_bf16, ort_gated_demo_copy, screen_frame

pytest.importorskip("openvino")

PANES_3 = [Pane("bmode", (20, 50, 560, 620)), Pane("swe", (660, 50, 300, 620)), Pane("smi", (980, 60, 280, 500))]

# Tolerances. FP32: both runtimes compute the same float graph; observed |d maps| / max|maps| <= 2e-6.
FP32_MAP_RTOL, FP32_DP = 1e-4, 1e-4
# INT8: the runtimes requantize with different rounding, so single codes differ; p stays close.
INT8_DP = 0.02


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / max(np.abs(b).max(), 1e-12))


@needs_torch
@pytest.mark.parametrize("panes", [1, 2, 3])
def test_fp32_matches_onnxruntime(random_bundle, panes):
    frame = screen_frame(seed=panes)
    chosen = PANES_3[:panes]
    with Engine(random_bundle, threads=2) as reference, Engine(random_bundle, backend="openvino", threads=2) as engine:
        assert engine.backend.preprocessing is not None  # host (OpenCV) preprocessing by default
        expected = reference.classify(frame, chosen)
        got = engine.classify(frame, chosen)
    for want, have in zip(expected.panes, got.panes):
        assert have.feature_maps.shape == want.feature_maps.shape
        assert relative_error(have.feature_maps, want.feature_maps) <= FP32_MAP_RTOL
    assert abs(got.probability - expected.probability) <= FP32_DP


@needs_torch
def test_fused_graph_mode_equals_host_preprocessing(random_bundle):
    """preprocessing=None runs the exported graph with its preprocessing loop inside OpenVINO."""
    frame = screen_frame(seed=5)
    rois = [p.roi for p in PANES_3]
    with Engine(random_bundle, backend="openvino", threads=2) as host, \
            Engine(random_bundle, backend="openvino", threads=2, preprocessing=None) as graph:
        assert graph.backend.preprocessing is None and "in the graph" in graph.backend.providers[0]
        assert set(graph.backend.input_names) == {"frame", "rois"}
        assert relative_error(host.extract(frame, rois), graph.extract(frame, rois)) <= FP32_MAP_RTOL


@needs_torch
def test_pane_count_changes_between_frames(random_bundle):
    """The pane cache asks for 3, then 1, then 2 panes: one static network per count, all compiled at
    load (none mid-stream), right shapes."""
    frame = screen_frame(seed=2)
    with Engine(random_bundle, backend="openvino", threads=1) as engine, Engine(random_bundle, threads=1) as reference:
        assert sorted(engine.backend._networks) == [1, 2, 3]
        for count in (3, 1, 2, 3):
            rois = [p.roi for p in PANES_3[:count]]
            maps = engine.extract(frame, rois)
            assert maps.shape[0] == count
            assert relative_error(maps, reference.extract(frame, rois)) <= FP32_MAP_RTOL
        assert sorted(engine.backend._networks) == [1, 2, 3]


def test_preprocessing_into_the_request_and_maps_that_outlive_it():
    """The host path writes the pixels straight into the request's input tensor and hands back maps the
    next frame cannot overwrite (the pane cache keeps them): a kept result still equals a fresh run of
    its frame, and the pixels the network saw are the preprocessor's (the reference's, to float32)."""
    from edge_thyroid.kernels.reference import preprocess_reference

    bundle = data_path(DEMO_BUNDLE)
    first, second = screen_frame(seed=3), screen_frame(seed=4)
    rois = [p.roi for p in PANES_3]
    with Engine(bundle, backend="openvino", threads=1) as engine:
        kept = engine.extract(first, rois)
        snapshot = kept.copy()
        other = engine.extract(second, rois)
        assert np.array_equal(kept, snapshot) and not np.shares_memory(kept, other)
        assert np.array_equal(engine.extract(first, rois), snapshot)
        _, request = engine.backend._network(len(rois))
        seen = request.get_input_tensor(0).data
        expected = preprocess_reference(first, np.asarray(rois), engine.backend.preprocessing)
        # The demo bundle averages each pane with its mirror image: the host writes the mirrors after them.
        assert engine.backend._host_mirror and seen.shape[0] == 2 * len(rois)
        assert np.abs(seen[:len(rois)] - expected).max() <= 1e-4
        assert np.array_equal(seen[len(rois):], seen[:len(rois), :, :, ::-1])


def test_shipped_int8_bundle_matches_onnxruntime():
    """The demo bundle (INT8, mixed precision) needs no torch: p within the INT8 tolerance; bf16 float
    parts stay within it too on this frame (the gate on real data is benchmarks/results/gate_openvino_*.json)."""
    bundle = data_path(DEMO_BUNDLE)
    frame = screen_frame(seed=1)
    pane = [Pane("bmode", (20, 50, 580, 620))]
    with Engine(bundle, threads=2) as reference:
        expected = reference.classify(frame, pane).probability
    # A CPU without AVX-512 BF16 / AMX (e.g. a Zen3 AVX2 machine) would run a bf16 request in f32: the backend
    # refuses it there (test_a_precision_the_cpu_cannot_run_is_refused) and runs it here.
    has_bf16 = openvino_runs_bf16()
    for precision in ("f32", "bf16") if has_bf16 else ("f32",):
        with Engine(bundle, backend="openvino", threads=2, execution_precision=precision) as engine:
            assert f"({precision};" in engine.backend.providers[0]
            got = engine.classify(frame, pane).probability
        assert abs(got - expected) <= INT8_DP, precision
    if not has_bf16:
        with pytest.raises(BackendError, match=r"runs this model's float parts in f32, not in bf16"):
            Engine(bundle, backend="openvino", threads=2, execution_precision="bf16").open()


def test_a_precision_the_cpu_cannot_run_is_refused(monkeypatch, tmp_path, capsys):
    """OpenVINO compiles a bf16 request in f32 on a CPU without BF16. Running on would make `verify --record`
    file a bf16 gate measured in f32, so the backend refuses at load with one line, and the CLI exits 2.
    The CPU's answer is stood in for (this test must hold on CPUs with and without BF16)."""
    from edge_thyroid.backends import create_backend
    from edge_thyroid.backends import openvino as ov_backend

    monkeypatch.setattr(ov_backend, "executed_precision", lambda compiled: "f32")
    model = data_path(DEMO_BUNDLE) / "model.int8.onnx"
    backend = create_backend("openvino", model, threads=1, execution_precision="bf16")
    with pytest.raises(BackendError) as refused:
        backend.load()
    message = str(refused.value)
    assert "\n" not in message and "not in bf16 as --execution-precision asked" in message
    assert "expected --execution-precision f32 on this machine" in message and "this CPU offers" in message
    assert backend.input_names == [] and not backend._networks  # nothing half-loaded is kept
    with create_backend("openvino", model, threads=1, execution_precision="f32") as backend:  # what it can run
        assert set(backend.input_names) == {"frame", "rois"}

    with pytest.raises(SystemExit) as exited:
        main(["stream", str(data_path(DEMO_BUNDLE)), "--source", str(data_path(DEMO_CLIP)), "--layout",
              str(data_path(DEMO_LAYOUT)), "--backend", "openvino", "--execution-precision", "bf16", "--max-frames", "2",
              "--as-fast-as-possible", "--json-out", str(tmp_path / "records.jsonl")])
    err = capsys.readouterr().err
    refusal = [line for line in err.splitlines() if "--execution-precision" in line]
    assert exited.value.code == 2 and len(refusal) == 1 and "Traceback" not in err, err
    assert refusal[0].startswith("error: OpenVINO runs this model's float parts in f32, not in bf16 as")


def test_lifecycle_and_errors(tmp_path, monkeypatch):
    from edge_thyroid.backends import available_backends, create_backend

    assert "openvino" in available_backends()
    model = data_path(DEMO_BUNDLE) / "model.int8.onnx"
    backend = create_backend("openvino", model, threads=1)
    with pytest.raises(BackendError, match="before load"):
        backend.infer({})
    with backend:
        assert set(backend.input_names) == {"frame", "rois"}
    assert backend.input_names == []  # closed

    with pytest.raises(BackendError, match="'fp8'.*expected one of"):
        create_backend("openvino", model, execution_precision="fp8")
    with pytest.raises(BackendError, match="max_panes 0"):
        create_backend("openvino", model, max_panes=0)
    with pytest.raises(BackendError, match="'NPU9'.*not available"):
        create_backend("openvino", model, device="NPU9").load()
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(model.read_bytes()[:4096])
    with pytest.raises(BundleError, match="broken.onnx"):
        create_backend("openvino", broken).load()

    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'edge-thyroid\[openvino\]'"):
        create_backend("openvino", model).load()


def test_a_load_that_fails_midway_frees_the_networks_it_compiled(monkeypatch):
    """close() is a no-op for a backend that never finished loading, so a compile failing at the third
    pane count must itself release the two networks already compiled."""
    from edge_thyroid.backends.openvino import OpenVinoBackend

    compile_network = OpenVinoBackend._network
    seen = []

    def third_fails(self, panes):
        seen.append(self)
        if panes == 3:
            assert len(self._networks) == 2  # 1 and 2 panes compiled
            raise BundleError("OpenVINO cannot compile x: injected")
        return compile_network(self, panes)

    monkeypatch.setattr(OpenVinoBackend, "_network", third_fails)
    with pytest.raises(BundleError, match="injected"):
        Engine(data_path(DEMO_BUNDLE), backend="openvino", threads=1).__enter__()
    backend = seen[-1]
    assert backend._networks == {} and backend._model is None and backend.input_names == []


def run_cli(args, capsys):
    try:
        main(args)
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_classify_cli_on_openvino(tmp_path, capsys):
    import cv2

    image = tmp_path / "pane.png"
    cv2.imwrite(str(image), screen_frame(seed=3)[50:670, 20:600])
    bundle = str(data_path(DEMO_BUNDLE))
    code, out, _ = run_cli(["classify", bundle, str(image), "--json"], capsys)
    assert code == 0
    reference = json.loads(out)["p_malignant"]
    code, out, _ = run_cli(["classify", bundle, str(image), "--json", "--backend", "openvino"], capsys)
    assert code == 0 and abs(json.loads(out)["p_malignant"] - reference) <= INT8_DP
    ort_only = str(ort_gated_demo_copy(tmp_path / "demo"))  # bf16 ungated there
    code, _, err = run_cli(["classify", ort_only, str(image), "--execution-precision", "bf16"], capsys)
    assert code == 2 and "--backend openvino" in err


def test_bench_rows_per_backend_on_a_recorded_source(capsys, tmp_path):
    """--backend twice gives our engine's rows on both runtimes; --source replays the demo clip's frames."""
    out = tmp_path / "bench.json"
    main(["bench", str(data_path(DEMO_BUNDLE)), "--source", str(data_path(DEMO_CLIP)), "--layout",
          str(data_path(DEMO_LAYOUT)), "--frames", "3", "--warmup", "1", "--rounds", "3", "--backend", "onnxruntime",
          "--backend", "openvino", "--peers", "none", "--no-cold-start", "--no-flops", "--no-cache", "--quiet",
          "--json", str(out)])
    capsys.readouterr()
    record = json.loads(out.read_text())
    rows = {row["name"]: row for row in record["configs"]}
    assert set(rows) == {"ours-int8", "ours-ov-int8"} and all(r["available"] for r in rows.values())
    assert record["reference"] == "ours-int8"
    assert "OpenCV preprocessing" in rows["ours-ov-int8"]["format"]
    assert rows["ours-ov-int8"]["max_abs_dp_vs_reference"] <= INT8_DP
    source = record["settings"]["source"]
    layout = json.loads(data_path(DEMO_LAYOUT).read_text())
    assert source["spec"].endswith(DEMO_CLIP) and source["frames_recorded"] == 5  # warm-up + frames + 1
    assert record["settings"]["modalities"] == [p["modality"] for p in layout["panes"]]
    assert source["decode_ms"]["count"] == 5 and source["decode_ms"]["p50"] > 0


def test_bench_source_errors(capsys, tmp_path):
    bundle = str(data_path(DEMO_BUNDLE))
    code, _, err = run_cli(["bench", bundle, "--layout", "dual", "--peers", "none", "--quiet"], capsys)
    assert code != 0 and "--layout" in err and "--source" in err
    code, _, err = run_cli(["bench", bundle, "--source", str(tmp_path / "missing.mp4"), "--peers", "none", "--quiet"],
                           capsys)
    assert code != 0 and "missing.mp4" in err
    # Without --backend the row is auto's, which takes the precision; a named runtime that cannot is refused.
    code, _, err = run_cli(["bench", bundle, "--backend", "onnxruntime", "--execution-precision", "bf16", "--peers",
                            "none", "--quiet"], capsys)
    assert code == 2 and "--backend openvino" in err
