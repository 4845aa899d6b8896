"""The training recipe's knobs as command-line options: one definition for every command that trains.

``python -m edge_thyroid.export.nodule_training`` (one model) and ``benchmarks/cross_validate.py`` (each
fold, and the all-data model) take the same knobs, so a recipe screened under cross-validation trains as a
single model with the same words. Every option defaults to None: left unset, the recipe keeps its own
default (export/nodule_training.py ``NoduleRecipe``), so a run's overrides say only what it changed.

Only click is imported here, so a command's ``--help`` stays instant.
"""

from __future__ import annotations

from typing import Any, Callable

import click

# NoduleRecipe.sampler's values: how the classes are balanced (export/nodule_training.py epoch_draws).
SAMPLERS = ("balanced", "natural")

# (option, NoduleRecipe field, click type, help), in the order --help lists them.
RECIPE_OPTIONS: tuple[tuple[str, str, Any, str], ...] = (
    ("--lr", "lr", float, "Peak learning rate (default: the recipe's 5e-4)."),
    ("--weight-decay", "weight_decay", click.FloatRange(0, None),
     "AdamW's decoupled weight decay (default: the recipe's 5e-4; over the recipe's ~500 steps at lr 5e-4 it "
     "shrinks the weights by well under 1%)."),
    ("--stochastic-depth", "stochastic_depth", click.FloatRange(0, 1, max_open=True),
     "ResNet stochastic depth: the deepest residual block's drop rate, rising linearly from 0 at the first "
     "(export/stochastic_depth.py; default: the recipe's 0, off)."),
    ("--head-dropout", "head_dropout", click.FloatRange(0, 1, max_open=True),
     "Dropout on the pooled features the classification head sees, training only (default: the recipe's 0, off)."),
    ("--ema", "ema", click.FloatRange(0, 1, max_open=True),
     "Cap on the decay of the weight average that becomes the model (default: the recipe's 0.99). The decay "
     "ramps up as (1+s)/(R+s) and, with R 10, reaches 0.99 only after 890 steps: in the recipe's ~510 steps a "
     "higher cap changes nothing (use --ema-ramp)."),
    ("--ema-ramp", "ema_ramp", click.FloatRange(2, None),
     "R of the decay's ramp (1+s)/(R+s): until the --ema cap acts, the average weights step j like j^(R-2), so "
     "R sets its length (default: the recipe's 10, ~92% on the last quarter of the steps; R 4 with --ema "
     "0.9999: ~58%; R 2: the plain mean of every step)."),
    ("--cam-weight", "cam_weight", click.FloatRange(0, None),
     "Weight of the CAM guidance loss (the share of the CAM's evidence outside the dilated nodule mask; "
     "default: the recipe's 1; 0 turns the guidance off)."),
    ("--backbone-lr-scale", "backbone_lr_scale", click.FloatRange(0, 1, min_open=True),
     "The backbone's learning rate as a share of --lr, the heads keeping --lr (default: the recipe's 1)."),
    ("--image-size", "image_size", click.IntRange(32, 1024),
     "Model input side in pixels, 32-1024 (default: the recipe's 128); the bundle's preprocessing follows it."),
    ("--descriptor-weight", "descriptor_weight", click.FloatRange(0, None),
     "Weight of the sonographic-descriptor head (export/descriptors.py; default: the recipe's 0, off)."),
    ("--p-cyst", "p_cyst", click.FloatRange(0, 1),
     "Share of training draws whose nodule becomes a synthetic anechoic cyst labelled benign (TI-RADS 2; "
     "export/augment.py synthetic_cyst; default: the recipe's 0, off; the shipped model: 0.1)."),
    ("--p-spongiform", "p_spongiform", click.FloatRange(0, 1),
     "Share of the other draws whose nodule becomes a synthetic spongiform one (small cystic spaces in an "
     "isoechoic oval) labelled benign (TI-RADS 2; export/augment.py synthetic_spongiform; default: the "
     "recipe's 0, off)."),
    ("--p-swap", "p_swap", click.FloatRange(0, 1),
     "Share of the other draws that keep their nodule and a ring of its own tissue on another training-side "
     "crop's surroundings, brightness matched at the ring (export/augment.py swap_background; default: the "
     "recipe's 0, off)."),
    ("--gamma-range", "gamma_log_range", click.FloatRange(0, 1.5),
     "Scanner gamma drawn as exp(U(-R, R)) (export/augment.py scanner_look; default: the recipe's 0.3, i.e. "
     "0.74-1.35; 0.6 reaches 0.55-1.82)."),
    ("--rank-weight", "rank_weight", click.FloatRange(0, None),
     "Weight of a pairwise ranking loss beside the binary head's BCE: the mean over each batch's "
     "malignant/benign pairs of softplus(benign logit - malignant logit), the logistic surrogate of 1 - AUC "
     "(export/guidance.py pairwise_rank_loss; default: the recipe's 0, off)."),
    ("--sampler", "sampler", click.Choice(SAMPLERS),
     "How the classes are balanced: balanced draws each labelled crop's class by a fair coin (the few benign "
     "crops recur ~3x an epoch); natural meets every labelled crop once an epoch and weights the BCE so each "
     "class carries half of it (default: the recipe's balanced)."),
    ("--mixup", "mixup_alpha", click.FloatRange(0, None),
     "Mixup of the labelled crops with Beta(alpha, alpha) weights (export/mixup.py; default: the recipe's 0, off)."),
    ("--replay", "replay", click.Path(exists=True, dir_okay=False),
     "Data pack whose labelled crops are replayed during fine-tuning with a head of their own, dropped at "
     "export (e.g. runs/pretrain_pack.npz: BUSI); needs --replay-per-batch."),
    ("--replay-per-batch", "replay_per_batch", click.IntRange(0, None),
     "Replayed crops per training step (default: the recipe's 0, off); needs --replay."),
    ("--unlabelled-per-batch", "unlabelled_per_batch", click.IntRange(0, None),
     "Unlabelled crops per training step: the mask heads' (and, with pseudo-labels, the classifier's) extra "
     "crops (default: the recipe's 2)."),
)

