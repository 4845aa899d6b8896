"""What the shipped p(malignant) means: its reliability out of fold, at DDTI's mix and with equal classes.

    python benchmarks/probability_reliability.py benchmarks/results/cv_resnet50_cyst_tta.json \\
        --json benchmarks/results/probability_reliability.json --plot docs/probability_reliability.png

The recipe trains with a class-balanced sampler, so its p should read as the chance a crop is
malignant-labelled *when benign and malignant nodules are equally common*. DDTI is 85% malignant-labelled
(TI-RADS 4a-5), so at DDTI's own mix the same p looks badly calibrated. From a cross_validate.py results
JSON (every fold model's held-out scores; each (crop, seed) one row), per held-out fold:

- expected calibration error (ECE, 10 equal-width bins) and Brier score at the fold's own mix, and with
  the classes weighted equally (edge_thyroid.metrics.prior_weights);
- the prior shift: p moved from 1/2 to the fold's *training side's* malignant share
  (edge_thyroid.metrics.shift_prior, Bayes' rule on the odds) and read at the fold's own mix, which checks
  the formula a site would use for its own prevalence at the one prevalence the data has;
- a Platt map (logit p -> a logit p + b, classes weighted equally) fitted on the other folds' rows and
  applied to this fold's (cross-fitted), against p as it is.

Reported as mean +- sd over folds; the reading rules (runs/p_meaning_rule.md) are fixed in RULES and
applied by ``verdicts``. Labels are TI-RADS categories, not pathology: "malignant" means TI-RADS 4a-5.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cross_validate import mean_sd  # noqa: E402

RULES = {
    "equal_classes_pooled_ece_max": 0.10,     # "p is calibrated for equal class shares": pooled ECE ...
    "equal_classes_fold_ece_max": 0.15,       # ... and per-fold ECE on >= 3 of 4 folds
    "prior_shift_mean_ece_max": 0.10,         # the prior-shift formula, checked at DDTI's own mix
    "platt_mean_gain_min": 0.03,              # a recalibration map ships only if it lowers the mean ECE this much
}


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))   # no overflow at large |z|


def _logit(p: np.ndarray) -> np.ndarray:
    from edge_thyroid.metrics import logit

    return logit(p, eps=1e-6)   # a p of 0 or 1 would otherwise dominate the fit


def fit_platt(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None,
              iterations: int = 50) -> tuple[float, float]:
    """(a, b) minimising the weighted log loss of sigmoid(a logit(p) + b): Newton's method on the two
    parameters (a weighted logistic regression on one feature), float64."""
    x, y = _logit(scores), np.asarray(labels, dtype=np.float64)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=np.float64)
    design = np.stack([x, np.ones_like(x)], axis=1)
    theta = np.array([1.0, 0.0])
    for _ in range(iterations):
        q = _sigmoid(design @ theta)
        gradient = design.T @ (w * (q - y))
        hessian = (design * (w * q * (1 - q))[:, None]).T @ design + 1e-9 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if np.max(np.abs(step)) < 1e-12:
            break
    return float(theta[0]), float(theta[1])


def apply_platt(scores: np.ndarray, a: float, b: float) -> np.ndarray:
    return _sigmoid(a * _logit(scores) + b)


def rows_by_fold(cv: dict) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Fold -> (labels, p) of its held-out rows, every seed's fold model one row per crop."""
    folds: dict[int, tuple[list, list]] = {}
    for run in cv.get("scores", []):
        labels, scores = folds.setdefault(int(run["fold"]), ([], []))
        for row in run["scores"]:
            labels.append(int(row["label"]))
            scores.append(float(row["p"]))
    if not folds:
        raise click.ClickException("the results JSON holds no per-crop scores ('scores'); expected a "
                                   "benchmarks/cross_validate.py results file")
    return {k: (np.array(v[0]), np.array(v[1])) for k, v in sorted(folds.items())}


