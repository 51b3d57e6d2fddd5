"""Records (every file/link/dir of a snapshot) and verification at the levels seal, stat, full.

Hash: sha256 via hashlib (OpenSSL, SHA-NI: ~1.4 GB/s a core). It is the hash wheels' RECORD
files use, so one pass both builds our record and checks every installed file against its
wheel, and in parallel it outruns the disk. blake3 would be faster per core but would need a
second pass for the RECORD check.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import os
import stat
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from volenv.base.leanjson import NOT_A_RECORD
from volenv.base.ui import reporter
from volenv.store.sealcheck import META_DIR, RECORD_NAME, SealProblem, check_seal, meta_is_link
from volenv.store.volio import open_regular, read_regular

RECORD_HEADER = "#volenv-record 1"
LEVELS = ("seal", "stat", "full")
HASH_WORKERS = max(4, min(16, (os.cpu_count() or 2) * 2))


@dataclass(frozen=True)
class Entry:
    """One recorded path: type f/d/l, permission bits, size, sha256 (files) or target (links)."""

    path: str
    type: str
    mode: int
    size: int
    digest: str
    ino: int = 0
    mtime_ns: int = 0


def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def _unesc(text: str) -> str:
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            out.append({"t": "\t", "n": "\n", "\\": "\\"}.get(nxt, nxt))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def encode_record(entries: Iterable[Entry]) -> bytes:
    lines = [RECORD_HEADER]
    for e in sorted(entries, key=lambda e: e.path):
        lines.append(
            f"{e.type}\t{e.mode:o}\t{e.size}\t{_esc(e.digest)}\t{e.ino}\t{e.mtime_ns}\t{_esc(e.path)}"
        )
    return ("\n".join(lines) + "\n").encode()


def parse_record(data: bytes, where: str = "record") -> dict[str, Entry]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SealProblem("record-damaged", f"{where}: not UTF-8 text") from None
    lines = text.split("\n")
    if not lines or lines[0] != RECORD_HEADER:
        raise SealProblem("record-damaged", f"{where}: missing header {RECORD_HEADER!r}")
    out: dict[str, Entry] = {}
    for n, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        parts = line.split("\t")
        if len(parts) != 7 or parts[0] not in ("f", "d", "l"):
            raise SealProblem("record-damaged", f"{where}: line {n} is malformed")
        path = _unesc(parts[6])
        try:
            out[path] = Entry(
                path,
                parts[0],
                int(parts[1], 8),
                int(parts[2]),
                _unesc(parts[3]),
                int(parts[4]),
                int(parts[5]),
            )
        except ValueError:
            raise SealProblem("record-damaged", f"{where}: line {n} has a malformed number") from None
    return out


#: a snapshot's record (and a wheel's RECORD) past this size is not one volenv or a wheel wrote
RECORD_LIMIT = 1 << 30


def load_record(snapshot_dir: Path) -> dict[str, Entry]:
    path = snapshot_dir / META_DIR / RECORD_NAME
    meta_is_link(str(snapshot_dir))  # a linked .volenv: its record is somebody else's
    try:
        raw = read_regular(path, RECORD_LIMIT)
    except FileNotFoundError:
        raise SealProblem("record-missing", f"no record at {path}") from None
    except (IsADirectoryError, NotADirectoryError):
        raise SealProblem("record-damaged", f"{path} is not a file") from None
    except OSError as exc:
        if exc.errno not in NOT_A_RECORD:
            raise
        raise SealProblem("record-damaged", f"{path} is not a regular file ({exc.strerror})") from None
    return parse_record(raw, str(path))


def walk(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every path below root except the .volenv metadata dir, with lstat results."""
    stack = [""]
    base = str(root)
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(base, rel) if rel else base) as it:
            for entry in it:
                r = f"{rel}/{entry.name}" if rel else entry.name
                if r == META_DIR:
                    continue
                st = entry.stat(follow_symlinks=False)
                yield r, st
                if stat.S_ISDIR(st.st_mode):
                    stack.append(r)


_CHUNK = 1 << 20


def hash_file(path: str) -> str:
    """sha256 with unbuffered 1 MiB reads: small files in one read, large ones streamed into a
    reused buffer (hashlib releases the GIL, so threads overlap reading and hashing)."""
    with open_regular(path, buffering=0) as fh:
        first = fh.read(_CHUNK)
        h = hashlib.sha256(first)
        if len(first) == _CHUNK:
            buf = bytearray(_CHUNK)
            view = memoryview(buf)
            while n := fh.readinto(buf):
                h.update(view[:n])
        return h.hexdigest()


