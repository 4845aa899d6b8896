"""Case-level subsamples of a training side, for learning curves (how AUC grows with labelled cases).

A learning curve only says something if the smaller training sets are honest miniatures of the full one:

* whole cases are kept or dropped, never single crops of a case (the folds are split by case too);
* cases are drawn within two strata, cases with a benign-labelled crop and the others, so a quarter of the
  training side still holds about a quarter of its few benign cases instead of, by chance, none;
* the subsamples are nested: one permutation per stratum, cut at the fraction, so the 25% set lies inside
  the 50% set and a curve compares added cases, not different draws;
* unlabelled crops are kept whatever the fraction: they carry no label, only the mask heads use them.
"""

from __future__ import annotations

import math

import numpy as np


def case_subsample(case_ids: np.ndarray, labels: np.ndarray, train_index: np.ndarray, fraction: float,
                   seed: int = 0) -> np.ndarray:
    """The crops of ``train_index`` that a case-level subsample keeping ``fraction`` of its labelled cases holds.

    ``case_ids`` and ``labels`` are per crop of the whole pack (label -1: unlabelled); ``train_index`` indexes
    them. Returns a sorted subset of ``train_index``. ``fraction`` 1 returns ``train_index`` unchanged.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    train_index = np.sort(np.asarray(train_index))
    if fraction == 1:
        return train_index
    labelled = train_index[labels[train_index] >= 0]
    cases = sorted({str(c) for c in case_ids[labelled]})
    if not cases:
        raise ValueError("the training side has no labelled crop to subsample")
    has_benign = {str(c) for c in case_ids[labelled[labels[labelled] == 0]]}
    rng = np.random.default_rng((seed, 23))
    kept: set[str] = set()
    for stratum in ([c for c in cases if c in has_benign], [c for c in cases if c not in has_benign]):
        if stratum:
            order = rng.permutation(len(stratum))
            kept.update(stratum[i] for i in order[:max(1, math.ceil(fraction * len(stratum)))])
    keep = (labels[train_index] < 0) | np.isin(case_ids[train_index].astype(str), sorted(kept))
    return train_index[keep]
