"""Case-level cross-validation of the nodule-guided recipe: the figures the product reports.

    python benchmarks/cross_validate.py --data ../shared/data/ddti/labels.csv --out runs/cv_resnet50 \\
        --json benchmarks/results/cv_resnet50.json [--backbone resnet50] [--epochs 16] [--folds 4] [--seeds 0]

For every fold (and seed) it trains the fixed recipe (export/nodule_training.py: fixed schedule, no epoch
picked on the fold) on the other folds' crops, then scores the held-out crops:

* AUC with DeLong's 95% CI on the stock crops;
* AUC on boxes around the nodule at fixed margins 1.2x, 1.5x and 2x its mask's bounding box;
* the share of the CAM's positive mass inside the nodule mask (as benchmarks/cam_localization.py measures
  it on a bundle), beside the mask's own area;
* sensitivity/specificity at a threshold chosen on the training side (Youden on the training crops'
  scores) and the share of TI-RADS 2 crops scored benign at that threshold.

It reports every fold and the mean +- sd over folds (never a best fold), saves the out-of-fold scores,
and is resumable: a fold whose result file exists is not retrained (if its model trained with the recipe
asked for now; a run folder of other options is refused, not reported under the new ones). Labels are
TI-RADS-derived, not pathology. Finally ``--also-all`` trains the same recipe on every crop (the shipped
model) with the threshold chosen on the pooled out-of-fold scores.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import click
import numpy as np

from edge_thyroid.export.recipe_options import recipe_options, recipe_overrides

MARGINS = (1.2, 1.5, 2.0)


def fold_model_dir(run_dir: str | Path, fold: int, seed: int) -> Path:
    """Where a run of this script keeps one fold's model of one seed (final.pt, last.pt, its results)."""
    return Path(run_dir) / f"fold{fold}_seed{seed}"


def recorded_mirror_roll(fold_dir: Path) -> int:
    """The mirror roll this script's --test-time-flip measured for a fold model (what its bundle records);
    a one-line error when the model was not scored that way."""
    recorded = Path(fold_dir) / "result_test_time_flip.json"
    if not recorded.is_file():
        raise click.ClickException(f"{recorded} is missing; expected a fold model scored by cross_validate.py "
                                   f"--test-time-flip (it lines each fold model's mirror up)")
    return int(json.loads(recorded.read_text())["mirror_roll"])


def _cam_in_mask(cams: np.ndarray, masks: np.ndarray) -> np.ndarray:
    from edge_thyroid.visualize import cam_to_heat

    shares = np.full(len(cams), np.nan)
    for i, (cam, mask) in enumerate(zip(cams, masks)):
        if not mask.any():
            continue
        heat = cam_to_heat(cam, mask.shape[1], mask.shape[0]).astype(np.float64)
        total = heat.sum()
        shares[i] = heat[mask].sum() / total if total > 0 else np.nan
    return shares


