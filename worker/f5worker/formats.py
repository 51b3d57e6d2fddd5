"""Word-timing writers: plain functions from [(word, start, end)] to text."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence

Timing = tuple[str, float, float]
FORMATS = ("srt", "vtt", "csv", "json", "ass")
CONTENT_TYPES = {
    "srt": "application/x-subrip",
    "vtt": "text/vtt",
    "csv": "text/csv",
    "json": "application/json",
    "ass": "text/x-ssa",
}


def _clock(seconds: float, sep: str, frac_digits: int = 3) -> str:
    """HH:MM:SS<sep>mmm, rounding once on the total so 59.9995 rolls over to the next minute."""
    scale = 10**frac_digits
    total = round(max(0.0, seconds) * scale)
    whole, frac = divmod(total, scale)
    h, rem = divmod(whole, 3600)
    m, s = divmod(rem, 60)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{frac:0{frac_digits}d}"


def to_srt(timings: Sequence[Timing]) -> str:
    blocks = []
    for i, (word, start, end) in enumerate(timings, start=1):
        text = word.replace("\r", " ").replace("\n", " ")
        blocks.append(f"{i}\n{_clock(start, ',')} --> {_clock(end, ',')}\n{text}\n")
    return "\n".join(blocks)


def to_vtt(timings: Sequence[Timing]) -> str:
    out = ["WEBVTT", ""]
    for word, start, end in timings:
        # '-->' would end the cue timing line; <, & are markup in cue text
        text = word.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")
        out += [f"{_clock(start, '.')} --> {_clock(end, '.')}", text, ""]
    return "\n".join(out)


def to_csv(timings: Sequence[Timing]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["word", "start", "end"])
    for word, start, end in timings:
        w.writerow([word, f"{start:.3f}", f"{end:.3f}"])
    return buf.getvalue()


def to_json(timings: Sequence[Timing]) -> str:
    return json.dumps(
        [{"word": w, "start": round(s, 3), "end": round(e, 3)} for w, s, e in timings], ensure_ascii=False
    )


ASS_HEADER = """[Script Info]
ScriptType: v4.00+
PlayResX: 1920
PlayResY: 1080
WrapStyle: 0
ScaledBorderAndShadow: yes

[V4+ Styles]
Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, Bold, Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, Shadow, Alignment, MarginL, MarginR, MarginV, Encoding
Style: Default,Arial,64,&H00FFFFFF,&H0000FFFF,&H00000000,&H80000000,0,0,0,0,100,100,0,0,1,3,1,2,40,40,60,1

[Events]
Format: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text
"""


def _ass_clock(seconds: float) -> str:
    """H:MM:SS.cc (centiseconds), as ASS wants."""
    total = round(max(0.0, seconds) * 100)
    whole, cs = divmod(total, 100)
    h, rem = divmod(whole, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}.{cs:02d}"


def to_ass(timings: Sequence[Timing]) -> str:
    lines = [ASS_HEADER.rstrip("\n")]
    for word, start, end in timings:
        # braces start override blocks and backslashes escapes in ASS text
        text = word.replace("\\", "\\\\").replace("{", "(").replace("}", ")").replace("\n", "\\N")
        lines.append(f"Dialogue: 0,{_ass_clock(start)},{_ass_clock(end)},Default,,0,0,0,,{text}")
    return "\n".join(lines) + "\n"


WRITERS = {"srt": to_srt, "vtt": to_vtt, "csv": to_csv, "json": to_json, "ass": to_ass}


def render(fmt: str, timings: Sequence[Timing]) -> str:
    return WRITERS[fmt](timings)
