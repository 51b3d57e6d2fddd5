"""`volenv key generate`: an ed25519 signing key for push/pull (Nix's key format)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from volenv.remote.signing import generate as new_key
from volenv.remote.signing import write_secret


@dataclass(frozen=True)
class GeneratedKey:
    name: str
    public_key: str
    secret_key_file: str


def generate(name: str, out: str | None) -> GeneratedKey:
    """Write the secret key file (0600, default NAME.key); the public key is for
    VOLENV_TRUSTED_KEYS."""
    key = new_key(name)
    path = Path(out or f"{name}.key")
    write_secret(key, path)
    return GeneratedKey(key.name, key.public(), str(path))
