"""Where snapshots and models travel: `s3://BUCKET/PREFIX` (any S3 API: RunPod's per-datacenter
volume endpoint, AWS, R2, MinIO) or `file://DIR`. Few, large, content-addressed objects:
RunPod's S3 API has no DeleteObjects, takes parts of at most 500 MB and lists unreliably past
~10k objects, so nothing here deletes in bulk, uploads go in parts (bucketput.py: 8 MiB, or more
for objects past 80 GB) and presence is asked per key.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import threading
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast
from urllib.parse import urlparse

from volenv.base.errors import UsageError, VerifyError, VolenvError, missing_extra
from volenv.base.leanjson import loads as json_loads  # RecursionError is ValueError there
from volenv.base.streams import CAP, pinned_streams
from volenv.store.volio import atomic_write_bytes, unique_suffix

# C0, DEL, C1 and the bidi overrides: a key name from the bucket must not drive the terminal
_UNPRINTABLE = {
    c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"
    for c in [*range(0x20), *range(0x7F, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
}


def printable(text: str) -> str:
    """Bucket-derived text for a message: control characters (ESC, OSC, CR, ...) escaped."""
    return text.translate(_UNPRINTABLE)


class RemoteError(VolenvError):
    exit_code = 8


class Upload(Protocol):
    """One object being uploaded in numbered parts (1..N, any order, from several threads);
    it becomes visible under its key only at `complete()`, never if `abort()`ed or killed."""

    def send(self, number: int, data: bytes) -> None: ...
    def complete(self) -> None: ...
    def abort(self) -> None: ...


class Remote(Protocol):
    url: str

    def exists(self, key: str) -> bool: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def begin_upload(self, key: str, size: int, part_size: int) -> Upload: ...
    def open(self, key: str) -> BinaryIO: ...
    def size(self, key: str) -> int: ...
    def open_range(self, key: str, start: int, end: int) -> BinaryIO: ...
    def get_bytes(self, key: str) -> bytes | None: ...
    def list(self, prefix: str) -> list[str]: ...


class FileRemote:
    def __init__(self, url: str, base: Path) -> None:
        self.url = url
        self.base = base

    def _p(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise UsageError(f"bad remote key {key!r}")
        return self.base / key

    def exists(self, key: str) -> bool:
        return self._p(key).is_file()

    def put_bytes(self, key: str, data: bytes) -> None:
        dest = self._p(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(dest, data)

    def begin_upload(self, key: str, size: int, part_size: int) -> Upload:
        """Parts written at their offsets into a dot-named temp file, renamed onto the key whole."""
        dest = self._p(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        return _FileUpload(dest, size, part_size)

    def _open_regular(self, key: str) -> BinaryIO:
        """Only a regular file is an object: opening a FIFO planted in the bucket would hang
        (O_NONBLOCK opens it at once), a device or directory is refused the same way."""
        fd = os.open(self._p(key), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise VerifyError(f"{self.url}: {printable(key)} is not a regular file")
        os.set_blocking(fd, True)
        return open(fd, "rb", closefd=True)

    def open(self, key: str) -> BinaryIO:
        try:
            return self._open_regular(key)
        except FileNotFoundError:
            raise RemoteError(f"{self.url}: no object {printable(key)}") from None

    def size(self, key: str) -> int:
        """The object's size in bytes (a ranged download plans its parts from it)."""
        with self.open(key) as fh:
            return os.fstat(fh.fileno()).st_size

    def open_range(self, key: str, start: int, end: int) -> BinaryIO:
        """Bytes start..end-1 of the object (fewer where it is shorter)."""
        fh = self.open(key)
        fh.seek(start)
        return cast(BinaryIO, _Limited(fh, end - start))

    def get_bytes(self, key: str) -> bytes | None:
        try:
            with self._open_regular(key) as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    def list(self, prefix: str) -> list[str]:
        d = self._p(prefix.rstrip("/"))
        if not d.is_dir():
            return []
        return sorted(f"{prefix.rstrip('/')}/{p.name}" for p in d.iterdir() if not p.name.startswith("."))


