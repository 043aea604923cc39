"""Transformer presets: the real SANA shapes (as diffusers' conversion script writes them) and tiny."""

from __future__ import annotations

from typing import Any

from sanatool.errors import InputError

_SANA_COMMON: dict[str, Any] = {
    "in_channels": 32,
    "out_channels": 32,
    "attention_head_dim": 32,
    "cross_attention_head_dim": 112,
    "num_cross_attention_heads": 20,
    "cross_attention_dim": 2240,
    "num_attention_heads": 70,
    "caption_channels": 2304,
    "mlp_ratio": 2.5,
    "dropout": 0.0,
    "attention_bias": False,
    "sample_size": 32,
    "patch_size": 1,
    "norm_elementwise_affine": False,
    "norm_eps": 1e-6,
    "interpolation_scale": None,
    "guidance_embeds": False,
    "guidance_embeds_scale": 0.1,
    "qk_norm": None,
    "timestep_scale": 1.0,
}

QK_NORM = "rms_norm_across_heads"

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        **_SANA_COMMON,
        "in_channels": 8,
        "out_channels": 8,
        "num_attention_heads": 4,
        "attention_head_dim": 32,
        "num_cross_attention_heads": 4,
        "cross_attention_head_dim": 32,
        "cross_attention_dim": 128,
        "caption_channels": 64,
        "num_layers": 8,
        "sample_size": 8,
        "qk_norm": QK_NORM,
    },
    "sana-0.6b": {
        **_SANA_COMMON,
        "num_attention_heads": 36,
        "num_cross_attention_heads": 16,
        "cross_attention_head_dim": 72,
        "cross_attention_dim": 1152,
        "num_layers": 28,
    },
    "sana-1.6b": {**_SANA_COMMON, "num_layers": 20},
    "sana1.5-1.6b": {**_SANA_COMMON, "num_layers": 20, "qk_norm": QK_NORM},
    "sana1.5-4.8b": {**_SANA_COMMON, "num_layers": 60, "qk_norm": QK_NORM},
}

DESCRIPTIONS = {
    "tiny": "8 blocks × 128, QK-norm: the shapes world (32×32 images, 8×8×8 latents)",
    "sana-0.6b": "SANA 0.6B: 28 blocks × 1152",
    "sana-1.6b": "SANA 1.6B: 20 blocks × 2240, no QK-norm",
    "sana1.5-1.6b": "SANA 1.5 1.6B: 20 blocks × 2240, QK-norm",
    "sana1.5-4.8b": "SANA 1.5 4.8B: 60 blocks × 2240, QK-norm",
}


def preset_config(name: str) -> dict[str, Any]:
    """The diffusers ``SanaTransformer2DModel`` config of a preset (a fresh copy)."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return {"_class_name": "SanaTransformer2DModel", **PRESETS[name]}
