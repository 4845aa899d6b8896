"""How held-out AUC grows with labelled training cases: the cross-validation at shares of the training side.

    python benchmarks/learning_curve.py --data runs/ddti_pack.npz --seeds 0,1 \\
        --run 0.25=runs/lc_0.25.json --run 0.5=runs/lc_0.5.json --run 0.75=runs/lc_0.75.json \\
        --run 1=benchmarks/results/cv_resnet50_cyst_tta.json \\
        --json benchmarks/results/learning_curve.json --plot docs/learning_curve.png

Each ``--run SHARE=JSON`` is a results JSON of benchmarks/cross_validate.py trained on that share of each
fold's labelled training cases (``--train-cases SHARE``; 1: the whole training side); a fold's figures are
the mean over ``--seeds``. Per fold it fits the AUC
on log2(labelled training cases) through its points (the folds' held-out crops are the same at every share,
so the comparison is paired) and reports the slope, AUC per doubling of the cases, as mean +- sd over folds.

The reading rule was fixed before the runs: "more cases help" only if the mean slope is positive and at
least 3 of 4 fold slopes are; only then the mean line is extended to the AUC goal, as an order of magnitude
(learning curves flatten, so it is a lower bound on the cases needed, not a promise). The mean slope's
Student-t 95% interval over folds is carried into cases too (the line at either end of it): with four
folds it usually bounds the cases only from below. Labels are TI-RADS categories, not pathology.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cross_validate import FIRST_SCHEDULE, mean_sd  # noqa: E402


def fold_slope(cases: np.ndarray, aucs: np.ndarray) -> tuple[float, float]:
    """Least-squares line AUC = intercept + slope * log2(cases) through one fold's points: (intercept, slope)."""
    x = np.log2(np.asarray(cases, dtype=np.float64))
    y = np.asarray(aucs, dtype=np.float64)
    if len(x) < 2 or np.ptp(x) == 0:
        raise ValueError(f"a slope needs points at two or more case counts, got {len(x)} at "
                         f"{sorted({int(c) for c in cases})}")
    slope = float(np.sum((x - x.mean()) * (y - y.mean())) / np.sum((x - x.mean()) ** 2))
    return float(y.mean() - slope * x.mean()), slope


def cases_to_reach(intercept: float, slope: float, target: float) -> float | None:
    """Labelled cases at which the line reaches ``target`` (None when it never does: slope <= 0)."""
    if slope <= 0:
        return None
    return float(2 ** ((target - intercept) / slope))


