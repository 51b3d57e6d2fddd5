"""Issue 17 (item 3): `pull` downloads a snapshot's parts in parallel (a large pack as ranged
GETs) with an adaptive stream count, and extracts packs several at a time; every part is still
checked against its id before anything is published. moto's real S3 server sits behind a
loopback proxy that limits each connection to a fixed rate (tests/throttle.py)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pytest
import zstandard

from conftest import moto_s3, snapshot_of, staging_left, volenv, volenv_popen, write_manifest
from throttle import ThrottledProxy
from volenv.base.errors import UsageError
from volenv.base.streams import AdaptiveStreams
from wheelfactory import make_wheel

BIG = 40 * 1024 * 1024  # one pack of 40 MiB: five ranged parts of at most 8 MiB
MB = 1_000_000


# ------------------------------------------------------------------ the controller


def test_streams_grow_to_the_cap_while_each_stream_keeps_its_rate() -> None:
    s = AdaptiveStreams(pinned=None)
    assert s.current == 4
    counts = []
    while not s.settled:
        for _ in range(s.current):
            s.report(20 * MB, 1.0)  # every connection limited to 20 MB/s: more streams, more rate
        counts.append(s.current)
    assert counts[-1] == 16 and counts == sorted(counts)


def test_streams_settle_where_the_aggregate_stops_growing() -> None:
    s = AdaptiveStreams(pinned=None)
    while not s.settled:
        n = s.current
        for _ in range(n):
            s.report(MB, n / 100)  # a shared 100 MB/s link: per-stream rate falls as streams grow
    assert s.current == 4


def test_streams_pinned_by_the_knob(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOLENV_STREAMS", "1")
    s = AdaptiveStreams()
    s.report(MB, 0.01)
    assert (s.current, s.cap, s.settled) == (1, 1, True)
    monkeypatch.setenv("VOLENV_STREAMS", "nonsense")
    with pytest.raises(UsageError):
        AdaptiveStreams()


# ------------------------------------------------------------------ pulls through S3


@dataclass
class Bucket:
    moto: str
    env: dict[str, str]  # credentials + signing/trust keys (no endpoint)
    manifest: Path
    snapshot: str
    doc: dict[str, object]

    def through(self, proxy: ThrottledProxy) -> dict[str, str]:
        return {**self.env, "AWS_ENDPOINT_URL": proxy.url}


@pytest.fixture(scope="module")
def bucket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bucket]:
    """A snapshot with one 40 MiB pack and a handful of small ones, pushed (signed) to moto
    twice: under good/ and under bad/ (which a test damages)."""
    tmp = tmp_path_factory.mktemp("pullpar")
    wheels = tmp / "wheels"
    rnd = os.urandom(BIG)
    make_wheel(wheels, "bigdata", "1.0", files={"bigdata/__init__.py": "", "bigdata/blob.bin": rnd})
    for i in range(6):
        files = {f"small{i}/__init__.py": f"N = {i}\n"}
        files.update({f"small{i}/m{j}.py": f"V = {j}\n" * 50 for j in range(20)})
        make_wheel(wheels, f"small{i}", "1.0", files=files)
    reqs = ["bigdata==1.0", *(f"small{i}==1.0" for i in range(6))]
    m = write_manifest(tmp, "app", reqs, find_links=wheels)
    key = tmp / "k.key"
    pub = volenv("key", "generate", "--name", "pusher", "--out", key)
    assert pub.returncode == 0, pub.stderr
    with moto_s3() as moto:
        env = {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_REGION": "us-east-1",
            "VOLENV_SIGNING_KEY": str(key),
            "VOLENV_TRUSTED_KEYS": pub.stdout.strip(),
        }
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=moto,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )
        s3.create_bucket(Bucket="vol")
        a = tmp / "a" / "volenv"
        r = volenv("--root", a, "sync", m, env=env)
        assert r.returncode == 0, r.stderr
        for prefix in ("good", "bad"):
            r = volenv(
                "--root",
                a,
                "--json",
                "push",
                "app",
                "--to",
                f"s3://vol/{prefix}",
                env={**env, "AWS_ENDPOINT_URL": moto},
            )
            assert r.returncode == 0, r.stderr
        sid = r.json()["snapshot"]
        assert isinstance(sid, str)
        doc = json.loads(s3.get_object(Bucket="vol", Key=f"good/snapshots/{sid}.json")["Body"].read())
        yield Bucket(moto, env, m, sid, doc)


def _big_pack(b: Bucket) -> dict[str, object]:
    packs = b.doc["packs"]
    assert isinstance(packs, list)
    big: dict[str, object] = next(p for p in packs if str(p["group"]).startswith("bigdata"))
    return big


def _blobs_believable(root: Path) -> None:
    """Every blob stored under an id is that id's tar; nothing else is named like one."""
    blobs = root / "packs" / "blobs"
    for p in blobs.iterdir() if blobs.exists() else ():
        if p.name.startswith("."):
            continue  # a killed writer's temp file: never a content id (gc removes it)
        h = hashlib.sha256()
        with open(p, "rb") as fh, zstandard.ZstdDecompressor().stream_reader(fh) as zr:
            while chunk := zr.read(1 << 20):
                h.update(chunk)
        assert p.name == f"{h.hexdigest()}.tar.zst"


