"""ROC curves and reliability diagrams of scored crops (matplotlib, imported only when a plot is drawn).

A scored set is anything with ``labels``, ``scores`` and ``threshold`` (:class:`edge_thyroid.evaluation.Scored`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MissingDependencyError
from .metrics import calibration, delong_auc_ci, operating_point, roc_curve


def require_pyplot():
    try:
        import matplotlib
    except ImportError:
        raise MissingDependencyError("matplotlib", "export", "ROC and calibration plots") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(curves: Sequence[tuple[str, Any]], path: str | Path, title: str = "ROC") -> Path:
    """One ROC curve per model (label: AUC [DeLong CI]), with each model's operating point."""
    plt = require_pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.8), dpi=120)
    for name, scored in curves:
        fpr, tpr, _ = roc_curve(scored.labels, scored.scores)
        ci = delong_auc_ci(scored.labels, scored.scores)
        ax.plot(fpr, tpr, lw=1.6, label=f"{name}: AUC {ci.auc:.3f} [{ci.low:.3f}, {ci.high:.3f}]")
        op = operating_point(scored.labels, scored.scores, scored.threshold)
        ax.plot(1 - op.specificity, op.sensitivity, "o", ms=5, color=ax.lines[-1].get_color())
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_calibration(scored: Any, path: str | Path, title: str = "Calibration") -> Path:
    return plot_reliability(scored.labels, scored.scores, path, title)


def plot_reliability(labels: np.ndarray, scores: np.ndarray, path: str | Path, title: str = "Calibration",
                     ylabel: str = "fraction malignant") -> Path:
    """Reliability diagram of scores against labels (10 bins, crops per bin annotated, Brier and ECE), at
    the data's own mix and, when both classes are present, with the classes weighted equally (the mix a
    class-balanced model's p assumes)."""
    plt = require_pyplot()
    labels = np.asarray(labels)
    curves = [("this data's mix", calibration(labels, scores))]
    if 0 < labels.sum() < labels.size:
        curves.append(("classes weighted equally", calibration(labels, scores, prior=0.5)))
    fig, ax = plt.subplots(figsize=(4.8, 4.8), dpi=120)
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
    for (name, table), style in zip(curves, ("o-", "s--")):
        xs = [b["mean_predicted"] for b in table["bins"]]
        ys = [b["fraction_malignant"] for b in table["bins"]]
        ax.plot(xs, ys, style, lw=1.6, label=f"{name}: Brier {table['brier']:.3f}, ECE {table['ece']:.3f}")
        if style == "o-":   # the crop counts are the same for both curves
            for x, y, b in zip(xs, ys, table["bins"]):
                ax.annotate(str(b["n"]), (x, y), textcoords="offset points", xytext=(3, -10), fontsize=7)
    ax.set(xlabel="mean predicted p(malignant)", ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
