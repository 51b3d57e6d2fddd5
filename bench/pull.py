"""Pull rate with a per-connection limit: a ~500 MB snapshot (a few big random files plus some
small packages) pushed to moto's S3 server, then pulled through a loopback proxy that limits
EACH connection (tests/throttle.py, default 20 MB/s), once with VOLENV_STREAMS=1 and once with
the adaptive default. Prints the download rate (bytes through the proxy over the time from its
first to its last byte), the whole pull's time (download + check + extract + verify full) and
the ratios (issue 17 target: download >= 3x a single stream).

Usage: python bench/pull.py [--mib 500] [--files 8] [--rate-mb 20]
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
    ap.add_argument("--rate-mb", type=float, default=20.0, help="per-connection limit, MB/s")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="volenv-bench-pull-"))
    v = volenv_cmd()
    try:
        base, a = transfer_volume(tmp, args.mib, args.files, args.small, pack=False)
        with moto_s3() as moto:
            import boto3

            boto3.client(
                "s3",
                endpoint_url=moto,
                region_name="us-east-1",
                aws_access_key_id="x",
                aws_secret_access_key="x",
            ).create_bucket(Bucket="bench")
            env = {**base, "AWS_ENDPOINT_URL": moto}
            out = subprocess.run(
                [*v, "--root", str(a), "--json", "push", "bench", "--to", "s3://bench/v"],
                check=True,
                capture_output=True,
                env=env,
            )
            pushed = json.loads(out.stdout)
            print(
                f"snapshot: {pushed['packs_total']} packs, {pushed['bytes_sent'] / 1e6:.0f} MB in the bucket"
            )
            results = {}
            for label, streams in (("1 stream", "1"), ("adaptive", None)):
                with ThrottledProxy(moto, args.rate_mb * 1e6) as proxy:
                    run_env = {**base, "AWS_ENDPOINT_URL": proxy.url}
                    if streams:
                        run_env["VOLENV_STREAMS"] = streams
                    root = tmp / f"b-{streams or 'auto'}" / "volenv"
                    t0 = time.perf_counter()
                    subprocess.run(
                        [*v, "--root", str(root), "-q", "pull", "bench", "--from", "s3://bench/v"],
                        check=True,
                        env=run_env,
                        stdout=subprocess.DEVNULL,
                    )
                    total = time.perf_counter() - t0
                    window = max(proxy.last_down - proxy.first_down, 1e-6)
                    rate = proxy.down_bytes / window / 1e6
                    results[label] = (rate, total)
                    print(
                        f"{label:9s}: download {proxy.down_bytes / 1e6:.0f} MB at {rate:.1f} MB/s"
                        f" ({window:.1f} s, {proxy.connections} connections, up to {proxy.max_sending} at once);"
                        f" whole pull {total:.1f} s"
                    )
                    shutil.rmtree(root.parent, ignore_errors=True)
            r1, t1 = results["1 stream"]
            ra, ta = results["adaptive"]
            print(
                f"ratio adaptive / 1 stream: download rate {ra / r1:.2f}x, whole pull {t1 / ta:.2f}x (target >= 3x)"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
