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
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, base_env, volenv, write_manifest

#: DESIGN.md's table: what a read command may answer on a damaged volume (1 = a bug); 9 since
#: issue 25: `run --on-missing fail` names a required model whose record or files are damaged
DOCUMENTED = {0, 2, 3, 4, 8, 9}

_DRIVER = textwrap.dedent(
    """
    import json, os, signal, sys, traceback
    from volenv.__main__ import main
    import importlib, pkgutil, volenv, volenv.cli.app, volenv.commands
    # what the commands import lazily, imported once here instead of in every child
    for mod in pkgutil.walk_packages(volenv.__path__, "volenv."):
        if mod.name not in ("volenv.runpod.provision", "volenv.__main__"):
            importlib.import_module(mod.name)
    import psutil, filelock, packaging.requirements, packaging.specifiers
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
    index = next(
        p for p in (root / "envs/app/index").iterdir() if json.loads(p.read_text())["snapshot"] == cur
    )
    alias = next(
        p for p in (root / "aliases").iterdir() if json.loads(p.read_text())["manifest_digest"] == index.name
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
    """(label, argv, fresh process); mutating commands last: gc (which must keep the current
    and the pinned snapshot whatever is damaged), then rollback."""
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
        ("sync-dry", (*r, "sync", "--dry-run", m), False),
        ("env", (*r, "env", "--env", "app"), False),
        ("env-manifest", (*r, "env", "--manifest", m), False),
        ("run-env", (*r, "run", *fail, "--env", "app", "--", "true"), True),
        ("run-manifest", (*r, "run", *fail, "--manifest", m, "--", "true"), True),
        ("run-diagnose", (*r, "run", *fail, "--diagnose", "--manifest", m, "--", "true"), True),
        ("gc", (*r, "gc", "--yes", "--keep", "0", "--keep-within", "0s"), False),
        ("rollback", (*r, "rollback", "app", "--lock-timeout", "5"), False),
    ]


#: records whose content volenv never parses (a use mark's mtime, a pin's existence) or that are
#: not JSON (the file record): only the damages that differ for them
NOT_JSON = {"used": ("garbage", "directory"), "pin": ("garbage", "directory")}
NOT_JSON["record"] = ("truncated", "garbage", "empty", "directory")


def _cases() -> list[tuple[str, str]]:
    cases = [(rec, dmg) for rec in RECORDS for dmg in DAMAGES if dmg in NOT_JSON.get(rec, DAMAGES)]
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


# ---------------------------------------------------------------- leanjson on the fast path

_FUZZ = textwrap.dedent(
    """
    import random, sys
    from volenv.base import leanjson
    assert "json" not in sys.modules, "the fuzz must run where the fast path runs: without json"
    samples = [open(p, "rb").read() for p in sys.argv[2:]]
    rng = random.Random(int(sys.argv[1]))
    cases = 0
    for raw in samples:
        cuts = {0, 1, len(raw) - 1, *(rng.randrange(len(raw)) for _ in range(150))}
        variants = [raw[:n] for n in cuts]
        for _ in range(150):
            b = bytearray(raw)
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            variants.append(bytes(b))
        variants += [b"", b"\\x00", b"[" * 50000, b'{"a":' * 50000, b'"\\\\ud800"', raw + b"x", b"\\xef\\xbb\\xbf" + raw]
        for v in variants:
            cases += 1
            try:
                leanjson.loads(v)
            except ValueError:
                pass
    print(cases)
    """
)


def _interpreters() -> list[str]:
    """This test's interpreter and every other supported CPython found here (on PATH, or
    installed by pyenv), each probed: the image's 3.11 and whatever newer one the machine has."""
    found = {os.path.realpath(sys.executable): sys.executable}
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [shutil.which(f"python3.{n}") for n in range(11, 16)]
    candidates += [str(p) for p in sorted(pyenv.glob("3.*/bin/python3"))]
    for exe in filter(None, candidates):
        try:
            ok = subprocess.run(
                [exe, "-c", "import sys; print(sys.version_info >= (3, 11))"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
        if ok == "True":
            found.setdefault(os.path.realpath(exe), exe)
    return list(found.values())


@pytest.mark.parametrize("python", _interpreters())
def test_leanjson_raises_only_valueerror(python: str, built: Built) -> None:
    """Random truncations and byte garbage of real records: a value or ValueError, nothing else
    (CPython 3.11's scanner raised SystemError when `json` was not imported, as on `run`)."""
    records = [built.root / built.paths[k] for k in ("seal", "current", "index", "alias", "model-record")]
    env = {**base_env(), "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [python, "-c", _FUZZ, "14", *map(str, records)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) > 1000


# ---------------------------------------------------------------- the cases, exactly


def _copy(built: Built, tmp_path: Path) -> Path:
    root = tmp_path / "volenv"
    subprocess.run(["cp", "-a", str(built.root), str(root)], check=True)
    return root


def test_history_line_of_wrong_type(built: Built, driver: Driver, tmp_path: Path) -> None:
    root = _copy(built, tmp_path)
    hist = root / "envs/app/history.jsonl"
    with hist.open("a") as fh:
        fh.write("[]\n")
    hist.write_text(
        hist.read_text() + '{"schema": 1, "time": 1.0, "snapshot": "app-000000000000", "action": "x"}\n'
    )
    code, _, err = driver.run("--root", root, "history", "app")
    assert code == 4 and str(hist) in err and "line 3" in err, err
    code, out, err = driver.run("--root", root, "status")
    assert code == 0 and built.current in out + err and str(hist) in err, err
    code, _, err = driver.run("--root", root, "rollback", "app", "--lock-timeout", "5")
    assert code == 4 and str(hist) in err, err
    code, _, err = driver.run("--root", root, "rollback", "app", "--to", built.old, "--lock-timeout", "5")
    assert code == 0, err  # --to needs no history


def test_stray_file_in_snapshots_is_skipped_with_a_warning(
    built: Built, driver: Driver, tmp_path: Path
) -> None:
    root = _copy(built, tmp_path)
    stray = root / "envs/app/snapshots/README"
    stray.write_text("hello\n")
    for argv in (["status"], ["list"], ["verify", "--all"], ["gc", "--dry-run"], ["gc", "--yes"]):
        code, out, err = driver.run("--root", root, *argv)
        assert code == 0, (argv, err)
        assert "README" in err and "not a snapshot" in err, (argv, err)
        assert built.current in out + err, argv
    assert stray.read_text() == "hello\n"
    assert (root / "envs/app/snapshots" / built.old).is_dir()


def test_damaged_alias_falls_back_to_the_manifest(built: Built, tmp_path: Path) -> None:
    root = _copy(built, tmp_path)
    alias = root / built.paths["alias"]
    for data in (
        b'{"schema": 1}',
        b'{"schema": 1, "env": "app", "manifest_digest": "x", "activation": []}',
        b'{"a": "x',
    ):
        alias.write_bytes(data)
        r = volenv("--root", root, "run", "--on-missing", "fail", "--manifest", built.manifest, "--", "true")
        assert r.returncode == 0, (data, r.stderr)


@pytest.mark.parametrize("damage", ["truncated", "directory", "no-keys"])
def test_run_on_a_damaged_snapshot_exits_4_naming_it(built: Built, tmp_path: Path, damage: str) -> None:
    root = _copy(built, tmp_path)
    seal = root / built.paths["seal"]
    _damage(seal, damage)
    for policy in ("build", "fail"):  # --env has nothing to build from: the damage, not "no snapshot"
        r = volenv("--root", root, "run", "--on-missing", policy, "--env", "app", "--", "true")
        assert r.returncode == 4, r.stderr
        assert str(seal) in r.stderr and "Traceback" not in r.stderr
    r = volenv("--root", root, "run", "--on-missing", "fail", "--diagnose", "--env", "app", "--", "true")
    assert r.returncode == 4 and "DIAGNOSIS" in r.stderr and str(seal) in r.stderr, r.stderr


@pytest.mark.parametrize("record", ["current", "index"])
def test_run_on_a_truncated_pointer(built: Built, tmp_path: Path, record: str) -> None:
    root = _copy(built, tmp_path)
    path = root / built.paths[record]
    _damage(path, "truncated")
    target = ["--env", "app"] if record == "current" else ["--manifest", str(built.manifest)]
    r = volenv("--root", root, "run", "--on-missing", "fail", *target, "--", "true")
    assert r.returncode == 4 and str(path) in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = volenv("--root", root, "run", "--on-missing", "fail", "--diagnose", *target, "--", "true")
    assert r.returncode == 4 and "DIAGNOSIS" in r.stderr and str(path) in r.stderr, r.stderr


def _python_for_nobody() -> str | None:
    """A python3.11 the user nobody can execute: PATH's may be a shim in root's home (pyenv)."""
    for candidate in (shutil.which("python3.11"), "/usr/bin/python3.11", "/usr/local/bin/python3.11"):
        if candidate and os.path.exists(candidate):
            probe = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", candidate, "-c", "pass"]
            if subprocess.run(probe, capture_output=True, timeout=30).returncode == 0:
                return candidate
    return None


def test_unreadable_seal_reaches_diagnose(built: Built) -> None:
    """EACCES reading the seal (as nobody: root ignores modes), under a 3.11 with only the
    standard library: exit 8 and the diagnosis, not a traceback."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv")
    python = _python_for_nobody()
    if python is None:
        pytest.skip("no python3.11 that nobody can run (a pyenv shim under /root is not)")
    base = Path(tempfile.mkdtemp(prefix="volenv-eacces-"))
    try:
        base.chmod(0o755)
        root = base / "volenv"
        subprocess.run(["cp", "-a", str(built.root), str(root)], check=True)
        (root / built.paths["seal"]).chmod(0o000)
        env = {**base_env(), "PYTHONPATH": str(REPO / "src"), "HOME": str(base)}
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-m", "volenv"]
        for extra in ([], ["--diagnose"]):
            argv = ["--root", str(root), "run", "--on-missing", "fail", *extra, "--env", "app", "--", "true"]
            proc = subprocess.run(
                [*nobody, *argv], capture_output=True, text=True, env=env, cwd=base, timeout=60
            )
            assert proc.returncode == 8, proc.stderr
            assert "Traceback" not in proc.stderr and "seal.json" in proc.stderr, proc.stderr
            assert ("DIAGNOSIS" in proc.stderr) == bool(extra), proc.stderr
    finally:
        shutil.rmtree(base)


def test_markup_in_arguments_and_bad_rollback_target(built: Built, driver: Driver, tmp_path: Path) -> None:
    root = _copy(built, tmp_path)
    code, _, err = driver.run("--root", root, "history", "[/x]")
    assert code == 2 and "[/x]" in err, err
    code, _, err = driver.run("--root", root, "rollback", "app", "--to", "nosuch", "--lock-timeout", "5")
    assert code == 2 and "nosuch" in err, err
    code, _, err = driver.run(
        "--root", root, "rollback", "app", "--to", "app-0123456789ab", "--lock-timeout", "5"
    )
    assert code == 2 and "no longer exists" in err, err


def _reseal(seal_path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite a seal with a valid self digest, as a crafted (pulled) seal would have."""
    from volenv.store.sealcheck import seal_self_digest

    seal = json.loads(seal_path.read_text())
    edit(seal)
    seal["self_sha256"] = seal_self_digest(seal)
    seal_path.write_text(json.dumps(seal))


def test_env_sh_refuses_an_injected_variable_name(built: Built, driver: Driver, tmp_path: Path) -> None:
    root = _copy(built, tmp_path)
    evil = "X=1;touch /tmp/INJECTED;Y"
    _reseal(root / built.paths["seal"], lambda s: s["manifest"]["env"].update({evil: "v"}))
    code, out, err = driver.run("--root", root, "env", "--env", "app")
    assert code == 4 and evil in err and out == "", err
    code, out, err = driver.run(
        "--root", root, "run", "--on-missing", "fail", "--env", "app", "--", "true", fresh=True
    )
    assert code == 4 and evil in err, err


def test_env_sh_quotes_values(built: Built, driver: Driver, tmp_path: Path) -> None:
    root = _copy(built, tmp_path)
    value = "$(touch INJECTED)'\";`id`"
    _reseal(root / built.paths["seal"], lambda s: s["manifest"]["env"].update({"GOOD": value}))
    code, out, err = driver.run("--root", root, "env", "--env", "app")
    assert code == 0, err
    proc = subprocess.run(
        ["sh", "-c", out + '\nprintf %s "$GOOD"'], capture_output=True, text=True, cwd=tmp_path
    )
    assert proc.stdout == value and not (tmp_path / "INJECTED").exists()


def test_rollback_to_repairs_a_damaged_current_pointer(built: Built, driver: Driver, tmp_path: Path) -> None:
    root = _copy(built, tmp_path)
    current = root / "envs/app/current"
    _damage(current, "truncated")
    code, _, err = driver.run(
        "--root", root, "run", "--on-missing", "fail", "--env", "app", "--", "true", fresh=True
    )
    # the hint names the snapshot that is there, with the root used: pasted, it repairs
    assert code == 4 and f"volenv --root {root} rollback app --to {built.current}" in err, err
    code, _, err = driver.run("--root", root, "rollback", "app", "--to", built.current, "--lock-timeout", "5")
    assert code == 0, err
    assert json.loads(current.read_text())["snapshot"] == built.current
    code, _, err = driver.run(
        "--root", root, "run", "--on-missing", "fail", "--env", "app", "--", "true", fresh=True
    )
    assert code == 0, err
    _damage(current, "directory")  # not a file volenv wrote: refused, left as it is
    code, _, err = driver.run("--root", root, "rollback", "app", "--to", built.current, "--lock-timeout", "5")
    assert code == 4 and str(current) in err, err
    assert (current / "x").is_dir()


def test_run_with_build_policy_rewrites_a_damaged_index_entry(built: Built, tmp_path: Path) -> None:
    root = _copy(built, tmp_path)
    index = root / built.paths["index"]
    _damage(index, "truncated")
    r = volenv("--root", root, "run", "--manifest", built.manifest, "--", "true")
    assert r.returncode == 0, r.stderr
    assert json.loads(index.read_text())["snapshot"] == built.current
    assert sorted(p.name for p in (root / "envs/app/snapshots").iterdir()) == sorted(
        [built.current, built.old]
    )
