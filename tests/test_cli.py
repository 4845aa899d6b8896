"""The command line through click's CliRunner (and one real subprocess for start-up cost)."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edge_thyroid import __version__
from edge_thyroid.cli import cli, main

from .conftest import needs_torch, ultrasound_like


def run(args):
    return CliRunner().invoke(cli, args, catch_exceptions=True)


def test_help_lists_commands_and_imports_nothing_heavy():
    code = ("import sys; from edge_thyroid.cli import cli; from click.testing import CliRunner;"
            "r = CliRunner().invoke(cli, ['--help']); print(r.output);"
            "print('HEAVY', sorted(m for m in ('torch', 'onnxruntime', 'cv2', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "classify" in out and "export" in out
    assert "HEAVY []" in out


def test_command_help_with_backend_choices_imports_nothing_heavy():
    """--backend and its settings come from the backend classes; reading them must stay light."""
    code = ("import sys; from edge_thyroid.cli import cli; from click.testing import CliRunner;"
            "r = CliRunner().invoke(cli, ['stream', '--help']); print(r.output);"
            "print('HEAVY', sorted(m for m in ('torch', 'onnxruntime', 'cv2', 'onnx', 'numpy', 'openvino')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "--backend [auto|onnxruntime|openvino|triton]" in out and "--execution-precision [f32|bf16]" in out
    assert "HEAVY []" in out


def test_version():
    result = run(["--version"])
    assert result.exit_code == 0 and __version__ in result.output


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "nodule.png"
    cv2.imwrite(str(path), ultrasound_like(240, 320, seed=5))
    return path


@needs_torch
def test_export_classify_json_and_cam(tmp_path, image):
    bundle = tmp_path / "b"
    result = run(["export", "--random-init", "-o", str(bundle), "--image-size", "64", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["image_size"] == 64
    cam = tmp_path / "cam.png"
    result = run(["classify", str(bundle), str(image), "--json", "--cam", str(cam), "--roi", "10,10,200,200"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output.strip().splitlines()[-1])
    assert 0 <= record["p_malignant"] <= 1 and record["decision"] in ("benign", "malignant")
    assert set(record["modality_logits"]) == {"bmode"}
    overlay = cv2.imread(str(cam))
    assert overlay.shape == (240, 320, 3)
    assert not np.array_equal(overlay, cv2.imread(str(image)))
    assert run(["info", str(bundle)]).exit_code == 0


@needs_torch
def test_export_records_what_p_assumes_and_info_says_it(tmp_path):
    bundle = tmp_path / "b"
    assert run(["export", "--random-init", "-o", str(bundle), "--image-size", "32", "--probability-prior", "0.5"]).exit_code == 0
    assert json.loads((bundle / "manifest.json").read_text())["probability"]["prior"] == 0.5
    assert "p assumes   0.5 of the nodules malignant" in run(["info", str(bundle)]).output
    plain = tmp_path / "plain"
    assert run(["export", "--random-init", "-o", str(plain), "--image-size", "32"]).exit_code == 0
    assert "probability" not in json.loads((plain / "manifest.json").read_text())
    assert "p assumes   not recorded" in run(["info", str(plain)]).output
    assert run(["export", "--random-init", "-o", str(tmp_path / "c"), "--probability-prior", "1"]).exit_code == 2


@needs_torch
def test_export_refuses_to_overwrite_without_force(tmp_path):
    bundle = tmp_path / "b"
    assert run(["export", "--random-init", "-o", str(bundle), "--image-size", "32"]).exit_code == 0
    assert run(["export", "--random-init", "-o", str(bundle), "--image-size", "32"]).exit_code != 0


@needs_torch
@pytest.mark.parametrize("size", ["7", "4096"])
def test_export_refuses_an_image_size_out_of_range_in_one_line(size, tmp_path, capsys):
    """The preprocessing spec rejected it only when the graph was fused: a ValueError traceback, exit 1."""
    with pytest.raises(SystemExit) as exc:
        main(["export", "--random-init", "-o", str(tmp_path / "b"), "--image-size", size])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: preprocessing: image_size must be in [8, 2048], got {size}; expected") and "\n" not in err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("args, message", [
    (["classify", "/nonexistent/bundle", "x.png"], "bundle not found: /nonexistent/bundle"),
    (["export", "-o", "/tmp/x"], "give either CHECKPOINT or --random-init"),
])
def test_errors_are_one_line_and_non_zero(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("args, message", [
    (["classify", "--backend", "nope", "b", "x.png"], "Invalid value for '--backend': 'nope' is not one of"),
    (["nosuch"], "No such command 'nosuch'."),
    (["bench"], "Missing argument 'BUNDLES...'."),
])
def test_usage_errors_are_one_line_with_exit_2_and_where_to_look(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {message}") and err.endswith("--help')") and "\n" not in err


@pytest.mark.parametrize("command, name, message", [
    (["info"], "bundle.zip", "is a file but not a zip archive; expected a bundle folder with manifest.json or a .zip of one"),
    (["export", "-o", "OUT"], "model.pt", "its bytes are neither a torch.save zip archive nor a pickle of tensors"),
])
def test_a_text_file_where_a_bundle_or_model_belongs_is_named_as_such(command, name, message, tmp_path, capsys):
    if command[0] == "export":
        pytest.importorskip("torch")
    text = tmp_path / name
    text.write_text("hello\n")
    args = [command[0], str(text)] + [str(tmp_path / "out") if a == "OUT" else a for a in command[1:]]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "KeyError" not in err


@needs_torch
def test_unreadable_image_and_bad_roi(random_bundle, tmp_path, capsys, image):
    with pytest.raises(SystemExit) as exc:
        main(["classify", str(random_bundle), str(tmp_path / "missing.png")])
    assert exc.value.code != 0 and "cannot read image" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["classify", str(random_bundle), str(image), "--roi", "0,0,999,10"])
    assert "outside the 320x240 frame" in capsys.readouterr().err


def test_info_says_in_words_what_the_model_learnt_from_and_its_held_out_accuracy():
    """The demo model: its labels, its cross-validated AUC from the manifest, and that it saw every row of its
    CSV; a bundle trained on one side of a split names that split instead; a bundle without records says none."""
    from pathlib import Path

    from edge_thyroid.commands.info import training_lines

    demo = Path(__file__).resolve().parents[1] / "edge_thyroid" / "data" / "demo_bundle"
    manifest = json.loads((demo / "manifest.json").read_text())
    cv = manifest["metrics"]["cross_validation"]
    out = run(["info", str(demo)]).output
    assert f"labels      {manifest['metrics']['label_source']}" in out
    assert f"accuracy    AUC {cv['auc']['mean']:.3f} ± {cv['auc']['sd']:.3f} over 4 case-level folds (3 seeds)" in out
    assert f"every labelled row of a CSV with sha256 {manifest['metrics']['training']['data_csv_sha256'][:12]}" in out
    split = {**manifest, "provenance": {"training_data": {"data": "crops.csv", "sha256": "ab" * 32, "folds": 4,
                                                          "fold": 2, "seed": 0}}}
    assert training_lines(split)[-1] == ("trained on  the training side of fold 2/4 (seed 0) of crops.csv "
                                         "(sha256 abababababab...)")
    assert training_lines({"metrics": {}, "provenance": {}}) == []
