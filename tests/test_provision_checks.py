"""Issue 29, item 9: `provision` checks before a pod is paid for: a manifest that names files only
this machine has (requirements-file, `NAME @ ./path`, find-links) is refused with exit 2 naming
them; image names and volume ids are checked; an API that cannot be reached is exit 8 with its
host named (not 7, "build failed")."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import volenv
from test_inputs import source_tree

pytest.importorskip("runpod")


def _provision(tmp_path: Path, m: Path, *extra: str, url: str = "http://127.0.0.1:9") -> object:
    env = {"RUNPOD_API_BASE_URL": url, "RUNPOD_API_KEY": "rpa_TESTKEY", "HOME": str(tmp_path)}
    args = ["--volume-id", "agv6w2qcg7", "--manifest", m, "--image", "ghcr.io/me/worker:1.0", *extra]
    return volenv("--root", tmp_path / "root", "provision", *args, env=env, timeout=120)


def test_local_files_images_and_volume_ids_are_refused_before_the_api(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    source_tree(proj / "mypkg")
    (proj / "wheels").mkdir()
    (proj / "requirements.txt").write_text("alpha==1.0\n")
    m = proj / "app.toml"
    m.write_text(
        'name = "app"\nrequirements-file = "requirements.txt"\nrequirements = ["mypkg @ ./mypkg"]\n'
        '[index]\nfind-links = ["wheels"]\n'
    )
    r = _provision(tmp_path, m)
    assert r.returncode == 2, r.stderr
    assert "files the pod cannot read" in r.stderr and "requirements-file" in r.stderr, r.stderr
    assert "mypkg @ ./mypkg" in r.stderr and "find-links wheels" in r.stderr, r.stderr
    assert "could not reach" not in r.stderr  # refused before any API call

    # a path the image has (absolute, not on this machine) or the volume has: the pod's to read,
    # so the check passes and the (unreachable) API is asked
    image = tmp_path / "image.toml"
    image.write_text(
        'name = "app"\nrequirements = ["alpha==1.0"]\n'
        '[index]\nfind-links = ["/app/manifests/demo-wheels", "/runpod-volume/wheels"]\n'
    )
    r = _provision(tmp_path, image, url="http://127.0.0.1:9")
    assert r.returncode == 8 and "could not reach" in r.stderr, r.stderr

    ok = tmp_path / "ok.toml"
    ok.write_text('name = "app"\nrequirements = ["alpha==1.0"]\n')
    for bad in ("Registry/Worker:1", "worker:", "a b"):
        r = _provision(tmp_path, ok, "--image", bad)
        assert r.returncode == 2 and "--image" in r.stderr, r.stderr
    env = {"RUNPOD_API_BASE_URL": "http://127.0.0.1:9", "RUNPOD_API_KEY": "k", "HOME": str(tmp_path)}
    r = volenv(
        "--root",
        tmp_path / "root",
        "provision",
        "--volume-id",
        "Vol_42",
        "--manifest",
        ok,
        "--image",
        "x/y:1",
        env=env,
    )
    assert r.returncode == 2 and "network volume id" in r.stderr, r.stderr


@pytest.mark.parametrize("url", ["http://127.0.0.1:9", "http://no-such-host.invalid"])
def test_an_unreachable_api_is_exit_8_naming_the_host(tmp_path: Path, url: str) -> None:
    ok = tmp_path / "ok.toml"
    ok.write_text('name = "app"\nrequirements = ["alpha==1.0"]\n')
    r = _provision(tmp_path, ok, url=url)
    host = url.split("//", 1)[1]
    assert r.returncode == 8, r.stderr
    assert f"could not reach RunPod's API at {host}" in r.stderr, r.stderr
    assert "refused to create" not in r.stderr


def test_the_pods_result_file_is_named_by_its_pod_id(tmp_path: Path, root: Path, wheelhouse: Path) -> None:
    """The pod's start command reaches volenv without a shell (the image's ENTRYPOINT is
    exec-form): `--result .../$RUNPOD_POD_ID.json` is expanded by volenv, one file per pod."""
    from conftest import write_manifest
    from volenv.runpod.provision import pod_command

    assert "$RUNPOD_POD_ID" in pod_command()
    m = write_manifest(tmp_path / "m", "app", ["alpha==1.0"], find_links=wheelhouse)
    result = str(root / "logs" / "provision" / "$RUNPOD_POD_ID.json")
    r = volenv("--root", root, "sync", "--result", result, m, env={"RUNPOD_POD_ID": "pod42"})
    assert r.returncode == 0, r.stderr
    assert (root / "logs" / "provision" / "pod42.json").is_file()
    assert not (root / "logs" / "provision" / "$RUNPOD_POD_ID.json").exists()


def test_rollback_names_provisioned_manifests_as_one_not_by_temp_paths(
    tmp_path: Path, root: Path, wheelhouse: Path
) -> None:
    """Every provisioning pod parses the manifest in a fresh temp folder: rollback listed each
    of those throwaway paths; it names them as the one provisioned manifest."""
    from conftest import write_manifest

    m = write_manifest(tmp_path / "m", "app", ["alpha==1.0"], find_links=wheelhouse)
    first = m.read_text()
    second = first.replace('requirements = ["alpha==1.0"]', 'requirements = ["alpha==1.0", "gamma==1.0"]')
    for text in (first, second):
        r = volenv(
            "--root", root, "sync", "--from-env", "VOLENV_MANIFEST_TOML", env={"VOLENV_MANIFEST_TOML": text}
        )
        assert r.returncode == 0, r.stderr
    r = volenv("--root", root, "rollback", "app")
    assert r.returncode == 0, r.stderr
    assert "volenv-inline-" not in r.stderr, r.stderr
    assert r.stderr.count("run --manifest (provisioned: sync --from-env)") == 1, r.stderr