class _FileUpload:
    def __init__(self, dest: Path, size: int, part_size: int) -> None:
        self.dest = dest
        self.part_size = part_size
        self.tmp = dest.with_name(f".{dest.name}.{unique_suffix()}")
        self.fd: int | None = os.open(
            self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644
        )
        os.ftruncate(self.fd, size)

    def send(self, number: int, data: bytes) -> None:
        fd = self.fd
        if fd is None:
            raise RemoteError(f"upload of {self.dest} already ended")
        off = (number - 1) * self.part_size
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, off)
            view, off = view[n:], off + n

    def complete(self) -> None:
        fd, self.fd = self.fd, None
        if fd is None:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.tmp, self.dest)

    def abort(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)
        self.tmp.unlink(missing_ok=True)


class _Limited(io.RawIOBase):
    """At most n bytes of an open object, then EOF; closing it closes the object."""

    def __init__(self, inner: BinaryIO, n: int) -> None:
        self.inner = inner
        self.left = n

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        want = self.left if size < 0 else min(size, self.left)
        data = self.inner.read(want) if want > 0 else b""
        self.left -= len(data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self.left == 0 and not self.closed:
            with contextlib.suppress(Exception):
                self.inner.read(1)  # the answer read to its end: its connection goes back to the pool
        self.inner.close()
        super().close()


class S3Remote:
    def __init__(self, url: str, bucket: str, prefix: str, endpoint: str | None, region: str | None) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise missing_extra("boto3", "s3") from None

        self.url = url
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint or os.environ.get("AWS_ENDPOINT_URL") or None,
            region_name=region
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or "us-east-1",
            config=Config(
                retries={"max_attempts": 8, "mode": "standard"},
                signature_version="s3v4",
                # one connection per stream (streams.py caps at 16, VOLENV_STREAMS up to 64)
                max_pool_connections=max(CAP, pinned_streams() or 0) + 4,
            ),
        )

    def _k(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def exists(self, key: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._k(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise RemoteError(f"{self.url}: HEAD {key} failed: {exc}") from None
        except BotoCoreError as exc:  # no answer at all (connection refused, timeout)
            raise RemoteError(f"{self.url}: HEAD {key} failed: {exc}") from None

    def put_bytes(self, key: str, data: bytes) -> None:
        _S3Upload(self, key, multipart=False).send(1, data)

    def begin_upload(self, key: str, size: int, part_size: int) -> Upload:
        """One PUT for an object of one part, else a multipart upload (parts numbered from 1)."""
        return _S3Upload(self, key, multipart=size > part_size)

    def open(self, key: str) -> BinaryIO:
        from botocore.exceptions import ClientError

        try:
            body: BinaryIO = self.client.get_object(Bucket=self.bucket, Key=self._k(key))["Body"]
            return body
        except ClientError as exc:
            raise RemoteError(f"{self.url}: GET {key} failed: {exc}") from None

    def size(self, key: str) -> int:
        from botocore.exceptions import ClientError

        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._k(key))["ContentLength"])
        except ClientError as exc:
            raise RemoteError(f"{self.url}: HEAD {key} failed: {exc}") from None

    def open_range(self, key: str, start: int, end: int) -> BinaryIO:
        from botocore.exceptions import ClientError

        try:
            resp = self.client.get_object(
                Bucket=self.bucket, Key=self._k(key), Range=f"bytes={start}-{end - 1}"
            )
        except ClientError as exc:
            raise RemoteError(f"{self.url}: GET {key} bytes {start}-{end - 1} failed: {exc}") from None
        body: BinaryIO = resp["Body"]
        got = str(resp.get("ContentRange") or "")
        if not got.startswith(f"bytes {start}-"):
            body.close()  # a server that ignored Range would send the object from byte 0
            raise RemoteError(f"{self.url}: GET {key} bytes {start}-{end - 1}: the answer is not that range")
        return cast(BinaryIO, _Limited(body, end - start))

    def get_bytes(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            data: bytes = self.client.get_object(Bucket=self.bucket, Key=self._k(key))["Body"].read()
            return data
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise RemoteError(f"{self.url}: GET {key} failed: {exc}") from None

    def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._k(prefix)
        ):
            keys += [o["Key"][strip:] for o in page.get("Contents", [])]
        return sorted(keys)


class _S3Upload:
    """The S3 calls behind boto3's own multipart upload (s3transfer), here so that each part is
    one unit of the push's adaptive pool: CreateMultipartUpload, UploadPart, then
    CompleteMultipartUpload, or AbortMultipartUpload. Checksums as s3transfer sends them."""

    def __init__(self, remote: S3Remote, key: str, *, multipart: bool) -> None:
        self.r = remote
        self.key = key
        self.upload_id: str | None = None
        self.parts: dict[int, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.extra: dict[str, str] = {}
        if remote.client.meta.config.request_checksum_calculation == "when_supported":
            self.extra["ChecksumAlgorithm"] = "CRC32"
        if multipart:
            resp = self._call("start", remote.client.create_multipart_upload, **self.extra)
            self.upload_id = str(resp["UploadId"])

    def _call(self, doing: str, fn: Any, **kw: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.r.bucket, Key=self.r._k(self.key), **kw)
        except (ClientError, BotoCoreError) as exc:
            msg = f"{self.r.url}: upload of {self.key} failed ({doing}): {exc}"
            raise RemoteError(printable(msg)) from None

    def send(self, number: int, data: bytes) -> None:
        if self.upload_id is None:
            self._call("PUT", self.r.client.put_object, Body=data)
            return
        resp = self._call(
            f"part {number}",
            self.r.client.upload_part,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=data,
            **self.extra,
        )
        part = {"PartNumber": number, "ETag": resp["ETag"]}
        if "ChecksumCRC32" in resp:
            part["ChecksumCRC32"] = resp["ChecksumCRC32"]
        with self.lock:
            self.parts[number] = part

    def complete(self) -> None:
        if self.upload_id is None:
            return
        with self.lock:
            parts = [self.parts[n] for n in sorted(self.parts)]
        self._call(
            "complete",
            self.r.client.complete_multipart_upload,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": parts},
        )
        self.upload_id = None

    def abort(self) -> None:
        """Best effort: an upload left unfinished is invisible (a bucket lifecycle rule reaps it)."""
        upload_id, self.upload_id = self.upload_id, None
        if upload_id is not None:
            with contextlib.suppress(Exception):
                self.r.client.abort_multipart_upload(
                    Bucket=self.r.bucket, Key=self.r._k(self.key), UploadId=upload_id
                )


def open_remote(url: str, *, endpoint: str | None = None, region: str | None = None) -> Remote:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        base = Path(parsed.path)
        if not parsed.path.startswith("/"):
            raise UsageError(f"{url}: file:// URLs need an absolute path (file:///srv/volenv-remote)")
        return FileRemote(url, base)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise UsageError(f"{url}: s3:// URLs name a bucket (s3://BUCKET/PREFIX)")
        return S3Remote(url, parsed.netloc, parsed.path, endpoint, region)
    raise UsageError(f"{url}: expected s3://BUCKET/PREFIX or file:///DIR")


def get_json(remote: Remote, key: str) -> dict[str, Any] | None:
    """A JSON object from the bucket; anything else is invalid (untrusted) data: exit 4."""
    data = remote.get_bytes(key)
    if data is None:
        return None
    try:
        obj = json_loads(data)
    except (ValueError, RecursionError) as exc:
        raise VerifyError(f"{remote.url}/{key} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise VerifyError(f"{remote.url}/{key} is not a JSON object")
    return obj
