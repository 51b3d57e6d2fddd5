"""Issue 8 (the parts that need no torch): timing writers, the job API and its errors with a
stand-in engine, forced alignment on synthetic emissions, and S3 through moto's real server."""

from __future__ import annotations

import base64
import io
import json
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO, moto_s3

sys.path.insert(0, str(REPO / "worker"))

from f5worker import formats
from f5worker.align import WordTiming, ctc_viterbi
from f5worker.api import Worker
from f5worker.storage import S3Storage, VolumeStorage

TIMINGS = [
    ("Hello,", 0.0, 0.42),
    ("<world>", 0.5, 1.0006),
    ("{big}", 3599.9996, 3600.5),
    ('say "hi"', 3723.25, 3724.0),
]


def test_srt_rollover_and_numbering() -> None:
    srt = formats.to_srt(TIMINGS)
    blocks = srt.strip().split("\n\n")
    assert blocks[0] == "1\n00:00:00,000 --> 00:00:00,420\nHello,"
    assert blocks[1].splitlines()[1] == "00:00:00,500 --> 00:00:01,001"
    assert blocks[2].splitlines()[1] == "01:00:00,000 --> 01:00:00,500"  # 3599.9996 rounds into the next hour
    assert blocks[3].splitlines()[1] == "01:02:03,250 --> 01:02:04,000"


def test_vtt_escapes_markup() -> None:
    vtt = formats.to_vtt(TIMINGS)
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:00.420\nHello,")
    assert "&lt;world&gt;" in vtt and "<world>" not in vtt
    assert "01:00:00.000 --> 01:00:00.500" in vtt


def test_csv_and_json_quote_properly() -> None:
    rows = list(__import__("csv").reader(io.StringIO(formats.to_csv(TIMINGS))))
    assert rows[0] == ["word", "start", "end"] and rows[4] == ['say "hi"', "3723.250", "3724.000"]
    data = json.loads(formats.to_json(TIMINGS))
    assert data[3] == {"word": 'say "hi"', "start": 3723.25, "end": 3724.0}


def test_ass_styles_and_escapes() -> None:
    ass = formats.to_ass(TIMINGS)
    assert "[V4+ Styles]" in ass and "Style: Default,Arial,64" in ass and "[Events]" in ass
    lines = [ln for ln in ass.splitlines() if ln.startswith("Dialogue:")]
    assert lines[0] == "Dialogue: 0,0:00:00.00,0:00:00.42,Default,,0,0,0,,Hello,"
    assert lines[2] == "Dialogue: 0,1:00:00.00,1:00:00.50,Default,,0,0,0,,(big)"  # braces would be overrides


def test_ctc_viterbi_on_synthetic_emissions() -> None:
    # vocab: 0 blank, 1 'A', 2 'B'; frames: blank, A, A, blank, B, B, blank
    seq = [0, 1, 1, 0, 2, 2, 0]
    lp = np.full((len(seq), 3), np.log(0.01))
    for t, v in enumerate(seq):
        lp[t, v] = np.log(0.98)
    assert ctc_viterbi(lp, [1, 2], 0) == [(1, 2), (4, 5)]
    # a repeated token needs a blank between its two occurrences
    seq2 = [1, 0, 1]
    lp2 = np.full((3, 3), np.log(0.01))
    for t, v in enumerate(seq2):
        lp2[t, v] = np.log(0.98)
    assert ctc_viterbi(lp2, [1, 1], 0) == [(0, 0), (2, 2)]


class FakeEngine:
    """Stands in for F5-TTS: deterministic noise from the seed, one word per 0.3 s."""

    load_seconds = 0.01

    def synthesize(
        self,
        ref: np.ndarray,
        ref_sr: int,
        ref_text: str,
        text: str,
        *,
        speed: float,
        nfe_step: int,
        seed: int,
    ) -> Any:
        from f5worker.engine import Synthesis

        n = int(24000 * 0.3 * len(text.split()) / speed)
        rng = np.random.default_rng(seed)
        return Synthesis((rng.standard_normal(n) * 0.1).astype(np.float32), 24000, seed, 0.001)

    def align(self, samples: np.ndarray, sr: int, text: str) -> tuple[list[WordTiming], str]:
        words = text.split()
        step = len(samples) / sr / len(words)
        return [
            WordTiming(w, round(i * step, 3), round((i + 1) * step, 3)) for i, w in enumerate(words)
        ], "fake"

    def transcribe(self, samples: np.ndarray, sr: int) -> str:
        self.transcribed = getattr(self, "transcribed", 0) + 1
        return "transcribed reference words"


def _wav(seconds: float = 1.0, sr: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, (np.sin(np.arange(int(sr * seconds)) / 10) * 0.2).astype(np.float32), sr, format="WAV")
    return buf.getvalue()


