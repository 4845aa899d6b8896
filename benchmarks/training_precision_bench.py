"""Seconds per training epoch of the nodule recipe in f32 and in bf16 autocast, on this machine.

    python benchmarks/training_precision_bench.py --data runs/ddti_pack.npz --epochs 3 --threads 2 \\
        --json benchmarks/results/training_precision_bench.json

Each round trains fold 0's training side for ``--epochs`` epochs in each precision (the order alternates
between rounds, so a drift in the machine's speed does not favour one); an epoch's time is read from the
run's own history (data drawing and augmentation included, as in a real run). The first epoch of a run
is dropped (allocator and kernel warm-up). Reported: the median seconds per epoch of each precision and
their ratio, with the CPU's model and its bf16 support, since the ratio depends on it (AMX or AVX-512
BF16 make bf16 cheap; without them autocast emulates it and can be slower than f32).
"""

from __future__ import annotations

import json
import platform
import statistics
import tempfile
from pathlib import Path

import click
import numpy as np

PRECISIONS = ("f32", "bf16")


def cpu_description() -> dict:
    """Model name and the bf16-relevant flags from /proc/cpuinfo (empty where it is absent)."""
    from edge_thyroid.cpuinfo import cpu_flags, cpuinfo_fields

    return {"model": cpuinfo_fields().get("model name") or platform.processor(),
            "bf16_flags": sorted(cpu_flags() & {"avx512_bf16", "amx_bf16", "amx_tile"})}


def epoch_seconds(history: list[dict]) -> list[float]:
    """Per-epoch seconds from a run's cumulative ``elapsed_s``, the first epoch dropped (warm-up)."""
    elapsed = [float(h["elapsed_s"]) for h in history]
    steps = np.diff([0.0, *elapsed]).tolist()
    return steps[1:]


def order_of_round(number: int) -> tuple[str, ...]:
    return PRECISIONS if number % 2 == 0 else PRECISIONS[::-1]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False), help="DDTI data pack (export/datapack.py).")
@click.option("--epochs", type=click.IntRange(2, None), default=3, show_default=True,
              help="Epochs per run; the first of each is dropped.")
@click.option("--rounds", type=click.IntRange(1, None), default=1, show_default=True,
              help="Runs per precision, alternating which goes first.")
@click.option("--threads", type=click.IntRange(1, None), default=2, show_default=True)
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False))
def main(data, epochs, rounds, threads, json_out) -> None:
    """Median seconds per epoch in f32 and in bf16 autocast, and their ratio."""
    import torch

    from edge_thyroid.export.datapack import pack_for
    from edge_thyroid.export.nodule_training import NoduleRecipe, fit_nodule, fold_assignment

    pack = pack_for(data)
    train_index = np.flatnonzero(fold_assignment(pack, 4) != 0)
    seconds: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    with tempfile.TemporaryDirectory() as scratch:
        for number in range(rounds):
            for precision in order_of_round(number):
                out = Path(scratch) / f"{precision}_{number}"
                fit_nodule(NoduleRecipe(epochs=epochs), pack, train_index, out, device="cpu", threads=threads,
                           resume=False, precision=precision, log=lambda msg: None)
                history = json.loads((out / "history.json").read_text())
                seconds[precision] += epoch_seconds(history)
                click.echo(f"round {number + 1}/{rounds} {precision}: "
                           + ", ".join(f"{s:.1f}" for s in seconds[precision][-(epochs - 1):]) + " s per epoch", err=True)
    medians = {p: statistics.median(v) for p, v in seconds.items()}
    result = {"what": "seconds per training epoch of the nodule recipe (fold 0's training side, 128 px, batch 16+2)",
              "cpu": cpu_description(), "threads": threads, "torch": torch.__version__, "epochs_per_run": epochs,
              "rounds": rounds, "seconds_per_epoch": seconds, "median_s": medians,
              "bf16_over_f32": medians["bf16"] / medians["f32"]}
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(result, indent=1))
    click.echo(json.dumps({"median_s": {k: round(v, 2) for k, v in medians.items()},
                           "bf16_over_f32": round(result["bf16_over_f32"], 3), "cpu": result["cpu"]}, indent=1))


if __name__ == "__main__":
    main()
