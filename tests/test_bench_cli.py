"""edge-thyroid bench end to end on the tiny random bundle: the JSON record's schema, peers computing
what our engine computes, and clear errors. Few frames; no timing is asserted."""

import json
import sys

import pytest

from edge_thyroid.cli import main

from .conftest import needs_torch

LATENCY_KEYS = {"count", "mean", "std", "min", "p50", "p90", "p99", "p999", "max"}
TINY = ["--frames", "3", "--warmup", "1", "--rounds", "3", "--frame-size", "480x270", "--quiet"]


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@needs_torch
def test_bench_record_schema_peers_agree_and_plot(random_bundle, tmp_path, capsys):
    out, png = tmp_path / "results" / "bench.json", tmp_path / "latency.png"
    main(["bench", str(random_bundle), *TINY, "--panes", "2", "--peers", "ort-plain,openvino", "--no-flops",
          "--json", str(out), "--plot", str(png)])
    table = capsys.readouterr().out
    record = json.loads(out.read_text())

    assert record["schema"] == "edge-thyroid-bench/1"
    assert record["git"]["commit"] is None or len(record["git"]["commit"]) == 40
    for key in ("cpu_model", "threads", "allowed_cpus", "pinned_cpus", "loadavg_start", "loadavg_end", "versions"):
        assert key in record["machine"], key
    settings = record["settings"]
    assert settings["panes"] == 2 and settings["modalities"] == ["bmode", "swe"]
    assert settings["frames"] == 3 and settings["rounds"] == 3 and len(settings["rois"]) == 2
    assert record["reference"] == "ours-auto-fp32"  # no --backend: auto, as stream/classify run
    assert record["command"].startswith("edge-thyroid bench ") and "--peers ort-plain,openvino" in record["command"]

    rows = {row["name"]: row for row in record["configs"]}
    assert {"ours-auto-fp32", "ort-plain-fp32", "openvino-fp32"} <= set(rows)
    ran = [row for row in rows.values() if row["available"]]
    for row in ran:
        assert set(row["latency_ms"]) == LATENCY_KEYS
        assert row["latency_ms"]["count"] == row["frames"] == len(row["samples_ms"]) == 3
        assert row["latency_ms"]["min"] <= row["latency_ms"]["p50"] <= row["latency_ms"]["max"]
        assert row["throughput_fps"] > 0 and row["dropped"] == 0 and row["size_mb"] > 1
        assert len(row["block_p50_ms"]) == 3
        assert row["cold_start_s"] > 0 and row["peak_rss_mb"] > 50, row.get("cold_start_error")
        assert {"infer", "head"} <= set(row["stages_ms"])
    assert "preprocess" not in rows["ours-auto-fp32"]["stages_ms"]    # in the graph or in the backend call
    assert "preprocess" in rows["ort-plain-fp32"]["stages_ms"]
    assert rows["ours-auto-fp32"]["ratio_vs_reference"] == 1.0
    # Same frames, same weights: every peer's p(malignant) matches our engine's.
    for name in ("ort-plain-fp32", "openvino-fp32"):
        assert rows[name]["max_abs_dp_vs_reference"] < 2e-3, name
    # Pane caching is reported, run or not, never silently missing.
    cached = rows["ours-auto-fp32-cached"]
    assert cached["available"] or cached["reason"]

    assert "| ours-auto-fp32 |" in table and "p50 / ours" in table
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_torch
def test_torch_peer_runs_the_bundle_weights(random_bundle, capsys):
    main(["bench", str(random_bundle), *TINY, "--panes", "1", "--peers", "torch", "--no-cache",
          "--no-cold-start", "--no-flops", "--json", "-"])
    record = json.loads(capsys.readouterr().out)
    rows = {row["name"]: row for row in record["configs"]}
    torch_row = rows["torch-eager-fp32"]
    assert torch_row["available"], torch_row["reason"]
    assert torch_row["details"]["weights"]["convs"] == 53
    assert torch_row["max_abs_dp_vs_reference"] < 2e-3
    assert set(torch_row["stages_ms"]) >= {"preprocess", "infer", "head"}


