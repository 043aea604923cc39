"""The one definition of the SANA architecture that sanatool knows: everything else asks here.

- **Tensors of a block.** diffusers' ``SanaTransformerBlock`` computes::

      h = h + gate_msa * attn1.to_out(self_attention(modulate(norm1(h))))
      h = h + attn2.to_out(cross_attention(h, caption))
      h = h + gate_mlp * ff.conv_point(glu(conv_depth(conv_inverted(modulate(norm2(h))))))

  so zeroing the output projections (:data:`OUTPUT_PROJECTIONS`) makes a block an exact
  identity, and zeroing the gate rows (:data:`GATE_ROWS`) of its ``scale_shift_table`` silences
  a copied block's modulated branches.
- **Configs.** What a ``SanaTransformer2DModel`` config must hold, the sane bounds of each size,
  and the tensor shapes a config implies (:func:`validate_config`, :func:`expected_shapes`).
- **Presets**, the real SANA shapes as diffusers' conversion script writes them, and ``tiny``.
- **Worlds.** The shapes world (the tiny preset's latent and caption widths) or the general one
  (real SANA checkpoints); a grown, pruned or fine-tuned model keeps its parent's world.
- **Components.** The DC-AE's downsampling factor, the scheduler's flow shift, and the dtype
  names of the CLI, torch and safetensors.

A new SANA variant is added here first (its preset, and any new tensor or config field), then
wherever a command has to treat it differently. This module never imports torch at import time.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from sanatool.errors import InputError, ModelDirError

TRANSFORMER_CLASS = "SanaTransformer2DModel"

# ---------------------------------------------------------------------------------------------
# Tensors

BLOCK_PREFIX = "transformer_blocks"
_BLOCK_RE = re.compile(rf"^{BLOCK_PREFIX}\.(\d+)\.(.+)$")

#: The output projections whose zeroing turns a block's residual branches off (weights and biases).
OUTPUT_PROJECTIONS = (
    "attn1.to_out.0.weight",
    "attn1.to_out.0.bias",
    "attn2.to_out.0.weight",
    "attn2.to_out.0.bias",
    "ff.conv_point.weight",
    "ff.conv_point.bias",
)

#: ``scale_shift_table`` rows (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp): the gates.
GATE_ROWS = (2, 5)
SCALE_SHIFT_TABLE = "scale_shift_table"

#: diffusers' ``qk_norm="rms_norm_across_heads"``: one RMSNorm over all heads' q, one over all k.
QK_NORM_KIND = "rms_norm_across_heads"
ATTENTION_MODULES = ("attn1", "attn2")
#: The tensor whose presence says a checkpoint has QK-norm.
QK_NORM_PROBE = f"{BLOCK_PREFIX}.0.attn1.norm_q.weight"


def block_index(name: str) -> int | None:
    """The block number of a ``transformer_blocks.N.…`` tensor name, else ``None``."""
    match = _BLOCK_RE.match(name)
    return int(match.group(1)) if match else None


def block_suffix(name: str) -> str | None:
    """The part after ``transformer_blocks.N.``, else ``None``."""
    match = _BLOCK_RE.match(name)
    return match.group(2) if match else None


def block_key(index: int, suffix: str) -> str:
    """``(3, "attn1.to_q.weight")`` → ``transformer_blocks.3.attn1.to_q.weight``."""
    return f"{BLOCK_PREFIX}.{index}.{suffix}"


# ---------------------------------------------------------------------------------------------
# Configs

# Bounds that no real SANA config comes near; anything beyond is a broken or hostile file.
CONFIG_LIMITS = {
    "num_layers": 1024,
    "num_attention_heads": 4096,
    "attention_head_dim": 4096,
    "num_cross_attention_heads": 4096,
    "cross_attention_head_dim": 4096,
    "cross_attention_dim": 65536,
    "caption_channels": 65536,
    "in_channels": 4096,
    "out_channels": 4096,
    "patch_size": 64,
    "sample_size": 65536,
}
#: Config fields that may be absent (diffusers then derives them from the others).
OPTIONAL_FIELDS = (
    "out_channels",
    "num_cross_attention_heads",
    "cross_attention_head_dim",
    "cross_attention_dim",
    "sample_size",
)
MAX_PARAMS = 10**12
DEFAULT_MLP_RATIO = 2.5


def inner_dim(config: Mapping[str, Any]) -> int:
    """The transformer's hidden size: attention heads × head dim."""
    return int(config["num_attention_heads"]) * int(config["attention_head_dim"])


