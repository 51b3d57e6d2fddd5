"""Issue 28, items 5 and 6: an hf model that unmodified code finds by repository name offline
(volenv writes `refs/<ref>` to the pinned commit; the real huggingface_hub reads it), and
RunPod's model cache on the worker's disk used in place when it holds the pinned revision
(verified against the names the Hub gave its blobs; no download, no copy), never mistaken for a
network volume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import test_models
from conftest import volenv, write_manifest

REV = test_models.REV
fake_hub = test_models.fake_hub  # the fake Hub fixture (HF_ENDPOINT), shared with test_models

REPO = "acme/tiny-model"
HUB_ENV = {"HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
FILES = '["config.json", "model.safetensors"]'


def _manifest(tmp_path: Path, extra_ref: str | None = "v1", where: str = "m") -> Path:
    extra = f'[[models]]\nname = "tiny"\nhf = {{ repo = "{REPO}", revision = "{REV}", files = {FILES} }}\n'
    if extra_ref:
        extra += (
            f'[[models]]\nname = "tiny-tagged"\nhf = {{ repo = "{REPO}", revision = "{REV}",'
            f' files = {FILES}, ref = "{extra_ref}" }}\n'
        )
    return write_manifest(tmp_path / where, "hubrefs", ["alpha==1.0"], extra=extra)


def _activation_env(root: Path, manifest: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment `volenv run` gives the worker (start/activation.compute_env, with the
    manifest's activation settings), computed in a child so RunPod-cache verdicts stay there."""
    code = (
        "import json, sys\n"
        "from volenv.manifest.parse import load_manifest\n"
        "from volenv.store.alias import activation_settings\n"
        "from volenv.start.activation import compute_env\n"
        "m = load_manifest(sys.argv[2])\n"
        "print(json.dumps(compute_env(sys.argv[1], '/nonexistent/snap', m.name, activation_settings(m), base={})))\n"
    )
    env = {**os.environ, **(extra or {})}
    out = subprocess.run(
        [sys.executable, "-c", code, str(root), str(manifest)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    data = json.loads(out.stdout)
    assert isinstance(data, dict)
    return data


def _load_by_name(env: dict[str, str], call: str) -> subprocess.CompletedProcess[str]:
    """Unmodified worker code: huggingface_hub, by repository name, offline, nothing listening."""
    code = f"import huggingface_hub as h\nprint({call})\n"
    full = {**os.environ, **HUB_ENV, **env, "HF_ENDPOINT": "http://127.0.0.1:9"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=120)


def test_manifest_ref_key() -> None:
    import tempfile

    from volenv.base.errors import ManifestError
    from volenv.manifest.parse import load_manifest
    from volenv.manifest.schema import model_dict
    from volenv.store.modelpaths import model_key

    with tempfile.TemporaryDirectory() as d:
        m = load_manifest(_manifest(Path(d)))
        plain, tagged = (model_dict(s) for s in m.models)
        assert "ref" not in plain["hf"] and tagged["hf"]["ref"] == "v1"  # main keeps old digests
        assert model_key(plain) == model_key(tagged)  # one record and one download for both
        for bad in ("../x", "a//b", ".hidden", REV, "a b"):
            with pytest.raises(ManifestError, match="is not a ref name"):
                load_manifest(_manifest(Path(d), bad, where=f"bad{len(bad)}{bad[:1]}"))


def test_pinned_model_found_by_repo_name_offline(
    tmp_path: Path, root: Path, fake_hub: tuple[str, dict[str, bytes], Counter[str]]
) -> None:
    endpoint, files, _hits = fake_hub
    m = _manifest(tmp_path)
    r = volenv("--root", root, "models", "fetch", m, env={"HF_ENDPOINT": endpoint, **HUB_ENV})
    assert r.returncode == 0, r.stderr
    repo_dir = root / "models" / "hf" / "hub" / "models--acme--tiny-model"
    snap = repo_dir / "snapshots" / REV
    for ref in ("main", "v1"):
        assert (repo_dir / "refs" / ref).read_text() == REV and not (repo_dir / "refs" / ref).is_symlink()
    env = _activation_env(root, m)
    assert env["HF_HUB_OFFLINE"] == "1" and env["HF_HUB_CACHE"] == str(root / "models" / "hf" / "hub")

    r2 = _load_by_name(env, f"h.snapshot_download('{REPO}', local_files_only=True)")
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout.strip() == str(snap)
    r2 = _load_by_name(env, f"h.hf_hub_download('{REPO}', 'model.safetensors', revision='v1')")
    assert r2.returncode == 0, r2.stderr
    assert Path(r2.stdout.strip()) == snap / "model.safetensors"
    assert Path(r2.stdout.strip()).read_bytes() == files["model.safetensors"]

    # a volume fetched before refs were written (or a ref moved by hand): the worker fails
    # offline as the issue says, `models verify` says why, and a fetch writes it again
    (repo_dir / "refs" / "main").unlink()
    r2 = _load_by_name(env, f"h.snapshot_download('{REPO}', local_files_only=True)")
    assert r2.returncode != 0
    r = volenv("--root", root, "models", "verify", "-m", m)
    assert r.returncode != 0 and "ref-changed" in r.stdout + r.stderr, r.stdout + r.stderr
    (repo_dir / "refs" / "main").symlink_to(tmp_path / "elsewhere")  # a planted link: replaced
    r = volenv("--root", root, "models", "fetch", m, env={"HF_ENDPOINT": "http://127.0.0.1:9", **HUB_ENV})
    assert r.returncode == 0, r.stderr
    assert not (repo_dir / "refs" / "main").is_symlink() and (repo_dir / "refs" / "main").read_text() == REV
    assert not (tmp_path / "elsewhere").exists()
    r2 = _load_by_name(env, f"h.snapshot_download('{REPO}', local_files_only=True)")
    assert r2.returncode == 0 and r2.stdout.strip() == str(snap), r2.stderr


def _runpod_cache(tmp_path: Path, endpoint: str) -> Path:
    """A hub cache as RunPod's model cache lays it out, made by the real huggingface_hub."""
    cache = tmp_path / "runpod" / "huggingface-cache" / "hub"
    code = (
        "import sys, huggingface_hub as h\n"
        f"for f in ('config.json', 'model.safetensors'):\n"
        f"    h.hf_hub_download('{REPO}', f, revision='{REV}', cache_dir=sys.argv[1])\n"
    )
    env = {**os.environ, **HUB_ENV, "HF_ENDPOINT": endpoint}
    subprocess.run([sys.executable, "-c", code, str(cache)], check=True, env=env, timeout=120)
    (cache / "models--acme--tiny-model" / "refs").mkdir(exist_ok=True)
    (cache / "models--acme--tiny-model" / "refs" / "main").write_text(REV)
    return cache


def test_runpod_model_cache_used_in_place(
    tmp_path: Path,
    root: Path,
    wheelhouse: Path,
    fake_hub: tuple[str, dict[str, bytes], Counter[str]],
) -> None:
    endpoint, files, hits = fake_hub
    cache = _runpod_cache(tmp_path, endpoint)
    downloads = hits["model.safetensors"]
    extra = f'[[models]]\nname = "tiny"\nhf = {{ repo = "{REPO}", revision = "{REV}", files = {FILES} }}\n'
    m = write_manifest(tmp_path / "m", "rpcache", ["alpha==1.0"], find_links=wheelhouse, extra=extra)
    rp = {"VOLENV_RUNPOD_HF_CACHE": str(cache), "HF_ENDPOINT": "http://127.0.0.1:9", **HUB_ENV}
    snap = cache / "models--acme--tiny-model" / "snapshots" / REV

    r = volenv("--root", root, "models", "fetch", m, env=rp)
    assert r.returncode == 0, r.stderr
    assert "in RunPod's model cache" in r.stderr and "used in place (no download, no copy)" in r.stderr
    assert hits["model.safetensors"] == downloads  # nothing downloaded
    assert not (root / "models" / "hf").exists() and not list((root / "models").glob("records/*.json"))

    r = volenv("--root", root, "--json", "models", "list", "-m", m, env=rp)
    assert r.returncode == 0, r.stderr
    (state,) = json.loads(r.stdout)["models"]
    assert state["where"] == "runpod-cache" and state["present"] and state["location"] == str(snap)
    r = volenv("--root", root, "models", "verify", "-m", m, "--level", "full", env=rp)
    assert r.returncode == 0, r.stdout + r.stderr

    r = volenv("--root", root, "sync", m, env=rp, timeout=600)
    assert r.returncode == 0, r.stderr
    assert hits["model.safetensors"] == downloads and not (root / "models" / "hf").exists()
    code = "import os; print(os.environ['VOLENV_MODEL_TINY'], os.environ['HF_HUB_CACHE'], os.environ['HF_HUB_OFFLINE'])"
    r = volenv("--root", root, "run", "--manifest", m, "--", "python", "-c", code, env=rp)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(snap), str(cache), "1"]
    assert "RunPod's model cache, verified against its pins; used in place (no download, no copy)" in r.stderr
    env = _activation_env(root, m, rp)
    r2 = _load_by_name(env, f"h.snapshot_download('{REPO}', local_files_only=True)")
    assert r2.returncode == 0 and r2.stdout.strip() == str(snap), r2.stderr

    # bytes in RunPod's cache that do not match their blob's name: not used; the start falls
    # back to the volume, where the default policy fetches the model
    blob = (snap / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.write_bytes(bytes(data))
    r = volenv(
        "--root",
        root,
        "run",
        "--manifest",
        m,
        "--",
        "python",
        "-c",
        code,
        env={**rp, "HF_ENDPOINT": endpoint},
    )
    assert r.returncode == 0, r.stderr
    assert "not used: model.safetensors does not match the hash it is named by" in r.stderr, r.stderr
    volume_snap = root / "models" / "hf" / "hub" / "models--acme--tiny-model" / "snapshots" / REV
    assert r.stdout.split()[:2] == [str(volume_snap), str(root / "models" / "hf" / "hub")]
    assert (volume_snap / "model.safetensors").read_bytes() == files["model.safetensors"]


def test_a_runpod_volume_holding_only_the_model_cache_is_no_network_volume(tmp_path: Path) -> None:
    from volenv.store.rootfind import is_volume

    cases = {"cache-only": ["huggingface-cache"], "with-root": ["huggingface-cache", "volenv"]}
    cases |= {"other": ["huggingface-cache", "data"], "empty": []}
    for name, entries in cases.items():
        for e in entries:
            (tmp_path / name / e).mkdir(parents=True)
        (tmp_path / name).mkdir(exist_ok=True)
        assert is_volume(str(tmp_path / name)) == (name != "cache-only"), name
    assert not is_volume(str(tmp_path / "absent"))
