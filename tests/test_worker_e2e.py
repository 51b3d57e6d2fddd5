"""Issue 8, end to end: the F5-TTS worker inside a real volenv snapshot (local CPU torch wheel,
f5-tts from PyPI), tiny random-weight models installed as volume models through a local fake
Hub, served by the runpod SDK's local API server, with and without S3 (moto).

Needs PyPI for f5-tts and its dependencies (marked `pypi`, skipped when unreachable) and the
CPU torch wheel on this machine's disk (skipped when absent). Slow: a ~2 GB environment.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO, base_env, moto_s3, pypi_reachable, volenv
from wheelfactory import local_torch_wheels

pytestmark = [pytest.mark.slow, pytest.mark.pypi]

REV = "1111111111111111111111111111111111111111"


POST_INSTALL = [
    # Test environment only (shared/TESTING.md): PyPI's torchaudio for this torch is a CUDA build whose
    # compiled library cannot load on a CPU machine; without its lib/ it falls back to pure Python.
    'python -c "import importlib.util, pathlib, shutil; '
    "d = pathlib.Path(importlib.util.find_spec('torchaudio').origin).parent / 'lib'; "
    'shutil.rmtree(d) if d.exists() else None"',
]


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    if not pypi_reachable():
        pytest.skip("PyPI unreachable: f5-tts cannot be installed")
    wheels = local_torch_wheels("2.13.0")
    if wheels is None:
        pytest.skip("no local CPU torch 2.13.0 wheel (pip config find-links)")
    tmp = tmp_path_factory.mktemp("e2e")
    root = Path(os.environ.get("VOLENV_E2E_ROOT") or tmp / "volume" / "volenv")
    extra = (
        "[index]\n"
        + f'find-links = ["{wheels}"]\n'
        + "[build]\npost-install = "
        + json.dumps(POST_INSTALL)
        + "\n"
    )
    m = tmp / "f5-cpu.toml"
    m.write_text(
        # the kept volume outlives this temp folder, and worker.toml is the same project: one id
        'id = "tests/f5-cpu"\nname = "f5-cpu"\npython = "3.11"\n'
        'requirements = ["torch==2.13.0", "f5-tts==1.1.22", "soundfile", "runpod>=1.10,<1.12", "boto3", "pyyaml"]\n'
        + extra
        + '[activate]\nsmoke-imports = ["torch", "f5_tts.infer.utils_infer", "soundfile", "runpod"]\n'
    )
    r = volenv("--root", root, "sync", m, timeout=3000)
    assert r.returncode == 0, r.stderr[-4000:]
    models = tmp / "models"
    r = volenv(
        "--root",
        root,
        "run",
        "--manifest",
        m,
        "--",
        "python",
        str(REPO / "tests" / "e2e" / "make_tiny_models.py"),
        models,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    yield {"root": root, "manifest": m, "models": models, "tmp": tmp}


def _serve_models(models: Path) -> tuple[str, object]:
    """A fake Hub serving each model dir as a repo acme/<dir> at revision REV."""
    import hashlib
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    def git_sha1(data: bytes) -> str:
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a: object) -> None:
            pass

        def _send(self, code: int, body: bytes, headers: dict[str, str], head: bool) -> None:
            self.send_response(code)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _handle(self, head: bool) -> None:
            path = self.path.split("?")[0]
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "models"] and "tree" in parts:
                repo_dir = models / parts[3]
                entries = [
                    {
                        "type": "file",
                        "path": str(p.relative_to(repo_dir)),
                        "size": p.stat().st_size,
                        "oid": git_sha1(p.read_bytes()),
                    }
                    for p in sorted(repo_dir.rglob("*"))
                    if p.is_file()
                ]
                self._send(200, json.dumps(entries).encode(), {"Content-Type": "application/json"}, head)
                return
            if len(parts) >= 5 and parts[2] == "resolve":
                f = models / parts[1] / "/".join(parts[4:])
                if f.is_file():
                    data = f.read_bytes()
                    self._send(200, data, {"X-Repo-Commit": REV, "ETag": f'"{git_sha1(data)}"'}, head)
                    return
            self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head)

        def do_HEAD(self) -> None:
            self._handle(True)

        def do_GET(self) -> None:
            self._handle(False)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{srv.server_address[1]}", srv


def _worker_manifest(e2e: dict[str, object]) -> Path:
    base = Path(str(e2e["manifest"])).read_text()
    models = "".join(
        f'[[models]]\nname = "{name}"\nhf = {{ repo = "acme/{d}", revision = "{REV}", allow-patterns = ["*"] }}\n'
        for name, d in (("f5tts-v1-base", "f5"), ("vocos-mel-24khz", "vocos"), ("ctc-aligner", "ctc"))
    )
    path = Path(str(e2e["tmp"])) / "worker.toml"
    path.write_text(base + models)
    return path


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(port: int, job: dict[str, object], timeout: float = 300) -> dict[str, object]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/runsync",
        data=json.dumps({"input": job}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        body = json.loads(urllib.request.urlopen(req, timeout=timeout).read())
    except urllib.error.HTTPError as exc:  # the SDK answers a job that returned {"error"} with HTTP 500
        body = json.loads(exc.read() or b"{}")
    return body.get("output", body)  # type: ignore[no-any-return]


def _serve(
    command: list[str], env: dict[str, str], port: int, output: int
) -> tuple[subprocess.Popen[str], float]:
    """Start the worker's local API server and wait until it answers: (process, seconds to ready).
    Both start paths the e2e test compares go through here, so they are timed the same way."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [*command, "--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port", str(port)],
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/docs", timeout=5)
            return proc, time.perf_counter() - t0
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(proc.stdout.read() if proc.stdout else "worker died") from None
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("worker never answered")


