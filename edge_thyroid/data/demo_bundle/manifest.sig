{
  "format": "edge-thyroid-signature",
  "version": 1,
  "algorithm": "ed25519",
  "signed_file": "manifest.json",
  "manifest_sha256": "8554051ac4448e5000da3cc81666f599c0895b5182e901e0b3dc5a606f4640a9",
  "signer": "edge-thyroid demo key (public; not a release key)",
  "key_id": "b19aa87aa33b6f3f7c2cd91d6e10a008232ec5d284822b67c42e036b638fb843",
  "public_key": "KACuOzojlmggG9dnfUhQGb81QH3SIeHrUNLL39KOEBM=",
  "signature": "QyoNK0BYv+VCMQD1iihIRbJHTGVYKls0zJyBieumb1CIZp/0CjcLYv7MwkaWLjzzjLEM2cXq7leDgaV40rOEAA=="
}
