"""Evaluate a model like a diagnostic-accuracy study: per-crop scores over a labelled CSV, ROC AUC
with 95% confidence intervals (DeLong, and a case-level bootstrap that respects crops of one patient),
the operating point at the model's own threshold (accuracy, sensitivity, specificity, PPV, NPV,
confusion matrix), a threshold re-chosen on the validation side only (Youden's J or a sensitivity
target), calibration (Brier score, expected calibration error, reliability bins) and ROC/calibration
plots.

A model is a bundle (run through the engine: no torch) or a training checkpoint (``*.pt``: needs
torch, imported lazily). Each row is a whole image or, with a ``roi`` column (x,y,w,h), the nodule box
in a larger frame; modality from the CSV. Which rows: see :func:`decide_split`.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import sha256_file
from .dataset import Sample, Split, read_samples, split_by_case, still_furniture
from .errors import InputError, MissingDependencyError
from .familiarity import Familiarity
from .frames import read_image
from .scorer import Scorer, TrainingRows, training_rows
from .evaluation_plots import plot_calibration, plot_roc
from .metrics import (bootstrap_auc_ci, calibration, delong_auc_ci, delong_test, operating_point,
                      paired_bootstrap_test, sensitivity_threshold, youden_threshold)


class ThresholdRule(str, Enum):
    YOUDEN = "youden"
    SENSITIVITY = "sensitivity"


CHECKPOINT_SUFFIXES = (".pt", ".pth")
# What the DDTI labels are, carried in every report so no figure is read as a pathology result.
LABEL_NOTE = "labels are TI-RADS categories (2-3 benign, 4a-5 malignant), not pathology"


@dataclass(frozen=True)
class SplitSpec:
    """Which rows of the CSV: one side of the case-level split (the training protocol) or all.
    ``split`` None: decided by :func:`decide_split` (the validation side only for the training CSV)."""

    split: Split | None = Split.VAL
    folds: int = 4
    fold: int = 0
    seed: int = 0

    def describe(self) -> str:
        if self.split is None:
            return "rows to be decided"
        if self.split is Split.ALL:
            return "all labelled rows"
        return f"{self.split.value} side of case split fold {self.fold}/{self.folds}, seed {self.seed}"


def decide_split(csv_path: str | Path, spec: SplitSpec, seen: Sequence[TrainingRows]) -> tuple[SplitSpec, str]:
    """(which rows, why), from what each model says it was trained on (``seen``). Asked for (``spec.split``
    set): as asked. Otherwise the validation side of the model's own split when the CSV is the one every
    model was trained on a split of, else all rows: an external set is never silently cut to a quarter. A
    model trained on every row of this CSV has no unseen side: all rows, and the reason says in-sample."""
    if spec.split is not None and not Path(csv_path).is_file():
        return spec, f"--split {spec.split.value} as asked"   # select_samples names the missing file
    if not Path(csv_path).is_file():  # hashed before read_samples would name it: one line, not a traceback
        raise InputError(f"data CSV not found: {csv_path}; expected a CSV with image, label and case_id columns")
    digest = sha256_file(csv_path)
    in_sample = ("the model was trained on every row of this CSV (sha256 " + digest[:12] + "...), so no row is "
                 "unseen and every figure is in-sample (optimistic); its cross-validated figures are in "
                 "`edge-thyroid info`")
    full = any(r.every_row and r.sha256 == digest for r in seen)
    if spec.split is not None:
        return spec, f"--split {spec.split.value} as asked" + (f"; {in_sample}" if full else "")
    if full:
        return replace(spec, split=Split.ALL), in_sample
    if seen and all(r.sha256 == digest for r in seen):
        splits = {(r.folds, r.fold, r.seed) for r in seen}
        if len(splits) > 1:
            named = ", ".join(f"fold {fold}/{folds} seed {seed}" for folds, fold, seed in sorted(splits, key=str))
            raise InputError(f"the models were trained on different splits of {csv_path} ({named}), so no side "
                             "is unseen by both; expected --split with --fold naming the rows to compare on")
        recorded = dict(zip(("folds", "fold", "seed"), splits.pop()))
        chosen = replace(spec, split=Split.VAL, **{k: v for k, v in recorded.items() if v is not None})
        return chosen, (f"this CSV is the one the model was trained on (sha256 {digest[:12]}...), so only its "
                        f"validation side (fold {chosen.fold}/{chosen.folds}, seed {chosen.seed}, as the model "
                        "records) is unseen")
    if any(r.sha256 is None for r in seen):
        return replace(spec, split=Split.ALL), ("the model does not record the CSV it was trained on, so every "
                                                "labelled row is used")
    return replace(spec, split=Split.ALL), (f"this CSV (sha256 {digest[:12]}...) is not the model's training CSV, "
                                            "so every labelled row is used")


def select_samples(csv_path: str | Path, spec: SplitSpec, *, label_source: str | None = None
                   ) -> tuple[list[Sample], list[Sample]]:
    """(samples to evaluate, validation-side samples for choosing a threshold). ``label_source``
    overrides the CSV's (e.g. "tirads" or "pathology")."""
    if spec.split is None:
        raise InputError("the split is not decided yet; call decide_split first")
    try:
        samples = read_samples(csv_path, labelled_only=True)
        train, val = split_by_case(samples, folds=spec.folds, fold=spec.fold, seed=spec.seed)
    except (ValueError, FileNotFoundError) as exc:
        raise InputError(str(exc)) from None
    if label_source is not None:
        samples, train, val = ([replace(s, label_source=label_source) for s in side] for side in (samples, train, val))
    chosen = {Split.ALL: samples, Split.TRAIN: train, Split.VAL: val}[spec.split]
    if {s.label for s in chosen} != {0, 1}:
        raise InputError(f"{csv_path} ({spec.describe()}) has {len(chosen)} labelled rows with labels "
                         f"{sorted({s.label for s in chosen})}; evaluation needs benign and malignant rows")
    return chosen, val