def validate_config(config: Mapping[str, Any], where: object) -> None:
    """Refuse a config of another class, with missing or non-integer sizes, or absurd sizes.

    Runs before any weight is read, so a hostile config cannot make us allocate.
    """
    cls = config.get("_class_name")
    if cls != TRANSFORMER_CLASS:
        raise ModelDirError(
            f"{where} holds a {cls or 'config without _class_name'}, not a {TRANSFORMER_CLASS}"
        )
    for key, limit in CONFIG_LIMITS.items():
        value = config.get(key)
        if value is None and key in OPTIONAL_FIELDS:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise ModelDirError(f"{where}: config field {key} must be an integer, got {value!r}")
        if not 1 <= value <= limit:
            raise ModelDirError(
                f"{where}: config field {key}={value} is outside the sane range 1..{limit}; the config is corrupt"
            )
    ratio = config.get("mlp_ratio", DEFAULT_MLP_RATIO)
    if not isinstance(ratio, int | float) or not 0 < ratio <= 64:
        raise ModelDirError(f"{where}: config field mlp_ratio={ratio!r} is outside the sane range (0, 64]")
    dim = inner_dim(config)
    per_block = (
        4 * dim * dim + 4 * dim * int(config.get("cross_attention_dim") or dim) + 3 * ratio * dim * dim
    )
    if per_block * config["num_layers"] > MAX_PARAMS:
        raise ModelDirError(
            f"{where}: config implies more than {MAX_PARAMS:.0e} parameters; the config is corrupt"
        )


def expected_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Shapes that the config implies for key tensors (block tensors use block 0's names)."""
    dim = inner_dim(config)
    patch = int(config.get("patch_size", 1))
    out_channels = int(config.get("out_channels") or config["in_channels"])
    cross_heads = int(config.get("num_cross_attention_heads") or config["num_attention_heads"])
    cross_dim_head = int(config.get("cross_attention_head_dim") or config["attention_head_dim"])
    cross_dim = int(config.get("cross_attention_dim") or dim)
    hidden = int(float(config.get("mlp_ratio", DEFAULT_MLP_RATIO)) * dim)
    return {
        "patch_embed.proj.weight": (dim, int(config["in_channels"]), patch, patch),
        "caption_projection.linear_1.weight": (dim, int(config["caption_channels"])),
        "proj_out.weight": (patch * patch * out_channels, dim),
        block_key(0, "attn1.to_q.weight"): (dim, dim),
        block_key(0, "attn2.to_k.weight"): (cross_heads * cross_dim_head, cross_dim),
        block_key(0, "ff.conv_inverted.weight"): (hidden * 2, dim, 1, 1),
        block_key(0, "ff.conv_point.weight"): (dim, hidden, 1, 1),
    }


def model_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config without diffusers' bookkeeping keys: the keyword arguments of the model class."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


# ---------------------------------------------------------------------------------------------
# Presets

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
        "qk_norm": QK_NORM_KIND,
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
    "sana1.5-1.6b": {**_SANA_COMMON, "num_layers": 20, "qk_norm": QK_NORM_KIND},
    "sana1.5-4.8b": {**_SANA_COMMON, "num_layers": 60, "qk_norm": QK_NORM_KIND},
}


