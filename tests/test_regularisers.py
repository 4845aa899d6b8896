"""Training-only regularisers of the nodule recipe: stochastic depth in the ResNet backbone
(export/stochastic_depth.py), dropout before the classification head (export/guidance.py) and the weight
average's decay (cross_validate.py --ema). They must leave the checkpoint format, the seeded start and
evaluation untouched, and do exactly what they say in training, checked against a hand-computed reference
in float64."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from .conftest import needs_torch
from .test_mixup import tiny_pack

pytestmark = needs_torch


def test_depth_rates_rise_linearly_from_zero_to_the_asked_rate():
    from edge_thyroid.export.stochastic_depth import depth_rates

    np.testing.assert_allclose(depth_rates(16, 0.1), np.linspace(0.0, 0.1, 16), rtol=0, atol=1e-15)
    assert depth_rates(1, 0.2) == [0.2] and depth_rates(4, 0.0) == [0.0] * 4
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\), got 1.0"):
        depth_rates(16, 1.0)
    with pytest.raises(ValueError, match="at least one residual block, got 0"):
        depth_rates(0, 0.1)


def test_drop_branch_zeroes_whole_samples_and_rescales_the_kept_ones():
    import torch

    from edge_thyroid.export.stochastic_depth import drop_branch

    branch = torch.rand(4000, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.5
    out = drop_branch(branch, 0.3, torch.Generator().manual_seed(2))
    dropped = (out == 0).flatten(1).all(1)
    kept = ~dropped
    # Whole samples: a sample is either all zero or all kept (the inputs are never zero).
    assert bool(((out != 0).flatten(1).all(1) | dropped).all())
    np.testing.assert_allclose(out[kept].numpy(), branch[kept].numpy() / 0.7, rtol=1e-15)
    # The dropped share is a binomial draw: within 4 sigma of 0.3 (sigma ~0.0072 for 4000 samples).
    assert abs(float(dropped.double().mean()) - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 4000)
    assert drop_branch(branch, 0.0) is branch


def test_a_hooked_bottleneck_trains_as_the_hand_computed_stochastic_block_and_evaluates_unchanged():
    import torch
    import torchvision

    from edge_thyroid.export.stochastic_depth import add_stochastic_depth, residual_branch_ends

    torch.manual_seed(0)
    resnet = torchvision.models.resnet50(weights=None).double()
    plain_keys = list(resnet.state_dict())
    plain = copy.deepcopy(resnet.layer4[2]).train()   # the reference, without hooks (its bn3 would draw too)
    handles = add_stochastic_depth(resnet, 0.5)
    assert len(residual_branch_ends(resnet)) == 16 and len(handles) == 15   # the first block's rate is 0
    assert list(resnet.state_dict()) == plain_keys                          # the checkpoint format is unchanged
    block = resnet.layer4[2]                                                # the deepest block: rate 0.5
    x = torch.randn(6, 2048, 3, 3, dtype=torch.float64)
    block.train()
    torch.manual_seed(7)
    hooked = block(x)
    torch.manual_seed(7)
    kept = (torch.rand(6, 1, 1, 1) < 0.5).double() / 0.5   # the hook draws in float32, as here
    with torch.no_grad():
        branch = plain.bn3(plain.conv3(plain.relu(plain.bn2(plain.conv2(plain.relu(plain.bn1(plain.conv1(x))))))))
        reference = torch.relu(branch * kept + x)
    assert 0 < int((kept == 0).sum()) < 6   # this seed drops some samples and keeps others
    np.testing.assert_allclose(hooked.detach().numpy(), reference.numpy(), rtol=1e-12, atol=1e-12)
    # Evaluation: the hooks do nothing; the output is the plain network's, draws or not.
    resnet.eval()
    pixels = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        with_hooks = resnet(pixels)
        for handle in handles:
            handle.remove()
        without = resnet(pixels)
    np.testing.assert_array_equal(with_hooks.numpy(), without.numpy())


def test_stochastic_depth_refuses_a_network_without_residual_blocks():
    import torchvision

    from edge_thyroid.export.stochastic_depth import add_stochastic_depth

    with pytest.raises(ValueError, match="needs a torchvision ResNet .* got a GoogLeNet without layer1"):
        add_stochastic_depth(torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True), 0.1)


def test_head_dropout_drops_only_what_the_head_sees_in_training():
    import torch
    from torch.nn import functional as F

    from edge_thyroid.export.guidance import GuidedClassifier
    from edge_thyroid.export.models import MultimodalClassifier

    torch.manual_seed(0)
    plain = GuidedClassifier(MultimodalClassifier("resnet50"), "bmode")
    torch.manual_seed(0)
    dropped = GuidedClassifier(MultimodalClassifier("resnet50"), "bmode", head_dropout=0.5)
    # No parameters of its own: the seeded start is the recipe's without it.
    for (name, a), (_, b) in zip(plain.state_dict().items(), dropped.state_dict().items()):
        assert torch.equal(a, b), name
    torch.nn.init.normal_(dropped.base.head.weight, std=1e-2)
    dropped = dropped.double()
    pixels = torch.randn(3, 3, 64, 64, dtype=torch.float64)
    dropped.eval()
    with torch.no_grad():
        evaluated = dropped(pixels)
        maps = dropped.base.feature_maps(pixels)
    weight = dropped.base.head.weight[0, :2048].detach()
    presence_bias = dropped.base.head.weight[0, 3 * 2048].detach() + dropped.base.head.bias.detach()
    np.testing.assert_allclose(evaluated["logit"].numpy(),
                               (maps.mean(dim=(2, 3)) @ weight + presence_bias).numpy(),
                               rtol=1e-12)
    # Training: BatchNorm uses batch statistics, so the maps are those of a train-mode pass.
    dropped.train()
    with torch.no_grad():
        torch.manual_seed(3)
        trained = dropped(pixels)
        torch.manual_seed(3)
        pooled = trained["maps"].mean(dim=(2, 3))
        reference = F.dropout(pooled, 0.5, True) @ weight + presence_bias
    np.testing.assert_allclose(trained["logit"].numpy(), reference.numpy(), rtol=1e-12)
    assert not np.allclose(trained["logit"].numpy(), (pooled @ weight + presence_bias).numpy())
    # The CAM and the ordinal head see the whole features.
    np.testing.assert_allclose(trained["cam"].numpy(), torch.einsum("bchw,c->bhw", trained["maps"], weight).numpy(),
                               rtol=1e-12)
    np.testing.assert_allclose(trained["ordinal"].numpy(),
                               (dropped.aux_ordinal(pooled) + dropped.aux_ordinal_bias).detach().numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match=r"head dropout must be in \[0, 1\), got 1.0"):
        GuidedClassifier(MultimodalClassifier("resnet50"), "bmode", head_dropout=1.0)


def test_a_run_with_both_regularisers_trains_records_them_and_the_default_recipe_is_unchanged(tmp_path):
    import torch

    from edge_thyroid.export.checkpoint import load_checkpoint
    from edge_thyroid.export.nodule_training import NoduleRecipe, fit_nodule, recipe_differences

    pack = tiny_pack()
    index = np.arange(len(pack))
    heads = {}
    for name, extra in (("plain", {}), ("off", {"stochastic_depth": 0.0, "head_dropout": 0.0}),
                        ("on", {"stochastic_depth": 0.2, "head_dropout": 0.5})):
        recipe = NoduleRecipe(image_size=64, epochs=1, warmup_epochs=0.5, **extra)
        fit_nodule(recipe, pack, index, tmp_path / name, threads=1, log=lambda msg: None, precision="f32")
        model, info, _ = load_checkpoint(tmp_path / name / "final.pt")
        heads[name] = model.head.weight.detach().clone()
        if name == "on":
            assert info.training["recipe"]["stochastic_depth"] == 0.2 and info.training["recipe"]["head_dropout"] == 0.5
            history = json.loads((tmp_path / name / "history.json").read_text())
            assert all(np.isfinite(history[0][k]) for k in ("cls", "cam", "seg", "ord"))
    # Off is the recipe as it was: the same draws, the same weights, bit for bit.
    assert torch.equal(heads["plain"], heads["off"])
    assert not torch.equal(heads["plain"], heads["on"])
    # A run saved before the fields existed is the recipe with them off, and not the one with them on.
    saved = {k: v for k, v in NoduleRecipe().to_dict().items() if k not in ("stochastic_depth", "head_dropout")}
    assert recipe_differences(saved, NoduleRecipe()) == []
    assert recipe_differences(saved, NoduleRecipe(stochastic_depth=0.1)) == ["stochastic_depth"]
    with pytest.raises(ValueError, match="stochastic depth needs a ResNet backbone .* got googlenet"):
        fit_nodule(NoduleRecipe(backbone="googlenet", image_size=64, epochs=1, stochastic_depth=0.1), pack, index,
                   tmp_path / "g", threads=1, log=lambda msg: None)


def test_cross_validate_offers_both_and_refuses_stochastic_depth_without_residual_blocks(tmp_path, capsys):
    from benchmarks.cross_validate import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert all(option in help_text for option in ("--stochastic-depth", "--head-dropout", "--ema", "--ema-ramp",
                                                   "--cam-weight"))
    pack = tmp_path / "pack.npz"
    pack.write_bytes(b"")
    with pytest.raises(SystemExit) as exit_info:
        main(["--data", str(pack), "--out", str(tmp_path / "o"), "--json", str(tmp_path / "o.json"),
              "--backbone", "googlenet", "--stochastic-depth", "0.1"])
    assert exit_info.value.code == 2
    assert "needs a ResNet backbone (residual blocks to drop), got googlenet" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--data", str(pack), "--out", str(tmp_path / "o"), "--json", str(tmp_path / "o.json"),
              "--head-dropout", "1"])
    assert exit_info.value.code == 2
    assert "--head-dropout" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--data", str(pack), "--out", str(tmp_path / "o"), "--json", str(tmp_path / "o.json"), "--ema", "1.5"])
    assert exit_info.value.code == 2
    assert "--ema" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--data", str(pack), "--out", str(tmp_path / "o"), "--json", str(tmp_path / "o.json"), "--ema-ramp", "1"])
    assert exit_info.value.code == 2
    assert "--ema-ramp" in capsys.readouterr().err


def test_cross_validate_trains_each_fold_with_the_asked_regularisers(tmp_path):
    """The options reach the recipe each fold trains with (recorded in its checkpoint), so a run folder of
    one recipe is never reported under another's options."""
    import torch

    from dataclasses import replace

    from benchmarks.cross_validate import main
    from edge_thyroid.export.datapack import PACK_FORMAT, save_pack

    pack_path = save_pack(replace(tiny_pack(), meta={"format": PACK_FORMAT}), tmp_path / "pack.npz")
    main(["--data", str(pack_path), "--out", str(tmp_path / "run"), "--json", str(tmp_path / "run.json"),
          "--epochs", "1", "--image-size", "64", "--only-folds", "0", "--threads", "1", "--precision", "f32",
          "--stochastic-depth", "0.1", "--head-dropout", "0.3", "--ema", "0.9", "--ema-ramp", "4",
          "--cam-weight", "0.3"],
         standalone_mode=False)
    saved = torch.load(tmp_path / "run" / "fold0_seed0" / "final.pt", map_location="cpu", weights_only=True)
    recipe = saved["training"]["recipe"]
    asked = ("stochastic_depth", "head_dropout", "ema", "ema_ramp", "cam_weight")
    assert tuple(recipe[k] for k in asked) == (0.1, 0.3, 0.9, 4.0, 0.3)
    summary = json.loads((tmp_path / "run.json").read_text())
    assert tuple(summary["recipe"][k] for k in asked) == (0.1, 0.3, 0.9, 4.0, 0.3)
    # The CPU kind is recorded, since f32 fold models are paired only with runs of the same kind.
    assert set(summary["machine"]) >= {"cpu", "cpu_family", "cpu_model"}
