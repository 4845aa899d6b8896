"""edge-thyroid info: show a bundle's manifest after verifying every file hash."""

from __future__ import annotations

import json

import click

from .trust_options import trust_option


@click.command()
@click.argument("bundle", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON.")
@trust_option
def info(bundle, as_json) -> None:
    """Verify BUNDLE (its signature against --trust keys, the sha256 of every file) and summarise it,
    with the manifest's sha256 and its signer."""
    from ..bundle import load_bundle

    loaded = load_bundle(bundle)
    manifest = loaded.manifest.to_dict()
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
    for key, entry in manifest["models"].items():
        click.echo(f"model       {key}: {entry['file']} ({entry['precision']}, {entry['target']})")
    t = manifest["threshold"]
    click.echo(f"threshold   {t['value']:.4f} ({t['method']}, chosen on {t['chosen_on']})")
    if manifest["metrics"]:
        click.echo(f"metrics     {json.dumps(manifest['metrics'])}")
