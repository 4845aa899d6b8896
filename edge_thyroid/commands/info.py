"""edge-thyroid info: show a bundle's manifest after verifying every file hash."""

from __future__ import annotations

import json

import click

from .trust_options import trust_option


@click.command()
@click.argument("bundle", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON.")
@click.option("--card", "as_card", is_flag=True,
              help="Print the model card as Markdown: what the model is for, its cross-validated figures and its "
                   "limits, from the verified manifest alone (e.g. > MODEL_CARD.md).")
@trust_option
def info(bundle, as_json, as_card) -> None:
    """Verify BUNDLE (its signature against --trust keys, the sha256 of every file) and summarise it,
    with the manifest's sha256, its signer and, for an imported model, its model card."""
    from ..bundle import load_bundle

    if as_json and as_card:
        raise click.UsageError("--json and --card both print the bundle; expected one of them")
    loaded = load_bundle(bundle)
    manifest = loaded.manifest.to_dict()
    if as_card:
        from ..model_card import render_model_card

        click.echo(render_model_card(manifest, loaded.signature.manifest_sha256, loaded.signature.describe()), nl=False)
        return
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
        return
    pre = manifest["preprocessing"]
    click.echo(f"bundle      {loaded.root}  (format v{manifest['format_version']}, {len(manifest['files'])} files verified)")
    click.echo(f"manifest    sha256 {loaded.signature.manifest_sha256}")
    click.echo(f"signer      {loaded.signature.describe()}")
    click.echo(f"backbone    {manifest['backbone']}  modalities {', '.join(manifest['modalities'])}"
               f"  (trained on: {', '.join(manifest['trained_modalities']) or 'none'})")
    click.echo(f"input       uint8 BGR frame + ROIs -> {pre['image_size']}x{pre['image_size']} {pre['interpolation']}, "
               f"mean {pre['mean']} std {pre['std']}")
    context = manifest.get("nodule_box", {}).get("context", 1.0)
    click.echo("nodule box  " + (f"grown {context}x about its centre (within its pane) before the model sees it"
                                  if context != 1.0 else "as given (no context added)"))
    test_time = manifest.get("test_time", {})
    if test_time.get("flip"):
        click.echo(f"test time   each pane's feature maps averaged with its mirror image's, rolled {test_time.get('roll', 0)} "
                   "cell(s) onto its grid (in the graph: 2 backbone passes per pane)")
    familiarity = manifest.get("familiarity", {})
    if familiarity:
        click.echo(f"familiarity {familiarity.get('crops', '?')} training {familiarity['modality']} crops "
                   f"({familiarity['file']}); a pane is marked unfamiliar when the {familiarity['neighbours']} nearest "
                   f"are not all within {familiarity['threshold']:.4f} (1 - cosine similarity)")
    from ..gates import recorded_gates

    for key, entry in manifest["models"].items():
        if "branches" in entry:  # a backbone per modality, fused late by the head
            click.echo(f"model       {key}: a backbone per modality ({entry['precision']}, {entry['target']})")
            for modality, branch in entry["branches"].items():
                click.echo(f"  branch    {modality}: {branch['file']}  sha256 {manifest['files'].get(branch['file'], '?')}  "
                           f"{branch.get('architecture', '?')}, {entry['precision']}"
                           + (f", {branch['quantization']['calibrated_on']}" if "quantization" in branch else ""))
        else:
            click.echo(f"model       {key}: {entry['file']} ({entry['precision']}, {entry['target']})")
        for configuration, gate in recorded_gates(entry).items():
            figures = ", ".join(f"{name} {gate[name]:+.4f}" if name == "auc_drop" else f"{name} {gate[name]:.4f}"
                                for name in ("auc_drop", "agreement") if isinstance(gate.get(name), (int, float)))
            click.echo(f"  gate      {configuration}: {'passed' if gate.get('passed') is True else 'FAILED'}"
                       + (f" ({figures})" if figures else ""))
    t = manifest["threshold"]
    click.echo(f"threshold   {t['value']:.4f} ({t['method']}, chosen on {t['chosen_on']})")
    from ..prevalence import model_prior

    prior = model_prior(manifest.get("probability"))
    click.echo("p assumes   " + (f"{prior:g} of the nodules malignant; --prevalence SHARE reads p and the threshold at a "
                                 "site's own share (decisions unchanged)" if prior is not None else
                                 "not recorded (no --prevalence; export --probability-prior records it)"))
    for line in training_lines(manifest):
        click.echo(line)
    if manifest["metrics"]:
        click.echo(f"metrics     {json.dumps(manifest['metrics'])}")
    if "model_card" in manifest:
        for line in model_card_lines(manifest["model_card"]):
            click.echo(line)


def training_lines(manifest: dict) -> list[str]:
    """What the model learnt from and how well it did out of fold, in words (the raw record follows them):
    the labels' meaning, the cross-validated AUC, and which rows of which CSV it saw."""
    metrics, lines = manifest.get("metrics") or {}, []
    if metrics.get("label_source"):
        lines.append(f"labels      {metrics['label_source']}")
    cv = metrics.get("cross_validation") or {}
    if isinstance(cv.get("auc"), dict) and "mean" in cv["auc"]:
        seeds = cv.get("seeds") or []
        pooled = cv.get("out_of_fold_auc_ci95")
        lines.append(f"accuracy    AUC {cv['auc']['mean']:.3f} ± {cv['auc'].get('sd') or 0:.3f} over {cv.get('folds', '?')} "
                     f"case-level folds" + (f" ({len(seeds)} seeds)" if len(seeds) > 1 else "")
                     + (f", pooled out of fold {cv['out_of_fold_auc']:.3f} [{pooled[0]:.3f}, {pooled[1]:.3f}]"
                        if isinstance(cv.get("out_of_fold_auc"), float) and pooled else "")
                     + (f"; CAM in mask {cv['cam_in_mask']['mean']:.2f}" if isinstance(cv.get("cam_in_mask"), dict) else ""))
    from ..scorer import training_rows

    split = (manifest.get("provenance") or {}).get("training_data")
    seen = training_rows(split, metrics.get("training"))   # the rule evaluate decides its rows by
    known = lambda value: "?" if value is None else value   # noqa: E731
    if seen.every_row:
        lines.append(f"trained on  every labelled row of a CSV with sha256 {seen.sha256[:12]}...: `evaluate` on it is "
                     "in-sample; the accuracy line is the held-out figure")
    elif seen.sha256:
        lines.append(f"trained on  the training side of fold {known(seen.fold)}/{known(seen.folds)} (seed "
                     f"{known(seen.seed)}) of {split.get('data') or 'a CSV'} (sha256 {seen.sha256[:12]}...)")
    return lines


def model_card_lines(card: dict) -> list[str]:
    """The model card of an imported model, one labelled line per fact (missing facts say so)."""
    if "source" not in card:   # an edge-thyroid checkpoint's card: what it is for (the rest is above)
        return [f"intended use {card.get('intended_use', 'not stated')}"]
    source, outputs, inputs = card.get("source", {}), card.get("outputs", {}), card.get("input", {})
    origin = inputs.get("from", {})
    lines = [
        "model card",
        f"  weights      {source.get('file', '?')} ({source.get('kind', '?')}), sha256 {source.get('sha256', '?')}",
        f"  architecture {card.get('architecture', '?')}" + (f"; {card['graph']}" if card.get("graph") else ""),
        f"  outputs      {outputs.get('count', '?')} ({outputs.get('activation', '?')}), malignant: {outputs.get('malignant', '?')}",
        f"  input        {inputs.get('image_size', '?')} px {inputs.get('color_order', '?')}, mean {inputs.get('mean', '?')} "
        f"std {inputs.get('std', '?')}" + (f" (size: {origin.get('image_size')}; mean/std: {origin.get('mean_std')}; "
                                          f"channels: {origin.get('channel_order')})" if origin else ""),
        f"  CAM          {card.get('cam_note', card.get('cam', '?'))}",
        f"  intended use {card.get('intended_use', 'not stated')}",
    ]
    return lines
