"""--backend auto: candidates are installed and gated configurations only; the fastest by a measured
trial wins; the decision is cached and re-measured on request. Speed is never asserted: the toy
backends' handicaps are fixed pauses, far above any difference the machine can make."""

import json
import shutil

import pytest

from edge_thyroid import autoselect, backends
from edge_thyroid.autoselect import (LOADED, AutoChoice, CpuSnapshot, LoadMonitor, decide, gated_candidates,
                                     offered_configurations, others_busy_share, select_backend, time_configurations)
from edge_thyroid.bundle import load_bundle
from edge_thyroid.engine import Engine
from edge_thyroid.errors import BackendError
from edge_thyroid.gates import Configuration, record_gate

from .conftest import needs_torch
from .toy_backend import SlowToyBackend, UngatedToyBackend

ORT, OV_F32, OV_BF16 = Configuration("onnxruntime"), Configuration("openvino", "f32"), Configuration("openvino", "bf16")


def test_only_installed_and_passed_gates_are_candidates():
    details = {"gate": {"passed": True}, "gates": {"openvino/f32": {"passed": True}, "openvino/bf16": {"passed": False}}}
    missing = {"tensorrt": "tensorrt is not installed"}
    chosen, excluded = gated_candidates(details, [ORT, OV_F32, OV_BF16, Configuration("tensorrt"), Configuration("x")],
                                        lambda c: missing.get(c.backend))
    assert chosen == [ORT, OV_F32]
    assert excluded == {"openvino/bf16": "gate failed", "tensorrt": "tensorrt is not installed",
                        "x": "no gate recorded (edge-thyroid verify records one)"}


def test_the_fp32_reference_needs_no_gate():
    chosen, excluded = gated_candidates({}, [ORT, OV_F32], lambda c: None, reference=ORT)
    assert chosen == [ORT] and "openvino/f32" in excluded


def test_execution_precision_limits_the_offer():
    offered, excluded = offered_configurations("onnxruntime", "bf16")
    assert OV_BF16 in offered and ORT not in offered and "onnxruntime" in excluded
    offered, _ = offered_configurations("onnxruntime", None)
    assert ORT in offered and OV_F32 in offered and OV_BF16 not in offered
    offered, _ = offered_configurations("tensorrt", None)
    assert offered == [Configuration("tensorrt")]


def test_interleaved_trial_takes_the_median_and_reports_failures():
    now = [0.0]
    cost = {"a": 0.010, "b": 0.030}
    closed = []

    def open_runner(configuration):
        if configuration.backend == "broken":
            raise BackendError("cannot load")

        def run():
            now[0] += cost[configuration.backend]
        return run, lambda: closed.append(configuration.backend)

    figures, failed = time_configurations([Configuration("a"), Configuration("b"), Configuration("broken")],
                                          open_runner, clock=lambda: now[0])
    assert figures == pytest.approx({"a": 10.0, "b": 30.0})
    assert failed == {"broken": "cannot load"}
    assert sorted(closed) == ["a", "b"]


def test_the_frame_right_after_a_switch_is_not_timed():
    # A runtime's first frame after another runtime ran pays for the other's spinning threads: here 50 ms
    # extra on the frame after every switch. It must not reach the figure.
    now, last = [0.0], [None]
    cost = {"a": 0.010, "b": 0.020}

    def open_runner(configuration):
        def run():
            now[0] += cost[configuration.backend] + (0.050 if last[0] not in (None, configuration.backend) else 0.0)
            last[0] = configuration.backend
        return run, lambda: None

    figures, _ = time_configurations([Configuration("a"), Configuration("b")], open_runner, clock=lambda: now[0],
                                     frames_per_round=2)
    assert figures == pytest.approx({"a": 10.0, "b": 20.0})
    timed_with_settling_off, _ = time_configurations([Configuration("a"), Configuration("b")], open_runner,
                                                     clock=lambda: now[0], frames_per_round=1, settle_frames=0)
    assert timed_with_settling_off["a"] > 10.0 + 1e-6 or timed_with_settling_off["b"] > 20.0 + 1e-6


