"""Re-sign the shipped demo bundle (edge_thyroid/data/demo_bundle) with the project's DEMO key.

Run after replacing the demo bundle (a newly trained model):

    python benchmarks/sign_demo_bundle.py

The private key (keys/demo/edge-thyroid-demo.key.pem) is committed on purpose and is therefore
public: it only proves the shipped demo model is the one this repository ships, nothing about who
trained it. Never list its public half among a workstation's trusted keys (docs/security.md).
The public half ships in the package (edge_thyroid/data/keys/) so 'edge-thyroid demo' can check the
install; this script refuses to sign if the two halves do not match.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRIVATE = REPO / "keys" / "demo" / "edge-thyroid-demo.key.pem"
BUNDLE = REPO / "edge_thyroid" / "data" / "demo_bundle"
SIGNER = "edge-thyroid demo key (public; not a release key)"


def main() -> int:
    from edge_thyroid.bundle import load_bundle
    from edge_thyroid.errors import EdgeThyroidError
    from edge_thyroid.signer import sign_bundle
    from edge_thyroid.signing import (TrustPolicy, demo_public_key, key_id, load_private_key, load_trusted_keys,
                                      raw_public_bytes)

    try:
        shipped = load_trusted_keys([demo_public_key()], origin="shipped demo key")
        private_id = key_id(raw_public_bytes(load_private_key(PRIVATE).public_key()))
        if [key.key_id for key in shipped] != [private_id]:
            raise EdgeThyroidError(f"{PRIVATE} is not the private half of {demo_public_key()}")
        status = sign_bundle(BUNDLE, PRIVATE, signer=SIGNER)
        check = load_bundle(BUNDLE, trust=TrustPolicy(shipped))
    except EdgeThyroidError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"signed {BUNDLE.relative_to(REPO)}: manifest sha256 {status.manifest_sha256}; "
          f"verified against the shipped key: {check.signature.describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
