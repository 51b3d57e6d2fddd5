"""Issue 27, item 3: what Dockerfiles say with pip or uv flags, said in the manifest: a package
from another index (`[[index.named]]` + `[sources]`), `overrides` and `excludes`, and a git
requirement pinned to a full commit. Real uv against indexes served on 127.0.0.1 and a bare git
repository made here; each is a build input, carried by the seal, and repairs as built."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from conftest import Index, serve_index, snapshot_of, volenv, write_manifest
from volenv.manifest.parse import load_manifest, manifest_from_seal
from wheelfactory import make_wheel

SP = "lib/python3.11/site-packages"


@pytest.fixture(scope="module")
def two_indexes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Index, Index]]:
    """`first`: foo 1.0 (WHERE = 'first'), bar 1.0 (needs foo), dep 1.0 and 2.0, needs-old-dep
    (dep<2), also-old-dep (dep<2), pulls-extra (needs dropme), dropme. `second`: its own foo 1.0
    (WHERE = 'second'), solo (only there) and a bar 9.0 that nothing pinned may take."""
    one = tmp_path_factory.mktemp("first")
    two = tmp_path_factory.mktemp("second")
    make_wheel(one, "foo", "1.0", files={"foo/__init__.py": "WHERE = 'first'\n"})
    make_wheel(one, "bar", "1.0", requires=["foo"])
    make_wheel(one, "dep", "1.0")
    make_wheel(one, "dep", "2.0")
    make_wheel(one, "needs-old-dep", "1.0", requires=["dep<2"])
    make_wheel(one, "also-old-dep", "1.0", requires=["dep<2"])
    make_wheel(one, "pulls-extra", "1.0", requires=["dropme"])
    make_wheel(one, "dropme", "1.0")
    make_wheel(two, "foo", "1.0", files={"foo/__init__.py": "WHERE = 'second'\n"})
    make_wheel(two, "solo", "1.0")
    make_wheel(two, "bar", "9.0")
    with ExitStack() as stack:
        yield stack.enter_context(serve_index(one)), stack.enter_context(serve_index(two))


def _named(second: Index, sources: str) -> str:
    return (
        f'[[index.named]]\nname = "second"\nurl = "{second.url}"\nexplicit = true\n\n[sources]\n{sources}\n'
    )


def _top(manifest: Path, lines: str) -> Path:
    """Top-level keys put before the manifest's first table."""
    manifest.write_text(lines + manifest.read_text())
    return manifest


def _py(root: Path, manifest: Path, code: str) -> str:
    r = volenv("--root", root, "run", "--manifest", manifest, "--", "python", "-c", code)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_a_package_pinned_to_a_named_index_comes_from_it_and_only_it(
    tmp_path: Path, root: Path, two_indexes: tuple[Index, Index]
) -> None:
    """foo is on both indexes: [sources] takes the second's, never the first's (installed and
    repaired alike); solo is only on the second; bar is not pinned, so the second's bar 9.0
    is never looked at (an explicit index serves only what [sources] pins to it)."""
    first, second = two_indexes
    m = write_manifest(
        tmp_path,
        "src",
        ["bar", "foo==1.0", "solo"],
        index_url=first.url,
        extra=_named(second, 'foo = { index = "second" }\nsolo = { index = "second" }'),
    )
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 0, r.stderr
    code = "import foo, importlib.metadata as md; print(foo.WHERE, md.version('bar'), md.version('solo'))"
    assert _py(root, m, code) == "second 1.0 1.0"
    assert "/files/foo-1.0-py3-none-any.whl" in second.wheel_downloads()
    assert "/files/foo-1.0-py3-none-any.whl" not in first.wheel_downloads()
    assert "/simple/bar/" not in second.hits and "/simple/solo/" not in first.hits
    sid = snapshot_of(root, "src")
    assert volenv("--root", root, "verify", sid, "--level", "full").returncode == 0

    # the seal carries the sources; a repair rebuilds from them (foo from the second index again)
    seal = json.loads((root / "envs/src/snapshots" / sid / ".volenv/seal.json").read_text())
    assert seal["manifest"]["sources"] == {"foo": {"index": "second"}, "solo": {"index": "second"}}
    target = next((root / "envs/src/snapshots" / sid / SP).glob("foo/__init__.py"))
    with open(target, "ab") as fh:  # in place: uv's cached copy too (a hard link)
        fh.write(b"WHERE = 'damaged'\n")
    assert volenv("--root", root, "verify", sid, "--level", "full").returncode == 4
    r = volenv("--root", root, "verify", sid, "--level", "full", "--repair")
    assert r.returncode == 0, r.stderr
    assert _py(root, m, "import foo; print(foo.WHERE)") == "second"

    # dry-run knows it too (its pylock compile takes the same pyproject)
    r = volenv("--root", root, "--json", "sync", "--dry-run", m)
    assert r.returncode == 0, r.stderr

    # without the source it is another build input: another snapshot, with the first index's foo
    plain = write_manifest(tmp_path / "plain", "src", ["bar", "foo==1.0"], index_url=first.url)
    assert volenv("--root", root, "sync", plain).returncode == 0, r.stderr
    assert snapshot_of(root, "src") != sid
    assert _py(root, plain, "import foo; print(foo.WHERE)") == "first"


