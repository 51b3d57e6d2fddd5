"""Push rate with a per-connection limit: a ~500 MB snapshot (a few big random files plus some
small packages, packed beforehand) pushed to moto's S3 server through a loopback proxy that
limits EACH connection's upload to a fixed rate (tests/throttle.py, default 20 MB/s), once with
VOLENV_STREAMS=1 and once with the adaptive default, each into an empty prefix. Prints the
upload rate (bytes through the proxy over the time from its first to its last byte), the whole
push's time (presence checks + blob checks + upload + documents) and the ratios (issue 17
target: upload >= 3x a single stream, as for pull). The adaptive push is then pulled onto a
fresh volume and verified.

Usage: python bench/push.py [--mib 500] [--files 8] [--rate-mb 20]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import transfer_volume, volenv_cmd

from conftest import moto_s3  # tests/ is on sys.path via _common
from throttle import ThrottledProxy


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mib", type=int, default=500, help="total size of the big random files")
    ap.add_argument("--files", type=int, default=8, help="how many big random files (one package each)")
    ap.add_argument("--small", type=int, default=20, help="small packages (one pack each)")
    ap.add_argument("--rate-mb", type=float, default=20.0, help="per-connection upload limit, MB/s")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="volenv-bench-push-"))
    v = volenv_cmd()
    try:
        base, a = transfer_volume(tmp, args.mib, args.files, args.small, pack=True)
        with moto_s3() as moto:
            import boto3

            s3 = boto3.client(
                "s3",
                endpoint_url=moto,
                region_name="us-east-1",
                aws_access_key_id="x",
                aws_secret_access_key="x",
            )
            s3.create_bucket(Bucket="bench")
            results = {}
            for label, streams in (("1 stream", "1"), ("adaptive", None)):
                prefix = f"v-{streams or 'auto'}"
                with ThrottledProxy(moto, 1e12, up_rate=args.rate_mb * 1e6) as proxy:
                    run_env = {**base, "AWS_ENDPOINT_URL": proxy.url}
                    if streams:
                        run_env["VOLENV_STREAMS"] = streams
                    t0 = time.perf_counter()
                    out = subprocess.run(
                        [*v, "--root", str(a), "--json", "push", "bench", "--to", f"s3://bench/{prefix}"],
                        check=True,
                        env=run_env,
                        capture_output=True,
                    )
                    total = time.perf_counter() - t0
                    pushed = json.loads(out.stdout)
                    window = max(proxy.last_up - proxy.first_up, 1e-6)
                    rate = proxy.up_bytes / window / 1e6
                    results[label] = (rate, total)
                    print(
                        f"{label:9s}: {pushed['packs_sent']} packs, {pushed['bytes_sent'] / 1e6:.0f} MB;"
                        f" upload {proxy.up_bytes / 1e6:.0f} MB at {rate:.1f} MB/s ({window:.1f} s,"
                        f" {proxy.connections} connections, up to {proxy.max_receiving} at once);"
                        f" whole push {total:.1f} s"
                    )
                if streams:  # keep moto's memory to one copy
                    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix=prefix):
                        for obj in page.get("Contents", []):
                            s3.delete_object(Bucket="bench", Key=obj["Key"])
            r1, t1 = results["1 stream"]
            ra, ta = results["adaptive"]
            print(
                f"ratio adaptive / 1 stream: upload rate {ra / r1:.2f}x, whole push {t1 / ta:.2f}x (target >= 3x)"
            )
            b = tmp / "b" / "volenv"
            pull_env = {**base, "AWS_ENDPOINT_URL": moto}
            subprocess.run(
                [*v, "--root", str(b), "-q", "pull", "bench", "--from", "s3://bench/v-auto"],
                check=True,
                env=pull_env,
                stdout=subprocess.DEVNULL,
            )
            subprocess.run([*v, "--root", str(b), "-q", "verify", "--all", "--level", "full"], check=True)
            print("the adaptive push pulled onto a fresh volume and verified at full")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
