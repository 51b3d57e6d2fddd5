"""The F5-TTS RunPod worker: job API, storage, audio, F5-TTS engine and forced alignment.

Runs inside the snapshot volenv activates; models come from the volume (VOLENV_MODEL_*).
Heavy imports (torch, f5_tts, transformers) happen only in the engine, once, at start.
"""
