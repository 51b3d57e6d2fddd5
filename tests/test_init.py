"""Reusing what users have: a manifest's `requirements-file` (uv parses it), `volenv init` from a
requirements.txt, a real uv project (uv init + uv add) and its uv.lock, `--lock`, and the hint
when a pyproject/uv.lock/requirements file is passed to `sync` as if it were a manifest."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from conftest import Index, snapshot_of, volenv
from volenv.build.uvtool import uv_bin
from volenv.commands.init import guess_import
from wheelfactory import make_wheel

CHECK_GAMMA_ABSENT = "import importlib.util as u, sys; sys.exit(u.find_spec('gamma') is not None)"


def _wheels(tmp_path: Path, wheelhouse: Path) -> Path:
    """The shared wheels plus two whose import name is not their distribution name."""
    d = tmp_path / "wheels"
    shutil.copytree(wheelhouse, d)
    make_wheel(d, "scikit-thing", "1.0", files={"skthing/__init__.py": "X = 1\n"})
    make_wheel(d, "ns-thing", "1.0", files={"nsthing_ns/core/__init__.py": "X = 2\n"})
    return d


def test_requirements_file_with_include_marker_comment_find_links(
    tmp_path: Path, root: Path, wheelhouse: Path
) -> None:
    """-r include, comments, markers and a relative --find-links (against the file's folder, not
    the cwd) sync and run; `requirements` beside it are honoured too; editing the included file
    makes a new snapshot, and `run` never activates the old one for the edited manifest."""
    _wheels(tmp_path, wheelhouse)
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "requirements.txt").write_text(
        "# what the app needs\n"
        "--no-index\n"
        "--find-links ../wheels\n"
        "-r base.txt\n"
        'beta==1.0 ; python_version >= "3.8"   # trailing comment\n'
        'gamma==1.0 ; python_version < "3"\n'
    )
    (proj / "base.txt").write_text("alpha==1.0\n")
    manifest = proj / "app.toml"
    manifest.write_text(
        'name = "rf"\npython = "3.11"\nrequirements-file = "requirements.txt"\nrequirements = ["delta==1.0"]\n'
        '[activate]\nsmoke-imports = ["alpha", "beta", "delta"]\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = volenv("--root", root, "sync", manifest, cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    first = snapshot_of(root, "rf")
    r = volenv("--root", root, "run", "--manifest", manifest, "--", "python", "-c", CHECK_GAMMA_ABSENT)
    assert r.returncode == 0, r.stderr
    r = volenv(
        "--root", root, "run", "--manifest", manifest, "--", "python", "-c", "import alpha, beta, delta"
    )
    assert r.returncode == 0, r.stderr

    # a no-op sync stays a no-op
    r = volenv("--root", root, "sync", manifest, cwd=elsewhere)
    assert r.returncode == 0 and "reused" in r.stderr + r.stdout, r.stderr

    (proj / "base.txt").write_text("alpha==1.0\ngamma==1.0\n")
    r = volenv(
        "--root", root, "run", "--manifest", manifest, "--on-missing", "fail", "--", "python", "-c", "pass"
    )
    assert r.returncode == 3, (r.returncode, r.stderr)
    r = volenv("--root", root, "sync", manifest, cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    assert snapshot_of(root, "rf") != first
    r = volenv(
        "--root", root, "run", "--manifest", manifest, "--", "python", "-c", "import gamma, alpha, delta"
    )
    assert r.returncode == 0, r.stderr


def test_requirements_file_index_options_reach_the_install(
    tmp_path: Path, root: Path, package_index: Index
) -> None:
    """--index-url / --extra-index-url inside the file: resolution and install both use them."""
    empty = tmp_path / "empty-index"
    empty.mkdir()
    reqs = tmp_path / "requirements.txt"
    reqs.write_text(f"--index-url {empty.as_uri()}\n--extra-index-url {package_index.url}\nbeta==1.0\n")
    manifest = tmp_path / "m.toml"
    manifest.write_text('name = "idx"\nrequirements-file = "requirements.txt"\n')
    r = volenv("--root", root, "sync", manifest)
    assert r.returncode == 0, r.stderr
    # the install step (a pinned lock file) found beta through the extra index too, not PyPI
    assert package_index.wheel_downloads()["/files/beta-1.0-py3-none-any.whl"] >= 1
    r = volenv("--root", root, "run", "--manifest", manifest, "--", "python", "-c", "import beta, alpha")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    ("text", "files", "wants"),
    [
        ('requirements-file = "nope.txt"\n', {}, ["requirements-file", "nope.txt", "no such file"]),
        (
            'requirements-file = "r.txt"\n',
            {"r.txt": "-r missing-inc.txt\n"},
            ["requirements-file", "missing-inc.txt"],
        ),
        (
            'requirements-file = "r.txt"\nlockfile = "pylock.toml"\n',
            {"r.txt": "alpha\n", "pylock.toml": 'lock-version = "1.0"\n'},
            ["requirements-file", "lockfile"],
        ),
    ],
    ids=["missing", "missing-include", "with-lockfile"],
)
def test_requirements_file_refusals(
    tmp_path: Path, root: Path, text: str, files: dict[str, str], wants: list[str]
) -> None:
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    manifest = tmp_path / "m.toml"
    manifest.write_text(f'name = "x"\n{text}')
    r = volenv("--root", root, "sync", manifest)
    assert r.returncode == 2, r.stderr
    first = r.stderr.splitlines()[0]
    assert str(manifest) in first
    for want in wants:
        assert want in first, first
    assert not root.exists()


FOREIGN = {
    "pyproject.toml": '[build-system]\nrequires = ["hatchling"]\n[project]\nname = "p"\nversion = "1"\n',
    "tool-only/pyproject.toml": "[tool.ruff]\nline-length = 100\n",
    "uv.lock": 'version = 1\nrequires-python = ">=3.11"\n[[package]]\nname = "a"\nversion = "1"\n',
    "requirements.txt": "alpha==1.0\n",
    "deps": "# pinned\n-r other.txt\nalpha==1.0\n",
}


@pytest.mark.parametrize("rel", sorted(FOREIGN))
def test_sync_of_a_project_file_hints_init(tmp_path: Path, root: Path, rel: str) -> None:
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(FOREIGN[rel])
    r = volenv("--root", root, "sync", path)
    assert r.returncode == 2, r.stderr
    assert "unknown key" not in r.stderr and "invalid TOML" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2, lines
    assert "not a volenv manifest" in lines[0]
    assert f"volenv init {path}" in lines[1]
    assert not root.exists()


def test_init_from_requirements_round_trip(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    wheels = _wheels(tmp_path, wheelhouse)
    proj = tmp_path / "my app"
    proj.mkdir()
    reqs = proj / "requirements.txt"
    reqs.write_text(
        f"--no-index\n--find-links {wheels}\nbeta==1.0\nscikit-thing==1.0  # sklearn-style name\nns-thing\n"
    )
    r = volenv("--root", root, "--json", "init", reqs)
    assert r.returncode == 0, r.stderr
    doc = r.json()
    out = proj / "volenv.toml"
    assert doc["manifest"] == str(out) and doc["kind"] == "requirements"
    assert doc["imports_from"] == "wheels"
    data = tomllib.loads(out.read_text())
    assert data["name"] == "my-app"
    assert data["requirements-file"] == "requirements.txt"
    assert data["activate"]["smoke-imports"] == ["beta", "nsthing_ns.core", "skthing"]
    assert not [p.name for p in proj.iterdir() if p.name.startswith(".volenv-init")]

    r = volenv("--root", root, "sync", out)
    assert r.returncode == 0, r.stderr
    r = volenv("--root", root, "run", "--manifest", out, "--", "python", "-c", "import skthing, beta, alpha")
    assert r.returncode == 0, r.stderr

    before = out.read_bytes()
    r = volenv("--root", root, "init", reqs, "--name", "other")
    assert r.returncode == 2 and "already exists" in r.stderr and "--force" in r.stderr
    assert out.read_bytes() == before
    r = volenv("--root", root, "init", reqs, "--name", "bad/name", "--force")
    assert r.returncode == 2 and "'bad/name'" in r.stderr, r.stderr
    assert out.read_bytes() == before
    assert not [p.name for p in proj.iterdir() if p.name.startswith(".volenv-init")]


def test_init_lock_writes_pylock_and_syncs_from_it(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    wheels = _wheels(tmp_path, wheelhouse)
    reqs = tmp_path / "requirements.txt"
    reqs.write_text(f"--no-index\n--find-links {wheels}\nbeta==1.0\n")
    r = volenv("--root", root, "init", reqs, "--lock", "-o", tmp_path / "locked.toml", "--python", "3.11")
    assert r.returncode == 0, r.stderr
    data = tomllib.loads((tmp_path / "locked.toml").read_text())
    assert data["lockfile"] == "pylock.toml" and "requirements-file" not in data
    lock = tomllib.loads((tmp_path / "pylock.toml").read_text())
    assert sorted(p["name"] for p in lock["packages"]) == ["alpha", "beta"]
    r = volenv("--root", root, "sync", tmp_path / "locked.toml")
    assert r.returncode == 0, r.stderr
    r = volenv(
        "--root", root, "run", "--manifest", tmp_path / "locked.toml", "--", "python", "-c", "import beta"
    )
    assert r.returncode == 0, r.stderr
    r = volenv("--root", root, "init", reqs, "--lock", "-o", tmp_path / "other.toml")
    assert r.returncode == 2 and "pylock.toml already exists" in r.stderr


def _uv(*args: str | Path, cwd: Path, env: dict[str, str]) -> None:
    proc = subprocess.run([uv_bin(), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_init_from_uv_project_and_its_lock(tmp_path: Path, root: Path, package_index: Index) -> None:
    """A real uv project (uv init + uv add against the local index): its pyproject.toml and its
    uv.lock each give a manifest that syncs and runs; --lock exports the uv.lock as pylock.toml."""
    env = {
        **os.environ,
        "UV_CACHE_DIR": str(tmp_path / "uv-cache"),
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_NO_PROGRESS": "1",
    }
    env.pop("VIRTUAL_ENV", None)
    # an application (no build system): only its dependencies are installed, as `uv sync` does
    _uv(
        "init",
        "--no-package",
        "--no-workspace",
        "--vcs",
        "none",
        "--python",
        "3.11",
        "proj",
        cwd=tmp_path,
        env=env,
    )
    proj = tmp_path / "proj"
    _uv("add", "--default-index", package_index.url, "beta==1.0", cwd=proj, env=env)
    _uv("add", "--optional", "extra", "gamma==1.0", cwd=proj, env=env)
    assert (proj / "uv.lock").is_file()

    r = volenv("--root", root, "init", proj / "pyproject.toml", env=env)
    assert r.returncode == 0, r.stderr
    data = tomllib.loads((proj / "volenv.toml").read_text())
    assert data["name"] == "proj" and data["python"] == "3.11"
    assert data["requirements"] == ["beta==1.0"]
    assert data["index"]["url"] == package_index.url
    assert data["activate"]["smoke-imports"] == ["beta"]
    assert data["optional"]["extra"]["requirements"] == ["gamma==1.0"]
    r = volenv("--root", root, "sync", proj / "volenv.toml")
    assert r.returncode == 0, r.stderr
    r = volenv(
        "--root", root, "run", "--manifest", proj / "volenv.toml", "--", "python", "-c", "import gamma"
    )
    assert r.returncode == 0, r.stderr
    r = volenv(
        "--root", root, "run", "--manifest", proj / "volenv.toml", "--", "python", "-c", "import beta, alpha"
    )
    assert r.returncode == 0, r.stderr

    r = volenv("--root", root, "init", proj / "uv.lock", "--lock", "-o", proj / "from-lock.toml", env=env)
    assert r.returncode == 0, r.stderr
    data = tomllib.loads((proj / "from-lock.toml").read_text())
    assert data["lockfile"] == "pylock.toml"
    lock = tomllib.loads((proj / "pylock.toml").read_text())
    assert sorted(p["name"] for p in lock["packages"]) == ["alpha", "beta"]
    r = volenv("--root", root, "sync", proj / "from-lock.toml")
    assert r.returncode == 0, r.stderr
    r = volenv(
        "--root", root, "run", "--manifest", proj / "from-lock.toml", "--", "python", "-c", "import beta"
    )
    assert r.returncode == 0, r.stderr

    # a pyproject with --lock: uv pip compile --format pylock.toml of its dependencies
    r = volenv(
        "--root", root, "init", proj / "pyproject.toml", "--lock", "--force", "-o", proj / "pp.toml", env=env
    )
    assert r.returncode == 0, r.stderr
    assert tomllib.loads((proj / "pp.toml").read_text())["lockfile"] == "pylock.toml"
    r = volenv("--root", root, "sync", proj / "pp.toml")
    assert r.returncode == 0, r.stderr
    r = volenv(
        "--root", root, "run", "--manifest", proj / "pp.toml", "--", "python", "-c", "import beta, gamma"
    )
    assert r.returncode == 0, r.stderr

    r = volenv("--root", root, "init", proj / "uv.lock", "-o", proj / "pins.toml", env=env)
    assert r.returncode == 0, r.stderr
    data = tomllib.loads((proj / "pins.toml").read_text())
    assert sorted(data["requirements"]) == ["alpha==2.0", "beta==1.0"]


def test_guessed_import_names() -> None:
    assert guess_import("scikit-learn") == "sklearn"
    assert guess_import("Pillow") == "PIL"
    assert guess_import("PyYAML") == "yaml"
    assert guess_import("opencv-python") == "cv2"
    assert guess_import("beautifulsoup4") == "bs4"
    assert guess_import("python-dateutil") == "dateutil"
    assert guess_import("Typing.Extensions") == "typing_extensions"


def test_requirements_file_closure_is_the_digest(tmp_path: Path) -> None:
    """Every spelling of an include is followed (relative to the including file); a change to
    any file of the closure changes the digest, and manifests without the key keep theirs."""
    from volenv.manifest.parse import load_manifest

    (tmp_path / "sub").mkdir()
    (tmp_path / "r.txt").write_text(
        "-r a.txt\n--requirement=sub/b.txt\n-cc.txt  # constraints\n--constraint \\\n  d.txt\n# -r not.txt\n"
    )
    for name in ("a.txt", "c.txt", "d.txt"):
        (tmp_path / name).write_text("alpha\n")
    (tmp_path / "sub" / "b.txt").write_text("-r ../e.txt\n")
    (tmp_path / "e.txt").write_text("beta\n")
    manifest = tmp_path / "m.toml"
    manifest.write_text('name = "x"\nrequirements-file = "r.txt"\n')
    m = load_manifest(manifest)
    names = sorted(str(p.relative_to(tmp_path)) for p, _ in m.requirements_file_inputs)
    assert names == ["a.txt", "c.txt", "d.txt", "e.txt", "r.txt", "sub/b.txt"]
    before = m.digest
    (tmp_path / "e.txt").write_text("beta==1.0\n")
    assert load_manifest(manifest).digest != before
    plain = tmp_path / "plain.toml"
    plain.write_text('name = "x"\nrequirements = ["alpha"]\n')
    assert "requirements_file" not in load_manifest(plain).build_inputs()


def test_init_package_project_with_a_path_source(tmp_path: Path, root: Path, package_index: Index) -> None:
    """A package project (it has a build system) is installed itself, as `uv sync` does, and a
    [tool.uv.sources] path dependency becomes `NAME @ path`: written bare, the name would
    resolve to whatever an index holds under it (a stranger's package)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_inputs import source_tree

    source_tree(tmp_path / "local/mypkg", "mypkg")
    proj = source_tree(tmp_path / "proj", "proj")
    (proj / "pyproject.toml").write_text(
        '[project]\nname = "proj"\nversion = "1.0"\nrequires-python = ">=3.11"\n'
        'dependencies = ["mypkg", "beta==1.0"]\n\n'
        '[build-system]\nrequires = []\nbuild-backend = "tinybackend"\nbackend-path = ["."]\n\n'
        f'[tool.uv]\nindex-url = "{package_index.url}"\n\n'
        '[tool.uv.sources]\nmypkg = { path = "../local/mypkg" }\n'
    )
    r = volenv("--root", root, "init", proj / "pyproject.toml", "--python", "3.11")
    assert r.returncode == 0, r.stderr
    data = tomllib.loads((proj / "volenv.toml").read_text())
    assert data["requirements"] == ["proj @ ./", "mypkg @ ../local/mypkg", "beta==1.0"]
    r = volenv("--root", root, "sync", proj / "volenv.toml")
    assert r.returncode == 0, r.stderr
    code = "import proj, mypkg, beta; print(proj.CODE, mypkg.CODE)"
    r = volenv("--root", root, "run", "--manifest", proj / "volenv.toml", "--", "python", "-c", code)
    assert r.returncode == 0 and r.stdout.split() == ["1", "1"], r.stderr


def test_damaged_requirements_file_snapshot_points_to_a_repair_that_works(
    tmp_path: Path, root: Path, wheelhouse: Path
) -> None:
    """`verify --repair` rebuilds a requirements-file snapshot in place while the file is as it
    was built from (issue 25); once the file changed it cannot, and its hint is a command that
    does repair the env (a plain `sync` would reuse the damaged snapshot)."""
    (tmp_path / "requirements.txt").write_text(f"--no-index\n--find-links {wheelhouse}\nbeta==1.0\n")
    m = tmp_path / "app.toml"
    m.write_text('name = "rf"\npython = "3.11"\nrequirements-file = "requirements.txt"\n')
    assert volenv("--root", root, "sync", m).returncode == 0
    snap = next((root / "envs/rf/snapshots").iterdir())
    damaged = next(snap.rglob("beta/mod3.py"))
    with open(damaged, "ab") as fh:  # in place: the uv cache's copy too (hard link)
        fh.write(b"# edited\n")
    r = volenv("--root", root, "verify", snap.name, "--level", "full", "--repair")
    assert r.returncode == 0, r.stderr
    assert volenv("--root", root, "verify", "rf", "--level", "full").returncode == 0
    with open(damaged, "ab") as fh:
        fh.write(b"# edited again\n")
    (tmp_path / "requirements.txt").write_text(
        f"--no-index\n--find-links {wheelhouse}\nbeta==1.0\n# changed\n"
    )
    r = volenv("--root", root, "verify", snap.name, "--level", "full", "--repair")
    assert r.returncode == 2, r.stderr
    assert f"volenv sync --reinstall-all {m}" in r.stderr
    r = volenv("--root", root, "sync", "--reinstall-all", m)
    assert r.returncode == 0, r.stderr
    assert volenv("--root", root, "verify", "rf", "--level", "full").returncode == 0
    r = volenv("--root", root, "sync", "--offline", "--reinstall-all", m)
    assert r.returncode == 2 and "--offline" in r.stderr, r.stderr


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ("[tool]\nuv = 3\n", "[tool.uv]"),
        ('[tool.uv]\nindex = "x"\n', "tool.uv.index"),
        ("[[tool.uv.index]]\nname = 3\nurl = 5\n", "tool.uv.index[0].url"),
        ("[tool.uv]\nsources = 4\n", "tool.uv.sources"),
        ("[tool.uv.sources]\nfoo = 5\n", "tool.uv.sources.foo"),
        ('[tool.uv]\nfind-links = "dir"\n', "tool.uv.find-links"),
        ('[project.optional-dependencies]\naudio = "soundfile"\n', "project.optional-dependencies.audio"),
    ],
)
def test_init_names_a_wrong_typed_pyproject_key(tmp_path: Path, table: str, key: str) -> None:
    """Issue 26: a pyproject whose tool, tool.uv, index, sources or optional-dependencies has
    the wrong type is one line naming the file and the key (exit 2), not an internal error."""
    project = tmp_path / "p"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        '[project]\nname = "p"\nversion = "1"\ndependencies = []\n' + table, encoding="utf-8"
    )
    r = volenv("init", project / "pyproject.toml", "-o", project / "out.toml")
    assert r.returncode == 2, r.stderr
    assert f"{project / 'pyproject.toml'}: {key} is not a" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    assert not (project / "out.toml").exists()


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('dynamic = "x"', "project.dynamic"),
        ('optional-dependencies = "x"', "project.optional-dependencies"),
        ("requires-python = 3", "project.requires-python"),
    ],
)
def test_init_names_a_wrong_typed_project_key(tmp_path: Path, line: str, key: str) -> None:
    project = tmp_path / "p"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        f'[project]\nname = "p"\nversion = "1"\n{line}\n', encoding="utf-8"
    )
    r = volenv("init", project / "pyproject.toml", "-o", project / "out.toml")
    assert r.returncode == 2 and f"{key} is not a" in r.stderr, r.stderr


