"""How far do the sonographic features TI-RADS is built from get on DDTI, measured on the true masks?

    python benchmarks/descriptor_ceiling.py --data runs/ddti_pack.npz \\
        --cv benchmarks/results/cv_resnet50_tta.json --json benchmarks/results/descriptor_ceiling.json

A reference for the network's AUC that needs no training: the 8 pixel proxies of export/descriptors.py
(composition, echogenicity against the surrounding tissue, echogenic foci, heterogeneity, taller than
wide, margin compactness and solidity, edge contrast), measured on each labelled crop with its
*annotated* mask (information the model never gets at run time), and

* each one's AUC on its own (below 0.5: lower values go with malignant);
* an L2 logistic regression on all 8, fitted inside the training folds of the same case-level folds as
  cross_validate.py (class-weighted, standardised on the training side), AUC on the held-out fold;
* with ``--cv``: the cross-validated network's out-of-fold logit (each crop's seeds averaged) alone and
  stacked with the descriptors the same way (the network's scores on the other folds are out-of-fold
  too, so the stack is fitted on out-of-fold scores only).

Mean +- sd over folds; labels are TI-RADS-derived (2-3 benign, 4a-5 malignant), not pathology.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cross_validate import out_of_fold_by_crop  # noqa: E402

PENALTIES = (0.1, 1.0, 10.0)


def fit_logistic(x: np.ndarray, y: np.ndarray, weights: np.ndarray, penalty: float) -> np.ndarray:
    """Weighted L2-penalised logistic regression by Newton's method: coefficients then intercept
    (the intercept is not penalised)."""
    n, p = x.shape
    design = np.c_[x, np.ones(n)]
    ridge = penalty * np.diag(np.r_[np.ones(p), 0.0])
    beta = np.zeros(p + 1)
    for _ in range(100):
        prob = 1.0 / (1.0 + np.exp(-design @ beta))
        gradient = design.T @ (weights * (prob - y)) + ridge @ beta
        hessian = (design * (weights * prob * (1 - prob))[:, None]).T @ design + ridge
        step = np.linalg.solve(hessian, gradient)
        beta -= step
        if np.abs(step).max() < 1e-10:
            break
    return beta


def cross_validated_auc(x: np.ndarray, y: np.ndarray, folds: np.ndarray, penalty: float) -> list[float]:
    """Held-out AUC per fold of a logistic regression fitted on the other folds."""
    from edge_thyroid.metrics import roc_auc

    aucs = []
    for fold in sorted(set(folds.tolist())):
        train, held = folds != fold, folds == fold
        mean, sd = x[train].mean(0), x[train].std(0) + 1e-9
        weights = np.where(y[train] == 1, 0.5 / y[train].mean(), 0.5 / (1 - y[train].mean()))
        beta = fit_logistic((x[train] - mean) / sd, y[train], weights, penalty)
        aucs.append(roc_auc(y[held], np.c_[(x[held] - mean) / sd, np.ones(held.sum())] @ beta))
    return aucs


def summary(aucs: list[float]) -> dict:
    return {"mean": float(np.mean(aucs)), "sd": float(np.std(aucs, ddof=1)), "per_fold": [round(a, 4) for a in aucs]}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False), help="Data pack (.npz) or labelled CSV.")
@click.option("--cv", "cv_json", default=None, type=click.Path(exists=True, dir_okay=False),
              help="A cross_validate.py results JSON whose out-of-fold scores to compare and stack.")
@click.option("--folds", type=int, default=4, show_default=True)
@click.option("--json", "json_out", required=True, type=click.Path(dir_okay=False))
def main(data, cv_json, folds, json_out) -> None:
    """Cross-validated AUC of the TI-RADS feature proxies measured on the annotated masks."""
    from edge_thyroid.export.datapack import pack_for
    from edge_thyroid.export.descriptors import DESCRIPTOR_NAMES, descriptor_table
    from edge_thyroid.export.nodule_training import fold_assignment
    from edge_thyroid.metrics import roc_auc

    pack = pack_for(data)
    labelled = np.flatnonzero(pack.labels >= 0)
    table = descriptor_table(pack.images[labelled], pack.masks[labelled])
    usable = np.isfinite(table).all(1)
    rows = labelled[usable]
    y, fold_of, x = pack.labels[rows].astype(float), fold_assignment(pack, folds)[rows], table[usable]
    result: dict = {
        "what": "TI-RADS feature proxies (export/descriptors.py) on the annotated masks, case-level CV",
        "label_source": "TI-RADS category (2-3 benign, 4a-5 malignant), not pathology",
        "crops": int(usable.sum()), "benign": int((y == 0).sum()), "folds": folds,
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0]},
        "command": " ".join(sys.argv),
        "single_descriptor_auc": {name: round(float(roc_auc(y, x[:, j])), 4) for j, name in enumerate(DESCRIPTOR_NAMES)},
        "descriptors_logistic": {str(c): summary(cross_validated_auc(x, y, fold_of, c)) for c in PENALTIES},
    }
    if cv_json:
        scores, _ = out_of_fold_by_crop(Path(cv_json))
        stems = [Path(str(pack.names[i])).stem for i in rows]
        missing = sum(stem not in scores for stem in stems)
        if missing:
            raise click.ClickException(f"{cv_json} lacks out-of-fold scores for {missing} labelled crops; expected "
                                       "a run over every fold of this data")
        p = np.array([scores[stem] for stem in stems])
        logit = np.log(p / (1 - p))
        result["network"] = summary([roc_auc(y[fold_of == f], logit[fold_of == f]) for f in range(folds)])
        result["network_plus_descriptors"] = {str(c): summary(cross_validated_auc(np.c_[logit, x], y, fold_of, c))
                                              for c in PENALTIES}
        result["cv"] = str(cv_json)
    Path(json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(json_out).write_text(json.dumps(result, indent=1))
    for name, auc in result["single_descriptor_auc"].items():
        click.echo(f"{name:22s} AUC {auc:.3f}")
    for key in ("descriptors_logistic", "network_plus_descriptors"):
        for c, row in result.get(key, {}).items():
            click.echo(f"{key} (L2 {c}): {row['mean']:.3f} +- {row['sd']:.3f}  {row['per_fold']}")
    if "network" in result:
        click.echo(f"network alone: {result['network']['mean']:.3f} +- {result['network']['sd']:.3f}")


if __name__ == "__main__":
    main()