def slope_interval(slopes: list[float], level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean slope over folds (n - 1 degrees of freedom): with 4 folds the mean's
    spread, not its value, says how far the line can be carried."""
    from scipy import stats

    values = np.asarray(slopes, dtype=np.float64)
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)


def cases_range(intercept: float, slope: float, x_centre: float, interval: tuple[float, float],
                target: float) -> list[float | None]:
    """Cases at which the line reaches ``target`` when its slope is either end of ``interval``, the line
    turning about its point at ``x_centre`` (log2 cases, the middle of the data), so that at ``slope`` it is
    the mean line itself: [fewest, most]; None where the slope is <= 0 (no finite number of cases)."""
    y_centre = intercept + slope * x_centre
    low, high = interval
    return [cases_to_reach(y_centre - high * x_centre, high, target),
            cases_to_reach(y_centre - low * x_centre, low, target)]


def more_cases_help(slopes: list[float]) -> bool:
    """The rule written before the runs: mean slope > 0 and at least three quarters of the folds' slopes > 0."""
    return float(np.mean(slopes)) > 0 and sum(s > 0 for s in slopes) >= math.ceil(0.75 * len(slopes))


def labelled_cases_per_fold(pack_path: str, folds: int) -> dict[int, int]:
    """The whole training side's labelled cases per fold (for runs that predate --train-cases)."""
    from edge_thyroid.export.datapack import pack_for
    from edge_thyroid.export.nodule_training import fold_assignment

    pack = pack_for(pack_path)
    assignment = fold_assignment(pack, folds)
    out = {}
    for fold in range(folds):
        train = np.flatnonzero((assignment != fold) & (pack.labels >= 0))
        out[fold] = len(set(pack.case_ids[train].tolist()))
    return out


def read_points(runs: list[tuple[float, Path]], seeds: list[int], full_cases: dict[int, int]) -> list[dict]:
    """One point per (share, fold): the labelled training cases and the held-out figures, each the mean over
    ``seeds`` (every one of them must be in the run, so every share averages the same seeds)."""
    points = []
    for share, path in runs:
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise click.BadParameter(f"{path}: {error}; expected a results JSON of benchmarks/cross_validate.py",
                                     param_hint="--run") from None
        by_fold: dict[int, dict[int, dict]] = {}
        for r in record.get("per_fold", []):
            if r.get("seed") in seeds:
                if share < 1 and r.get("train_cases") != share:
                    raise click.BadParameter(f"{path}: fold {r['fold']} was trained on share "
                                             f"{r.get('train_cases', 1)}, not {share}", param_hint="--run")
                by_fold.setdefault(int(r["fold"]), {})[r["seed"]] = r
        if not by_fold:
            raise click.BadParameter(f"{path} holds no fold trained with seeds {seeds}", param_hint="--run")
        for fold, rows in sorted(by_fold.items()):
            if missing := sorted(set(seeds) - set(rows)):
                raise click.BadParameter(f"{path}: fold {fold} lacks seeds {missing}", param_hint="--run")
            first = rows[seeds[0]]
            point = {"share": share, "fold": fold, "seeds": list(seeds),
                     "cases": int(first.get("train_labelled_cases") or full_cases[fold]),
                     "schedule": None if share >= 1 else first.get("train_schedule", FIRST_SCHEDULE),
                     # The whole side (share 1) has no draw of cases; runs before --case-draw drew draw 0.
                     "case_draw": None if share >= 1 else int(first.get("case_draw", 0))}
            for key in ("auc", "auc_train_side", "tirads2_benign_rate", "cam_in_mask"):
                values = [rows[s].get(key) for s in seeds]
                point[key] = None if None in values else float(np.mean(values))
            points.append(point)
    return points


def _mean_sd(values) -> dict | None:
    """cross_validate's mean +- sd over folds of the values present (None: a fold without that figure)."""
    present = [v for v in values if v is not None]
    return mean_sd(present) if present else None


def summarise(points: list[dict], target: float) -> dict:
    """Per share: mean +- sd over folds; per fold: the slope; the rule's verdict and, if met, the extension."""
    shares = sorted({p["share"] for p in points})
    folds = sorted({p["fold"] for p in points})
    schedules = sorted({p["schedule"] for p in points if p.get("schedule")})
    if len(schedules) > 1:
        raise ValueError(f"the shares were trained with different schedules ({', '.join(schedules)}); expected one "
                         "--train-schedule for the whole curve")
    draws = sorted({p["case_draw"] for p in points if p.get("case_draw") is not None})
    if len(draws) > 1:
        raise ValueError(f"the shares were trained on different case draws ({', '.join(map(str, draws))}); expected one "
                         "--case-draw for the whole curve, so that a smaller share's cases lie inside a larger one's")
    for share in shares:
        if missing := sorted(set(folds) - {p["fold"] for p in points if p["share"] == share}):
            raise ValueError(f"share {share} has no result for folds {missing}; expected every fold at every share "
                             "(merge the runs' parts first)")
    by_share = []
    for share in shares:
        at = [p for p in points if p["share"] == share]
        by_share.append({"share": share, "folds": len(at), "cases": _mean_sd(p["cases"] for p in at),
                         **{key: _mean_sd(p[key] for p in at)
                            for key in ("auc", "auc_train_side", "tirads2_benign_rate", "cam_in_mask")}})
    lines = {}
    for fold in folds:
        at = [p for p in points if p["fold"] == fold]
        lines[fold] = fold_slope(np.array([p["cases"] for p in at]), np.array([p["auc"] for p in at]))
    slopes = [lines[f][1] for f in folds]
    verdict = more_cases_help(slopes)
    interval = slope_interval(slopes)
    result = {"shares": by_share,
              "slope_per_doubling": {"mean": float(np.mean(slopes)), "sd": float(np.std(slopes, ddof=1)),
                                     "ci95": list(interval), "folds": [round(s, 4) for s in slopes]},
              "more_cases_help": verdict, "target_auc": target,
              "train_schedule": schedules[0] if schedules else None, "case_draw": draws[0] if draws else None}
    if verdict:
        intercept = float(np.mean([lines[f][0] for f in folds]))
        needed = cases_to_reach(intercept, float(np.mean(slopes)), target)
        x_centre = float(np.mean([np.log2(p["cases"]) for p in points]))
        result["extension"] = {"intercept": intercept, "cases_at_target": needed,
                               "cases_at_target_slope_ci95": cases_range(intercept, float(np.mean(slopes)), x_centre,
                                                                         interval, target),
                               "note": "the mean line extended; learning curves flatten, so read it as a lower bound; "
                                       "the range is the line at either end of the slope's 95% interval (None: a "
                                       "slope <= 0, no finite number of cases)"}
    return result


def plot(points: list[dict], summary: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for fold in sorted({p["fold"] for p in points}):
        at = sorted((p for p in points if p["fold"] == fold), key=lambda p: p["cases"])
        ax.plot([p["cases"] for p in at], [p["auc"] for p in at], "-o", color="0.7", lw=1, ms=3,
                label="each fold" if fold == 0 else None)
    cases = [s["cases"]["mean"] for s in summary["shares"]]
    auc = np.array([s["auc"]["mean"] for s in summary["shares"]])
    sd = np.array([s["auc"]["sd"] or 0 for s in summary["shares"]])
    ax.fill_between(cases, auc - sd, auc + sd, color="tab:blue", alpha=0.15)
    ax.plot(cases, auc, "-o", color="tab:blue", lw=2, label="mean over folds (± sd)")
    ax.plot(cases, [s["auc_train_side"]["mean"] for s in summary["shares"]], "--", color="tab:orange",
            label="training side (fit)")
    ax.axhline(summary["target_auc"], color="tab:red", ls=":", label=f"goal {summary['target_auc']}")
    ax.axhline(0.5, color="0.5", ls=":", lw=0.8)
    ticks = list(cases)
    if (extension := summary.get("extension")) and extension["cases_at_target"]:
        # The mean line, not the last point, carried on: the same fit the slope comes from.
        far = extension["cases_at_target"]
        xs = np.array([cases[-1], far])
        ax.plot(xs, extension["intercept"] + summary["slope_per_doubling"]["mean"] * np.log2(xs), ":",
                color="tab:blue", label="mean line carried on (a lower bound: curves flatten)")
        ticks.append(far)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [f"{c:.0f}" for c in ticks])
    ax.minorticks_off()
    ax.set_xlabel("labelled training cases (log scale)")
    ax.set_ylabel("held-out AUC (TI-RADS labels)")
    slope = summary["slope_per_doubling"]
    same = {"steps": "\neach share trained for as many optimizer steps as the whole side",
            "epochs": "\neach share trained for the recipe's epochs (fewer steps)"}.get(summary.get("train_schedule"), "")
    draw = f", case draw {summary['case_draw']}" if summary.get("case_draw") else ""
    ax.set_title(f"AUC per doubling of cases: {slope['mean']:+.3f} ± {slope['sd']:.3f} ({len(slope['folds'])} folds{draw})"
                 + same, fontsize=9)
    ax.set_ylim(0.45, 1.12)   # room for the legend above AUC 1
    ax.set_yticks(np.arange(0.5, 1.01, 0.1))
    ax.legend(fontsize=7.5, loc="upper right")   # above the goal line, clear of every fold's points
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_run(text: str) -> tuple[float, Path]:
    share, sep, path = text.partition("=")
    try:
        value = float(share)
    except ValueError:
        value = -1.0
    if not sep or not 0 < value <= 1:
        raise click.BadParameter(f"got {text!r}; expected SHARE=JSON with SHARE in (0, 1], e.g. 0.5=runs/lc_0.5.json",
                                 param_hint="--run")
    return value, Path(path)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The data pack the runs used (counts the whole training side's cases).")
@click.option("--run", "runs", multiple=True, required=True, help="SHARE=JSON, once per share (1 = the whole side).")
@click.option("--seeds", default="0", show_default=True,
              help="Comma-separated training seeds, averaged per fold at every share (each run must hold them all).")
@click.option("--folds", type=int, default=4, show_default=True)
@click.option("--target", type=float, default=0.85, show_default=True, help="The AUC goal the line is extended to.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None)
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False), default=None)
def main(data, runs, seeds, folds, target, json_out, plot_out) -> None:
    """AUC against labelled training cases, per fold and mean +- sd, with the slope per doubling."""
    parsed = [parse_run(r) for r in runs]
    try:
        seed_list = [int(s) for s in seeds.split(",")]
    except ValueError:
        raise click.BadParameter(f"got {seeds!r}; expected comma-separated integers, e.g. 0,1", param_hint="--seeds") from None
    points = read_points(parsed, seed_list, labelled_cases_per_fold(data, folds))
    try:
        summary = summarise(points, target)
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    record = {"what": "held-out AUC against labelled training cases (case-level CV, shares of each fold's training side)",
              "label_source": "TI-RADS category (2-3 benign, 4a-5 malignant), not pathology", "seeds": seed_list,
              "runs": {str(s): str(p) for s, p in parsed}, "summary": summary, "points": points}
    for s in summary["shares"]:
        click.echo(f"share {s['share']:.2f}: {s['cases']['mean']:.0f} cases  AUC {s['auc']['mean']:.3f} ± "
                   f"{s['auc']['sd'] or 0:.3f}  training side {s['auc_train_side']['mean']:.3f}")
    slope = summary["slope_per_doubling"]
    low, high = slope["ci95"]
    click.echo(f"AUC per doubling: {slope['mean']:+.3f} ± {slope['sd']:.3f} (95% CI {low:+.3f} to {high:+.3f})  "
               f"folds {slope['folds']}  more cases help: {summary['more_cases_help']}")
    if "extension" in summary:
        fewest, most = summary["extension"]["cases_at_target_slope_ci95"]
        click.echo(f"the mean line reaches {target} at ~{summary['extension']['cases_at_target']:.0f} labelled cases "
                   f"(slope's 95% interval: ~{fewest:.0f} to " + (f"~{most:.0f})" if most else "never)"))
    if json_out:
        Path(json_out).write_text(json.dumps(record, indent=1))
    if plot_out:
        plot(points, summary, plot_out)


if __name__ == "__main__":
    main()
