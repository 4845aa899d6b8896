"""The accuracy gate: does a quantized or compiled model make the same clinical calls as its reference?

A numeric tolerance on feature maps says little about patients. The gate runs both models on
labelled images and compares what a clinician would see: ROC AUC of each (and the drop), sensitivity
and specificity at the decision threshold, how often the two models' decisions agree, and how far
p(malignant) moves (|dp| median, 99th percentile, maximum). It fails when the AUC drops by more than
the budget or the decisions agree less often than the budget allows.

Because quantization can shift scores as a whole, the candidate's threshold is also re-fitted on the
same data (Youden's J); both thresholds are reported, and the bundle keeps the reference's.

Runtime-side: NumPy + the engine only, no torch.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import Bundle
from .dataset import Sample, Split, still_furniture
from .errors import EdgeThyroidError, InputError
from .evaluation import SplitSpec, select_samples
from .frames import Pane, read_image
from .metrics import delong_auc_ci, delong_test, operating_point, youden_threshold

__all__ = ["GateBudget", "GateFailedError", "GateReport", "LabelledSet", "Split", "compare_scores", "labelled_split",
           "run_gate", "score_engines"]


@dataclass(frozen=True)
class GateBudget:
    max_auc_drop: float = 0.01
    min_agreement: float = 0.98

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_auc_drop <= 1.0:
            raise InputError(f"max AUC drop {self.max_auc_drop} is outside [0, 1]")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise InputError(f"minimum decision agreement {self.min_agreement} is outside [0, 1]")

    def to_dict(self) -> dict[str, float]:
        return {"max_auc_drop": self.max_auc_drop, "min_agreement": self.min_agreement}


class GateFailedError(EdgeThyroidError):
    """The candidate model is outside the accuracy budget (exit code 1, like a failed check)."""

    exit_code = 1

    def __init__(self, report: "GateReport") -> None:
        super().__init__("accuracy gate failed: " + "; ".join(report.failures))
        self.report = report


@dataclass(frozen=True)
class LabelledSet:
    samples: list[Sample]
    description: str

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)


def labelled_split(csv_path: str | Path, split: Split = Split.VAL, *, folds: int = 4, fold: int = 0,
                   seed: int = 0) -> LabelledSet:
    """The labelled rows of one side of the case-level split (the training engineer's protocol)."""
    spec = SplitSpec(split, folds, fold, seed)
    samples, _ = select_samples(csv_path, spec)
    return LabelledSet(samples, f"{csv_path} ({spec.describe()}, {len(samples)} labelled images)")


def score_engines(engines: Sequence[Any], samples: Sequence[Sample], *, progress: bool = False) -> np.ndarray:
    """p(malignant) of each engine on each image (one pane of the sample's modality: its roi, else the whole image);
    shape [len(engines), len(samples)]. Each image is read once and fed to every engine.

    An engine with a backbone per modality gets that pane once per modality, so p passes through every
    branch and the gate judges all of them: only B-mode has labelled data, so the other branches see
    B-mode pixels (a stand-in that measures how their compiled form drifts, not their accuracy)."""
    from tqdm import tqdm

    scores = np.zeros((len(engines), len(samples)), dtype=np.float64)
    furniture = still_furniture(samples)
    for j, sample in enumerate(tqdm(samples, desc="gate", unit="image", file=sys.stderr, disable=not progress)):
        frame = read_image(sample.image)
        for i, engine in enumerate(engines):
            pane = sample.pane(frame, engine.box_context, furniture)   # each engine grows a nodule box as its bundle says
            panes = [Pane(m, pane.roi) for m in engine.modalities] if getattr(engine, "branched", False) else [pane]
            scores[i, j] = engine.classify(frame, panes).probability
    return scores


@dataclass
class GateReport:
    n: int
    positives: int
    reference: dict[str, Any]
    candidate: dict[str, Any]
    auc_drop: float
    delong_p: float
    agreement: float
    agreement_refit: float
    abs_dp: dict[str, float]
    budget: GateBudget
    failures: list[str] = field(default_factory=list)
    data: str = ""

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "failures": self.failures, "data": self.data, "n": self.n,
                "positives": self.positives, "negatives": self.n - self.positives,
                "auc_drop": self.auc_drop, "delong_p": self.delong_p, "agreement": self.agreement,
                "agreement_refit": self.agreement_refit, "abs_dp": self.abs_dp, "budget": self.budget.to_dict(),
                "reference": self.reference, "candidate": self.candidate}

    def summary(self) -> dict[str, Any]:
        """The few numbers a manifest keeps per model."""
        return {"passed": self.passed, "auc": self.candidate["auc"], "reference_auc": self.reference["auc"],
                "auc_drop": self.auc_drop, "agreement": self.agreement, "abs_dp_max": self.abs_dp["max"],
                "refit_threshold": self.candidate["refit"]["threshold"], "n": self.n, "data": self.data}

    def lines(self) -> list[str]:
        ref, cand = self.reference, self.candidate

        def at(op: dict[str, Any]) -> str:
            return f"sensitivity {op['sensitivity']:.3f}  specificity {op['specificity']:.3f}  (threshold {op['threshold']:.4f})"

        return [
            f"data        {self.data}: {self.n} images, {self.positives} malignant / {self.n - self.positives} benign",
            f"reference   {ref['model']}: AUC {ref['auc']:.4f} [{ref['auc_ci95'][0]:.3f}, {ref['auc_ci95'][1]:.3f}]  {at(ref['at_threshold'])}",
            f"candidate   {cand['model']}: AUC {cand['auc']:.4f} [{cand['auc_ci95'][0]:.3f}, {cand['auc_ci95'][1]:.3f}]  {at(cand['at_threshold'])}",
            f"re-fitted   {cand['model']}: {at(cand['refit']['at_threshold'])} (Youden on this data)",
            f"AUC drop    {self.auc_drop:+.4f} (budget {self.budget.max_auc_drop}; DeLong p = {self.delong_p:.3g})",
            f"agreement   {self.agreement:.4f} of decisions (budget >= {self.budget.min_agreement}); "
            f"{self.agreement_refit:.4f} with the re-fitted threshold",
            f"|dp|        p50 {self.abs_dp['p50']:.2e}  p99 {self.abs_dp['p99']:.2e}  max {self.abs_dp['max']:.2e}",
            "PASSED" if self.passed else "FAILED: " + "; ".join(self.failures),
        ]


