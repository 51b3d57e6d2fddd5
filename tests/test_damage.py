"""Issue 14 item 6: damaged state ends in a documented exit code, never a traceback or exit 1.

A damage fuzz: every record type x (truncated, garbage, empty, wrong JSON type, missing keys,
directory) plus stray files, x every read command. One real volume (two snapshots of one env,
a pin, a use mark, aliases, a url model) is built once per module and copied per case
(`cp -a`). The typer commands run in a fork server: one process imports the CLI once, then
forks a child per command that runs `volenv.__main__.main` with its own stdout/stderr files and
exit status (the real CLI in a real process, without paying typer/rich's import 1,000 times).
`run` (the container fast path) runs as a fresh `python -m volenv run`, so it sees exactly the
modules a container start imports (no `json`: the CPython 3.11 scanner bug needs that).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO, base_env, volenv, write_manifest

#: DESIGN.md's table: what a read command may answer on a damaged volume (1 = a bug)
DOCUMENTED = {0, 2, 3, 4, 8}

_DRIVER = textwrap.dedent(
    """
    import json, os, signal, sys, traceback
    from volenv.__main__ import main
    import volenv.cli
    volenv.cli._register_optional_commands()
    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            signal.alarm(60)
            for fd, name in ((1, ".stdout"), (2, ".stderr")):
                os.dup2(os.open(job["out"] + name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            if job["fresh"]:
                os.execv(sys.executable, [sys.executable, "-m", "volenv", *job["argv"]])
            code = 1
            try:
                code = main(job["argv"])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), flush=True)
    """
)


class Driver:
    """The fork server: `run(argv)` -> (exit code, stdout, stderr)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.n = 0
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _DRIVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=base_env(),
        )

    def run(self, *argv: str | Path, fresh: bool = False) -> tuple[int, str, str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.n += 1
        out = self.workdir / f"job{self.n}"
        job = {"argv": [str(a) for a in argv], "out": str(out), "fresh": fresh}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        code = int(self.proc.stdout.readline())
        return code, Path(f"{out}.stdout").read_text(), Path(f"{out}.stderr").read_text()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@dataclass(frozen=True)
class Built:
    root: Path
    manifest: Path  # the current snapshot's manifest (b)
    old_manifest: Path
    current: str
    old: str
    paths: dict[str, Path]  # record kind -> relative path


@pytest.fixture(scope="module")
def model_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("models")
    (d / "w.bin").write_bytes(b"weights " * 100)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: object, **kw: object) -> None:
            super().__init__(*a, directory=str(d), **kw)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/w.bin"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path, model_server: str) -> Built:
    base = tmp_path_factory.mktemp("damage")
    root = base / "volume" / "volenv"
    data = b"weights " * 100
    model = (
        f'[[models]]\nname = "w"\nurl = "{model_server}"\n'
        f'sha256 = "{hashlib.sha256(data).hexdigest()}"\nsize = {len(data)}\n'
    )
    a = write_manifest(base / "m", "app", ["alpha==1.0"], find_links=wheelhouse, filename="a.toml")
    b = write_manifest(
        base / "m", "app", ["alpha==1.0", "gamma==1.0"], find_links=wheelhouse, extra=model, filename="b.toml"
    )
    for m in (a, b):
        r = volenv("--root", root, "sync", m)
        assert r.returncode == 0, r.stderr
    cur = json.loads((root / "envs/app/current").read_text())["snapshot"]
    hist = [json.loads(line) for line in (root / "envs/app/history.jsonl").read_text().splitlines()]
    old = next(h["snapshot"] for h in hist if h["snapshot"] != cur)
    assert volenv("--root", root, "pin", old).returncode == 0
    assert volenv("--root", root, "run", "--env", "app", "--", "true").returncode == 0
    index = next(p for p in (root / "envs/app/index").iterdir() if json.loads(p.read_text())["snapshot"] == cur)
    alias = next(
        p
        for p in (root / "aliases").iterdir()
        if json.loads(p.read_text())["manifest_digest"] == index.name
    )
    (record,) = (root / "models/records").glob("*.json")
    rel = {
        "volenv.json": root / "volenv.json",
        "current": root / "envs/app/current",
        "index": index,
        "alias": alias,
        "history": root / "envs/app/history.jsonl",
        "seal": root / f"envs/app/snapshots/{cur}/.volenv/seal.json",
        "record": root / f"envs/app/snapshots/{cur}/.volenv/record",
        "old-seal": root / f"envs/app/snapshots/{old}/.volenv/seal.json",
        "pin": root / f"envs/app/pins/{old}",
        "used": root / f"envs/app/used/{cur}",
        "model-record": record,
    }
    for p in rel.values():
        assert p.exists(), p
    return Built(root, b, a, cur, old, {k: p.relative_to(root) for k, p in rel.items()})


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Driver]:
    d = Driver(tmp_path_factory.mktemp("jobs"))
    yield d
    d.close()


