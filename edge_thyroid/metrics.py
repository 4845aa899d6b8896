"""Diagnostic-accuracy statistics in NumPy: ROC AUC with DeLong's variance, DeLong's test for two
correlated ROC curves (paired: same cases, two models), bootstrap intervals, and the operating-point
figures a clinician reads (sensitivity, specificity, PPV, NPV at a threshold).

DeLong's method follows DeLong, DeLong & Clarke-Pearson (Biometrics 1988), computed with the
midrank algorithm of Sun & Xu (IEEE Signal Processing Letters 2014).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


def _labels_scores(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    if not set(np.unique(y)).issubset({0, 1}):
        raise ValueError(f"labels must be 0/1, got values {sorted(set(np.unique(y).tolist()))}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN or infinity")
    if y.sum() == 0 or y.sum() == y.size:
        raise ValueError(f"AUC needs both classes; got {int(y.sum())} positives of {y.size}")
    return y, s


def _midranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    n = len(x)
    ranks_sorted = np.zeros(n, dtype=np.float64)
    i = 0
    while i < n:
        j = i
        while j < n and sorted_x[j] == sorted_x[i]:
            j += 1
        ranks_sorted[i:j] = 0.5 * (i + j - 1) + 1
        i = j
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = ranks_sorted
    return ranks


def _delong_components(y: np.ndarray, score_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs and the structural components V10 (per positive) and V01 (per negative) per model."""
    pos, neg = score_rows[:, y == 1], score_rows[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    aucs, v10, v01 = [], [], []
    for k in range(score_rows.shape[0]):
        tx, ty = _midranks(pos[k]), _midranks(neg[k])
        tz = _midranks(np.concatenate([pos[k], neg[k]]))
        aucs.append(tz[:m].sum() / (m * n) - (m + 1.0) / (2.0 * n))
        v10.append((tz[:m] - tx) / n)
        v01.append(1.0 - (tz[m:] - ty) / m)
    return np.array(aucs), np.array(v10), np.array(v01)


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve (ties count one half), i.e. the Mann-Whitney U statistic / (m n)."""
    y, s = _labels_scores(labels, scores)
    return float(_delong_components(y, s[None, :])[0][0])


@dataclass(frozen=True)
class AucInterval:
    auc: float
    low: float
    high: float
    std_error: float
    method: str = "delong"

    def to_dict(self) -> dict:
        return asdict(self)


def delong_auc_ci(labels, scores, confidence: float = 0.95) -> AucInterval:
    """AUC with DeLong's standard error and a normal-approximation confidence interval (clipped to [0, 1])."""
    y, s = _labels_scores(labels, scores)
    aucs, v10, v01 = _delong_components(y, s[None, :])
    m, n = v10.shape[1], v01.shape[1]
    variance = np.var(v10[0], ddof=1) / m + np.var(v01[0], ddof=1) / n
    se = math.sqrt(max(variance, 0.0))
    z = _normal_quantile(0.5 + confidence / 2)
    auc = float(aucs[0])
    return AucInterval(auc, max(0.0, auc - z * se), min(1.0, auc + z * se), se)


@dataclass(frozen=True)
class DelongTest:
    auc_a: float
    auc_b: float
    difference: float
    std_error: float
    z: float
    p_value: float

    def to_dict(self) -> dict:
        return asdict(self)


def delong_test(labels, scores_a, scores_b) -> DelongTest:
    """DeLong's two-sided test that two correlated ROC AUCs (same cases) are equal."""
    y, sa = _labels_scores(labels, scores_a)
    _, sb = _labels_scores(labels, scores_b)
    aucs, v10, v01 = _delong_components(y, np.stack([sa, sb]))
    m, n = v10.shape[1], v01.shape[1]
    cov = np.cov(v10) / m + np.cov(v01) / n
    variance = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    diff = float(aucs[0] - aucs[1])
    if variance <= 1e-300:
        z, p = (0.0, 1.0) if diff == 0 else (math.copysign(math.inf, diff), 0.0)
    else:
        z = diff / math.sqrt(variance)
        p = math.erfc(abs(z) / math.sqrt(2))
    return DelongTest(float(aucs[0]), float(aucs[1]), diff, math.sqrt(max(variance, 0.0)), z, p)


def _group_resamples(y: np.ndarray, groups, resamples: int, seed: int):
    """Bootstrap index draws that resample whole groups (crops of one case stay together); draws
    holding a single class are skipped, since no AUC exists for them."""
    rng = np.random.default_rng(seed)
    group_ids = np.arange(y.size) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    members = [np.flatnonzero(group_ids == g) for g in range(group_ids.max() + 1)]
    for _ in range(resamples):
        pick = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        if 0 < y[pick].sum() < pick.size:
            yield pick


def bootstrap_auc_ci(labels, scores, confidence: float = 0.95, resamples: int = 2000,
                     seed: int = 0, groups=None) -> AucInterval:
    """Percentile bootstrap CI for the AUC; with ``groups`` (e.g. case ids) whole cases are resampled."""
    y, s = _labels_scores(labels, scores)
    stats = [roc_auc(y[pick], s[pick]) for pick in _group_resamples(y, groups, resamples, seed)]
    stats_arr = np.array(stats)
    alpha = (1 - confidence) / 2
    auc = roc_auc(y, s)
    return AucInterval(auc, float(np.quantile(stats_arr, alpha)), float(np.quantile(stats_arr, 1 - alpha)),
                       float(stats_arr.std(ddof=1)), method=f"bootstrap({len(stats)})")


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive rate, true-positive rate and the thresholds (score >= threshold is positive)."""
    y, s = _labels_scores(labels, scores)
    thresholds = np.concatenate([[np.inf], np.unique(s)[::-1]])
    tpr = np.array([(s[y == 1] >= t).mean() for t in thresholds])
    fpr = np.array([(s[y == 0] >= t).mean() for t in thresholds])
    return fpr, tpr, thresholds


def youden_threshold(labels, scores) -> float:
    """The threshold maximising sensitivity + specificity - 1 (midpoint between adjacent scores)."""
    fpr, tpr, thresholds = roc_curve(labels, scores)
    best = int(np.argmax(tpr - fpr))
    if best == 0:
        return float(thresholds[1])
    upper = thresholds[best - 1] if np.isfinite(thresholds[best - 1]) else thresholds[best]
    return float(0.5 * (thresholds[best] + upper)) if best > 1 else float(thresholds[best])


def sensitivity_threshold(labels, scores, target: float) -> float:
    """The highest threshold whose sensitivity reaches ``target``."""
    fpr, tpr, thresholds = roc_curve(labels, scores)
    ok = np.flatnonzero(tpr >= target)
    return float(thresholds[ok[0]])


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float
    sensitivity: float
    specificity: float
    ppv: float
    npv: float
    accuracy: float
    tp: int
    fp: int
    tn: int
    fn: int

    def to_dict(self) -> dict:
        return asdict(self)


def operating_point(labels, scores, threshold: float) -> OperatingPoint:
    y, s = _labels_scores(labels, scores)
    pred = s >= threshold
    tp, fp = int((pred & (y == 1)).sum()), int((pred & (y == 0)).sum())
    tn, fn = int((~pred & (y == 0)).sum()), int((~pred & (y == 1)).sum())

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    return OperatingPoint(threshold, ratio(tp, tp + fn), ratio(tn, tn + fp), ratio(tp, tp + fp),
                          ratio(tn, tn + fn), ratio(tp + tn, y.size), tp, fp, tn, fn)


def _normal_quantile(p: float) -> float:
    """Inverse standard normal CDF (Acklam's rational approximation, |error| < 1.2e-9 after one Newton step)."""
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    a = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02,
         -3.066479806614716e01, 2.506628277459239e00)
    b = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01,
         -1.328068155288572e01)
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00,
         4.374664141464968e00, 2.938163982698783e00)
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
    low = 0.02425
    if p < low:
        q = math.sqrt(-2 * math.log(p))
        x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    elif p > 1 - low:
        q = math.sqrt(-2 * math.log(1 - p))
        x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    else:
        q = p - 0.5
        r = q * q
        x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / \
            (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
    e = 0.5 * math.erfc(-x / math.sqrt(2)) - p
    return x - e * math.sqrt(2 * math.pi) * math.exp(x * x / 2)


@dataclass(frozen=True)
class PairedBootstrap:
    difference: float
    std_error: float
    low: float
    high: float
    p_value: float
    resamples: int

    def to_dict(self) -> dict:
        return asdict(self)


def paired_bootstrap_test(labels, scores_a, scores_b, *, groups=None, resamples: int = 2000, seed: int = 0,
                          confidence: float = 0.95) -> PairedBootstrap:
    """AUC(A) - AUC(B) by a paired bootstrap: each resample draws whole groups (e.g. cases) and scores
    both models on the same draw. The p-value is two-sided, from the normal approximation with the
    bootstrap standard error (the same form as DeLong's test, so the two can be compared)."""
    y, sa = _labels_scores(labels, scores_a)
    _, sb = _labels_scores(labels, scores_b)
    d = np.array([np.subtract(*_delong_components(y[pick], np.stack([sa[pick], sb[pick]]))[0])
                  for pick in _group_resamples(y, groups, resamples, seed)])
    observed = float(np.subtract(*_delong_components(y, np.stack([sa, sb]))[0]))
    se = float(d.std(ddof=1))
    alpha = (1 - confidence) / 2
    if se <= 0:
        p = 1.0 if observed == 0 else 0.0
    else:
        p = math.erfc(abs(observed / se) / math.sqrt(2))
    return PairedBootstrap(observed, se, float(np.quantile(d, alpha)), float(np.quantile(d, 1 - alpha)), p, len(d))


def prior_weights(labels: np.ndarray, prior: float | None) -> np.ndarray:
    """Per-row weights under which the malignant rows carry ``prior`` of the total weight (None: every row
    weighs 1, the data's own mix). Equal weights (``prior`` 0.5) ask how a class-balanced model's p reads
    when benign and malignant nodules are equally common, whatever the data's mix."""
    labels = np.asarray(labels, dtype=np.float64)
    if prior is None:
        return np.ones_like(labels)
    if not 0.0 < prior < 1.0:
        raise ValueError(f"prior {prior}: expected a share of malignant rows in (0, 1)")
    positives = labels.sum()
    if positives == 0 or positives == labels.size:
        raise ValueError(f"a prior needs both classes; the labels hold {int(positives)} malignant of {labels.size}")
    return np.where(labels == 1, prior / positives, (1.0 - prior) / (labels.size - positives)) * labels.size


def calibration(labels: np.ndarray, scores: np.ndarray, bins: int = 10, prior: float | None = None) -> dict[str, Any]:
    """Brier score, expected calibration error and equal-width reliability bins; with ``prior``, the rows
    weighted so that the malignant ones carry that share (prior_weights), as if the data had that mix."""
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    weights = prior_weights(labels, prior)
    total = weights.sum()
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(scores, edges[1:-1]), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        member = index == b
        n = int(member.sum())
        if n == 0:
            continue
        w = weights[member]
        mean_p, frac = float(np.average(scores[member], weights=w)), float(np.average(labels[member], weights=w))
        ece += w.sum() / total * abs(mean_p - frac)
        table.append({"low": float(edges[b]), "high": float(edges[b + 1]), "n": n,
                      "mean_predicted": mean_p, "fraction_malignant": frac})
    return {"brier": float(np.average((scores - labels) ** 2, weights=weights)), "ece": float(ece),
            "prior": prior, "bins": table}


def logit(p, eps: float = 1e-12) -> np.ndarray:
    """log(p / (1 - p)) in float64, p clipped to [eps, 1 - eps] so 0 and 1 stay finite."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return np.log(p / (1 - p))


def shift_prior(p, to_prior: float, from_prior: float = 0.5) -> np.ndarray:
    """p under another share of malignant nodules (Bayes: the odds scale by the ratio of the priors'
    odds): a model calibrated where ``from_prior`` of the nodules are malignant, read where ``to_prior`` are."""
    for name, value in (("to_prior", to_prior), ("from_prior", from_prior)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} {value}: expected a share of malignant nodules in (0, 1)")
    shifted = logit(p) + math.log(to_prior / (1 - to_prior)) - math.log(from_prior / (1 - from_prior))
    return 1.0 / (1.0 + np.exp(-shifted))
