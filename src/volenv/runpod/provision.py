"""`volenv provision`: a one-off RunPod pod, with the network volume mounted where serverless
workers see it (/runpod-volume), runs `volenv sync` for a manifest and exits; volenv polls it,
terminates it, and reports.

The manifest travels in an environment variable, so provisioning needs no image rebuild. The
runpod SDK formats GraphQL by string interpolation without escaping: every value volenv
passes is validated (ids, names, image) or escaped as a GraphQL string (env values, args).
The API key comes from RUNPOD_API_KEY or the runpod config and is never printed or logged.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from volenv.base.errors import UsageError, VolenvError, missing_extra
from volenv.base.ui import reporter
from volenv.manifest.parse import load_manifest

MOUNT = "/runpod-volume"
ROOT_IN_POD = f"{MOUNT}/volenv"
ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
GPU = re.compile(r"^[A-Za-z0-9 ._-]{1,80}$")
IMAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,255}$")
# a docker reference: [registry[:port]/]path[:tag][@sha256:digest], the path lowercase
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REF = re.compile(
    rf"^(?:[A-Za-z0-9.-]+(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$"
)
# RunPod network volume ids: lowercase letters and digits (e.g. "agv6w2qcg7")
VOLUME_ID = re.compile(r"^[a-z0-9]{1,64}$")
DATACENTER = re.compile(r"^[A-Z]{2}-[A-Z]{2,4}-[0-9]{1,2}$")
DONE_STATES = {"EXITED", "TERMINATED", "DEAD"}


class ProvisionError(VolenvError):
    exit_code = 7


class APIUnreachable(VolenvError):
    """RunPod's API could not be reached (DNS, refused, timed out): exit 8, as an unavailable
    volume is, not 7 (nothing was built, nothing refused)."""

    exit_code = 8


@dataclass(frozen=True)
class ProvisionOptions:
    volume_id: str
    manifest: Path
    image: str
    gpu_type: str | None = None
    data_center: str | None = None
    wait: bool = True
    timeout: float = 3600.0
    poll: float = 10.0
    container_disk_gb: int = 20


@dataclass(frozen=True)
class ProvisionResult:
    pod_id: str
    name: str
    status: str
    last_status_change: str | None
    terminated: bool
    seconds: float
    result_on_volume: str


def gql_string(value: str) -> str:
    """Escape for inside a GraphQL "string" literal (the SDK adds the quotes)."""
    return json.dumps(value)[1:-1]


def _check(pattern: re.Pattern[str], value: str, what: str) -> str:
    if not pattern.match(value):
        raise UsageError(f"{what}: {value!r} contains characters RunPod ids/names do not have")
    return value


def api_key() -> str:
    key = os.environ.get("RUNPOD_API_KEY")
    if not key:
        runpod = _runpod()
        key = runpod.api_key
    if not key:
        raise UsageError(
            "no RunPod API key", hint="export RUNPOD_API_KEY=... or `runpod config` (~/.runpod/config.toml)"
        )
    return str(key)


def pod_command() -> str:
    """The provisioning container's start command, after the image's ENTRYPOINT ["volenv"]."""
    return (
        f"--root {ROOT_IN_POD} --no-progress sync --from-env VOLENV_MANIFEST_TOML"
        f" --result {ROOT_IN_POD}/logs/provision/$RUNPOD_POD_ID.json"
    )


def _runpod() -> Any:
    try:
        import runpod
    except ImportError:
        raise missing_extra("runpod", "runpod") from None
    return runpod


def provision(opts: ProvisionOptions) -> ProvisionResult:
    runpod = _runpod()
    _check(ID, opts.volume_id, "--volume-id")
    if not VOLUME_ID.match(opts.volume_id):
        raise UsageError(
            f"--volume-id: {opts.volume_id!r} is not a RunPod network volume id"
            " (lowercase letters and digits, as the console's Storage page shows them)"
        )
    _check(IMAGE, opts.image, "--image")
    if not IMAGE_REF.match(opts.image):
        raise UsageError(
            f"--image: {opts.image!r} is not an image name a pod can pull"
            " ([registry/]name[:tag], the name in lowercase, e.g. 'ghcr.io/me/worker:1.0')"
        )
    if opts.gpu_type is not None:
        _check(GPU, opts.gpu_type, "--gpu-type")
    if opts.data_center is not None:
        _check(DATACENTER, opts.data_center, "--data-center")
    manifest = load_manifest(opts.manifest)  # exit 2 before any API call
    unseen = pod_cannot_see(manifest)
    if unseen:
        raise UsageError(
            f"{opts.manifest}: the pod gets only this manifest's text, and it names files the pod"
            f" cannot read (a relative path, or this machine's own): {'; '.join(unseen)}",
            hint=f"name them by an absolute path the pod has: on the volume (under {MOUNT}) or in"
            " the image (e.g. /app/manifests/...), or put the requirements inline",
        )
    text = opts.manifest.read_text(encoding="utf-8")
    runpod.api_key = api_key()
    name = f"volenv-provision-{manifest.name}-{secrets.token_hex(3)}"
    env = {
        "VOLENV_MANIFEST_TOML": gql_string(text),
        "VOLENV_ROOT": ROOT_IN_POD,
        "VOLENV_NO_PROGRESS": "1",
    }
    t0 = time.monotonic()
    reporter.info(f"creating pod {name} ({opts.gpu_type or 'CPU'}) with volume {opts.volume_id} at {MOUNT}")
    try:
        pod = runpod.create_pod(
            name=name,
            image_name=opts.image,
            gpu_type_id=opts.gpu_type,
            data_center_id=opts.data_center,
            network_volume_id=opts.volume_id,
            volume_mount_path=MOUNT,
            docker_args=gql_string(pod_command()),
            env=env,
            start_ssh=False,
            support_public_ip=False,
            container_disk_in_gb=opts.container_disk_gb,
        )
    except Exception as exc:  # the SDK raises plain exceptions for API errors
        _raise_if_unreachable(exc, "creating the pod")
        raise ProvisionError(f"RunPod refused to create the pod: {_scrub(str(exc))}") from None
    pod_id = str(pod.get("id") or "")
    if not pod_id:
        raise ProvisionError(f"RunPod answered without a pod id: {_scrub(json.dumps(pod))[:300]}")
    reporter.info(f"pod {pod_id} created; it runs `volenv sync` for '{manifest.name}'")
    status, change = "CREATED", None
    terminated = False
    try:
        if opts.wait:
            status, change = _wait(runpod, pod_id, opts)
    finally:
        if opts.wait:
            try:
                runpod.terminate_pod(pod_id)
                terminated = True
                reporter.info(f"pod {pod_id} terminated")
            except Exception as exc:
                reporter.warn(f"could not terminate pod {pod_id}: {_scrub(str(exc))}; terminate it by hand")
    return ProvisionResult(
        pod_id,
        name,
        status,
        change,
        terminated,
        time.monotonic() - t0,
        f"{ROOT_IN_POD}/logs/provision/{pod_id}.json",
    )


def _wait(runpod: Any, pod_id: str, opts: ProvisionOptions) -> tuple[str, str | None]:
    deadline = time.monotonic() + opts.timeout
    last = None
    while True:
        try:
            pod = runpod.get_pod(pod_id) or {}
        except Exception as exc:
            _raise_if_unreachable(exc, f"polling pod {pod_id} (it is still running: terminate it by hand)")
            raise ProvisionError(f"polling pod {pod_id} failed: {_scrub(str(exc))}") from None
        status = str(pod.get("desiredStatus") or "UNKNOWN")
        change = pod.get("lastStatusChange")
        if status != last:
            reporter.info(f"pod {pod_id}: {status}" + (f" ({change})" if change else ""))
            last = status
        if status in DONE_STATES:
            return status, change
        if time.monotonic() >= deadline:
            raise ProvisionError(
                f"pod {pod_id} still {status} after {opts.timeout:.0f}s",
                hint="raise --timeout; the pod is terminated",
            )
        time.sleep(opts.poll)


def pod_cannot_see(manifest: Any) -> list[str]:
    """What the manifest names that the pod (given only the text, which it parses in a fresh
    temp folder) cannot read: a relative path (it would start at that temp folder), or an
    absolute one that is this machine's own (it exists here, in the home or a temp folder).
    Paths on the volume (under /runpod-volume) and absolute paths this machine lacks (the
    image's, e.g. /app/manifests/wheels) are the pod's to have."""
    home = os.path.expanduser("~")
    mine = tuple(p.rstrip("/") + "/" for p in (home, "/tmp", "/var/tmp", os.getcwd()) if p and p != "/")

    def unseen(written: str, resolved: Any) -> bool:
        if not os.path.isabs(written):
            return True
        path = str(resolved)
        if path.startswith(f"{MOUNT}/"):
            return False
        return os.path.exists(path) and path.startswith(mine)

    out: list[str] = []
    for key, value in (("requirements-file", manifest.requirements_file), ("lockfile", manifest.lockfile)):
        if value is not None and unseen(_written(manifest, key) or str(value), value):
            out.append(f"{key} {value}")
    for text, _digest in manifest.local_sources:
        target = text.split(" @ ", 1)[-1].removeprefix("file://")
        if unseen(target, target):
            out.append(f"local package `{text}`")
    for entry in manifest.index.find_links:
        if "://" not in entry or entry.startswith("file:"):
            path = entry.removeprefix("file://")
            if unseen(path, path if os.path.isabs(path) else manifest.path.parent / path):
                out.append(f"find-links {entry}")
    return out


def _written(manifest: Any, key: str) -> str | None:
    """The path as the manifest's text writes it (relative or not), for the relative-path rule."""
    try:
        import tomllib

        value = tomllib.loads(manifest.path.read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, str) else None


def _raise_if_unreachable(exc: BaseException, doing: str) -> None:
    """A DNS failure, a refused or timed-out connection to RunPod's API: exit 8, the host named."""
    names: set[str] = set()
    seen: BaseException | None = exc
    while seen is not None and len(names) < 50:
        names |= {k.__name__ for k in type(seen).__mro__}
        seen = seen.__cause__ or seen.__context__
    if not names & {"ConnectionError", "Timeout", "ConnectTimeout", "gaierror", "TimeoutError"}:
        return
    from urllib.parse import urlsplit

    base = os.environ.get("RUNPOD_API_BASE_URL") or "https://api.runpod.io"
    host = urlsplit(base).netloc or base
    raise APIUnreachable(
        f"could not reach RunPod's API at {host} while {doing}: {_scrub(str(exc)).splitlines()[0][:300]}",
        hint="check the network and DNS (and RUNPOD_API_BASE_URL if set), then run it again",
    ) from None


def _scrub(text: str) -> str:
    key = os.environ.get("RUNPOD_API_KEY")
    try:
        import runpod

        key = key or runpod.api_key
    except ImportError:
        pass
    return text.replace(key, "***") if key else text


def read_inline_manifest(var: str, workdir: Path) -> Path:
    """`sync --from-env VAR`: the manifest text from the environment, into a temp file."""
    text = os.environ.get(var)
    if not text:
        raise UsageError(f"--from-env: ${var} is empty or unset")
    import atexit
    import shutil
    import tempfile

    # a private directory (0700, a fresh name: nothing planted in the shared temp dir is used),
    # the file 0600 (it may carry index credentials), both gone when this process ends
    private = Path(tempfile.mkdtemp(prefix="volenv-inline-", dir=workdir))
    atexit.register(shutil.rmtree, private, True)
    path = private / "manifest.toml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path