def rows_used(csv_path: str | Path, used: int, why: str) -> str:
    """The line every evaluation prints: how many of the labelled rows were used, and why."""
    return f"{used} of {len(read_samples(csv_path, labelled_only=True))} labelled rows: {why}"


def label_note(samples: Sequence[Sample]) -> str | None:
    """What the labels are, when the data says: the TI-RADS note only for TI-RADS-labelled rows."""
    sources = {getattr(s, "label_source", None) for s in samples}
    if "tirads" in sources:
        return LABEL_NOTE
    if sources == {"pathology"}:
        return "labels are pathology (biopsy or surgery) results"
    return None


class BundleScorer(Scorer):
    kind = "bundle"

    def __init__(self, path: str | Path, *, model: str | None = None, threads: int | None = None,
                 backend_options: dict[str, Any] | None = None) -> None:
        from .engine import Engine

        self.engine = Engine(path, model=model, threads=threads, **(backend_options or {}))
        self.threshold = float(self.engine.threshold)
        self.name = f"{path} [{self.engine.model_key}]"
        manifest = self.engine.bundle.manifest
        self.training_rows = training_rows(manifest.provenance.get("training_data"), manifest.metrics.get("training"))

    def score(self, samples: Sequence[Sample], *, progress: bool = False) -> np.ndarray:
        return self.score_rows(samples, progress=progress)[0]

    def score_rows(self, samples: Sequence[Sample], *,
                   progress: bool = False) -> tuple[np.ndarray, list[Familiarity] | None]:
        predictions = list(row_predictions(self.engine, samples, progress=progress))
        familiarity = [p.familiarity for p in predictions] if self.engine.familiarity is not None else None
        return np.array([p.probability for p in predictions], dtype=np.float64), familiarity

    def close(self) -> None:
        self.engine.close()


def row_predictions(engine: Any, samples: Sequence[Sample], *, progress: bool = False,
                    desc: str = "scoring") -> Iterator[Any]:
    """Each row's Prediction from ``engine``, on the pane scoring uses: its box grown by the bundle's
    context, a calipers box found with the furniture the run's screenshots give (one pane per row)."""
    from tqdm import tqdm

    furniture = still_furniture(samples)
    for sample in tqdm(samples, desc=desc, unit="image", file=sys.stderr, disable=not progress):
        frame = read_image(sample.image)
        yield engine.classify(frame, [sample.pane(frame, engine.box_context, furniture)])


