"""Tiny random-weight stand-ins for the worker's real models, built with the real libraries
inside the test snapshot (torch, f5_tts, vocos, transformers): the audio is noise, the
plumbing — checkpoint format, vocoder loading, CTC alignment — is the real one.

    python make_tiny_models.py OUTDIR   ->  OUTDIR/{f5,vocos,ctc}
"""

from __future__ import annotations

import json
import string
import sys
from importlib.resources import files
from pathlib import Path

import torch


def f5(out: Path) -> None:
    from f5_tts.infer.utils_infer import n_mel_channels
    from f5_tts.model import CFM, DiT
    from f5_tts.model.utils import get_tokenizer
    from safetensors.torch import save_file

    d = out / "F5TTS_tiny"
    d.mkdir(parents=True)
    vocab = d / "vocab.txt"
    vocab.write_text(
        files("f5_tts").joinpath("infer/examples/vocab.txt").read_text(encoding="utf-8"), encoding="utf-8"
    )
    arch = {"dim": 64, "depth": 2, "heads": 2, "dim_head": 32, "ff_mult": 2, "text_dim": 32, "conv_layers": 1}
    (d / "arch.json").write_text(json.dumps(arch))
    vocab_map, size = get_tokenizer(str(vocab), "custom")
    torch.manual_seed(0)
    model = CFM(
        transformer=DiT(**arch, text_num_embeds=size, mel_dim=n_mel_channels),
        mel_spec_kwargs={
            "n_fft": 1024,
            "hop_length": 256,
            "win_length": 1024,
            "n_mel_channels": 100,
            "target_sample_rate": 24000,
            "mel_spec_type": "vocos",
        },
        vocab_char_map=vocab_map,
    )
    state = {f"ema_model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(d / "model_tiny.safetensors"))


def vocos(out: Path) -> None:
    from vocos import Vocos

    out.mkdir(parents=True)
    config = """feature_extractor:
  class_path: vocos.feature_extractors.MelSpectrogramFeatures
  init_args: {sample_rate: 24000, n_fft: 1024, hop_length: 256, n_mels: 100, padding: center}
backbone:
  class_path: vocos.models.VocosBackbone
  init_args: {input_channels: 100, dim: 32, intermediate_dim: 64, num_layers: 1}
head:
  class_path: vocos.heads.ISTFTHead
  init_args: {dim: 32, n_fft: 1024, hop_length: 256, padding: center}
"""
    (out / "config.yaml").write_text(config)
    torch.manual_seed(1)
    model = Vocos.from_hparams(str(out / "config.yaml"))
    torch.save(model.state_dict(), out / "pytorch_model.bin")


def ctc(out: Path) -> None:
    from transformers import Wav2Vec2Config, Wav2Vec2CTCTokenizer, Wav2Vec2ForCTC

    out.mkdir(parents=True)
    tokens = ["<pad>", "<s>", "</s>", "<unk>", "|", *string.ascii_uppercase, "'"]
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    tok = Wav2Vec2CTCTokenizer(str(out / "vocab.json"), word_delimiter_token="|")
    cfg = Wav2Vec2Config(
        vocab_size=len(tokens),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16, 16),
        conv_stride=(5, 4, 4),
        conv_kernel=(10, 8, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        pad_token_id=0,
    )
    torch.manual_seed(2)
    Wav2Vec2ForCTC(cfg).save_pretrained(out)
    tok.save_pretrained(out)


if __name__ == "__main__":
    base = Path(sys.argv[1])
    f5(base / "f5")
    vocos(base / "vocos")
    ctc(base / "ctc")
    print("ok")
