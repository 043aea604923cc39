"""LoRA files between diffusers' keys and the original SANA keys, both ways, by the one key map.

diffusers' file (``SanaPipeline.save_lora_weights``): ``transformer.M.lora_A.weight`` / ``lora_B.weight``
per adapted module ``M`` (``transformer_blocks.0.attn1.to_q``), rank and alpha in the header's
``lora_adapter_metadata``. The original-key file: ``O.lora_A.weight``, ``O.lora_B.weight`` and
``O.alpha`` per module ``O`` of the original checkpoint (``blocks.0.attn.qkv``), as
:mod:`~sanatool.surgery.convert_keys` names its weight ``O.weight``.

Where the original fuses diffusers' linears (self-attention ``qkv`` = q, k, v; cross-attention
``kv_linear`` = k, v), the fused update is the parts' updates stacked: ``lora_A`` is the parts' A
stacked (rank = the sum of their ranks) and ``lora_B`` is block-diagonal (zero rows for a part
without an adapter). The way back splits ``lora_B`` by rows and drops the all-zero columns, so a
diffusers LoRA comes back with its own ranks. Each module's scale (alpha / rank, or its rsLoRA
form) is folded into ``lora_B`` and alpha set to the rank, so both files compute exactly
``W + B·A`` whatever a loader assumes about a missing alpha.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sanatool.errors import InputError
from sanatool.inference.lora import LORA_WEIGHTS_NAME, TRANSFORMER_PREFIX
from sanatool.surgery.convert_keys import key_pairs

_A, _B, _ALPHA = ".lora_A.weight", ".lora_B.weight", ".alpha"
_DIFFUSERS_BLOCK = re.compile(r"^transformer_blocks\.(\d+)\.")
_ORIGINAL_BLOCK = re.compile(r"^blocks\.(\d+)\.")
METADATA_KEY = "lora_adapter_metadata"


def lora_source(path: Path) -> Path | None:
    """The LoRA file a convert source names (a LoRA dir, or a safetensors file of LoRA keys), else ``None``."""
    from sanatool.errors import ModelDirError
    from sanatool.io.safetensors import read_header

    if path.is_dir():
        inner = path / LORA_WEIGHTS_NAME
        return inner if inner.is_file() and not (path / "transformer").exists() else None
    if not path.is_file() or path.suffix != ".safetensors":
        return None
    try:
        tensors, _ = read_header(path)
    except ModelDirError:
        return None
    return path if tensors and all(k.endswith((_A, _B, _ALPHA)) for k in tensors) else None


def _module_map(depth: int, sprint: bool) -> dict[str, tuple[str, ...]]:
    """Original module → the diffusers modules it fuses (in order), for every weight of a linear or conv."""
    found = {}
    for pair in key_pairs(depth, qk_norm=False, sprint=sprint):
        if pair.original.endswith(".weight") and all(d.endswith(".weight") for d in pair.diffusers):
            found[pair.original[: -len(".weight")]] = tuple(d[: -len(".weight")] for d in pair.diffusers)
    return found


def _modules(keys: list[str], where: Path) -> list[str]:
    modules = sorted({k[: -len(s)] for k in keys for s in (_A, _B, _ALPHA) if k.endswith(s)})
    for module in modules:
        if f"{module}{_A}" not in keys or f"{module}{_B}" not in keys:
            raise InputError(
                f"the LoRA {where} has lora_A or lora_B of {module} missing; the file is incomplete"
            )
    return modules


def _depth(modules: list[str], pattern: re.Pattern[str]) -> int:
    blocks = [int(m.group(1)) for m in map(pattern.match, modules) if m]
    return max(blocks) + 1 if blocks else 0


def _diffusers_scales(
    metadata: dict[str, str], state: dict[str, Any], modules: list[str]
) -> dict[str, float]:
    """Each module's LoRA scale by peft's rules: alpha (or its pattern) over the rank (or its square root)."""
    from peft.utils.other import get_pattern_key

    config: dict[str, Any] = {}
    if METADATA_KEY in metadata:
        raw = json.loads(metadata[METADATA_KEY])
        prefix = TRANSFORMER_PREFIX
        config = {k.removeprefix(prefix): v for k, v in raw.items() if k.startswith(prefix)}
    if config.get("use_dora"):
        raise InputError("DoRA adapters have no form in the original layout; convert a plain LoRA")
    alpha_pattern = config.get("alpha_pattern") or {}
    scales = {}
    for module in modules:
        rank = state[f"{module}{_A}"].shape[0]
        alpha = float(config.get("lora_alpha", rank))
        if alpha_pattern:
            alpha = float(alpha_pattern.get(get_pattern_key(list(alpha_pattern), module), alpha))
        scales[module] = alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
    return scales


def lora_to_original(state: dict[str, Any], metadata: dict[str, str], where: Path) -> dict[str, Any]:
    """diffusers' LoRA tensors (``transformer.`` keys) → original keys, scales folded into ``lora_B``."""
    import torch

    state = {k.removeprefix(TRANSFORMER_PREFIX): v for k, v in state.items()}
    modules = _modules(list(state), where)
    scales = _diffusers_scales(metadata, state, modules)
    sprint = any(
        m.startswith(("time_embed.timestep_embedder", "time_embed.guidance_embedder")) for m in modules
    )
    mapping = _module_map(_depth(modules, _DIFFUSERS_BLOCK), sprint)
    placed = {part for parts in mapping.values() for part in parts}
    stray = sorted(set(modules) - placed)
    if stray:
        raise InputError(
            f"the LoRA {where} adapts {stray[0]}, which has no place in the original SANA layout"
        )
    out: dict[str, Any] = {}
    for original, parts in mapping.items():
        present = [p for p in parts if p in scales]
        if not present:
            continue
        downs = [state[f"{p}{_A}"].float() for p in present]
        ups = {p: state[f"{p}{_B}"].float() * scales[p] for p in present}
        rows = next(iter(ups.values())).shape[0]  # q, k and v are equally wide in SANA
        width = sum(a.shape[0] for a in downs)
        up = torch.zeros(rows * len(parts), width, *next(iter(ups.values())).shape[2:])
        column = 0
        for index, part in enumerate(parts):
            if part in ups:
                rank = ups[part].shape[1]
                up[index * rows : (index + 1) * rows, column : column + rank] = ups[part]
                column += rank
        out[f"{original}{_A}"] = torch.cat(downs, dim=0).contiguous()
        out[f"{original}{_B}"] = up.contiguous()
        out[f"{original}{_ALPHA}"] = torch.tensor(float(width))
    return out