def _fake_measure(figures, calls):
    def measure(configurations):
        calls.append([c.key for c in configurations])
        return {c.key: figures[c.key] for c in configurations}, {}
    return measure


def test_decide_measures_once_then_uses_the_cache_until_retune(tmp_path):
    calls = []
    measure = _fake_measure({"onnxruntime": 40.0, "openvino/f32": 25.0}, calls)
    kwargs = dict(fallback=ORT, key_material={"cpu": "x", "model_sha256": "abc"}, measure=measure, cache_dir=tmp_path)
    first = decide([ORT, OV_F32], {}, **kwargs)
    assert (first.configuration, first.how, first.p50_ms) == (OV_F32, "measured", {"onnxruntime": 40.0, "openvino/f32": 25.0})
    second = decide([ORT, OV_F32], {}, **kwargs)
    assert (second.configuration, second.how, len(calls)) == (OV_F32, "cached", 1)
    assert second.p50_ms == first.p50_ms and "--retune" in second.line()
    third = decide([ORT, OV_F32], {}, retune=True, **kwargs)
    assert (third.how, len(calls)) == ("measured", 2)
    # Another model file (or CPU, or versions) is another decision.
    decide([ORT, OV_F32], {}, **{**kwargs, "key_material": {"cpu": "x", "model_sha256": "def"}})
    assert len(calls) == 3


def test_decide_without_a_trial_when_there_is_no_choice(tmp_path):
    calls = []
    measure = _fake_measure({}, calls)
    only = decide([OV_F32], {"onnxruntime": "gate failed"}, fallback=ORT, key_material={}, measure=measure,
                  cache_dir=tmp_path)
    assert (only.configuration, only.how) == (OV_F32, "only candidate")
    none = decide([], {"openvino/f32": "no gate"}, fallback=ORT, key_material={}, measure=measure, cache_dir=tmp_path)
    assert none.configuration == ORT and none.how.startswith("ungated fallback")
    assert calls == [] and "openvino/f32 (no gate)" in none.line()


def test_a_damaged_cache_file_is_measured_again(tmp_path):
    calls = []
    kwargs = dict(fallback=ORT, key_material={}, measure=_fake_measure({"onnxruntime": 1.0, "openvino/f32": 2.0}, calls),
                  cache_dir=tmp_path)
    decide([ORT, OV_F32], {}, **kwargs)
    for path in tmp_path.iterdir():
        path.write_text("{not json")
    assert decide([ORT, OV_F32], {}, **kwargs).how == "measured" and len(calls) == 2


def test_other_work_is_the_machine_busy_time_minus_our_own():
    before, after = CpuSnapshot(busy=10.0, total=100.0, own=2.0), CpuSnapshot(busy=16.0, total=110.0, own=5.0)
    assert others_busy_share(before, after) == pytest.approx(0.3)   # (6 busy - 3 ours) of 10 s of capacity
    # Our own work alone is no load; accounting jitter never goes below 0 or above 1.
    assert others_busy_share(before, CpuSnapshot(12.0, 110.0, 5.0)) == 0.0
    assert others_busy_share(before, CpuSnapshot(40.0, 110.0, 2.0)) == 1.0
    assert others_busy_share(None, after) is None and others_busy_share(before, before) is None


