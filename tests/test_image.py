"""Issue 15: the RunPod image built from Dockerfile.runpod and run the way RunPod runs it.

Host tests (always): the Dockerfile's build arguments default to the production values, and
root discovery never falls back to the container disk inside RunPod.

Container tests (marked `container`; they need root, podman, runc and mmdebstrap, which
`.ci/run` installs): a Debian base from mmdebstrap stands in for the CUDA image, the host's uv
binary for ghcr.io's uv image and Debian's python3.11 for python-build-standalone. The base
tarball and podman's layers are kept under /var/tmp between runs, so a change to src/ rebuilds
only volenv's own layer. Containers run with RunPod's flags (runc, lowered ulimits, host
network) against a fake RunPod job queue on 127.0.0.1 that the SDK's production loop polls.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, volenv

DOCKERFILE = REPO / "Dockerfile.runpod"
PRODUCTION_ARGS = {
    "BASE_IMAGE": "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04",
    "UV_IMAGE": "ghcr.io/astral-sh/uv:0.8.22",
    "PYTHON": "uv",
    "PYTHON_VERSION": "3.11.13",
}
CACHE = Path(os.environ.get("VOLENV_IMAGE_CACHE", "/var/tmp/volenv-image"))
BASE_REF = "localhost/volenv-test-base:bookworm"
IMAGE = "localhost/volenv-test:latest"
# What RunPod's runtime gives a container, within this sandbox's limits (shared/TESTING.md).
RUN_FLAGS = [
    "--runtime",
    "runc",
    "--ulimit",
    "nofile=20000:20000",
    "--ulimit",
    "nproc=4096:4096",
    "--network",
    "host",
]
CA = "/etc/ssl/certs/ca-certificates.crt"
DEMO_MANIFEST = """name = "demo"
python = "3.11"
requirements = ["volenv-demo-hello==1.0"]

[index]
no-index = true
find-links = ["/app/manifests/demo-wheels"]

[activate]
smoke-imports = ["volenv_demo_hello"]
env = { DEMO_GREETING = "hello" }
"""
# Figures the scenarios measured, printed through the terminal reporter at the end (prints
# inside tests are captured).
FIGURES: list[str] = []
SERVE = ["run", "--manifest", "/m/demo.toml", "--diagnose", "--", "python", "-u", "/t/handler.py"]


# ------------------------------------------------------------------ the Dockerfile's defaults


def dockerfile_args() -> tuple[dict[str, str], list[str]]:
    """(ARG defaults, FROM lines with those defaults substituted)."""
    args: dict[str, str] = {}
    froms: list[str] = []
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        m = re.match(r"ARG\s+(\w+)(?:=(\S*))?$", line)
        if m:
            args.setdefault(m.group(1), m.group(2) or "")
        elif line.startswith("FROM "):
            froms.append(re.sub(r"\$\{(\w+)\}", lambda v: args[v.group(1)], line[5:]))
    return args, froms


def test_dockerfile_defaults_are_production() -> None:
    args, froms = dockerfile_args()
    assert {k: args.get(k) for k in PRODUCTION_ARGS} == PRODUCTION_ARGS
    assert froms == [f"{PRODUCTION_ARGS['UV_IMAGE']} AS uv", PRODUCTION_ARGS["BASE_IMAGE"]]
    text = DOCKERFILE.read_text()
    assert "COPY --from=uv /uv /usr/local/bin/uv" in text
    # the default interpreter is uv's fixed build, linked at the path snapshots record
    assert 'uv python install "$PYTHON_VERSION"' in text and "/usr/local/bin/python3.11" in text


# ------------------------------------------------------------------ root discovery in RunPod

needs_no_mounts = pytest.mark.skipif(
    any(os.path.isdir(m) for m in ("/runpod-volume", "/workspace")),
    reason="this machine has /runpod-volume or /workspace",
)


@needs_no_mounts
def test_runpod_without_volume_never_builds_on_container_disk(tmp_path: Path, wheelhouse: Path) -> None:
    from conftest import write_manifest

    m = write_manifest(tmp_path / "m", "app", ["alpha==1.0"], find_links=wheelhouse)
    home = tmp_path / "home"
    home.mkdir()
    for pod_var in ("RUNPOD_POD_ID", "RUNPOD_ENDPOINT_ID"):
        env = {"HOME": str(home), pod_var: "x1"}
        for args in (("sync", m), ("run", "--manifest", m, "--", "true"), ("status",)):
            r = volenv(*args, env=env)
            assert r.returncode == 8, (args, r.stderr)
            assert "no network volume is attached at /runpod-volume" in r.stderr, r.stderr
            assert "local fallback root" not in r.stderr
        assert list(home.iterdir()) == []  # nothing written on the "container disk"
    # --diagnose answers with it (here: no job to answer, so it exits with the code)
    r = volenv(
        "run", "--diagnose", "--manifest", m, "--", "true", env={"HOME": str(home), "RUNPOD_POD_ID": "x"}
    )
    assert r.returncode == 8 and r.stderr.startswith(
        "volenv: DIAGNOSIS: activation failed: no network volume is attached at /runpod-volume"
    ), r.stderr
    # an explicit root is obeyed
    root = tmp_path / "disk" / "volenv"
    r = volenv("sync", m, env={"HOME": str(home), "RUNPOD_POD_ID": "x", "VOLENV_ROOT": str(root)})
    assert r.returncode == 0, r.stderr
    r = volenv("--root", root, "run", "--manifest", m, "--", "true", env={"RUNPOD_POD_ID": "x"})
    assert r.returncode == 0, r.stderr


@needs_no_mounts
def test_local_fallback_root_is_announced_once(tmp_path: Path, wheelhouse: Path) -> None:
    from conftest import write_manifest

    m = write_manifest(tmp_path / "m", "app", ["alpha==1.0"], find_links=wheelhouse)
    env = {"HOME": str(tmp_path / "home"), "XDG_DATA_HOME": ""}
    fallback = tmp_path / "home" / ".local" / "share" / "volenv"
    for args in (("sync", m), ("run", "--manifest", m, "--", "true"), ("status",), ("--json", "status")):
        r = volenv(*args, env=env)
        assert r.returncode == 0, (args, r.stderr)
        assert r.stderr.count(f"using the local fallback root {fallback}") == 1, (args, r.stderr)
    r = volenv("--root", tmp_path / "r", "status", env=env)
    assert "local fallback root" not in r.stderr


def test_discover_root_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    from volenv.base.errors import VolumeError
    from volenv.store.rootfind import NO_VOLUME_ROOT, discover_root

    monkeypatch.setattr(os.path, "isdir", lambda p: False)
    with pytest.raises(VolumeError, match="no network volume is attached at /runpod-volume"):
        discover_root(None, {"RUNPOD_ENDPOINT_ID": "e"})
    assert discover_root(None, {"RUNPOD_POD_ID": "p"}, defer=True) == (NO_VOLUME_ROOT, "no-volume")
    assert discover_root(None, {"RUNPOD_POD_ID": "p", "VOLENV_ROOT": "/d/v"}) == ("/d/v", "VOLENV_ROOT")
    assert discover_root("/r", {"RUNPOD_POD_ID": "p"}) == ("/r", "--root")
    assert discover_root(None, {"XDG_DATA_HOME": "/x"})[1] == "xdg"


# ------------------------------------------------------------------ containers: the image


def _podman_usable() -> str | None:
    """None when containers can run here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "needs root (podman with runc as root; shared/TESTING.md)"
    for tool in ("podman", "runc", "mmdebstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (.ci/run installs podman runc mmdebstrap via apt)"
    r = subprocess.run(["podman", "--runtime", "runc", "info"], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        return f"podman does not work here: {r.stderr.strip()[-300:]}"
    return None


def _podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])} failed ({r.returncode}): {r.stderr[-2000:]}")
    return r


