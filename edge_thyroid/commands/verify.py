"""edge-thyroid verify: the accuracy gate between a quantized/compiled model and its FP32 reference."""

from __future__ import annotations

import json

import click

from ..verification import Split
from .runtime_options import backend_settings, require_keyword, runtime_options
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
@runtime_options
@trust_option
def verify(bundle, reference, data, split, folds, fold, seed, model_key, reference_model, max_auc_drop, min_agreement,
           threads, providers, as_json, **backend_kwargs) -> None:
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
    """
    from ..verification import GateBudget, GateFailedError, labelled_split, run_gate

    budget = GateBudget(max_auc_drop, min_agreement)
    labelled = labelled_split(data, Split(split), folds=folds, fold=fold, seed=seed)
    options = backend_settings(backend_kwargs)
    if providers:
        require_keyword(options["backend"], "providers", "--providers (ONNX Runtime execution providers)")
        options.update({"providers": [p.strip() for p in providers.split(",") if p.strip()], "require_providers": True})
    report = run_gate(bundle, reference or bundle, labelled, model=model_key, reference_model=reference_model,
                      budget=budget, threads=threads, backend_options=options, progress=True)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else "\n".join(report.lines()))
    if not report.passed:
        raise GateFailedError(report)
