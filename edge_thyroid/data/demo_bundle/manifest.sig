{
  "format": "edge-thyroid-signature",
  "version": 1,
  "algorithm": "ed25519",
  "signed_file": "manifest.json",
  "manifest_sha256": "b6556af9a667e380f86bbc40382803892d1e67c2f0d7317771ed50515496dee5",
  "signer": "edge-thyroid demo key (public; not a release key)",
  "key_id": "b19aa87aa33b6f3f7c2cd91d6e10a008232ec5d284822b67c42e036b638fb843",
  "public_key": "KACuOzojlmggG9dnfUhQGb81QH3SIeHrUNLL39KOEBM=",
  "signature": "PhO7uN0MoGOs0nEwLE4ZZsafWCL4LvIEif2iSFBslD4Y64PwFaBP/CzdejH4d/MUc+FKUh+mqn2P3Wxu9bEiDQ=="
}