def _ensure_base() -> None:
    """The Debian stand-in for the CUDA base: built once per machine, kept as a tarball."""
    if _podman("image", "exists", BASE_REF, check=False).returncode == 0:
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    tar = CACHE / "base.tar"
    if not tar.exists():
        partial = CACHE / "base.partial.tar"  # mmdebstrap picks the format from the suffix
        subprocess.run(
            [
                "mmdebstrap",
                "--quiet",
                "--variant=minbase",
                "--include=ca-certificates,python3.11,python3.11-venv",
                "bookworm",
                str(partial),
                "http://deb.debian.org/debian",
            ],
            check=True,
            timeout=900,
        )
        partial.rename(tar)
    _podman("import", "-q", str(tar), BASE_REF, timeout=300)


def _ensure_uv_image() -> str:
    """An image holding this machine's uv binary at /uv, standing in for ghcr.io's."""
    import uv

    binary = Path(uv.find_uv_bin())
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True).stdout.split()[1]
    ref = f"localhost/volenv-test-uv:{version}"
    if _podman("image", "exists", ref, check=False).returncode != 0:
        CACHE.mkdir(parents=True, exist_ok=True)
        tar = CACHE / f"uv-{version}.tar"
        subprocess.run(["tar", "-C", str(binary.parent), "-cf", str(tar), binary.name], check=True)
        _podman("import", "-q", str(tar), ref, timeout=120)
    return ref


