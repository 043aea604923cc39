"""Torch-free file I/O: safetensors headers and the streaming writer, model dirs in the diffusers
layout, atomic outputs and the one link-or-copy, provenance, JSONL, prompt and importance files.

Nothing here imports torch, so ``sanatool info`` and the planning half of surgery start fast.
"""
