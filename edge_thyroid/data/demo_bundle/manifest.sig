{
  "format": "edge-thyroid-signature",
  "version": 1,
  "algorithm": "ed25519",
  "signed_file": "manifest.json",
  "manifest_sha256": "407559ac7835d5210742021c4440efc4f07a86ac50b30d79c2859bd03fd6db13",
  "signer": "edge-thyroid demo key (public; not a release key)",
  "key_id": "b19aa87aa33b6f3f7c2cd91d6e10a008232ec5d284822b67c42e036b638fb843",
  "public_key": "KACuOzojlmggG9dnfUhQGb81QH3SIeHrUNLL39KOEBM=",
  "signature": "3r7w9lLb6S66Hah+srP193Yqazvj76QSmBto+kwU5d756BKDcUFCl056y5GNQXrWtRq3sDkOw0QcaO4cKkQoBg=="
}
