"""Signed bundles: an Ed25519 signature over the exact bytes of ``manifest.json``.

The manifest already holds the sha256 of every other file of a bundle, so one signature over its
bytes covers the model, the head, the threshold and the preprocessing. The signature lives next to
the manifest in ``manifest.sig`` (a small JSON document) and is checked on the same bytes that are
then parsed: there is no window between checking and reading the manifest.

Trust is configured per process: ``--trust KEY.pem`` on every command that loads a bundle, or the
environment variable ``EDGE_THYROID_TRUSTED_KEYS`` naming a file of one or more PEM public keys.
With a trusted key configured, only bundles signed by one of those keys load; without one, bundles
load and the CLI prints a notice that they were not verified against a key.

``cryptography`` is imported lazily: loading an unsigned bundle without a trust key never needs it.
"""

from __future__ import annotations

import base64
import contextvars
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import BundleError

SIGNATURE = "manifest.sig"
SIGNATURE_FORMAT = "edge-thyroid-signature"
SIGNATURE_VERSION = 1
ALGORITHM = "ed25519"
TRUST_ENV = "EDGE_THYROID_TRUSTED_KEYS"
MAX_SIGNATURE_BYTES = 64 << 10
MAX_KEY_FILE_BYTES = 1 << 20
DEMO_PUBLIC_KEY = "keys/edge-thyroid-demo.pub.pem"  # under edge_thyroid/data
SIGNER_COMMENT = "# signer: "
_PEM_BLOCK = re.compile(rb"-----BEGIN PUBLIC KEY-----.*?-----END PUBLIC KEY-----", re.DOTALL)


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise BundleError("cryptography is not installed (signed bundles and --trust need it): pip install cryptography") from None
    return ed25519


def _serialization() -> Any:
    _crypto()
    from cryptography.hazmat.primitives import serialization

    return serialization


def raw_public_bytes(public_key: Any) -> bytes:
    serialization = _serialization()
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(raw_public: bytes) -> str:
    """A key's identity: sha256 of its 32 raw bytes (hex); shown shortened to 16 characters."""
    return hashlib.sha256(raw_public).hexdigest()


@dataclass(frozen=True)
class TrustedKey:
    name: str
    key_id: str
    raw: bytes
    origin: str

    def verifies(self, signature: bytes, message: bytes) -> bool:
        ed25519 = _crypto()
        from cryptography.exceptions import InvalidSignature

        try:
            ed25519.Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def label(self) -> str:
        return f"{self.name!r} (key {self.key_id[:16]})"


@dataclass(frozen=True)
class TrustPolicy:
    """The keys a bundle must be signed by (none: any bundle loads, unverified) and where notices go."""

    keys: tuple[TrustedKey, ...] = ()
    notice: Callable[[str], None] | None = None
    _noticed: set = field(default_factory=set, compare=False, repr=False)

    @property
    def enforced(self) -> bool:
        return bool(self.keys)

    def tell(self, root: Path, message: str) -> None:
        """One notice per bundle per process (bench and verify load a bundle more than once)."""
        if self.notice is not None and str(root) not in self._noticed:
            self._noticed.add(str(root))
            self.notice(message)


@dataclass(frozen=True)
class SignatureStatus:
    """What is known about who vouches for a loaded bundle."""

    manifest_sha256: str
    signed: bool = False
    verified: bool = False
    signer: str | None = None
    key_id: str | None = None

    def describe(self) -> str:
        if self.verified:
            return f"{self.signer!r} (key {self.key_id[:16]}), verified against a trusted key"
        if self.signed:
            return (f"claims {self.signer!r} (key {self.key_id[:16]}); signature matches the manifest but the key "
                    f"is not checked against a trusted key")
        return "unsigned"

    def to_dict(self) -> dict[str, Any]:
        return {"manifest_sha256": self.manifest_sha256, "signed": self.signed, "verified": self.verified,
                "signer": self.signer, "key_id": self.key_id}


# ---- trust configuration -------------------------------------------------------------------------

_ACTIVE: contextvars.ContextVar[TrustPolicy | None] = contextvars.ContextVar("edge_thyroid_trust", default=None)


def active_policy() -> TrustPolicy:
    """The policy set by :func:`use_policy` (the CLI's --trust), else the environment's keys, silent."""
    policy = _ACTIVE.get()
    return policy if policy is not None else TrustPolicy(environment_keys())