def _start_worker(
    root: Path, manifest: Path, extra_env: dict[str, str]
) -> tuple[subprocess.Popen[str], int, float]:
    port = _port()
    env = base_env()
    env.update({"HOME": str(root.parent), "RUNPOD_SKIP_GPU_CHECK": "true", **extra_env})
    command = [sys.executable, "-m", "volenv", "--root", str(root), "run", "--manifest", str(manifest), "--"]
    proc, ready = _serve(
        [*command, "python", "-u", str(REPO / "worker" / "handler.py")], env, port, subprocess.PIPE
    )
    return proc, port, ready


def _wav_b64(seconds: float = 2.0) -> str:
    import numpy as np
    import soundfile as sf

    buf = io.BytesIO()
    t = np.arange(int(24000 * seconds)) / 24000
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 220 * t)).astype("float32"), 24000, format="WAV")
    return base64.b64encode(buf.getvalue()).decode()


def test_tts_end_to_end_through_local_api(e2e: dict[str, object]) -> None:
    import soundfile as sf

    root = Path(str(e2e["root"]))
    hub, srv = _serve_models(Path(str(e2e["models"])))
    wm = _worker_manifest(e2e)
    r = volenv(
        "--root",
        root,
        "models",
        "fetch",
        wm,
        env={"HF_ENDPOINT": hub, "HF_HUB_DISABLE_XET": "1"},
        timeout=600,
    )
    srv.shutdown()  # type: ignore[attr-defined]
    assert r.returncode == 0, r.stderr
    proc, port, ready = _start_worker(root, wm, {"WORKER_DATA_DIR": str(root.parent / "worker-data")})
    try:
        up = _post(
            port,
            {
                "endpoint": "upload",
                "voice_name": "narrator",
                "audio_base64": _wav_b64(),
                "ref_text": "a calm reference voice",
            },
        )
        assert up.get("voice_name") == "narrator", up
        job = {
            "text": "Hello world from volenv.",
            "local_voice": "narrator",
            "seed": 1234,
            "nfe_step": 4,
            "return_word_timings": True,
        }
        a = _post(port, job)
        assert "error" not in a, a
        b = _post(port, job)
        audio, sr = sf.read(io.BytesIO(base64.b64decode(str(a["audio_base64"]))))
        assert sr == 24000 == a["sample_rate"] and a["seed"] == 1234
        assert 0.2 < len(audio) / sr < 20
        assert a["audio_base64"] == b["audio_base64"]  # same seed, same audio
        assert a["word_count"] == 4 and [w["word"] for w in a["word_timings"]] == [
            "Hello",
            "world",
            "from",
            "volenv.",
        ]  # type: ignore[index, union-attr]
        for fmt in ("srt", "vtt", "csv", "json", "ass"):
            d = _post(port, {"endpoint": "download", "job_id": a["job_id"], "type": "timing", "format": fmt})
            assert "content" in d and "Hello" in str(d["content"]), (fmt, d)
        bad = _post(port, {"text": "", "local_voice": "narrator"})
        assert bad["status"] == "FAILED" and json.loads(str(bad["error"]))["code"] == "invalid_input", bad
        again = _post(port, {**job, "seed": 99})
        assert "error" not in again and again["seed"] == 99
        print(
            f"\nworker ready {ready:.1f}s after start (volenv run + model load {a['load_seconds']}s);"
            f" inference {a['inference_seconds']}s per job (tiny model)"
        )
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_s3_flow_and_startup_with_and_without_volenv(e2e: dict[str, object]) -> None:
    """upload -> list_voices -> tts with that voice -> presigned URL over plain HTTP -> download,
    against moto's S3 server; and the start-to-ready time with and without `volenv run`."""

    root = Path(str(e2e["root"]))
    wm = Path(str(e2e["tmp"])) / "worker.toml"
    if not wm.exists():
        pytest.skip("needs the models fetched by the first e2e test")
    with moto_s3() as endpoint:
        _s3_flow_and_startup(root, wm, endpoint)