# On/off knobs: a flag given sets the field True; not given, the recipe's own False stays.
RECIPE_FLAGS: tuple[tuple[str, str, str], ...] = (
    ("--level-targets", "level_targets",
     "Binary head targets graded by TI-RADS level (2: 0, 3: 0.25, 4a: 0.75, 4b: 0.85, 4c: 0.95, 5: 1) "
     "instead of 0/1 (default: the recipe's 0/1)."),
    ("--replay-shared-head", "replay_shared_head",
     "Score the replayed crops with the thyroid head itself (more labelled cases of 'malignant or not' from "
     "another organ) instead of a head of their own; needs --replay and --replay-per-batch."),
)

RECIPE_FIELDS = tuple(field for _, field, _, _ in RECIPE_OPTIONS) + tuple(field for _, field, _ in RECIPE_FLAGS)


def recipe_options(command: Callable) -> Callable:
    """Decorate a click command with every recipe knob; each reaches the command as its NoduleRecipe field
    name (``--gamma-range`` as ``gamma_log_range``), None (a flag: False) when not given."""
    for option, field, text in reversed(RECIPE_FLAGS):
        command = click.option(option, field, is_flag=True, default=False, help=text)(command)
    for option, field, kind, text in reversed(RECIPE_OPTIONS):
        command = click.option(option, field, type=kind, default=None, help=text)(command)
    return command


def recipe_overrides(params: dict[str, Any], backbone: str, pseudo_labels: bool = False) -> dict[str, Any]:
    """The knobs given, as NoduleRecipe fields (what the run changes), after the checks that need more than
    one option (``pseudo_labels``: the command was given teachers for pseudo-labels); a bad combination is a
    one-line usage error before any data loads."""
    given = {field: params.get(field) for field in RECIPE_FIELDS}
    if given["replay_per_batch"] and not given["replay"]:
        raise click.UsageError("--replay-per-batch needs --replay PACK (e.g. runs/pretrain_pack.npz)")
    if given["replay"] and not given["replay_per_batch"]:
        raise click.UsageError("--replay needs --replay-per-batch N (crops replayed per step)")
    if given["replay_shared_head"] and not given["replay_per_batch"]:
        raise click.UsageError("--replay-shared-head needs --replay PACK and --replay-per-batch N")
    if given["rank_weight"] and given["mixup_alpha"]:
        raise click.UsageError("--rank-weight cannot be combined with --mixup: a blend of two crops is neither class")
    if given["sampler"] == "natural" and (given["mixup_alpha"] or pseudo_labels):
        raise click.UsageError("--sampler natural weights the BCE by hard labels: it cannot be combined with "
                               "--mixup or pseudo-labels")
    if given["stochastic_depth"] and not backbone.startswith("resnet"):
        raise click.BadParameter(f"needs a ResNet backbone (residual blocks to drop), got {backbone}",
                                 param_hint="--stochastic-depth")
    flags = {field for _, field, _ in RECIPE_FLAGS}
    return {field: value for field, value in given.items() if (value if field in flags else value is not None)}
