"""Shared fixtures: tiny wheels, a local package index that counts downloads, manifests, and a
helper that runs the real CLI in a subprocess."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from wheelfactory import make_wheel

REPO = Path(__file__).resolve().parent.parent


def _many_modules(prefix: str, n: int) -> dict[str, str]:
    files = {f"{prefix}/__init__.py": "VALUE = 1\n"}
    for i in range(n):
        files[f"{prefix}/mod{i}.py"] = f"X = {i}\n"
    return files


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("wheels")
    make_wheel(
        d,
        "alpha",
        "1.0",
        files={"alpha/__init__.py": "def main():\n    print('alpha says hi')\n"},
        scripts={"alpha-cli": "alpha:main"},
    )
    make_wheel(d, "alpha", "2.0", files={"alpha/__init__.py": "def main():\n    print('alpha 2')\n"})
    make_wheel(d, "beta", "1.0", requires=["alpha>=1"], files=_many_modules("beta", 20))
    make_wheel(d, "gamma", "1.0")
    make_wheel(d, "delta", "1.0", requires=["alpha<2"])
    make_wheel(d, "needs-new-alpha", "1.0", requires=["alpha>=2"])
    make_wheel(d, "explodes", "1.0", files={"explodes/__init__.py": "raise RuntimeError('boom at import')\n"})
    return d


@dataclass
class Index:
    url: str
    hits: Counter[str]

    def wheel_downloads(self) -> Counter[str]:
        return Counter({k: v for k, v in self.hits.items() if k.endswith(".whl")})


@pytest.fixture
def package_index(wheelhouse: Path) -> Iterator[Index]:
    """A PEP 503 simple index on 127.0.0.1 serving the wheelhouse, counting every GET."""
    with serve_index(wheelhouse) as index:
        yield index


@contextmanager
def serve_index(wheelhouse: Path) -> Iterator[Index]:
    """A PEP 503 simple index on 127.0.0.1 serving the wheels in a folder, counting every GET."""
    hits: Counter[str] = Counter()
    wheels = sorted(wheelhouse.glob("*.whl"))

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def do_GET(self) -> None:
            self._serve(head=False)

        def _serve(self, head: bool) -> None:
            path = self.path.split("?")[0]
            if not head:
                hits[path] += 1
            parts = [p for p in path.split("/") if p]
            if parts[:1] == ["simple"] and len(parts) == 2:
                project = parts[1]
                links = [
                    f'<a href="/files/{w.name}">{w.name}</a>'
                    for w in wheels
                    if w.name.split("-")[0].replace("_", "-") == project
                ]
                if not links:
                    self.send_error(404)
                    return
                body = ("<html><body>" + "".join(links) + "</body></html>").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Cache-Control", "max-age=600, public")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)
                return
            if parts[:1] == ["files"] and len(parts) == 2 and (wheelhouse / parts[1]).is_file():
                data = (wheelhouse / parts[1]).read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                # like PyPI's file host: wheels are immutable
                self.send_header("Cache-Control", "max-age=365000000, immutable, public")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not head:
                    self.wfile.write(data)
                return
            self.send_error(404)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Index(f"http://127.0.0.1:{server.server_address[1]}/simple", hits)
    finally:
        server.shutdown()
        server.server_close()


def write_manifest(
    directory: Path,
    name: str = "app",
    requirements: list[str] | None = None,
    *,
    find_links: Path | None = None,
    index_url: str | None = None,
    extra: str = "",
    filename: str | None = None,
    manifest_id: str | None = "",
) -> Path:
    """A manifest of env `name`. Its `id` (`manifest_id`; "" gives `tests/NAME`, None none)
    makes the manifests a test writes in several folders for one env versions of one project,
    not projects that would share the env (`sync` refuses those: test_env_identity.py)."""
    directory.mkdir(parents=True, exist_ok=True)
    reqs = json.dumps(requirements if requirements is not None else ["alpha==1.0"])
    lines = [f'name = "{name}"', 'python = "3.11"', f"requirements = {reqs}", "", "[index]"]
    if manifest_id is not None:
        lines.insert(0, f"id = {json.dumps(manifest_id or f'tests/{name}')}")
    if index_url:
        lines.append(f'url = "{index_url}"')
    else:
        lines.append("no-index = true")
    if find_links:
        lines.append(f'find-links = ["{find_links}"]')
    text = "\n".join(lines) + "\n" + textwrap.dedent(extra)
    path = directory / (filename or f"{name}.toml")
    path.write_text(text)
    return path


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, object]:
        data = json.loads(self.stdout)
        assert isinstance(data, dict)
        return data


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("VOLENV_ROOT", "VIRTUAL_ENV", "VOLENV_FAULT", "PYTHONDONTWRITEBYTECODE"):
        env.pop(var, None)
    env["NO_COLOR"] = "1"
    env["VOLENV_NO_PROGRESS"] = "1"
    return env


def volenv(
    *args: str | Path, env: dict[str, str] | None = None, timeout: float = 300, cwd: Path | None = None
) -> Result:
    full_env = base_env()
    if env:
        full_env.update(env)
    proc = subprocess.run(
        [sys.executable, "-m", "volenv", *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=cwd,
    )
    collect_hints(proc.stdout + proc.stderr, [str(a) for a in args], full_env)
    return Result(proc.returncode, proc.stdout, proc.stderr)


#: every `hint:` and `fix:` line the suite's volenv runs printed, with the argv and environment
#: that produced it: tests/test_zz_hints.py (which runs last) checks each names a command that
#: parses as printed (issue 25: hints work when pasted)
HINTS: list[tuple[str, list[str], dict[str, str]]] = []


def collect_hints(text: str, argv: list[str], env: dict[str, str]) -> None:
    for line in text.splitlines():
        stripped = line.strip()
        for prefix in ("hint: ", "fix: ", "volenv: fix: ", "volenv: fix the snapshot: "):
            if stripped.startswith(prefix):
                keep = {k: env[k] for k in ("VOLENV_ROOT", "HOME", "XDG_DATA_HOME") if k in env}
                HINTS.append((stripped[len(prefix) :], argv, keep))
                break


def volenv_popen(*args: str | Path, env: dict[str, str] | None = None, **kw: object) -> subprocess.Popen[str]:
    full_env = base_env()
    if env:
        full_env.update(env)
    # Ctrl-C reaches volenv as from a terminal, also when this suite runs as a background job
    # (.ci/run's halves), where SIGINT is inherited as ignored
    kw.setdefault("preexec_fn", _sigint_default)
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", "volenv", *map(str, args)], env=full_env, text=True, **kw
    )


def _sigint_default() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "volume" / "volenv"


def snapshot_of(root: Path, env: str) -> str:
    data = json.loads((root / "envs" / env / "current").read_text())
    return str(data["snapshot"])


def staging_left(root: Path) -> list[str]:
    """Build leftovers in staging (the CACHEDIR.TAG is the directory's own)."""
    d = root / "staging"
    return sorted(p.name for p in d.iterdir() if p.name != "CACHEDIR.TAG") if d.exists() else []


def pypi_reachable() -> bool:
    """Tests marked `pypi` skip (with a reason) where PyPI cannot be reached."""
    try:
        urllib.request.urlopen("https://pypi.org/simple/six/", timeout=8)
        return True
    except OSError:
        return False


@contextmanager
def serve_bytes(data: bytes, path: str = "/w.bin") -> Iterator[str]:
    """A model server on 127.0.0.1: `data` at `path` whatever the query string (a presigned
    URL's server), 404 elsewhere. Yields the server's base URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != path:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def moto_s3() -> Iterator[str]:
    """moto's standalone S3 server on 127.0.0.1 (a real S3 endpoint), until the block ends."""
    exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
    if not os.path.exists(exe):
        pytest.skip("moto[server] not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(url + "/", timeout=2)
                break
            except OSError as exc:
                if getattr(exc, "code", None):  # an HTTP error: the server answers
                    break
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


# The fast tier (`pytest -m "not slow and not container and not corpus and not mounts"`, under
# 5 minutes on a 2-core machine) leaves out these whole files: each takes 20 s to 2 min (real
# builds of many envs, SIGKILLs, concurrent starts, bucket round trips). CI runs them all.
SLOW_FILES = frozenset(
    {
        "test_contain.py",
        "test_container.py",
        "test_damage.py",
        "test_fetch.py",
        "test_gc.py",
        "test_hostile_bucket.py",
        "test_hostile_volume.py",
        "test_inputs.py",
        "test_integrity.py",
        "test_models.py",
        "test_progress_uv.py",
        "test_pull_parallel.py",
        "test_push_parallel.py",
        "test_replicate.py",
        "test_skeleton.py",
        "test_stale_inputs.py",
        "test_start_check.py",
        "test_supervise.py",
        "test_symlink_traps.py",
    }
)


# .ci/run runs the suite as two halves at once (a 2-core machine; most tests wait on
# subprocesses): `-m ci_a` (the image, the real stacks, the production environment, mounts and
# a few long files) and `-m "not ci_a"`, each file wholly in one half. test_zz_hints runs in
# both (marked `hints`): each half checks the hints its own tests printed.
CI_GROUP_A = frozenset(
    {
        "test_concurrency.py",
        "test_corpus.py",
        "test_damage.py",
        "test_docs.py",
        "test_gc.py",
        "test_image.py",
        "test_init_projects.py",
        "test_materialize.py",
        "test_production_env.py",
        "test_worker_e2e.py",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)
        if (
            item.path.name in CI_GROUP_A
            or item.get_closest_marker("container")
            or item.get_closest_marker("corpus")
        ):
            item.add_marker(pytest.mark.ci_a)
        if item.path.name == "test_zz_hints.py":
            item.add_marker(pytest.mark.hints)
