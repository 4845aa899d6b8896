{
  "format": "edge-thyroid-signature",
  "version": 1,
  "algorithm": "ed25519",
  "signed_file": "manifest.json",
  "manifest_sha256": "68d16da415388b59b311fea2f5fc5547d072be06db5e71aa3d8eee6cebdcb2a3",
  "signer": "edge-thyroid demo key (public; not a release key)",
  "key_id": "b19aa87aa33b6f3f7c2cd91d6e10a008232ec5d284822b67c42e036b638fb843",
  "public_key": "KACuOzojlmggG9dnfUhQGb81QH3SIeHrUNLL39KOEBM=",
  "signature": "hbbU7ijmwMKR+etaePVUu2ktN5RLsicANJl/1AytSTcut4dN8pQVvf9UA4RCYnemgwwNnvWjgQpkpplD2g32BA=="
}
