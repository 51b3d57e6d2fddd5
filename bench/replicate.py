"""Replication: push and pull of a >= 500 MB generated env through S3 (moto's server on
127.0.0.1) against a plain `aws s3 cp --recursive`-style upload (boto3, one object per file)
of the same tree in the same run; object counts of each.

Usage: python bench/replicate.py [--packages N] [--modules M] [--big-mib B]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import generate_wheels, manifest, signing_env, volenv_cmd


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--packages", type=int, default=40)
    ap.add_argument("--modules", type=int, default=250)
    ap.add_argument("--big-mib", type=float, default=12.5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="volenv-bench-repl-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    moto = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    env = dict(
        os.environ,
        AWS_ACCESS_KEY_ID="x",
        AWS_SECRET_ACCESS_KEY="x",
        AWS_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
        VOLENV_NO_PROGRESS="1",
    )
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(endpoint, timeout=1)
                break
            except OSError as exc:
                if getattr(exc, "code", None):
                    break
                time.sleep(0.2)
        import boto3
        from boto3.s3.transfer import TransferConfig

        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="x",
        )
        s3.create_bucket(Bucket="bench")
        wheels = tmp / "wheels"
        reqs = generate_wheels(wheels, args.packages, args.modules, big_bytes=int(args.big_mib * 1024 * 1024))
        a = tmp / "a" / "volenv"
        m = manifest(tmp / "m.toml", "bench", reqs, wheels)
        v = volenv_cmd()
        env = {**env, **signing_env(tmp)}
        snap = Path(
            json.loads(
                subprocess.run(
                    [*v, "--root", str(a), "--json", "-q", "sync", str(m)],
                    check=True,
                    capture_output=True,
                    env=env,
                ).stdout
            )["path"]
        )
        files = [p for p in snap.rglob("*") if p.is_file() and not p.is_symlink()]
        size = sum(p.stat().st_size for p in files)
        print(f"env: {len(files)} files, {size / 1e6:.0f} MB")

        t0 = time.perf_counter()
        out = subprocess.run(
            [*v, "--root", str(a), "--json", "push", "bench", "--to", "s3://bench/volenv"],
            check=True,
            capture_output=True,
            env=env,
        )
        t_push = time.perf_counter() - t0
        pushed = json.loads(out.stdout)
        t0 = time.perf_counter()
        subprocess.run(
            [*v, "--root", str(tmp / "b" / "volenv"), "-q", "pull", "bench", "--from", "s3://bench/volenv"],
            check=True,
            env=env,
        )
        t_pull = time.perf_counter() - t0
        volenv_objects = s3.list_objects_v2(Bucket="bench", Prefix="volenv/").get("KeyCount", 0)

        cfg = TransferConfig(max_concurrency=10)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(10) as pool:
            list(
                pool.map(
                    lambda p: s3.upload_file(str(p), "bench", f"plain/{p.relative_to(snap)}", Config=cfg),
                    files,
                )
            )
        t_plain = time.perf_counter() - t0
        plain_objects = len(files)
        print(
            f"volenv push (pack + upload): {t_push:.1f} s, {pushed['packs_total']} packs,"
            f" {volenv_objects} objects, {pushed['bytes_sent'] / 1e6:.0f} MB sent"
        )
        print(f"volenv pull (download + verify full + extract): {t_pull:.1f} s")
        print(f"plain recursive upload: {t_plain:.1f} s, {plain_objects} objects")
        print(
            f"ratio push / plain upload: {t_push / t_plain:.2f}x; objects {volenv_objects} vs {plain_objects}"
        )
    finally:
        moto.terminate()
        moto.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