def pooled_rows(folds: dict[int, tuple[np.ndarray, np.ndarray]],
                skip: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(labels, p) of every fold's rows but ``skip``'s."""
    kept = [rows for fold, rows in folds.items() if fold != skip]
    return np.concatenate([r[0] for r in kept]), np.concatenate([r[1] for r in kept])


def training_side_share(folds: dict[int, tuple[np.ndarray, np.ndarray]], fold: int) -> float:
    """Malignant share of the other folds' held-out rows: the fold model's training side (crops repeat once
    per seed in every fold alike, so the share is the crops')."""
    return float(pooled_rows(folds, skip=fold)[0].mean())


def fold_figures(folds: dict[int, tuple[np.ndarray, np.ndarray]]) -> list[dict]:
    """Per held-out fold: ECE and Brier at its own mix, with equal classes, after the prior shift, and after
    a Platt map fitted on the other folds' rows (whose fold models saw this fold: cross-fitted, not nested)."""
    from edge_thyroid.metrics import calibration, prior_weights, shift_prior

    out = []
    for fold, (labels, scores) in folds.items():
        fit_labels, fit_scores = pooled_rows(folds, skip=fold)
        a, b = fit_platt(fit_labels, fit_scores, prior_weights(fit_labels, 0.5))
        share = float(fit_labels.mean())   # training_side_share, from the rows already at hand
        own, equal = calibration(labels, scores), calibration(labels, scores, prior=0.5)
        shifted = calibration(labels, shift_prior(scores, share))
        platt = calibration(labels, apply_platt(scores, a, b), prior=0.5)
        out.append({"fold": fold, "rows": int(labels.size), "malignant_share": float(labels.mean()),
                    "training_side_share": share,
                    "ece_own_mix": own["ece"], "brier_own_mix": own["brier"],
                    "ece_equal_classes": equal["ece"], "brier_equal_classes": equal["brier"],
                    "ece_own_mix_prior_shifted": shifted["ece"], "brier_own_mix_prior_shifted": shifted["brier"],
                    "platt": {"a": a, "b": b}, "ece_equal_classes_platt": platt["ece"],
                    "brier_equal_classes_platt": platt["brier"]})
    return out


def verdicts(per_fold: list[dict], pooled_equal_ece: float) -> dict[str, bool]:
    """The rules of runs/p_meaning_rule.md, written before this script ran on the shipped recipe."""
    equal = [f["ece_equal_classes"] for f in per_fold]
    gains = [f["ece_equal_classes"] - f["ece_equal_classes_platt"] for f in per_fold]
    need = -(-3 * len(per_fold) // 4)   # 3 of 4
    return {
        "calibrated_for_equal_classes": pooled_equal_ece <= RULES["equal_classes_pooled_ece_max"]
        and sum(e <= RULES["equal_classes_fold_ece_max"] for e in equal) >= need,
        "prior_shift_checked": float(np.mean([f["ece_own_mix_prior_shifted"] for f in per_fold]))
        <= RULES["prior_shift_mean_ece_max"],
        "ship_platt_map": float(np.mean(gains)) >= RULES["platt_mean_gain_min"] and sum(g > 0 for g in gains) >= need,
    }


def plot(folds: dict[int, tuple[np.ndarray, np.ndarray]], path: str | Path) -> Path:
    """Two panels, the out-of-fold rows pooled: at DDTI's mix (p as it is, and moved to each fold's training
    share), and with the classes weighted equally."""
    from edge_thyroid.evaluation_plots import require_pyplot
    from edge_thyroid.metrics import calibration, shift_prior

    plt = require_pyplot()
    labels, scores = pooled_rows(folds)
    shifted = np.concatenate([shift_prior(v[1], training_side_share(folds, k)) for k, v in folds.items()])
    fig, axes = plt.subplots(1, 2, figsize=(9.2, 4.6), dpi=120)
    panels = ((axes[0], f"at DDTI's mix ({labels.mean():.0%} malignant-labelled)",
               (("p as shipped", scores, None, "o-"), ("p moved to the training side's mix", shifted, None, "s--"))),
              (axes[1], "benign and malignant weighted equally", (("p as shipped", scores, 0.5, "o-"),)))
    for ax, title, curves in panels:
        ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
        for name, p, prior, style in curves:
            table = calibration(labels, p, prior=prior)
            ax.plot([t["mean_predicted"] for t in table["bins"]], [t["fraction_malignant"] for t in table["bins"]],
                    style, lw=1.5, label=f"{name}: ECE {table['ece']:.3f}")
        ax.set(xlabel="mean predicted p(malignant)", ylabel="fraction TI-RADS 4a-5", xlim=(0, 1), ylim=(0, 1.01),
               title=title)
        ax.title.set_fontsize(9)
        ax.legend(loc="lower right", fontsize=7)
    fig.suptitle(f"Out-of-fold reliability, {labels.size} rows (crop x seed), TI-RADS-derived labels", fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("cv_json", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False), help="Write the figures here.")
@click.option("--plot", "plot_out", default=None, type=click.Path(dir_okay=False), help="Reliability diagrams (PNG).")
def main(cv_json: str, json_out: str | None, plot_out: str | None) -> None:
    """Reliability of a cross-validated recipe's p(malignant), at the data's mix and with equal classes."""
    from edge_thyroid.metrics import calibration

    try:
        cv = json.loads(Path(cv_json).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise click.ClickException(f"{cv_json}: not a readable results JSON ({exc}); expected the output of "
                                   "benchmarks/cross_validate.py --json") from None
    folds = rows_by_fold(cv)
    if len(folds) < 2:
        raise click.ClickException(f"{cv_json}: {len(folds)} fold(s) scored; a cross-fitted map needs two or more")
    per_fold = fold_figures(folds)
    labels, scores = pooled_rows(folds)
    pooled = {"own_mix": calibration(labels, scores), "equal_classes": calibration(labels, scores, prior=0.5)}
    keys = ("ece_own_mix", "ece_equal_classes", "ece_own_mix_prior_shifted", "ece_equal_classes_platt",
            "brier_own_mix", "brier_equal_classes", "brier_own_mix_prior_shifted", "brier_equal_classes_platt")
    summary = {key: mean_sd([f[key] for f in per_fold]) for key in keys}
    result = {"what": "reliability of p(malignant) out of fold (benchmarks/probability_reliability.py)",
              "source": cv_json, "label_source": cv.get("label_source"), "rows": int(labels.size),
              "rules": RULES, "per_fold": per_fold, "summary": summary,
              "pooled": {k: {"ece": v["ece"], "brier": v["brier"]} for k, v in pooled.items()},
              "verdicts": verdicts(per_fold, pooled["equal_classes"]["ece"])}
    for key in ("ece_own_mix", "ece_equal_classes", "ece_own_mix_prior_shifted", "ece_equal_classes_platt"):
        click.echo(f"{key:28s} {summary[key]['mean']:.3f} +- {summary[key]['sd']:.3f}  folds "
                   + " ".join(f"{f[key]:.3f}" for f in per_fold))
    click.echo(f"pooled ECE: {pooled['own_mix']['ece']:.3f} at the data's mix, "
               f"{pooled['equal_classes']['ece']:.3f} with equal classes ({labels.size} rows)")
    click.echo("verdicts: " + ", ".join(f"{k} {v}" for k, v in result["verdicts"].items()))
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(result, indent=1))
    if plot_out:
        click.echo(f"plot: {plot(folds, plot_out)}")


if __name__ == "__main__":
    main()
