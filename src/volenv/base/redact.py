"""One redaction for every secret volenv may see: URL userinfo, signed query parameters, and
the values of secret-named environment variables.

Applied where anything leaves memory: records and seals (through the manifest's normalized
form), build logs, events, `--json` documents, errors, warnings and the diagnosis. The full
URL with its credentials is only ever used in memory, for the request itself.

Plain string operations on purpose: `volenv run` imports this on its error path, and the fast
path must not import `re`.
"""

from __future__ import annotations

import os

MASK = "REDACTED"

#: query parameters that carry or bind a credential (S3/GCS/Azure/CloudFront presigned URLs,
#: bearer tokens in URLs); every X-Amz-*/X-Goog-* parameter is part of a signature too, and
#: masking them keeps a re-signed URL the same identity
SECRET_PARAMS = frozenset(
    {
        "signature",
        "sig",
        "token",
        "access_token",
        "auth",
        "authorization",
        "googleaccessid",
        "key-pair-id",
        "policy",
        "expires",
        "password",
        "passwd",
        "secret",
        "api_key",
        "apikey",
        "key",
        "credential",
        "security-token",
        "se",
        "st",
        "sp",
        "sv",
        "sr",
        "skoid",
        "sktid",
        "skt",
        "ske",
        "sks",
        "skv",
    }
)
SECRET_PREFIXES = ("x-amz-", "x-goog-", "x-ms-")
#: an environment variable whose name contains one of these holds a secret
SECRET_NAME_PARTS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "SIGNATURE")
_URL_END = " \t\r\n\"'<>`|\\,;)]}"
_SCHEME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-."


def _secret_param(name: str) -> bool:
    low = name.lower()
    return low in SECRET_PARAMS or low.startswith(SECRET_PREFIXES)


def redact_url(url: str) -> str:
    """The URL without credentials: userinfo dropped, secret query values masked. A URL with
    nothing secret comes back unchanged, byte for byte (it is part of identities)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _redact_query(url)
    cut = len(rest)
    for ch in "/?#":
        i = rest.find(ch)
        if i != -1 and i < cut:
            cut = i
    authority, tail = rest[:cut], rest[cut:]
    if "@" in authority:
        authority = authority.rsplit("@", 1)[1]
    return f"{scheme}://{authority}{_redact_query(tail)}"


def _redact_query(part: str) -> str:
    head, q, query = part.partition("?")
    if not q:
        return part
    query, hash_, fragment = query.partition("#")
    out = []
    changed = False
    for item in query.split("&"):
        name, eq, value = item.partition("=")
        if eq and value and _secret_param(name.replace("%2D", "-").replace("%2d", "-")) and value != MASK:
            out.append(f"{name}={MASK}")
            changed = True
        else:
            out.append(item)
    if not changed:
        return part
    return f"{head}?{'&'.join(out)}{hash_}{fragment}"


def _secret_values() -> list[str]:
    vals = []
    for name, value in os.environ.items():
        upper = name.upper()
        if len(value) >= 8 and any(p in upper for p in SECRET_NAME_PARTS) and not os.path.isabs(value):
            vals.append(value)
    return sorted(set(vals), key=len, reverse=True)


def redact_text(text: str) -> str:
    """Every URL in free text (a log line, uv's output, an error) through redact_url, and the
    values of secret-named environment variables masked."""
    if "://" in text:
        text = _redact_urls(text)
    for value in _secret_values():
        if value in text:
            text = text.replace(value, MASK)
    return text


def _redact_urls(text: str) -> str:
    out = []
    pos = 0
    while True:
        i = text.find("://", pos)
        if i == -1:
            break
        start = i
        while start > pos and text[start - 1] in _SCHEME_CHARS:
            start -= 1
        end = i + 3
        while end < len(text) and text[end] not in _URL_END:
            end += 1
        out.append(text[pos:start])
        out.append(redact_url(text[start:end]))
        pos = end
    out.append(text[pos:])
    return "".join(out)


def redact_obj(obj: object) -> object:
    """A JSON-like value with every string redacted (dict keys included)."""
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, dict):
        return {redact_text(k) if isinstance(k, str) else k: redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_obj(v) for v in obj]
    return obj


def secret_like_env(env: dict[str, str]) -> list[str]:
    """Names of `[activate] env` entries that look like secrets: a secret-sounding name (a word
    of it is KEY, TOKEN, SECRET, PASSWORD, ... or ends so: `HF_TOKEN`, `OPENAI_APIKEY`; not
    `TOKENIZERS_PARALLELISM`) with a literal value that could be one (8+ characters, not a
    number, a boolean, a path or a plain URL; `${...}` references do not count), or a value
    carrying URL credentials or signed query parameters. Such values are stored in the seal and
    travel with `push`: a false warning on `TOKENIZERS_PARALLELISM = "false"` teaches users to
    ignore the real one."""
    out = []
    for name, value in env.items():
        literal = value.replace("$$", "")
        while "${" in literal and "}" in literal[literal.index("${") :]:
            start = literal.index("${")
            literal = literal[:start] + literal[literal.index("}", start) + 1 :]
        if (_secret_name(name) and _secret_value(literal)) or redact_text(value) != value:
            out.append(name)
    return out


_SECRET_WORDS = frozenset(
    {
        "KEY",
        "KEYS",
        "TOKEN",
        "SECRET",
        "SECRETS",
        "PASSWORD",
        "PASSWD",
        "PASS",
        "CREDENTIAL",
        "CREDENTIALS",
        "SIGNATURE",
        "AUTH",
        "APIKEY",
        "PAT",
    }
)


def _secret_name(name: str) -> bool:
    words = name.upper().replace("-", "_").replace(".", "_").split("_")
    return any(w in _SECRET_WORDS or w.endswith(("KEY", "TOKEN", "SECRET", "PASSWORD")) for w in words)


def _secret_value(value: str) -> bool:
    v = value.strip()
    if len(v) < 8 or " " in v or "://" in v:  # a plain URL is not one (credentials in it are)
        return False
    if v.lower() in ("true", "false", "none", "null", "auto", "enabled", "disabled"):
        return False
    return not (v.replace(".", "", 1).lstrip("-").isdigit() or v.startswith(("/", "./", "../", "~")))
