"""The models, loaded once at worker start from the volume (VOLENV_MODEL_*, HF_HUB_OFFLINE):
F5-TTS (through f5_tts's own load_model / load_vocoder / infer_batch_process), the word
aligner, and — only when a request has no reference text — a Whisper transcriber."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .align import CtcAligner, WhisperXAligner, WordTiming


class ModelUnavailable(RuntimeError):
    pass


def _model_path(name: str) -> Path:
    var = "VOLENV_MODEL_" + "".join(c.upper() if c.isalnum() else "_" for c in name)
    value = os.environ.get(var)
    if not value:
        raise ModelUnavailable(
            f"{var} is not set: model '{name}' is not on the volume"
            " (run `volenv models fetch` for the manifest)"
        )
    return Path(value)


@dataclass(frozen=True)
class Synthesis:
    samples: np.ndarray
    sample_rate: int
    seed: int
    seconds: float


class Engine:
    """F5-TTS + vocoder (+ aligner); thread-safe by a lock around inference."""

    def __init__(self) -> None:
        t0 = time.perf_counter()
        import torch
        from f5_tts.infer.utils_infer import load_model, load_vocoder
        from f5_tts.model import DiT

        self.torch = torch
        self.device = os.environ.get("WORKER_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
        ckpt_dir = _model_path(os.environ.get("F5_MODEL_NAME", "f5tts-v1-base"))
        ckpt, vocab, arch = _checkpoint_files(ckpt_dir)
        vocoder_dir = _model_path(os.environ.get("F5_VOCODER_NAME", "vocos-mel-24khz"))
        self.model = load_model(
            DiT, arch, str(ckpt), mel_spec_type="vocos", vocab_file=str(vocab), device=self.device
        )
        self.vocoder = load_vocoder("vocos", is_local=True, local_path=str(vocoder_dir), device=self.device)
        self.lock = threading.Lock()
        self.aligner = _load_aligner(self.device)
        self.transcriber: Any = None
        self.load_seconds = time.perf_counter() - t0

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
    ) -> Synthesis:
        from f5_tts.infer.utils_infer import chunk_text, infer_batch_process

        torch = self.torch
        t0 = time.perf_counter()
        audio = torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float32)).unsqueeze(0)
        # chunk size from the reference's speaking rate, as f5_tts's own infer_process does
        max_chars = int(len(ref_text.encode("utf-8")) / (len(ref) / ref_sr) * (22 - len(ref) / ref_sr))
        chunks = chunk_text(text, max_chars=max(max_chars, 50))
        waves: list[np.ndarray] = []
        sr = 24000
        with self.lock:
            for i, chunk in enumerate(chunks):
                # one call per chunk, each seeded: f5_tts runs several chunks in threads
                _seed_everything(seed + i)
                gen = infer_batch_process(
                    (audio, ref_sr),
                    ref_text,
                    [chunk],
                    self.model,
                    self.vocoder,
                    nfe_step=nfe_step,
                    speed=speed,
                    device=self.device,
                    progress=None,
                )
                wave, sr, _spec = next(iter(gen))
                if wave is None:
                    raise RuntimeError(f"F5-TTS produced no audio for chunk {i}")
                waves.append(np.asarray(wave, dtype=np.float32))
        return Synthesis(_crossfade(waves, sr), sr, seed, time.perf_counter() - t0)

    def align(self, samples: np.ndarray, sr: int, text: str) -> tuple[list[WordTiming], str]:
        if self.aligner is None:
            raise ModelUnavailable(
                "no alignment model on the volume (VOLENV_MODEL_CTC_ALIGNER) and no whisperx"
            )
        with self.lock:
            return self.aligner.align(samples, sr, text), type(self.aligner).__name__

    def transcribe(self, samples: np.ndarray, sr: int) -> str:
        with self.lock:
            if self.transcriber is None:
                from transformers import pipeline

                path = _model_path(os.environ.get("WHISPER_MODEL_NAME", "whisper-large-v3-turbo"))
                self.transcriber = pipeline(
                    "automatic-speech-recognition", model=str(path), device=self.device
                )
            out = self.transcriber({"raw": samples, "sampling_rate": sr})
        return str(out["text"]).strip()


def _checkpoint_files(ckpt_dir: Path) -> tuple[Path, Path, dict[str, Any]]:
    """The checkpoint, its vocab, and the DiT architecture: arch.json next to it when present
    (small test models), else f5_tts's packaged F5TTS_v1_Base config."""
    cands = sorted(ckpt_dir.rglob("*.safetensors")) + sorted(ckpt_dir.rglob("*.pt"))
    if not cands:
        raise ModelUnavailable(f"no checkpoint (*.safetensors, *.pt) under {ckpt_dir}")
    ckpt = cands[0]
    vocab = next(iter(sorted(ckpt.parent.glob("vocab.txt")) or sorted(ckpt_dir.rglob("vocab.txt"))), None)
    if vocab is None:
        raise ModelUnavailable(f"no vocab.txt next to {ckpt}")
    arch_file = ckpt.parent / "arch.json"
    if arch_file.exists():
        arch = json.loads(arch_file.read_text())
    else:
        from importlib.resources import files

        import yaml

        cfg = yaml.safe_load(files("f5_tts").joinpath("configs/F5TTS_v1_Base.yaml").read_text())
        arch = dict(cfg["model"]["arch"])
    return ckpt, vocab, arch


def _load_aligner(device: str) -> Any:
    """ALIGNER=whisperx|ctc|auto (default auto: WhisperX where installed, else the CTC model on
    the volume). `ctc` keeps word timings on the pinned volume model even where the whisperx
    group is installed (WhisperX downloads its align model from the Hub at first use)."""
    choice = os.environ.get("ALIGNER", "auto").strip().lower() or "auto"
    if choice not in ("auto", "whisperx", "ctc"):
        raise ModelUnavailable(f"ALIGNER={choice!r}: expected auto, whisperx or ctc")
    if choice != "ctc":
        try:
            import whisperx  # noqa: F401
        except ImportError:
            if choice == "whisperx":
                raise ModelUnavailable("ALIGNER=whisperx but whisperx is not installed") from None
        else:
            return WhisperXAligner(os.environ.get("ALIGN_LANGUAGE", "en"), device)
    try:
        path = _model_path(os.environ.get("ALIGNER_MODEL_NAME", "ctc-aligner"))
    except ModelUnavailable:
        return None
    return CtcAligner(str(path), device)


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _crossfade(waves: list[np.ndarray], sr: int, seconds: float = 0.15) -> np.ndarray:
    out = waves[0]
    for nxt in waves[1:]:
        n = min(int(seconds * sr), len(out), len(nxt))
        if n <= 0:
            out = np.concatenate([out, nxt])
            continue
        fade = np.linspace(1.0, 0.0, n, dtype=np.float32)
        out = np.concatenate([out[:-n], out[-n:] * fade + nxt[:n] * (1 - fade), nxt[n:]])
    return out