def build_image(context: Path, tag: str, uv_ref: str) -> str:
    """podman build of Dockerfile.runpod with the substitution args; returns the build log."""
    r = subprocess.run(
        [
            "podman",
            "build",
            "--format",
            "docker",  # OCI images drop SHELL (pipefail)
            "--layers",
            *RUN_FLAGS,
            "-v",
            f"{CA}:{CA}:ro",
            "--env",
            f"SSL_CERT_FILE={CA}",  # uv in the build trusts this machine's CA bundle
            "--build-arg",
            f"BASE_IMAGE={BASE_REF}",
            "--build-arg",
            f"UV_IMAGE={uv_ref}",
            "--build-arg",
            "PYTHON=/usr/bin/python3.11",
            "-f",
            str(context / "Dockerfile.runpod"),
            "-t",
            tag,
            str(context),
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    return log


def _say(config: pytest.Config, line: str) -> None:
    """A line on the terminal even under pytest's output capture (the figures CI must show)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capman = config.pluginmanager.getplugin("capturemanager")
    if reporter is None or capman is None:
        print(line)
        return
    with capman.global_and_fixture_disabled():
        reporter.write_line(line)


@pytest.fixture(scope="module")
def image(pytestconfig: pytest.Config) -> Iterator[str]:
    reason = _podman_usable()
    if reason:
        pytest.skip(reason)
    t0 = time.perf_counter()
    _ensure_base()
    uv_ref = _ensure_uv_image()
    build_image(REPO, IMAGE, uv_ref)
    _say(pytestconfig, "")
    _say(pytestconfig, f"image: {IMAGE} ready in {time.perf_counter() - t0:.1f} s (base, uv image and build)")
    layers = _added_layers(IMAGE)
    for size, what in layers:
        _say(pytestconfig, f"image: layer {size / 1e6:8.1f} MB  {what}")
    _say(pytestconfig, f"image: volenv's layers add {sum(s for s, _ in layers) / 1e6:.1f} MB to the base")
    yield IMAGE
    for line in FIGURES:
        _say(pytestconfig, f"image: {line}")
    _say(pytestconfig, f"image: container tests took {time.perf_counter() - t0:.1f} s in all")


def _added_layers(ref: str) -> list[tuple[int, str]]:
    """(bytes, instruction) of each non-empty layer above the base image."""
    hist = json.loads(_podman("history", "--format", "json", ref).stdout)
    base = len(json.loads(_podman("history", "--format", "json", BASE_REF).stdout))
    out = []
    for layer in reversed(hist[: len(hist) - base]):
        if layer["size"]:
            what = re.sub(r"^(\|\d+ (\S+=\S+ )*)?/bin/sh -c (#\(nop\) )?", "", layer["CreatedBy"])
            out.append((int(layer["size"]), " ".join(what.split())[:90]))
    return out


@pytest.mark.container
def test_rebuild_after_src_change_reuses_apt_and_dependency_layers(image: str, tmp_path: Path) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for name in ("Dockerfile.runpod", ".dockerignore", "pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, ctx / name)
    for name in ("src", "manifests", "worker"):
        shutil.copytree(REPO / name, ctx / name, ignore=shutil.ignore_patterns("__pycache__"))
    with open(ctx / "src" / "volenv" / "__init__.py", "a") as fh:
        fh.write(f"# changed by the image test {time.time()}\n")
    tag = "localhost/volenv-test:srcchange"
    t0 = time.perf_counter()
    log = build_image(ctx, tag, _ensure_uv_image())
    took = time.perf_counter() - t0
    try:
        steps = re.split(r"^\[\d+/\d+\] STEP ", log, flags=re.M)
        apt = next(s for s in steps if "apt-get update" in s.partition("\n")[0])
        deps = next(s for s in steps if "-r pyproject.toml" in s.partition("\n")[0])
        own = next(s for s in steps if "--no-deps /src" in s.partition("\n")[0])
        assert "Using cache" in apt and "Get:" not in apt, apt
        assert "Using cache" in deps, deps
        assert "Using cache" not in own  # volenv itself was rebuilt
        FIGURES.append(f"rebuild after a src/ change: {took:.1f} s")
    finally:
        _podman("rmi", tag, check=False)


# ------------------------------------------------------------------ the fake RunPod job queue


class FakeQueue:
    """RunPod's job API as the SDK's worker loop uses it: GET job-take (200 with a job, or 204),
    POST job-done, GET ping. Jobs are per pod, or shared when put without one."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.jobs: dict[str | None, list[dict[str, Any]]] = {}
        self.done: list[dict[str, Any]] = []
        self.takes: Counter[str] = Counter()
        self.n = 0
        self.url = ""

    def put(self, pod: str | None = None, **job_input: Any) -> str:
        with self.lock:
            self.n += 1
            jid = f"job-{self.n}"
            self.jobs.setdefault(pod, []).append({"id": jid, "input": job_input})
            return jid

    def take(self, pod: str) -> dict[str, Any] | None:
        with self.lock:
            self.takes[pod] += 1
            for key in (pod, None):
                if self.jobs.get(key):
                    return self.jobs[key].pop(0)
            return None

    def result(self, jid: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for d in self.done:
                    if d["job"] == jid:
                        return d
            time.sleep(0.1)
        raise AssertionError(f"{jid} never came back through job-done (takes: {dict(self.takes)})")

    def env(self, pod: str) -> dict[str, str]:
        return {
            "RUNPOD_POD_ID": pod,
            "RUNPOD_ENDPOINT_ID": "ep-test",
            "RUNPOD_AI_API_KEY": "test-key",
            "RUNPOD_WEBHOOK_GET_JOB": f"{self.url}/job-take/$ID?gpu=test",
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{self.url}/job-done/{pod}/$ID?gpu=test",
            "RUNPOD_WEBHOOK_PING": f"{self.url}/ping/{pod}?gpu=test",
        }


@pytest.fixture
def job_queue() -> Iterator[FakeQueue]:
    q = FakeQueue()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

        def _send(self, code: int, body: bytes = b"") -> None:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            parts = urllib.parse.urlparse(self.path).path.strip("/").split("/")
            if parts[0] == "job-take":
                job = q.take(parts[1])
                self._send(200, json.dumps(job).encode()) if job else self._send(204)
            else:
                self._send(200, b"{}")

        def do_POST(self) -> None:
            parts = urllib.parse.urlparse(self.path).path.strip("/").split("/")
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if parts[0] == "job-done":
                with q.lock:
                    q.done.append(
                        {"pod": parts[1], "job": parts[2], "body": json.loads(body), "at": time.monotonic()}
                    )
            self._send(200, b"{}")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    q.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield q
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------ running containers


class Container:
    """`podman run` in the foreground with its stdout/stderr lines timestamped as they come."""

    def __init__(self, name: str, opts: list[str], cmd: list[str], env: dict[str, str]) -> None:
        self.name = name
        env_args = [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            ["podman", "run", "--rm", "--name", name, *RUN_FLAGS, *env_args, *opts, IMAGE, *cmd],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.err: list[tuple[float, str]] = []
        self.out: list[tuple[float, str]] = []
        for stream, sink in ((self.proc.stderr, self.err), (self.proc.stdout, self.out)):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()

    def _pump(self, stream: Any, sink: list[tuple[float, str]]) -> None:
        for line in stream:
            sink.append((time.monotonic() - self.t0, line.rstrip("\n")))

    def text(self) -> str:
        return "\n".join(line for _, line in self.err + self.out)

    def wait_line(self, pred: Callable[[str], bool], timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, line in list(self.err) + list(self.out):
                if pred(line):
                    return at
            if self.proc.poll() is not None:
                time.sleep(0.3)  # let the pumps drain
                if not any(pred(ln) for _, ln in self.err + self.out):
                    break
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: expected line never came:\n{self.text()[-3000:]}")

    def stop(self) -> None:
        subprocess.run(["podman", "rm", "-f", "-t", "0", self.name], capture_output=True, timeout=60)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def containers() -> Iterator[Callable[..., Container]]:
    started: list[Container] = []

    def start(name: str, opts: list[str], cmd: list[str], env: dict[str, str]) -> Container:
        name = f"volenv-test-{name}-{os.getpid()}"
        subprocess.run(["podman", "rm", "-f", "-t", "0", name], capture_output=True, timeout=60)
        c = Container(name, opts, cmd, env)
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()


def podman_run(
    opts: list[str], cmd: list[str], env: dict[str, str], timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    env_args = [a for k, v in env.items() for a in ("-e", f"{k}={v}")]
    return subprocess.run(
        ["podman", "run", "--rm", *RUN_FLAGS, *env_args, *opts, IMAGE, *cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _manifest_dir(tmp_path: Path, text: str = DEMO_MANIFEST) -> Path:
    d = tmp_path / "m"
    d.mkdir(parents=True, exist_ok=True)
    (d / "demo.toml").write_text(text)
    return d


def _serve_opts(volume: Path, mdir: Path, mount: str = "/runpod-volume", ro: bool = False) -> list[str]:
    return [
        "-v",
        f"{volume}:{mount}{':ro' if ro else ''}",
        "-v",
        f"{mdir}:/m:ro",
        "-v",
        f"{REPO / 'tests' / 'image_handler.py'}:/t/handler.py:ro",
    ]


def _diagnosis(done: dict[str, Any]) -> dict[str, Any]:
    """The volenv report inside a job-done body (the SDK moves 'error' beside 'output')."""
    body = done["body"]
    for holder in (body, body.get("output") or {}):
        if isinstance(holder, dict) and "volenv_diagnosis" in holder:
            return holder["volenv_diagnosis"]  # type: ignore[no-any-return]
    raise AssertionError(f"no volenv_diagnosis in {body}")


@pytest.fixture(scope="module")
def provisioned(
    image: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A host directory provisioned the way `volenv provision` starts the image."""
    vol = tmp_path_factory.mktemp("provisioned")
    r = podman_run(
        ["-v", f"{vol}:/runpod-volume"],
        ["--root", "/runpod-volume/volenv", "--no-progress", "sync", "--from-env", "VOLENV_MANIFEST_TOML"],
        {"RUNPOD_POD_ID": "provision-1", "VOLENV_MANIFEST_TOML": DEMO_MANIFEST},
    )
    return vol, r


# ------------------------------------------------------------------ the scenarios


@pytest.mark.container
def test_no_volume_diagnoses_first_and_answers_jobs(
    image: str, job_queue: FakeQueue, containers: Callable[..., Container]
) -> None:
    c = containers("novol", [], [], job_queue.env("pod-novol"))  # the image's own CMD
    at = c.wait_line(lambda ln: "DIAGNOSIS" in ln, timeout=30)
    first = [ln for _, ln in c.err][:3]
    FIGURES.append(f"no volume: diagnosis {at:.2f} s after podman run")
    assert first[0].startswith(
        "volenv: DIAGNOSIS: activation failed: no network volume is attached at /runpod-volume"
    ), c.text()
    assert first[1].startswith("volenv: exit code 8") and "fix: attach a network volume" in first[2]
    assert at < 2.0, f"the diagnosis took {at:.2f} s to appear"
    jid = job_queue.put(text="hello")
    done = job_queue.result(jid, timeout=60)
    report = _diagnosis(done)
    assert report["exit_code"] == 8 and "no network volume" in report["failed"]
    assert "environment unavailable" in json.dumps(done["body"])
    polls = job_queue.takes["pod-novol"]
    time.sleep(2)
    assert c.proc.poll() is None, c.text()  # still serving: no exit 1, no silence
    assert job_queue.takes["pod-novol"] > polls
    jid = job_queue.put(text="again")
    assert _diagnosis(job_queue.result(jid, timeout=30))["exit_code"] == 8


@pytest.mark.container
def test_provisioning_builds_the_demo_snapshot(
    provisioned: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    vol, r = provisioned
    assert r.returncode == 0, r.stdout + r.stderr
    snaps = list((vol / "volenv" / "envs" / "demo" / "snapshots").iterdir())
    assert len(snaps) == 1 and snaps[0].name.startswith("demo-")
    assert (snaps[0] / "bin" / "python").is_symlink()


@pytest.mark.container
def test_serving_from_the_volume(
    provisioned: tuple[Path, subprocess.CompletedProcess[str]],
    job_queue: FakeQueue,
    containers: Callable[..., Container],
    tmp_path: Path,
) -> None:
    vol, _ = provisioned
    jid = job_queue.put(text="first")
    c = containers("serve", _serve_opts(vol, _manifest_dir(tmp_path)), SERVE, job_queue.env("pod-serve"))
    done = job_queue.result(jid, timeout=90)
    FIGURES.append(f"serving: start to first job {done['at'] - c.t0:.2f} s")
    out = done["body"]["output"]
    assert out["echo"] == {"text": "first"} and out["greeting"] == "hello"
    assert out["prefix"].startswith("/runpod-volume/volenv/envs/demo/snapshots/demo-"), out
    assert out["demo_module"].startswith(out["prefix"]) or "/volenv-mat" in out["demo_module"], out
    assert "DIAGNOSIS" not in c.text()


@pytest.mark.container
def test_pod_with_the_volume_at_workspace(
    provisioned: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    vol, _ = provisioned
    mdir = _manifest_dir(tmp_path)
    opts = ["-v", f"{vol}:/workspace", "-v", f"{mdir}:/m:ro"]
    env = {"RUNPOD_POD_ID": "pod-ws", "VOLENV_NO_PROGRESS": "1", "NO_COLOR": "1"}
    r = podman_run(opts, ["status"], env)
    assert r.returncode == 0 and "root: /workspace/volenv (from /workspace)" in r.stdout, r.stdout
    assert re.search(r"demo-[0-9a-f]{12} .* valid", r.stdout), r.stdout
    assert "local fallback root" not in r.stderr
    r = podman_run(opts, ["verify", "--level", "full", "demo"], env)
    assert r.returncode == 0, r.stdout + r.stderr
    probe = "import os, sys, volenv_demo_hello; print(sys.prefix, os.environ['DEMO_GREETING'])"
    r = podman_run(opts, ["run", "--manifest", "/m/demo.toml", "--", "python", "-c", probe], env)
    assert r.returncode == 0, r.stdout + r.stderr
    prefix, greeting = r.stdout.split()
    assert prefix.startswith("/workspace/volenv/envs/demo/snapshots/demo-") and greeting == "hello"


@pytest.mark.container
def test_read_only_volume_serves_and_diagnoses_a_manifest_change(
    provisioned: tuple[Path, subprocess.CompletedProcess[str]],
    job_queue: FakeQueue,
    containers: Callable[..., Container],
    tmp_path: Path,
) -> None:
    vol, _ = provisioned
    jid = job_queue.put(pod="pod-ro", text="ro")
    c = containers(
        "ro", _serve_opts(vol, _manifest_dir(tmp_path / "a"), ro=True), SERVE, job_queue.env("pod-ro")
    )
    out = job_queue.result(jid, timeout=90)["body"]["output"]
    assert out["greeting"] == "hello", out
    changed = DEMO_MANIFEST.replace('"hello"', '"changed"')
    jid = job_queue.put(pod="pod-ro2", text="ro2")
    c2 = containers(
        "ro2",
        _serve_opts(vol, _manifest_dir(tmp_path / "b", changed), ro=True),
        SERVE,
        job_queue.env("pod-ro2"),
    )
    report = _diagnosis(job_queue.result(jid, timeout=90))
    assert report["exit_code"] == 8, report
    assert "read-only" in json.dumps(report).lower(), report
    assert c.proc.poll() is None and c2.proc.poll() is None, c2.text()


@pytest.mark.container
def test_a_handler_that_dies_at_import_is_diagnosed_and_jobs_are_answered(
    provisioned: tuple[Path, subprocess.CompletedProcess[str]],
    job_queue: FakeQueue,
    containers: Callable[..., Container],
    tmp_path: Path,
) -> None:
    """Issue 25: the image's CMD pattern (`run --diagnose -- python -u handler.py`) with a handler
    that raises at import (the production env's torchcodec: a missing CUDA library). Before,
    the container exited 1 and no job was answered; now both jobs get the diagnosis, with the
    handler's traceback tail, and the container keeps polling."""
    vol, _ = provisioned
    crash = tmp_path / "crash.py"
    crash.write_text(
        "raise OSError('libnvrtc.so.13: cannot open shared object file: No such file or directory')\n"
    )
    opts = [
        "-v",
        f"{vol}:/runpod-volume",
        "-v",
        f"{_manifest_dir(tmp_path)}:/m:ro",
        "-v",
        f"{crash}:/t/handler.py:ro",
    ]
    first, second = job_queue.put(pod="pod-crash", text="a"), job_queue.put(pod="pod-crash", text="b")
    c = containers("crash", opts, SERVE, job_queue.env("pod-crash"))
    for jid in (first, second):
        report = _diagnosis(job_queue.result(jid, timeout=90))
        assert report["phase"] == "boot" and report["exit_code"] == 1, report
        assert any("libnvrtc.so.13" in ln for ln in report["stderr_tail"]), report
        assert report["verify"]["ok"] is True, report
    time.sleep(2)
    assert c.proc.poll() is None, c.text()
    FIGURES.append("handler crash at import: both jobs answered with the diagnosis; still polling")


def _handler_image(tmp_path: Path, tag: str, value: int) -> None:
    """A worker image as a user builds one: volenv's image plus their handler, a package whose
    manifest says `worker @ ./` (what `volenv init` writes for a package project)."""
    from test_inputs import BACKEND

    ctx = tmp_path / f"ctx{value}"
    pkg = ctx / "app"
    (pkg / "worker").mkdir(parents=True)
    (pkg / "pyproject.toml").write_text(
        '[project]\nname = "worker"\nversion = "1.0"\n\n'
        '[build-system]\nrequires = []\nbuild-backend = "tinybackend"\nbackend-path = ["."]\n'
    )
    (pkg / "tinybackend.py").write_text(BACKEND)
    (pkg / "worker" / "__init__.py").write_text(f"VALUE = {value}\n")
    (pkg / "volenv.toml").write_text(
        'name = "handler"\npython = "3.11"\nrequirements = ["worker @ ./"]\n[index]\nno-index = true\n'
    )
    # each version edited at its own time, as a developer's are: an image layer keeps mtimes to
    # the second, so two versions written within one second (same size) would look the same to
    # the start's stat fingerprint (tree.py names this limit; `sync` always takes the digest)
    stamp = 1_700_000_000 + 3600 * value
    for f in (pkg / "worker" / "__init__.py", pkg / "pyproject.toml", pkg / "tinybackend.py"):
        os.utime(f, (stamp, stamp))
    (ctx / "Containerfile").write_text(f"FROM {IMAGE}\nCOPY app /app/handler\n")
    _podman("build", *RUN_FLAGS, "-f", str(ctx / "Containerfile"), "-t", tag, str(ctx), timeout=300)


@pytest.mark.container
def test_a_rebuilt_handler_image_runs_its_new_code_from_the_same_volume(image: str, tmp_path: Path) -> None:
    """Issue 31's real case: the worker's image is rebuilt with new handler code and started on
    the volume its previous image synced; it must run the new code (it ran the old one)."""
    vol = tmp_path / "vol"
    vol.mkdir()
    probe = "import os, worker; print(worker.VALUE, os.environ['VOLENV_SNAPSHOT'])"
    cmd = ["run", "--manifest", "/app/handler/volenv.toml", "--", "python", "-c", probe]
    env_args = ["-e", "RUNPOD_POD_ID=pod-h", "-e", "VOLENV_NO_PROGRESS=1"]
    seen = []
    try:
        for value in (1, 2, 1):
            tag = f"localhost/volenv-test-handler:v{value}"
            _handler_image(tmp_path / f"round{len(seen)}", tag, value)
            r = subprocess.run(
                ["podman", "run", "--rm", *RUN_FLAGS, *env_args, "-v", f"{vol}:/runpod-volume", tag, *cmd],
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert r.returncode == 0, r.stdout + r.stderr
            got, sid = r.stdout.split()
            assert got == str(value), f"image v{value} ran VALUE={got}: {r.stderr}"
            seen.append(sid)
    finally:
        for value in (1, 2):
            _podman("rmi", f"localhost/volenv-test-handler:v{value}", check=False)
    assert seen[0] != seen[1] and seen[2] == seen[0], seen  # v1 again: its snapshot, no third build
    FIGURES.append("rebuilt handler image: new code ran from the same volume; the old image's snapshot again")


@pytest.mark.container
def test_stampede_four_workers_one_build(
    image: str, job_queue: FakeQueue, containers: Callable[..., Container], tmp_path: Path
) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    mdir = _manifest_dir(tmp_path)
    pods = [f"pod-s{i}" for i in range(4)]
    jobs = {pod: job_queue.put(pod=pod, n=i) for i, pod in enumerate(pods)}
    t0 = time.monotonic()
    cs = [containers(pod, _serve_opts(vol, mdir), SERVE, job_queue.env(pod)) for pod in pods]
    for pod in pods:
        out = job_queue.result(jobs[pod], timeout=240)["body"]["output"]
        assert out["pod"] == pod and out["greeting"] == "hello"
    FIGURES.append(f"stampede: four workers answered in {time.monotonic() - t0:.1f} s")
    snaps = list((vol / "volenv" / "envs" / "demo" / "snapshots").iterdir())
    logs = list((vol / "volenv" / "logs" / "demo").glob("build-*.log"))
    assert len(snaps) == 1 and len(logs) == 1, (snaps, logs, [c.text() for c in cs])
    texts = [c.text() for c in cs]
    assert sum("building demo-" in t for t in texts) == 1, texts
    waited = sum("waiting for the build lease of 'demo'" in t for t in texts)
    FIGURES.append(f"stampede: {waited} of the other three waited on the build lease")


@pytest.mark.container
@pytest.mark.mounts
def test_full_volume_names_free_and_needed_space(
    image: str, job_queue: FakeQueue, containers: Callable[..., Container], tmp_path: Path
) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(vol)], check=True)
    try:
        jid = job_queue.put(text="full")
        c = containers("full", _serve_opts(vol, _manifest_dir(tmp_path)), SERVE, job_queue.env("pod-full"))
        report = _diagnosis(job_queue.result(jid, timeout=90))
        assert report["exit_code"] == 6, report
        assert "free now" in report["failed"] and "needed at least" in report["failed"], report
        assert c.wait_line(lambda ln: "DIAGNOSIS" in ln and "free now" in ln, timeout=5) >= 0
        c.stop()
    finally:
        subprocess.run(["umount", "-l", str(vol)], check=False)


# ------------------------------------------------------------------ optional extras


def test_optional_extras_are_named_when_missing(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    """runpod, boto3 and huggingface_hub are extras: hidden here, each command that needs one
    fails with a clear line naming the extra, never a traceback. (The hint `pip install
    'volenv[EXTRA]'` shows its brackets once error rendering escapes rich markup.)"""
    from conftest import write_manifest

    hide = tmp_path / "hide"
    hide.mkdir()
    for mod in ("runpod", "boto3", "huggingface_hub", "zstandard", "cryptography"):
        (hide / f"{mod}.py").write_text("raise ImportError('hidden by the test')\n")
    env = {"PYTHONPATH": str(hide), "HOME": str(tmp_path), "RUNPOD_API_KEY": "k"}
    m = write_manifest(tmp_path / "m", "app", ["alpha==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", m, env=env).returncode == 0  # the core needs none
    r = volenv(
        "--root", root, "provision", "--volume-id", "vol1", "--manifest", m, "--image", "x/y:1", env=env
    )
    assert r.returncode == 2 and "volenv's 'runpod' extra" in r.stderr, r.stderr
    r = volenv("--root", root, "push", "app", "--to", "s3://bucket/prefix", env=env)
    assert r.returncode == 2 and "volenv's 's3' extra" in r.stderr, r.stderr
    hf = write_manifest(
        tmp_path / "h",
        "hfapp",
        ["alpha==1.0"],
        find_links=wheelhouse,
        extra=f'[[models]]\nname = "voc"\nhf = {{ repo = "org/voc", revision = "{"a" * 40}", files = ["c.yaml"] }}\n',
    )
    r = volenv("--root", root, "models", "fetch", hf, env=env)
    assert r.returncode == 9 and "volenv's 'hf' extra" in r.stderr, r.stderr
    r = volenv(
        "--root",
        root,
        "run",
        "--diagnose",
        "--on-missing",
        "fail",
        "--manifest",
        hf,
        "--",
        "python",
        "h.py",
        env={**env, "RUNPOD_WEBHOOK_GET_JOB": "http://127.0.0.1:9/job-take/$ID?x=1"},
    )
    assert r.returncode == 3 and "volenv's 'runpod' extra" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_packs_and_signatures_are_extras(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    """zstandard and cryptography are two thirds of a core install: extras ('packs', 'sign',
    both in 's3'). Without them `sync --pack` refuses before building, key generation names its
    extra, and `run --materialize` runs a packed snapshot in place with a warning."""
    from conftest import write_manifest

    hide = tmp_path / "hide"
    hide.mkdir()
    for mod in ("zstandard", "cryptography"):
        (hide / f"{mod}.py").write_text("raise ImportError('hidden by the test')\n")
    env = {"PYTHONPATH": str(hide), "HOME": str(tmp_path)}
    m = write_manifest(tmp_path / "m", "app", ["alpha==1.0"], find_links=wheelhouse)
    r = volenv("--root", root, "sync", "--pack", m, env=env)
    assert (
        r.returncode == 2 and "zstandard is not installed: it comes with volenv's 'packs' extra" in r.stderr
    )
    assert "pip install 'volenv[packs]'" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (root / "envs" / "app").exists()  # refused before building anything
    r = volenv("key", "generate", "--out", tmp_path / "k.key", env=env)
    assert r.returncode == 2 and "volenv's 'sign' extra" in r.stderr, r.stderr
    assert not (tmp_path / "k.key").exists()
    assert volenv("--root", root, "sync", "--pack", m).returncode == 0  # packed with the extras
    local = tmp_path / "local"
    probe = ["python", "-c", "import sys; print(sys.prefix)"]
    args = ["run", "--materialize", "always", "--materialize-dir", local, "--manifest", m, "--", *probe]
    r = volenv("--root", root, *args, env=env)
    assert r.returncode == 0, r.stderr
    assert "materialize: zstandard is not installed" in r.stderr and "running in place" in r.stderr
    assert r.stdout.strip().startswith(str(root)), r.stdout
    r = volenv("--root", root, *args)
    assert r.returncode == 0 and r.stdout.strip().startswith(str(local)), (r.stdout, r.stderr)


# ------------------------------------------------------------------ the F5-TTS worker in the image

# A volume kept between runs on this machine: the ~2 GB CPU environment (and the uv cache volenv
# keeps inside the root, root/cache/uv) builds once. The host's e2e volume cannot be reused: the
# image's interpreter (Debian's python3.11) is another build than the host's.
F5_VOLUME = CACHE / "f5-volume"
F5_TINY = CACHE / "f5-tiny-models"
F5_REQUIREMENTS = ["torch==2.13.0", "f5-tts==1.1.22", "soundfile", "runpod>=1.10,<1.12", "boto3", "pyyaml"]
F5_MODELS = (("f5tts-v1-base", "f5"), ("vocos-mel-24khz", "vocos"), ("ctc-aligner", "ctc"))


def _f5_manifests(mdir: Path) -> None:
    """f5-cpu.toml (the environment; its key ignores models) and worker.toml (with the tiny
    models as Hub repos at a fixed revision, served by the fake Hub)."""
    from test_worker_e2e import POST_INSTALL, REV

    base = (
        # one project in two files (the env, and the worker's with its models): one id
        'id = "tests/f5-cpu"\nname = "f5-cpu"\npython = "3.11"\n'
        f"requirements = {json.dumps(F5_REQUIREMENTS)}\n"
        '[index]\nfind-links = ["/wheels"]\n'
        f"[build]\npost-install = {json.dumps(POST_INSTALL)}\n"
        '[activate]\nsmoke-imports = ["torch", "f5_tts.infer.utils_infer", "soundfile", "runpod"]\n'
    )
    models = "".join(
        f'[[models]]\nname = "{name}"\nhf = {{ repo = "acme/{d}", revision = "{REV}", allow-patterns = ["*"] }}\n'
        for name, d in F5_MODELS
    )
    mdir.mkdir(parents=True, exist_ok=True)
    (mdir / "f5-cpu.toml").write_text(base)
    (mdir / "worker.toml").write_text(base + models)


@pytest.fixture(scope="module")
def f5_volume(image: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(kept volume, manifest dir): the F5-TTS CPU snapshot built inside the image (the local CPU
    torch wheel mounted as find-links, f5-tts from PyPI) and the tiny models fetched onto it
    through a fake Hub on 127.0.0.1. Each step is a no-op when the volume already has it."""
    from conftest import pypi_reachable
    from test_worker_e2e import _serve_models
    from wheelfactory import local_torch_wheels

    if not pypi_reachable():
        pytest.skip("PyPI unreachable: f5-tts cannot be installed")
    wheels = local_torch_wheels("2.13.0")
    if wheels is None:
        pytest.skip("no local CPU torch 2.13.0 wheel (pip config find-links)")
    mdir = tmp_path_factory.mktemp("f5m")
    _f5_manifests(mdir)
    F5_VOLUME.mkdir(parents=True, exist_ok=True)
    opts = [
        "-v",
        f"{F5_VOLUME}:/runpod-volume",
        "-v",
        f"{wheels}:/wheels:ro",
        "-v",
        f"{mdir}:/m:ro",
        "-v",
        f"{CA}:{CA}:ro",
    ]
    env = {"RUNPOD_POD_ID": "f5-provision", "SSL_CERT_FILE": CA, "VOLENV_NO_PROGRESS": "1"}
    t0 = time.perf_counter()
    r = podman_run(opts, ["sync", "/m/f5-cpu.toml"], env, timeout=3000)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    FIGURES.append(f"f5: environment ready on the kept volume in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    if not (F5_TINY / "models").is_dir():
        shutil.rmtree(F5_TINY / "partial", ignore_errors=True)
        F5_TINY.mkdir(parents=True, exist_ok=True)
        tiny = ["-v", f"{F5_TINY}:/out", "-v", f"{REPO / 'tests' / 'e2e'}:/t:ro"]
        cmd = [
            "run",
            "--manifest",
            "/m/f5-cpu.toml",
            "--",
            "python",
            "/t/make_tiny_models.py",
            "/out/partial",
        ]
        r = podman_run(opts + tiny, cmd, env, timeout=600)
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
        (F5_TINY / "partial").rename(F5_TINY / "models")
    hub, srv = _serve_models(F5_TINY / "models")
    try:
        fetch_env = {**env, "HF_ENDPOINT": hub, "HF_HUB_DISABLE_XET": "1"}
        # the manifest the worker serves, synced as `volenv provision` would: env reused, models fetched
        r = podman_run(opts, ["sync", "/m/worker.toml"], fetch_env, timeout=600)
    finally:
        srv.shutdown()  # type: ignore[attr-defined]
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    FIGURES.append(f"f5: tiny models made and fetched in {time.perf_counter() - t0:.1f} s")
    return F5_VOLUME, mdir


def _wav_b64(seconds: float = 2.0) -> str:
    """A 24 kHz sine as base64 WAV (standard library only: the host venv has no soundfile)."""
    import base64
    import io
    import math
    import struct
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(24000)
        n = int(24000 * seconds)
        w.writeframes(
            b"".join(struct.pack("<h", int(9000 * math.sin(2 * math.pi * 220 * i / 24000))) for i in range(n))
        )
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.container
@pytest.mark.slow
@pytest.mark.pypi
def test_f5_tts_worker_in_the_image(
    f5_volume: tuple[Path, Path], job_queue: FakeQueue, containers: Callable[..., Container]
) -> None:
    """The image's default CMD pattern (`run --manifest ... --diagnose -- python -u
    /app/worker/handler.py`) serving the real F5-TTS worker from the volume's snapshot through
    the runpod SDK's production loop: a voice upload, then speech with word timings."""
    import base64
    import io
    import wave

    vol, mdir = f5_volume
    pod = "pod-f5"
    env = {
        **job_queue.env(pod),
        "RUNPOD_SKIP_GPU_CHECK": "true",
        "WORKER_DEVICE": "cpu",
        "WORKER_DATA_DIR": "/tmp/worker-data",
    }
    cmd = [
        "run",
        "--manifest",
        "/m/worker.toml",
        "--diagnose",
        "--",
        "python",
        "-u",
        "/app/worker/handler.py",
    ]
    default = json.loads(_podman("image", "inspect", "--format", "{{json .Config.Cmd}}", IMAGE).stdout)
    assert default == [*cmd[:2], "/app/manifests/f5-tts.toml", *cmd[3:]], default  # the CMD pattern
    up = job_queue.put(
        pod=pod, endpoint="upload", voice_name="narrator", audio_base64=_wav_b64(), ref_text="a calm voice"
    )
    c = containers("f5", ["-v", f"{vol}:/runpod-volume", "-v", f"{mdir}:/m:ro"], cmd, env)
    done = job_queue.result(up, timeout=300)
    FIGURES.append(f"f5: start to first job (voice upload) {done['at'] - c.t0:.2f} s")
    assert done["body"].get("output", {}).get("voice_name") == "narrator", (done, c.text()[-3000:])
    job = {"text": "Hello world from volenv.", "local_voice": "narrator", "seed": 1234, "nfe_step": 4}
    tts = job_queue.put(pod=pod, **job, return_word_timings=True)
    t0 = time.monotonic()
    out = job_queue.result(tts, timeout=300)["body"].get("output") or {}
    FIGURES.append(f"f5: speech job answered in {time.monotonic() - t0:.2f} s (tiny model, CPU)")
    assert "audio_base64" in out, (out, c.text()[-3000:])
    with wave.open(io.BytesIO(base64.b64decode(out["audio_base64"]))) as w:
        assert w.getframerate() == 24000 == out["sample_rate"]
        assert 0.2 < w.getnframes() / 24000 < 20
    assert [t["word"] for t in out["word_timings"]] == ["Hello", "world", "from", "volenv."], out
    assert all(t["end"] >= t["start"] >= 0 for t in out["word_timings"]), out["word_timings"]
    assert "DIAGNOSIS" not in c.text() and c.proc.poll() is None, c.text()[-3000:]


# ------------------------------------------------------------------ the core install's size

CORE_BUDGET = 60_000_000  # bytes: `pip install volenv` without extras (issue 15)
SIZES = r"""
import importlib.metadata as md, json, os, sys, sysconfig
site, bin_ = sysconfig.get_path("purelib"), os.path.dirname(sys.executable)
skip = ("pip", "setuptools", "pkg_resources", "_distutils_hack", "distutils-precedence.pth")
total = 0
for top in (site, bin_):
    for dirpath, dirs, files in os.walk(top):
        if dirpath == site:
            dirs[:] = [d for d in dirs if not d.startswith(skip)]
            files = [f for f in files if not f.startswith(skip)]
        if dirpath == bin_:
            files = [f for f in files if not f.startswith("pip")]
        for f in files:
            p = os.path.join(dirpath, f)
            total += 0 if os.path.islink(p) else os.path.getsize(p)
seen, per = set(), {}
for d in md.distributions():
    n = 0
    for f in d.files or []:
        p = os.path.realpath(d.locate_file(f))
        if p not in seen and os.path.isfile(p):
            seen.add(p)
            n += os.path.getsize(p)
    per[d.metadata["Name"].lower()] = n
print(json.dumps({"total": total, "per": per}))
"""


@pytest.mark.slow
@pytest.mark.pypi
def test_core_install_size(tmp_path: Path, pytestconfig: pytest.Config) -> None:
    """`pip install volenv` without extras in a fresh venv: the files of site-packages and bin,
    pip and setuptools left out, within the budget; the heavy extras stay out of it."""
    import sys

    from conftest import pypi_reachable

    if not pypi_reachable():
        pytest.skip("PyPI unreachable: the core dependencies cannot be installed")
    wheels = tmp_path / "whl"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    r = subprocess.run(
        [py, "-m", "pip", "install", "-q", *map(str, wheels.glob("volenv-*.whl"))],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(subprocess.run([py, "-c", SIZES], capture_output=True, text=True, check=True).stdout)
    per = {n: s for n, s in doc["per"].items() if n not in ("pip", "setuptools")}
    _say(pytestconfig, "")
    for name, size in sorted(per.items(), key=lambda kv: -kv[1]):
        _say(pytestconfig, f"core install: {size / 1e6:7.2f} MB  {name}")
    _say(pytestconfig, f"core install: {doc['total'] / 1e6:7.2f} MB in all ({doc['total'] / 2**20:.1f} MiB)")
    for heavy in ("zstandard", "cryptography", "boto3", "runpod", "huggingface-hub"):
        assert heavy not in per, f"{heavy} is in the core install: {sorted(per)}"
    assert doc["total"] <= CORE_BUDGET, f"core install is {doc['total'] / 1e6:.1f} MB > 60 MB: {per}"
