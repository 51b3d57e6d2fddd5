"""Audio in and out with soundfile (no ffmpeg); URL fetches with timeouts and size limits."""

from __future__ import annotations

import io
import ipaddress
import os
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlparse

import numpy as np

MAX_REFERENCE_BYTES = int(os.environ.get("WORKER_MAX_REFERENCE_BYTES", str(20 * 1024 * 1024)))
MAX_REFERENCE_SECONDS = float(os.environ.get("WORKER_MAX_REFERENCE_SECONDS", "60"))
F5_REFERENCE_LIMIT = 12.0  # F5-TTS conditions on at most ~12 s of reference audio
FETCH_TIMEOUT = float(os.environ.get("WORKER_FETCH_TIMEOUT", "20"))


class AudioError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Audio:
    samples: np.ndarray  # float32 mono
    sample_rate: int

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate if self.sample_rate else 0.0


def decode(data: bytes) -> Audio:
    import soundfile as sf

    if len(data) > MAX_REFERENCE_BYTES:
        raise AudioError("audio_too_large", f"audio is {len(data)} bytes; the limit is {MAX_REFERENCE_BYTES}")
    try:
        samples, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises its own LibsndfileError / RuntimeError
        raise AudioError("invalid_audio", f"not decodable audio (wav, flac, ogg): {exc}") from None
    if samples.size == 0 or sr <= 0:
        raise AudioError("invalid_audio", "the audio is empty")
    mono = samples.mean(axis=1).astype(np.float32)
    audio = Audio(mono, int(sr))
    if audio.duration > MAX_REFERENCE_SECONDS:
        raise AudioError(
            "audio_too_long", f"audio is {audio.duration:.1f} s; the limit is {MAX_REFERENCE_SECONDS:.0f} s"
        )
    return audio


def clip_reference(audio: Audio, limit: float = F5_REFERENCE_LIMIT) -> Audio:
    n = int(limit * audio.sample_rate)
    return audio if len(audio.samples) <= n else Audio(audio.samples[:n], audio.sample_rate)


def encode_wav(samples: np.ndarray, sample_rate: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, samples, sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def fetch_url(url: str, limit: int = MAX_REFERENCE_BYTES, timeout: float = FETCH_TIMEOUT) -> bytes:
    """http(s) only, bounded in time and size."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise AudioError("invalid_url", f"only http(s) URLs are accepted, got {url!r}")
    if os.environ.get("WORKER_BLOCK_PRIVATE_URLS") == "1":
        try:
            if ipaddress.ip_address(parsed.hostname).is_private:
                raise AudioError("invalid_url", "private addresses are not fetched")
        except ValueError:
            pass
    req = urllib.request.Request(url, headers={"User-Agent": "f5-tts-worker"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            if length is not None and int(length) > limit:
                raise AudioError("audio_too_large", f"{url} is {length} bytes; the limit is {limit}")
            data = resp.read(limit + 1)
    except AudioError:
        raise
    except Exception as exc:
        raise AudioError("fetch_failed", f"could not fetch {url}: {exc}") from None
    if len(data) > limit:
        raise AudioError("audio_too_large", f"{url} is larger than {limit} bytes")
    return data
