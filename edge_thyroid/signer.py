"""Signing a bundle: verify its file hashes, then write ``manifest.sig``, an Ed25519 signature over the
exact bytes of ``manifest.json`` (the format and the checks that read it are in :mod:`edge_thyroid.signing`).

Apart from :mod:`edge_thyroid.signing` so that module stays below :mod:`edge_thyroid.bundle`, which
checks every signature when it loads a bundle; signing itself needs the bundle loader.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from .bundle import MANIFEST, load_bundle
from .errors import BundleError
from .signing import (ALGORITHM, SIGNATURE, SIGNATURE_FORMAT, SIGNATURE_VERSION, SignatureStatus, key_id,
                      load_private_key, raw_public_bytes)


def sign_bundle(bundle: str | Path, private_key: str | Path, *, signer: str | None = None) -> SignatureStatus:
    """Verify the bundle's file hashes, then write ``manifest.sig`` over the manifest's bytes.

    The signer name defaults to the key file's name (``NAME.key.pem`` -> ``NAME``).
    """
    root = Path(bundle)
    if not root.is_dir():
        raise BundleError(f"{bundle} is not a bundle directory; sign the directory (zip it afterwards)")
    key = load_private_key(private_key)
    # Never vouch for a bundle whose files do not match its manifest; the old signature does not count.
    load_bundle(root, ignore_signature=True)
    manifest_bytes = (root / MANIFEST).read_bytes()
    raw = raw_public_bytes(key.public_key())
    name = signer or Path(private_key).name.removesuffix(".pem").removesuffix(".key")
    document = {
        "format": SIGNATURE_FORMAT, "version": SIGNATURE_VERSION, "algorithm": ALGORITHM,
        "signed_file": MANIFEST, "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
        "signer": name, "key_id": key_id(raw), "public_key": base64.b64encode(raw).decode("ascii"),
        "signature": base64.b64encode(key.sign(manifest_bytes)).decode("ascii"),
    }
    staging = root / f".{SIGNATURE}.tmp"
    staging.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    staging.replace(root / SIGNATURE)
    return SignatureStatus(document["manifest_sha256"], signed=True, verified=False, signer=name, key_id=key_id(raw))