@contextmanager
def use_policy(policy: TrustPolicy) -> Iterator[TrustPolicy]:
    token = _ACTIVE.set(policy)
    try:
        yield policy
    finally:
        _ACTIVE.reset(token)


def install_policy(policy: TrustPolicy) -> Callable[[], None]:
    """Set ``policy`` until the returned function is called (a click context's close hook)."""
    token = _ACTIVE.set(policy)
    return lambda: _ACTIVE.reset(token)


def environment_keys() -> tuple[TrustedKey, ...]:
    """Keys from the file named by EDGE_THYROID_TRUSTED_KEYS; a named file that cannot be used is an
    error, never an empty trust set (that would silently turn verification off)."""
    name = os.environ.get(TRUST_ENV, "").strip()
    return load_trusted_keys([name], origin=f"${TRUST_ENV}") if name else ()


def load_trusted_keys(paths: Iterable[str | Path], *, origin: str = "--trust") -> tuple[TrustedKey, ...]:
    """Read PEM public keys (several per file allowed). A ``# signer: NAME`` line before a key names it;
    otherwise the file name does."""
    serialization = _serialization()
    ed25519 = _crypto()
    keys: dict[str, TrustedKey] = {}
    for path in map(Path, paths):
        try:
            if path.stat().st_size > MAX_KEY_FILE_BYTES:
                raise BundleError(f"{origin} {path} is {path.stat().st_size} bytes; expected a PEM key file under 1 MiB")
            data = path.read_bytes()
        except OSError as exc:
            raise BundleError(f"{origin} {path} cannot be read ({exc.strerror or exc}); expected a PEM public key file") from None
        blocks = list(_PEM_BLOCK.finditer(data))
        if not blocks:
            raise BundleError(f"{origin} {path} holds no '-----BEGIN PUBLIC KEY-----' block; expected an Ed25519 public "
                              "key made by 'edge-thyroid keygen'")
        start = 0
        for number, block in enumerate(blocks, 1):
            name = _signer_comment(data[start:block.start()]) or (path.stem if len(blocks) == 1 else f"{path.stem}#{number}")
            start = block.end()
            try:
                public = serialization.load_pem_public_key(block.group(0))
            except ValueError as exc:
                raise BundleError(f"{origin} {path}: key {number} is not a valid PEM public key ({exc})") from None
            if not isinstance(public, ed25519.Ed25519PublicKey):
                raise BundleError(f"{origin} {path}: key {number} is a {type(public).__name__}; expected an Ed25519 key")
            raw = raw_public_bytes(public)
            keys.setdefault(key_id(raw), TrustedKey(name, key_id(raw), raw, str(path)))
    return tuple(keys.values())


def _signer_comment(text: bytes) -> str | None:
    names = [line[len(SIGNER_COMMENT):].strip() for line in text.decode("utf-8", "replace").splitlines()
             if line.startswith(SIGNER_COMMENT)]
    return names[-1] if names and names[-1] else None


def demo_public_key() -> Path:
    """The project's demo signing key (public half), shipped in the package to check the demo bundle."""
    return Path(str(resources.files("edge_thyroid").joinpath("data", DEMO_PUBLIC_KEY)))


# ---- keys and signing ----------------------------------------------------------------------------