def test_a_source_in_an_optional_group(tmp_path: Path, root: Path, two_indexes: tuple[Index, Index]) -> None:
    """A group's package pinned to a named index is resolved and installed from it (the group's
    own `pip install` step takes the pyproject as well)."""
    first, second = two_indexes
    extra = '[optional.g]\nrequirements = ["foo"]\n\n' + _named(second, 'foo = { index = "second" }')
    m = write_manifest(tmp_path, "grp", ["dep==1.0"], index_url=first.url, extra=extra)
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 0, r.stderr
    assert _py(root, m, "import foo; print(foo.WHERE)") == "second"


def test_overrides_change_a_transitive_pin_and_excludes_drop_one(
    tmp_path: Path, root: Path, two_indexes: tuple[Index, Index]
) -> None:
    """needs-old-dep requires dep<2: the override `dep==2.0` wins, in the base and in a group
    that requires dep<2 too (its `pip install` resolves again, with the override); excludes
    leaves pulls-extra's dropme out."""
    first, _second = two_indexes
    extra = '[optional.g]\nrequirements = ["also-old-dep"]\nrequired = true\n'
    reqs = ["needs-old-dep", "pulls-extra"]
    m = write_manifest(tmp_path, "ovr", reqs, index_url=first.url, extra=extra)
    _top(m, 'overrides = ["dep==2.0"]\nexcludes = ["dropme"]\n')
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 0, r.stderr
    code = (
        "import importlib.metadata as md, importlib.util as u;"
        " print(md.version('dep'), md.version('also-old-dep'), u.find_spec('dropme'))"
    )
    assert _py(root, m, code) == "2.0 1.0 None"
    sid = snapshot_of(root, "ovr")
    assert volenv("--root", root, "verify", sid, "--level", "full").returncode == 0
    seal = json.loads((root / "envs/ovr/snapshots" / sid / ".volenv/seal.json").read_text())
    assert seal["manifest"]["overrides"] == ["dep==2.0"] and seal["manifest"]["excludes"] == ["dropme"]

    # without them uv's own answer: dep 1.0 and dropme, in another snapshot
    plain = write_manifest(tmp_path / "plain", "ovr", reqs, index_url=first.url)
    assert volenv("--root", root, "sync", plain).returncode == 0
    assert snapshot_of(root, "ovr") != sid
    code = "import importlib.metadata as md; print(md.version('dep'), md.version('dropme'))"
    assert _py(root, plain, code) == "1.0 1.0"


