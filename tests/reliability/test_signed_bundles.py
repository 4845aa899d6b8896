"""Signed bundles: under a trusted key, no tampered, unsigned or foreign-signed bundle loads; every
manifest field is covered by the signature; the shipped demo bundle verifies against the shipped key."""

from __future__ import annotations

import base64
import copy
import json
import shutil
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_thyroid.bundle import MANIFEST, load_bundle
from edge_thyroid.errors import BundleError
from edge_thyroid.signer import sign_bundle
from edge_thyroid.signing import (SIGNATURE, TRUST_ENV, TrustPolicy, demo_public_key, generate_keypair, key_id,
                                  load_private_key, load_trusted_keys, raw_public_bytes)

from .helpers import REPO, assert_refused, copy_bundle, fake_bundle, replace_file, run_cli

DEMO_BUNDLE = REPO / "edge_thyroid" / "data" / "demo_bundle"
DEMO_PRIVATE = REPO / "keys" / "demo" / "edge-thyroid-demo.key.pem"


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    directory = tmp_path_factory.mktemp("keys")
    return {name: generate_keypair(directory, name) for name in ("build", "other")}


@pytest.fixture(scope="module")
def signed(tmp_path_factory, keys) -> Path:
    root = fake_bundle(tmp_path_factory.mktemp("signed") / "bundle")
    sign_bundle(root, keys["build"][0])
    return root


def trusting(*public: Path) -> TrustPolicy:
    return TrustPolicy(load_trusted_keys(public))


def refused(root: Path, policy: TrustPolicy, *fragments: str) -> str:
    with pytest.raises(BundleError) as caught:
        load_bundle(root, trust=policy)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_signed_bundle_loads_under_its_key_and_names_the_signer(signed, keys):
    bundle = load_bundle(signed, trust=trusting(keys["build"][1]))
    assert bundle.signature.verified and bundle.signature.signer == "build"
    assert bundle.signature.key_id == key_id(raw_public_bytes(load_private_key(keys["build"][0]).public_key()))
    import hashlib
    assert bundle.signature.manifest_sha256 == hashlib.sha256((signed / MANIFEST).read_bytes()).hexdigest()


def test_unsigned_and_foreign_signed_bundles_are_refused(tmp_path, keys):
    root = fake_bundle(tmp_path / "bundle")
    refused(root, trusting(keys["build"][1]), "is not signed", "'build'")
    sign_bundle(root, keys["other"][0])
    refused(root, trusting(keys["build"][1]), "signed by 'other'", "not a trusted key")
    # Either of two trusted keys will do.
    assert load_bundle(root, trust=trusting(keys["build"][1], keys["other"][1])).signature.signer == "other"


def leaf_paths(value, prefix=()):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaf_paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from leaf_paths(item, (*prefix, index))
    else:
        yield prefix


def changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1 if not isinstance(value, float) else value * 0.5 + 0.25
    if isinstance(value, str):
        return value + "x"
    return 0


def test_every_manifest_field_is_covered_by_the_signature(signed, keys, tmp_path):
    """Every leaf changed and every key removed, one at a time: each is refused under the key."""
    document = json.loads((signed / MANIFEST).read_text())
    policy = trusting(keys["build"][1])
    edits = []
    for path in leaf_paths(document):
        edits.append(("change", path))
        edits.append(("delete", path))
    root = copy_bundle(signed, tmp_path / "bundle")
    tried = 0
    for action, path in edits:
        edited = copy.deepcopy(document)
        parent = edited
        for key in path[:-1]:
            parent = parent[key]
        if action == "change":
            parent[path[-1]] = changed(parent[path[-1]])
        else:
            del parent[path[-1]]
        replace_file(root / MANIFEST, json.dumps(edited, indent=2).encode())
        refused(root, policy)
        tried += 1
    assert tried >= 2 * 40, f"only {tried} edits: the manifest lost fields?"
    # Reformatting alone (same JSON, other whitespace) is also a different manifest.
    replace_file(root / MANIFEST, json.dumps(document).encode())
    refused(root, policy, "modified after it was signed")


