{
  "format": "edge-thyroid-signature",
  "version": 1,
  "algorithm": "ed25519",
  "signed_file": "manifest.json",
  "manifest_sha256": "d9aa0f024e1a5bd5b35d07ac74f4a799b3e01ec179730fb0d5bf9c9bcf6e745b",
  "signer": "edge-thyroid demo key (public; not a release key)",
  "key_id": "b19aa87aa33b6f3f7c2cd91d6e10a008232ec5d284822b67c42e036b638fb843",
  "public_key": "KACuOzojlmggG9dnfUhQGb81QH3SIeHrUNLL39KOEBM=",
  "signature": "4h9IKN0DuFFp8AEhMoplmIXnbUbXvm3rHioDTQuJb7NCljGb2kUhgHZmMMjiYZO/NNozRcX2saPN9OGWjf6MBg=="
}