def _git(*args: str | Path, cwd: Path) -> str:
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_CONFIG_NOSYSTEM": "1",
        "PATH": "/usr/bin:/bin:/usr/local/bin",
    }
    r = subprocess.run(["git", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return r.stdout.strip()


@pytest.fixture
def bare_repo(tmp_path: Path) -> tuple[Path, str, str]:
    """A bare repository holding a tiny package (gitpkg, CODE = 1 then 2 on main): (its path,
    the first commit, the second)."""
    from test_inputs import source_tree

    work = source_tree(tmp_path / "work", "gitpkg", code=1)
    _git("init", "-q", "-b", "main", cwd=work)
    _git("add", ".", cwd=work)
    _git("commit", "-q", "-m", "one", cwd=work)
    one = _git("rev-parse", "HEAD", cwd=work)
    (work / "gitpkg" / "__init__.py").write_text("CODE = 2\n")
    _git("commit", "-q", "-am", "two", cwd=work)
    two = _git("rev-parse", "HEAD", cwd=work)
    bare = tmp_path / "gitpkg.git"
    _git("clone", "-q", "--bare", work, bare, cwd=tmp_path)
    return bare, one, two


def test_a_git_requirement_pinned_to_a_commit_builds_that_commit(
    tmp_path: Path, root: Path, bare_repo: tuple[Path, str, str]
) -> None:
    bare, one, two = bare_repo
    m = write_manifest(tmp_path, "gitenv", [f"gitpkg @ git+{bare.as_uri()}@{one}"])
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 0, r.stderr
    assert _py(root, m, "import gitpkg; print(gitpkg.CODE)") == "1"  # main is at CODE = 2
    sid = snapshot_of(root, "gitenv")
    assert volenv("--root", root, "verify", sid, "--level", "full").returncode == 0
    m2 = write_manifest(tmp_path / "two", "gitenv", [f"gitpkg @ git+{bare.as_uri()}@{two}"])
    assert volenv("--root", root, "sync", m2).returncode == 0
    assert snapshot_of(root, "gitenv") != sid
    assert _py(root, m2, "import gitpkg; print(gitpkg.CODE)") == "2"


@pytest.mark.parametrize("ref", ["@main", "@v1.0", "@abc1234", ""])
def test_a_git_requirement_at_a_moving_ref_is_refused(tmp_path: Path, root: Path, ref: str) -> None:
    url = f"git+https://github.com/acme/gitpkg{ref}"
    m = write_manifest(tmp_path, "gitenv", ["alpha==1.0", f"gitpkg @ {url}"])
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 2, r.stderr
    assert "requirements[1]" in r.stderr and url in r.stderr and "40-hex commit" in r.stderr, r.stderr
    (tmp_path / "requirements.txt").write_text(f"gitpkg @ {url}\n")
    m = tmp_path / "rf.toml"
    m.write_text('name = "rf"\nrequirements-file = "requirements.txt"\n')
    r = volenv("--root", root, "sync", m)
    assert r.returncode == 2 and "requirements-file" in r.stderr and url in r.stderr, r.stderr


def test_manifest_errors_name_the_key(tmp_path: Path) -> None:
    from volenv.base.errors import ManifestError

    base = 'name = "e"\nrequirements = ["torch"]\n'
    cases = {
        '[sources]\ntorch = { index = "pytorch" }\n': ("sources.torch.index", "no [[index.named]] entry"),
        '[[index.named]]\nname = "pytorch"\nurl = "https://x/simple"\n[sources]\nnumpy = { index = "pytorch" }\n': (
            "sources.numpy",
            "not in requirements",
        ),
        '[[index.named]]\nname = "p"\nurl = "https://x/simple"\nexplicit = false\n': (
            "index.named[0].explicit",
            "extra-urls",
        ),
        '[[index.named]]\nname = "p"\nurl = "x"\n': ("index.named[0].url", "not an http"),
        'excludes = ["dropme>=1"]\n': ("excludes[0]", "not a package name"),
        'overrides = ["dep=2"]\n': ("overrides[0]", "invalid requirement"),
    }
    for i, (text, (key, words)) in enumerate(cases.items()):
        p = tmp_path / f"m{i}.toml"
        p.write_text(base + text)
        with pytest.raises(ManifestError) as err:
            load_manifest(p)
        said = f"{err.value} {err.value.hint}"
        assert err.value.key == key and words in said, (key, said)
    lock = tmp_path / "pylock.toml"
    lock.write_text('lock-version = "1.0"\ncreated-by = "t"\n')
    p = tmp_path / "lock.toml"
    p.write_text('name = "e"\nlockfile = "pylock.toml"\noverrides = ["dep==2"]\n')
    with pytest.raises(ManifestError) as err:
        load_manifest(p)
    assert err.value.key == "overrides"


def test_the_resolver_inputs_are_build_inputs_only_when_set(tmp_path: Path) -> None:
    """A manifest without them keeps its normalized form (so its digest and snapshot id); one
    with them round-trips through the seal's copy (`verify --repair`)."""
    plain = load_manifest(write_manifest(tmp_path / "a", "r", ["torch", "dep"], index_url="https://x/simple"))
    data = plain.normalized()
    assert not {"sources", "overrides", "excludes"} & data.keys() and "named" not in data["index"]
    top = 'overrides = ["dep==2.0"]\nexcludes = ["dropme"]\n'
    extra = (
        '[[index.named]]\nname = "pytorch"\nurl = "https://u:secret@x/cu124"\n'
        '[sources]\nTorch = { index = "pytorch" }\n'
    )
    full = load_manifest(
        _top(
            write_manifest(tmp_path / "b", "r", ["torch", "dep"], index_url="https://x/simple", extra=extra),
            top,
        )
    )
    seal = full.normalized()
    assert seal["sources"] == {"torch": {"index": "pytorch"}}
    assert "secret" not in json.dumps(seal) and seal["index"]["named"] == {"pytorch": "https://x/cu124"}
    assert full.digest != plain.digest
    back = manifest_from_seal(seal, str(full.path))
    assert back.normalized() == seal
    for key, other in (("overrides", '["dep==3.0"]'), ("excludes", '["other"]')):
        changed = top.replace(f"{key} = {json.dumps(list(getattr(full, key)))}", f"{key} = {other}")
        assert changed != top
        m = load_manifest(
            _top(
                write_manifest(
                    tmp_path / key, "r", ["torch", "dep"], index_url="https://x/simple", extra=extra
                ),
                changed,
            )
        )
        assert m.digest != full.digest


def test_init_carries_them_over_from_a_uv_project(
    tmp_path: Path, root: Path, two_indexes: tuple[Index, Index], bare_repo: tuple[Path, str, str]
) -> None:
    """`[tool.uv.sources]` index and git entries (a full rev as written; a branch only as a
    uv.lock resolved it, else said and left out), their `[[tool.uv.index]]`, and
    override-/exclude-dependencies become the manifest's [sources], [[index.named]], git
    requirements, overrides and excludes; the manifest syncs to what uv would install."""
    first, second = two_indexes
    bare, one, _two = bare_repo
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "pyproject.toml").write_text(
        '[project]\nname = "svc"\nversion = "0.1"\nrequires-python = ">=3.11"\n'
        'dependencies = ["foo==1.0", "needs-old-dep", "pulls-extra", "gitpkg", "moving"]\n\n'
        "[tool.uv]\n"
        'override-dependencies = ["dep==2.0"]\nexclude-dependencies = ["dropme"]\n\n'
        f'[[tool.uv.index]]\nname = "main"\nurl = "{first.url}"\ndefault = true\n\n'
        f'[[tool.uv.index]]\nname = "second"\nurl = "{second.url}"\nexplicit = true\n\n'
        "[tool.uv.sources]\n"
        'foo = { index = "second" }\n'
        f'gitpkg = {{ git = "{bare.as_uri()}", rev = "{one}" }}\n'
        f'moving = {{ git = "{bare.as_uri()}", branch = "main" }}\n'
    )
    out = tmp_path / "volenv.toml"
    r = volenv("init", proj / "pyproject.toml", "-o", out, "--python", "3.11")
    assert r.returncode == 0, r.stderr
    assert "moving" in r.stderr and "full commit" in r.stderr, r.stderr  # said, not written moving
    m = load_manifest(out)
    assert m.sources == (("foo", "second"),) and [n.url for n in m.index.named] == [second.url]
    assert m.overrides == ("dep==2.0",) and m.excludes == ("dropme",)
    assert f"gitpkg @ git+{bare.as_uri()}@{one}" in m.requirements
    # `moving` (a branch, no uv.lock) stays a bare name, as init leaves any source it cannot
    # carry (it would resolve from the index); the test drops it to sync what remains
    out.write_text(out.read_text().replace('    "moving",\n', "").replace('"moving", ', ""))
    r = volenv("--root", root, "sync", out)
    assert r.returncode == 0, r.stderr
    code = (
        "import foo, gitpkg, importlib.metadata as md, importlib.util as u;"
        " print(foo.WHERE, gitpkg.CODE, md.version('dep'), u.find_spec('dropme'))"
    )
    assert _py(root, out, code) == "second 1 2.0 None"


def test_init_takes_a_git_branch_at_the_commit_uv_lock_resolved(
    tmp_path: Path, bare_repo: tuple[Path, str, str]
) -> None:
    bare, one, _two = bare_repo
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "pyproject.toml").write_text(
        '[project]\nname = "svc"\nversion = "0.1"\ndependencies = ["moving"]\n\n'
        f'[tool.uv.sources]\nmoving = {{ git = "{bare.as_uri()}", branch = "main" }}\n'
    )
    (proj / "uv.lock").write_text(
        'version = 1\n\n[[package]]\nname = "moving"\nversion = "1.0"\n'
        f'source = {{ git = "{bare.as_uri()}?branch=main#{one}" }}\n'
    )
    out = tmp_path / "volenv.toml"
    r = volenv("init", proj / "pyproject.toml", "-o", out, "--no-index")
    assert r.returncode == 0, r.stderr
    assert load_manifest(out).requirements == (f"moving @ git+{bare.as_uri()}@{one}",)
