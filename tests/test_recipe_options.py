"""export/recipe_options.py: the single-model trainer and cross-validation take the same recipe knobs from one
definition; unset knobs keep the recipe's defaults; bad combinations are one-line usage errors (exit 2)
before any data loads; a knob given to the single-model trainer reaches the checkpoint's recipe."""

from __future__ import annotations

import dataclasses

import pytest

from edge_thyroid.export.recipe_options import RECIPE_FIELDS, RECIPE_FLAGS, RECIPE_OPTIONS, recipe_overrides

from .conftest import needs_torch


def _mains():
    from benchmarks.cross_validate import main as cross_validate
    from edge_thyroid.export.nodule_training import main as nodule_training

    return {"nodule_training": nodule_training, "cross_validate": cross_validate}


@needs_torch
def test_every_knob_is_a_recipe_field_and_both_commands_offer_every_knob():
    from edge_thyroid.export.nodule_training import NoduleRecipe

    fields = {f.name for f in dataclasses.fields(NoduleRecipe)}
    assert set(RECIPE_FIELDS) <= fields and len(set(RECIPE_FIELDS)) == len(RECIPE_FIELDS)
    options = {option for option, *_ in RECIPE_OPTIONS} | {option for option, *_ in RECIPE_FLAGS}
    for name, command in _mains().items():
        offered = {opt for param in command.params for opt in param.opts}
        assert options <= offered, f"{name} lacks {sorted(options - offered)}"
        assert {param.name for param in command.params} >= set(RECIPE_FIELDS)


def test_only_the_knobs_given_override_the_recipe():
    nothing = {field: None for field in RECIPE_FIELDS} | {field: False for _, field, _ in RECIPE_FLAGS}
    assert recipe_overrides(nothing, "resnet50") == {}
    given = nothing | {"weight_decay": 0.0, "cam_weight": 0.3, "level_targets": True, "replay": "p.npz",
                       "replay_per_batch": 4}
    # 0.0 is a value given (weight decay off), not an unset option.
    assert recipe_overrides(given, "resnet50") == {"weight_decay": 0.0, "cam_weight": 0.3, "level_targets": True,
                                                   "replay": "p.npz", "replay_per_batch": 4}


@needs_torch
@pytest.mark.parametrize("command", ["nodule_training", "cross_validate"])
@pytest.mark.parametrize("args, message", [
    (["--replay-per-batch", "4"], "--replay-per-batch needs --replay PACK"),
    (["--replay", "{pack}"], "--replay needs --replay-per-batch N"),
    (["--replay-shared-head"], "--replay-shared-head needs --replay PACK and --replay-per-batch N"),
    (["--backbone", "googlenet", "--stochastic-depth", "0.1"], "needs a ResNet backbone (residual blocks to drop), got googlenet"),
    (["--image-size", "8"], "8 is not in the range 32<=x<=1024"),
    (["--backbone-lr-scale", "0"], "0.0 is not in the range 0<x<=1"),
    (["--weight-decay", "-1"], "-1.0 is not in the range x>=0"),
    (["--rank-weight", "1", "--mixup", "0.4"], "--rank-weight cannot be combined with --mixup"),
    (["--rank-weight", "-0.5"], "-0.5 is not in the range x>=0"),
    (["--sampler", "natural", "--mixup", "0.4"], "--sampler natural weights the BCE by hard labels"),
    (["--sampler", "uniform"], "'uniform' is not one of 'balanced', 'natural'"),
    (["--p-swap", "1.5"], "1.5 is not in the range 0<=x<=1"),
])
def test_bad_knobs_are_one_line_usage_errors_before_the_data_loads(tmp_path, capsys, command, args, message):
    pack = tmp_path / "pack.npz"
    pack.write_bytes(b"")   # not a pack: reading it would be another error, so the refusal comes first
    where = {"nodule_training": ["--fold", "0"], "cross_validate": ["--json", str(tmp_path / "o.json")]}[command]
    argv = ["--data", str(pack), "--out", str(tmp_path / "o"), *where, *[a.format(pack=pack) for a in args]]
    with pytest.raises(SystemExit) as exit_info:
        _mains()[command](argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.split()) and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@needs_torch
def test_the_single_model_trainer_records_the_knobs_it_was_given(tmp_path):
    import torch

    from dataclasses import replace

    from edge_thyroid.export.datapack import PACK_FORMAT, save_pack
    from edge_thyroid.export.nodule_training import NoduleRecipe, main

    from .test_mixup import tiny_pack

    pack_path = save_pack(replace(tiny_pack(), meta={"format": PACK_FORMAT}), tmp_path / "pack.npz")
    main(["--data", str(pack_path), "--out", str(tmp_path / "run"), "--fold", "0", "--epochs", "1",
          "--image-size", "64", "--threads", "1", "--precision", "f32", "--weight-decay", "0.01",
          "--head-dropout", "0.2", "--ema-ramp", "4", "--cam-weight", "0.3", "--p-cyst", "0.1",
          "--rank-weight", "1", "--sampler", "natural", "--p-swap", "0.5"],
         standalone_mode=False)
    recipe = torch.load(tmp_path / "run" / "final.pt", map_location="cpu", weights_only=True)["training"]["recipe"]
    asked = {"weight_decay": 0.01, "head_dropout": 0.2, "ema_ramp": 4.0, "cam_weight": 0.3, "p_cyst": 0.1,
             "image_size": 64, "rank_weight": 1.0,
             "sampler": "natural", "p_swap": 0.5}
    assert {k: recipe[k] for k in asked} == asked
    # What was not given is the recipe's default.
    defaults = NoduleRecipe()
    assert (recipe["stochastic_depth"], recipe["lr"], recipe["ema"]) == (defaults.stochastic_depth, defaults.lr,
                                                                        defaults.ema)