def evaluate_fold(model, pack, train_index: np.ndarray, val_index: np.ndarray, image_size: int,
                  test_time_flip: bool = False) -> dict:
    """Every held-out figure of one trained fold model (see the module docstring); ``test_time_flip``:
    scored as a bundle exported with --test-time-flip scores (export/test_time.py)."""
    from edge_thyroid.export.datapack import TIRADS_LEVELS
    from edge_thyroid.export.nodule_training import evaluation_box, score
    from edge_thyroid.metrics import delong_auc_ci, operating_point, roc_auc, youden_threshold

    val_index = val_index[pack.labels[val_index] >= 0]
    train_index = train_index[pack.labels[train_index] >= 0]
    labels = pack.labels[val_index].astype(int)
    images = [pack.images[i] for i in val_index]
    masks = [pack.masks[i] for i in val_index]
    roll = {}
    if test_time_flip:   # lined up on training-side crops, as the export does on its training images
        import torch

        from edge_thyroid.export.nodule_training import to_pixels
        from edge_thyroid.export.test_time import model_mirror_roll
        from edge_thyroid.kernels.reference import PreprocessSpec

        sample = np.random.default_rng(0).choice(train_index, min(64, len(train_index)), replace=False)
        pixels = torch.from_numpy(np.stack([to_pixels(pack.images[i], PreprocessSpec(image_size=image_size))
                                            for i in sample]))
        roll["mirror_roll"], _ = model_mirror_roll(model, pixels)
    flip = {"test_time_flip": test_time_flip, **roll}
    p_stock, cams = score(model, images, [None] * len(images), image_size, **flip)
    p_train, _ = score(model, [pack.images[i] for i in train_index], [None] * len(train_index), image_size, **flip)
    threshold = youden_threshold(pack.labels[train_index].astype(int), p_train)
    ci = delong_auc_ci(labels, p_stock)
    result = {
        "val_crops": int(len(val_index)), "val_benign": int((labels == 0).sum()),
        "val_cases": int(len(set(pack.case_ids[val_index].tolist()))),
        "auc": ci.auc, "auc_ci95": [ci.low, ci.high],
        "auc_train_side": roc_auc(pack.labels[train_index].astype(int), p_train),
        "threshold": threshold, "threshold_chosen_on": "training side (Youden on the training crops' scores)",
        **roll,
    }
    op = operating_point(labels, p_stock, threshold)
    result["sensitivity"], result["specificity"] = op.sensitivity, op.specificity
    tirads2 = pack.tirads[val_index] == TIRADS_LEVELS.index("2")
    result["tirads2_crops"] = int(tirads2.sum())
    result["tirads2_benign_rate"] = float(np.mean(p_stock[tirads2] < threshold)) if tirads2.any() else None
    for margin in MARGINS:
        boxes = [evaluation_box(m, margin) for m in masks]
        p, _ = score(model, images, boxes, image_size, **flip)
        result[f"auc_margin_{margin}"] = roc_auc(labels, p)
    shares = _cam_in_mask(cams, masks)
    areas = np.array([m.mean() for m in masks])
    has = np.isfinite(shares)
    result["cam_in_mask"] = float(np.mean(shares[has]))
    result["mask_area"] = float(np.mean(areas[has]))
    result["cam_in_mask_crops"] = int(has.sum())
    result["scores"] = [{"image": str(pack.names[i]), "label": int(pack.labels[i]), "tirads": int(pack.tirads[i]),
                         "p": float(p)} for i, p in zip(val_index, p_stock)]
    return result


SUMMARY_KEYS = ("auc", "auc_margin_1.2", "auc_margin_1.5", "auc_margin_2.0", "cam_in_mask", "mask_area",
                "sensitivity", "specificity", "tirads2_benign_rate", "auc_train_side")


def _per_fold(results: list[dict], key: str) -> list[float]:
    """One value per fold: a fold trained with several seeds counts once, as its seeds' mean, so the
    spread reported is the spread over folds (held-out case sets), not over fold x seed runs."""
    by_fold: dict[int, list[float]] = {}
    for r in results:
        if r.get(key) is not None:
            by_fold.setdefault(r["fold"], []).append(float(r[key]))
    return [float(np.mean(by_fold[f])) for f in sorted(by_fold)]


def mean_sd(values: list[float]) -> dict:
    """Mean, sd (ddof 1; None for one value) and the values themselves, rounded, as the results JSONs hold them."""
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "sd": float(array.std(ddof=1)) if len(array) > 1 else None,
            "folds": [round(float(v), 4) for v in array]}


def summarise(results: list[dict]) -> dict:
    """Mean +- sd over folds of every held-out figure (seeds averaged within a fold first); with more than
    one seed also each seed's mean AUC over folds and the sd of those means (the seed-to-seed spread)."""
    summary = {key: mean_sd(values) for key in SUMMARY_KEYS if (values := _per_fold(results, key))}
    if all("auc_margin_2.0" in r and "auc_margin_1.2" in r for r in results):
        gaps = np.subtract(_per_fold(results, "auc_margin_2.0"), _per_fold(results, "auc_margin_1.2"))
        summary["auc_margin_2_minus_1.2"] = {"mean": float(gaps.mean()), "folds": [round(float(g), 4) for g in gaps]}
    seeds = sorted({r["seed"] for r in results})
    if len(seeds) > 1:
        per_seed = {seed: [r["auc"] for r in results if r["seed"] == seed] for seed in seeds}
        summary["auc_by_seed"] = {str(seed): {"mean": float(np.mean(v)), "folds_done": len(v)}
                                  for seed, v in per_seed.items()}
        summary["auc_seed_sd"] = float(np.std([np.mean(v) for v in per_seed.values()], ddof=1))
    return summary


