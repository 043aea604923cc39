"""A tiny SANA-Sprint stand-in, built with diffusers directly (see :mod:`standins` for the other layouts).

``SanaSprintPipeline`` with a guidance-embedding ``SanaTransformer2DModel`` (``guidance_embeds=True``,
as the real Sprint repos configure it) and diffusers' ``SCMScheduler`` (trigflow), around the same
tiny Gemma2 text encoder, SentencePiece tokenizer and DC-AE as :func:`standins.make_pipeline`.
"""

from __future__ import annotations

from typing import Any

from standins import gemma_tokenizer, make_text_encoder, make_transformer, make_vae


def make_sprint_pipeline(seed: int = 0, **transformer_overrides: Any) -> Any:
    """A tiny ``SanaSprintPipeline`` in memory (fp32); ``transformer_overrides`` vary the transformer config."""
    from diffusers import SanaSprintPipeline, SCMScheduler

    return SanaSprintPipeline(
        tokenizer=gemma_tokenizer(),
        text_encoder=make_text_encoder(seed + 2),
        vae=make_vae(seed + 1),
        transformer=make_transformer(seed, guidance_embeds=True, **transformer_overrides),
        scheduler=SCMScheduler(prediction_type="trigflow", sigma_data=0.5),
    )
