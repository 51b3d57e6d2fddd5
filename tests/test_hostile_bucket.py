"""Issue 14, the bucket side: a bucket is untrusted storage. Each test crafts a file:// bucket
the way an attacker who can write it would (from a real pushed snapshot), pulls it onto a
fresh volume and checks: the documented exit code (4: verification failed), no traceback,
nothing stored under a content id that is not that content, and a sentinel tree OUTSIDE the
root hashed before and after: unchanged, always.

Extraction attacks are pulled with --trust-unsigned: the extraction must hold on its own, for
the user who opted out of signatures (or whose signing key leaked)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from conftest import Result, serve_bytes, snapshot_of, staging_left, volenv, write_manifest
from volenv.remote.signing import SigningKey, load_signing_key
from volenv.store.integrity import Entry, encode_record, load_record
from volenv.store.modelpaths import model_key

ENV = "app"


@dataclass(frozen=True)
class Origin:
    """One real snapshot, synced on volume A and pushed signed to a pristine bucket."""

    a: Path
    pristine: Path
    sid: str
    key: SigningKey
    trusted: str  # VOLENV_TRUSTED_KEYS for the pusher's key


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> Origin:
    base = tmp_path_factory.mktemp("origin")
    key_file = base / "pusher.key"
    r = volenv("key", "generate", "--name", "pusher", "--out", key_file)
    assert r.returncode == 0, r.stderr
    a = base / "a" / "volenv"
    m = write_manifest(base, ENV, ["beta==1.0"], find_links=wheelhouse)
    assert volenv("--root", a, "sync", m).returncode == 0
    bucket = base / "bucket"
    r = volenv("--root", a, "--json", "push", ENV, "--to", f"file://{bucket}", "--signing-key", key_file)
    assert r.returncode == 0, r.stderr
    key = load_signing_key(str(key_file))
    return Origin(a, bucket, r.json()["snapshot"], key, key.public())


def _tree_digest(top: Path) -> str:
    """Names, types, modes, link targets and contents of everything below top."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            st = p.lstat()
            h.update(f"{p.relative_to(top)}\0{st.st_mode:o}\0".encode())
            if stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(p).encode())
            elif stat.S_ISREG(st.st_mode):
                h.update(p.read_bytes())
    h.update(f"{top.lstat().st_mode:o}".encode())
    return h.hexdigest()


