"""`volenv gc`: plan what no root keeps, then (asked or with --yes) remove it. The CLI asks."""

from __future__ import annotations

from volenv.base.errors import UsageError, VolumeError
from volenv.gc import execute as gc_execute
from volenv.gc import plan as gc
from volenv.gc.plan import GcPlan, GcResult
from volenv.store.paths import VolumePaths
from volenv.store.rootfind import root_exists


def plan(paths: VolumePaths, keep: int, keep_within: str) -> GcPlan:
    """The removal plan for --keep N and --keep-within DURATION; changes nothing."""
    if keep < 0:
        raise UsageError("--keep must be 0 or more")
    seconds = gc.parse_duration(keep_within)
    if not root_exists(str(paths.root)):
        raise VolumeError(f"volume root {paths.root} does not exist")
    return gc.make_plan(paths, keep=keep, keep_within=seconds)


def unasked(plan: GcPlan) -> UsageError:
    """Deleting unasked is the surprise: a script says --yes, a person answers."""
    return UsageError(
        f"gc would remove {len(plan.removals)} item(s) and there is no terminal to ask",
        hint="pass --yes to remove them, or --dry-run to see the plan",
    )


def unchanged(plan: GcPlan) -> GcResult:
    """The result of a plan carried out by nobody: --dry-run, nothing to remove, or the plan
    shown before asking."""
    return GcResult(plan)


def execute(paths: VolumePaths, plan: GcPlan) -> GcResult:
    """Remove what the plan lists (re-checked under the locks)."""
    return gc_execute.execute(paths, plan)