def lora_to_diffusers(state: dict[str, Any], where: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Original-key LoRA tensors → diffusers' (without the ``transformer.`` prefix), scales folded into ``lora_B``.

    Returns the tensors and each module's rank.
    """
    modules = _modules(list(state), where)
    sprint = any(m.startswith("cfg_embedder") for m in modules)
    mapping = _module_map(_depth(modules, _ORIGINAL_BLOCK), sprint)
    stray = sorted(set(modules) - set(mapping))
    if stray:
        raise InputError(
            f"the LoRA {where} adapts {stray[0]}, which is not a module of the original SANA layout; "
            "convert a SANA LoRA with original keys (blocks.N.attn.qkv.lora_A.weight …) or diffusers keys"
        )
    out: dict[str, Any] = {}
    ranks: dict[str, int] = {}
    for original in modules:
        down, up = state[f"{original}{_A}"].float(), state[f"{original}{_B}"].float()
        rank = down.shape[0]
        alpha = state.get(f"{original}{_ALPHA}")
        scale = 1.0 if alpha is None else float(alpha) / rank
        parts = mapping[original]
        if up.shape[0] % len(parts):
            raise InputError(
                f"the LoRA {where}: {original}{_B} has {up.shape[0]} rows, not {len(parts)} equal parts"
            )
        rows = up.shape[0] // len(parts)
        for index, part in enumerate(parts):
            piece = up[index * rows : (index + 1) * rows] * scale
            used = piece.flatten(1).abs().sum(dim=0) != 0 if len(parts) > 1 else None
            if used is not None:
                if not bool(used.any()):
                    continue  # this part had no adapter
                piece, part_down = piece[:, used], down[used]
            else:
                part_down = down
            out[f"{part}{_A}"] = part_down.contiguous()
            out[f"{part}{_B}"] = piece.contiguous()
            ranks[part] = part_down.shape[0]
    return out, ranks


def _metadata(ranks: dict[str, int]) -> dict[str, Any]:
    """peft's LoraConfig of a converted file: alpha = rank everywhere (the scale is in ``lora_B``)."""
    from collections import Counter

    from peft import LoraConfig

    rank = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {module: r for module, r in ranks.items() if r != rank}
    config = LoraConfig(
        r=rank,
        lora_alpha=rank,
        target_modules=sorted(ranks),
        rank_pattern=pattern,
        alpha_pattern=dict(pattern),
    )
    return config.to_dict()


@dataclass
class LoraConvertResult:
    """What a LoRA conversion wrote."""

    out: Path
    direction: str  # "lora-to-original" or "lora-to-diffusers"
    modules: int
    depth: int
    bytes: int
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.out),
            "direction": self.direction,
            "modules": self.modules,
            "depth": self.depth,
            "bytes": self.bytes,
            "notes": list(self.notes),
        }


