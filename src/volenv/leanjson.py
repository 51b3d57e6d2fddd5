"""JSON for the activation fast path without `import json`.

`json` imports `re` (and with it enum, functools, collections) for its pure-Python fallback:
about 6 ms of a ~20 ms `volenv run` here. The C accelerator `_json` that `json` itself uses is
importable on its own; these two functions drive it exactly as `json.loads` and
`json.dumps(obj, sort_keys=True, separators=(",", ":"))` do, so the bytes and the objects are the
same (tests compare them). Where `_json` is missing or its signature differs, `json` is used.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # `typing` costs more at runtime than everything this module saves
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


_scan: Any = None
_make_encoder: Any = None
_escape: Any = None
try:
    import _json

    _scan = _json.make_scanner(_DecodeContext())  # type: ignore[arg-type]  # duck-typed context
    _make_encoder = _json.make_encoder
    _escape = _json.encode_basestring_ascii
    # markers, default, encoder, indent, key sep, item sep, sort_keys, skipkeys, allow_nan
    _make_encoder({}, _no_default, _escape, None, ":", ",", True, False, True)
except Exception:  # pragma: no cover - another interpreter: the plain module
    _scan = _make_encoder = None


def loads(data: bytes | str) -> Any:
    """json.loads; raises ValueError on bad input, as json.loads does."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    if _scan is None:  # pragma: no cover
        import json

        return json.loads(text)
    start = len(text) - len(text.lstrip(_WS))
    try:
        obj, end = _scan(text, start)
    except StopIteration as exc:
        raise ValueError(f"Expecting value: char {exc.value}") from None
    if text[end:].strip(_WS):
        raise ValueError(f"Extra data: char {end}")
    return obj


def dumps_canonical(obj: Any) -> str:
    """json.dumps(obj, sort_keys=True, separators=(",", ":")): the digest form of a record."""
    if _make_encoder is None or isinstance(obj, str):  # pragma: no cover
        import json

        return json.dumps(obj, sort_keys=True, separators=(",", ":"))
    # a fresh circular-reference memo per call, as json does
    encode = _make_encoder({}, _no_default, _escape, None, ":", ",", True, False, True)
    return "".join(encode(obj, 0))