def preset_config(name: str) -> dict[str, Any]:
    """The diffusers ``SanaTransformer2DModel`` config of a preset (a fresh copy)."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return {"_class_name": TRANSFORMER_CLASS, **PRESETS[name]}


# ---------------------------------------------------------------------------------------------
# Worlds

SHAPES_WORLD = "shapes"
GENERAL_WORLD = "general"


def detect_world(transformer_config: Mapping[str, Any]) -> str:
    """``"shapes"`` for a transformer with the tiny preset's latent and caption widths, else ``"general"``."""
    tiny = PRESETS["tiny"]
    is_shapes = (
        transformer_config.get("in_channels") == tiny["in_channels"]
        and transformer_config.get("caption_channels") == tiny["caption_channels"]
    )
    return SHAPES_WORLD if is_shapes else GENERAL_WORLD


# ---------------------------------------------------------------------------------------------
# The other components

#: Stages of ``AutoencoderDC``'s default encoder (DC-AE f32, SANA's VAE).
_DC_AE_DEFAULT_STAGES = 6


def vae_scale_factor(vae_config: Mapping[str, Any]) -> int:
    """The spatial downsampling of an ``AutoencoderDC``: 2 per encoder stage after the first.

    The rule of diffusers' ``SanaPipeline``; a config without ``encoder_block_out_channels``
    takes the class default (six stages, f32).
    """
    stages = vae_config.get("encoder_block_out_channels")
    count = len(stages) if isinstance(stages, list | tuple) and stages else _DC_AE_DEFAULT_STAGES
    return 2 ** (count - 1)


def flow_shift(scheduler_config: Mapping[str, Any]) -> float:
    """The timestep shift of a flow scheduler config (``flow_shift`` of Flow-DPM-Solver, ``shift``
    of flow Euler; 1.0 when neither is set). A shift that is not a positive finite number is refused:
    NaN would turn every sigma into NaN (black images, a NaN loss)."""
    value = scheduler_config.get("flow_shift") or scheduler_config.get("shift") or 1.0
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ModelDirError(
            f"the scheduler config's flow shift {value!r} is not a positive number; the config is corrupt"
        )
    return float(value)


def train_timesteps(scheduler_config: Mapping[str, Any]) -> int:
    """The scheduler's ``num_train_timesteps`` (1000 for every SANA scheduler)."""
    return int(scheduler_config.get("num_train_timesteps", 1000))


# ---------------------------------------------------------------------------------------------
# Dtypes: the CLI's names, torch's and safetensors'

#: CLI dtype names → (torch dtype name, safetensors dtype)
DTYPES = {"fp32": ("float32", "F32"), "bf16": ("bfloat16", "BF16"), "fp16": ("float16", "F16")}


def check_dtype(name: str) -> str:
    """Refuse a dtype name that is none of :data:`DTYPES`; return it."""
    if name not in DTYPES:
        raise InputError(f"unknown dtype {name!r}; choose one of: {', '.join(DTYPES)}")
    return name


def torch_dtype(name: str) -> Any:
    """``bf16`` → ``torch.bfloat16`` (also accepts the safetensors names)."""
    import torch

    return getattr(torch, DTYPES[check_dtype(dtype_name(name))][0])


def dtype_name(dtype: Any) -> str:
    """A torch dtype or safetensors dtype name → the CLI's name (``torch.bfloat16``, ``BF16`` → ``bf16``)."""
    text = str(dtype).removeprefix("torch.")
    for name, (torch_name, st_name) in DTYPES.items():
        if text in (torch_name, st_name):
            return name
    return text


def safetensors_dtype(name: str) -> str:
    """``bf16`` (or ``torch.bfloat16``) → ``BF16``."""
    return DTYPES[check_dtype(dtype_name(name))][1]


def resolve_precision(precision: str, device_type: str) -> str:
    """``auto`` → ``bf16`` on CUDA, ``fp32`` elsewhere; other names pass through."""
    if precision == "auto":
        return "bf16" if device_type == "cuda" else "fp32"
    return precision
