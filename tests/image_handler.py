"""A tiny serverless handler for the image tests (tests/test_image.py): it runs inside the demo
snapshot that `volenv run` activated and speaks the RunPod worker protocol (GET job-take, POST
job-done, as the SDK's production loop does) with the standard library only, so the snapshot
needs nothing but the demo wheel. Never used in production.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import urllib.request

T0 = time.time()


def main() -> None:
    import volenv_demo_hello  # proves the snapshot is active: only it has the demo wheel

    pod = os.environ["RUNPOD_POD_ID"]
    take = os.environ["RUNPOD_WEBHOOK_GET_JOB"].replace("$ID", pod)
    done = os.environ["RUNPOD_WEBHOOK_POST_OUTPUT"]
    print(
        f"image-handler: ready in {time.time() - T0:.2f}s (prefix {sys.prefix})", file=sys.stderr, flush=True
    )
    while True:
        with urllib.request.urlopen(take + "&job_in_progress=0", timeout=10) as resp:
            body = resp.read() if resp.status == 200 else b""
        if not body:
            time.sleep(0.1)
            continue
        job = json.loads(body)
        output = {
            "output": {
                "pod": pod,
                "host": socket.gethostname(),
                "prefix": sys.prefix,
                "snapshot": os.environ.get("VOLENV_SNAPSHOT"),
                "greeting": os.environ.get("DEMO_GREETING"),
                "demo_module": volenv_demo_hello.__file__,
                "echo": job["input"],
            }
        }
        req = urllib.request.Request(
            done.replace("$ID", job["id"]) + "&isStream=false",
            data=json.dumps(output).encode(),
            method="POST",
        )
        urllib.request.urlopen(req, timeout=10).close()


if __name__ == "__main__":
    main()
