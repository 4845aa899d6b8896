"""The timing library: statistics against NumPy, paced runs without coordinated omission (on a fake
clock, so no real timing is asserted), interleaving, FLOP counting, records."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_thyroid_bench import benchmarking as bm

from .conftest import needs_torch


class FakeClock:
    """A clock that moves only when the code under test sleeps or a step 'works'."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


def service_step(clock: FakeClock, durations: dict[int, float], default: float):
    def step(index: int, timer: bm.StageTimer) -> float:
        with timer.stage(bm.Stage.INFER):
            clock.now += durations.get(index, default)
        return float(index)
    return step


# ---------------------------------------------------------------------------------------------
# statistics


@pytest.mark.parametrize("n", [1, 2, 7, 100, 1001])
def test_percentile_matches_numpy_linear(n):
    rng = np.random.default_rng(n)
    samples = rng.lognormal(3.0, 0.7, size=n)
    for q in (0, 1, 25, 50, 90, 99, 99.9, 100):
        assert bm.percentile(samples, q) == pytest.approx(np.percentile(samples, q), rel=1e-12, abs=1e-12)


def test_percentile_rejects_bad_input():
    with pytest.raises(ValueError, match="no samples"):
        bm.percentile([], 50)
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        bm.percentile([1.0], 101)


def test_mean_std_and_summary_match_numpy():
    rng = np.random.default_rng(3)
    # A large offset: a one-pass variance would lose the small spread to cancellation.
    samples = 1e6 + rng.normal(0, 0.01, size=500)
    mean, std = bm.mean_std(samples)
    assert mean == pytest.approx(np.mean(samples), rel=1e-15)
    assert std == pytest.approx(np.std(samples), rel=1e-9)
    summary = bm.Summary.of(samples)
    assert summary.count == 500
    assert (summary.min, summary.max) == (samples.min(), samples.max())
    assert summary.p999 == pytest.approx(np.percentile(samples, 99.9), rel=1e-15)
    assert set(summary.to_dict()) == {"count", "mean", "std", "min", "p50", "p90", "p99", "p999", "max"}


def test_median_of_ratios_pairs_blocks():
    # A drifting machine: both configurations slow down 3x over the run, their ratio stays 2.
    reference = [10.0, 15.0, 20.0, 30.0]
    other = [20.0, 30.0, 40.0, 60.0]
    assert bm.median_of_ratios(other, reference) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        bm.median_of_ratios([1.0], [0.0])


# ---------------------------------------------------------------------------------------------
# paced runs: coordinated omission


def test_stall_shows_in_later_frames_latency_when_queueing():
    clock = FakeClock()
    # 10 ms frame interval, 5 ms service, frame 3 stalls for 100 ms.
    step = service_step(clock, {3: 0.100}, 0.005)
    run = bm.run_frames(step, list(range(30)), interval=0.010, policy=bm.DropPolicy.QUEUE,
                        clock=clock, sleep=clock.sleep)
    latency = {f.index: f.latency for f in run.frames}
    assert run.dropped == 0 and len(run.frames) == 30
    assert latency[2] == pytest.approx(0.005)
    assert latency[3] == pytest.approx(0.100)
    # Frame k (4 <= k < 23) was captured at 10k ms but could only start after the stall and the
    # frames queued before it: done at 135 + 5(k-4) ms.
    for k in range(4, 23):
        assert latency[k] == pytest.approx(0.135 + 0.005 * (k - 4) - 0.010 * k), k
    assert latency[25] == pytest.approx(0.005)  # caught up
    # What a coordinated-omission measurement (service time) would have reported: the stall vanishes.
    assert max(f.service for f in run.frames if f.index != 3) == pytest.approx(0.005)
    assert bm.percentile([f.latency for f in run.frames], 90) > 0.05


def test_latest_policy_drops_frames_captured_during_a_stall():
    clock = FakeClock()
    step = service_step(clock, {3: 0.100}, 0.005)
    run = bm.run_frames(step, list(range(30)), interval=0.010, policy=bm.DropPolicy.LATEST,
                        clock=clock, sleep=clock.sleep)
    processed = [f.index for f in run.frames]
    # The stall ends at 130 ms: the newest frame then is 13; 4..12 were overwritten.
    assert processed[:5] == [0, 1, 2, 3, 13]
    assert run.dropped == 9
    assert len(processed) + run.dropped == 30
    assert next(f for f in run.frames if f.index == 13).latency == pytest.approx(0.005)


def test_closed_loop_latency_is_service_time_and_capture_delay_counts():
    clock = FakeClock()
    step = service_step(clock, {}, 0.004)
    run = bm.run_frames(step, [5, 6, 7], ready_delay=[0.002, 0.001, 0.0], clock=clock, sleep=clock.sleep)
    assert [f.index for f in run.frames] == [5, 6, 7]
    assert [round(f.latency, 6) for f in run.frames] == [0.006, 0.005, 0.004]
    assert run.frames[0].stages[bm.Stage.CAPTURE] == pytest.approx(0.002)
    assert run.frames[0].stages[bm.Stage.INFER] == pytest.approx(0.004)
    assert run.frames[1].value == 6.0
    with pytest.raises(ValueError, match="ready_delay"):
        bm.run_frames(step, [1, 2], ready_delay=[0.0])


def test_paced_run_waits_for_capture_instead_of_running_ahead():
    clock = FakeClock()
    step = service_step(clock, {}, 0.001)
    run = bm.run_frames(step, list(range(5)), interval=0.020, clock=clock, sleep=clock.sleep)
    assert [f.start for f in run.frames] == pytest.approx([0.0, 0.02, 0.04, 0.06, 0.08])
    assert run.wall == pytest.approx(0.081)


