"""Where voices and results live: S3-compatible object storage when configured (S3_BUCKET,
AWS_* as the original worker), else a directory on the volume. Same key layout either way:
voices/<name>.wav, voices/<name>.txt, transcripts/<sha256>.txt, output/<job>.wav,
timings/<job>.<fmt>."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Protocol

KEY = re.compile(r"^(voices|transcripts|output|timings)/[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
URL_EXPIRES = int(os.environ.get("PRESIGNED_URL_EXPIRES", "3600"))


def check_key(key: str) -> str:
    if not KEY.match(key) or ".." in key:
        raise ValueError(f"bad storage key {key!r}")
    return key


class Storage(Protocol):
    kind: str

    def put(self, key: str, data: bytes, content_type: str) -> None: ...
    def get(self, key: str) -> bytes | None: ...
    def list(self, prefix: str) -> list[str]: ...
    def url(self, key: str) -> str | None: ...


class VolumeStorage:
    kind = "volume"

    def __init__(self, base: Path) -> None:
        self.base = base

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self.base / check_key(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def get(self, key: str) -> bytes | None:
        try:
            return (self.base / check_key(key)).read_bytes()
        except FileNotFoundError:
            return None

    def list(self, prefix: str) -> list[str]:
        d = self.base / prefix.rstrip("/")
        try:
            return sorted(f"{prefix.rstrip('/')}/{p.name}" for p in d.iterdir() if not p.name.startswith("."))
        except FileNotFoundError:
            return []

    def url(self, key: str) -> str | None:
        return None


class S3Storage:
    kind = "s3"

    def __init__(self, bucket: str) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.client = boto3.client(
            "s3",
            endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None,
            region_name=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
            config=Config(signature_version="s3v4", retries={"max_attempts": 5, "mode": "standard"}),
        )

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.client.put_object(Bucket=self.bucket, Key=check_key(key), Body=data, ContentType=content_type)

    def get(self, key: str) -> bytes | None:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=check_key(key))
        except self.client.exceptions.NoSuchKey:
            return None
        data: bytes = obj["Body"].read()
        return data

    def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", [])]
        return sorted(keys)

    def url(self, key: str) -> str | None:
        """Presigned, time-limited GET: works for private buckets, unlike a public URL."""
        url: str = self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": check_key(key)}, ExpiresIn=URL_EXPIRES
        )
        return url


def from_environment() -> Storage:
    bucket = os.environ.get("S3_BUCKET")
    if bucket:
        return S3Storage(bucket)
    base = os.environ.get("WORKER_DATA_DIR")
    if not base:
        root = os.environ.get("VOLENV_ROOT")
        base = os.path.join(root, "worker-data") if root else "/tmp/f5-tts-worker"
    return VolumeStorage(Path(base))
