{
  "format": "edge-thyroid-signature",
  "version": 1,
  "algorithm": "ed25519",
  "signed_file": "manifest.json",
  "manifest_sha256": "f9ea4b0c33fd70577b01da340f11bffc5200215c6fae3b1f3a729ef364aa4e3e",
  "signer": "edge-thyroid demo key (public; not a release key)",
  "key_id": "b19aa87aa33b6f3f7c2cd91d6e10a008232ec5d284822b67c42e036b638fb843",
  "public_key": "KACuOzojlmggG9dnfUhQGb81QH3SIeHrUNLL39KOEBM=",
  "signature": "oN/9dfXjKbAkzHOZ0gP8iMWjavzbNBb/goH6uMvVUF/7G5aKiYwJUEWoNRO4f8QVefdCDUkp2fZn4WY4msNqBQ=="
}
