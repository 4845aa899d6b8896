{
  "format": "edge-thyroid-signature",
  "version": 1,
  "algorithm": "ed25519",
  "signed_file": "manifest.json",
  "manifest_sha256": "9c0ea6141803f1390521ca2d43e9058c3df4f58ce929362cb6be3bae87b16031",
  "signer": "edge-thyroid demo key (public; not a release key)",
  "key_id": "b19aa87aa33b6f3f7c2cd91d6e10a008232ec5d284822b67c42e036b638fb843",
  "public_key": "KACuOzojlmggG9dnfUhQGb81QH3SIeHrUNLL39KOEBM=",
  "signature": "+dOPRcSL9tl2R+hcy8HqAyPIQL9KGhTNcKOcAEmDUswSRj4BhiMveAG5zbhaayaDZEFKQJKCay22CN/v6KluDg=="
}
