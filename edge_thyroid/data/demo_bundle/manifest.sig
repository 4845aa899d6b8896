{
  "format": "edge-thyroid-signature",
  "version": 1,
  "algorithm": "ed25519",
  "signed_file": "manifest.json",
  "manifest_sha256": "a8be914a387f4f8ee97b44aea8540314337a95d4a28fc0e75273d06a9effeddb",
  "signer": "edge-thyroid demo key (public; not a release key)",
  "key_id": "b19aa87aa33b6f3f7c2cd91d6e10a008232ec5d284822b67c42e036b638fb843",
  "public_key": "KACuOzojlmggG9dnfUhQGb81QH3SIeHrUNLL39KOEBM=",
  "signature": "OamjMQY6y74qmVEx+OQQlG7laYh5iQHxqS+B43/lmI3WpL+OsN4jFH6hw/ZJEoBoXlvF+hO1TBYz3T/WYuOhCA=="
}