def test_pull_uses_several_ranged_connections_and_verifies(tmp_path: Path, bucket: Bucket) -> None:
    root = tmp_path / "b" / "volenv"
    with ThrottledProxy(bucket.moto, 20 * MB) as proxy:
        r = volenv(
            "--root", root, "--json", "pull", "app", "--from", "s3://vol/good", env=bucket.through(proxy)
        )
        assert r.returncode == 0, r.stderr
        assert r.json()["snapshot"] == bucket.snapshot
        # the 40 MiB pack came as ranges, and several connections were sending at once
        assert proxy.range_requests >= 3, proxy.range_requests
        assert proxy.max_sending >= 3, proxy.max_sending
    assert snapshot_of(root, "app") == bucket.snapshot
    assert volenv("--root", root, "verify", "--all", "--level", "full").returncode == 0
    assert staging_left(root) == []
    assert not [p for p in (root / "packs" / "blobs").iterdir() if p.name.startswith(".")]
    run = volenv("--root", root, "run", "--env", "app", "--", "python", "-c", "import bigdata, small5")
    assert run.returncode == 0, run.stderr


def test_pinned_single_stream_pull_still_completes(tmp_path: Path, bucket: Bucket) -> None:
    root = tmp_path / "b" / "volenv"
    with ThrottledProxy(bucket.moto, 200 * MB) as proxy:
        env = {**bucket.through(proxy), "VOLENV_STREAMS": "1"}
        r = volenv("--root", root, "pull", "app", "--from", "s3://vol/good", env=env)
        assert r.returncode == 0, r.stderr
        assert proxy.max_sending <= 2  # one stream (a closing connection may overlap the next)
    assert volenv("--root", root, "verify", "--all", "--level", "full").returncode == 0


def test_connections_broken_mid_answer_are_retried(tmp_path: Path, bucket: Bucket) -> None:
    """Three answers cut off mid-body (a reset the S3 client does not retry): the parts resume
    and the pull completes, verified."""
    root = tmp_path / "b" / "volenv"
    with ThrottledProxy(bucket.moto, 100 * MB, cut=3, cut_after=3 * 1024 * 1024) as proxy:
        r = volenv("--root", root, "pull", "app", "--from", "s3://vol/good", env=bucket.through(proxy))
        assert r.returncode == 0, r.stderr
        assert proxy.cut == 0
    assert volenv("--root", root, "verify", "--all", "--level", "full").returncode == 0


