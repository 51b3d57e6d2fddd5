"""Issue 17 (item 3): `push` uploads several objects at once and a large one as a multipart
upload whose parts go in parallel, with the same adaptive stream count as pull; every object
is still checked before it is sent, and the snapshot's document is written only after every
pack and model file is complete. moto's real S3 server, behind a loopback proxy that limits
each connection's upload rate (tests/throttle.py), and real file:// buckets."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from conftest import moto_s3, serve_bytes, snapshot_of, volenv, volenv_popen, write_manifest
from throttle import ThrottledProxy, relay
from wheelfactory import make_wheel

MB = 1_000_000
BIG = 20 * 1024 * 1024  # one pack of ~20 MiB: three parts of at most 8 MiB
WEIGHTS = os.urandom(9 * 1024 * 1024)  # a model file of two parts
S3_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}


@dataclass
class Origin:
    root: Path  # volume A: the synced snapshot, packed
    snapshot: str
    env: dict[str, str]  # signing and trusted keys


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Origin:
    tmp = tmp_path_factory.mktemp("pushpar")
    wheels = tmp / "wheels"
    make_wheel(
        wheels, "bigdata", "1.0", files={"bigdata/__init__.py": "", "bigdata/blob.bin": os.urandom(BIG)}
    )
    for i in range(8):
        files = {f"small{i}/__init__.py": f"N = {i}\n"}
        files.update({f"small{i}/m{j}.py": f"V = {j}\n" * 50 for j in range(20)})
        make_wheel(wheels, f"small{i}", "1.0", files=files)
    key = tmp / "k.key"
    pub = volenv("key", "generate", "--name", "pusher", "--out", key)
    assert pub.returncode == 0, pub.stderr
    env = {"VOLENV_SIGNING_KEY": str(key), "VOLENV_TRUSTED_KEYS": pub.stdout.strip()}
    sha = hashlib.sha256(WEIGHTS).hexdigest()
    with serve_bytes(WEIGHTS) as server:
        extra = f'[[models]]\nname = "weights"\nurl = "{server}/w.bin"\nsha256 = "{sha}"\n'
        reqs = ["bigdata==1.0", *(f"small{i}==1.0" for i in range(8))]
        m = write_manifest(tmp, "app", reqs, find_links=wheels, extra=extra)
        a = tmp / "a" / "volenv"
        r = volenv("--root", a, "sync", "--pack", m, env=env)
        assert r.returncode == 0, r.stderr
    return Origin(a, snapshot_of(a, "app"), env)


def _s3(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


@pytest.fixture
def moto(origin: Origin) -> Iterator[str]:
    with moto_s3() as url:
        _s3(url).create_bucket(Bucket="vol")
        yield url


def _keys(endpoint: str, prefix: str = "p/") -> list[str]:
    return [o["Key"] for o in _s3(endpoint).list_objects_v2(Bucket="vol", Prefix=prefix).get("Contents", [])]


def _pulls_and_verifies(tmp_path: Path, origin: Origin, url: str, env: dict[str, str]) -> None:
    b = tmp_path / "b" / "volenv"
    r = volenv("--root", b, "--json", "pull", "app", "--from", url, env={**origin.env, **env})
    assert r.returncode == 0, r.stderr
    assert r.json()["snapshot"] == origin.snapshot
    assert volenv("--root", b, "verify", "--all", "--level", "full").returncode == 0
    assert volenv("--root", b, "models", "verify", "--level", "full").returncode == 0


# ------------------------------------------------------------------ parallel, multipart


def test_push_sends_several_objects_at_once_and_big_ones_in_parts(
    tmp_path: Path, origin: Origin, moto: str
) -> None:
    with ThrottledProxy(moto, 1000 * MB, up_rate=4 * MB) as proxy:
        env = {**S3_ENV, **origin.env, "AWS_ENDPOINT_URL": proxy.url}
        r = volenv("--root", origin.root, "--json", "push", "app", "--to", "s3://vol/p", env=env)
        assert r.returncode == 0, r.stderr
        # several connections were uploading at once (one stream at a time: 1)
        assert proxy.max_receiving >= 3, proxy.max_receiving
    pushed = r.json()
    assert pushed["packs_sent"] == pushed["packs_total"] >= 10
    s3 = _s3(moto)
    etags = {k: s3.head_object(Bucket="vol", Key=k)["ETag"] for k in _keys(moto)}
    # a multipart object's ETag ends in -<parts>: the big pack in 3 parts, the model file in 2
    assert sum(e.endswith('-3"') for k, e in etags.items() if k.startswith("p/packs/")) == 1, etags
    weights = f"p/model-files/{hashlib.sha256(WEIGHTS).hexdigest()}"
    assert etags[weights].endswith('-2"'), etags[weights]
    assert s3.get_object(Bucket="vol", Key=weights)["Body"].read() == WEIGHTS
    assert not s3.list_multipart_uploads(Bucket="vol").get("Uploads")
    _pulls_and_verifies(tmp_path, origin, "s3://vol/p", {**S3_ENV, "AWS_ENDPOINT_URL": moto})
    # a second push finds every object there and sends nothing
    r = volenv(
        "--root",
        origin.root,
        "--json",
        "push",
        "app",
        "--to",
        "s3://vol/p",
        env={**env, "AWS_ENDPOINT_URL": moto},
    )
    assert r.returncode == 0, r.stderr
    assert r.json()["packs_sent"] == 0 and r.json()["bytes_sent"] == 0


def test_pinned_single_stream_push_sends_one_object_at_a_time(origin: Origin, moto: str) -> None:
    with ThrottledProxy(moto, 1000 * MB, up_rate=40 * MB) as proxy:
        env = {**S3_ENV, **origin.env, "AWS_ENDPOINT_URL": proxy.url, "VOLENV_STREAMS": "1"}
        r = volenv("--root", origin.root, "push", "app", "--to", "s3://vol/p", env=env)
        assert r.returncode == 0, r.stderr
        assert proxy.max_receiving <= 2  # one stream (a closing connection may overlap the next)


def test_file_push_in_parts_pulls_and_verifies(tmp_path: Path, origin: Origin) -> None:
    bucket = tmp_path / "bucket"
    r = volenv("--root", origin.root, "push", "app", "--to", f"file://{bucket}", env=origin.env)
    assert r.returncode == 0, r.stderr
    weights = bucket / "model-files" / hashlib.sha256(WEIGHTS).hexdigest()
    assert weights.read_bytes() == WEIGHTS
    assert not [p for p in bucket.rglob(".*")]  # no temp file left
    _pulls_and_verifies(tmp_path, origin, f"file://{bucket}", {})


# ------------------------------------------------------------------ kills and failures


def _no_document(bucket: Path) -> None:
    for d in ("snapshots", "refs", "models"):
        assert not (bucket / d).exists() or not os.listdir(bucket / d), d


def test_a_push_killed_after_a_part_leaves_no_document_then_completes(tmp_path: Path, origin: Origin) -> None:
    """SIGKILL right after the first part went out (VOLENV_FAULT=push-part:kill): the bucket
    holds some packs and no snapshot document, ref or model record; a new push completes it."""
    bucket = tmp_path / "bucket"
    url = f"file://{bucket}"
    r = volenv(
        "--root",
        origin.root,
        "push",
        "app",
        "--to",
        url,
        env={**origin.env, "VOLENV_FAULT": "push-part:kill"},
    )
    assert r.returncode == -signal.SIGKILL, r.stderr
    _no_document(bucket)
    listing = volenv("--json", "list", "--remote", url, env=origin.env)
    assert listing.returncode == 0 and listing.json()["envs"] == {} and listing.json()["snapshots"] == []
    r = volenv("--root", origin.root, "push", "app", "--to", url, env=origin.env)
    assert r.returncode == 0, r.stderr
    _pulls_and_verifies(tmp_path, origin, url, {})


def test_a_push_killed_mid_upload_leaves_no_document_then_completes(
    tmp_path: Path, origin: Origin, moto: str
) -> None:
    """A real SIGKILL while several uploads are in flight (the big pack's parts among them)."""
    with ThrottledProxy(moto, 1000 * MB, up_rate=2 * MB) as proxy:
        env = {**S3_ENV, **origin.env, "AWS_ENDPOINT_URL": proxy.url}
        p = volenv_popen(
            "--root",
            origin.root,
            "push",
            "app",
            "--to",
            "s3://vol/p",
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while proxy.up_bytes < 8 * MB and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.05)
        assert p.poll() is None, "the push ended before it could be killed"
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
        assert proxy.max_receiving >= 2, proxy.max_receiving
    keys = _keys(moto)
    assert keys and not [k for k in keys if not k.startswith(("p/packs/", "p/model-files/"))], keys
    env = {**S3_ENV, **origin.env, "AWS_ENDPOINT_URL": moto}
    listing = volenv("--json", "list", "--remote", "s3://vol/p", env=env)
    assert listing.returncode == 0 and listing.json()["snapshots"] == []
    r = volenv("--root", origin.root, "push", "app", "--to", "s3://vol/p", env=env)
    assert r.returncode == 0, r.stderr
    _pulls_and_verifies(tmp_path, origin, "s3://vol/p", {**S3_ENV, "AWS_ENDPOINT_URL": moto})


@pytest.fixture
def refusing(moto: str) -> Iterator[str]:
    """A reverse proxy in front of moto that answers 403 AccessDenied to every multipart part
    upload (an S3 policy refusing the big objects) and forwards everything else."""
    upstream = moto.removeprefix("http://")

    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a: object) -> None:
            pass

        def _forward(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            if "partNumber=" in self.path:
                data = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
                self.send_response(403)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            relay(self, upstream, body)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

    server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_refused_upload_exits_8_aborts_and_writes_no_document(
    origin: Origin, moto: str, refusing: str
) -> None:
    env = {**S3_ENV, **origin.env, "AWS_ENDPOINT_URL": refusing}
    r = volenv("--root", origin.root, "push", "app", "--to", "s3://vol/p", env=env)
    assert r.returncode == 8, r.stderr
    assert "upload of " in r.stderr and "AccessDenied" in r.stderr and "Traceback" not in r.stderr
    keys = _keys(moto)
    assert not [k for k in keys if not k.startswith(("p/packs/", "p/model-files/"))], keys
    # the multipart uploads it had started were aborted, not left behind
    assert not _s3(moto).list_multipart_uploads(Bucket="vol").get("Uploads")


def test_a_failing_file_upload_exits_8_and_writes_no_document(tmp_path: Path, origin: Origin) -> None:
    bucket = tmp_path / "bucket"
    env = {**origin.env, "VOLENV_FAULT": "push-part:fail"}
    r = volenv("--root", origin.root, "push", "app", "--to", f"file://{bucket}", env=env)
    assert r.returncode == 8, r.stderr
    _no_document(bucket)
    assert not [p for p in bucket.rglob(".*")]  # every temp file removed


# ------------------------------------------------------------------ progress, in process


def test_progress_counts_bytes_and_objects(tmp_path: Path) -> None:
    from volenv.base.streams import AdaptiveStreams
    from volenv.base.ui import Progress, Reporter
    from volenv.transfer.bucketput import Outgoing, put_all, stamp_of
    from volenv.transfer.buckets import FileRemote

    sizes = [0, 1000, 9 * 1024 * 1024, 17 * 1024 * 1024]
    out = []
    for i, n in enumerate(sizes):
        f = tmp_path / f"f{i}"
        f.write_bytes(os.urandom(n))
        out.append(Outgoing(f"o/{i}", f, stamp_of(f.stat()), f"file {i}"))
    progress = Progress(Reporter(), "push", sum(sizes))
    remote = FileRemote("file://x", tmp_path / "bucket")
    assert put_all(remote, out, AdaptiveStreams(pinned=4), progress) == sum(sizes)
    assert (progress.items, progress.done) == (len(sizes), sum(sizes))
    for i, _n in enumerate(sizes):
        assert (tmp_path / "bucket" / "o" / str(i)).read_bytes() == (tmp_path / f"f{i}").read_bytes()


def test_a_file_changed_after_its_check_is_never_uploaded(tmp_path: Path) -> None:
    from volenv.base.errors import VerifyError
    from volenv.base.streams import AdaptiveStreams
    from volenv.transfer.bucketput import Outgoing, put_all, stamp_of
    from volenv.transfer.buckets import FileRemote

    f = tmp_path / "f"
    f.write_bytes(b"checked bytes")
    checked = Outgoing("o/f", f, stamp_of(f.stat()), "file f")
    time.sleep(0.01)
    f.write_bytes(b"other bytes!!")  # same size, rewritten after the check
    with pytest.raises(VerifyError, match="changed after it was checked"):
        put_all(FileRemote("file://x", tmp_path / "bucket"), [checked], AdaptiveStreams(pinned=2))
    assert not (tmp_path / "bucket" / "o" / "f").exists()


def test_a_bad_stream_count_is_a_usage_error_before_anything_is_sent(tmp_path: Path, origin: Origin) -> None:
    bucket = tmp_path / "bucket"
    env = {**origin.env, "VOLENV_STREAMS": "lots"}
    r = volenv("--root", origin.root, "push", "app", "--to", f"file://{bucket}", env=env)
    assert r.returncode == 2 and "VOLENV_STREAMS" in r.stderr, r.stderr
    assert not bucket.exists() or not os.listdir(bucket)
