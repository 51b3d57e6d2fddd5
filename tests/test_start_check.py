"""Issue 25, item 1: `run`'s default check (`--verify start`) stats the files this start reads
(its trace, or without one the smoke imports' packages and the .pth files) and every required
model's files, so that a deleted or truncated file is rebuilt or fetched again before the
program runs, or with `--on-missing fail` is exit 4 (exit 9 for a model) naming it: never the
ImportError and exit 1 the seed ends in."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from conftest import base_env, snapshot_of, volenv, write_manifest
from test_models import FileServer, file_server  # noqa: F401  (a fixture)
from wheelfactory import make_wheel

IMPORT = "import alpha, beta.mod3; print('ok')"


def _site(root: Path, env: str) -> Path:
    snap = root / "envs" / env / "snapshots" / snapshot_of(root, env)
    (sp,) = snap.glob("lib/python3*/site-packages")
    return sp


def _manifest(tmp_path: Path, wheelhouse: Path, env: str = "sc", extra: str = "") -> Path:
    return write_manifest(
        tmp_path,
        env,
        ["beta==1.0"],
        find_links=wheelhouse,
        extra='[activate]\nsmoke-imports = ["beta"]\n' + extra,
    )


def _start(root: Path, m: Path, *opts: str, code: str = IMPORT) -> object:
    return volenv("--root", root, "run", *opts, "--manifest", m, "--", "python", "-c", code)


@pytest.mark.parametrize("how", ["deleted", "truncated"])
def test_a_damaged_traced_file_is_rebuilt_or_named(
    tmp_path: Path, root: Path, wheelhouse: Path, how: str
) -> None:
    m = _manifest(tmp_path, wheelhouse)
    assert volenv("--root", root, "sync", m).returncode == 0
    r = volenv("--root", root, "trace", "--manifest", m, "--", "python", "-c", IMPORT)
    assert r.returncode == 0, r.stderr
    first = snapshot_of(root, "sc")
    victim = _site(root, "sc") / "alpha" / "__init__.py"
    if how == "deleted":
        victim.unlink()
    else:
        victim.write_bytes(victim.read_bytes()[:5])
    rel = str(victim.relative_to(root / "envs/sc/snapshots" / first))
    r = _start(root, m, "--on-missing", "fail")
    assert r.returncode == 4, (r.returncode, r.stderr)
    assert rel in r.stderr and "(trace)" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "hint: volenv" in r.stderr and "verify sc --repair" in r.stderr, r.stderr
    r = _start(root, m)  # the default: --on-missing build
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    assert "is not usable; building it again" in r.stderr, r.stderr
    assert not victim.exists() or victim.stat().st_size > 5 or snapshot_of(root, "sc") != first


def test_without_a_trace_the_smoke_imports_packages_and_pth_files_are_checked(
    tmp_path: Path, root: Path, wheelhouse: Path
) -> None:
    m = _manifest(tmp_path, wheelhouse)
    assert volenv("--root", root, "sync", m).returncode == 0
    sp = _site(root, "sc")
    (sp / "beta" / "mod3.py").unlink()  # a module of the smoke import's package, never imported by sync
    r = _start(root, m, "--on-missing", "fail")
    assert r.returncode == 4 and "beta/mod3.py" in r.stderr and "smoke imports" in r.stderr, r.stderr
    assert _start(root, m).returncode == 0
    # a .pth the site module runs at every start (a wheel ships it at site-packages' top)
    wheels = tmp_path / "pthwheel"
    make_wheel(wheels, "hooked", "1.0", files={"hooked_init.pth": "import os\n", "hooked/__init__.py": ""})
    m2 = write_manifest(tmp_path / "p2", "pth", ["hooked==1.0"], find_links=wheels)
    assert volenv("--root", root, "sync", m2).returncode == 0
    pth = _site(root, "pth") / "hooked_init.pth"
    pth.write_text("import os\n# edited\n")
    r = volenv("--root", root, "run", "--on-missing", "fail", "--manifest", m2, "--", "true")
    assert r.returncode == 4 and "hooked_init.pth" in r.stderr, r.stderr


def test_verify_seal_skips_the_check_and_the_seed_failure_shows(
    tmp_path: Path, root: Path, wheelhouse: Path
) -> None:
    """The check is what stands between a damaged file and the program: `--verify seal` (the
    old default) lets the ImportError through, as the seed saw it."""
    m = _manifest(tmp_path, wheelhouse)
    assert volenv("--root", root, "sync", m).returncode == 0
    (_site(root, "sc") / "beta" / "mod3.py").unlink()
    r = _start(root, m, "--verify", "seal", "--on-missing", "fail")
    assert r.returncode == 1 and "ModuleNotFoundError" in r.stderr, r.stderr


def test_a_damaged_required_model_is_fetched_again_or_named(
    tmp_path: Path,
    root: Path,
    wheelhouse: Path,
    file_server: FileServer,  # noqa: F811
) -> None:
    data = os.urandom(1 << 20)
    file_server.files["w/model.bin"] = data
    sha = hashlib.sha256(data).hexdigest()
    extra = f'[[models]]\nname = "weights"\nurl = "{file_server.base}/w/model.bin"\nsha256 = "{sha}"\nsize = {len(data)}\n'
    m = _manifest(tmp_path, wheelhouse, extra=extra)
    assert volenv("--root", root, "sync", m).returncode == 0
    probe = "import os; print(len(open(os.environ['VOLENV_MODEL_WEIGHTS'], 'rb').read()))"
    model = next((root / "models" / "files" / "weights").rglob("model.bin"))
    model.write_bytes(data[:1000])  # truncated on the volume
    r = _start(root, m, "--on-missing", "fail", code=probe)
    assert r.returncode == 9 and str(model) in r.stderr and "size-changed" in r.stderr, r.stderr
    assert "models fetch" in r.stderr, r.stderr
    before = Counter(file_server.gets)
    r = _start(root, m, code=probe)  # the default policy fetches it again, then runs
    assert r.returncode == 0 and r.stdout.strip() == str(len(data)), r.stderr
    assert file_server.gets["w/model.bin"] > before["w/model.bin"]
    assert model.read_bytes() == data
    model.unlink()
    file_server.files.clear()  # the source is gone now: the start names the file, never execs
    r = _start(root, m, code=probe)
    assert r.returncode == 9 and str(model) in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = volenv("--root", root, "run", "--diagnose", "--manifest", m, "--", "python", "-c", probe)
    assert r.returncode == 9 and "DIAGNOSIS" in r.stderr and "model 'weights'" in r.stderr, r.stderr
    assert "404" in r.stderr and "KeyError" not in r.stderr, r.stderr
    r = _start(root, m, "--on-missing", "fail", code=probe)
    assert r.returncode == 9 and "required model weights: weights was never fetched" in r.stderr, r.stderr


# ---------------------------------------------------------------- item 3: doctor finds damage


@pytest.mark.parametrize("kind", ["requirements", "requirements-file"])
def test_doctor_finds_a_damaged_current_snapshot_and_its_fix_works_pasted(
    tmp_path: Path, root: Path, wheelhouse: Path, kind: str
) -> None:
    import shlex
    import sys

    if kind == "requirements":
        m = _manifest(tmp_path, wheelhouse)
    else:
        (tmp_path / "requirements.txt").write_text("beta==1.0\n")
        m = tmp_path / "sc.toml"
        m.write_text(
            'name = "sc"\npython = "3.11"\nrequirements-file = "requirements.txt"\n'
            f'[index]\nno-index = true\nfind-links = ["{wheelhouse}"]\n'
        )
    assert volenv("--root", root, "sync", m).returncode == 0
    r = volenv("--root", root, "doctor")
    assert r.returncode == 0 and "no problems found" in r.stdout, r.stdout + r.stderr
    (_site(root, "sc") / "beta" / "mod7.py").unlink()
    r = volenv("--root", root, "doctor")
    assert r.returncode == 4, r.stdout + r.stderr
    assert "beta/mod7.py (missing)" in r.stdout and "1 damaged" in r.stdout, r.stdout
    (fix,) = [ln.removeprefix("fix: ") for ln in r.stdout.splitlines() if ln.startswith("fix: ")]
    argv = shlex.split(fix)
    assert argv[:3] == ["volenv", "--root", str(root)] and argv[3:] == ["verify", "sc", "--repair"], fix
    r = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, env=base_env())
    assert r.returncode == 0, r.stdout + r.stderr
    r = volenv("--root", root, "doctor")
    assert r.returncode == 0 and "no problems found" in r.stdout, r.stdout + r.stderr


def test_doctor_stays_within_its_time_budget(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    m = _manifest(tmp_path, wheelhouse)
    assert volenv("--root", root, "sync", m).returncode == 0
    r = volenv("--root", root, "doctor", env={"VOLENV_DOCTOR_BUDGET": "0"})
    assert r.returncode == 4 and "not checked (time budget spent)" in r.stdout, r.stdout


# ---------------------------------------------------------------- issue 26: models' local copies


def test_a_local_model_copy_keeps_its_mark_out_of_sight_and_collects_dead_partials(
    tmp_path: Path,
    root: Path,
    wheelhouse: Path,
    file_server: FileServer,  # noqa: F811
) -> None:
    import time

    data = os.urandom(1 << 16)
    file_server.files["w/model.bin"] = data
    sha = hashlib.sha256(data).hexdigest()
    extra = (
        f'[[models]]\nname = "weights"\nurl = "{file_server.base}/w/model.bin"\nsha256 = "{sha}"\n'
        f'size = {len(data)}\nlocal = "always"\n'
    )
    m = _manifest(tmp_path, wheelhouse, extra=extra)
    assert volenv("--root", root, "sync", m).returncode == 0
    local = tmp_path / "local"
    local.mkdir(mode=0o700)
    key = next((root / "models" / "records").glob("weights.*.json")).name.split(".")[1]
    dead = local / f".weights.{key}.partial-somehost-999999-abcd"  # a start killed mid-copy
    dead.mkdir(mode=0o700)
    (dead / "junk").write_bytes(b"x" * 1000)
    probe = (
        "import os; p = os.environ['VOLENV_MODEL_WEIGHTS']; "
        "print(sorted(os.listdir(os.path.dirname(p))), len(open(p, 'rb').read()))"
    )
    r = volenv(
        "--root",
        root,
        "run",
        "--manifest",
        m,
        "--",
        "python",
        "-c",
        probe,
        env={"VOLENV_LOCAL_DIR": str(local)},
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"['model.bin'] {len(data)}", r.stdout  # no volenv mark beside the model
    deadline = time.monotonic() + 10
    while dead.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not dead.exists(), "the dead start's partial copy was never collected"


def test_a_url_model_with_userinfo_is_fetched_with_basic_auth_and_stored_without_it(
    tmp_path: Path,
    root: Path,
    wheelhouse: Path,
    file_server: FileServer,  # noqa: F811
) -> None:
    """Issue 26: `https://user:token@host/...` could not be fetched at all (urllib takes no
    userinfo); it goes as an Authorization header, and the secret is never written."""
    import base64

    data = os.urandom(1 << 15)
    file_server.files["w/model.bin"] = data
    file_server.auth = "Basic " + base64.b64encode(b"bob:s3cr3t-t0ken").decode()
    url = file_server.base.replace("http://", "http://bob:s3cr3t-t0ken@") + "/w/model.bin"
    sha = hashlib.sha256(data).hexdigest()
    extra = f'[[models]]\nname = "weights"\nurl = "{url}"\nsha256 = "{sha}"\nsize = {len(data)}\n'
    m = _manifest(tmp_path, wheelhouse, extra=extra)
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 0, r.stderr
    assert "s3cr3t-t0ken" not in r.stdout + r.stderr
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink() and p.stat().st_size < 1 << 20:
            assert b"s3cr3t-t0ken" not in p.read_bytes(), p
    assert next((root / "models" / "files" / "weights").rglob("model.bin")).read_bytes() == data
