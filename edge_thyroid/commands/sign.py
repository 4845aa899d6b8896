"""edge-thyroid keygen / sign: make an Ed25519 key pair; sign a bundle's manifest with it."""

from __future__ import annotations

import click


@click.command()
@click.option("-o", "--output", "directory", required=True, type=click.Path(file_okay=False),
              help="Directory to write NAME.key.pem (private, mode 0600) and NAME.pub.pem into.")
@click.option("--name", default="edge-thyroid-signer", show_default=True,
              help="Signer name, recorded in the public key file and shown by 'info' when the key is trusted.")
def keygen(directory: str, name: str) -> None:
    """Make an Ed25519 key pair for signing bundles.

    \b
    Keep NAME.key.pem on the build machine only; give NAME.pub.pem to every workstation:
      edge-thyroid keygen -o keys/ --name hospital-ai-build
      edge-thyroid sign bundle/ --key keys/hospital-ai-build.key.pem
      edge-thyroid stream bundle/ --trust keys/hospital-ai-build.pub.pem ...
    """
    from ..signing import generate_keypair

    private_path, public_path = generate_keypair(directory, name)
    click.echo(f"private key {private_path}  (keep secret: it can sign bundles every workstation trusts)")
    click.echo(f"public key  {public_path}  (pass to --trust, or list it in the file $EDGE_THYROID_TRUSTED_KEYS names)")


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--key", "private_key", required=True, type=click.Path(dir_okay=False),
              help="Ed25519 private key (PEM, from 'edge-thyroid keygen').")
@click.option("--signer", default=None, help="Signer name written into the signature (default: the key file's name).")
def sign(bundle: str, private_key: str, signer: str | None) -> None:
    """Sign BUNDLE: verify every file's sha256, then write manifest.sig, an Ed25519 signature over
    manifest.json (which holds those hashes, the threshold and the preprocessing)."""
    from ..signer import sign_bundle
    from ..signing import SIGNATURE

    status = sign_bundle(bundle, private_key, signer=signer)
    click.echo(f"signed {bundle}/{SIGNATURE}: manifest sha256 {status.manifest_sha256}, signer {status.signer!r} "
               f"(key {status.key_id[:16]})")
