"""`[activate] env` values: `${NAME}` expansion without a shell or `re`, shared by activate
(run), build (smoke imports) and manifest (validation)."""

from __future__ import annotations


def apply_manifest_env(env: dict[str, str], values: dict[str, str]) -> dict[str, str]:
    """Set the manifest's `[activate] env`: each `${NAME}` refers to the environment as volenv
    built it before these values (so the order of the manifest's keys never matters)."""
    before = dict(env)
    for k, v in values.items():
        env[k] = expand_env_value(v, before)
    return env


_NAME_START = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_"
_NAME_REST = _NAME_START + "0123456789"


def expand_env_value(value: str, env: dict[str, str]) -> str:
    """`${NAME}` -> env's value ('' when unset), `$$` -> `$`, any other `$` is itself; an
    unclosed `${` or a bad name is a ValueError (the manifest check calls this). No shell, no `re`."""
    if "$" not in value:
        return value
    out: list[str] = []
    i, n = 0, len(value)
    while i < n:
        ch = value[i]
        if ch != "$":
            j = value.find("$", i)
            j = n if j < 0 else j
            out.append(value[i:j])
            i = j
            continue
        nxt = value[i + 1] if i + 1 < n else ""
        if nxt == "$":
            out.append("$")
            i += 2
            continue
        if nxt != "{":  # a lone `$` stays literal: values written before `${NAME}` existed
            out.append("$")
            i += 1
            continue
        end = value.find("}", i + 2)
        if end < 0:
            raise ValueError(f"'${{' at offset {i} is not closed by '}}'")
        name = value[i + 2 : end]
        if not name or name[0] not in _NAME_START or any(c not in _NAME_REST for c in name):
            raise ValueError(f"'${{{name}}}' does not name an environment variable")
        out.append(env.get(name, ""))
        i = end + 1
    return "".join(out)