# ---------------------------------------------------------------------------------------------
# interleaving


def test_interleaved_order_alternates_and_balances_positions():
    names = ["ours", "torch", "openvino"]
    order = bm.interleaved_order(names, 4)
    assert order == [names, names[::-1], names, names[::-1]]
    for name in names:
        positions = [round_order.index(name) for round_order in order]
        # Mean position is the same for everyone: a linear drift adds the same to all.
        assert np.mean(positions) == pytest.approx((len(names) - 1) / 2)
    with pytest.raises(ValueError):
        bm.interleaved_order(names, 0)


@pytest.mark.parametrize("total, rounds", [(1, 1), (10, 3), (7, 10), (100, 10)])
def test_split_blocks_covers_every_frame_once(total, rounds):
    blocks = bm.split_blocks(total, rounds)
    assert [i for b in blocks for i in b] == list(range(total))
    sizes = [len(b) for b in blocks]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    assert len(blocks) == min(total, rounds)


# ---------------------------------------------------------------------------------------------
# FLOPs


def _tiny_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    grouped = numpy_helper.from_array(rng.standard_normal((8, 2, 3, 3)).astype(np.float32), "wg")
    fc = numpy_helper.from_array(rng.standard_normal((8 * 4 * 4, 5)).astype(np.float32), "fc")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),     # 8x8x8 out
        helper.make_node("Conv", ["c1", "wg"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], group=4),  # 8x4x4
        helper.make_node("Flatten", ["c2"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])],
                              initializer=[weight, grouped, fc])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_count_flops_on_a_hand_counted_graph():
    conv1 = 8 * 8 * 8 * (3 * 3 * 3)       # outputs x MACs per output
    conv2 = 8 * 4 * 4 * (2 * 3 * 3)       # grouped: Cin/groups = 2
    matmul = 5 * 128
    assert bm.count_flops(_tiny_model(), panes=1) == 2 * (conv1 + conv2 + matmul)
    assert bm.count_flops(_tiny_model(), panes=3) == 3 * 2 * (conv1 + conv2 + matmul)


@needs_torch
def test_count_flops_of_the_bundle_backbone_matches_torch_layer_count(random_bundle, random_model):
    import torch

    from edge_thyroid.bundle import load_bundle
    from edge_thyroid_bench.peers import backbone_graph

    bundle = load_bundle(random_bundle)
    size = bundle.manifest.preprocessing.image_size
    counted = bm.count_flops(backbone_graph(bundle.path("model.onnx")), panes=1)
    macs = []

    def hook(module, inputs, output):
        macs.append(output.numel() * module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1])

    handles = [m.register_forward_hook(hook) for m in random_model.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.no_grad():
            random_model.feature_maps(torch.zeros(1, 3, size, size))
    finally:
        for handle in handles:
            handle.remove()
    assert counted == 2 * sum(macs)
    # ResNet50's published 4.09 GMAC at 224, scaled by area (64 divides the strides exactly).
    assert counted / 2 == pytest.approx(4.09e9 * (size / 224) ** 2, rel=0.01)


def test_matmul_probe_reports_positive_rates():
    result = bm.measure_matmul_gflops(threads=1, size=256, repeats=3)
    assert result["threads"] == 1 and result["size"] == 256
    assert 0 < result["gflops_median"] <= result["gflops_best"]


# ---------------------------------------------------------------------------------------------
# machine facts, records, synthetic screens


def test_machine_info_and_git_state():
    info = bm.machine_info(threads=1, pinned=None)
    assert info["cpu_model"] and info["threads"] == 1 and len(info["loadavg_start"]) == 3
    assert info["allowed_cpus"] == bm.allowed_cpus()
    state = bm.git_state()
    assert state["commit"] is None or len(state["commit"]) == 40
    assert bm.peak_rss_mb() > 10  # a Python with NumPy loaded is tens of MB


def test_write_json_atomic_keeps_the_previous_file_on_failure(tmp_path):
    target = tmp_path / "results" / "bench.json"
    bm.write_json_atomic(target, {"stage": bm.Stage.INFER, "value": np.float32(1.5)})
    assert json.loads(target.read_text()) == {"stage": "infer", "value": 1.5}
    with pytest.raises(TypeError):
        bm.write_json_atomic(target, {"bad": object()})
    assert json.loads(target.read_text())["stage"] == "infer"
    assert [p.name for p in target.parent.iterdir()] == ["bench.json"]


def test_synthetic_screens_refresh_panes_at_their_own_rate():
    rois = bm.side_by_side_rois(3, 640, 360)
    assert np.all(rois[:, 0] + rois[:, 2] <= 640) and np.all(rois[:, 1] + rois[:, 3] <= 360)
    screens = bm.SyntheticScreens(rois, 640, 360, refresh=4, variants=3)

    def pane(frame, p):
        x, y, w, h = rois[p]
        return frame[y:y + h, x:x + w]

    f0, f1, f4 = screens.frame(0), screens.frame(1), screens.frame(4)
    assert f0.shape == (360, 640, 3) and f0.dtype == np.uint8
    assert not np.array_equal(pane(f0, 0), pane(f1, 0))      # B-mode is live
    assert np.array_equal(pane(f0, 1), pane(f1, 1))          # SWE holds ...
    assert not np.array_equal(pane(f0, 1), pane(f4, 1))      # ... until its refresh
    assert np.array_equal(screens.frame(1), f1)              # deterministic
    static = bm.SyntheticScreens(rois, 640, 360, refresh=0, variants=3)
    assert np.array_equal(pane(static.frame(0), 2), pane(static.frame(9), 2))
    with pytest.raises(ValueError, match="no room"):
        bm.side_by_side_rois(3, 40, 40)
