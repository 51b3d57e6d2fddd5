"""Issue 9: push and pull sealed snapshots and models through S3 (moto's real server behind a
counting proxy, on 127.0.0.1) and file://; never the internet. Every push here is signed and
every pull trusts that key (issue 14); tests/test_hostile_bucket.py covers the refusals."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import moto_s3, snapshot_of, staging_left, volenv, write_manifest
from throttle import relay

S3_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}


@pytest.fixture(autouse=True)
def signing_key(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """push signs with a key of its own; pull and list --remote trust exactly that key."""
    key_file = tmp_path_factory.mktemp("keys") / "pusher.key"
    r = volenv("key", "generate", "--name", "pusher", "--out", key_file)
    assert r.returncode == 0, r.stderr
    monkeypatch.setenv("VOLENV_SIGNING_KEY", str(key_file))
    monkeypatch.setenv("VOLENV_TRUSTED_KEYS", r.stdout.strip())


@dataclass
class S3:
    endpoint: str
    upstream: str
    calls: Counter[str] = field(default_factory=Counter)

    def env(self) -> dict[str, str]:
        return {**S3_ENV, "AWS_ENDPOINT_URL": self.endpoint}

    def count(self, method: str, part: str) -> int:
        return sum(n for (k, n) in self.calls.items() if k.startswith(method + " ") and part in k)


@pytest.fixture
def s3() -> Iterator[S3]:
    with moto_s3() as moto_url:
        yield from _counting_proxy(S3("", moto_url.removeprefix("http://")))


def _counting_proxy(state: S3) -> Iterator[S3]:
    """A reverse proxy in front of moto that counts every request by method and path."""

    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a: object) -> None:
            pass

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            state.calls[f"{self.command} {self.path.split('?')[0]}"] += 1
            relay(self, state.upstream, body)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

    server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    state.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        import boto3

        boto3.client(
            "s3",
            endpoint_url=state.endpoint,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        ).create_bucket(Bucket="vol-b")
        state.calls.clear()
        yield state
    finally:
        server.shutdown()
        server.server_close()


def _events(root: Path, env: str) -> str:
    p = root / "logs" / env / "events.jsonl"
    return p.read_text() if p.exists() else ""


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_push_pull_onto_another_volume(
    tmp_path: Path, wheelhouse: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    a = tmp_path / "dc1" / "volenv"
    b = tmp_path / "elsewhere" / "dc2" / "volenv"
    env: dict[str, str] = {}
    if kind == "s3":
        s3: S3 = request.getfixturevalue("s3")
        url, env = "s3://vol-b/replica", s3.env()
    else:
        url = f"file://{tmp_path / 'bucket'}"
    m = write_manifest(
        tmp_path, "app", ["beta==1.0"], find_links=wheelhouse, extra='[activate]\nsmoke-imports = ["beta"]\n'
    )
    assert volenv("--root", a, "sync", m).returncode == 0
    r = volenv("--root", a, "--json", "push", "app", "--to", url, env=env)
    assert r.returncode == 0, r.stderr
    pushed = r.json()
    assert pushed["packs_sent"] == pushed["packs_total"] >= 3
    listing = volenv("--root", a, "--json", "list", "--remote", url, env=env).json()
    assert listing["envs"] == {"app": pushed["snapshot"]}
    r = volenv("--root", b, "--json", "pull", "app", "--from", url, env=env)
    assert r.returncode == 0, r.stderr
    assert r.json()["action"] == "pulled" and r.json()["snapshot"] == pushed["snapshot"]
    # B never resolved or installed anything: no uv cache, no build
    assert not any((b / "cache" / "uv").iterdir()) if (b / "cache" / "uv").exists() else True
    assert "build-start" not in _events(b, "app") and '"pull"' in _events(b, "app")
    assert volenv("--root", b, "verify", "--all", "--level", "full").returncode == 0
    run = volenv(
        "--root", b, "run", "--manifest", m, "--", "python", "-c", "import beta, sys; print(sys.prefix)"
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().startswith(str(b))
    assert staging_left(b) == []


def test_incremental_push_and_pull_move_only_changed_packs(tmp_path: Path, wheelhouse: Path, s3: S3) -> None:
    a, b = tmp_path / "a" / "volenv", tmp_path / "b" / "volenv"
    url = "s3://vol-b/inc"
    m1 = write_manifest(tmp_path / "1", "app", ["beta==1.0"], find_links=wheelhouse)
    m2 = write_manifest(tmp_path / "2", "app", ["beta==1.0", "gamma==1.0"], find_links=wheelhouse)
    assert volenv("--root", a, "sync", m1).returncode == 0
    first = volenv("--root", a, "--json", "push", "app", "--to", url, env=s3.env()).json()
    assert volenv("--root", b, "pull", "app", "--from", url, env=s3.env()).returncode == 0
    assert volenv("--root", a, "sync", m2).returncode == 0
    s3.calls.clear()
    second = volenv("--root", a, "--json", "push", "app", "--to", url, env=s3.env()).json()
    pack_puts = s3.count("PUT", "/packs/")
    # gamma's pack, plus the venv rest and metadata packs (their RECORD/record changed)
    assert second["packs_sent"] == pack_puts <= 3, (second, s3.calls)
    assert second["packs_total"] == first["packs_total"] + 1
    s3.calls.clear()
    pulled = volenv("--root", b, "--json", "pull", "app", "--from", url, env=s3.env()).json()
    assert pulled["packs_sent"] == s3.count("GET", "/packs/") == second["packs_sent"]
    assert snapshot_of(b, "app") == second["snapshot"]
    r = volenv("--root", b, "run", "--env", "app", "--", "python", "-c", "import gamma, beta")
    assert r.returncode == 0, r.stderr


def test_corrupted_pack_in_bucket_fails_and_leaves_nothing(tmp_path: Path, wheelhouse: Path) -> None:
    a, b = tmp_path / "a" / "volenv", tmp_path / "b" / "volenv"
    bucket = tmp_path / "bucket"
    url = f"file://{bucket}"
    m = write_manifest(tmp_path, "app", ["beta==1.0"], find_links=wheelhouse)
    assert volenv("--root", a, "sync", m).returncode == 0
    sid = volenv("--root", a, "--json", "push", "app", "--to", url).json()["snapshot"]
    doc = json.loads((bucket / "snapshots" / f"{sid}.json").read_text())
    victim = next(p for p in doc["packs"] if p["group"].startswith("beta"))
    blob = bucket / "packs" / f"{victim['id']}.tar.zst"
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x55
    blob.write_bytes(bytes(data))
    r = volenv("--root", b, "pull", "app", "--from", url)
    assert r.returncode == 4, r.stderr
    assert "damaged" in r.stderr
    assert not (b / "envs" / "app" / "snapshots").exists() or not os.listdir(b / "envs" / "app" / "snapshots")
    assert not (b / "packs" / "blobs" / f"{victim['id']}.tar.zst").exists()
    assert staging_left(b) == []
    assert volenv("--root", b, "run", "--on-missing", "fail", "--manifest", m, "--", "true").returncode in (
        3,
        8,
    )


def test_pull_killed_midway_then_completes(tmp_path: Path, wheelhouse: Path) -> None:
    a, b = tmp_path / "a" / "volenv", tmp_path / "b" / "volenv"
    url = f"file://{tmp_path / 'bucket'}"
    m = write_manifest(tmp_path, "app", ["beta==1.0"], find_links=wheelhouse)
    assert volenv("--root", a, "sync", m).returncode == 0
    assert volenv("--root", a, "push", "app", "--to", url).returncode == 0
    for step in ("pull-unpack", "pull-verify", "pull-commit"):
        r = volenv("--root", b, "pull", "app", "--from", url, env={"VOLENV_FAULT": f"{step}:kill"})
        assert r.returncode == -signal.SIGKILL
        snaps = b / "envs" / "app" / "snapshots"
        assert not snaps.exists() or not os.listdir(snaps), step
        assert not (b / "envs" / "app" / "current").exists()
    r = volenv("--root", b, "--json", "pull", "app", "--from", url)
    assert r.returncode == 0, r.stderr
    assert staging_left(b) == []
    assert volenv("--root", b, "verify", "--all", "--level", "full").returncode == 0


def test_models_travel_with_the_snapshot(tmp_path: Path, wheelhouse: Path) -> None:
    import http.server

    data = os.urandom(512 * 1024)

    class H(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        sha = hashlib.sha256(data).hexdigest()
        extra = f'[[models]]\nname = "voc"\nurl = "http://127.0.0.1:{srv.server_address[1]}/voc.bin"\nsha256 = "{sha}"\n'
        m = write_manifest(tmp_path, "app", ["alpha==1.0"], find_links=wheelhouse, extra=extra)
        a, b = tmp_path / "a" / "volenv", tmp_path / "b" / "volenv"
        assert volenv("--root", a, "sync", m).returncode == 0
    finally:
        srv.shutdown()
        srv.server_close()
    url = f"file://{tmp_path / 'bucket'}"
    assert volenv("--root", a, "--json", "push", "app", "--to", url).json()["models"] == 1
    r = volenv("--root", b, "--json", "pull", "app", "--from", url)
    assert r.returncode == 0, r.stderr
    assert volenv("--root", b, "models", "verify", "--level", "full").returncode == 0
    out = volenv(
        "--root",
        b,
        "run",
        "--manifest",
        m,
        "--",
        "python",
        "-c",
        "import os; print(os.environ['VOLENV_MODEL_VOC'])",
    )
    assert Path(out.stdout.strip()).read_bytes() == data
    shutil.rmtree(tmp_path / "bucket")
