"""The key map between the original SANA checkpoints and diffusers' ``SanaTransformer2DModel``.

The official SANA code (``diffusion/model/nets/sana_multi_scale.py``, ``sana_blocks.py``) names
tensors ``blocks.{i}.attn.qkv.weight``, ``x_embedder.proj.weight`` …; diffusers names them
``transformer_blocks.{i}.attn1.to_q.weight``, ``patch_embed.proj.weight`` …. Every original tensor
is one diffusers tensor or the concatenation along dim 0 of several (self-attention ``qkv`` is
q, k, v in that order; cross-attention ``kv_linear`` is k, v), so either direction is a list of
:class:`KeyPair`. A few original tensors have no slot in diffusers (:data:`EXTRAS`). This module is
torch-free: it only names and checks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from sanatool.arch import block_key
from sanatool.errors import InputError
from sanatool.formatting import format_block_list

#: Original non-block tensors → diffusers (the same in every variant).
NON_BLOCK = {
    "x_embedder.proj.weight": "patch_embed.proj.weight",
    "x_embedder.proj.bias": "patch_embed.proj.bias",
    "t_block.1.weight": "time_embed.linear.weight",
    "t_block.1.bias": "time_embed.linear.bias",
    "y_embedder.y_proj.fc1.weight": "caption_projection.linear_1.weight",
    "y_embedder.y_proj.fc1.bias": "caption_projection.linear_1.bias",
    "y_embedder.y_proj.fc2.weight": "caption_projection.linear_2.weight",
    "y_embedder.y_proj.fc2.bias": "caption_projection.linear_2.bias",
    "attention_y_norm.weight": "caption_norm.weight",
    "final_layer.linear.weight": "proj_out.weight",
    "final_layer.linear.bias": "proj_out.bias",
    "final_layer.scale_shift_table": "scale_shift_table",
}

_TIMESTEP_MLP = {"t_embedder.mlp.0": "linear_1", "t_embedder.mlp.2": "linear_2"}
_GUIDANCE_MLP = {"cfg_embedder.mlp.0": "linear_1", "cfg_embedder.mlp.2": "linear_2"}

#: Per block: original suffix → diffusers suffixes (several: concatenated along dim 0, in order).
BLOCK = {
    "scale_shift_table": ("scale_shift_table",),
    "attn.qkv.weight": ("attn1.to_q.weight", "attn1.to_k.weight", "attn1.to_v.weight"),
    "attn.proj.weight": ("attn1.to_out.0.weight",),
    "attn.proj.bias": ("attn1.to_out.0.bias",),
    "cross_attn.q_linear.weight": ("attn2.to_q.weight",),
    "cross_attn.q_linear.bias": ("attn2.to_q.bias",),
    "cross_attn.kv_linear.weight": ("attn2.to_k.weight", "attn2.to_v.weight"),
    "cross_attn.kv_linear.bias": ("attn2.to_k.bias", "attn2.to_v.bias"),
    "cross_attn.proj.weight": ("attn2.to_out.0.weight",),
    "cross_attn.proj.bias": ("attn2.to_out.0.bias",),
    "mlp.inverted_conv.conv.weight": ("ff.conv_inverted.weight",),
    "mlp.inverted_conv.conv.bias": ("ff.conv_inverted.bias",),
    "mlp.depth_conv.conv.weight": ("ff.conv_depth.weight",),
    "mlp.depth_conv.conv.bias": ("ff.conv_depth.bias",),
    "mlp.point_conv.conv.weight": ("ff.conv_point.weight",),
}

#: SANA 1.5's QK-norm (``qk_norm`` on self-attention, ``cross_norm`` on cross-attention): all four or none.
QK_NORM_BLOCK = {
    "attn.q_norm.weight": ("attn1.norm_q.weight",),
    "attn.k_norm.weight": ("attn1.norm_k.weight",),
    "cross_attn.q_norm.weight": ("attn2.norm_q.weight",),
    "cross_attn.k_norm.weight": ("attn2.norm_k.weight",),
}

#: Original tensors with no slot in diffusers: the null caption of classifier-free guidance, the
#: fixed positional table, and SANA-Sprint's training-only log-variance head.
Y_EMBEDDING = "y_embedder.y_embedding"
POS_EMBED = "pos_embed"
EXTRAS = (Y_EMBEDDING, POS_EMBED, "logvar_linear.weight", "logvar_linear.bias")

#: The file beside a diffusers transformer's weights that keeps :data:`EXTRAS` (grow and prune carry it).
SIDE_FILE = "sana_original_extras.safetensors"

#: Probes: what makes a file an original SANA checkpoint, and a Sprint one.
ORIGINAL_PROBES = (
    "x_embedder.proj.weight",
    "blocks.0.attn.qkv.weight",
    "blocks.0.cross_attn.kv_linear.weight",
)
SPRINT_PROBE = "cfg_embedder.mlp.0.weight"

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class KeyPair:
    """One original tensor and the diffusers tensors it is made of (concatenated along dim 0)."""

    original: str
    diffusers: tuple[str, ...]


def key_pairs(num_layers: int, qk_norm: bool, sprint: bool) -> list[KeyPair]:
    """Every tensor of a SANA transformer in both namings (extras excluded), non-block tensors first."""
    pairs = [KeyPair(o, (d,)) for o, d in NON_BLOCK.items()]
    embedder = "time_embed.timestep_embedder" if sprint else "time_embed.emb.timestep_embedder"
    for original, linear in _TIMESTEP_MLP.items():
        for kind in ("weight", "bias"):
            pairs.append(KeyPair(f"{original}.{kind}", (f"{embedder}.{linear}.{kind}",)))
    if sprint:
        for original, linear in _GUIDANCE_MLP.items():
            for kind in ("weight", "bias"):
                pairs.append(
                    KeyPair(f"{original}.{kind}", (f"time_embed.guidance_embedder.{linear}.{kind}",))
                )
    per_block = {**BLOCK, **(QK_NORM_BLOCK if qk_norm else {})}
    for i in range(num_layers):
        for suffix, targets in per_block.items():
            pairs.append(KeyPair(f"blocks.{i}.{suffix}", tuple(block_key(i, t) for t in targets)))
    return pairs


def is_original_layout(names: Iterable[str]) -> bool:
    """Whether tensor names look like an original SANA checkpoint."""
    present = set(names)
    return all(probe in present for probe in ORIGINAL_PROBES)


def describe_original(names: Iterable[str], where: object) -> tuple[int, bool, bool]:
    """Depth, QK-norm and Sprint of an original checkpoint's tensor names, refusing what does not add up.

    Refuses: a file that is not the original layout, blocks missing from 0..N-1, QK-norm in some
    blocks (or some attentions) but not all, and tensors the key map does not know.
    """
    present = set(names)
    if not is_original_layout(present):
        if any(name.startswith("transformer_blocks.") for name in present):
            raise InputError(
                f"{where} holds diffusers tensor names, not the original SANA layout; put it in a transformer "
                "dir with its config.json (diffusion_pytorch_model.safetensors) instead"
            )
        raise InputError(
            f"{where} is neither an original SANA checkpoint (no {', '.join(ORIGINAL_PROBES)}) nor a diffusers "
            "model dir"
        )
    blocks: dict[int, set[str]] = {}
    for name in present:
        match = _BLOCK_RE.match(name)
        if match:
            blocks.setdefault(int(match.group(1)), set()).add(match.group(2))
    depth = max(blocks) + 1
    missing = sorted(set(range(depth)) - set(blocks))
    if missing:
        raise InputError(
            f"{where}: blocks {format_block_list(missing)} are missing (the file holds blocks "
            f"{format_block_list(sorted(blocks))}); the checkpoint is incomplete"
        )
    with_norm = sorted(i for i, suffixes in blocks.items() if set(QK_NORM_BLOCK) <= suffixes)
    without = sorted(i for i, suffixes in blocks.items() if not set(QK_NORM_BLOCK) & suffixes)
    if len(with_norm) + len(without) != depth or (with_norm and without):
        partial = sorted(set(range(depth)) - set(with_norm) - set(without))
        detail = (
            f"blocks {format_block_list(partial)} have only some of {', '.join(QK_NORM_BLOCK)}"
            if partial
            else f"blocks {format_block_list(with_norm)} have QK-norm, blocks {format_block_list(without)} do not"
        )
        raise InputError(f"{where}: mixed QK-norm ({detail}); a SANA model has it in every block or in none")
    qk_norm = bool(with_norm)
    sprint = SPRINT_PROBE in present
    expected = {pair.original for pair in key_pairs(depth, qk_norm, sprint)}
    unknown = sorted(present - expected - set(EXTRAS))
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise InputError(
            f"{where}: tensor {unknown[0]}{more} is not part of a SANA transformer the key map knows; "
            "refusing to drop it"
        )
    lacking = sorted(expected - present)
    if lacking:
        raise InputError(f"{where}: tensor {lacking[0]} is missing; the checkpoint is incomplete")
    return depth, qk_norm, sprint


def check_diffusers_names(names: Iterable[str], pairs: list[KeyPair], where: object) -> None:
    """Refuse a diffusers transformer holding tensors the key map would drop, or lacking some."""
    present = set(names)
    expected = {name for pair in pairs for name in pair.diffusers}
    unknown = sorted(present - expected)
    if unknown:
        raise InputError(
            f"{where}: tensor {unknown[0]} has no place in the original SANA layout; refusing to drop it"
        )
    lacking = sorted(expected - present)
    if lacking:
        raise InputError(f"{where}: tensor {lacking[0]} is missing")
