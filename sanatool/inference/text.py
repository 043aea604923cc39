"""Prompt encoding, identical to diffusers' ``SanaPipeline.encode_prompt`` because it *is* that code.

:func:`encode_prompts` wraps the tokenizer and text encoder in a component-only
``SanaPipeline`` and calls its own ``encode_prompt``: Gemma-2 hidden states with their
attention mask, the optional complex human instruction, BOS + the last
``max_sequence_length - 1`` tokens. Training (which caches embeddings with this function) and
sampling therefore see exactly the conditioning diffusers would compute. The one addition is a
warning when a prompt exceeds the token budget and its end is cut.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sanatool.errors import InputError

log = logging.getLogger("sanatool.inference.text")

#: SANA's text budget: BOS + 299 prompt tokens.
MAX_SEQUENCE_LENGTH = 300


def diffusers_default_instruction() -> list[str]:
    """The complex human instruction that diffusers' ``SanaPipeline.__call__`` uses by default.

    Read from diffusers' own signature, so it follows whatever the installed diffusers ships.
    """
    import inspect

    from diffusers import SanaPipeline

    return list(inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default)


def _encoder_pipeline(tokenizer: Any, text_encoder: Any) -> Any:
    """A ``SanaPipeline`` holding only the text components: enough to run its ``encode_prompt``."""
    from diffusers import SanaPipeline

    return SanaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=None, transformer=None, scheduler=None
    )


def _warn_truncated(
    pipe: Any, prompts: Sequence[str], max_sequence_length: int, instruction: Sequence[str] | None
) -> None:
    """Warn for each prompt that diffusers' tokenisation will cut, mirroring its length arithmetic."""
    tokenizer = pipe.tokenizer
    texts = pipe._text_preprocessing(list(prompts), clean_caption=False)
    if instruction:
        prefix = "\n".join(instruction)
        prefix_tokens = len(tokenizer.encode(prefix))
        # diffusers: max_length_all = tokens(instruction) + max_sequence_length - 2
        limit = prefix_tokens + max_sequence_length - 2
        texts = [prefix + text for text in texts]
    else:
        prefix_tokens = len(tokenizer.encode(""))  # BOS (and EOS for tokenizers that add one)
        limit = max_sequence_length
    for index, text in enumerate(texts):
        count = len(tokenizer.encode(text))
        if count > limit:
            preview = prompts[index][:40] + ("…" if len(prompts[index]) > 40 else "")
            log.warning(
                "prompt %d (%r) has %d tokens, over the %d-token budget: only its first %d tokens are used",
                index,
                preview,
                count - prefix_tokens,
                max_sequence_length,
                limit - prefix_tokens,
            )


def encode_prompts(
    tokenizer: Any,
    text_encoder: Any,
    prompts: list[str],
    device: Any,
    max_sequence_length: int = MAX_SEQUENCE_LENGTH,
    complex_human_instruction: Sequence[str] | None = None,
) -> tuple[Any, Any]:
    """Encode prompts exactly as ``SanaPipeline.encode_prompt`` does; return ``(embeds, attention_mask)``.

    ``embeds`` is ``(len(prompts), max_sequence_length, hidden)`` in the text encoder's dtype on
    ``device``; ``attention_mask`` is ``(len(prompts), max_sequence_length)``. The unconditional
    (negative) embedding of classifier-free guidance is ``encode_prompts(..., [""] * n)`` with no
    instruction, as diffusers computes it. Prompts longer than the budget are truncated (their
    end is dropped) with a warning on the ``sanatool.inference.text`` logger.
    """
    import torch

    if not prompts:
        raise InputError("no prompts to encode; give at least one prompt")
    if max_sequence_length < 2:
        raise InputError(f"max_sequence_length must be at least 2, got {max_sequence_length}")
    pipe = _encoder_pipeline(tokenizer, text_encoder)
    instruction = list(complex_human_instruction) if complex_human_instruction else None
    _warn_truncated(pipe, prompts, max_sequence_length, instruction)
    with torch.no_grad():
        embeds, mask, _, _ = pipe.encode_prompt(
            list(prompts),
            do_classifier_free_guidance=False,
            device=torch.device(device),
            clean_caption=False,
            max_sequence_length=max_sequence_length,
            complex_human_instruction=instruction,
        )
    return embeds, mask


def tokenize_prompts(
    tokenizer: Any, prompts: list[str], max_sequence_length: int = MAX_SEQUENCE_LENGTH
) -> tuple[Any, Any]:
    """The token ids and attention mask ``encode_prompts`` feeds the text encoder (no instruction).

    Same preprocessing and tokenizer call as diffusers' ``SanaPipeline._get_gemma_prompt_embeds``,
    so ``text_encoder(ids, mask).last_hidden_state`` equals :func:`encode_prompts`' embeddings
    (its BOS + last tokens selection is the identity without an instruction). Training a text
    encoder needs these, with gradients; sampling keeps using :func:`encode_prompts`.
    """
    pipe = _encoder_pipeline(tokenizer, None)
    tokenizer.padding_side = "right"
    texts = pipe._text_preprocessing(list(prompts), clean_caption=False)
    tokens = tokenizer(
        texts,
        padding="max_length",
        max_length=max_sequence_length,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    )
    return tokens.input_ids, tokens.attention_mask