@dataclass
class RecordStats:
    files: int = 0
    hashed: int = 0
    reused: int = 0
    bytes_hashed: int = 0
    bytes_new: int = 0  # in files with one link: what this tree adds to the volume


@dataclass(frozen=True)
class WheelMismatch:
    """An installed file whose content differs from its wheel's RECORD hash."""

    path: str
    distribution: str


def build_record(
    root: Path, previous: Iterable[dict[str, Entry]] = ()
) -> tuple[list[Entry], RecordStats, list[WheelMismatch]]:
    """Record the tree, reusing hashes of files whose inode/size/mtime match an earlier record
    (hard links of the same uv cache file), and check files against their wheels' RECORDs."""
    reuse: dict[tuple[int, int, int], str] = {}
    for rec in previous:
        for e in rec.values():
            if e.type == "f" and e.ino:
                reuse[(e.ino, e.size, e.mtime_ns)] = e.digest
    stats = RecordStats()
    entries: list[Entry] = []
    to_hash: list[tuple[str, os.stat_result]] = []
    for rel, st in walk(root):
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            entries.append(Entry(rel, "d", mode, 0, "-"))
        elif stat.S_ISLNK(st.st_mode):
            target = os.readlink(os.path.join(root, rel))
            entries.append(Entry(rel, "l", mode, 0, target))
        elif stat.S_ISREG(st.st_mode):
            stats.files += 1
            if st.st_nlink == 1:
                stats.bytes_new += st.st_size
            known = reuse.get((st.st_ino, st.st_size, st.st_mtime_ns))
            if known is not None:
                stats.reused += 1
                entries.append(Entry(rel, "f", mode, st.st_size, known, st.st_ino, st.st_mtime_ns))
            else:
                to_hash.append((rel, st))
        else:
            raise SealProblem("unsupported", f"{rel}: not a file, directory or symlink")
    base = str(root)

    def work(item: tuple[str, os.stat_result]) -> Entry:
        rel, st = item
        digest = hash_file(os.path.join(base, rel))
        return Entry(rel, "f", stat.S_IMODE(st.st_mode), st.st_size, digest, st.st_ino, st.st_mtime_ns)

    progress = reporter.progress("hashing files", len(to_hash), unit="files")
    with progress, ThreadPoolExecutor(HASH_WORKERS) as pool:
        for e in pool.map(work, to_hash):
            entries.append(e)
            stats.hashed += 1
            stats.bytes_hashed += e.size
            progress.advance(1, e.size)
    mismatches = check_wheel_records(root, {e.path: e for e in entries})
    return entries, stats, mismatches


def _site_packages(root: Path) -> list[str]:
    lib = root / "lib"
    out = []
    if lib.is_dir():
        for child in sorted(os.listdir(lib)):
            sp = lib / child / "site-packages"
            if sp.is_dir():
                out.append(str(sp.relative_to(root)))
    return out


def check_wheel_records(root: Path, entries: dict[str, Entry]) -> list[WheelMismatch]:
    """Compare recorded sha256 digests with each installed distribution's RECORD.

    Bytecode a wheel ships is left out: the compile step may have replaced it with volenv's
    own (see `check_shipped_bytecode`, which checks it before that step)."""
    found: list[WheelMismatch] = []
    for rel, claims in _claims(root).items():
        if _is_bytecode(rel):
            continue
        e = entries.get(rel)
        # a file two wheels ship (fastapi and fastapi-cli's bin/fastapi): uv keeps the last
        # installer's, which is what any one of their RECORDs may vouch for
        if e is not None and e.type == "f" and e.digest not in {h for _d, h in claims}:
            found.append(WheelMismatch(e.path, claims[-1][0]))
    return found


def clashes(root: Path) -> list[tuple[str, list[str], str | None]]:
    """Files that several installed distributions ship: (path, the distributions, the one whose
    bytes uv left there, or None when none's RECORD matches): reported once, never damage."""
    out = []
    for rel, claims in _claims(root).items():
        if len({d for d, _h in claims}) < 2:
            continue
        path = root / rel
        try:
            digest = hash_file(str(path)) if path.is_file() and not path.is_symlink() else None
        except OSError:
            digest = None
        kept = next((d for d, h in reversed(claims) if h == digest), None)
        out.append((rel, sorted({d for d, _h in claims}), kept))
    return out


