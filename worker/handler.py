"""F5-TTS RunPod worker entry point.

Runs inside the snapshot `volenv run` activated: models come from the volume
(VOLENV_MODEL_*, HF_HUB_OFFLINE=1). The model loads once at start; if it cannot, every job is
answered with the reason instead of the process exiting.

Local test: python handler.py --test_input '{"input": {"endpoint": "list_voices"}}'
Local API:  python handler.py --rp_serve_api --rp_api_host 127.0.0.1 --rp_api_port 8000
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from f5worker.api import Worker, error
from f5worker.storage import from_environment

T0 = time.perf_counter()


def build_worker() -> Worker:
    storage = from_environment()
    try:
        from f5worker.engine import Engine

        engine = Engine()
    except Exception as exc:  # keep serving: every job gets the reason
        traceback.print_exc()
        print(f"f5-tts-worker: model unavailable: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return Worker(storage, None, f"{type(exc).__name__}: {exc}")
    print(
        f"f5-tts-worker: ready in {time.perf_counter() - T0:.2f}s (model load {engine.load_seconds:.2f}s,"
        f" device {engine.device})",
        file=sys.stderr,
        flush=True,
    )
    return Worker(storage, engine)


WORKER = build_worker()


def handler(job: dict[str, Any]) -> dict[str, Any]:
    try:
        result = WORKER.handle(job)
    except Exception as exc:  # last line of defence
        result = error("internal_error", f"{type(exc).__name__}: {exc}")
    return for_runpod(result)


def for_runpod(result: dict[str, Any]) -> dict[str, Any]:
    """The SDK moves "error" out of the output and RunPod (and the SDK's local API) take only a
    string there: the {"code", "message"} object travels as its JSON text."""
    if isinstance(result.get("error"), dict):
        return {"error": json.dumps(result["error"], ensure_ascii=False)}
    return result


if __name__ == "__main__":
    import runpod

    runpod.serverless.start({"handler": handler})