def out_of_fold_by_crop(cv_json: Path) -> tuple[dict[str, float], dict[str, float]]:
    """From a results JSON, per crop (file stem): its p averaged over seeds, and the share of its fold
    models that call it malignant at their own train-side threshold."""
    record = json.loads(Path(cv_json).read_text())
    threshold = {(r["fold"], r["seed"]): r["threshold"] for r in record["per_fold"]}
    p: dict[str, list[float]] = {}
    called: dict[str, list[bool]] = {}
    for block in record["scores"]:
        cut = threshold[(block["fold"], block["seed"])]
        for row in block["scores"]:
            key = Path(row["image"]).stem
            p.setdefault(key, []).append(row["p"])
            called.setdefault(key, []).append(row["p"] >= cut)
    return {k: float(np.mean(v)) for k, v in p.items()}, {k: float(np.mean(v)) for k, v in called.items()}


def pooled_out_of_fold(results: list[dict]) -> dict:
    """Every labelled crop's out-of-fold score (averaged over seeds when there are several), pooled: the
    AUC with its DeLong CI, the Youden threshold given to the model trained on all data, and the share of
    TI-RADS 2 crops below that threshold (the issue's "benign at the shipped threshold"; optimistic, as the
    threshold is chosen on these same scores)."""
    from edge_thyroid.export.datapack import TIRADS_LEVELS
    from edge_thyroid.metrics import delong_auc_ci, youden_threshold

    by_crop: dict[str, tuple[int, int | None, list[float]]] = {}
    for r in results:
        for s in r["scores"]:
            by_crop.setdefault(s["image"], (s["label"], s.get("tirads"), []))[2].append(float(s["p"]))
    labels = np.array([label for label, _, _ in by_crop.values()])
    scores = np.array([np.mean(ps) for _, _, ps in by_crop.values()])
    tirads2 = np.array([level == TIRADS_LEVELS.index("2") for _, level, _ in by_crop.values()])
    ci = delong_auc_ci(labels, scores)
    threshold = youden_threshold(labels, scores)
    seeds = len({r["seed"] for r in results})
    note = "scores of different fold models pooled: the threshold for the model trained on all data"
    pooled = {"crops": int(len(labels)), "auc": ci.auc, "auc_ci95": [ci.low, ci.high], "youden_threshold": threshold,
              "note": note + (f"; each crop's score is the mean of its {seeds} seeds' fold models" if seeds > 1 else "")}
    if tirads2.any():
        pooled["tirads2_crops"] = int(tirads2.sum())
        pooled["tirads2_benign_at_threshold"] = float(np.mean(scores[tirads2] < threshold))
    return pooled


SCHEDULES = ("steps", "epochs")
FIRST_SCHEDULE = "steps"   # what a result without train_schedule was trained with (the only one before the option)


def cpu_kind(cpuinfo: str | None = None) -> dict:
    """The CPU's model name, family and model number (None where absent): f32 training is bit-exact on one CPU
    kind and not across kinds, so a run's figures are paired only with runs of its kind, and a virtual CPU's
    name alone ("Intel(R) Xeon(R) Processor") does not say which kind it is."""
    from edge_thyroid.cpuinfo import cpuinfo_fields

    fields = cpuinfo_fields(cpuinfo)
    number = lambda key: int(fields[key]) if fields.get(key, "").isdigit() else None  # noqa: E731
    return {"cpu": fields.get("model name") or platform.processor() or None, "cpu_family": number("cpu family"),
            "cpu_model": number("model")}


def subsample_seed(fold: int, draw: int = 0) -> int:
    """The case draw's generator seed: draw 0 is each fold's own draw (the learning curves' first), later
    draws are other, fixed subsets of the same fold's cases."""
    return fold if draw == 0 else 1000 * draw + fold