def test_init_writes_the_projects_id(tmp_path: Path) -> None:
    """Every manifest init writes for one project carries one `id` (its git remote, else its
    root folder), so a second manifest of it (from uv.lock beside pyproject) is the same env's."""
    from volenv.commands.init import project_id

    (tmp_path / ".git").mkdir()
    for url in ("git@github.com:acme/tts.git", "https://user:tok@github.com/acme/tts.git"):
        (tmp_path / ".git" / "config").write_text(f'[remote "origin"]\n\turl = {url}\n')
        assert project_id(tmp_path) == "github.com/acme/tts"
    (tmp_path / ".git" / "config").unlink()
    assert project_id(tmp_path) == str(tmp_path)
    (tmp_path / "requirements.txt").write_text("alpha==1.0\n")
    r = volenv("init", tmp_path / "requirements.txt", "--no-index", "-o", tmp_path / "volenv.toml")
    assert r.returncode == 0, r.stderr
    assert tomllib.loads((tmp_path / "volenv.toml").read_text())["id"] == str(tmp_path)


def test_a_monorepo_folder_is_its_own_project_and_a_missing_txt_gets_no_harmful_hint(tmp_path: Path) -> None:
    """A new user's walkthrough: two services' requirements.txt in one repository got the
    repository's id, so sync did not refuse the second; and `sync requirements.txt` of a missing
    file hinted an init that wrote a TOML manifest into requirements.txt."""
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / ".git" / "config").write_text('[remote "origin"]\n\turl = git@github.com:acme/mono.git\n')
    ids = []
    for svc in ("a", "b"):
        d = repo / "services" / svc
        d.mkdir(parents=True)
        (d / "requirements.txt").write_text("alpha==1.0\n")
        r = volenv("init", d / "requirements.txt", "--no-index", "-o", d / "volenv.toml")
        assert r.returncode == 0, r.stderr
        ids.append(tomllib.loads((d / "volenv.toml").read_text())["id"])
    assert ids == ["github.com/acme/mono/services/a", "github.com/acme/mono/services/b"]
    (tmp_path / "uv.lock").write_text("")
    r = volenv("sync", tmp_path / "requirements.txt", cwd=tmp_path)
    assert r.returncode == 2 and " -o " not in r.stderr and "is a .toml file" in r.stderr, r.stderr
