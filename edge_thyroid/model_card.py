"""A bundle's model card: what the model is for, how well it did held out, and where it stops, in Markdown.

Built from the verified manifest alone (``edge-thyroid info BUNDLE --card``), so the card a workstation
shows is the one the bundle's signature covers, and it cannot drift from the model it describes. Every
figure is one the manifest records; a fact the manifest does not record is written "not recorded", never
guessed. The limits section is derived from the same figures (specificity, the TI-RADS 2 rate, the gap
between the training side and the held-out folds), so it is as current as they are.

The quantization gate's AUC is *not* an accuracy figure: the gate compares the INT8 copy with its FP32
reference on crops the all-data model trained on. The card says so and reports only the agreement.
"""

from __future__ import annotations

from typing import Any

from .gates import recorded_gates
from .prevalence import model_prior

NOT_RECORDED = "not recorded"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _mean_sd(entry: Any, digits: int = 3) -> str | None:
    """``{"mean": m, "sd": s}`` as "m ± s"; None when the entry holds no mean."""
    if not isinstance(entry, dict) or _number(entry.get("mean")) is None:
        return None
    sd = _number(entry.get("sd"))
    return f"{entry['mean']:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _cross_validation_rows(cv: dict) -> list[tuple[str, str]]:
    rows = []
    auc = _mean_sd(cv.get("auc"))
    if auc:
        per_fold = [f"{a:.3f}" for a in cv.get("auc_per_fold") or [] if _number(a) is not None]
        rows.append(("AUC, mean ± sd over folds", auc + (f" (folds {', '.join(per_fold)})" if per_fold else "")))
    pooled, ci = _number(cv.get("out_of_fold_auc")), cv.get("out_of_fold_auc_ci95")
    if pooled is not None:
        rows.append(("AUC, every held-out crop pooled [95% DeLong CI]", f"{pooled:.3f}"
                     + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if isinstance(ci, list) and len(ci) == 2
                        and all(_number(c) is not None for c in ci) else "")))
    margins = [(key.rsplit("_", 1)[-1], _mean_sd(cv.get(key))) for key in sorted(cv) if key.startswith("auc_margin_")]
    if any(value for _, value in margins):
        rows.append(("AUC on nodule boxes of margin " + " / ".join(f"{m}x" for m, v in margins if v),
                     " / ".join(v for _, v in margins if v)))
    cam, area = _mean_sd(cv.get("cam_in_mask"), 2), _mean_sd(cv.get("mask_area"), 2)
    if cam:
        rows.append(("Share of the heatmap inside the nodule", cam + (f" (the nodule covers {area} of the crop)" if area else "")))
    sensitivity, specificity = _mean_sd(cv.get("sensitivity"), 2), _mean_sd(cv.get("specificity"), 2)
    if sensitivity and specificity:
        rows.append(("Sensitivity / specificity at each fold's training-side threshold", f"{sensitivity} / {specificity}"))
    tirads2 = _mean_sd(cv.get("tirads2_benign_rate"), 2)
    if tirads2:
        rows.append(("TI-RADS 2 crops called benign (same thresholds)", tirads2))
    train_side = _mean_sd(cv.get("auc_train_side"))
    if train_side:
        rows.append(("AUC on the training side (how much it memorises)", train_side))
    return rows


def _limits(manifest: dict, cv: dict, label_source: str | None) -> list[str]:
    """What the recorded figures say the model does not do; each line cites the figure it comes from."""
    limits = []
    if label_source and "not pathology" in label_source:
        limits.append(f"The labels are {label_source}: the model predicts a radiologist's risk category, and no "
                      "figure here is agreement with biopsy.")
    elif not label_source:
        limits.append("What the labels mean is not recorded: read every figure as agreement with unknown labels.")
    data = cv.get("data")
    if cv:
        limits.append("Every figure comes from case-level cross-validation on one data set"
                      + (f" ({data})" if isinstance(data, str) else "")
                      + ": performance on another hospital's scanners and patients is not measured here.")
    specificity = _number(_dict(cv.get("specificity")).get("mean"))
    if specificity is not None and specificity < 0.8:
        limits.append(f"Specificity {specificity:.2f} at the training-side thresholds: about {1 - specificity:.0%} of "
                      "benign-labelled nodules are called malignant. A malignant call is a prompt to look, not a finding.")
    tirads2 = _number(_dict(cv.get("tirads2_benign_rate")).get("mean"))
    if tirads2 is not None and tirads2 < 0.9:
        limits.append(f"TI-RADS 2 nodules (benign by the guideline's own features) are called benign {tirads2:.0%} of "
                      "the time: the score does not replace reading the nodule's composition.")
    auc, train_side = _number(_dict(cv.get("auc")).get("mean")), _number(_dict(cv.get("auc_train_side")).get("mean"))
    if auc is not None and train_side is not None and train_side - auc > 0.1:
        limits.append(f"It fits its training crops far better than it ranks unseen ones (AUC {train_side:.2f} against "
                      f"{auc:.2f}): a familiar-looking crop is no evidence of a right answer.")
    untrained = [m for m in manifest.get("modalities") or [] if m not in (manifest.get("trained_modalities") or [])]
    if untrained:
        limits.append(f"Inputs for {', '.join(untrained)} are accepted by the graph, but the model was trained on "
                      f"{', '.join(manifest.get('trained_modalities') or []) or 'no modality'} only: those panes carry "
                      "no learnt evidence.")
    if not _dict(manifest.get("familiarity")):
        limits.append("No familiarity record: results cannot say when an image is unlike the training crops "
                      "(`edge-thyroid familiarize` adds one).")
    return limits


