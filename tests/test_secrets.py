"""Issue 14: secrets never stored or printed. Distinctive secrets are planted in a presigned
model URL, an index URL's userinfo, the RunPod key and AWS keys; every command's output, every
byte on the volume, in a pushed bucket and in the error logs is then searched: zero hits."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Index, Result, serve_bytes, volenv, write_manifest

MODEL = os.urandom(4096)
SHA = hashlib.sha256(MODEL).hexdigest()
SECRETS = {
    "index password": "IDXSECRETpw7f3a9c",
    "model credential": "AKIAMODELCRED123",
    "model signature": "SIGSECRET9d8e7f0011",
    "model session token": "STSSECRET4c5b6a77",
    "model plain token": "TOKSECRET31337abc",
    "runpod key": "RPKSECRET5e6f7a8b",
    "aws key id": "AKIASECRETACCESS99",
    "aws secret": "AWSSECRET0a1b2c3d4e",
}
ENV = {
    "RUNPOD_API_KEY": SECRETS["runpod key"],
    "AWS_ACCESS_KEY_ID": SECRETS["aws key id"],
    "AWS_SECRET_ACCESS_KEY": SECRETS["aws secret"],
}


@pytest.fixture
def model_server() -> Iterator[str]:
    """Serves MODEL at /w.bin whatever the query string (a presigned URL's server)."""

    with serve_bytes(MODEL) as base:
        yield f"{base}"


def _presigned(base: str) -> str:
    return (
        f"{base}/w.bin?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        f"&X-Amz-Credential={SECRETS['model credential']}%2F20260101%2Fus-east-1%2Fs3%2Faws4_request"
        f"&X-Amz-Date=20260101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
        f"&X-Amz-Security-Token={SECRETS['model session token']}"
        f"&token={SECRETS['model plain token']}"
        f"&X-Amz-Signature={SECRETS['model signature']}"
    )


def _with_userinfo(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://volenvuser:{SECRETS['index password']}@{rest}"


def _hits(data: bytes) -> list[str]:
    return [name for name, s in SECRETS.items() if s.encode() in data]


def _scan_tree(top: Path) -> dict[str, list[str]]:
    found = {}
    for dirpath, _dirs, files in os.walk(top):
        for name in files:
            p = Path(dirpath) / name
            if p.is_symlink():
                continue
            hits = _hits(p.read_bytes()) + _hits(str(p).encode())
            if hits:
                found[str(p.relative_to(top))] = hits
    return found


def test_no_secret_anywhere(
    tmp_path: Path, root: Path, package_index: Index, model_server: str, wheelhouse: Path
) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {**ENV, "TMPDIR": str(tmpdir), "HOME": str(tmp_path / "home")}
    url = _presigned(model_server)
    index = _with_userinfo(package_index.url)
    model = f'[[models]]\nname = "weights"\nurl = "{url}"\nsha256 = "{SHA}"\nsize = {len(MODEL)}\n'
    m = write_manifest(tmp_path / "m", "app", ["alpha==1.0"], index_url=index, extra=model)
    outputs: list[Result] = []

    def run(*args: str | Path, ok: tuple[int, ...] = (0,)) -> Result:
        r = volenv("--root", root, *args, env=env)
        outputs.append(r)
        assert r.returncode in ok, (args, r.returncode, r.stderr)
        return r

    run("sync", m)
    run("--json", "sync", m)
    assert package_index.wheel_downloads(), "the credentialed index was really used"
    weights = list((root / "models" / "files" / "weights").rglob("w.bin"))
    assert weights and weights[0].read_bytes() == MODEL
    run("models", "list")
    run("--json", "models", "list")
    run("models", "list", "--manifest", m)
    run("list")
    run("--json", "list")
    run("status")
    run("--json", "status")
    run("history", "app")
    run("verify", "app", "--level", "full")
    run("doctor", ok=(0, 4))
    run("--json", "doctor", ok=(0, 4))
    run("--json", "gc", "--dry-run")
    bucket = tmp_path / "bucket"
    run("--json", "push", "app", "--to", f"file://{bucket}")
    # a failing download names its URL in errors and warnings
    bad = write_manifest(
        tmp_path / "bad",
        "bad",
        ["alpha==1.0"],
        index_url=index,
        extra=model.replace("w.bin", "missing.bin").replace('"weights"', '"gone"'),
    )
    run("sync", bad, ok=(9,))
    run("--json", "sync", bad, ok=(9,))
    # the diagnosis every RunPod job would get: a failed build against the credentialed index
    boom = write_manifest(
        tmp_path / "boom",
        "app",
        ["explodes==1.0"],
        index_url=index,
        extra='[activate]\nsmoke-imports = ["explodes"]\n' + model,
    )
    r = run("run", "--diagnose", "--manifest", boom, "--", "true", ok=(7,))
    assert "volenv-diagnosis " in r.stderr
    assert '"build_log_tail"' in r.stderr and "/simple" in r.stderr  # the index URL is there, clean
    run("--json", "models", "list")

    leaks = {}
    for i, out in enumerate(outputs):
        for stream in ("stdout", "stderr"):
            hits = _hits(getattr(out, stream).encode())
            if hits:
                leaks[f"output {i} {stream}"] = hits
    for where in (root, bucket, tmpdir):
        leaks.update({f"{where.name}/{k}": v for k, v in _scan_tree(where).items()})
    assert not leaks, leaks
    # the record keeps the model's identity: its sha256 and the URL without credentials
    rec = json.loads(next((root / "models" / "records").glob("weights.*.json")).read_text())
    assert rec["spec"]["sha256"] == SHA and "X-Amz-Signature=REDACTED" in rec["spec"]["url"]
    assert rec["spec"]["url"].startswith(f"{model_server}/w.bin?")


def test_redaction_function() -> None:
    from volenv.base.redact import redact_text, redact_url

    plain = "https://files.example.com/a/b.bin?version=3&download=1"
    assert redact_url(plain) == plain  # nothing secret: unchanged, byte for byte (an identity)
    assert redact_url("https://u:p@h.example/simple") == "https://h.example/simple"
    assert (
        redact_url("https://tok@h/x?sig=abc&se=2026&sp=r")
        == "https://h/x?sig=REDACTED&se=REDACTED&sp=REDACTED"
    )
    gcs = "https://storage.googleapis.com/b/o?GoogleAccessId=svc&Expires=1&Signature=xyz%3D"
    assert redact_url(gcs) == (
        "https://storage.googleapis.com/b/o?GoogleAccessId=REDACTED&Expires=REDACTED&Signature=REDACTED"
    )
    line = "error: Failed to fetch `https://user:pw123@host/simple/alpha/` (see 'https://x/y?X-Amz-Signature=s1')"
    out = redact_text(line)
    assert "pw123" not in out and "s1'" not in out and "https://host/simple/alpha/" in out


# 30 settings ML workers really set: none is a secret, none may be warned about (issue 29)
ML_SETTINGS = {
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_ENABLE_HF_TRANSFER": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HOME": "/runpod-volume/hf",
    "CUDA_VISIBLE_DEVICES": "0",
    "CUDA_LAUNCH_BLOCKING": "1",
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
    "OMP_NUM_THREADS": "4",
    "MKL_NUM_THREADS": "4",
    "NCCL_DEBUG": "INFO",
    "TORCH_CUDNN_V8_API_ENABLED": "1",
    "MAX_TOKENS": "4096",
    "MAX_NEW_TOKENS": "512",
    "TOKENIZER_NAME": "openai/whisper-large-v3",
    "KEY_FRAMES_DIR": "/data/keyframes",
    "API_KEY_FILE": "/run/secrets/api_key",
    "PASSWORD_MIN_LENGTH": "12",
    "AUTH_ENABLED": "false",
    "TOKEN_CACHE_DIR": "./cache/tokens",
    "WANDB_MODE": "offline",
    "WANDB_PROJECT": "f5-tts-finetune",
    "MODEL_ID": "SWivid/F5-TTS",
    "VOCODER_NAME": "vocos",
    "SAMPLE_RATE": "24000",
    "LOG_LEVEL": "DEBUG",
    "PYTHONUNBUFFERED": "1",
    "GRADIO_SERVER_NAME": "0.0.0.0",
    "RUNPOD_DEBUG_LEVEL": "INFO",
    "HF_TOKEN": "${HF_TOKEN}",  # a reference: the value comes from the container
}
# 10 real secret shapes: each must be warned about
SECRET_SHAPES = {
    "HF_TOKEN": "hf_aBcDeFgHiJkLmNoPqRsTuVwXyZ012345",
    "WANDB_API_KEY": "0123456789abcdef0123456789abcdef01234567",
    "OPENAI_API_KEY": "sk-proj-aBcDeFgHiJkLmNoPqRsT",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
    "GITHUB_TOKEN": "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
    "DB_PASSWORD": "correct-horse-battery",
    "RUNPOD_APIKEY": "rpa_ABCDEFGHIJKLMNOPQRSTUVWX",
    "DATABASE_URL": "postgres://app:s3cr3t@db.internal:5432/app",
    "WEIGHTS_URL": "https://bucket.s3.amazonaws.com/w.bin?X-Amz-Signature=abcdef0123456789&X-Amz-Expires=60",
}


def test_the_secret_heuristic_judges_names_and_values_together() -> None:
    from volenv.base.redact import secret_like_env

    assert secret_like_env(ML_SETTINGS) == []
    assert sorted(secret_like_env(SECRET_SHAPES)) == sorted(SECRET_SHAPES)