class Case:
    """A copy of the pristine bucket to tamper with, a fresh volume B to pull onto, and the
    sentinel tree outside B's root that no pull may touch."""

    def __init__(self, tmp: Path, origin: Origin) -> None:
        self.origin = origin
        self.sid = origin.sid
        self.bucket = tmp / "bucket"
        shutil.copytree(origin.pristine, self.bucket)
        self.url = f"file://{self.bucket}"
        self.b = tmp / "b" / "volenv"
        self.outside = tmp / "outside"
        (self.outside / "dir").mkdir(parents=True)
        (self.outside / "f").write_text("precious\n")
        (self.outside / "dir" / "g").write_text("also precious\n")
        os.chmod(self.outside / "dir", 0o750)

    # ------------------------------------------------------------ the bucket's documents

    def doc(self) -> dict:
        return json.loads((self.bucket / "snapshots" / f"{self.sid}.json").read_text())

    def write_doc(self, doc: dict, sign_with: SigningKey | None = None, sid: str | None = None) -> None:
        """Write a snapshot document; signed by sign_with (re-signed), else unsigned."""
        doc = {k: v for k, v in doc.items() if k != "signatures"}
        if sign_with is not None:
            doc["signatures"] = [sign_with.sign(doc)]
        (self.bucket / "snapshots" / f"{sid or self.sid}.json").write_text(json.dumps(doc))

    def put_pack(self, group: str, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> dict:
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for info, data in members:
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
        tar_bytes = raw.getvalue()
        blob = zstandard.ZstdCompressor().compress(tar_bytes)
        pack_id = hashlib.sha256(tar_bytes).hexdigest()
        (self.bucket / "packs" / f"{pack_id}.tar.zst").write_bytes(blob)
        return {
            "id": pack_id,
            "group": group,
            "blob_sha256": hashlib.sha256(blob).hexdigest(),
            "blob_size": len(blob),
            "tar_size": len(tar_bytes),
            "files": len(members),
        }

    def meta_members(
        self, extra_entries: list[Entry] = (), extra: list[tuple[tarfile.TarInfo, bytes | None]] = ()
    ) -> tuple[list[tuple[tarfile.TarInfo, bytes | None]], str]:
        """The real snapshot's .volenv, its record extended by extra_entries; + extra members."""
        snap = self.origin.a / "envs" / ENV / "snapshots" / self.sid
        record = load_record(snap)
        for e in extra_entries:
            record[e.path] = e
        rec = encode_record(record.values())
        members = [d(".volenv")]
        for p in sorted((snap / ".volenv").iterdir()):
            if p.is_file() and not p.name.startswith("."):
                members.append(f(f".volenv/{p.name}", rec if p.name == "record" else p.read_bytes()))
        return members + list(extra), hashlib.sha256(rec).hexdigest()

    def craft(
        self,
        venv: list[tuple[tarfile.TarInfo, bytes | None]],
        entries: list[Entry] = (),
        meta_extra: list[tuple[tarfile.TarInfo, bytes | None]] = (),
    ) -> None:
        """An unsigned document whose record lists entries and whose _venv pack is venv."""
        doc = self.doc()
        meta, rec_sha = self.meta_members(entries, meta_extra)
        packs = [self.put_pack("_meta", meta), self.put_pack("_venv", venv)]
        doc["packs"] = packs + [p for p in doc["packs"] if p["group"] not in ("_meta", "_venv")]
        doc["record_sha256"] = rec_sha
        self.write_doc(doc)

    # ------------------------------------------------------------ pulling and checking

    def pull(self, *extra: str, target: str | None = None, env: dict[str, str] | None = None) -> Result:
        full = {"VOLENV_TRUSTED_KEYS": self.origin.trusted, **(env or {})}
        return volenv("--root", self.b, "pull", target or self.sid, "--from", self.url, *extra, env=full)

    def refused(self, r: Result, code: int = 4, *words: str) -> None:
        assert r.returncode == code, (r.returncode, r.stderr)
        assert "Traceback" not in r.stderr, r.stderr
        for w in words:
            assert w in r.stderr, r.stderr
        snaps = self.b / "envs" / ENV / "snapshots"
        assert not snaps.exists() or not os.listdir(snaps)
        assert not (self.b / "envs" / ENV / "current").exists()
        assert staging_left(self.b) == [] if self.b.exists() else True
        assert_blobs_are_their_ids(self.b)


def assert_blobs_are_their_ids(root: Path) -> None:
    """Whatever sits in packs/blobs is exactly what its name (the tar's sha256) says."""
    blobs = root / "packs" / "blobs"
    for p in blobs.iterdir() if blobs.exists() else []:
        assert not p.name.startswith("."), f"temp blob left: {p}"
        with open(p, "rb") as fh, zstandard.ZstdDecompressor().stream_reader(fh) as zr:
            h = hashlib.sha256()
            while chunk := zr.read(1 << 20):
                h.update(chunk)
        assert f"{h.hexdigest()}.tar.zst" == p.name, f"{p} is not its id"


@pytest.fixture
def case(tmp_path: Path, origin: Origin) -> Iterator[Case]:
    c = Case(tmp_path, origin)
    before = _tree_digest(c.outside)
    yield c
    assert _tree_digest(c.outside) == before, "the sentinel tree outside the root changed"


# ---------------------------------------------------------------- tar members


def f(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), mode
    return info, data


def d(name: str, mode: int = 0o755) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, mode
    return info, None


def sym(name: str, target: str) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info, None


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o666
    info.devmajor, info.devminor = 1, 3
    return info, None


def fentry(path: str, size: int, mode: int = 0o644) -> Entry:
    return Entry(path, "f", mode, size, "0" * 64)


# ---------------------------------------------------------------- escapes from the root


def test_meta_pack_symlinked_volenv_dir_writes_nothing_outside(case: Case) -> None:
    """The issue's first escape: `.volenv -> /elsewhere`, then members below it, and a
    directory member that used to chmod the link's target 777."""
    meta = [
        sym(".volenv", str(case.outside / "dir")),
        d(".volenv", 0o777),
        f(".volenv/seal.json", b"{}", 0o4755),
    ]
    doc = case.doc()
    doc["packs"] = [case.put_pack("_meta", meta)] + [p for p in doc["packs"] if p["group"] != "_meta"]
    case.write_doc(doc)
    case.refused(case.pull("--trust-unsigned"), 4, "metadata pack holds")


def test_venv_pack_member_below_a_packed_symlink_is_refused(case: Case) -> None:
    entries = [Entry("evil", "l", 0o777, 0, str(case.outside)), fentry("evil/f", 6), fentry("evil/new", 4)]
    case.craft([sym("evil", str(case.outside)), f("evil/f", b"owned\n"), f("evil/new", b"new\n")], entries)
    case.refused(case.pull("--trust-unsigned"), 4, "not a directory the pack created")
    assert not (case.outside / "new").exists()


def test_directory_below_a_packed_symlink_is_neither_created_nor_chmoded(case: Case) -> None:
    entries = [Entry("lnk", "l", 0o777, 0, str(case.outside / "dir")), Entry("lnk/sub", "d", 0o777, 0, "-")]
    case.craft([sym("lnk", str(case.outside / "dir")), d("lnk/sub", 0o777)], entries)
    case.refused(case.pull("--trust-unsigned"), 4)
    assert not (case.outside / "dir" / "sub").exists()


@pytest.mark.parametrize(
    "name", ["../../../outside-escape", "/tmp/volenv-absolute-escape", "bin/../../up", "a//b", "./x"]
)
def test_unsafe_member_names_are_refused(case: Case, name: str) -> None:
    case.craft([f(name, b"x\n")], [fentry(name, 2)])
    case.refused(case.pull("--trust-unsigned"), 4, "unsafe member name")
    assert not Path("/tmp/volenv-absolute-escape").exists()


def test_setuid_member_is_refused(case: Case) -> None:
    case.craft([f("bin/suid", b"#!/bin/sh\n", 0o4755)], [fentry("bin/suid", 10, 0o4755)])
    case.refused(case.pull("--trust-unsigned"), 4, "setuid")


def test_setgid_member_in_meta_is_refused(case: Case) -> None:
    meta, rec_sha = case.meta_members(extra=[f(".volenv/sgid", b"x", 0o2755)])
    doc = case.doc()
    doc["packs"] = [case.put_pack("_meta", meta)] + [p for p in doc["packs"] if p["group"] != "_meta"]
    doc["record_sha256"] = rec_sha
    case.write_doc(doc)
    case.refused(case.pull("--trust-unsigned"), 4, "setuid/setgid")


@pytest.mark.parametrize(
    "member",
    [
        special(".volenv/hard", tarfile.LNKTYPE, "/etc/passwd"),
        special(".volenv/dev", tarfile.CHRTYPE),
        special(".volenv/blk", tarfile.BLKTYPE),
        special(".volenv/fifo", tarfile.FIFOTYPE),
    ],
    ids=["hardlink", "chardev", "blockdev", "fifo"],
)
def test_links_devices_and_fifos_are_refused(case: Case, member: tuple[tarfile.TarInfo, None]) -> None:
    meta, rec_sha = case.meta_members(extra=[member])
    doc = case.doc()
    doc["packs"] = [case.put_pack("_meta", meta)] + [p for p in doc["packs"] if p["group"] != "_meta"]
    doc["record_sha256"] = rec_sha
    case.write_doc(doc)
    case.refused(case.pull("--trust-unsigned"), 4)


def test_hard_link_in_venv_pack_is_refused(case: Case) -> None:
    case.craft([special("bin/h", tarfile.LNKTYPE, str(case.outside / "f"))], [fentry("bin/h", 0)])
    case.refused(case.pull("--trust-unsigned"), 4, "hard link")


@pytest.mark.parametrize("name", [".volenvX/evil", "evil", ".volenv/sub/evil"])
def test_meta_members_only_directly_under_volenv(case: Case, name: str) -> None:
    meta, rec_sha = case.meta_members(extra=[f(name, b"x")])
    doc = case.doc()
    doc["packs"] = [case.put_pack("_meta", meta)] + [p for p in doc["packs"] if p["group"] != "_meta"]
    doc["record_sha256"] = rec_sha
    case.write_doc(doc)
    case.refused(case.pull("--trust-unsigned"), 4, "metadata pack holds")


def test_duplicate_members_are_refused(case: Case) -> None:
    """A second `.volenv/record` (a different one) after the first: exit 4, not exit 1."""
    meta, rec_sha = case.meta_members(extra=[f(".volenv/record", b"volenv-record 1\n")])
    doc = case.doc()
    doc["packs"] = [case.put_pack("_meta", meta)] + [p for p in doc["packs"] if p["group"] != "_meta"]
    doc["record_sha256"] = rec_sha
    case.write_doc(doc)
    case.refused(case.pull("--trust-unsigned"), 4, "appears twice")


def test_zstd_bomb_stops_at_the_declared_size(case: Case) -> None:
    """A few KB of zstd `_meta` that expands to 256 MiB: refused at its declared tar size,
    without the volume ever holding the expansion."""
    big = 256 << 20
    raw = io.BytesIO()
    cctx = zstandard.ZstdCompressor(level=3)
    h = hashlib.sha256()

    class Tee(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, b: object) -> int:
            data = bytes(b)  # type: ignore[call-overload]
            h.update(data)
            zw.write(data)
            return len(data)

    zw = cctx.stream_writer(raw, closefd=False)
    with tarfile.open(fileobj=Tee(), mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(d(".volenv")[0])
        info = tarfile.TarInfo(".volenv/record")
        info.size = big

        class Zeros(io.RawIOBase):
            left = big

            def readable(self) -> bool:
                return True

            def readinto(self, b: bytearray) -> int:  # type: ignore[override]
                n = min(len(b), self.left)
                b[:n] = bytes(n)
                self.left -= n
                return n

        tar.addfile(info, io.BufferedReader(Zeros(), 1 << 20))
    zw.close()
    blob = raw.getvalue()
    assert len(blob) < 64 * 1024
    pack_id = h.hexdigest()
    (case.bucket / "packs" / f"{pack_id}.tar.zst").write_bytes(blob)
    doc = case.doc()
    meta = {
        "id": pack_id,
        "group": "_meta",
        "blob_sha256": hashlib.sha256(blob).hexdigest(),
        "blob_size": len(blob),
        "tar_size": 10240,
        "files": 2,
    }
    doc["packs"] = [meta] + [p for p in doc["packs"] if p["group"] != "_meta"]
    case.write_doc(doc)
    case.refused(case.pull("--trust-unsigned"), 4, "declared size")
    used = sum(p.stat().st_size for p in case.b.rglob("*") if p.is_file() and not p.is_symlink())
    assert used < 8 << 20, used


# ---------------------------------------------------------------- fields from the bucket


def test_manifest_digest_with_dot_dot_is_refused(case: Case) -> None:
    doc = case.doc()
    doc["manifest_digest"] = "../../../../../outside/f"
    case.write_doc(doc)
    case.refused(case.pull("--trust-unsigned"), 4, "manifest_digest")


def test_sealed_activation_variable_names_are_checked(case: Case) -> None:
    """A pulled seal whose activation env holds a shell injection (`env --format sh` output is
    eval'd) is refused like a manifest with that key."""
    from volenv.store.sealcheck import seal_self_digest

    snap = case.origin.a / "envs" / ENV / "snapshots" / case.sid
    seal = json.loads((snap / ".volenv" / "seal.json").read_text())
    seal["manifest"]["env"] = {"X=1;touch /tmp/INJECTED;Y": "v"}
    seal["self_sha256"] = seal_self_digest(seal)
    raw = json.dumps(seal).encode()
    meta, _ = case.meta_members()
    meta = [m if m[0].name != ".volenv/seal.json" else f(".volenv/seal.json", raw) for m in meta]
    doc = case.doc()
    doc["packs"] = [case.put_pack("_meta", meta)] + [p for p in doc["packs"] if p["group"] != "_meta"]
    doc["seal_sha256"] = hashlib.sha256(raw).hexdigest()
    case.write_doc(doc)
    # refused by the seal check (every seal reader validates activation names) before the manifest rules
    case.refused(case.pull("--trust-unsigned"), 4, "not a valid variable name")


def test_absolute_snapshot_id_in_a_ref_is_refused(case: Case) -> None:
    evil = f"{case.outside}/{ENV}-0123456789ab"
    (case.bucket / "refs" / f"{ENV}.json").write_text(json.dumps({"schema": 1, "snapshot": evil}))
    doc = case.doc()
    doc["snapshot"] = evil
    case.write_doc(doc, case.origin.key)
    case.refused(case.pull("--trust-unsigned", target=ENV), 4, "refs/app.json is invalid")


def test_absolute_snapshot_id_argument_is_a_usage_error(case: Case) -> None:
    case.refused(case.pull(target=f"{case.outside}/{ENV}-0123456789ab"), 2)


def test_ref_of_one_env_naming_another_envs_snapshot_is_refused(case: Case) -> None:
    """`prod`'s ref naming app's snapshot, or a manifest claiming env prod, never switches
    prod's current pointer."""
    (case.bucket / "refs" / "prod.json").write_text(json.dumps({"schema": 1, "snapshot": case.sid}))
    case.refused(case.pull(target="prod"), 4, "another env")
    doc = case.doc()
    doc["env"] = "prod"
    case.write_doc(doc, case.origin.key)  # even signed: the env must be the snapshot's
    case.refused(case.pull(), 4, "is not the env of snapshot")
    assert not (case.b / "envs" / "prod").exists()


def test_seal_of_another_env_is_refused(case: Case) -> None:
    """A well-formed manifest for prod-<hex> whose packed seal is app's: the pulled seal must
    be for the snapshot (and env) the bucket named."""
    doc = case.doc()
    prod_sid = "prod-" + case.sid.rsplit("-", 1)[1]
    doc["snapshot"], doc["env"] = prod_sid, "prod"
    case.write_doc(doc, sid=prod_sid)
    r = case.pull("--trust-unsigned", target=prod_sid)
    assert r.returncode == 4 and "Traceback" not in r.stderr, r.stderr
    assert not (case.b / "envs" / "prod" / "current").exists()
    snaps = case.b / "envs" / "prod" / "snapshots"
    assert not snaps.exists() or not os.listdir(snaps)


def _model_bucket(case: Case, spec: dict, files: list[dict], name: str | None = None) -> None:
    rec_name = name or f"{spec['name']}.{model_key(spec)}.json"
    rec = {"schema": 1, "name": spec["name"], "key": model_key(spec), "spec": spec, "files": files}
    (case.bucket / "models").mkdir(exist_ok=True)
    (case.bucket / "models" / rec_name).write_text(json.dumps(rec))
    (case.bucket / "model-files").mkdir(exist_ok=True)
    for entry in files:
        (case.bucket / "model-files" / entry["sha256"]).write_bytes(b"attacker bytes\n")
    doc = case.doc()
    doc["models"] = [rec_name]
    doc["model_records"] = {}
    case.write_doc(doc)


def test_model_file_path_with_dot_dot_is_refused(case: Case) -> None:
    sha = hashlib.sha256(b"attacker bytes\n").hexdigest()
    spec = {
        "name": "voc",
        "optional": False,
        "url": "https://example.invalid/voc.bin",
        "sha256": sha,
        "size": None,
    }
    depth = len(case.b.parts) + 3
    _model_bucket(case, spec, [{"path": "../" * depth + str(case.outside / "f")[1:], "sha256": sha}])
    r = case.pull("--trust-unsigned")
    assert r.returncode == 4 and "Traceback" not in r.stderr, r.stderr
    assert "is not a relative path" in r.stderr


def test_model_name_with_dot_dot_is_refused(case: Case) -> None:
    sha = hashlib.sha256(b"attacker bytes\n").hexdigest()
    spec = {
        "name": "../../../x",
        "optional": False,
        "url": "https://e.invalid/m.bin",
        "sha256": sha,
        "size": None,
    }
    _model_bucket(case, spec, [{"path": "m.bin", "sha256": sha}], name="x.0123456789abcdef.json")
    r = case.pull("--trust-unsigned")
    assert r.returncode == 4 and "Traceback" not in r.stderr, r.stderr


# ---------------------------------------------------------------- cache poisoning


def test_attacker_blob_under_a_legit_id_is_never_kept(case: Case) -> None:
    """The attacker lists beta's real pack id with their own blob (its blob_sha256 honest):
    the pull fails, packs/blobs holds nothing under that id, and a later honest pull works."""
    doc = case.doc()
    victim = next(p for p in doc["packs"] if p["group"].startswith("beta"))
    evil = case.put_pack(
        victim["group"], [f("beta/__init__.py", b"import os; os.system('touch /tmp/PWNED')\n")]
    )
    blob = (case.bucket / "packs" / f"{evil['id']}.tar.zst").read_bytes()
    (case.bucket / "packs" / f"{victim['id']}.tar.zst").write_bytes(blob)
    victim.update(blob_sha256=evil["blob_sha256"], blob_size=evil["blob_size"])
    case.write_doc(doc)
    case.refused(case.pull("--trust-unsigned"), 4, "damaged")
    assert not (case.b / "packs" / "blobs" / f"{victim['id']}.tar.zst").exists()
    shutil.rmtree(case.bucket)
    shutil.copytree(case.origin.pristine, case.bucket)
    r = case.pull()
    assert r.returncode == 0, r.stderr
    assert_blobs_are_their_ids(case.b)
    assert volenv("--root", case.b, "verify", "--all", "--level", "full").returncode == 0


def test_pack_and_push_never_reuse_a_planted_blob(case: Case, tmp_path: Path) -> None:
    """A blob planted on the pushing volume under a real id is rewritten by `volenv pack`
    and never uploaded."""
    a2 = tmp_path / "a2"
    shutil.copytree(case.origin.a, a2, symlinks=True)
    doc = json.loads((a2 / "packs" / "snapshots" / f"{case.sid}.json").read_text())
    victim = next(p for p in doc["packs"] if p["group"].startswith("beta"))
    blob = a2 / "packs" / "blobs" / f"{victim['id']}.tar.zst"
    evil = zstandard.ZstdCompressor().compress(b"not the tar this id names")
    blob.write_bytes(evil)
    fresh = tmp_path / "fresh-bucket"
    r = volenv("--root", a2, "push", ENV, "--to", f"file://{fresh}", "--signing-key", "/dev/null")
    assert r.returncode == 2 and "Traceback" not in r.stderr  # a bad key file is a usage error
    r = volenv("--root", a2, "push", ENV, "--to", f"file://{fresh}")
    assert r.returncode == 4 and "Traceback" not in r.stderr, r.stderr
    assert not (fresh / "packs" / f"{victim['id']}.tar.zst").exists()
    assert volenv("--root", a2, "pack", ENV).returncode == 0
    assert blob.read_bytes() != evil
    assert_blobs_are_their_ids(a2)


def test_materialize_never_runs_a_blob_that_is_not_its_id(case: Case, tmp_path: Path) -> None:
    """The issue's end of the poisoning chain: a blob under beta's id whose content is another
    tar; `run --materialize always` refuses it (exit 4) and never executes it."""
    a2 = tmp_path / "a2"
    shutil.copytree(case.origin.a, a2, symlinks=True)
    doc = json.loads((a2 / "packs" / "snapshots" / f"{case.sid}.json").read_text())
    victim = next(p for p in doc["packs"] if p["group"].startswith("beta"))
    marker = tmp_path / "EXECUTED"
    evil = case.put_pack(victim["group"], [f("beta/__init__.py", f"open({str(marker)!r}, 'w')\n".encode())])
    blob = (case.bucket / "packs" / f"{evil['id']}.tar.zst").read_bytes()
    (a2 / "packs" / "blobs" / f"{victim['id']}.tar.zst").write_bytes(blob)
    victim.update(blob_sha256=evil["blob_sha256"], blob_size=evil["blob_size"])
    (a2 / "packs" / "snapshots" / f"{case.sid}.json").write_text(json.dumps(doc))
    r = volenv(
        "--root", a2, "run", "--env", ENV, "--materialize", "always", "--materialize-dir", tmp_path / "mat",
        "--", "python", "-c", "import beta",
    )  # fmt: skip
    assert r.returncode == 4 and "Traceback" not in r.stderr, r.stderr
    assert not marker.exists()


# ---------------------------------------------------------------- signatures


def test_unsigned_snapshot_is_refused_unless_trust_unsigned(case: Case) -> None:
    case.write_doc(case.doc())  # the same document, signature stripped
    case.refused(case.pull(), 4, "unsigned", "--trust-unsigned")
    r = case.pull("--trust-unsigned")
    assert r.returncode == 0, r.stderr
    assert "WITHOUT a trusted signature" in r.stderr
    assert snapshot_of(case.b, ENV) == case.sid


def test_snapshot_signed_by_an_untrusted_key_is_refused(case: Case, tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    r = volenv("key", "generate", "--name", "mallory", "--out", other)
    assert r.returncode == 0
    case.write_doc(case.doc(), load_signing_key(str(other)))
    case.refused(case.pull(), 4, "'mallory'", "none of them in VOLENV_TRUSTED_KEYS")
    case.refused(case.pull(env={"VOLENV_TRUSTED_KEYS": ""}), 4)
    # the attacker naming their key like the trusted one: the signature does not verify
    forged = load_signing_key(str(other))
    case.write_doc(case.doc(), SigningKey("pusher", forged.seed))
    case.refused(case.pull(), 4, "does not verify")
    case.refused(case.pull("--trust-unsigned"), 4, "does not verify")


@pytest.mark.parametrize("tamper", ["drop-pack", "blob-size", "record", "seal", "manifest-digest", "models"])
def test_valid_signature_over_a_tampered_document_fails(case: Case, tamper: str) -> None:
    doc = case.doc()
    assert doc["signatures"][0].startswith("pusher:")
    if tamper == "drop-pack":
        doc["packs"] = doc["packs"][1:]
    elif tamper == "blob-size":
        doc["packs"][0]["blob_size"] += 1
    elif tamper == "record":
        doc["record_sha256"] = "0" * 64
    elif tamper == "seal":
        doc["seal_sha256"] = "1" * 64
    elif tamper == "manifest-digest":
        doc["manifest_digest"] = "2" * 64
    else:
        doc["models"] = ["voc.0123456789abcdef.json"]
    (case.bucket / "snapshots" / f"{case.sid}.json").write_text(json.dumps(doc))  # signature kept
    case.refused(case.pull(), 4, "does not verify")
    case.refused(case.pull("--trust-unsigned"), 4, "does not verify")


def test_signed_snapshot_pulls_and_lists(case: Case) -> None:
    listing = volenv("--json", "list", "--remote", case.url, env={"VOLENV_TRUSTED_KEYS": case.origin.trusted})
    assert listing.returncode == 0, listing.stderr
    assert listing.json()["envs"] == {ENV: case.sid}
    assert listing.json()["snapshots"][0]["signed_by"] == "pusher"
    untrusted = volenv("--json", "list", "--remote", case.url, env={"VOLENV_TRUSTED_KEYS": ""})
    assert untrusted.returncode == 0 and untrusted.json()["envs"] == {}
    assert "left out" in untrusted.stderr
    r = case.pull("--no-switch", target=ENV)
    assert r.returncode == 0, r.stderr
    assert "trust-unsigned" not in r.stderr
    pulled = volenv(
        "--root", case.b, "--json", "pull", ENV, "--from", case.url, env={"VOLENV_TRUSTED_KEYS": case.origin.trusted}
    )  # fmt: skip
    assert pulled.json()["signed_by"] == "pusher" and pulled.json()["action"] == "present"
    assert snapshot_of(case.b, ENV) == case.sid


def test_key_generate(tmp_path: Path) -> None:
    out = tmp_path / "k.key"
    r = volenv("key", "generate", "--name", "ci-1", "--out", out)
    assert r.returncode == 0, r.stderr
    name, _, b64 = r.stdout.strip().partition(":")
    import base64

    assert name == "ci-1" and len(base64.b64decode(b64)) == 32
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert len(base64.b64decode(out.read_text().strip().split(":", 1)[1])) == 64  # Nix's seed||public
    again = volenv("key", "generate", "--name", "ci-1", "--out", out)
    assert again.returncode == 2 and "exists" in again.stderr
    bad = volenv("key", "generate", "--name", "../x", "--out", tmp_path / "x")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    r = volenv("list", "--remote", f"file://{tmp_path}", env={"VOLENV_TRUSTED_KEYS": "nocolon"})
    assert r.returncode == 2 and "Traceback" not in r.stderr


# ---------------------------------------------------------------- malformed documents

MALFORMED = {
    "missing-packs": lambda doc: doc.pop("packs"),
    "string-schema": lambda doc: doc.update(schema="1"),
    "packs-not-a-list": lambda doc: doc.update(packs={"a": 1}),
    "pack-null": lambda doc: doc.update(packs=[None]),
    "tar-size-string": lambda doc: doc["packs"][0].update(tar_size="big"),
    "pack-extra-key": lambda doc: doc["packs"][0].update(evil=1),
    "fingerprint-string": lambda doc: doc.update(fingerprint="cpython"),
    "models-not-a-list": lambda doc: doc.update(models="voc"),
    "models-number": lambda doc: doc.update(models=[1]),
    "signatures-string": lambda doc: doc.update(signatures="pusher:AAAA"),
    "env-with-slash": lambda doc: doc.update(env="a/b"),
    "created-string": lambda doc: doc.update(created="yesterday"),
    "executable-nul": lambda doc: doc["fingerprint"].update(executable="/usr/bin/python\0x"),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_snapshot_documents_are_a_clean_exit_4(case: Case, kind: str) -> None:
    doc = case.doc()
    MALFORMED[kind](doc)
    (case.bucket / "snapshots" / f"{case.sid}.json").write_text(json.dumps(doc))
    case.refused(case.pull("--trust-unsigned"), 4)
    listing = volenv("--json", "list", "--remote", case.url, "--trust-unsigned")
    assert listing.returncode == 0 and "Traceback" not in listing.stderr, listing.stderr
    assert listing.json()["snapshots"] == [] and "left out" in listing.stderr


@pytest.mark.parametrize(
    "text", ["not json {", "[1, 2]", '"a string"', "{}", '{"schema": 1}', '{"schema": 1, "snapshot": 7}']
)
def test_malformed_refs_and_documents(case: Case, text: str) -> None:
    (case.bucket / "refs" / f"{ENV}.json").write_text(text)
    case.refused(case.pull(target=ENV), 4)
    (case.bucket / "snapshots" / f"{case.sid}.json").write_text(text)
    case.refused(case.pull("--trust-unsigned"), 4)
    listing = volenv("list", "--remote", case.url, "--trust-unsigned")
    assert listing.returncode == 0 and "Traceback" not in listing.stderr, listing.stderr


# ---------------------------------------------------------------- push: nothing from outside (F3)

MODEL = b"local weights " * 300
MODEL_SHA = hashlib.sha256(MODEL).hexdigest()
SECRET = b"TOP-SECRET-OUTSIDE-THE-ROOT\n"


@dataclass(frozen=True)
class Modeled:
    """A volume whose env uses a url model, fetched from a local server."""

    a: Path
    sid: str
    weights: Path  # the model's file on the volume
    record: Path


@pytest.fixture(scope="module")
def modeled(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> Iterator[Modeled]:
    base = tmp_path_factory.mktemp("modeled")
    with serve_bytes(MODEL) as server:
        extra = f'[[models]]\nname = "weights"\nurl = "{server}/w.bin"\nsha256 = "{MODEL_SHA}"\n'
        m = write_manifest(base, "ml", ["beta==1.0"], find_links=wheelhouse, extra=extra)
        a = base / "a" / "volenv"
        r = volenv("--root", a, "sync", "--pack", m)
        assert r.returncode == 0, r.stderr
    weights = next((a / "models" / "files" / "weights").glob("*/w.bin"))
    record = next((a / "models" / "records").glob("weights.*.json"))
    yield Modeled(a, snapshot_of(a, "ml"), weights, record)


def _secret_nowhere(top: Path) -> None:
    for dirpath, _dirs, names in os.walk(top):
        for n in names:
            p = Path(dirpath) / n
            if not p.is_symlink():
                assert SECRET not in p.read_bytes(), f"{p} holds the secret"


@pytest.fixture
def pusher(tmp_path: Path, modeled: Modeled) -> Iterator[tuple[Path, Path, Path]]:
    """A copy of the modeled volume, a fresh bucket, and a secret outside both (unchanged)."""
    a2 = tmp_path / "a2" / "volenv"
    shutil.copytree(modeled.a, a2, symlinks=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(SECRET)
    before = _tree_digest(outside)
    yield a2, tmp_path / "bucket", outside
    assert _tree_digest(outside) == before
    _secret_nowhere(tmp_path / "bucket")


def test_push_never_uploads_a_model_file_swapped_for_a_link(
    pusher: tuple[Path, Path, Path], modeled: Modeled
) -> None:
    a2, bucket, outside = pusher
    w = a2 / modeled.weights.relative_to(modeled.a)
    w.unlink()
    w.symlink_to(outside / "secret")
    r = volenv("--root", a2, "push", "ml", "--to", f"file://{bucket}")
    assert r.returncode == 4 and "Traceback" not in r.stderr, r.stderr
    assert "w.bin" in r.stderr


def test_push_never_uploads_a_model_file_that_fails_its_sha256(
    pusher: tuple[Path, Path, Path], modeled: Modeled
) -> None:
    """Push skips keys the bucket has: one wrong object under a sha256 key poisons it for good."""
    a2, bucket, _outside = pusher
    w = a2 / modeled.weights.relative_to(modeled.a)
    w.write_bytes(SECRET)
    r = volenv("--root", a2, "push", "ml", "--to", f"file://{bucket}")
    assert r.returncode == 4 and "Traceback" not in r.stderr, r.stderr
    assert not (bucket / "model-files" / MODEL_SHA).exists()


def test_push_refuses_a_local_model_record_path_out_of_its_dir(
    pusher: tuple[Path, Path, Path], modeled: Modeled
) -> None:
    a2, bucket, outside = pusher
    rec_path = a2 / modeled.record.relative_to(modeled.a)
    rec = json.loads(rec_path.read_text())
    rec["files"][0]["path"] = "../" * (len(a2.parts) + 4) + str(outside / "secret")[1:]
    rec["files"][0]["sha256"] = hashlib.sha256(SECRET).hexdigest()
    rec_path.write_text(json.dumps(rec))
    r = volenv("--root", a2, "push", "ml", "--to", f"file://{bucket}")
    assert r.returncode == 4 and "Traceback" not in r.stderr, r.stderr
    assert "not a relative path" in r.stderr


def test_pack_and_push_never_read_a_snapshot_file_swapped_for_a_link(
    pusher: tuple[Path, Path, Path], modeled: Modeled
) -> None:
    a2, bucket, outside = pusher
    snap = a2 / "envs" / "ml" / "snapshots" / modeled.sid
    init = next(snap.glob("lib/python*/site-packages/beta/__init__.py"))
    init.parent.chmod(0o755)
    init.unlink()
    init.symlink_to(outside / "secret")
    shutil.rmtree(a2 / "packs")
    for cmd in (["pack", "ml"], ["push", "ml", "--to", f"file://{bucket}"]):
        r = volenv("--root", a2, *cmd)
        assert r.returncode == 4 and "Traceback" not in r.stderr, r.stderr
        assert "beta/__init__.py" in r.stderr and "--repair" in r.stderr, r.stderr
    _secret_nowhere(a2 / "packs") if (a2 / "packs").exists() else None


# ---------------------------------------------------------------- a url model's file is its spec's sha256 (F4)


def test_bucket_model_record_never_overwrites_a_local_model(
    tmp_path: Path, modeled: Modeled, origin: Origin
) -> None:
    """With --trust-unsigned, a record whose spec pins the local model's sha256 but whose one
    file has other bytes is refused; the local model file stays as it was."""
    b = tmp_path / "b" / "volenv"
    shutil.copytree(modeled.a, b, symlinks=True)
    bucket = tmp_path / "bucket"
    shutil.copytree(origin.pristine, bucket)
    evil = b"evil weights\n"
    evil_sha = hashlib.sha256(evil).hexdigest()
    spec = {
        "name": "weights",
        "optional": False,
        "url": "http://evil.invalid/w.bin",
        "sha256": MODEL_SHA,
        "size": None,
    }
    rec_name = f"weights.{model_key(spec)}.json"
    rec = {"schema": 1, "name": "weights", "key": model_key(spec), "spec": spec,
           "files": [{"path": "w.bin", "sha256": evil_sha, "size": len(evil)}]}  # fmt: skip
    (bucket / "models").mkdir(exist_ok=True)
    (bucket / "models" / rec_name).write_text(json.dumps(rec))
    (bucket / "model-files").mkdir(exist_ok=True)
    (bucket / "model-files" / evil_sha).write_bytes(evil)
    sid = origin.sid
    doc = json.loads((bucket / "snapshots" / f"{sid}.json").read_text())
    doc.pop("signatures", None)
    doc["models"], doc["model_records"] = [rec_name], {}
    (bucket / "snapshots" / f"{sid}.json").write_text(json.dumps(doc))
    w = b / modeled.weights.relative_to(modeled.a)
    r = volenv("--root", b, "pull", sid, "--from", f"file://{bucket}", "--trust-unsigned")
    assert r.returncode == 4 and "Traceback" not in r.stderr, r.stderr
    assert w.read_bytes() == MODEL


# ---------------------------------------------------------------- same pack, other compression (F5)


def _recompress(blob: Path, level: int) -> None:
    tar = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob.read_bytes())).read()
    blob.write_bytes(zstandard.ZstdCompressor(level=level, write_checksum=True).compress(tar))


@pytest.mark.parametrize("level", [-50, 19])
def test_signed_snapshot_pulls_when_the_bucket_blob_was_compressed_otherwise(case: Case, level: int) -> None:
    """The bucket already held these ids (pushed at another zstd level, push skips existing
    keys): the signed blob_sha256 differs from the bucket's bytes, the ids (tar sha256) match."""
    for info in case.doc()["packs"]:
        _recompress(case.bucket / "packs" / f"{info['id']}.tar.zst", level)
    r = case.pull()
    assert r.returncode == 0, r.stderr
    assert "e3b0c442" not in r.stderr
    assert_blobs_are_their_ids(case.b)
    assert volenv("--root", case.b, "verify", "--all", "--level", "full").returncode == 0


def test_signed_snapshot_pulls_over_a_local_blob_compressed_otherwise(case: Case) -> None:
    """Volume B packed the same distribution itself at another level: its local blob has the
    id but not the document's blob_sha256, and is used as it is."""
    blobs = case.b / "packs" / "blobs"
    blobs.mkdir(parents=True)
    for info in case.doc()["packs"]:
        local = blobs / f"{info['id']}.tar.zst"
        shutil.copyfile(case.bucket / "packs" / local.name, local)
        _recompress(local, 19 if info["blob_size"] > 200 else -50)
    r = case.pull()
    assert r.returncode == 0, r.stderr
    assert volenv("--root", case.b, "verify", "--all", "--level", "full").returncode == 0


def test_a_blob_not_its_id_is_still_refused_whatever_its_size(case: Case) -> None:
    doc = case.doc()
    victim = next(p for p in doc["packs"] if p["group"].startswith("beta"))
    (case.bucket / "packs" / f"{victim['id']}.tar.zst").write_bytes(
        zstandard.ZstdCompressor(level=-50).compress(os.urandom(4096))
    )
    r = case.pull()
    case.refused(r, 4, "damaged")
    assert "e3b0c442" not in r.stderr


# ---------------------------------------------------------------- terminal and FIFO traps (F9)


def test_control_characters_in_bucket_names_never_reach_the_terminal(case: Case) -> None:
    evil = "\x1b]0;PWNED\x07\x1b[2J\u202eevil"
    (case.bucket / "snapshots" / f"{evil}.json").write_text("not json {")
    (case.bucket / "refs" / f"{evil}.json").write_text(json.dumps({"schema": 1, "snapshot": case.sid}))
    (case.bucket / "models").mkdir(exist_ok=True)
    (case.bucket / "models" / f"{evil}.json").write_text("{}")
    doc = case.doc()
    doc["fingerprint"]["implementation"] = evil
    case.write_doc(doc)  # unsigned now: listed with --trust-unsigned
    for fmt in ([], ["--json"]):
        r = volenv(*fmt, "list", "--remote", case.url, "--trust-unsigned")
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
        assert "left out" in r.stderr
        for out in (r.stdout, r.stderr):
            assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out, repr(out)


@pytest.mark.parametrize("where", ["snapshots/x.json", "refs/app.json", "packs/{id}.tar.zst"])
def test_a_fifo_in_a_file_bucket_never_hangs(case: Case, where: str) -> None:
    victim = next(p for p in case.doc()["packs"] if p["group"].startswith("beta"))
    path = case.bucket / where.format(id=victim["id"])
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    r = volenv("list", "--remote", case.url, timeout=60)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    if where.startswith("packs/"):
        trusted = {"VOLENV_TRUSTED_KEYS": case.origin.trusted}
        r = volenv("--root", case.b, "pull", ENV, "--from", case.url, env=trusted, timeout=60)
        case.refused(r, 4, "not a regular file")


def test_pack_never_reads_below_a_snapshot_dir_swapped_for_a_link(
    pusher: tuple[Path, Path, Path], modeled: Modeled
) -> None:
    """The file itself is regular and of the recorded size, but its directory is a link out."""
    a2, bucket, outside = pusher
    snap = a2 / "envs" / "ml" / "snapshots" / modeled.sid
    pkg = next(snap.glob("lib/python*/site-packages/beta"))
    pkg.parent.chmod(0o755)
    bait = outside.parent / "bait" / "beta"  # outside the root (the sentinel is left alone)
    shutil.copytree(pkg, bait)
    init = bait / "__init__.py"
    init.write_bytes(SECRET[: init.stat().st_size].ljust(init.stat().st_size, b"#"))
    shutil.rmtree(pkg)
    pkg.symlink_to(bait)
    shutil.rmtree(a2 / "packs")
    for cmd in (["pack", "ml"], ["push", "ml", "--to", f"file://{bucket}"]):
        r = volenv("--root", a2, *cmd)
        assert r.returncode == 4 and "Traceback" not in r.stderr, r.stderr
        assert "is below a directory that is a link" in r.stderr


def test_checked_model_files_still_travel_through_s3(tmp_path: Path, modeled: Modeled) -> None:
    """The upload from the checked, open file (put_fileobj) on a real S3 endpoint (moto)."""
    import boto3

    from conftest import moto_s3

    a, b = tmp_path / "a" / "volenv", tmp_path / "b" / "volenv"
    shutil.copytree(modeled.a, a, symlinks=True)
    with moto_s3() as endpoint:
        env = {"AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t", "AWS_REGION": "us-east-1"}
        env["AWS_ENDPOINT_URL"] = endpoint
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="t",
                     aws_secret_access_key="t").create_bucket(Bucket="models-b")  # fmt: skip
        url = "s3://models-b/x"
        r = volenv("--root", a, "--json", "push", "ml", "--to", url, env=env)
        assert r.returncode == 0, r.stderr
        assert r.json()["models"] == 1
        r = volenv("--root", b, "pull", "ml", "--from", url, "--trust-unsigned", env=env)
        assert r.returncode == 0, r.stderr
    assert (b / modeled.weights.relative_to(modeled.a)).read_bytes() == MODEL


# ---------------------------------------------------------------- header values tarfile cannot take


def _mutated_first_file(blob: Path, pax: dict[str, str]) -> bytes:
    """The pack's own members, the first file's pax headers replaced: its size and name still
    match the record, so extraction reaches the values (the digest is checked only at the end)."""
    import io

    import zstandard

    with open(blob, "rb") as fh:
        tar_bytes = zstandard.ZstdDecompressor().stream_reader(fh).read()
    out = io.BytesIO()
    done = False
    with (
        tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as src,
        tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as dst,
    ):
        for m in src.getmembers():
            fh2 = src.extractfile(m) if m.isfile() else None
            if m.isfile() and not done:
                m.pax_headers = dict(pax)
                done = True
            dst.addfile(m, fh2)
    return zstandard.ZstdCompressor().compress(out.getvalue())


PAX = [{"GNU.sparse.realsize": "abc"}, {"mtime": "1e300"}, {"GNU.sparse.size": "x"}]


@pytest.mark.parametrize("pax", PAX)
def test_header_values_tarfile_cannot_take_are_damaged_not_a_crash(case: Case, pax: dict[str, str]) -> None:
    """A pax value tarfile rejects with ValueError, or an mtime os.utime rejects with
    OverflowError, in a blob swapped under a signed pack's id, was exit 1 with a traceback
    (the attacker's finding): exit 4, nothing left."""
    doc = case.doc()
    venv = next(p for p in doc["packs"] if p["group"] == "_venv")
    blob = case.bucket / "packs" / f"{venv['id']}.tar.zst"
    blob.write_bytes(_mutated_first_file(blob, pax))
    case.refused(case.pull(), 4, "damaged")


@pytest.mark.parametrize("pax", PAX[:2])
def test_materialize_of_a_pack_with_impossible_header_values_is_exit_4(
    case: Case, tmp_path: Path, pax: dict[str, str]
) -> None:
    """The same in a volume's pack: `run --materialize always` exits 4 and the program never
    runs (it was exit 1 on every start)."""
    a2 = tmp_path / "a2"
    shutil.copytree(case.origin.a, a2, symlinks=True)
    doc = json.loads((a2 / "packs" / "snapshots" / f"{case.sid}.json").read_text())
    victim = next(p for p in doc["packs"] if p["group"].startswith("beta"))
    blob = a2 / "packs" / "blobs" / f"{victim['id']}.tar.zst"
    blob.write_bytes(_mutated_first_file(blob, pax))
    mat = tmp_path / "mat"
    r = volenv(
        "--root", a2, "run", "--env", ENV, "--materialize", "always", "--materialize-dir", mat,
        "--", "python", "-c", "print('RAN')",
    )  # fmt: skip
    assert r.returncode == 4 and "Traceback" not in r.stderr and "RAN" not in r.stdout, r.stderr
    assert not (mat.exists() and [p for p in mat.iterdir() if ".partial" in p.name])