def convert_lora(
    src: Path, out: str | os.PathLike, dtype: str | None = None, force: bool = False
) -> LoraConvertResult:
    """Convert a LoRA file either way: diffusers' (a LoRA dir or file) → one original-key ``.safetensors``
    file at ``out``; original keys → a LoRA dir at ``out`` that ``SanaPipeline.load_lora_weights`` reads.
    """
    from safetensors import safe_open

    from sanatool.arch import torch_dtype
    from sanatool.io.outputs import atomic_output_dir, atomic_output_file, give_usual_mode

    file = lora_source(src)
    assert file is not None
    with safe_open(str(file), "pt") as handle:
        metadata = handle.metadata() or {}
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    target = torch_dtype(dtype or "fp32")
    out_path = Path(out).expanduser()
    if all(k.startswith(TRANSFORMER_PREFIX) for k in state):
        converted = lora_to_original(state, metadata, file)
        tensors = {k: v.to(target) if k.endswith((_A, _B)) else v for k, v in converted.items()}
        from safetensors.torch import save_file

        with atomic_output_file(out_path, force=force, inputs=[src]) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt", "sanatool": "original-key SANA LoRA"})
            give_usual_mode(tmp)  # safetensors writes a new file, private (0600)
        modules = {k[: -len(_A)] for k in tensors if k.endswith(_A)}
        direction, depth = "lora-to-original", _depth(sorted(modules), _ORIGINAL_BLOCK)
    else:
        if any(k.startswith(TRANSFORMER_PREFIX) for k in state):
            raise InputError(f"the LoRA {file} mixes diffusers (transformer.…) and other keys")
        converted, ranks = lora_to_diffusers(state, file)
        from diffusers import SanaPipeline

        with atomic_output_dir(out_path, force=force, inputs=[src]) as tmp:
            SanaPipeline.save_lora_weights(
                str(tmp),
                transformer_lora_layers={k: v.to(target) for k, v in converted.items()},
                transformer_lora_adapter_metadata=_metadata(ranks),
            )
            give_usual_mode(tmp / LORA_WEIGHTS_NAME)
        direction, depth = "lora-to-diffusers", _depth(sorted(ranks), _DIFFUSERS_BLOCK)
    written = out_path / LORA_WEIGHTS_NAME if out_path.is_dir() else out_path
    count = sum(k.endswith(_A) for k in converted)
    return LoraConvertResult(out_path, direction, count, depth, written.stat().st_size)
