"""`volenv diff A B`: what changes from snapshot A to snapshot B (each an id, a unique prefix,
or an env meaning its current snapshot): packages added, removed and changed, groups, models."""

from __future__ import annotations

from dataclasses import dataclass

from volenv.commands.show import load_seal, resolve
from volenv.store import contents
from volenv.store.paths import VolumePaths


@dataclass(frozen=True)
class DiffResult:
    a: str
    b: str
    changes: contents.Changes
    problems: tuple[str, ...]  # a side whose seal does not verify: compared as far as it reads


def diff(paths: VolumePaths, a: str, b: str) -> DiffResult:
    env_a, sid_a = resolve(paths, a)
    env_b, sid_b = resolve(paths, b)
    seal_a, prob_a = load_seal(paths, env_a, sid_a)
    seal_b, prob_b = load_seal(paths, env_b, sid_b)
    problems = tuple(f"{sid}: {p}" for sid, p in ((sid_a, prob_a), (sid_b, prob_b)) if p)
    changes = contents.diff(contents.from_seal(seal_a), contents.from_seal(seal_b))
    return DiffResult(sid_a, sid_b, changes, problems)