def test_a_signature_that_does_not_match_is_refused_even_without_a_trust_key(signed, tmp_path):
    root = copy_bundle(signed, tmp_path / "bundle")
    replace_file(root / MANIFEST, (signed / MANIFEST).read_bytes().replace(b'"value": 0.5', b'"value": 0.99'))
    refused(root, TrustPolicy(), "modified after it was signed")


def test_signature_claiming_a_trusted_key_with_a_foreign_signature_is_refused(signed, keys, tmp_path):
    root = copy_bundle(signed, tmp_path / "bundle")
    sign_bundle(root, keys["other"][0])
    document = json.loads((root / SIGNATURE).read_text())
    trusted = json.loads((signed / SIGNATURE).read_text())
    document.update(key_id=trusted["key_id"], public_key=trusted["public_key"], signer="build")
    replace_file(root / SIGNATURE, json.dumps(document).encode())
    refused(root, trusting(keys["build"][1]), "does not verify")


def flipped_copy(bundle: Path, name: str, tmp_path_factory, data: st.DataObject, *, flips: int) -> tuple[Path, bytes]:
    """A copy of ``bundle`` with ``flips`` random bits of file ``name`` flipped; returns it and the new bytes."""
    root = tmp_path_factory.mktemp("flipped") / "bundle"
    shutil.copytree(bundle, root)
    text = bytearray((bundle / name).read_bytes())
    for _ in range(flips):
        position = data.draw(st.integers(0, len(text) - 1))
        text[position] ^= 1 << data.draw(st.integers(0, 7))
    (root / name).write_bytes(bytes(text))
    return root, bytes(text)


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_signature_files_are_refused_with_a_bundle_error(signed, keys, tmp_path_factory, data):
    root, text = flipped_copy(signed, SIGNATURE, tmp_path_factory, data, flips=data.draw(st.integers(1, 4)))
    try:
        bundle = load_bundle(root, trust=trusting(keys["build"][1]))
    except BundleError as exc:
        assert "\n" not in str(exc)
        return
    # Only the signature bytes are authenticated; a flip elsewhere (the claimed signer name, the key id
    # hint, whitespace) may load, but then the signer shown is the trusted key's, never the file's claim.
    original = json.loads((signed / SIGNATURE).read_text())
    # (Base64 has spare bits in its last character: a flip there decodes to the same 64 bytes.)
    assert base64.b64decode(json.loads(bytes(text))["signature"]) == base64.b64decode(original["signature"])
    assert bundle.signature.verified and bundle.signature.signer == "build"


@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_manifest_bytes_never_load_under_the_key(signed, keys, tmp_path_factory, data):
    root, _ = flipped_copy(signed, MANIFEST, tmp_path_factory, data, flips=1)
    refused(root, trusting(keys["build"][1]))


def test_zipped_signed_bundle_verifies(signed, keys, tmp_path):
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in signed.iterdir():
            handle.write(path, f"bundle/{path.name}")
    assert load_bundle(archive, trust=trusting(keys["build"][1])).signature.verified


def test_trust_file_from_the_environment_and_a_missing_one_fails_closed(signed, keys, tmp_path, monkeypatch):
    store = tmp_path / "trusted.pem"
    store.write_bytes(keys["other"][1].read_bytes() + keys["build"][1].read_bytes())
    monkeypatch.setenv(TRUST_ENV, str(store))
    assert load_bundle(signed).signature.signer == "build"
    unsigned = fake_bundle(tmp_path / "unsigned")
    with pytest.raises(BundleError, match="is not signed"):
        load_bundle(unsigned)
    monkeypatch.setenv(TRUST_ENV, str(tmp_path / "absent.pem"))
    with pytest.raises(BundleError, match="cannot be read"):
        load_bundle(unsigned)