def _claims(root: Path) -> dict[str, list[tuple[str, str]]]:
    """path -> [(distribution, sha256 its RECORD gives)] for every hashed RECORD row."""
    claims: dict[str, list[tuple[str, str]]] = {}
    for dist, rel, expected in _wheel_rows(root):
        claims.setdefault(rel, []).append((dist, expected))
    return claims


def check_shipped_bytecode(root: Path, only: set[str] | None = None) -> list[WheelMismatch]:
    """Bytecode files as the wheels shipped them, checked against their RECORDs before volenv
    compiles: what a wheel ships is inherited (and can be damaged in the shared cache), what
    the compile step writes afterwards is volenv's own and is only recorded. `only`: just these
    distributions' (`name-version`), as after a refresh that reinstalled them, when the others'
    bytecode is already volenv's own."""
    found: list[WheelMismatch] = []
    for rel, claims in _claims(root).items():
        if not _is_bytecode(rel) or (only is not None and not {d for d, _h in claims} & only):
            continue
        path = os.path.join(root, rel)
        try:
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                continue
            digest = hash_file(path)
        except FileNotFoundError:
            continue
        if digest not in {h for _d, h in claims}:
            found.append(WheelMismatch(rel, claims[-1][0]))
    return found


def _wheel_rows(root: Path) -> Iterator[tuple[str, str, str]]:
    """(distribution, path relative to root, sha256 hex) of every hashed RECORD row."""
    for sp in _site_packages(root):
        for rec_path, rows in _dist_records(root, sp):
            dist = rec_path.split("/")[-2].removesuffix(".dist-info")
            for rel, expected in rows:
                yield dist, os.path.normpath(f"{sp}/{rel}"), expected


def _dist_records(root: Path, sp: str) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    sp_dir = root / sp
    for name in sorted(os.listdir(sp_dir)):
        if not name.endswith(".dist-info"):
            continue
        rec = sp_dir / name / "RECORD"
        try:
            text = read_regular(rec, RECORD_LIMIT).decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        rows: list[tuple[str, str]] = []
        for row in csv.reader(text.splitlines()):
            if len(row) < 2 or not row[1].startswith("sha256="):
                continue
            b64 = row[1][len("sha256=") :]
            try:
                hexd = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)).hex()
            except ValueError:
                continue
            rows.append((row[0], hexd))
        yield f"{sp}/{name}/RECORD", rows