def _what_it_does(manifest: dict) -> list[str]:
    pre, threshold = _dict(manifest.get("preprocessing")), _dict(manifest.get("threshold"))
    context = _number(_dict(manifest.get("nodule_box")).get("context")) or 1.0
    size = pre.get("image_size", "?")
    lines = [f"- **Input:** a nodule box on a {', '.join(manifest.get('trained_modalities') or []) or '?'} pane, "
             + (f"grown {context:g}x about its centre, " if context != 1.0 else "as given, ")
             + f"resized to {size} x {size} px inside the model graph.",
             ("- **Output:** p(malignant) per pane and a class-activation heatmap of the evidence; a decision "
              "where p reaches the threshold.")]
    value = _number(threshold.get("value"))
    lines.append("- **Threshold:** " + (f"{value:.4f} ({threshold.get('method', '?')}, chosen on "
                                         f"{threshold.get('chosen_on', '?')})." if value is not None else NOT_RECORDED + "."))
    prior = model_prior(manifest.get("probability"))
    lines.append("- **What p means:** " + (f"the chance of a malignant label where {prior:g} of the nodules are "
                                           "malignant; `--prevalence SHARE` reads p and the threshold at a site's own "
                                           "share without changing any decision." if prior is not None
                                           else NOT_RECORDED + " (`--prevalence` refuses this bundle)."))
    if _dict(manifest.get("test_time")).get("flip"):
        lines.append("- **Test time:** each pane is scored with its mirror image and the two averaged (in the graph).")
    lines.append(f"- **Intended use:** {_dict(manifest.get('model_card')).get('intended_use') or NOT_RECORDED}.")
    return lines


def _what_it_learnt_from(training: dict, label_source: str | None) -> list[str]:
    sha, rows = training.get("data_csv_sha256"), training.get("data_rows")
    lines = [f"- **Labels:** {label_source or NOT_RECORDED}.",
             "- **Data:** " + (f"a CSV of {rows} rows, sha256 `{sha}`" if sha else NOT_RECORDED)
             + (f"; files sha256 `{training['data_files_sha256']}`" if training.get("data_files_sha256") else "") + "."]
    recipe = _dict(training.get("recipe"))
    if recipe:
        keys = ("backbone", "image_size", "epochs", "lr", "weight_decay", "p_box", "p_cyst", "init")
        lines.append("- **Recipe:** " + ", ".join(f"{k} {recipe[k]}" for k in keys if k in recipe) + ".")
    return lines


def _how_well(cv: dict) -> list[str]:
    rows = _cross_validation_rows(cv)
    if not rows:
        return [(f"Cross-validated figures: {NOT_RECORDED}. Measure them with `edge-thyroid evaluate` on labelled "
                 "images the model never saw before relying on it.")]
    seeds = cv.get("seeds") or []
    return [f"{cv.get('folds', '?')}-fold cross-validation split by case (no patient on both sides)"
            + (f", {len(seeds)} seeds averaged within each fold" if len(seeds) > 1 else "")
            + "; no epoch or threshold was picked on the fold reported.",
            "", "| figure | value |", "|---|---|"] + [f"| {name} | {value} |" for name, value in rows]


def _gates(models: dict) -> list[str]:
    """One line per recorded accuracy gate (a legacy single gate included): passed or not, and the agreement
    (never the gate's AUC)."""
    lines = []
    for key, entry in models.items():
        for configuration, gate in recorded_gates(_dict(entry)).items():
            agreement = _number(gate.get("agreement"))
            lines.append(f"- {key} on {configuration}: {'passed' if gate.get('passed') is True else 'FAILED'}"
                         + (f", {agreement:.3f} of {gate.get('n', '?')} decisions equal to the FP32 reference's"
                            if agreement is not None else ""))
    return lines


def render_model_card(manifest: dict, manifest_sha256: str | None = None, signer: str | None = None) -> str:
    """The model card of a bundle's manifest (its ``to_dict()``), as Markdown."""
    metrics = _dict(manifest.get("metrics"))
    cv = _dict(metrics.get("cross_validation"))
    label_source = metrics.get("label_source") if isinstance(metrics.get("label_source"), str) else None
    models = _dict(manifest.get("models"))
    lines = [f"# Model card: {manifest.get('backbone', '?')}" + (f" ({', '.join(sorted(models))})" if models else ""), ""]
    if manifest_sha256:
        lines.append(f"Manifest sha256 `{manifest_sha256}`" + (f"; signer: {signer}." if signer else "."))
    lines += ["Generated from the bundle's verified manifest by `edge-thyroid info BUNDLE --card`. Not a medical device."]
    lines += ["", "## What it does", ""] + _what_it_does(manifest)
    lines += ["", "## What it learnt from", ""] + _what_it_learnt_from(_dict(metrics.get("training")), label_source)
    lines += ["", "## How well it did on crops it had not seen", ""] + _how_well(cv)
    gates = _gates(models)
    if gates:
        lines += ["", "## Compiled and quantized copies", "",
                  ("Each copy's accuracy gate compares its decisions with its FP32 reference's. The gate's crops may "
                   "be ones the model trained on, so its AUC is not an accuracy figure; the table above is."), ""] + gates
    lines += ["", "## Limits", ""] + [f"- {limit}" for limit in _limits(manifest, cv, label_source)]
    tools = _dict(_dict(manifest.get("provenance")).get("tools"))
    if tools:
        lines += ["", "## Built with", "", ", ".join(f"{k} {v}" for k, v in tools.items() if k != "platform") + "."]
    return "\n".join(lines) + "\n"