def test_a_key_file_that_is_not_an_ed25519_public_key_is_refused(tmp_path, keys):
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a key\n")
    with pytest.raises(BundleError, match="no '-----BEGIN PUBLIC KEY-----' block"):
        load_trusted_keys([bogus])
    with pytest.raises(BundleError, match="Ed25519 private key|not an unencrypted PEM private key"):
        load_private_key(keys["build"][1])


def test_signing_refuses_a_bundle_whose_files_do_not_match(tmp_path, keys):
    root = fake_bundle(tmp_path / "bundle")
    replace_file(root / "head.npz", b"changed")
    with pytest.raises(BundleError, match="head.npz"):
        sign_bundle(root, keys["build"][0])
    assert not (root / SIGNATURE).exists()


def test_shipped_demo_bundle_is_signed_with_the_shipped_demo_key():
    """Fails when the demo bundle is replaced without running benchmarks/sign_demo_bundle.py."""
    shipped = load_trusted_keys([demo_public_key()])
    assert load_bundle(DEMO_BUNDLE, trust=TrustPolicy(shipped)).signature.verified
    private_id = key_id(raw_public_bytes(load_private_key(DEMO_PRIVATE).public_key()))
    assert [key.key_id for key in shipped] == [private_id]


def test_cli_keygen_sign_info_and_refusals(tmp_path):
    """The issue's case: threshold 0.49 -> 0.99 in a signed bundle is refused under --trust, one line."""
    result = run_cli("keygen", "-o", tmp_path / "keys", "--name", "site-build")
    assert result.returncode == 0, result.stderr
    private, public = tmp_path / "keys" / "site-build.key.pem", tmp_path / "keys" / "site-build.pub.pem"
    assert private.stat().st_mode & 0o077 == 0
    root = fake_bundle(tmp_path / "bundle")
    result = run_cli("sign", root, "--key", private)
    assert result.returncode == 0 and "manifest sha256" in result.stdout, result.stderr

    info = run_cli("info", root, "--trust", public)
    assert info.returncode == 0, info.stderr
    import hashlib
    digest = hashlib.sha256((root / MANIFEST).read_bytes()).hexdigest()
    assert f"sha256 {digest}" in info.stdout and "'site-build'" in info.stdout and "verified" in info.stdout
    assert "notice" not in info.stderr

    unverified = run_cli("info", root)
    assert unverified.returncode == 0 and "notice: " in unverified.stderr and "not verified" in unverified.stderr

    data = json.loads((root / MANIFEST).read_text())
    data["threshold"]["value"] = 0.99
    replace_file(root / MANIFEST, json.dumps(data, indent=2).encode())
    assert_refused(run_cli("info", root, "--trust", public), "modified after it was signed")
    assert_refused(run_cli("classify", root, REPO / "README.md", "--trust", public), "modified after it was signed")
    assert_refused(run_cli("keygen", "-o", tmp_path / "keys", "--name", "site-build"), "already exists")


def test_cli_refuses_an_edited_copy_of_the_demo_bundle(tmp_path, monkeypatch):
    """The key from --trust or from the file $EDGE_THYROID_TRUSTED_KEYS names: either refuses the edit."""
    root = copy_bundle(DEMO_BUNDLE, tmp_path / "demo_bundle")
    data = json.loads((root / MANIFEST).read_text())
    data["threshold"]["value"] = 0.99
    replace_file(root / MANIFEST, json.dumps(data, indent=2).encode())
    assert_refused(run_cli("stream", root, "--max-frames", "1", "--trust", demo_public_key()), "modified after it was signed")
    store = tmp_path / "store.pem"
    store.write_bytes(demo_public_key().read_bytes())
    monkeypatch.setenv(TRUST_ENV, str(store))
    assert_refused(run_cli("info", root), "modified after it was signed")