def open_scorer(path: str | Path, *, model: str | None = None, threads: int | None = None,
                backend_options: dict[str, Any] | None = None) -> Scorer:
    """A bundle directory/zip -> the engine; a ``.pt``/``.pth`` file -> the checkpoint's torch model
    (:class:`edge_thyroid.export.scoring.CheckpointScorer`, the same interface, built with torch)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"model not found: {path}; expected a bundle directory/zip or a checkpoint .pt file")
    if path.is_file() and path.suffix.lower() in CHECKPOINT_SUFFIXES:
        if backend_options and any(value is not None for value in backend_options.values()):
            raise InputError(f"{path} is a checkpoint, run by PyTorch; backend settings {sorted(backend_options)} "
                             "apply to bundles")
        try:  # torch and torchvision: the export extra, build-time code
            from .export.scoring import CheckpointScorer
        except ImportError as exc:
            raise MissingDependencyError(exc.name or "torch", "export", "evaluating a checkpoint") from None
        return CheckpointScorer(path, threads=threads)
    return BundleScorer(path, model=model, threads=threads, backend_options=backend_options)


@dataclass
class Scored:
    """Per-crop scores of one model on one sample list."""

    samples: list[Sample]
    scores: np.ndarray
    threshold: float
    model: str
    familiarity: list[Familiarity] | None = None   # per row, when the model has a familiarity reference

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    @property
    def cases(self) -> list[str]:
        return [s.case_id for s in self.samples]

    def rows(self) -> list[dict[str, Any]]:
        checked = self.familiarity or [None] * len(self.samples)
        return [{"image": str(s.image), "case_id": s.case_id, "label": s.label, "score": float(p),
                 **({"familiar": f.familiar, "distance": f.distance} if f is not None else {})}
                for s, p, f in zip(self.samples, self.scores, checked)]

    def familiarity_summary(self) -> dict[str, Any] | None:
        """How many rows the model finds unlike its training crops, and the AUC on the others (None when the
        model has no familiarity reference; the AUC None when the familiar rows hold one class only)."""
        checked = [i for i, f in enumerate(self.familiarity or []) if f is not None]   # other modalities: unchecked
        if not checked:
            return None
        familiar = np.array([self.familiarity[i].familiar for i in checked], dtype=bool)
        labels, scores = self.labels[checked][familiar], self.scores[checked][familiar]
        return {"unfamiliar": int((~familiar).sum()), "rows": len(checked),
                "threshold": self.familiarity[checked[0]].threshold,
                "auc_familiar": delong_auc_ci(labels, scores).auc if len(set(labels.tolist())) == 2 else None}


def choose_threshold(labels: np.ndarray, scores: np.ndarray, rule: ThresholdRule,
                     sensitivity_target: float | None = None) -> float:
    if rule is ThresholdRule.SENSITIVITY:
        if sensitivity_target is None or not 0.0 < sensitivity_target <= 1.0:
            raise InputError(f"sensitivity target {sensitivity_target} is outside (0, 1]")
        return sensitivity_threshold(labels, scores, sensitivity_target)
    return youden_threshold(labels, scores)


@dataclass
class EvaluationReport:
    model: str
    data: str
    n: int
    positives: int
    cases: int
    auc: float
    auc_ci_delong: dict[str, float]
    auc_ci_bootstrap: dict[str, float]
    at_model_threshold: dict[str, Any]
    chosen_threshold: dict[str, Any]
    calibration: dict[str, Any]
    # The same with the classes weighted equally (metrics.prior_weights): the mix a class-balanced model's
    # p assumes, so a data set's own mix (DDTI: 85% malignant-labelled) does not read as miscalibration.
    calibration_equal_classes: dict[str, Any] | None = None
    label_note: str | None = LABEL_NOTE
    plots: list[str] = field(default_factory=list)
    rows: str | None = None          # how many rows were used and why
    familiarity: dict[str, Any] | None = None   # Scored.familiarity_summary() of the evaluated rows

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        d, b, op = self.auc_ci_delong, self.auc_ci_bootstrap, self.at_model_threshold
        ch = self.chosen_threshold
        return [
            f"model: {self.model}",
            f"data: {self.data}: {self.n} crops ({self.positives} malignant / {self.n - self.positives} benign), {self.cases} cases",
            *([f"rows: {self.rows}"] if self.rows else []),
            f"AUC {self.auc:.3f}  95% CI DeLong [{d['low']:.3f}, {d['high']:.3f}]  "
            f"case bootstrap [{b['low']:.3f}, {b['high']:.3f}]",
            f"at the model's threshold {op['threshold']:.4f}: accuracy {op['accuracy']:.3f}  sensitivity "
            f"{op['sensitivity']:.3f}  specificity {op['specificity']:.3f}  PPV {op['ppv']:.3f}  NPV {op['npv']:.3f}",
            "confusion matrix (rows truth, columns prediction):",
            "                 pred benign  pred malignant",
            f"  benign         {op['tn']:11d}  {op['fp']:14d}",
            f"  malignant      {op['fn']:11d}  {op['tp']:14d}",
            f"threshold chosen on {ch['chosen_on']} ({ch['rule']}): {ch['threshold']:.4f} -> sensitivity "
            f"{ch['operating_point']['sensitivity']:.3f}  specificity {ch['operating_point']['specificity']:.3f}  "
            f"accuracy {ch['operating_point']['accuracy']:.3f}",
            f"calibration at this data's mix ({self.positives / self.n:.0%} malignant): Brier "
            f"{self.calibration['brier']:.4f}  ECE {self.calibration['ece']:.4f}"
            + (f"; with the classes weighted equally: Brier {self.calibration_equal_classes['brier']:.4f}  "
               f"ECE {self.calibration_equal_classes['ece']:.4f}" if self.calibration_equal_classes else ""),
            *([familiarity_line(self.familiarity)] if self.familiarity else []),
            *([f"note: {self.label_note}"] if self.label_note else []),
            *[f"plot: {p}" for p in self.plots],
        ]


def familiarity_line(summary: dict[str, Any]) -> str:
    auc = summary["auc_familiar"]
    return (f"familiarity: {summary['unfamiliar']} of {summary['rows']} rows unlike the model's training crops "
            f"(distance > {summary['threshold']:.4f}); AUC on the {summary['rows'] - summary['unfamiliar']} others "
            + (f"{auc:.3f}" if auc is not None else "n/a (one class)"))


def evaluate_scores(scored: Scored, *, data: str, validation: Scored | None = None,
                    rule: ThresholdRule = ThresholdRule.YOUDEN, sensitivity_target: float | None = None,
                    resamples: int = 2000, seed: int = 0, chosen_on: str = "validation side") -> EvaluationReport:
    """The study's figures from per-crop scores. The re-chosen threshold comes from ``validation``
    (the validation side of the split) so that it is never fitted on the rows it is judged on
    unless those rows are the validation side itself (or all rows: ``chosen_on`` says so)."""
    labels, scores = scored.labels, scored.scores
    validation = validation or scored
    chosen = choose_threshold(validation.labels, validation.scores, rule, sensitivity_target)
    chosen_point = operating_point(labels, scores, chosen)
    return EvaluationReport(
        model=scored.model, data=data, n=int(labels.size), positives=int(labels.sum()), cases=len(set(scored.cases)),
        auc=delong_auc_ci(labels, scores).auc,
        auc_ci_delong=delong_auc_ci(labels, scores).to_dict(),
        auc_ci_bootstrap=bootstrap_auc_ci(labels, scores, resamples=resamples, seed=seed, groups=scored.cases).to_dict(),
        at_model_threshold=operating_point(labels, scores, scored.threshold).to_dict(),
        chosen_threshold={"rule": rule.value, "sensitivity_target": sensitivity_target, "threshold": chosen,
                          "chosen_on": chosen_on, "operating_point": chosen_point.to_dict()},
        calibration=calibration(labels, scores),
        calibration_equal_classes=calibration(labels, scores, prior=0.5),   # both classes: the AUC needs them too
        label_note=label_note(scored.samples),
    )


def score_model(path: str | Path, samples: list[Sample], *, model: str | None = None, threads: int | None = None,
                progress: bool = False, extra: list[Sample] | None = None,
                backend_options: dict[str, Any] | None = None) -> tuple[Scored, Scored | None]:
    """Score ``samples`` (and optionally ``extra`` rows, e.g. the validation side) with one model."""
    with open_scorer(path, model=model, threads=threads, backend_options=backend_options) as scorer:
        scored = Scored(samples, scorer.score(samples, progress=progress), scorer.threshold, scorer.name)
        other = None
        if extra is not None:
            other = Scored(extra, scorer.score(extra, progress=progress), scorer.threshold, scorer.name)
    return scored, other


def evaluate_model(path: str | Path, csv_path: str | Path, spec: SplitSpec, *, model: str | None = None,
                   rule: ThresholdRule = ThresholdRule.YOUDEN, sensitivity_target: float | None = None,
                   plots_dir: str | Path | None = None, threads: int | None = None, resamples: int = 2000,
                   progress: bool = False, label_source: str | None = None,
                   backend_options: dict[str, Any] | None = None) -> tuple[EvaluationReport, Scored]:
    with open_scorer(path, model=model, threads=threads, backend_options=backend_options) as scorer:
        spec, why = decide_split(csv_path, spec, [scorer.training_rows])
        samples, val = select_samples(csv_path, spec, label_source=label_source)
        probabilities, familiarity = scorer.score_rows(samples, progress=progress)
        scored = Scored(samples, probabilities, scorer.threshold, scorer.name, familiarity)
        if spec.split is Split.TRAIN:   # the threshold is re-chosen on the rows never trained on
            val_scored, chosen_on = Scored(val, scorer.score(val, progress=progress), scorer.threshold,
                                           scorer.name), "validation side"
        elif spec.split is Split.VAL:
            val_scored, chosen_on = scored, "validation side"
        else:
            val_scored, chosen_on = scored, "the evaluated rows themselves (in-sample: optimistic)"
    report = evaluate_scores(scored, data=f"{csv_path} ({spec.describe()})", validation=val_scored, rule=rule,
                             sensitivity_target=sensitivity_target, resamples=resamples, chosen_on=chosen_on)
    report.rows = rows_used(csv_path, len(samples), why)
    report.familiarity = scored.familiarity_summary()
    if plots_dir is not None:
        folder = Path(plots_dir)
        folder.mkdir(parents=True, exist_ok=True)
        report.plots = [str(plot_roc([(Path(path).name, scored)], folder / "roc.png", f"ROC ({spec.split.value})")),
                        str(plot_calibration(scored, folder / "calibration.png", f"Calibration ({spec.split.value})"))]
    return report, scored


@dataclass
class ComparisonReport:
    model_a: str
    model_b: str
    data: str
    n: int
    positives: int
    cases: int
    delong: dict[str, float]
    bootstrap: dict[str, float]
    label_note: str | None = LABEL_NOTE
    rows: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        d, b = self.delong, self.bootstrap
        return [
            f"A: {self.model_a}", f"B: {self.model_b}",
            f"data: {self.data}: {self.n} crops ({self.positives} malignant), {self.cases} cases",
            *([f"rows: {self.rows}"] if self.rows else []),
            f"AUC A {d['auc_a']:.3f}  B {d['auc_b']:.3f}  difference {d['difference']:+.3f}",
            f"DeLong (paired): SE {d['std_error']:.4f}  z {d['z']:+.3f}  p {d['p_value']:.4g}",
            f"case-level paired bootstrap ({b['resamples']}): SE {b['std_error']:.4f}  95% CI "
            f"[{b['low']:+.3f}, {b['high']:+.3f}]  p {b['p_value']:.4g}",
            *([f"note: {self.label_note}"] if self.label_note else []),
        ]


def compare_scores(a: Scored, b: Scored, *, data: str, resamples: int = 2000, seed: int = 0) -> ComparisonReport:
    if [s.image for s in a.samples] != [s.image for s in b.samples]:
        raise InputError("the two models were scored on different rows; a paired test needs the same crops")
    labels = a.labels
    test = delong_test(labels, a.scores, b.scores)
    boot = paired_bootstrap_test(labels, a.scores, b.scores, groups=a.cases, resamples=resamples, seed=seed)
    return ComparisonReport(a.model, b.model, data, int(labels.size), int(labels.sum()), len(set(a.cases)),
                            test.to_dict(), boot.to_dict(), label_note(a.samples))


def compare_models(path_a: str | Path, path_b: str | Path, csv_path: str | Path, spec: SplitSpec, *,
                   threads: int | None = None, resamples: int = 2000, progress: bool = False,
                   plot: str | Path | None = None, label_source: str | None = None) -> ComparisonReport:
    with open_scorer(path_a, threads=threads) as scorer_a, open_scorer(path_b, threads=threads) as scorer_b:
        spec, why = decide_split(csv_path, spec, [scorer_a.training_rows, scorer_b.training_rows])
        samples, _ = select_samples(csv_path, spec, label_source=label_source)
        a = Scored(samples, scorer_a.score(samples, progress=progress), scorer_a.threshold, scorer_a.name)
        b = Scored(samples, scorer_b.score(samples, progress=progress), scorer_b.threshold, scorer_b.name)
    report = compare_scores(a, b, data=f"{csv_path} ({spec.describe()})", resamples=resamples)
    report.rows = rows_used(csv_path, len(samples), why)
    if plot is not None:
        plot_roc([(Path(path_a).name, a), (Path(path_b).name, b)], plot, f"ROC ({spec.split.value})")
    return report