def _model_figures(name: str, labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    interval = delong_auc_ci(labels, scores)
    return {"model": name, "auc": interval.auc, "auc_ci95": [interval.low, interval.high],
            "at_threshold": operating_point(labels, scores, threshold).to_dict()}


def compare_scores(labels: Sequence[int] | np.ndarray, reference: np.ndarray, candidate: np.ndarray, *,
                   reference_threshold: float, candidate_threshold: float | None = None,
                   budget: GateBudget | None = None, reference_name: str = "reference",
                   candidate_name: str = "candidate", data: str = "") -> GateReport:
    """The gate on precomputed probabilities. Each model decides at its own bundle threshold
    (``candidate_threshold`` defaults to the reference's, which is what export writes)."""
    budget = budget or GateBudget()
    y = np.asarray(labels, dtype=np.int64)
    p_ref, p_cand = np.asarray(reference, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    if not (y.shape == p_ref.shape == p_cand.shape) or y.ndim != 1:
        raise InputError(f"labels and scores differ in shape: {y.shape}, {p_ref.shape}, {p_cand.shape}")
    t_cand = reference_threshold if candidate_threshold is None else candidate_threshold
    ref = _model_figures(reference_name, y, p_ref, reference_threshold)
    cand = _model_figures(candidate_name, y, p_cand, t_cand)
    refit = youden_threshold(y, p_cand)
    cand["refit"] = {"threshold": refit, "method": "youden", "at_threshold": operating_point(y, p_cand, refit).to_dict()}
    ref_decisions = p_ref >= reference_threshold
    agreement = float(np.mean(ref_decisions == (p_cand >= t_cand)))
    agreement_refit = float(np.mean(ref_decisions == (p_cand >= refit)))
    dp = np.abs(p_cand - p_ref)
    abs_dp = {"p50": float(np.quantile(dp, 0.5)), "p99": float(np.quantile(dp, 0.99)), "max": float(dp.max()),
              "mean": float(dp.mean())}
    auc_drop = ref["auc"] - cand["auc"]
    failures = []
    if auc_drop > budget.max_auc_drop:
        failures.append(f"AUC dropped by {auc_drop:.4f} ({ref['auc']:.4f} -> {cand['auc']:.4f}); budget {budget.max_auc_drop}")
    if agreement < budget.min_agreement:
        failures.append(f"decisions agree on {agreement:.4f} of images; budget >= {budget.min_agreement}")
    return GateReport(int(y.size), int(y.sum()), ref, cand, float(auc_drop), delong_test(y, p_ref, p_cand).p_value,
                      agreement, agreement_refit, abs_dp, budget, failures, data)


def run_gate(candidate: Bundle | str | Path, reference: Bundle | str | Path, labelled: LabelledSet, *,
             model: str | None = None, reference_model: str | None = "fp32", budget: GateBudget | None = None,
             threads: int | None = None, backend_options: dict[str, Any] | None = None,
             progress: bool = False, display_name: str | None = None) -> GateReport:
    """Run both bundles' models over ``labelled`` and compare them (see :func:`compare_scores`).
    ``display_name`` names the bundles in the report (default: their directory names)."""
    from .engine import Engine

    with Engine(candidate, model=model, threads=threads, **(backend_options or {})) as cand, \
            Engine(reference, model=reference_model, threads=threads) as ref:
        if cand.bundle.root == ref.bundle.root and cand.model_key == ref.model_key and cand.backend.name == ref.backend.name:
            raise InputError(f"candidate and reference are the same model ({cand.model_key!r} of {cand.bundle.root}) "
                             f"on the same backend; name another with --model / --reference-model, give --reference, "
                             f"or run the candidate on another --backend")
        scores = score_engines([ref, cand], labelled.samples, progress=progress)
        return compare_scores(labelled.labels, scores[0], scores[1], reference_threshold=ref.threshold,
                              candidate_threshold=cand.threshold, budget=budget,
                              reference_name=f"{ref.model_key} ({display_name or ref.bundle.root.name})",
                              candidate_name=f"{cand.model_key} ({display_name or cand.bundle.root.name})"
                                             + ("" if cand.backend.name == ref.backend.name else f" on {cand.backend.name}"),
                              data=labelled.description)
