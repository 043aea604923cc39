"""The tiny shapes-world pipeline components, built from the real classes.

A small ``AutoencoderDC`` (f4, 8 latent channels), a small transformers ``Gemma2Model`` with a
word-level tokenizer built with ``tokenizers``, and the Flow-DPM-Solver scheduler
(``DPMSolverMultistepScheduler`` with flow sigmas). Together with a tiny
``SanaTransformer2DModel`` they form a pipeline dir that ``SanaPipeline.from_pretrained`` loads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sanatool.arch import PRESETS, TRANSFORMER_CLASS

#: Function words beyond the shapes grammar, so free-form prompts degrade gracefully; the rest is <unk>.
EXTRA_WORDS: tuple[str, ...] = (
    "the", "of", "to", "on", "in", "with", "is", "are", "photo", "image", "picture", "shape", "shapes",
    "under", "over", "next", "beside", "side", "top", "bottom", "small", "large", "big", "background",
    "white", "light", "empty",
)  # fmt: skip
SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>")
TEXT_HIDDEN = PRESETS["tiny"]["caption_channels"]
LATENT_CHANNELS = PRESETS["tiny"]["in_channels"]
IMAGE_SIZE = 32
#: Low resolution needs little timestep shift; SANA uses 3.0 at 1024 px.
FLOW_SHIFT = 1.0


def build_tokenizer() -> Any:
    """A lowercase word-level tokenizer (``GemmaTokenizerFast`` wrapper) that prepends ``<bos>``."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    from sanatool.shapes import vocabulary

    words = list(dict.fromkeys([*vocabulary(), *EXTRA_WORDS]))
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + tuple(words))}
    core = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="right",
        model_max_length=300,
    )


def text_encoder_config(vocab_size: int) -> Any:
    """A 2-layer Gemma2 config, 64 wide (the tiny transformer's caption_channels)."""
    from transformers import Gemma2Config

    return Gemma2Config(
        vocab_size=vocab_size,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=512,
        sliding_window=64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )


def vae_config() -> dict[str, Any]:
    """A ~0.4M-parameter DC-AE: f4 (two downsamples), 8 latent channels, no attention stages.

    The full-resolution stage is 16 channels wide: flat-coloured 32×32 shapes need no more, and
    it makes the VAE training of the shipped model about 2.3× faster than 32 channels on a CPU.
    """
    return {
        "in_channels": 3,
        "latent_channels": LATENT_CHANNELS,
        "attention_head_dim": 8,
        "encoder_block_types": ["ResBlock", "ResBlock", "ResBlock"],
        "decoder_block_types": ["ResBlock", "ResBlock", "ResBlock"],
        "encoder_block_out_channels": [16, 32, 64],
        "decoder_block_out_channels": [16, 32, 64],
        "encoder_layers_per_block": [1, 1, 2],
        "decoder_layers_per_block": [1, 1, 2],
        "encoder_qkv_multiscales": [[], [], []],
        "decoder_qkv_multiscales": [[], [], []],
        "upsample_block_type": "interpolate",
        "downsample_block_type": "Conv",
        "decoder_norm_types": "rms_norm",
        "decoder_act_fns": "silu",
        "scaling_factor": 1.0,
    }


def scheduler_config() -> dict[str, Any]:
    """Flow-DPM-Solver as SANA ships it (``DPMSolverMultistepScheduler`` with flow sigmas)."""
    return {
        "algorithm_type": "dpmsolver++",
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "beta_start": 0.0001,
        "flow_shift": FLOW_SHIFT,
        "lower_order_final": True,
        "num_train_timesteps": 1000,
        "prediction_type": "flow_prediction",
        "solver_order": 2,
        "solver_type": "midpoint",
        "use_flow_sigmas": True,
        "final_sigmas_type": "zero",
    }


def model_index(transformer_class: str = TRANSFORMER_CLASS) -> dict[str, Any]:
    """The ``model_index.json`` of a tiny SanaPipeline."""
    from sanatool.io.modeldir import diffusers_version

    return {
        "_class_name": "SanaPipeline",
        "_diffusers_version": diffusers_version(),
        "scheduler": ["diffusers", "DPMSolverMultistepScheduler"],
        "text_encoder": ["transformers", "Gemma2Model"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "transformer": ["diffusers", transformer_class],
        "vae": ["diffusers", "AutoencoderDC"],
    }


def write_tiny_components(out_root: Path, seed: int = 0, dtype: str = "fp32") -> None:
    """Write randomly initialised text encoder, tokenizer, VAE, scheduler and model_index into a pipeline dir."""
    import torch
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler
    from transformers import Gemma2Model

    from sanatool.arch import torch_dtype

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(out_root / "tokenizer")
    encoder = Gemma2Model(text_encoder_config(len(tokenizer))).to(torch_dtype(dtype))
    encoder.save_pretrained(out_root / "text_encoder", safe_serialization=True)
    vae = AutoencoderDC(**vae_config()).to(torch_dtype(dtype))
    vae.save_pretrained(out_root / "vae", safe_serialization=True)
    DPMSolverMultistepScheduler(**scheduler_config()).save_pretrained(out_root / "scheduler")
    (out_root / "model_index.json").write_text(json.dumps(model_index(), indent=2) + "\n")
