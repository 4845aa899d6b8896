"""The training precision switch (export/nodule_training.py ``--precision``): f32 is the reference recipe on a
CPU, bf16 autocast is the CUDA default and a CPU opt-in. The bf16 step is the code path a GPU sweep runs,
so it is exercised here on the CPU: the same loop, losses in float32, weights kept in float32, the
precision recorded in the checkpoint, and a resume that would mix precisions refused."""

from __future__ import annotations

import json

import click
import numpy as np
import pytest

from .conftest import needs_torch
from .test_mixup import tiny_pack

pytestmark = needs_torch


def test_auto_is_bf16_on_cuda_and_the_f32_reference_on_a_cpu():
    import torch

    from edge_thyroid.export.nodule_training import training_precision

    assert training_precision(torch.device("cpu")) == "f32"
    assert training_precision(torch.device("cuda")) == "bf16"        # a device object needs no GPU
    assert training_precision(torch.device("cpu"), "bf16") == "bf16"
    assert training_precision(torch.device("cuda"), "f32") == "f32"
    with pytest.raises(click.ClickException, match=r"--precision 'fp8' is not supported; expected one of"):
        training_precision(torch.device("cpu"), "fp8")


def test_the_bf16_autocast_runs_convolutions_in_bf16_within_its_rounding():
    import torch

    from edge_thyroid.export.nodule_training import autocast_for

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 16, 3, padding=1)
    x = torch.randn(2, 8, 12, 12)
    reference = torch.nn.functional.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
    with autocast_for(torch.device("cpu"), "f32"):
        full = conv(x)
    with autocast_for(torch.device("cpu"), "bf16"):
        half = conv(x)
    assert full.dtype == torch.float32 and half.dtype == torch.bfloat16
    scale = reference.abs().max().item()
    assert (full.double() - reference).abs().max().item() <= 1e-5 * scale
    # bf16 keeps 8 significant bits: inputs and weights rounded to 2^-9 relative, 72 products summed
    error = (half.double() - reference).abs().max().item()
    assert 1e-4 * scale < error <= 2e-2 * scale     # rounded (it did run in bf16), but only by bf16's rounding


def test_a_bf16_run_trains_records_its_precision_and_keeps_float32_weights(tmp_path):
    import torch

    from edge_thyroid.export.checkpoint import load_checkpoint
    from edge_thyroid.export.nodule_training import NoduleRecipe, fit_nodule

    pack = tiny_pack()
    index = np.arange(len(pack))
    recipe = NoduleRecipe(image_size=64, epochs=1, warmup_epochs=0.5)
    heads = {}
    for precision in ("f32", "bf16"):
        out = tmp_path / precision
        fit_nodule(recipe, pack, index, out, threads=1, log=lambda msg: None, precision=precision)
        model, info, _ = load_checkpoint(out / "final.pt")
        history = json.loads((out / "history.json").read_text())
        assert all(np.isfinite(history[0][k]) for k in ("cls", "cam", "seg", "ord"))
        assert info.training["precision"] == precision and info.training["device"] == "cpu"
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert torch.load(out / "last.pt", weights_only=True)["precision"] == precision
        heads[precision] = model.head.weight.detach().clone()
    # Same seed, same draws: the runs differ only by the forward pass's rounding, which reached the weights.
    assert not torch.equal(heads["f32"], heads["bf16"])
    assert torch.allclose(heads["f32"], heads["bf16"], atol=0.05)


def test_a_resume_that_would_mix_precisions_is_refused(tmp_path):
    from edge_thyroid.export.nodule_training import NoduleRecipe, fit_nodule

    pack = tiny_pack()
    recipe = NoduleRecipe(image_size=64, epochs=1, warmup_epochs=0.5)
    fit_nodule(recipe, pack, np.arange(len(pack)), tmp_path, threads=1, log=lambda msg: None, precision="f32")
    with pytest.raises(click.ClickException, match=r"trained in f32, this run asks for bf16; expected the same "
                                                   r"--precision, a new --out or --no-resume"):
        fit_nodule(recipe, pack, np.arange(len(pack)), tmp_path, threads=1, log=lambda msg: None, precision="bf16")


def test_the_command_line_offers_the_switch(tmp_path):
    from click.testing import CliRunner

    from edge_thyroid.export.nodule_training import main

    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0 and "--precision [auto|f32|bf16]" in result.output
    (tmp_path / "pack.npz").write_bytes(b"")
    result = CliRunner().invoke(main, ["--data", str(tmp_path / "pack.npz"), "--all", "--precision", "fp8",
                                       "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "'fp8' is not one of" in result.output


def test_the_timing_benchmark_reads_epochs_from_the_history_and_alternates_the_order():
    from benchmarks import training_precision_bench as bench

    history = [{"epoch": 1, "elapsed_s": 30.0}, {"epoch": 2, "elapsed_s": 50.5}, {"epoch": 3, "elapsed_s": 71.0}]
    assert bench.epoch_seconds(history) == pytest.approx([20.5, 20.5])   # the warm-up epoch dropped
    assert bench.order_of_round(0) == ("f32", "bf16") and bench.order_of_round(1) == ("bf16", "f32")
    cpu = bench.cpu_description()
    assert set(cpu) == {"model", "bf16_flags"} and set(cpu["bf16_flags"]) <= {"avx512_bf16", "amx_bf16", "amx_tile"}
