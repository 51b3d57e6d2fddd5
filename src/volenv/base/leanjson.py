"""JSON for the activation fast path without `import json`.

`json` imports `re` (and with it enum, functools, collections) for its pure-Python fallback:
about 6 ms of a ~20 ms `volenv run` here. The C accelerator `_json` that `json` itself uses is
importable on its own; these two functions drive it exactly as `json.loads` and
`json.dumps(obj, sort_keys=True, separators=(",", ":"))` do, so the bytes and the objects are the
same (tests compare them). Where `_json` is missing or its signature differs, `json` is used.
It also holds the one way records are read off the volume (`read_record_bytes`).
"""

from __future__ import annotations

import errno
import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # `typing` costs more at runtime than everything this module saves
    from os import PathLike
    from typing import Any

_WS = " \t\n\r"  # JSON's whitespace, exactly what json.decoder skips


class _DecodeContext:
    """The attributes `_json.make_scanner` reads from a JSONDecoder, with json's defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> float:
        return {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}[name]


def _no_default(obj: object) -> Any:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _canonical_encoder() -> Any:
    """A fresh C encoder (so a fresh circular-reference memo, as json makes per call)."""
    import _json

    escape = _json.encode_basestring_ascii
    # markers, default, encoder, indent, key sep, item sep, sort_keys, skipkeys, allow_nan
    return _json.make_encoder({}, _no_default, escape, None, ":", ",", True, False, True)


_scan: Any = None
_have_encoder = False
try:
    import _json

    _scan = _json.make_scanner(_DecodeContext())  # type: ignore[arg-type]  # duck-typed context
    _canonical_encoder()  # the signature this interpreter's _json takes
    _have_encoder = True
except Exception:  # pragma: no cover - another interpreter: the plain module
    pass


def loads(data: bytes | str) -> Any:
    """json.loads; raises ValueError (never anything else) on any malformed input."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    if _scan is None:  # pragma: no cover
        import json

        return json.loads(text)
    start = len(text) - len(text.lstrip(_WS))
    try:
        obj, end = _scan(text, start)
    except StopIteration as exc:
        raise ValueError(f"Expecting value: char {exc.value}") from None
    except ValueError:
        raise
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except Exception:
        return _loads_slow(text)
    if text[end:].strip(_WS):
        raise ValueError(f"Extra data: char {end}")
    return obj


def _loads_slow(text: str) -> Any:
    """Bad input, parsed again by `json` for its exact JSONDecodeError. CPython 3.11's scanner
    reports errors through `json.decoder` only when that module is already imported; on this
    fast path it is not, so a truncated record raised SystemError ("returned NULL without
    setting an exception") instead of ValueError. Only damaged records pay this import."""
    import json

    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def dumps_canonical(obj: Any) -> str:
    """json.dumps(obj, sort_keys=True, separators=(",", ":")): the digest form of a record."""
    if not _have_encoder or isinstance(obj, str):  # pragma: no cover
        import json

        return json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return "".join(_canonical_encoder()(obj, 0))


def read_record_bytes(path: str | PathLike[str], limit: int = 256 << 20) -> bytes:
    """A record's bytes: a regular file, never through a link at `path` (ELOOP) and never
    blocking (a FIFO or device there is EINVAL: refused, not waited on), at most `limit` bytes
    (EFBIG beyond). FileNotFoundError is retried once with a fresh lookup: on FUSE and network
    views an open can race a replace-rename of that very file (the name's node is gone for a
    moment); the retry sees the new file, or that there really is none."""
    try:
        return _read_regular(path, limit)
    except FileNotFoundError:
        return _read_regular(path, limit)


def _read_regular(path: str | PathLike[str], limit: int, *, follow: bool = False) -> bytes:
    return read_regular_file(path, limit, follow=follow)


def read_regular_file(path: str | PathLike[str], limit: int, *, follow: bool = False) -> bytes:
    """A regular file's bytes, opened without blocking (a FIFO or device in its place is EINVAL,
    a directory IsADirectoryError, never a hang), at most `limit` (EFBIG beyond); a link at
    `path` is ELOOP unless `follow` (a user's own input files, beside the manifest)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if (st.st_mode & 0o170000) == 0o040000:
            raise IsADirectoryError(errno.EISDIR, "is a directory", os.fspath(path))
        if (st.st_mode & 0o170000) != 0o100000:
            raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
        if st.st_size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes", os.fspath(path))
        chunks = []
        while block := os.read(fd, 1 << 20):
            chunks.append(block)
        return b"".join(chunks)
    finally:
        os.close(fd)


#: what read_record_bytes raises for something that is not a plain file where a record belongs
NOT_A_RECORD = (errno.ELOOP, errno.EINVAL, errno.EFBIG)
