"""Signed snapshots, as Nix signs store paths (`trusted-public-keys`): `push` signs a snapshot's
pack manifest (seal digest, record digest, pack list, models) with an ed25519 key; `pull` and
`list --remote` believe it only with a valid signature from a key in VOLENV_TRUSTED_KEYS.

Keys use Nix's text forms: a secret key file holds `name:base64(seed || public key)` (64
bytes, as `nix key generate-secret` writes), a public key is `name:base64(public key)`, a
signature is `name:base64(signature)`. The crypto is the `cryptography` library's.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from volenv.base.errors import UsageError, VerifyError, missing_extra

TRUSTED_KEYS_ENV = "VOLENV_TRUSTED_KEYS"
SIGNING_KEY_ENV = "VOLENV_SIGNING_KEY"
_DOMAIN = b"volenv-snapshot-signature-v1\n"


def _need_crypto() -> None:
    """cryptography is the 'sign' extra (and the 's3' one): signing, key generation and checking
    a trusted key's signature name it when it is missing; nothing is believed without it."""
    try:
        import cryptography  # noqa: F401
    except ImportError:
        raise missing_extra("cryptography", "sign") from None


def _split(text: str, what: str) -> tuple[str, bytes]:
    from volenv.manifest.schema import is_env_name

    name, sep, b64 = text.strip().partition(":")
    if not sep or not is_env_name(name):
        raise UsageError(f"{what} {text.strip()[:40]!r} is not of the form name:base64")
    try:
        return name, base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise UsageError(f"{what} '{name}:…' is not valid base64") from None


@dataclass(frozen=True)
class SigningKey:
    name: str
    seed: bytes  # the 32-byte ed25519 private key

    def public(self) -> str:
        return f"{self.name}:{base64.b64encode(_public_bytes(self.seed)).decode()}"

    def secret_text(self) -> str:
        return f"{self.name}:{base64.b64encode(self.seed + _public_bytes(self.seed)).decode()}"

    def sign(self, doc: dict[str, Any]) -> str:
        _need_crypto()
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        sig = Ed25519PrivateKey.from_private_bytes(self.seed).sign(signed_bytes(doc))
        return f"{self.name}:{base64.b64encode(sig).decode()}"


def _public_bytes(seed: bytes) -> bytes:
    _need_crypto()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    public = Ed25519PrivateKey.from_private_bytes(seed).public_key()
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def generate(name: str) -> SigningKey:
    _need_crypto()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    from volenv.manifest.schema import is_env_name

    if not is_env_name(name):
        raise UsageError(f"key name {name!r} is not a plain name (letters, digits, '.', '_', '-')")
    seed = Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return SigningKey(name, seed)


def write_secret(key: SigningKey, path: Path) -> None:
    """Created once, private to the user (0600); an existing file is never overwritten."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise UsageError(f"{path} exists; not overwriting a key") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(key.secret_text() + "\n")


def load_signing_key(path: str) -> SigningKey:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"cannot read signing key {path}: {exc.strerror}") from None
    name, raw = _split(text, f"signing key in {path}")
    if len(raw) not in (32, 64) or (len(raw) == 64 and _public_bytes(raw[:32]) != raw[32:]):
        raise UsageError(f"signing key in {path} is not an ed25519 secret key")
    return SigningKey(name, raw[:32])


def signing_key_from(option: str | None) -> SigningKey | None:
    """--signing-key FILE, else VOLENV_SIGNING_KEY (a path), else none (push unsigned)."""
    path = option or os.environ.get(SIGNING_KEY_ENV)
    return load_signing_key(path) if path else None


def signed_bytes(doc: dict[str, Any]) -> bytes:
    """What a signature covers: the whole pack manifest (snapshot, env, manifest, record and
    seal digests, fingerprint, pack list, models) except the signatures themselves."""
    body = {k: v for k, v in doc.items() if k != "signatures"}
    return _DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


@dataclass(frozen=True)
class Trust:
    """Which keys this volume believes, and whether the user accepted unsigned snapshots."""

    keys: dict[str, bytes]
    allow_unsigned: bool = False

    @staticmethod
    def from_env(allow_unsigned: bool) -> Trust:
        keys: dict[str, bytes] = {}
        for entry in os.environ.get(TRUSTED_KEYS_ENV, "").split():
            name, raw = _split(entry, f"{TRUSTED_KEYS_ENV} entry")
            if len(raw) != 32:
                raise UsageError(f"{TRUSTED_KEYS_ENV} entry '{name}:…' is not an ed25519 public key")
            keys[name] = raw
        return Trust(keys, allow_unsigned)

    def signer(self, doc: dict[str, Any]) -> str | None:
        """The trusted key that signed doc, or None; raises VerifyError when the document is
        not believed (and unsigned snapshots were not allowed)."""
        sigs = doc.get("signatures", [])
        what = f"snapshot {doc.get('snapshot')!r}"
        if not isinstance(sigs, list) or not all(isinstance(s, str) for s in sigs):
            raise VerifyError(f"{what}: 'signatures' is not a list of name:base64 strings")
        names = []
        payload = signed_bytes(doc)
        bad: list[str] = []
        for text in sigs:
            name, _, b64 = str(text).partition(":")
            names.append(name)
            key = self.keys.get(name)
            if key is None:
                continue
            _need_crypto()  # a trusted key's signature is checked or nothing is believed
            from cryptography.exceptions import InvalidSignature
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

            try:
                Ed25519PublicKey.from_public_bytes(key).verify(base64.b64decode(b64, validate=True), payload)
                return name
            except (InvalidSignature, binascii.Error, ValueError):
                bad.append(name)
        if bad:
            why = f"the signature by trusted key {bad[0]!r} does not verify: the document was altered"
        elif names:
            why = f"signed by {', '.join(repr(n) for n in names)}, none of them in {TRUSTED_KEYS_ENV}"
        else:
            why = "it is unsigned"
        if self.allow_unsigned and not bad:  # a failed trusted signature is tampering: never accepted
            return None
        raise VerifyError(
            f"refusing {what} from the bucket: {why}",
            hint=f"add the pusher's public key to {TRUSTED_KEYS_ENV} (`volenv key generate` printed it),"
            " or pass --trust-unsigned to accept what anyone who can write the bucket put there",
        )