@needs_torch
def test_flop_floor_is_reported(random_bundle, capsys):
    main(["bench", str(random_bundle), *TINY, "--peers", "none", "--no-cache", "--no-cold-start", "--json", "-"])
    record = json.loads(capsys.readouterr().out)
    flops = record["flops"]
    assert flops["panes"] == 3 and flops["matmul"]["gflops_median"] > 0
    assert flops["floor_ms_per_frame"] == pytest.approx(
        3 * flops["flops_per_pane"] / (flops["matmul"]["gflops_median"] * 1e9) * 1000, rel=1e-3)
    assert record["configs"][0]["ratio_vs_flop_floor"] > 0


def test_unknown_peer_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "bench.json"
    out.write_text("{\"kept\": true}\n")
    code, _, err = run_cli(["bench", str(tmp_path), "--peers", "torch,tensorflow", "--json", str(out)], capsys)
    assert code != 0
    assert "unknown peer 'tensorflow'" in err and "ort-plain" in err
    assert json.loads(out.read_text()) == {"kept": True}  # results written before stay intact


@pytest.mark.parametrize("option", ["--json", "--plot"])
def test_an_output_folder_that_cannot_be_made_is_one_line_before_the_run(option, tmp_path, capsys, monkeypatch):
    """--json / --plot under a regular file: their folder was made after every frame was measured (a
    FileExistsError traceback then, the record lost); now one line before the run."""
    from edge_thyroid.commands.stream import DEMO_BUNDLE, data_path
    from edge_thyroid_bench import harness

    monkeypatch.setattr(harness, "run_bench", lambda options: pytest.fail("the run started"))
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    target = blocker / "out" / ("bench.json" if option == "--json" else "latency.png")
    code, _, err = run_cli(["bench", str(data_path(DEMO_BUNDLE)), "--peers", "none", *TINY, option, str(target)], capsys)
    lines = [line for line in err.splitlines() if not line.startswith("notice:")]
    assert code == 2 and lines == [f"error: {option}: cannot create the folder {target.parent} (Not a directory); "
                                   "expected a writable folder path"]


@pytest.mark.parametrize("panes", ["0", "4", "two"])
def test_bad_panes_is_a_usage_error(tmp_path, capsys, panes):
    code, _, err = run_cli(["bench", str(tmp_path), "--panes", panes], capsys)
    assert code == 2 and "--panes" in err


@needs_torch
def test_missing_model_and_bad_settings_are_clear_errors(random_bundle, capsys):
    code, _, err = run_cli(["bench", str(random_bundle), "--model", "int8", "--quiet"], capsys)
    assert code != 0 and "'int8'" in err and "fp32" in err
    code, _, err = run_cli(["bench", str(random_bundle), "--fps", "-5", "--quiet"], capsys)
    assert code != 0 and "--fps" in err
    code, _, err = run_cli(["bench", str(random_bundle), "--frame-size", "big", "--quiet"], capsys)
    assert code == 2 and "WIDTHxHEIGHT" in err


def test_missing_bundle_is_a_clear_error(tmp_path, capsys):
    code, _, err = run_cli(["bench", str(tmp_path / "nope"), "--quiet", "--peers", "none"], capsys)
    assert code != 0 and "bundle not found" in err


def test_help_teaches():
    from click.testing import CliRunner

    from edge_thyroid.cli import cli

    result = CliRunner().invoke(cli, ["bench", "--help"])
    assert result.exit_code == 0
    for word in ("--peers", "--panes", "--fps", "--json", "--plot", "Examples"):
        assert word in result.output