def test_load_monitor_reads_proc_stat(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice (guest is inside user)
    stat.write_text("cpu  100 20 30 800 40 5 5 0 50 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n")
    monitor = LoadMonitor(str(stat))
    monitor.tick = 100.0
    snapshot = monitor.snapshot()
    assert (snapshot.busy, snapshot.total) == pytest.approx((1.6, 10.0))
    assert snapshot.own > 0
    assert LoadMonitor(str(tmp_path / "absent")).snapshot() is None
    stat.write_text("intr 1 2 3\n")
    assert monitor.snapshot() is None


class FakeMonitor:
    """Other work's share during the next trial (``trial``) and at the next start's probe (``now``)."""

    def __init__(self, trial: float, now: float | None = None) -> None:
        self.trial, self.now, self.probes, self._clock = trial, now, 0, 0.0

    def snapshot(self) -> CpuSnapshot:
        self._clock += 10.0
        return CpuSnapshot(busy=self.trial * self._clock, total=self._clock, own=0.0)

    def probe(self, seconds: float) -> float | None:
        self.probes += 1
        return self.now


def test_a_trial_under_load_is_measured_again_once_the_machine_is_quieter(tmp_path):
    calls = []
    # Under load the slower configuration happened to win the trial.
    loaded = _fake_measure({"onnxruntime": 30.0, "openvino/f32": 35.0}, calls)
    kwargs = dict(fallback=ORT, key_material={"cpu": "x"}, cache_dir=tmp_path)
    first = decide([ORT, OV_F32], {}, measure=loaded, monitor=FakeMonitor(trial=0.6), **kwargs)
    assert (first.configuration, first.others_busy, first.provisional) == (ORT, 0.6, True)
    assert "provisional" in first.line() and "other work 60% of the CPUs" in first.line()
    # Still as busy at the next start: the decision stands, no trial paid.
    still = FakeMonitor(trial=0.6, now=0.55)
    again = decide([ORT, OV_F32], {}, measure=loaded, monitor=still, **kwargs)
    assert (again.configuration, again.how, still.probes, len(calls)) == (ORT, "cached", 1, 1)
    # Quieter now: measured again, and the quiet trial's decision is final.
    quiet = _fake_measure({"onnxruntime": 30.0, "openvino/f32": 20.0}, calls)
    retried = decide([ORT, OV_F32], {}, measure=quiet, monitor=FakeMonitor(trial=0.05, now=0.1), **kwargs)
    assert (retried.configuration, retried.how, retried.provisional, len(calls)) == (OV_F32, "measured", False, 2)
    assert "60%" in retried.remeasured_because and "now 10%" in retried.remeasured_because
    later = FakeMonitor(trial=0.0, now=0.0)
    final = decide([ORT, OV_F32], {}, measure=quiet, monitor=later, **kwargs)
    assert (final.configuration, final.how, later.probes, len(calls)) == (OV_F32, "cached", 0, 2)
    assert "--retune" in final.line()


def test_a_quiet_trial_is_never_second_guessed_and_no_monitor_means_no_load_rule(tmp_path):
    calls = []
    measure = _fake_measure({"onnxruntime": 30.0, "openvino/f32": 20.0}, calls)
    kwargs = dict(fallback=ORT, key_material={"cpu": "y"}, measure=measure, cache_dir=tmp_path)
    quiet = decide([ORT, OV_F32], {}, monitor=FakeMonitor(trial=LOADED - 0.05), **kwargs)
    assert not quiet.provisional
    busy_now = FakeMonitor(trial=0.0, now=1.0)
    assert decide([ORT, OV_F32], {}, monitor=busy_now, **kwargs).how == "cached" and busy_now.probes == 0
    unknown = decide([ORT, OV_F32], {}, **{**kwargs, "key_material": {"cpu": "z"}})
    assert unknown.others_busy is None and not unknown.provisional
    assert decide([ORT, OV_F32], {}, **{**kwargs, "key_material": {"cpu": "z"}}).how == "cached"
    assert len(calls) == 2


def test_choice_round_trips_for_the_jsonl_header():
    choice = AutoChoice("openvino", "f32", "measured", {"openvino/f32": 20.0, "onnxruntime": 30.0}, cpu="cpu", panes=3,
                        loadavg=[1.0, 1.0, 1.0], measured_unix=0.0)
    data = json.loads(json.dumps(choice.to_dict()))
    assert data["configuration"] == "openvino/f32"
    assert AutoChoice.from_dict(data) == choice
    assert choice.line().startswith("backend auto: openvino/f32 (p50 per 3-pane frame: openvino/f32 20.0 ms, onnxruntime 30.0 ms")


@pytest.fixture
def toy_registry(monkeypatch):
    monkeypatch.setitem(backends._REGISTRY, "toy-slow", "tests.toy_backend:SlowToyBackend")
    monkeypatch.setitem(backends._REGISTRY, "toy-ungated", "tests.toy_backend:UngatedToyBackend")


@pytest.fixture
def unmonitored(monkeypatch):
    """select_backend watches the real machine's load: on a loaded machine its trial is provisional and a
    later start that happens to find the CPUs quieter measures again, so a test of what is cached would
    pass or fail with the other work on the machine. Here no load is known (as off Linux); the load rule
    has its own tests above, with fake monitors."""
    class NoAccounting(LoadMonitor):
        def snapshot(self):
            return None

    monkeypatch.setattr(autoselect, "LoadMonitor", NoAccounting)


@needs_torch
def test_auto_never_picks_the_slower_or_the_ungated_backend(random_bundle, tmp_path, toy_registry, unmonitored):
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(random_bundle, bundle_dir)
    record_gate(bundle_dir, "fp32", Configuration("toy-slow"), {"passed": True})
    record_gate(bundle_dir, "fp32", Configuration("openvino", "f32"), {"passed": False})
    bundle = load_bundle(bundle_dir)
    cache = tmp_path / "cache"
    loads = SlowToyBackend.loads
    choice = select_backend(bundle, Engine, threads=1, cache=cache)
    assert choice.configuration == ORT and choice.how == "measured"
    assert set(choice.p50_ms) == {"onnxruntime", "toy-slow"}
    assert choice.excluded["openvino/f32"] == "gate failed"
    assert choice.excluded["toy-ungated"].startswith("no gate recorded")
    assert SlowToyBackend.loads == loads + 1
    assert UngatedToyBackend.loads == 0  # never even tried
    cached = select_backend(bundle, Engine, threads=1, cache=cache)
    assert (cached.configuration, cached.how, SlowToyBackend.loads) == (ORT, "cached", loads + 1)
    retuned = select_backend(bundle, Engine, threads=1, cache=cache, retune=True)
    assert (retuned.configuration, retuned.how, SlowToyBackend.loads) == (ORT, "measured", loads + 2)


def test_a_requested_precision_without_a_gated_configuration_is_an_error_not_a_swap(tmp_path):
    from .conftest import ort_gated_demo_copy

    bundle = load_bundle(ort_gated_demo_copy(tmp_path / "demo"))  # gated on ONNX Runtime only
    with pytest.raises(BackendError, match=r"no configuration .* in bf16 with a passing gate .*--backend openvino"):
        select_backend(bundle, Engine, execution_precision="bf16", cache=False)


def test_classify_prints_the_auto_choice_and_retune_needs_auto(tmp_path, capsys):
    import cv2

    from edge_thyroid.cli import main
    from edge_thyroid.commands.stream import DEMO_BUNDLE, data_path

    from .conftest import screen_frame

    image = tmp_path / "pane.png"
    cv2.imwrite(str(image), screen_frame(seed=1)[50:670, 20:600])
    main(["classify", str(data_path(DEMO_BUNDLE)), str(image), "--json"])
    captured = capsys.readouterr()
    assert "\nbackend auto: " in "\n" + captured.err and json.loads(captured.out)["p_malignant"] >= 0
    with pytest.raises(SystemExit) as exit_info:
        main(["classify", str(data_path(DEMO_BUNDLE)), str(image), "--backend", "onnxruntime", "--retune"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--retune re-measures the choice of --backend auto" in err
    assert "Traceback" not in err