def test_a_corrupt_ranged_part_is_refused_and_nothing_published(tmp_path: Path, bucket: Bucket) -> None:
    import boto3

    big = _big_pack(bucket)
    s3 = boto3.client("s3", endpoint_url=bucket.moto, region_name="us-east-1", **_creds(bucket))
    key = f"bad/packs/{big['id']}.tar.zst"
    data = bytearray(s3.get_object(Bucket="vol", Key=key)["Body"].read())
    data[len(data) * 3 // 4] ^= 0x55  # inside the last range
    s3.put_object(Bucket="vol", Key=key, Body=bytes(data))
    root = tmp_path / "b" / "volenv"
    with ThrottledProxy(bucket.moto, 50 * MB) as proxy:
        r = volenv("--root", root, "pull", "app", "--from", "s3://vol/bad", env=bucket.through(proxy))
    assert r.returncode == 4, r.stderr
    assert "damaged" in r.stderr
    snaps = root / "envs" / "app" / "snapshots"
    assert not snaps.exists() or not os.listdir(snaps)
    assert not (root / "envs" / "app" / "current").exists()
    assert not (root / "packs" / "blobs" / f"{big['id']}.tar.zst").exists()
    assert not [p for p in (root / "packs" / "blobs").iterdir() if p.name.startswith(".")]
    _blobs_believable(root)
    assert staging_left(root) == []


def _creds(b: Bucket) -> dict[str, str]:
    return {
        "aws_access_key_id": b.env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": b.env["AWS_SECRET_ACCESS_KEY"],
    }


@pytest.mark.slow
def test_a_pull_killed_mid_download_publishes_nothing_then_completes(tmp_path: Path, bucket: Bucket) -> None:
    root = tmp_path / "b" / "volenv"
    with ThrottledProxy(bucket.moto, 4 * MB) as proxy:
        p = volenv_popen(
            "--root",
            root,
            "pull",
            "app",
            "--from",
            "s3://vol/good",
            env=bucket.through(proxy),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while proxy.down_bytes < BIG * 0.4 and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.05)
        assert p.poll() is None, "the pull ended before it could be killed"
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    snaps = root / "envs" / "app" / "snapshots"
    assert not snaps.exists() or not os.listdir(snaps)
    assert not (root / "envs" / "app" / "current").exists()
    assert not (root / "packs" / "blobs" / f"{_big_pack(bucket)['id']}.tar.zst").exists()
    _blobs_believable(root)
    with ThrottledProxy(bucket.moto, 200 * MB) as proxy:
        r = volenv(
            "--root", root, "--json", "pull", "app", "--from", "s3://vol/good", env=bucket.through(proxy)
        )
    assert r.returncode == 0, r.stderr
    assert volenv("--root", root, "verify", "--all", "--level", "full").returncode == 0
    assert staging_left(root) == []


def test_a_pull_killed_after_a_part_then_completes(tmp_path: Path, bucket: Bucket) -> None:
    """Deterministic: SIGKILL right after the first part is downloaded, before it is checked."""
    root = tmp_path / "b" / "volenv"
    env = {**bucket.env, "AWS_ENDPOINT_URL": bucket.moto}
    r = volenv(
        "--root",
        root,
        "pull",
        "app",
        "--from",
        "s3://vol/good",
        env={**env, "VOLENV_FAULT": "pull-part:kill"},
    )
    assert r.returncode == -signal.SIGKILL
    blobs = root / "packs" / "blobs"
    assert not [p for p in blobs.iterdir() if not p.name.startswith(".")]  # nothing under an id
    assert not (root / "envs" / "app" / "current").exists()
    r = volenv("--root", root, "pull", "app", "--from", "s3://vol/good", env=env)
    assert r.returncode == 0, r.stderr
    assert volenv("--root", root, "verify", "--all", "--level", "full").returncode == 0


def test_file_remote_pull_in_ranges(tmp_path: Path, bucket: Bucket) -> None:
    """file:// remotes take the same parallel, ranged path (the big pack is read in ranges)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=bucket.moto, region_name="us-east-1", **_creds(bucket))
    local = tmp_path / "bucket"
    for obj in s3.list_objects_v2(Bucket="vol", Prefix="good/")["Contents"]:
        dest = local / obj["Key"].removeprefix("good/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(s3.get_object(Bucket="vol", Key=obj["Key"])["Body"].read())
    root = tmp_path / "b" / "volenv"
    r = volenv("--root", root, "pull", "app", "--from", f"file://{local}", env=bucket.env)
    assert r.returncode == 0, r.stderr
    assert volenv("--root", root, "verify", "--all", "--level", "full").returncode == 0


# ------------------------------------------------------------------ extraction over several streams


def test_packs_extract_several_at_a_time_and_a_damaged_one_stops_all(
    tmp_path: Path, wheelhouse: Path
) -> None:
    import threading

    from volenv.base.errors import VerifyError
    from volenv.store.packformat import PackInfo, blob_path, read_manifest
    from volenv.store.packread import unpack
    from volenv.store.paths import VolumePaths

    root = tmp_path / "v" / "volenv"
    m = write_manifest(tmp_path, "app", ["alpha==1.0", "beta==1.0", "gamma==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", m).returncode == 0
    sid = snapshot_of(root, "app")
    assert volenv("--root", root, "pack", sid).returncode == 0
    paths = VolumePaths(root)
    manifest = read_manifest(root / "packs" / "snapshots" / f"{sid}.json")
    assert len(manifest.packs) >= 5
    lock = threading.Lock()
    now = peak = 0

    def open_blob(info: PackInfo) -> BinaryIO:
        nonlocal now, peak
        with lock:
            now += 1
            peak = max(peak, now)
        time.sleep(0.1)  # a slow volume: each blob takes a while to start
        with lock:
            now -= 1
        return open(blob_path(paths, info.id), "rb")

    unpack(manifest, open_blob, tmp_path / "par", workers=4)
    assert peak >= 3, peak
    unpack(manifest, open_blob, tmp_path / "seq", workers=1)

    def tree(d: Path) -> dict[str, tuple[int, bytes | str]]:
        return {
            str(p.relative_to(d)): (p.lstat().st_mode, os.readlink(p) if p.is_symlink() else p.read_bytes())
            for p in sorted(d.rglob("*"))
            if not p.is_dir() or p.is_symlink()
        }

    assert tree(tmp_path / "par") == tree(tmp_path / "seq")
    assert (tmp_path / "par" / "lib").stat().st_mode == (tmp_path / "seq" / "lib").stat().st_mode
    victim = next(p for p in manifest.packs if p.group.startswith("beta"))
    bad = tmp_path / "bad.tar.zst"
    data = bytearray(blob_path(paths, victim.id).read_bytes())
    data[len(data) // 2] ^= 0x55
    bad.write_bytes(bytes(data))
    with pytest.raises(VerifyError):
        unpack(
            manifest,
            lambda i: open(bad if i.id == victim.id else blob_path(paths, i.id), "rb"),  # noqa: SIM115
            tmp_path / "broken",
            workers=4,
        )