@needs_torch
def test_interrupted_run_keeps_what_was_measured(random_bundle, monkeypatch):
    from edge_thyroid_bench import benchmarking as bm
    from edge_thyroid_bench.harness import BenchOptions, run_bench

    real = bm.run_frames
    calls = []

    def stop_on_third_block(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(bm, "run_frames", stop_on_third_block)
    options = BenchOptions([str(random_bundle)], panes=1, frames=4, warmup=0, rounds=4, peers="ort-plain",
                           cache=False, cold_start=False, flops=False, frame_size=(320, 240), progress=False)
    record = run_bench(options)
    rows = {row["name"]: row for row in record["configs"]}
    assert record["interrupted"] is True
    # Round 1 ran both configurations (1 frame each); round 2 was cut at its first block.
    assert rows["ours-auto-fp32"]["frames"] == 1 and rows["ort-plain-fp32"]["frames"] == 1
    assert "Interrupted" in bm.format_table(record)


def test_bench_without_the_harness_says_how_to_install(monkeypatch, capsys, tmp_path):
    """The runtime does not need the bench package: without it the command is one line with the fix."""
    monkeypatch.setitem(sys.modules, "edge_thyroid_bench", None)  # import edge_thyroid_bench -> ModuleNotFoundError
    monkeypatch.setitem(sys.modules, "edge_thyroid_bench.harness", None)
    with pytest.raises(SystemExit) as exc:
        main(["bench", str(tmp_path), "--peers", "none", "--quiet"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert "edge_thyroid_bench" in err and "pip install 'edge-thyroid[bench]'" in err


def int8_only_copy(destination):
    """The shipped bundle with every model but its INT8 one removed (re-hashed): no FP32 model to run."""
    import shutil

    from edge_thyroid.bundle import load_bundle, write_manifest
    from edge_thyroid.commands.stream import DEMO_BUNDLE, data_path

    shutil.copytree(data_path(DEMO_BUNDLE), destination)
    bundle = load_bundle(destination)
    for key in [k for k in bundle.manifest.models if k != "int8"]:
        (destination / bundle.manifest.models.pop(key).file).unlink()
    (destination / "manifest.sig").unlink(missing_ok=True)  # it signed the shipped manifest, not this one
    write_manifest(destination, bundle.manifest)
    return destination


@needs_torch
def test_float_peers_run_the_fp32_reconstruction_of_an_int8_only_bundle(tmp_path, capsys):
    bundle = int8_only_copy(tmp_path / "int8_only")
    main(["bench", str(bundle), *TINY, "--panes", "3", "--peers", "torch,ort-plain", "--no-cache", "--no-cold-start",
          "--no-flops", "--json", "-"])
    record = json.loads(capsys.readouterr().out)
    rows = {row["name"]: row for row in record["configs"]}
    assert record["reference"] == "ours-auto-int8"
    for name in ("torch-eager-fp32-from-int8", "ort-plain-fp32-from-int8"):
        row = rows[name]
        assert row["available"], row["reason"]
        assert row["precision"] == "fp32 (dequantized int8)" and "FP32 reconstruction of the int8 weights" in row["format"]
        # The same weights without activation quantization: p moves by INT8's activation error only
        # (the shipped gate measured |dp| <= 0.072 between its FP32 and INT8 models on real images).
        assert row["max_abs_dp_vs_reference"] < 0.1, name
    assert rows["torch-eager-fp32-from-int8"]["details"]["weights"]["convs"] == 53
    # The demo bundle averages each pane with its mirror image in its graph; the torch peer does the same.
    assert "mirror-image average as in the bundle" in rows["torch-eager-fp32-from-int8"]["format"]


@needs_torch
def test_a_peer_that_cannot_run_says_why_in_its_row(tmp_path, capsys):
    import json as json_module

    bundle = int8_only_copy(tmp_path / "relabelled")
    manifest_path = bundle / "manifest.json"
    manifest = json_module.loads(manifest_path.read_text())
    manifest["models"]["int8"]["precision"] = "fp16"  # neither FP32 nor INT8 weights to reconstruct from
    manifest_path.write_text(json_module.dumps(manifest))
    main(["bench", str(bundle), *TINY, "--panes", "1", "--peers", "torch,ort-plain", "--no-cache", "--no-cold-start",
          "--no-flops"])
    table = capsys.readouterr().out
    for name in ("torch-eager-int8", "ort-plain-int8"):  # the model key stays int8, its precision says fp16
        assert f"| {name} | not run: needs an FP32 model or INT8 weights to reconstruct one from" in table, table


@needs_torch
def test_bench_runs_our_engine_as_the_default_command_does(random_bundle, capsys):
    main(["bench", str(random_bundle), *TINY, "--panes", "1", "--backend", "auto", "--peers", "none", "--no-cache",
          "--no-cold-start", "--no-flops", "--json", "-"])
    record = json.loads(capsys.readouterr().out)
    row = {row["name"]: row for row in record["configs"]}["ours-auto-fp32"]
    assert row["available"], row["reason"]
    choice = row["details"]["auto_choice"]
    assert choice["configuration"] == "onnxruntime" and choice["how"] == "only candidate"  # the FP32 reference
    assert row["format"].startswith("edge-thyroid: auto -> onnxruntime (ONNX Runtime)")