def _s3_flow_and_startup(root: Path, wm: Path, endpoint: str) -> None:
    import soundfile as sf

    s3env = {
        "S3_BUCKET": "tts",
        "AWS_ACCESS_KEY_ID": "t",
        "AWS_SECRET_ACCESS_KEY": "t",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
    }
    import boto3

    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="t",
        aws_secret_access_key="t",
    ).create_bucket(Bucket="tts")
    proc, port, ready_volenv = _start_worker(root, wm, s3env)
    try:
        assert (
            _post(
                port,
                {
                    "endpoint": "upload",
                    "voice_name": "bob",
                    "audio_base64": _wav_b64(1.5),
                    "ref_text": "bob speaks",
                },
            )["voice_name"]
            == "bob"
        )
        assert _post(port, {"endpoint": "list_voices"})["voices"] == ["bob"]
        out = _post(
            port,
            {
                "text": "Good morning.",
                "local_voice": "bob",
                "seed": 5,
                "nfe_step": 4,
                "return_word_timings": True,
                "timing_format": "vtt",
            },
        )
        assert "error" not in out, out
        with urllib.request.urlopen(str(out["audio_url"]), timeout=20) as resp:
            assert resp.headers["Content-Type"] == "audio/wav"
            _audio, sr = sf.read(io.BytesIO(resp.read()))
        assert sr == 24000
        with urllib.request.urlopen(str(out["timing_files"]["vtt"]), timeout=20) as resp:  # type: ignore[index]
            assert resp.read().startswith(b"WEBVTT")
        dl = _post(port, {"endpoint": "download", "job_id": out["job_id"], "type": "audio"})
        with urllib.request.urlopen(str(dl["url"]), timeout=20) as resp:
            assert sf.read(io.BytesIO(resp.read()))[1] == 24000
        for job, code in (
            ({"text": "x" * 5000, "local_voice": "bob"}, "text_too_long"),
            ({"text": "hi", "local_voice": "nobody"}, "unknown_voice"),
            (
                {"text": "hi", "local_voice": "bob", "return_word_timings": True, "timing_format": "doc"},
                "invalid_format",
            ),
        ):
            bad = _post(port, job)
            assert json.loads(str(bad["error"]))["code"] == code
        assert "error" not in _post(port, {"text": "Still here.", "local_voice": "bob", "nfe_step": 4})
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # the same worker started directly in the snapshot, with the environment `volenv env` prints
    envdoc = volenv("--root", root, "--json", "env", "--manifest", wm).json()
    env = {**os.environ, **envdoc["variables"], **s3env, "RUNPOD_SKIP_GPU_CHECK": "true"}  # type: ignore[dict-item]
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    direct, ready_direct = _serve(
        [str(Path(str(envdoc["path"])) / "bin" / "python"), "-u", str(REPO / "worker" / "handler.py")],
        env,
        _port(),
        subprocess.DEVNULL,
    )
    direct.terminate()
    direct.wait(timeout=30)
    print(f"\nstart to ready: {ready_volenv:.2f}s through `volenv run`, {ready_direct:.2f}s direct")