def shrink_training_side(pack, train_index: np.ndarray, share: float, fold: int, recipe,
                         schedule: str = "steps", draw: int = 0) -> np.ndarray:
    """``share`` of the fold's labelled training cases (export/subsample.py; one draw per fold and ``draw``,
    whatever the seed: seeds differ in training only). ``schedule`` "steps": ``recipe`` set to as many optimizer steps as
    the whole side gets (more epochs over fewer crops), so a smaller set is not also a shorter training;
    warm-up and the cosine follow in steps. "epochs": the recipe's epochs unchanged (fewer steps), the other
    reading of "the same training". ``share`` 1: the side and the recipe unchanged."""
    from edge_thyroid.export.subsample import case_subsample

    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r}: expected one of {', '.join(SCHEDULES)}")
    if share >= 1:
        return train_index

    def steps(index: np.ndarray) -> int:
        return max(1, int((pack.labels[index] >= 0).sum()) // recipe.batch_size)

    kept = case_subsample(pack.case_ids, pack.labels, train_index, share, seed=subsample_seed(fold, draw))
    if schedule == "epochs":
        return kept
    scale = steps(train_index) / steps(kept)
    recipe.epochs, recipe.warmup_epochs = round(recipe.epochs * scale), recipe.warmup_epochs * scale
    return kept


def refuse_another_recipe(checkpoint: Path, expected) -> None:
    """A finished fold is reused only if its model trained with the recipe asked for now: the same run folder
    with another --epochs, --weight-decay, ... would otherwise report the old models under the new options.
    ``init`` is compared by the options that make it, not by its path (``./runs/x.pt`` is ``runs/x.pt``).
    A fold whose checkpoint is gone (results kept alone) is taken as it is."""
    if not checkpoint.is_file():
        return
    import torch

    from edge_thyroid.export.nodule_training import recipe_differences

    # mmap: only the recipe is read, not the ~100 MB of weights beside it, for every reused fold.
    payload = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    saved = (payload.get("training") or {}).get("recipe") or {}
    if not saved:
        return
    differences = [key for key in recipe_differences(saved, expected) if key != "init"]
    if differences:
        now = expected.to_dict()
        raise click.ClickException(
            f"{checkpoint.parent} was trained with " + ", ".join(f"{k} {saved.get(k, 'unset')}" for k in differences)
            + ", not " + ", ".join(f"{k} {now.get(k, 'unset')}" for k in differences)
            + "; expected a run folder of its own per recipe (another --out)")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False), help="Labelled CSV or data pack (.npz).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Run folder (one sub-folder per fold).")
@click.option("--json", "json_out", required=True, type=click.Path(dir_okay=False), help="Results JSON (rewritten after every fold).")
@click.option("--backbone", default="resnet50", show_default=True)
@click.option("--epochs", type=int, default=16, show_default=True)
@click.option("--folds", type=int, default=4, show_default=True)
@click.option("--only-folds", default=None, help="Comma-separated folds to run (default: all), e.g. to order the work.")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated training seeds.")
@click.option("--init", default=None,
              help="Pre-trained checkpoint whose backbone starts every fold (and the all-data model); with "
                   "'{fold}' in it, one per fold ('all' for the all-data model), e.g. runs/ssl/fold{fold}/final.pt "
                   "from export/ssl_pretrain.py, so no fold starts from weights that saw its held-out crops.")
@click.option("--pseudo-labels-from", "pseudo_run", default=None, type=click.Path(exists=True, file_okay=False),
              help="An earlier cross-validation run whose models of each fold (every seed; 'all' for the all-data "
                   "model) give the unlabelled crops soft labels (export/pseudo_labels.py; default: off).")
@click.option("--test-time-flip", is_flag=True,
              help="Score every fold as a bundle exported with --test-time-flip does (each input's maps averaged "
                   "with its mirror image's); training is unchanged, so existing fold models are re-scored.")
@click.option("--train-cases", "train_cases", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
              help="Share of each fold's labelled training cases kept (export/subsample.py: whole cases, benign and other "
                   "cases drawn apart, nested across shares, one draw per fold and --case-draw), trained for as many optimizer steps as "
                   "the whole training side (more epochs); for a learning curve. The held-out fold is unchanged.")
@click.option("--train-schedule", "train_schedule", type=click.Choice(SCHEDULES), default="steps", show_default=True,
              help="With --train-cases below 1: keep the whole side's optimizer steps (more epochs over fewer crops) "
                   "or its epochs (fewer steps).")
@click.option("--case-draw", type=click.IntRange(0, None), default=0, show_default=True,
              help="With --train-cases below 1: which subset of cases each fold keeps (0: the first draw; 1, 2, ...: "
                   "other fixed draws), so a learning curve's point can be repeated on other cases.")
