"""Manifest validation: a corpus of broken manifests, each one clear line and exit 2, with the
volume root left uncreated."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import volenv
from volenv.base.errors import ManifestError
from volenv.manifest.parse import load_manifest

GOOD = """
name = "app"
python = "3.11"
requirements = ["alpha==1.0", "beta>=1; python_version >= '3.8'"]

[index]
url = "https://pypi.org/simple"
extra-urls = ["https://download.pytorch.org/whl/cu124"]
find-links = ["wheels"]
torch-backend = "cu124"

[optional.whisperx]
requirements = ["whisperx==3.4.2"]

[build]
post-install = ["python -c 'print(1)'", ["python", "-c", "print(2)"]]

[activate]
env = { A = "1" }
smoke-imports = ["alpha", "beta.sub"]

[[models]]
name = "vocos"
hf = { repo = "charactr/vocos-mel-24khz", revision = "0feb3fdd929bcd6649e0e7c5a688cf7dd012ef21", files = ["config.yaml"] }

[[models]]
name = "weights"
url = "https://example.invalid/w.bin"
sha256 = "ab"
"""

# (id, manifest text, text the one-line error must contain)
BROKEN = [
    ("unknown-top-key", 'name = "a"\nrequirements = []\nrequirments = ["x"]\n', "requirments"),
    ("missing-name", 'requirements = ["x"]\n', "name"),
    ("name-with-slash", 'name = "a/b"\nrequirements = []\n', "'a/b'"),
    ("name-dotdot", 'name = ".."\nrequirements = []\n', "'..'"),
    ("name-space", 'name = "my env"\nrequirements = []\n', "'my env'"),
    ("name-too-long", f'name = "{"a" * 64}"\nrequirements = []\n', "at most 63"),
    ("name-not-string", "name = 3\nrequirements = []\n", "expected a string"),
    ("requirements-not-list", 'name = "a"\nrequirements = "alpha"\n', "list of strings"),
    ("bad-requirement", 'name = "a"\nrequirements = ["alpha ==="]\n', "requirements[0]"),
    ("requirement-not-string", 'name = "a"\nrequirements = [1]\n', "requirements[0]"),
    ("bad-python", 'name = "a"\npython = "three"\nrequirements = []\n', "'three'"),
    ("invalid-toml", 'name = "a"\nrequirements = [\n', "invalid TOML"),
    ("index-unknown-key", 'name = "a"\nrequirements = []\n[index]\nurls = "x"\n', "index.urls"),
    ("index-bad-url", 'name = "a"\nrequirements = []\n[index]\nurl = "pypi.org"\n', "index.url"),
    ("no-index-not-bool", 'name = "a"\nrequirements = []\n[index]\nno-index = "yes"\n', "index.no-index"),
    (
        "bad-torch-backend",
        'name = "a"\nrequirements = []\n[index]\ntorch-backend = "cuda"\n',
        "torch-backend",
    ),
    (
        "optional-missing-reqs",
        'name = "a"\nrequirements = []\n[optional.g]\nrequired = true\n',
        "optional.g.requirements",
    ),
    (
        "optional-required-not-bool",
        'name = "a"\nrequirements = []\n[optional.g]\nrequirements = ["x"]\nrequired = 1\n',
        "optional.g.required",
    ),
    (
        "post-install-bad",
        'name = "a"\nrequirements = []\n[build]\npost-install = [3]\n',
        "build.post-install[0]",
    ),
    ("build-unknown", 'name = "a"\nrequirements = []\n[build]\npre-install = []\n', "build.pre-install"),
    ("env-bad-name", 'name = "a"\nrequirements = []\n[activate]\nenv = { "1X" = "v" }\n', "activate.env.1X"),
    (
        "env-reserved",
        'name = "a"\nrequirements = []\n[activate]\nenv = { VIRTUAL_ENV = "/x" }\n',
        "VIRTUAL_ENV",
    ),
    ("env-not-string", 'name = "a"\nrequirements = []\n[activate]\nenv = { X = 1 }\n', "activate.env.X"),
    (
        "smoke-bad-module",
        'name = "a"\nrequirements = []\n[activate]\nsmoke-imports = ["a-b"]\n',
        "smoke-imports[0]",
    ),
    (
        "model-two-sources",
        'name = "a"\nrequirements = []\n[[models]]\nname = "m"\nurl = "https://x/y"\nsha256 = "'
        + "0" * 64
        + '"\nhf = { repo = "a/b", revision = "'
        + "0" * 40
        + '", files = ["x"] }\n',
        "exactly one source",
    ),
    (
        "model-bad-sha",
        'name = "a"\nrequirements = []\n[[models]]\nname = "m"\nurl = "https://x/y"\nsha256 = "abc"\n',
        "models[0].sha256",
    ),
    (
        "model-branch-revision",
        'name = "a"\nrequirements = []\n[[models]]\nname = "m"\nhf = { repo = "a/b", revision = "main", files = ["x"] }\n',
        "40-hex",
    ),
    (
        "model-name-traversal",
        'name = "a"\nrequirements = []\n[[models]]\nname = "../m"\nurl = "https://x/y"\nsha256 = "'
        + "0" * 64
        + '"\n',
        "models[0].name",
    ),
    (
        "model-duplicate",
        'name = "a"\nrequirements = []\n'
        + ('[[models]]\nname = "m"\nurl = "https://x/y"\nsha256 = "' + "0" * 64 + '"\n') * 2,
        "duplicate",
    ),
    ("lockfile-missing", 'name = "a"\nlockfile = "pylock.toml"\n', "lockfile"),
    ("lockfile-wrong-name", 'name = "a"\nlockfile = "requirements.txt"\n', "pylock"),
]


@pytest.mark.parametrize(("case", "text", "needle"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_manifest_is_rejected_in_process(tmp_path: Path, case: str, text: str, needle: str) -> None:
    path = tmp_path / "m.toml"
    path.write_text(text)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    msg = str(info.value)
    assert str(path) in msg and needle in msg, msg
    assert "\n" not in msg


def test_broken_manifests_via_cli_exit_2_and_create_nothing(tmp_path: Path) -> None:
    """Every command that takes a manifest: exit 2, one error line naming the file, no root."""
    assert len(BROKEN) >= 15
    root = tmp_path / "never-created" / "volenv"
    for case, text, needle in BROKEN[::3]:
        path = tmp_path / f"{case}.toml"
        path.write_text(text)
        for args in (["sync", path], ["run", "--manifest", path, "--", "true"], ["sync", "--dry-run", path]):
            r = volenv("--root", root, *args)
            assert r.returncode == 2, (case, args, r.stderr)
            first = r.stderr.strip().splitlines()[0]
            assert str(path) in first and needle in r.stderr, (case, r.stderr)
            assert not root.parent.exists(), case


def test_good_manifest_parses_and_digest_is_stable(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    text = GOOD.replace('sha256 = "ab"', 'sha256 = "' + "ab" * 32 + '"')
    p1 = tmp_path / "a" / "m.toml"
    p1.write_text(text)
    m = load_manifest(p1)
    assert m.name == "app" and m.optional[0].name == "whisperx" and not m.optional[0].required
    assert m.models[0].hf is not None and m.models[1].sha256 == "ab" * 32
    assert m.post_install[1] == ("python", "-c", "print(2)")
    # reordering keys, requirements and whitespace does not change the digest
    reordered = text.replace(
        'requirements = ["alpha==1.0", "beta>=1; python_version >= \'3.8\'"]',
        'requirements = [ "beta >= 1 ; python_version >= \'3.8\'", "alpha == 1.0" ]',
    )
    p2 = tmp_path / "m2.toml"
    p2.write_text(reordered)
    assert load_manifest(p2).digest == m.digest
    p3 = tmp_path / "m3.toml"
    p3.write_text(text.replace('A = "1"', 'A = "2"'))
    changed = load_manifest(p3)
    assert changed.digest != m.digest
    assert changed.build_inputs() == m.build_inputs()  # env is activation-only, not content


def test_shipped_manifests_are_valid() -> None:
    repo = Path(__file__).resolve().parent.parent
    for path in sorted((repo / "manifests").glob("*.toml")):
        load_manifest(path)