def owner_distributions(root: Path) -> dict[str, str]:
    """installed path -> distribution name, from RECORD files (to say whose file is damaged)."""
    owners: dict[str, str] = {}
    for sp in _site_packages(root):
        sp_dir = root / sp
        for name in os.listdir(sp_dir):
            if not name.endswith(".dist-info"):
                continue
            dist = name[: -len(".dist-info")]
            try:
                text = read_regular(sp_dir / name / "RECORD", RECORD_LIMIT).decode("utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            for row in csv.reader(text.splitlines()):
                if row:
                    owners[os.path.normpath(f"{sp}/{row[0]}")] = dist
    return owners


# ---------------------------------------------------------------- verification


@dataclass(frozen=True)
class Problem:
    """One finding: kinds keep missing / extra / changed apart; severity error or warning."""

    kind: str
    path: str
    detail: str
    severity: str = "error"
    distribution: str | None = None


@dataclass(frozen=True)
class VerifyReport:
    snapshot: str
    path: str
    level: str
    problems: tuple[Problem, ...]
    files_checked: int = 0
    bytes_hashed: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def summary(self) -> str:
        if not self.problems:
            return f"{self.snapshot}: ok at level {self.level}"
        kinds: dict[str, int] = {}
        for p in self.problems:
            kinds[p.kind] = kinds.get(p.kind, 0) + 1
        parts = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        state = "ok with warnings" if self.ok else "FAILED"
        return f"{self.snapshot}: {state} at level {self.level}: {parts}"


def _is_bytecode(rel: str) -> bool:
    return rel.endswith((".pyc", ".pyo")) and ("/__pycache__/" in f"/{rel}" or rel.endswith(".pyc"))


def verify_snapshot(
    snapshot_dir: Path, level: str = "seal", *, workers: int = HASH_WORKERS, deadline: float | None = None
) -> VerifyReport:
    """Check a snapshot at a level; problems are data, the caller picks the exit code. With a
    `deadline` (time.monotonic()), a walk still running then stops with an `incomplete`
    problem: what was checked stands, the rest is unknown (doctor's bounded check)."""
    if level not in LEVELS:
        raise ValueError(f"unknown verify level {level!r}")
    t0 = time.perf_counter()
    sid = snapshot_dir.name
    problems: list[Problem] = []
    try:
        check_seal(str(snapshot_dir), sid)
    except SealProblem as sp:
        problems.append(Problem(sp.kind, f"{META_DIR}/", sp.detail))
        if sp.kind != "interpreter":
            return VerifyReport(
                sid, str(snapshot_dir), level, tuple(problems), seconds=time.perf_counter() - t0
            )
    if level == "seal":
        return VerifyReport(sid, str(snapshot_dir), level, tuple(problems), seconds=time.perf_counter() - t0)
    try:
        record = load_record(snapshot_dir)
    except SealProblem as sp:
        problems.append(Problem(sp.kind, f"{META_DIR}/{RECORD_NAME}", sp.detail))
        return VerifyReport(sid, str(snapshot_dir), level, tuple(problems), seconds=time.perf_counter() - t0)
    seen: set[str] = set()
    to_hash: list[Entry] = []
    checked = 0
    for n, (rel, st) in enumerate(walk(snapshot_dir)):
        if deadline is not None and n % 256 == 0 and time.monotonic() > deadline:
            problems.append(
                Problem("incomplete", "", f"stopped after {n} entries: the time budget ran out", "warning")
            )
            return VerifyReport(
                sid, str(snapshot_dir), level, tuple(problems), checked, seconds=time.perf_counter() - t0
            )
        e = record.get(rel)
        if e is None:
            if _is_bytecode(rel) and stat.S_ISREG(st.st_mode):
                problems.append(
                    Problem("bytecode", rel, "bytecode written after the seal (not corruption)", "warning")
                )
            else:
                problems.append(Problem("extra", rel, "not in the record"))
            continue
        seen.add(rel)
        checked += stat.S_ISREG(st.st_mode)  # files, as `sync` counts them (dirs and links are not)
        kind = "d" if stat.S_ISDIR(st.st_mode) else "l" if stat.S_ISLNK(st.st_mode) else "f"
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode) or stat.S_ISREG(st.st_mode)):
            kind = "?"
        if kind != e.type:
            problems.append(Problem("type-changed", rel, f"recorded as {e.type}, found {kind}"))
            continue
        if kind == "l":
            target = os.readlink(snapshot_dir / rel)
            if target != e.digest:
                problems.append(
                    Problem("symlink-changed", rel, f"points to {target!r}, recorded {e.digest!r}")
                )
            continue
        mode = stat.S_IMODE(st.st_mode)
        if mode != e.mode:
            problems.append(Problem("mode-changed", rel, f"mode {mode:o}, recorded {e.mode:o}"))
        if kind == "f":
            if st.st_size != e.size:
                problems.append(Problem("size-changed", rel, f"{st.st_size} bytes, recorded {e.size}"))
            elif level == "full":
                to_hash.append(e)
    for rel in record:
        if rel not in seen:
            problems.append(Problem("missing", rel, "recorded but not found"))
    hashed = 0
    if to_hash:
        base = str(snapshot_dir)

        def work(e: Entry) -> tuple[Entry, str | None]:
            try:
                return e, hash_file(os.path.join(base, e.path))
            except OSError as exc:
                return e, f"unreadable: {exc.strerror}"

        progress = reporter.progress(f"verifying {sid}", len(to_hash), unit="files")
        with progress, ThreadPoolExecutor(workers) as pool:
            for e, digest in pool.map(work, to_hash, chunksize=64):
                hashed += e.size
                progress.advance(1, e.size)
                if digest is not None and digest.startswith("unreadable"):
                    problems.append(Problem("unreadable", e.path, digest))
                elif digest != e.digest:
                    problems.append(Problem("content-changed", e.path, "content differs from the record"))
    problems = _attach_owners(snapshot_dir, problems)
    return VerifyReport(
        sid, str(snapshot_dir), level, tuple(problems), checked, hashed, time.perf_counter() - t0
    )


def _attach_owners(snapshot_dir: Path, problems: list[Problem]) -> list[Problem]:
    damaged = [
        p for p in problems if p.kind in ("content-changed", "size-changed", "missing", "mode-changed")
    ]
    if not damaged:
        return problems
    owners = owner_distributions(snapshot_dir)
    out = []
    for p in problems:
        dist = owners.get(p.path) if p in damaged else None
        out.append(Problem(p.kind, p.path, p.detail, p.severity, dist) if dist else p)
    return out
