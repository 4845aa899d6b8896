"""edge-thyroid verify: the accuracy gate between a quantized/compiled model and its FP32 reference."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from ..verification import Split
from .runtime_options import backend_settings, gate_runtime_options, require_keyword
from .trust_options import trust_option


@click.command()
@click.argument("bundle", type=click.Path())
@click.option("--reference", default=None, type=click.Path(),
              help="Bundle holding the reference model (default: BUNDLE itself, e.g. an INT8 bundle that kept its FP32 model).")
@click.option("--data", required=True, type=click.Path(dir_okay=False),
              help="Labelled sample CSV (image,label,case_id[,modality]); e.g. ../shared/data/ddti/labels.csv.")
@click.option("--split", type=click.Choice([s.value for s in Split]),
              default="val", show_default=True, help="Which side of the case-level split to judge on (val: never seen in training or calibration).")
@click.option("--folds", type=int, default=4, show_default=True, help="Case-level folds of the split.")
@click.option("--fold", type=int, default=0, show_default=True, help="The validation fold.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split.")
@click.option("--model", "model_key", default=None, help="Candidate model key in BUNDLE (default: int8 if present, else fp32).")
@click.option("--reference-model", default="fp32", show_default=True, help="Model key in the reference bundle.")
@click.option("--max-auc-drop", type=float, default=0.01, show_default=True, help="Fail if the AUC drops by more than this.")
@click.option("--min-agreement", type=float, default=0.98, show_default=True,
              help="Fail if the two models' malignant/benign decisions agree on fewer images than this fraction.")
@click.option("--threads", type=int, default=None, help="Inference threads per model.")
@click.option("--providers", default=None,
              help="ONNX Runtime execution providers for the candidate, comma-separated, e.g. "
                   "TensorrtExecutionProvider,CUDAExecutionProvider (fails if one is unavailable or silently falls back).")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@click.option("--record/--no-record", default=True, show_default=True,
              help="Write the result into BUNDLE's manifest as the gate of this backend and execution precision "
                   "(what --backend auto reads; only against an FP32 reference, only for a bundle directory).")
@gate_runtime_options
@trust_option
def verify(bundle, reference, data, split, folds, fold, seed, model_key, reference_model, max_auc_drop, min_agreement,
           threads, providers, as_json, record, **backend_kwargs) -> None:
    """Judge BUNDLE's model against an FP32 reference on labelled images: AUC of both and the drop,
    sensitivity/specificity at the decision threshold and at a re-fitted (Youden) threshold, decision
    agreement and |dp| (p50/p99/max). Exit status 0 when within the budget, 1 when not.

    \b
    Examples:
      edge-thyroid verify runs/int8 --data ../shared/data/ddti/labels.csv              (INT8 vs the FP32 it kept)
      edge-thyroid verify runs/int8 --reference runs/fp32 --data labels.csv --json
      edge-thyroid verify runs/b --model fp16 --providers CUDAExecutionProvider --data labels.csv
      edge-thyroid verify runs/int8 --backend openvino --execution-precision bf16 --data labels.csv
        (the candidate runs on OpenVINO; the reference stays on ONNX Runtime FP32)
    
    The result is recorded in BUNDLE's manifest as the gate of the configuration that ran (e.g.
    openvino/bf16), passed or failed; --backend auto only runs configurations whose gate passed.
    """
    from ..bundle import load_bundle
    from ..verification import GateBudget, GateFailedError, labelled_split, run_gate

    budget = GateBudget(max_auc_drop, min_agreement)
    labelled = labelled_split(data, Split(split), folds=folds, fold=fold, seed=seed)
    options = backend_settings(backend_kwargs)
    if providers:
        require_keyword(options["backend"], "providers", "--providers (ONNX Runtime execution providers)")
        options.update({"providers": [p.strip() for p in providers.split(",") if p.strip()], "require_providers": True})
    candidate = load_bundle(bundle)
    key, configuration = gated_configuration(candidate, model_key, options)
    report = run_gate(candidate, reference or candidate, labelled, model=model_key, reference_model=reference_model,
                      budget=budget, threads=threads, backend_options=options, progress=True)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else "\n".join(report.lines()))
    if record:
        _record(Path(bundle), candidate, key, configuration, report, reference, reference_model, providers)
    if not report.passed:
        raise GateFailedError(report)


def gated_configuration(bundle: Any, model_key: str | None, options: dict[str, Any]) -> tuple[str, Any]:
    """The model key and the configuration (backend, execution precision) the candidate runs in."""
    from ..backends import backend_class, backend_for_target
    from ..backends.base import EXECUTION_PRECISION
    from ..gates import Configuration

    key, entry = bundle.model_entry(model_key)
    backend = options.get("backend") or backend_for_target(entry.target.value)
    precisions = backend_class(backend).execution_precisions()
    return key, Configuration(backend, (options.get(EXECUTION_PRECISION) or precisions[0]) if precisions else None)


def _record(bundle_path: Path, candidate: Any, key: str, configuration: Any, report: Any, reference: str | None,
            reference_model: str, providers: str | None) -> None:
    """The report's summary as ``configuration``'s gate in the manifest, or one line saying why not."""
    from ..bundle import Precision, load_bundle
    from ..gates import record_gate

    reference_bundle = candidate if reference is None else load_bundle(reference)
    reference_precision = reference_bundle.model_entry(reference_model)[1].precision
    if reference_precision is not Precision.FP32:
        why = f"the reference model {reference_model!r} is {reference_precision.value}, not the FP32 reference"
    elif providers:
        why = "--providers runs the model on other execution providers than the configuration --backend auto runs"
    elif not bundle_path.is_dir():
        why = f"{bundle_path} is not a bundle directory (a .zip is read-only: unpack it, verify, pack it again)"
    else:
        summary = {**report.summary(), "budget": report.budget.to_dict(), "reference": report.reference["model"],
                   "recorded_unix": round(time.time(), 3)}
        unsigned = record_gate(candidate.root, key, configuration, summary)
        click.echo(f"recorded the {configuration} gate of model {key} ({'passed' if report.passed else 'FAILED'}) "
                   f"in {candidate.root / 'manifest.json'}", err=True)
        if unsigned:
            click.echo(f"notice: the bundle's signature covered the old manifest and was removed; sign it again: "
                       f"edge-thyroid sign {bundle_path} --key PRIVATE.pem", err=True)
        return
    click.echo(f"gate not recorded: {why}", err=True)