@click.option("--threads", type=int, default=0)
@click.option("--device", default="auto", show_default=True)
@click.option("--precision", type=click.Choice(("auto", "f32", "bf16")), default="auto", show_default=True,
              help="Training forward pass: auto is bf16 on CUDA, f32 (the reference recipe) on a CPU.")
@click.option("--workers", type=int, default=0, show_default=True)
@click.option("--also-all", is_flag=True, help="Then train the same recipe on every crop (OUT/all/final.pt).")
@click.option("--all-first-after", type=int, default=None,
              help="Train the all-data model after this many folds (default: after every fold).")
@recipe_options
def main(data, out_dir, json_out, backbone, epochs, folds, only_folds, seeds, init, pseudo_run, test_time_flip,
         train_cases, train_schedule, case_draw, threads, device, precision, workers, also_all, all_first_after,
         **knobs) -> None:
    """Case-level K-fold cross-validation of the nodule-guided recipe (mean +- sd over folds)."""
    from edge_thyroid.export.datapack import pack_for
    from edge_thyroid.export.nodule_training import (NoduleRecipe, every_row_record, fit_nodule, fold_assignment,
                                                     pick_device, split_record, training_precision)
    from edge_thyroid.export.checkpoint import load_checkpoint

    # The options given; unset ones keep the recipe's default.
    overrides = recipe_overrides(knobs, backbone, pseudo_labels=pseudo_run is not None)
    if case_draw and train_cases >= 1:
        raise click.UsageError(f"--case-draw {case_draw} picks a subset of cases; it needs --train-cases below 1")
    if also_all and train_cases < 1:
        raise click.UsageError(f"--also-all trains on every crop; it cannot be combined with --train-cases {train_cases}")
    pack = pack_for(data)
    ran_in = training_precision(pick_device(device), precision)   # what "auto" means on this machine, for the JSON
    assignment = fold_assignment(pack, folds)
    out = Path(out_dir)
    fold_list = [int(f) for f in only_folds.split(",")] if only_folds else list(range(folds))
    seed_list = [int(s) for s in seeds.split(",")]
    results: list[dict] = []
    started = time.time()

    def init_for(fold: int | str) -> str | None:
        if init is None:
            return None
        path = init.replace("{fold}", str(fold))
        if not Path(path).is_file():
            raise click.BadParameter(f"{path} does not exist; expected a checkpoint" +
                                     (" for every fold and 'all'" if "{fold}" in init else ""), param_hint="--init")
        return path

    def teachers_for(fold: int | str) -> tuple[str, ...]:
        from edge_thyroid.export.pseudo_labels import fold_teachers

        try:
            return tuple(fold_teachers(pseudo_run, fold))
        except FileNotFoundError as error:
            raise click.BadParameter(str(error), param_hint="--pseudo-labels-from") from None

    teachers: dict[int | str, tuple[str, ...]] = {}
    for fold in fold_list + (["all"] if also_all else []):   # every start and teacher exists before hours of training
        init_for(fold)
        if pseudo_run:
            teachers[fold] = teachers_for(fold)

    def make_recipe(seed: int, fold: int | str = 0) -> NoduleRecipe:
        recipe = NoduleRecipe(backbone=backbone, epochs=epochs, seed=seed, init=init_for(fold), **overrides)
        if pseudo_run:
            recipe.pseudo_label_teachers = teachers[fold]
        return recipe

    def write() -> None:
        payload = {
            "what": "case-level cross-validation of the nodule-guided recipe (export/nodule_training.py)",
            "label_source": "TI-RADS category (2-3 benign, 4a-5 malignant), not pathology",
            "data": {"path": str(data), **pack.meta}, "backbone": backbone, "folds": folds, "seeds": seed_list,
            "recipe": {**make_recipe(seed_list[0], fold_list[0]).to_dict(), "init": init}, "test_time_flip": test_time_flip,
            "train_cases": train_cases,
            "train_schedule": train_schedule, "case_draw": case_draw, "precision": ran_in,
            "machine": {"platform": platform.platform(), "processor": platform.processor(), **cpu_kind(),
                        "python": sys.version.split()[0]},
            "command": " ".join(sys.argv),
            "summary": summarise(results) if results else {},
            "out_of_fold": pooled_out_of_fold(results) if len(results) == folds * len(seed_list) else None,
            "per_fold": [{k: v for k, v in r.items() if k != "scores"} for r in results],
            "scores": [{"fold": r["fold"], "seed": r["seed"], "scores": r["scores"]} for r in results],
        }
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(payload, indent=1))

    def train_all() -> None:
        recipe = make_recipe(seed_list[0], "all")
        target = out / "all"
        if not (target / "final.pt").exists():
            click.echo(f"[all data] training on {len(pack)} crops", err=True)
            fit_nodule(recipe, pack, np.arange(len(pack)), target, device=device, workers=workers, threads=threads,
                       precision=precision, split=every_row_record(pack))

    done = 0
    for fold in fold_list:
        for seed in seed_list:
            fold_dir = fold_model_dir(out, fold, seed)
            # Scored with the mirror-image average, a fold model gets results of its own.
            result_file = fold_dir / ("result_test_time_flip.json" if test_time_flip else "result.json")
            if result_file.exists():
                saved = json.loads(result_file.read_text())
                if saved.get("train_cases", 1.0) != train_cases:   # a run folder of another share: not this curve's point
                    raise click.ClickException(f"{result_file} was trained on --train-cases {saved.get('train_cases', 1.0)}, "
                                               f"not {train_cases}; expected a run folder of its own per share")
                if saved.get("case_draw", 0) != case_draw:
                    raise click.ClickException(f"{result_file} was trained on --case-draw {saved.get('case_draw', 0)}, "
                                               f"not {case_draw}; expected a run folder of its own per draw")
                saved_schedule = saved.get("train_schedule", FIRST_SCHEDULE)
                if train_cases < 1 and saved_schedule != train_schedule:
                    raise click.ClickException(f"{result_file} was trained with --train-schedule {saved_schedule}, not "
                                               f"{train_schedule}; expected a run folder of its own per schedule")
                expected = make_recipe(seed, fold)   # as it would train now, shrunk like the saved run's side
                shrink_training_side(pack, np.flatnonzero(assignment != fold), train_cases, fold, expected, train_schedule,
                                     case_draw)
                refuse_another_recipe(fold_dir / "final.pt", expected)
                results.append(saved)
            else:
                recipe = make_recipe(seed, fold)
                train_index = shrink_training_side(pack, np.flatnonzero(assignment != fold), train_cases, fold, recipe,
                                                   train_schedule, case_draw)
                val_index = np.flatnonzero(assignment == fold)
                click.echo(f"[fold {fold} seed {seed}] train {len(train_index)} crops, validate {len(val_index)}", err=True)
                model = fit_nodule(recipe, pack, train_index, fold_dir, device=device, workers=workers, threads=threads,
                                   precision=precision, split=split_record(pack, folds, fold))
                if not (fold_dir / "final.pt").exists():
                    raise click.ClickException(f"{fold_dir}: training ended without final.pt")
                model, _, _ = load_checkpoint(fold_dir / "final.pt")
                labelled_train = train_index[pack.labels[train_index] >= 0]
                result = {"fold": fold, "seed": seed, "train_cases": train_cases, "train_schedule": train_schedule,
                          "case_draw": case_draw,
                          "epochs": recipe.epochs,
                          "train_labelled_crops": int(len(labelled_train)),
                          "train_labelled_cases": int(len(set(pack.case_ids[labelled_train].tolist()))),
                          **evaluate_fold(model, pack, train_index, val_index, recipe.image_size,
                                                                           test_time_flip)}
                result_file.write_text(json.dumps(result, indent=1))
                results.append(result)
                click.echo(f"[fold {fold} seed {seed}] AUC {result['auc']:.3f} "
                           f"[{result['auc_ci95'][0]:.3f}, {result['auc_ci95'][1]:.3f}]  margins "
                           + " ".join(f"{m}x {result[f'auc_margin_{m}']:.3f}" for m in MARGINS)
                           + f"  CAM-in-mask {result['cam_in_mask']:.2f} (mask {result['mask_area']:.2f})", err=True)
            write()
        done += 1
        if also_all and all_first_after is not None and done == all_first_after:
            train_all()
    if also_all:
        train_all()
    write()
    click.echo(json.dumps({"summary": summarise(results), "minutes": round((time.time() - started) / 60, 1)}, indent=1))


if __name__ == "__main__":
    main()
