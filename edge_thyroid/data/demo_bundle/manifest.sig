{
  "format": "edge-thyroid-signature",
  "version": 1,
  "algorithm": "ed25519",
  "signed_file": "manifest.json",
  "manifest_sha256": "057d8b674179ad69a5b28f834352de39b88b086e186fb7dd1c801ca5a7f01d88",
  "signer": "edge-thyroid demo key (public; not a release key)",
  "key_id": "b19aa87aa33b6f3f7c2cd91d6e10a008232ec5d284822b67c42e036b638fb843",
  "public_key": "KACuOzojlmggG9dnfUhQGb81QH3SIeHrUNLL39KOEBM=",
  "signature": "IqOtr/X40BSmj/UPaA5IhOCWaJS1TatiGMBbRMb37fvF8pJJ6TzjgOvkkwaHt/1g2eDmY6+yc4JiauNTN6+uAw=="
}
