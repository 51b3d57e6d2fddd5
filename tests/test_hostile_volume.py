"""Issue 26: the volume is a hostile filesystem. Each case plants what a writer of the volume (or
of the shared temp dir) can plant, runs the command a worker or a person runs, and checks:
a sentinel file outside the root is untouched (neither written nor shown), the exit code is one
DESIGN.md documents, the error is one line with no traceback, and nothing hangs (10 s)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import snapshot_of, volenv, write_manifest

SECRET = "SENTINEL-OUTSIDE-THE-ROOT"
DOCUMENTED = {0, 2, 3, 4, 5, 6, 7, 8, 9}


@dataclass
class World:
    root: Path
    manifest: Path
    sentinel: Path
    tmp: Path

    @property
    def snap(self) -> Path:
        return self.root / "envs" / "app" / "snapshots" / snapshot_of(self.root, "app")


@pytest.fixture
def world(tmp_path: Path, root: Path, wheelhouse: Path) -> World:
    m = write_manifest(tmp_path / "m", "app", ["alpha==1.0"], find_links=wheelhouse)
    assert volenv("--root", root, "sync", m).returncode == 0
    sentinel = tmp_path / "outside" / "sentinel.txt"
    sentinel.parent.mkdir()
    sentinel.write_text(SECRET + "\n")
    return World(root, m, sentinel, tmp_path)


def _fifo(path: Path) -> None:
    if path.exists() or path.is_symlink():
        path.unlink()
    os.mkfifo(path)


def plant_build_log_links(w: World) -> list[str]:
    """A damaged snapshot makes the next start rebuild the same id: the build log's name is
    predictable, so a link sits at every name of the next two minutes."""
    sid = snapshot_of(w.root, "app")
    time.sleep(1.1)  # the rebuild's log name is never the sync's own (same second), always planted
    (w.snap / "lib").chmod(0o755)
    next(w.snap.rglob("alpha/__init__.py")).unlink()
    now = time.time()
    for dt in range(-5, 120):
        stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(now + dt))
        planted = w.root / "logs" / "app" / f"build-{stamp}-{sid}.log"
        if not planted.exists():
            planted.symlink_to(w.sentinel)
    return ["run", "--verify", "stat", "--manifest", str(w.manifest), "--", "python", "-c", "import alpha"]


def plant_newest_build_log_link(w: World) -> list[str]:
    log = w.root / "logs" / "app" / "build-29991231T235959-app-000000000000.log"
    log.symlink_to(w.sentinel)
    (w.snap / ".volenv" / "seal.json").write_text("{")
    return ["run", "--diagnose", "--on-missing", "fail", "--manifest", str(w.manifest), "--", "true"]


def plant_newest_build_log_fifo(w: World) -> list[str]:
    os.mkfifo(w.root / "logs" / "app" / "build-29991231T235959-app-000000000000.log")
    (w.snap / ".volenv" / "seal.json").write_text("{")
    return ["run", "--diagnose", "--on-missing", "fail", "--manifest", str(w.manifest), "--", "true"]


def plant_newest_build_log_dangling(w: World) -> list[str]:
    (w.root / "logs" / "app" / "build-29991231T235959-app-000000000000.log").symlink_to(w.tmp / "nowhere")
    (w.snap / ".volenv" / "seal.json").write_text("{")
    return ["run", "--diagnose", "--on-missing", "fail", "--manifest", str(w.manifest), "--", "true"]


def plant_fifo_seal(w: World) -> list[str]:
    _fifo(w.snap / ".volenv" / "seal.json")
    return ["run", "--on-missing", "fail", "--manifest", str(w.manifest), "--", "true"]


def plant_fifo_seal_status(w: World) -> list[str]:
    _fifo(w.snap / ".volenv" / "seal.json")
    return ["status"]


def plant_fifo_record(w: World) -> list[str]:
    _fifo(w.snap / ".volenv" / "record")
    return ["run", "--on-missing", "fail", "--manifest", str(w.manifest), "--", "true"]


def plant_fifo_current(w: World) -> list[str]:
    _fifo(w.root / "envs" / "app" / "current")
    return ["run", "--on-missing", "fail", "--env", "app", "--", "true"]


def plant_link_seal(w: World) -> list[str]:
    (w.snap / ".volenv" / "seal.json").unlink()
    (w.snap / ".volenv" / "seal.json").symlink_to(w.sentinel)
    return ["run", "--diagnose", "--on-missing", "fail", "--manifest", str(w.manifest), "--", "true"]


def plant_deep_trace(w: World) -> list[str]:
    seal = json.loads((w.snap / ".volenv" / "seal.json").read_text())
    (w.snap / ".volenv" / "trace.json").write_text(
        f'{{"record_sha256": "{seal["record_sha256"]}", "files": ' + "[" * 100000 + "]" * 100000 + "}"
    )
    return ["run", "--manifest", str(w.manifest), "--", "true"]


def plant_unclosed_env_in_seal(w: World) -> list[str]:
    path = w.snap / ".volenv" / "seal.json"
    seal = json.loads(path.read_text())
    seal["manifest"]["env"] = {"GREETING": "${HOME"}
    path.write_text(json.dumps(seal))
    return ["run", "--on-missing", "fail", "--env", "app", "--", "true"]


def plant_unclosed_env_in_alias(w: World) -> list[str]:
    (alias,) = list((w.root / "aliases").glob("*.json"))
    doc = json.loads(alias.read_text())
    doc["activation"]["env"] = {"GREETING": "${HOME"}
    alias.write_text(json.dumps(doc))
    return ["run", "--manifest", str(w.manifest), "--", "true"]


def plant_inline_link(w: World) -> list[str]:
    """`sync --from-env` used a fixed `$TMPDIR/volenv-inline/inline-PID.toml`: a link there wrote
    the manifest (with its index credentials) elsewhere, and the file stayed behind."""
    tmpdir = w.tmp / "shared-tmp"
    tmpdir.mkdir()
    (tmpdir / "volenv-inline").symlink_to(w.sentinel.parent, target_is_directory=True)
    os.environ["_HOSTILE_TMPDIR"] = str(tmpdir)
    return ["sync", "--from-env", "HOSTILE_MANIFEST"]


def plant_fifo_requirements_include(w: World) -> list[str]:
    (w.tmp / "r").mkdir()
    (w.tmp / "r" / "requirements.txt").write_text("-r more.txt\n")
    os.mkfifo(w.tmp / "r" / "more.txt")
    m = w.tmp / "r" / "app.toml"
    m.write_text('name = "app"\npython = "3.11"\nrequirements-file = "requirements.txt"\n')
    return ["sync", str(m)]


def plant_nul_requirements(w: World) -> list[str]:
    (w.tmp / "r").mkdir()
    (w.tmp / "r" / "requirements.txt").write_bytes(b"alpha==1.0\x00\n")
    m = w.tmp / "r" / "app.toml"
    m.write_text('name = "app"\npython = "3.11"\nrequirements-file = "requirements.txt"\n')
    return ["sync", str(m)]


def plant_env_name_newline(w: World) -> list[str]:
    m = w.tmp / "nl.toml"
    m.write_text(
        'name = "app"\npython = "3.11"\nrequirements = []\n[activate]\nenv = { "GREETING\\n" = "x" }\n'
    )
    return ["sync", str(m)]


def plant_fifo_history(w: World) -> list[str]:
    _fifo(w.root / "envs" / "app" / "history.jsonl")
    return ["history", "app"]


def plant_fifo_record_verify(w: World) -> list[str]:
    _fifo(w.snap / ".volenv" / "record")
    return ["verify", "app"]


def plant_fifo_events_doctor(w: World) -> list[str]:
    _fifo(w.root / "logs" / "app" / "events.jsonl")
    return ["doctor"]


def plant_linked_packs_dir(w: World) -> list[str]:
    """`pack` streamed its blob into `packs/blobs/` by path: a link there wrote it outside."""
    (w.root / "packs").mkdir(exist_ok=True)
    if (w.root / "packs" / "blobs").exists():
        import shutil

        shutil.rmtree(w.root / "packs" / "blobs")
    (w.root / "packs" / "blobs").symlink_to(w.sentinel.parent, target_is_directory=True)
    return ["pack", "app"]


def plant_linked_resolve_log_dir(w: World) -> list[str]:
    """A failed resolution keeps uv's output as logs/<env>/build-...-resolve.log: a linked
    logs/<env> received it outside the root."""
    (w.root / "logs" / "nores").symlink_to(w.sentinel.parent, target_is_directory=True)
    (w.tmp / "empty").mkdir(exist_ok=True)
    m = write_manifest(
        w.tmp / "nores", "nores", ["no-such-package-anywhere==1.0"], find_links=w.tmp / "empty"
    )
    return ["sync", str(m)]


def plant_fifo_model_record(w: World) -> list[str]:
    records = w.root / "models" / "records"
    records.mkdir(parents=True, exist_ok=True)
    os.mkfifo(records / ("0" * 64 + ".json"))
    return ["models", "list"]


# ---------------------------------------------------------------- from the attacker's pass


def _second_manifest(w: World) -> Path:
    wheels = Path(str(w.manifest.read_text()).split('find-links = ["')[1].split('"')[0])
    # the same file edited (a second file of the same env name would be another project's)
    return write_manifest(w.manifest.parent, "app", ["alpha==1.0", "gamma==1.0"], find_links=wheels)


def plant_trace_linked_volenv(w: World) -> list[str]:
    import shutil

    shutil.copytree(w.snap / ".volenv", w.sentinel.parent / "vcopy", symlinks=True)
    shutil.rmtree(w.snap / ".volenv")
    (w.snap / ".volenv").symlink_to(w.sentinel.parent / "vcopy", target_is_directory=True)
    return ["trace", "--env", "app", "--", "python", "-c", "import alpha"]


def plant_doctor_linked_logs(w: World) -> list[str]:
    import shutil

    shutil.rmtree(w.root / "logs" / "app")
    (w.sentinel.parent / "events.jsonl").write_text(
        json.dumps({"event": "build-failed", "time": 9999999999, "error": SECRET, "env": "app"}) + "\n"
    )
    (w.root / "logs" / "app").symlink_to(w.sentinel.parent, target_is_directory=True)
    return ["doctor"]


def plant_diagnose_linked_logs(w: World) -> list[str]:
    import shutil

    shutil.rmtree(w.root / "logs" / "app")
    (w.sentinel.parent / "build-29991231T235959-app-000000000000.log").write_text(SECRET + "\n")
    (w.root / "logs" / "app").symlink_to(w.sentinel.parent, target_is_directory=True)
    (w.snap / ".volenv" / "seal.json").write_text("{")
    return ["run", "--diagnose", "--on-missing", "fail", "--manifest", str(w.manifest), "--", "true"]


def plant_hardlinked_history(w: World) -> list[str]:
    history = w.root / "envs" / "app" / "history.jsonl"
    history.unlink()
    os.link(w.sentinel, history)
    return ["sync", str(_second_manifest(w))]


def plant_symlinked_history_switch(w: World) -> list[str]:
    history = w.root / "envs" / "app" / "history.jsonl"
    history.unlink()
    history.symlink_to(w.sentinel)
    return ["sync", str(_second_manifest(w))]


def plant_hardlinked_events(w: World) -> list[str]:
    events = w.root / "logs" / "app" / "events.jsonl"
    events.unlink(missing_ok=True)
    os.link(w.sentinel, events)
    return ["pin", snapshot_of(w.root, "app")]


def _linked_snapshot(w: World) -> None:
    import shutil

    copy = w.sentinel.parent / "scopy"
    shutil.copytree(w.snap, copy, symlinks=True)
    (copy / SECRET).write_text(SECRET + "\n")
    snap = w.snap
    shutil.rmtree(snap)
    snap.symlink_to(copy, target_is_directory=True)


def plant_linked_snapshot_pack(w: World) -> list[str]:
    _linked_snapshot(w)
    return ["pack", "app"]


def plant_linked_snapshot_sync(w: World) -> list[str]:
    _linked_snapshot(w)
    return ["sync", str(w.manifest)]


def plant_fifo_manifest(w: World) -> list[str]:
    os.mkfifo(w.tmp / "fifo.toml")
    return ["sync", str(w.tmp / "fifo.toml")]


def plant_missing_blobs(w: World) -> list[str]:
    from conftest import volenv as run_volenv

    assert run_volenv("--root", w.root, "pack", "app").returncode == 0
    for blob in (w.root / "packs" / "blobs").iterdir():
        blob.unlink()
        os.mkfifo(blob)
    local = w.tmp / "local"
    return ["run", "--materialize", "always", "--materialize-dir", str(local), "--env", "app", "--", "true"]


# ---------------------------------------------------------------- from the second attacker's pass


def _linked_volenv(w: World) -> None:
    import shutil

    shutil.copytree(w.snap / ".volenv", w.sentinel.parent / "meta", symlinks=True)
    shutil.rmtree(w.snap / ".volenv")
    (w.snap / ".volenv").symlink_to(w.sentinel.parent / "meta", target_is_directory=True)


def plant_linked_volenv_run(w: World) -> list[str]:
    _linked_volenv(w)
    return ["run", "--env", "app", "--", "true"]


def plant_linked_volenv_verify(w: World) -> list[str]:
    _linked_volenv(w)
    return ["verify", "app", "--level", "full"]


def plant_linked_aliases(w: World) -> list[str]:
    import shutil

    from conftest import volenv as run_volenv

    assert run_volenv("--root", w.root, "run", "--manifest", w.manifest, "--", "true").returncode == 0
    copy = w.sentinel.parent / "aliases"
    shutil.copytree(w.root / "aliases", copy)
    for alias in copy.glob("*.json"):
        doc = json.loads(alias.read_text())
        doc["activation"]["env"] = {"LEAK": SECRET}
        alias.write_text(json.dumps(doc))
    shutil.rmtree(w.root / "aliases")
    (w.root / "aliases").symlink_to(copy, target_is_directory=True)
    return [
        "run",
        "--manifest",
        str(w.manifest),
        "--",
        "python",
        "-c",
        "import os; print(os.environ.get('LEAK'))",
    ]


def plant_linked_snapshot_verify(w: World) -> list[str]:
    _linked_snapshot(w)
    return ["verify", "app", "--level", "full"]


def plant_linked_snapshot_show(w: World) -> list[str]:
    _linked_snapshot(w)
    return ["show", "app"]


def plant_hardlinked_build_log(w: World) -> list[str]:
    log = w.root / "logs" / "app" / "build-29991231T235959-app-000000000000.log"
    os.link(w.sentinel, log)
    (w.snap / ".volenv" / "seal.json").write_text("{")
    return ["doctor"]


CASES: dict[str, tuple[Callable[[World], list[str]], set[int]]] = {
    "build-log-link": (plant_build_log_links, {0}),
    "diagnose-newest-log-link": (plant_newest_build_log_link, {3, 4}),
    "diagnose-newest-log-fifo": (plant_newest_build_log_fifo, {3, 4}),
    "diagnose-newest-log-dangling": (plant_newest_build_log_dangling, {3, 4}),
    "fifo-seal-run": (plant_fifo_seal, {3, 4}),
    "fifo-seal-status": (plant_fifo_seal_status, {0, 4}),
    "fifo-record-run": (plant_fifo_record, {3, 4}),
    "fifo-current": (plant_fifo_current, {4}),
    "link-seal-diagnose": (plant_link_seal, {3, 4}),
    "deep-trace": (plant_deep_trace, {0}),
    "unclosed-env-seal": (plant_unclosed_env_in_seal, {3, 4}),
    "unclosed-env-alias": (plant_unclosed_env_in_alias, {0}),
    "inline-manifest-link": (plant_inline_link, {0}),
    "fifo-requirements-include": (plant_fifo_requirements_include, {2}),
    "nul-requirements": (plant_nul_requirements, {2}),
    "env-name-newline": (plant_env_name_newline, {2}),
    "fifo-history": (plant_fifo_history, {4}),
    "fifo-record-verify": (plant_fifo_record_verify, {3, 4}),
    "fifo-events-doctor": (plant_fifo_events_doctor, {0, 3, 4}),
    "linked-packs-dir": (plant_linked_packs_dir, {8}),
    "linked-resolve-log-dir": (plant_linked_resolve_log_dir, {7, 8}),
    "fifo-model-record": (plant_fifo_model_record, {0, 4}),
    "trace-linked-volenv": (plant_trace_linked_volenv, {4, 8}),
    "doctor-linked-logs": (plant_doctor_linked_logs, {0, 3, 4}),
    "diagnose-linked-logs": (plant_diagnose_linked_logs, {3, 4}),
    "hardlinked-history": (plant_hardlinked_history, {4}),
    "symlinked-history-switch": (plant_symlinked_history_switch, {4}),
    "hardlinked-events": (plant_hardlinked_events, {0, 8}),
    "linked-snapshot-pack": (plant_linked_snapshot_pack, {4}),
    "linked-snapshot-sync": (plant_linked_snapshot_sync, {4}),
    "fifo-manifest": (plant_fifo_manifest, {2}),
    "missing-blobs-materialize": (plant_missing_blobs, {4}),
    "linked-volenv-run": (plant_linked_volenv_run, {3, 4}),
    "linked-volenv-verify": (plant_linked_volenv_verify, {4}),
    "linked-aliases-run": (plant_linked_aliases, {0}),
    "linked-snapshot-verify": (plant_linked_snapshot_verify, {4}),
    "linked-snapshot-show": (plant_linked_snapshot_show, {4}),
    "hardlinked-build-log-doctor": (plant_hardlinked_build_log, {0, 3, 4}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_volume(case: str, world: World) -> None:
    plant, codes = CASES[case]
    argv = plant(world)
    env = {}
    if "_HOSTILE_TMPDIR" in os.environ:
        env = {"TMPDIR": os.environ.pop("_HOSTILE_TMPDIR"), "HOSTILE_MANIFEST": world.manifest.read_text()}
    t0 = time.monotonic()
    r = volenv("--root", world.root, *argv, env=env, timeout=10)
    took = time.monotonic() - t0
    assert world.sentinel.read_text() == SECRET + "\n", f"{case}: the outside file was written"
    assert r.returncode in codes and r.returncode in DOCUMENTED, (case, r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, (case, r.stderr[-2000:])
    assert SECRET not in r.stdout + r.stderr, f"{case}: the outside file was shown"
    for sealed in world.root.glob("envs/*/snapshots/*/.volenv/build.log"):
        assert SECRET not in sealed.read_text(errors="replace"), f"{case}: copied into a sealed build log"
    if case == "build-log-link":
        assert "building it again" in r.stderr, r.stderr  # the rebuild whose log name was planted
    if case == "trace-linked-volenv":
        assert not (world.sentinel.parent / "vcopy" / "trace.json").exists(), (
            "a trace written through the link"
        )
    if case in ("hardlinked-history", "symlinked-history-switch"):
        current = (world.root / "envs" / "app" / "current").read_text()
        assert snapshot_of(world.root, "app") in current  # the switch did not happen
        assert len(list((world.root / "envs" / "app" / "snapshots").iterdir())) >= 1
    if case == "linked-snapshot-pack":
        assert not list((world.root / "packs").rglob("*.tar.zst")), "an outside tree was packed"
    if case in ("linked-packs-dir", "linked-resolve-log-dir"):
        assert list(world.sentinel.parent.iterdir()) == [world.sentinel], "written through the link"
    if case == "inline-manifest-link":
        assert list(world.sentinel.parent.iterdir()) == [world.sentinel], "written through the link"
        left = [p for p in Path(env["TMPDIR"]).iterdir() if p.name != "volenv-inline"]
        assert left == [], f"the inline manifest stayed behind: {left}"
    assert took < 10


def test_hostile_suite_size(request: pytest.FixtureRequest) -> None:
    """Printed even with the output captured: .ci/run's log shows the suite's size."""
    line = f"hostile volume cases: {len(CASES)} (plant -> command -> sentinel, exit code, one line, no hang)"
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capman is None:
        print(line)
    else:
        with capman.global_and_fixture_disabled():  # past the capture of the test's output
            reporter.write_line(line)
    assert len(CASES) >= 15
