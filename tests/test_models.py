"""Issue 6: models on the volume — HTTP fetch with resume and checksums, one download for many
fetchers, the Hub cache layout through a local fake Hub, offline activation, verify and GC."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import volenv, volenv_popen, write_manifest

REV = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class FileServer:
    base: str
    files: dict[str, bytes]
    gets: Counter[str] = field(default_factory=Counter)
    served: Counter[str] = field(default_factory=Counter)  # body bytes sent per file
    ranges: list[str] = field(default_factory=list)
    drop_first: set[str] = field(default_factory=set)
    lie: set[str] = field(default_factory=set)
    delay: float = 0.0
    auth: str | None = None  # the Authorization header every GET must carry, when set


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    state = FileServer("", {})

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a: object) -> None:
            pass

        def do_GET(self) -> None:
            name = self.path.lstrip("/")
            if state.auth is not None and self.headers.get("Authorization") != state.auth:
                self.send_error(401)
                return
            state.gets[name] += 1
            data = state.files.get(name)
            if data is None:
                self.send_error(404)
                return
            if name in state.lie:
                data = bytes(reversed(data))
            start, end = 0, len(data) - 1
            rng = self.headers.get("Range")
            if rng:
                state.ranges.append(rng)
                first, _, last = rng.split("=")[1].partition("-")
                start, end = int(first), min(end, int(last)) if last else end
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start : end + 1]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if state.delay:
                import time

                time.sleep(state.delay)
            if name in state.drop_first:
                state.drop_first.discard(name)
                state.served[name] += len(body) // 2
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            state.served[name] += len(body)
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def _model_manifest(
    tmp: Path, wheelhouse: Path, url: str, data: bytes, name: str = "weights", env: str = "app"
) -> Path:
    sha = hashlib.sha256(data).hexdigest()
    extra = f'[[models]]\nname = "{name}"\nurl = "{url}"\nsha256 = "{sha}"\nsize = {len(data)}\n'
    return write_manifest(tmp, env, ["alpha==1.0"], find_links=wheelhouse, extra=extra)


def test_url_model_fetched_and_exported(
    tmp_path: Path, root: Path, wheelhouse: Path, file_server: FileServer
) -> None:
    data = os.urandom(3 << 20)
    file_server.files["w/model.bin"] = data
    m = _model_manifest(tmp_path, wheelhouse, f"{file_server.base}/w/model.bin", data, name="tiny-weights")
    r = volenv("--root", root, "--json", "sync", m)
    assert r.returncode == 0, r.stderr
    states = r.json()["models"]
    assert states[0]["present"] and states[0]["action"] == "fetched"  # type: ignore[index]
    code = "import os, sys; p = os.environ['VOLENV_MODEL_TINY_WEIGHTS']; sys.stdout.write(p + '\\n' + os.environ['HF_HUB_OFFLINE'])"
    r = volenv("--root", root, "run", "--manifest", m, "--", "python", "-c", code)
    assert r.returncode == 0, r.stderr
    path, offline = r.stdout.splitlines()
    assert Path(path).read_bytes() == data and Path(path).is_relative_to(root / "models")
    assert offline == "1"
    # a second sync does not download again (parallel ranges fetched every byte once)
    assert volenv("--root", root, "sync", m).returncode == 0
    assert file_server.served["w/model.bin"] == len(data)
    listed = volenv("--root", root, "--json", "models", "list").json()
    assert listed["models"][0]["name"] == "tiny-weights"  # type: ignore[index]


def test_dropped_connection_resumes_and_wrong_bytes_publish_nothing(
    tmp_path: Path, root: Path, wheelhouse: Path, file_server: FileServer
) -> None:
    data = os.urandom(2 << 20)
    file_server.files["drop.bin"] = data
    file_server.drop_first.add("drop.bin")
    m = _model_manifest(tmp_path / "a", wheelhouse, f"{file_server.base}/drop.bin", data)
    r = volenv("--root", root, "models", "fetch", m)
    assert r.returncode == 0, r.stderr
    # the dropped request was resumed inside its chunk, not from the chunk's start
    starts = [int(r.split("=")[1].split("-")[0]) for r in file_server.ranges]
    assert any(s % (256 << 10) for s in starts), starts
    out = volenv(
        "--root",
        root,
        "run",
        "--manifest",
        m,
        "--",
        "python",
        "-c",
        "import os; print(os.environ['VOLENV_MODEL_WEIGHTS'])",
    )
    assert Path(out.stdout.strip()).read_bytes() == data

    bad = os.urandom(1 << 20)
    file_server.files["liar.bin"] = bad
    file_server.lie.add("liar.bin")
    m2 = _model_manifest(tmp_path / "b", wheelhouse, f"{file_server.base}/liar.bin", bad, name="liar")
    r = volenv("--root", root, "models", "fetch", m2)
    assert r.returncode == 9, r.stderr
    assert "does not match the pin" in r.stderr
    assert not list((root / "models" / "records").glob("liar.*"))
    liar_dir = root / "models" / "files" / "liar"
    assert not liar_dir.exists() or not any(p.is_file() for p in liar_dir.rglob("*"))
    # sync fails the same way, and a run does not export the model
    assert volenv("--root", root, "sync", m2).returncode == 9


def test_eight_concurrent_fetches_download_once(
    tmp_path: Path, root: Path, wheelhouse: Path, file_server: FileServer
) -> None:
    data = os.urandom(4 << 20)
    file_server.files["big.bin"] = data
    file_server.delay = 0.5
    m = _model_manifest(tmp_path, wheelhouse, f"{file_server.base}/big.bin", data)
    volenv("--root", root, "models", "fetch", "--help")
    procs = [
        volenv_popen("--root", root, "models", "fetch", m, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(8)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [r[1] for r in results]
    assert file_server.served["big.bin"] == len(data)  # one fetcher, every byte once
    rec = next((root / "models" / "records").glob("weights.*.json"))
    assert json.loads(rec.read_text())["files"][0]["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.fixture
def fake_hub() -> Iterator[tuple[str, dict[str, bytes], Counter[str]]]:
    """A local stand-in for the Hub's file endpoints: resolve (HEAD/GET), tree, revision."""
    files: dict[str, bytes] = {
        "config.json": json.dumps({"dim": 8, "layers": 2}).encode(),
        "model.safetensors": os.urandom(256 * 1024),
        "README.md": b"# tiny\n",
    }
    hits: Counter[str] = Counter()
    repo = "acme/tiny-model"

    def git_sha1(data: bytes) -> str:
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a: object) -> None:
            pass

        def _json(self, obj: object) -> None:
            body = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _file(self, head: bool) -> None:
            prefix = f"/{repo}/resolve/{REV}/"
            path = self.path.split("?")[0]
            if not path.startswith(prefix) or path[len(prefix) :] not in files:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            name = path[len(prefix) :]
            data = files[name]
            hits[name if not head else f"HEAD {name}"] += 1
            self.send_response(200)
            self.send_header("X-Repo-Commit", REV)
            if name.endswith(".safetensors"):
                self.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("ETag", f'"{git_sha1(data)}"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if not head:
                self.wfile.write(data)

        def do_HEAD(self) -> None:
            self._file(True)

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path.startswith(f"/api/models/{repo}/tree/"):
                entries = []
                for n, d in files.items():
                    e: dict[str, object] = {"type": "file", "path": n, "size": len(d), "oid": git_sha1(d)}
                    if n.endswith(".safetensors"):
                        e["lfs"] = {"oid": hashlib.sha256(d).hexdigest(), "size": len(d), "pointerSize": 130}
                    entries.append(e)
                self._json(entries)
            elif path.startswith(f"/api/models/{repo}/revision/"):
                self._json({"id": repo, "sha": REV, "siblings": [{"rfilename": n} for n in files]})
            else:
                self._file(False)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", files, hits
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def hub_wheels(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    from repack import repack_closure

    d = tmp_path_factory.mktemp("hubwheels")
    return d, repack_closure(d, "huggingface_hub")


def test_hf_model_from_fake_hub_used_offline_inside_snapshot(
    tmp_path: Path,
    root: Path,
    fake_hub: tuple[str, dict[str, bytes], Counter[str]],
    hub_wheels: tuple[Path, list[str]],
) -> None:
    endpoint, files, hits = fake_hub
    wheels, pins = hub_wheels
    extra = (
        "[[models]]\n"
        'name = "tiny-hub"\n'
        f'hf = {{ repo = "acme/tiny-model", revision = "{REV}", files = ["config.json", "model.safetensors"] }}\n'
        "[[models]]\n"
        'name = "tiny-all"\n'
        f'hf = {{ repo = "acme/tiny-model", revision = "{REV}", allow-patterns = ["*.md", "*.json"] }}\n'
    )
    m = write_manifest(tmp_path, "hub", pins, find_links=wheels, extra=extra)
    r = volenv(
        "--root", root, "sync", m, env={"HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_XET": "1"}, timeout=600
    )
    assert r.returncode == 0, r.stderr
    assert hits["model.safetensors"] == 1
    snap = root / "models" / "hf" / "hub" / "models--acme--tiny-model" / "snapshots" / REV
    assert (snap / "model.safetensors").read_bytes() == files["model.safetensors"]
    assert (snap / "README.md").exists()
    # the Hub layout's files are links into blobs/: a full verify hashes the blobs they name
    r = volenv("--root", root, "models", "verify", "--manifest", m, "--level", "full")
    assert r.returncode == 0, r.stdout + r.stderr
    code = (
        "import os, huggingface_hub as h\n"
        "assert os.environ['HF_HUB_OFFLINE'] == '1'\n"
        f"p = h.hf_hub_download('acme/tiny-model', 'model.safetensors', revision='{REV}')\n"
        "print(p)\n"
        "print(os.environ['VOLENV_MODEL_TINY_HUB'])\n"
    )
    # no HF_ENDPOINT and nothing listening: it must come from the volume's cache
    r = volenv(
        "--root",
        root,
        "run",
        "--manifest",
        m,
        "--",
        "python",
        "-c",
        code,
        env={"HF_ENDPOINT": "http://127.0.0.1:9"},
    )
    assert r.returncode == 0, r.stderr
    path, exported = r.stdout.splitlines()
    assert Path(path).read_bytes() == files["model.safetensors"]
    assert exported == str(snap)


def test_hf_model_local_copy_walks_from_the_models_dir_and_never_leaves_it(
    tmp_path: Path,
    root: Path,
    fake_hub: tuple[str, dict[str, bytes], Counter[str]],
    hub_wheels: tuple[Path, list[str]],
) -> None:
    """`local = "always"` on an HF model: its snapshot files (links into the repo's blobs/) are
    copied as regular files, several at a time, each reached from the models directory one
    component at a time. A snapshot link planted to climb out of the models directory, or to
    an absolute path outside it, is never copied, even with the recorded bytes there: a warning,
    and the worker reads the volume's own path."""
    endpoint, files, _hits = fake_hub
    wheels, pins = hub_wheels
    extra = (
        "[[models]]\n"
        'name = "tiny-hub"\n'
        f'hf = {{ repo = "acme/tiny-model", revision = "{REV}", allow-patterns = ["*"] }}\n'
        'local = "always"\n'
    )
    m = write_manifest(tmp_path, "hub", pins, find_links=wheels, extra=extra)
    r = volenv(
        "--root", root, "sync", m, env={"HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_XET": "1"}, timeout=600
    )
    assert r.returncode == 0, r.stderr
    snap = root / "models" / "hf" / "hub" / "models--acme--tiny-model" / "snapshots" / REV
    assert all((snap / n).is_symlink() for n in files)
    code = "import os; print(os.environ['VOLENV_MODEL_TINY_HUB'])"
    run = ("--root", root, "run", "--manifest", m, "--", "python", "-c", code)
    r = volenv(*run, env={"VOLENV_LOCAL_DIR": str(tmp_path / "local")})
    assert r.returncode == 0, r.stderr
    copy = Path(r.stdout.strip())
    assert copy.is_relative_to(tmp_path / "local") and "copied" in r.stderr, r.stderr
    for name, data in files.items():
        assert not (copy / name).is_symlink() and (copy / name).read_bytes() == data

    outside = tmp_path / "outside" / "config.json"
    outside.parent.mkdir()
    outside.write_bytes(files["config.json"])  # the recorded bytes, outside the models directory
    climb = os.path.relpath(outside, snap)
    for n, target in enumerate([climb, str(outside)]):
        (snap / "config.json").unlink()
        (snap / "config.json").symlink_to(target)
        r = volenv(*run, env={"VOLENV_LOCAL_DIR": str(tmp_path / f"local{n}")})
        assert r.returncode == 0, r.stderr
        assert Path(r.stdout.strip()) == snap, r.stderr
        assert "resolves outside the volume's models directory" in r.stderr, r.stderr
        assert not [p for p in (tmp_path / f"local{n}").rglob("*") if p.is_file()]


def test_models_verify_and_gc(tmp_path: Path, root: Path, wheelhouse: Path, file_server: FileServer) -> None:
    data = os.urandom(1 << 20)
    other = os.urandom(1 << 20)
    file_server.files["a.bin"] = data
    file_server.files["b.bin"] = other
    m = _model_manifest(tmp_path / "a", wheelhouse, f"{file_server.base}/a.bin", data, name="keepme")
    assert volenv("--root", root, "sync", m).returncode == 0
    assert volenv("--root", root, "models", "verify", "--level", "full").returncode == 0
    path = next((root / "models" / "files" / "keepme").rglob("a.bin"))
    st = path.stat()
    raw = bytearray(path.read_bytes())
    raw[100] ^= 0xFF
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert volenv("--root", root, "models", "verify", "--level", "stat").returncode == 0
    r = volenv("--root", root, "--json", "models", "verify", "--level", "full")
    assert r.returncode == 4
    assert r.json()["report"]["problems"][0]["kind"] == "content-changed"  # type: ignore[index]
    path.write_bytes(data)

    # a model only an old, collectable snapshot's manifest referenced
    old = _model_manifest(
        tmp_path / "b", wheelhouse, f"{file_server.base}/b.bin", other, name="dropme", env="old"
    )
    assert volenv("--root", root, "sync", old).returncode == 0
    new_old = write_manifest(tmp_path / "c", "old", ["gamma==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", new_old).returncode == 0
    dry = volenv("--root", root, "--json", "gc", "--keep", "1", "--keep-within", "0s", "--dry-run").json()
    models = {
        Path(i["path"]).parts[-2] if "files" in i["path"] else i["path"]: i
        for i in dry["result"]["plan"]["items"]
        if i["kind"] == "model"
    }  # type: ignore[index]
    assert models["dropme"]["action"] == "remove" and models["keepme"]["action"] == "keep"
    assert (root / "models" / "files" / "dropme").exists()
    r = volenv("--root", root, "gc", "--keep", "1", "--keep-within", "0s", "--yes")
    assert r.returncode == 0, r.stderr
    assert not list((root / "models" / "records").glob("dropme.*"))
    assert not any((root / "models" / "files" / "dropme").rglob("*.bin"))
    assert list((root / "models" / "records").glob("keepme.*"))
    assert volenv("--root", root, "models", "verify", "--level", "full").returncode == 0
