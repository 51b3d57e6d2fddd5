"""Word timings by CTC forced alignment of the *known* text against the generated audio.

No second transcription: the text is what we synthesised. The emissions come from a CTC
acoustic model (WhisperX's aligner when installed, else a wav2vec2 CTC model through
transformers); the alignment is a Viterbi pass over the CTC trellis (the algorithm of
torchaudio's forced_align, written out so it needs no compiled extension).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class WordTiming:
    word: str
    start: float
    end: float


def _normalise(word: str, vocab: dict[str, int], upper: bool) -> str:
    w = word.upper() if upper else word.lower()
    return "".join(c for c in w if c in vocab)


def ctc_viterbi(log_probs: np.ndarray, tokens: list[int], blank: int) -> list[tuple[int, int]]:
    """Best path of `tokens` through frame log-probabilities (T x V): for each token, the
    (first, last) frame it occupies."""
    t_len, n = log_probs.shape[0], len(tokens)
    if n == 0 or t_len == 0:
        return []
    neg = -1e30
    # states: blank, tok0, blank, tok1, ... blank  (2n + 1)
    states = [blank] * (2 * n + 1)
    for i, tok in enumerate(tokens):
        states[2 * i + 1] = tok
    s_len = len(states)
    score = np.full((t_len, s_len), neg, dtype=np.float64)
    back = np.zeros((t_len, s_len), dtype=np.int8)
    score[0, 0] = log_probs[0, states[0]]
    if s_len > 1:
        score[0, 1] = log_probs[0, states[1]]
    # a token state may be entered from two states back unless it repeats that token
    allowed = np.array([s % 2 == 1 and s >= 2 and states[s] != states[s - 2] for s in range(s_len)])
    for t in range(1, t_len):
        prev = score[t - 1]
        stay = prev
        step = np.concatenate(([neg], prev[:-1]))
        skip = np.concatenate(([neg, neg], prev[:-2]))
        skip = np.where(allowed, skip, neg)
        stacked = np.stack([stay, step, skip])
        best = stacked.argmax(axis=0)
        score[t] = stacked[best, np.arange(s_len)] + log_probs[t, states]
        back[t] = best
    s = s_len - 1 if s_len == 1 or score[-1, -1] >= score[-1, -2] else s_len - 2
    path = [0] * t_len
    for t in range(t_len - 1, -1, -1):
        path[t] = s
        s -= int(back[t, s])
    spans: list[list[int]] = [[-1, -1] for _ in range(n)]
    for t, st in enumerate(path):
        if st % 2 == 1:
            k = st // 2
            if spans[k][0] < 0:
                spans[k][0] = t
            spans[k][1] = t
    # a token the path never visited (too few frames) borrows its neighbour's frame
    last = 0
    for sp in spans:
        if sp[0] < 0:
            sp[0] = sp[1] = last
        last = sp[1]
    return [(a, b) for a, b in spans]


class CtcAligner:
    """A wav2vec2-style CTC model from a directory (transformers), loaded once."""

    sample_rate = 16000

    def __init__(self, model_dir: str, device: str = "cpu") -> None:
        import torch
        from transformers import AutoModelForCTC, AutoTokenizer

        self.torch = torch
        self.device = device
        self.model = AutoModelForCTC.from_pretrained(model_dir, local_files_only=True).to(device).eval()
        tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.vocab: dict[str, int] = dict(tok.get_vocab())
        self.blank = int(tok.pad_token_id if tok.pad_token_id is not None else 0)
        self.sep = self.vocab.get("|")
        self.upper = any(k.isupper() for k in self.vocab if len(k) == 1)

    def align(self, samples: np.ndarray, sample_rate: int, text: str) -> list[WordTiming]:
        torch = self.torch
        wave = _resample(samples, sample_rate, self.sample_rate)
        with torch.inference_mode():
            logits = self.model(torch.from_numpy(wave).unsqueeze(0).to(self.device)).logits[0]
            log_probs = torch.log_softmax(logits.float(), dim=-1).cpu().numpy()
        words = [w for w in re.split(r"\s+", text.strip()) if w]
        tokens: list[int] = []
        owners: list[int] = []
        for wi, w in enumerate(words):
            norm = _normalise(w, self.vocab, self.upper)
            for c in norm:
                tokens.append(self.vocab[c])
                owners.append(wi)
        spans = ctc_viterbi(log_probs, tokens, self.blank)
        seconds_per_frame = (len(wave) / self.sample_rate) / max(1, log_probs.shape[0])
        out: list[WordTiming] = []
        cursor = 0.0
        for wi, w in enumerate(words):
            frames = [spans[k] for k, o in enumerate(owners) if o == wi]
            if frames:
                start = frames[0][0] * seconds_per_frame
                end = (frames[-1][1] + 1) * seconds_per_frame
            else:  # a word with no alignable characters (digits, symbols): zero-length at the cursor
                start = end = cursor
            cursor = end
            out.append(WordTiming(w, round(start, 3), round(max(end, start), 3)))
        return out


class WhisperXAligner:
    """WhisperX's alignment model, fed the known text as one segment (no transcription)."""

    def __init__(self, language: str = "en", device: str = "cpu", model_dir: str | None = None) -> None:
        import whisperx

        self.whisperx = whisperx
        self.device = device
        self.model, self.meta = whisperx.load_align_model(
            language_code=language, device=device, model_dir=model_dir
        )

    def align(self, samples: np.ndarray, sample_rate: int, text: str) -> list[WordTiming]:
        wave = _resample(samples, sample_rate, 16000)
        segments = [{"text": text, "start": 0.0, "end": len(wave) / 16000}]
        result: Any = self.whisperx.align(segments, self.model, self.meta, wave, self.device)
        out = []
        for w in result.get("word_segments", []):
            if "start" in w and "end" in w:
                out.append(WordTiming(w["word"], round(float(w["start"]), 3), round(float(w["end"]), 3)))
        return out


def _resample(samples: np.ndarray, sr: int, target: int) -> np.ndarray:
    if sr == target:
        return samples.astype(np.float32)
    n = round(len(samples) * target / sr)
    x_old = np.linspace(0.0, 1.0, num=len(samples), endpoint=False)
    x_new = np.linspace(0.0, 1.0, num=n, endpoint=False)
    return np.interp(x_new, x_old, samples).astype(np.float32)
