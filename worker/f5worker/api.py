"""The job API (RunPod `input`), validated strictly; every failure is
{"error": {"code", "message"}} and the worker keeps serving."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import time
import uuid
from typing import Any

from . import audio as audio_mod
from . import formats
from .storage import Storage

MAX_TEXT = int(os.environ.get("WORKER_MAX_TEXT", "2000"))
MAX_REF_TEXT = 1000
VOICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
ENDPOINTS = ("tts", "upload", "list_voices", "download")


class JobError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _num(inp: dict[str, Any], key: str, default: float, lo: float, hi: float, integer: bool = False) -> Any:
    value = inp.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise JobError("invalid_input", f"'{key}' must be a number, got {value!r}")
    if integer and int(value) != value:
        raise JobError("invalid_input", f"'{key}' must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise JobError("invalid_input", f"'{key}' must be between {lo:g} and {hi:g}, got {value!r}")
    return int(value) if integer else float(value)


class Worker:
    def __init__(self, storage: Storage, engine: Any = None, load_error: str | None = None) -> None:
        self.storage = storage
        self.engine = engine
        self.load_error = load_error

    # -------------------------------------------------------------- dispatch

    def handle(self, job: dict[str, Any]) -> dict[str, Any]:
        inp = job.get("input")
        job_id = str(job.get("id") or uuid.uuid4().hex)
        if not JOB_ID.match(job_id):
            job_id = hashlib.sha256(job_id.encode()).hexdigest()[:32]
        if not isinstance(inp, dict):
            return error("invalid_input", "the job has no 'input' object")
        endpoint = inp.get("endpoint", "tts")
        try:
            if endpoint not in ENDPOINTS:
                raise JobError("unknown_endpoint", f"'endpoint' must be one of {', '.join(ENDPOINTS)}")
            if endpoint == "tts":
                return self.tts(job_id, inp)
            if endpoint == "upload":
                return self.upload(inp)
            if endpoint == "list_voices":
                return self.list_voices()
            return self.download(inp)
        except JobError as exc:
            return error(exc.code, exc.message)
        except audio_mod.AudioError as exc:
            return error(exc.code, str(exc))
        except Exception as exc:  # a bug or a model failure must not kill the worker
            return error("internal_error", f"{type(exc).__name__}: {exc}")

    # -------------------------------------------------------------- endpoints

    def tts(self, job_id: str, inp: dict[str, Any]) -> dict[str, Any]:
        text = inp.get("text")
        if not isinstance(text, str) or not text.strip():
            raise JobError("invalid_input", "'text' is required (a non-empty string)")
        if len(text) > MAX_TEXT:
            raise JobError("text_too_long", f"'text' has {len(text)} characters; the limit is {MAX_TEXT}")
        speed = _num(inp, "speed", 1.0, 0.5, 2.0)
        nfe_step = _num(inp, "nfe_step", 32, 4, 64, integer=True)
        seed = inp.get("seed")
        if seed is None:
            seed = secrets.randbelow(2**31)
        seed = _num({"seed": seed}, "seed", 0, 0, 2**31 - 1, integer=True)
        want_timings = inp.get("return_word_timings", False)
        if not isinstance(want_timings, bool):
            raise JobError("invalid_input", "'return_word_timings' must be true or false")
        fmt = inp.get("timing_format", "srt")
        if fmt not in formats.FORMATS:
            raise JobError("invalid_format", f"'timing_format' must be one of {', '.join(formats.FORMATS)}")
        output = inp.get("output", "url" if self.storage.kind == "s3" else "base64")
        if output not in ("url", "base64"):
            raise JobError("invalid_input", "'output' must be 'url' or 'base64'")
        if output == "url" and self.storage.kind != "s3":
            raise JobError("no_object_storage", "output 'url' needs S3_BUCKET configured; use 'base64'")
        ref_text = inp.get("ref_text")
        if ref_text is not None and (not isinstance(ref_text, str) or len(ref_text) > MAX_REF_TEXT):
            raise JobError(
                "invalid_input", f"'ref_text' must be a string of at most {MAX_REF_TEXT} characters"
            )
        voice_ref = inp.get("local_voice", inp.get("voice_reference_url"))
        if not isinstance(voice_ref, str) or not voice_ref:
            raise JobError(
                "invalid_input", "'local_voice' (a stored voice name or an http(s) URL) is required"
            )
        engine = self._engine()
        ref_audio, stored_text = self._reference(voice_ref)
        ref_audio = audio_mod.clip_reference(ref_audio)
        ref_text = ref_text or stored_text or self._transcript(ref_audio)
        syn = engine.synthesize(
            ref_audio.samples,
            ref_audio.sample_rate,
            ref_text,
            text,
            speed=speed,
            nfe_step=nfe_step,
            seed=seed,
        )
        wav = audio_mod.encode_wav(syn.samples, syn.sample_rate)
        self.storage.put(f"output/{job_id}.wav", wav, "audio/wav")
        result: dict[str, Any] = {
            "job_id": job_id,
            "text": text,
            "seed": seed,
            "sample_rate": syn.sample_rate,
            "duration": round(len(syn.samples) / syn.sample_rate, 3),
            "load_seconds": round(float(getattr(engine, "load_seconds", 0.0)), 3),
            "inference_seconds": round(syn.seconds, 3),
        }
        if output == "url":
            result["audio_url"] = self.storage.url(f"output/{job_id}.wav")
        else:
            result["audio_base64"] = base64.b64encode(wav).decode()
        if want_timings:
            words, method = engine.align(syn.samples, syn.sample_rate, text)
            timings = [(w.word, w.start, w.end) for w in words]
            result["word_timings"] = [{"word": w, "start": s, "end": e} for w, s, e in timings]
            result["word_count"] = len(timings)
            result["timing_method"] = method
            files: dict[str, Any] = {}
            for f in formats.FORMATS:
                body = formats.render(f, timings).encode()
                self.storage.put(f"timings/{job_id}.{f}", body, formats.CONTENT_TYPES[f])
                if self.storage.kind == "s3":
                    files[f] = self.storage.url(f"timings/{job_id}.{f}")
            if files:
                result["timing_files"] = files
            else:
                result["timing_file"] = {"format": fmt, "content": formats.render(fmt, timings)}
        return result

    def upload(self, inp: dict[str, Any]) -> dict[str, Any]:
        name = inp.get("voice_name")
        if not isinstance(name, str) or not VOICE.match(name):
            raise JobError("invalid_input", "'voice_name' must be 1-64 letters, digits, '_' or '-'")
        if isinstance(inp.get("audio_base64"), str):
            try:
                data = base64.b64decode(inp["audio_base64"], validate=True)
            except ValueError:
                raise JobError("invalid_input", "'audio_base64' is not valid base64") from None
        elif isinstance(inp.get("audio_url"), str):
            data = audio_mod.fetch_url(inp["audio_url"])
        else:
            raise JobError("invalid_input", "give 'audio_base64' or 'audio_url'")
        decoded = audio_mod.decode(data)  # refuse non-audio before storing anything
        self.storage.put(
            f"voices/{name}.wav", audio_mod.encode_wav(decoded.samples, decoded.sample_rate), "audio/wav"
        )
        ref_text = inp.get("ref_text")
        if isinstance(ref_text, str) and ref_text.strip():
            self.storage.put(f"voices/{name}.txt", ref_text.strip().encode(), "text/plain")
        return {
            "voice_name": name,
            "duration": round(decoded.duration, 3),
            "sample_rate": decoded.sample_rate,
        }

    def list_voices(self) -> dict[str, Any]:
        names = sorted(
            {k.split("/", 1)[1].rsplit(".", 1)[0] for k in self.storage.list("voices/") if k.endswith(".wav")}
        )
        return {"voices": names, "count": len(names)}

    def download(self, inp: dict[str, Any]) -> dict[str, Any]:
        job_id = inp.get("job_id")
        if not isinstance(job_id, str) or not JOB_ID.match(job_id):
            raise JobError("invalid_input", "'job_id' is required")
        kind = inp.get("type", "audio")
        if kind == "audio":
            key = f"output/{job_id}.wav"
        elif kind == "timing":
            fmt = inp.get("format", "srt")
            if fmt not in formats.FORMATS:
                raise JobError("invalid_format", f"'format' must be one of {', '.join(formats.FORMATS)}")
            key = f"timings/{job_id}.{fmt}"
        else:
            raise JobError("invalid_input", "'type' must be 'audio' or 'timing'")
        data = self.storage.get(key)
        if data is None:
            raise JobError("not_found", f"no stored {kind} for job {job_id}")
        out: dict[str, Any] = {"job_id": job_id, "type": kind}
        if self.storage.kind == "s3":
            out["url"] = self.storage.url(key)
        elif kind == "audio":
            out["audio_base64"] = base64.b64encode(data).decode()
        else:
            out["content"] = data.decode()
        return out

    # -------------------------------------------------------------- helpers

    def _engine(self) -> Any:
        if self.engine is None:
            raise JobError("model_unavailable", f"the TTS model could not be loaded: {self.load_error}")
        return self.engine

    def _reference(self, ref: str) -> tuple[audio_mod.Audio, str | None]:
        if ref.startswith(("http://", "https://")):
            return audio_mod.decode(audio_mod.fetch_url(ref)), None
        if not VOICE.match(ref):
            raise JobError(
                "invalid_input", f"'local_voice' {ref!r} is neither a voice name nor an http(s) URL"
            )
        data = self.storage.get(f"voices/{ref}.wav")
        if data is None:
            raise JobError("unknown_voice", f"no stored voice named {ref!r} (see list_voices)")
        text = self.storage.get(f"voices/{ref}.txt")
        return audio_mod.decode(data), text.decode() if text else None

    def _transcript(self, ref: audio_mod.Audio) -> str:
        """Transcribe a reference once per content, cached in storage by its sha256."""
        digest = hashlib.sha256(ref.samples.tobytes() + str(ref.sample_rate).encode()).hexdigest()
        key = f"transcripts/{digest}.txt"
        cached = self.storage.get(key)
        if cached is not None:
            return cached.decode()
        t0 = time.perf_counter()
        text = self._engine().transcribe(ref.samples, ref.sample_rate)
        if not text:
            raise JobError(
                "transcription_failed", "the reference audio has no recognisable speech; pass ref_text"
            )
        self.storage.put(key, text.encode(), "text/plain")
        _ = time.perf_counter() - t0
        return text