def _tree_digest(path: Path) -> str:
    """Every name, type, mode and content below path (a snapshot, the model files)."""
    h = hashlib.sha256()
    for dirpath, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files + dirs):
            p = Path(dirpath) / name
            st = p.lstat()
            h.update(f"{p.relative_to(path)}\0{st.st_mode:o}\0".encode())
            if p.is_file() and not p.is_symlink():
                h.update(p.read_bytes())
    return h.hexdigest()


def _damage(path: Path, kind: str) -> None:
    if kind == "directory":
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        (path / "x").mkdir(parents=True)
        return
    raw = path.read_bytes()
    data = {
        "truncated": raw[: max(1, len(raw) // 2)] if raw else b"{",
        "garbage": b"\x00\xff\xfe{\x93 not json",
        "empty": b"",
        "wrong-type": b"[]\n",
        "no-keys": b'{"schema": 1}\n',
    }[kind]
    if path.name == "history.jsonl" and kind in ("wrong-type", "no-keys"):
        data = raw + data  # the issue's `echo '[]' >> history.jsonl`: a bad line after good ones
    path.write_bytes(data)


RECORDS = [
    "volenv.json",
    "current",
    "index",
    "alias",
    "history",
    "seal",
    "record",
    "old-seal",
    "pin",
    "used",
    "model-record",
]
DAMAGES = ["truncated", "garbage", "empty", "wrong-type", "no-keys", "directory"]
STRAYS = [
    "envs/app/snapshots/README",
    "envs/app/snapshots/.volenv",
    "envs/README",
    "envs/app/index/README",
    "envs/app/pins/README",
    "envs/app/used/README",
    "aliases/README.json",
    "models/records/README.json",
    "envs/app/snapshots/app-000000000000",
]


def _commands(b: Built, root: Path) -> list[tuple[str, tuple[str, ...], bool]]:
    """(label, argv, fresh process); mutating commands last."""
    r = ("--root", str(root))
    m, fail = str(b.manifest), ("--on-missing", "fail")
    return [
        ("status", (*r, "status"), False),
        ("list", (*r, "list"), False),
        ("json-list", (*r, "--json", "list"), False),
        ("history", (*r, "history", "app"), False),
        ("verify", (*r, "verify", "app"), False),
        ("verify-all", (*r, "verify", "--all", "--level", "seal"), False),
        ("doctor", (*r, "doctor"), False),
        ("gc-dry", (*r, "gc", "--dry-run"), False),
        ("models-list", (*r, "models", "list"), False),
        ("models-verify", (*r, "models", "verify"), False),
        ("env", (*r, "env", "--env", "app"), False),
        ("env-manifest", (*r, "env", "--manifest", m), False),
        ("run-env", (*r, "run", *fail, "--env", "app", "--", "true"), True),
        ("run-manifest", (*r, "run", *fail, "--manifest", m, "--", "true"), True),
        ("run-diagnose", (*r, "run", *fail, "--diagnose", "--manifest", m, "--", "true"), True),
        ("rollback", (*r, "rollback", "app", "--lock-timeout", "5"), False),
        ("gc", (*r, "gc", "--yes"), False),
    ]


def _cases() -> list[tuple[str, str]]:
    cases = [(rec, dmg) for rec in RECORDS for dmg in DAMAGES]
    cases += [("stray", s) for s in STRAYS]
    return cases


@pytest.mark.parametrize(("target", "damage"), _cases(), ids=[f"{t}-{d}" for t, d in _cases()])
def test_damage_fuzz(target: str, damage: str, built: Built, driver: Driver, tmp_path: Path) -> None:
    root = tmp_path / "volenv"
    subprocess.run(["cp", "-a", str(built.root), str(root)], check=True)
    if target == "stray":
        stray = root / damage
        stray.write_bytes(b"a stray file\n")
        damaged = stray
    else:
        damaged = root / built.paths[target]
        _damage(damaged, damage)
    snaps = root / "envs/app/snapshots"
    intact = {
        p.name: _tree_digest(p)
        for p in snaps.iterdir()
        if p.is_dir() and not p.name.startswith(".") and not damaged.is_relative_to(p)
    }
    if not damaged.is_relative_to(root / "models"):
        intact["models/files"] = _tree_digest(root / "models/files")
    failures = []
    for label, argv, fresh in _commands(built, root):
        code, _out, err = driver.run(*argv, fresh=fresh)
        if code not in DOCUMENTED or "Traceback" in err:
            failures.append(f"{label}: exit {code}: {err.strip()[-600:]}")
    for name, digest in intact.items():
        p = snaps / name if name != "models/files" else root / name
        if not p.is_dir() or _tree_digest(p) != digest:
            failures.append(f"intact {name} changed or removed")
    assert not failures, "\n".join(failures)