def test_job_api_errors_and_recovery(tmp_path: Path) -> None:
    engine = FakeEngine()
    w = Worker(VolumeStorage(tmp_path), engine)
    up = w.handle(
        {
            "id": "u1",
            "input": {
                "endpoint": "upload",
                "voice_name": "narrator",
                "audio_base64": base64.b64encode(_wav()).decode(),
            },
        }
    )
    assert up == {"voice_name": "narrator", "duration": 1.0, "sample_rate": 16000}
    bad_cases = {
        "missing text": ({"local_voice": "narrator"}, "invalid_input"),
        "long text": ({"text": "x" * 5000, "local_voice": "narrator"}, "text_too_long"),
        "bad format": (
            {"text": "hi", "local_voice": "narrator", "return_word_timings": True, "timing_format": "doc"},
            "invalid_format",
        ),
        "unknown voice": ({"text": "hi", "local_voice": "ghost"}, "unknown_voice"),
        "unreachable url": ({"text": "hi", "local_voice": "http://127.0.0.1:9/voice.wav"}, "fetch_failed"),
        "speed": ({"text": "hi", "local_voice": "narrator", "speed": 9}, "invalid_input"),
        "endpoint": ({"endpoint": "shout"}, "unknown_endpoint"),
        "url without s3": ({"text": "hi", "local_voice": "narrator", "output": "url"}, "no_object_storage"),
    }
    for name, (inp, code) in bad_cases.items():
        out = w.handle({"id": "j", "input": inp})
        assert out.get("error", {}).get("code") == code, (name, out)
        assert out["error"]["message"]
    non_audio = w.handle(
        {
            "input": {
                "endpoint": "upload",
                "voice_name": "junk",
                "audio_base64": base64.b64encode(b"not audio at all").decode(),
            }
        }
    )
    assert non_audio["error"]["code"] == "invalid_audio"
    assert w.handle({"input": {"endpoint": "list_voices"}}) == {"voices": ["narrator"], "count": 1}
    # the next valid job still works; same seed, same audio; no ref_text -> transcribed once per voice
    a = w.handle(
        {
            "id": "job-a",
            "input": {
                "text": "one two three",
                "local_voice": "narrator",
                "seed": 7,
                "return_word_timings": True,
                "timing_format": "vtt",
            },
        }
    )
    b = w.handle({"id": "job-b", "input": {"text": "one two three", "local_voice": "narrator", "seed": 7}})
    assert "error" not in a, a
    assert a["seed"] == 7 and a["audio_base64"] == b["audio_base64"] and a["job_id"] == "job-a"
    assert engine.transcribed == 1
    audio, sr = sf.read(io.BytesIO(base64.b64decode(a["audio_base64"])))
    assert sr == 24000 and abs(len(audio) / sr - 0.9) < 0.01 and a["duration"] == 0.9
    assert a["word_count"] == 3 and a["timing_file"]["content"].startswith("WEBVTT")
    c = w.handle({"id": "job-c", "input": {"text": "one", "local_voice": "narrator"}})
    assert isinstance(c["seed"], int)  # random when absent, always echoed
    d = w.handle({"input": {"endpoint": "download", "job_id": "job-a", "type": "timing", "format": "srt"}})
    assert d["content"].startswith("1\n00:00:00,000")
    # a worker whose model failed to load answers with the reason
    broken = Worker(VolumeStorage(tmp_path), None, "FileNotFoundError: no checkpoint")
    out = broken.handle({"input": {"text": "hi", "local_voice": "narrator"}})
    assert out["error"]["code"] == "model_unavailable" and "no checkpoint" in out["error"]["message"]
    assert broken.handle({"input": {"endpoint": "list_voices"}})["count"] == 1


@pytest.fixture
def moto_server() -> Iterator[str]:
    with moto_s3() as url:
        yield url


def test_s3_upload_list_tts_presigned_download(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    import boto3

    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").create_bucket(Bucket="tts")
    w = Worker(S3Storage("tts"), FakeEngine())
    up = w.handle(
        {
            "input": {
                "endpoint": "upload",
                "voice_name": "alice",
                "audio_base64": base64.b64encode(_wav(2.0)).decode(),
                "ref_text": "hello there",
            }
        }
    )
    assert up["voice_name"] == "alice", up
    assert w.handle({"input": {"endpoint": "list_voices"}})["voices"] == ["alice"]
    out = w.handle(
        {
            "id": "job-42",
            "input": {"text": "four words right here", "local_voice": "alice", "return_word_timings": True},
        }
    )
    assert "error" not in out, out
    url = out["audio_url"]
    assert "X-Amz-Signature" in url and "output/job-42.wav" in url
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.headers["Content-Type"] == "audio/wav"
        data, sr = sf.read(io.BytesIO(resp.read()))
    assert sr == 24000 and len(data) > 0
    assert set(out["timing_files"]) == set(formats.FORMATS)
    with urllib.request.urlopen(out["timing_files"]["ass"], timeout=10) as resp:
        assert b"Dialogue: 0," in resp.read()
    dl = w.handle({"input": {"endpoint": "download", "job_id": "job-42", "type": "audio"}})
    with urllib.request.urlopen(dl["url"], timeout=10) as resp:
        assert sf.read(io.BytesIO(resp.read()))[1] == 24000
    missing = w.handle({"input": {"endpoint": "download", "job_id": "nope"}})
    assert missing["error"]["code"] == "not_found"