def generate_keypair(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key.pem`` (private, mode 0600) and ``NAME.pub.pem`` into ``directory``; never overwrite."""
    ed25519 = _crypto()
    serialization = _serialization()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        raise BundleError(f"key name {name!r} is not a file name; expected letters, digits, '.', '_' or '-' (at most 64)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / f"{name}.key.pem", directory / f"{name}.pub.pem"
    for path in (private_path, public_path):
        if path.exists():
            raise BundleError(f"{path} already exists; keygen never overwrites a key (move it away or pick another --name)")
    private = ed25519.Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(private_pem)
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    public_path.write_bytes(f"{SIGNER_COMMENT}{name}\n".encode() + public_pem)
    return private_path, public_path


def load_private_key(path: str | Path) -> Any:
    ed25519 = _crypto()
    serialization = _serialization()
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BundleError(f"private key {path} cannot be read ({exc.strerror or exc})") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise BundleError(f"{path} is not an unencrypted PEM private key ({str(exc)[:120]}); expected a "
                          "NAME.key.pem made by 'edge-thyroid keygen'") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise BundleError(f"{path} holds a {type(key).__name__}; expected an Ed25519 private key")
    return key


# ---- verification --------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Signature:
    signer: str
    key_id: str
    raw: bytes
    signature: bytes
    manifest_sha256: str


def _read_signature(path: Path) -> _Signature:
    where = f"{path}"
    try:
        if path.stat().st_size > MAX_SIGNATURE_BYTES:
            raise BundleError(f"{where} is {path.stat().st_size} bytes; a signature file is at most {MAX_SIGNATURE_BYTES}")
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BundleError(f"{where} cannot be read ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BundleError(f"{where} is damaged: not a JSON signature document ({str(exc)[:100]})") from None
    if not isinstance(document, dict) or document.get("format") != SIGNATURE_FORMAT:
        raise BundleError(f"{where} is not an edge-thyroid signature; expected format {SIGNATURE_FORMAT!r}")
    if document.get("version") != SIGNATURE_VERSION or document.get("algorithm") != ALGORITHM:
        raise BundleError(f"{where} is version {document.get('version')!r} / {document.get('algorithm')!r}; "
                          f"this edge-thyroid reads version {SIGNATURE_VERSION} / {ALGORITHM!r}")
    try:
        raw = base64.b64decode(str(document["public_key"]), validate=True)
        signature = base64.b64decode(str(document["signature"]), validate=True)
        signer, claimed_sha = str(document["signer"])[:200], str(document["manifest_sha256"])
    except KeyError as exc:
        raise BundleError(f"{where} is damaged: missing field {exc.args[0]!r}") from None
    except ValueError as exc:
        raise BundleError(f"{where} is damaged: {exc}") from None
    if len(raw) != 32 or len(signature) != 64:
        raise BundleError(f"{where} is damaged: an Ed25519 key is 32 bytes and a signature 64, got {len(raw)} and {len(signature)}")
    return _Signature(signer, key_id(raw), raw, signature, claimed_sha)


def check_signature(root: Path, manifest_bytes: bytes, policy: TrustPolicy | None = None) -> SignatureStatus:
    """Decide whether ``manifest_bytes`` (read once by the loader) may be used.

    Under a trust policy: unsigned, signed by an untrusted key, or modified after signing is a
    BundleError. Without one: a present signature must still match (a broken one means tampering
    or damage), and the policy's notice says the bundle was not verified against a key.
    """
    policy = policy or active_policy()
    digest = hashlib.sha256(manifest_bytes).hexdigest()
    path = root / SIGNATURE
    present = path.exists() or path.is_symlink()
    if not present:
        if policy.enforced:
            raise BundleError(f"bundle {root} is not signed (no {SIGNATURE}); a trusted key is configured, so only "
                              f"bundles signed by {_names(policy)} load (sign with 'edge-thyroid sign')")
        policy.tell(root, f"bundle {root} is unsigned and not verified against a trusted key "
                          f"(pass --trust KEY.pem or set {TRUST_ENV})")
        return SignatureStatus(digest)
    signature = _read_signature(path)
    if not policy.enforced:
        if not TrustedKey(signature.signer, signature.key_id, signature.raw, str(path)).verifies(signature.signature, manifest_bytes):
            raise BundleError(_mismatch(root, signature, digest))
        status = SignatureStatus(digest, signed=True, signer=signature.signer, key_id=signature.key_id)
        policy.tell(root, f"bundle {root} is signed by {signature.signer!r} (key {signature.key_id[:16]}) but not "
                          f"verified against a trusted key (pass --trust KEY.pem or set {TRUST_ENV})")
        return status
    for trusted in policy.keys:
        if trusted.verifies(signature.signature, manifest_bytes):
            return SignatureStatus(digest, signed=True, verified=True, signer=trusted.name, key_id=trusted.key_id)
    if any(trusted.key_id == signature.key_id for trusted in policy.keys):
        raise BundleError(_mismatch(root, signature, digest))
    raise BundleError(f"bundle {root} is signed by {signature.signer!r} (key {signature.key_id[:16]}), which is not a "
                      f"trusted key; trusted: {_names(policy)}")


def _mismatch(root: Path, signature: _Signature, digest: str) -> str:
    if signature.manifest_sha256 != digest:
        return (f"bundle {root}: manifest.json was modified after it was signed (sha256 {digest[:16]}, signed "
                f"{signature.manifest_sha256[:16]}); re-export or re-sign it")
    return (f"bundle {root}: {SIGNATURE} does not verify manifest.json with key {signature.key_id[:16]}; the "
            "manifest or the signature was modified")


def _names(policy: TrustPolicy) -> str:
    return ", ".join(key.label() for key in policy.keys)
