"""Hugging Face names that the manifest parser and the volume's records share: the ref an hf
model stands for. Lean (os-free, no `re`): the `run` fast path checks seals with it."""

from __future__ import annotations

DEFAULT_REF = "main"


def valid_ref(ref: object) -> bool:
    """A ref name that is safe as a path below a repository's refs/: '/'-separated segments of
    ASCII letters, digits, '.', '_', '-', none empty or starting with '.' or '-', and not a
    40-hex commit id (the Hub reads those as commits, never through a ref file)."""
    if not isinstance(ref, str) or not ref or len(ref) > 200:
        return False
    if len(ref) == 40 and all(c in "0123456789abcdef" for c in ref):
        return False
    for seg in ref.split("/"):
        if not seg or seg[0] in ".-" or not all(c.isascii() and (c.isalnum() or c in "._-") for c in seg):
            return False
    return True
