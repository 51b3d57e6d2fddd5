"""`sync --dry-run`'s package list: the resolved pins with their versions and, where known,
their download size (the index's, or the wheel file's for a find-links or file: wheel) and
installed size (a local wheel's unpacked files). uv resolves without installing: the pins are
compiled once more to a pylock (`uv pip compile --format pylock.toml`), which names each
package's wheel and size; nothing is downloaded or written outside a temp dir."""

from __future__ import annotations

import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from volenv.build.plan import Resolution, SyncOptions
from volenv.build.uvinputs import resolver_args, sources_input
from volenv.build.uvtool import index_args, run_uv
from volenv.manifest.schema import Manifest
from volenv.store.contents import parse_pin
from volenv.store.paths import VolumePaths


@dataclass(frozen=True)
class PlannedPackage:
    name: str
    version: str
    group: str | None  # None: a base requirement
    download_bytes: int | None  # None: not known without downloading
    installed_bytes: int | None


def planned_packages(
    paths: VolumePaths, manifest: Manifest, res: Resolution, tmp: Path, opts: SyncOptions
) -> tuple[PlannedPackage, ...]:
    """Every package the build would install (base, then what each resolvable group adds)."""
    wanted: dict[str, tuple[str, str | None]] = {}
    for line in res.base:
        pin = parse_pin(line)
        if pin is not None:
            wanted.setdefault(pin[0], (pin[1], None))
    for group, lines in sorted(res.groups.items()):
        for line in lines:
            pin = parse_pin(line)
            if pin is not None:
                wanted.setdefault(pin[0], (pin[1], group))
    lock = _pylock(paths, manifest, res, tmp, opts)
    out = []
    for name, (pinned, in_group) in wanted.items():
        entry = lock.get(name, {})
        out.append(PlannedPackage(name, str(entry.get("version") or pinned), in_group, *_sizes(entry, res)))
    for name, entry in lock.items():  # a local package: a bare path in the pins, named here
        if name not in wanted:
            out.append(PlannedPackage(name, str(entry.get("version") or "?"), None, *_sizes(entry, res)))
    return tuple(sorted(out, key=lambda p: (p.group or "", p.name)))


def _pylock(
    paths: VolumePaths, manifest: Manifest, res: Resolution, tmp: Path, opts: SyncOptions
) -> dict[str, dict[str, Any]]:
    """The pinned set compiled to a pylock: name -> its [[packages]] entry; {} where uv cannot
    (the list still prints, without sizes)."""
    from packaging.utils import canonicalize_name

    pins = tmp / "dry-run.in"
    lines = [*res.index_lines, *res.base, *(ln for g in res.groups.values() for ln in g)]
    pins.write_text("\n".join(lines) + "\n")
    out = tmp / "pylock.dry-run.toml"  # uv takes pylock.toml or pylock.NAME.toml
    args = [
        "pip",
        "compile",
        str(pins),
        *sources_input(manifest, lines, tmp / "dry-run.sources"),
        *resolver_args(manifest, tmp),
        "-o",
        str(out),
        "--format",
        "pylock.toml",
        "--python",
        res.python,
        "-q",
    ]
    proc = run_uv([*args, *index_args(manifest)], paths, None, cwd=manifest.path.parent, offline=opts.offline)
    if proc.returncode != 0:
        return {}
    try:
        data = tomllib.loads(out.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    found = {}
    for p in data.get("packages") or []:
        if isinstance(p, dict) and isinstance(p.get("name"), str):
            found[str(canonicalize_name(p["name"]))] = p
    return found


def _sizes(entry: dict[str, Any], res: Resolution) -> tuple[int | None, int | None]:
    """(download, installed) of the wheel this interpreter would take, where known."""
    wheels = [w for w in entry.get("wheels") or [] if isinstance(w, dict)]
    wheel = _pick(wheels, res)
    if wheel is None:
        if entry.get("directory") or entry.get("sdist") or entry.get("archive"):
            return None, None  # built at install time: its size is known only then
        return None, None
    size = wheel.get("size")
    download = size if isinstance(size, int) else None
    installed = None
    local = _local_file(wheel)
    if local is not None:
        try:
            download = local.stat().st_size if download is None else download
            with zipfile.ZipFile(local) as zf:
                installed = sum(i.file_size for i in zf.infolist())
        except (OSError, zipfile.BadZipFile):
            pass
    return download, installed


def _pick(wheels: list[dict[str, Any]], res: Resolution) -> dict[str, Any] | None:
    """The wheel the build's interpreter would install: the only one, or the first whose tags
    this interpreter takes where it is the build's Python version (else unknown)."""
    if len(wheels) <= 1:
        return wheels[0] if wheels else None
    version = str(res.fingerprint.get("version", ""))
    if not version.startswith(f"{sys.version_info[0]}.{sys.version_info[1]}."):
        return None
    from packaging.tags import sys_tags
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    ranked = {str(t): i for i, t in enumerate(sys_tags())}
    best: tuple[int, dict[str, Any]] | None = None
    for w in wheels:
        name = str(w.get("name") or Path(urlparse(str(w.get("url") or "")).path).name)
        try:
            tags = parse_wheel_filename(unquote(name))[3]
        except InvalidWheelFilename:
            continue
        rank = min((ranked[str(t)] for t in tags if str(t) in ranked), default=None)
        if rank is not None and (best is None or rank < best[0]):
            best = (rank, w)
    return best[1] if best else None


def _local_file(wheel: dict[str, Any]) -> Path | None:
    if isinstance(wheel.get("path"), str):
        return Path(wheel["path"])
    url = urlparse(str(wheel.get("url") or ""))
    return Path(unquote(url.path)) if url.scheme == "file" else None
