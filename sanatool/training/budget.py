"""The memory budget of a training run (``--dry-run``): weights, gradients, optimizer state, activations.

Weights, gradients and EMA follow from the parameter shapes; optimizer state comes from the
optimizers' own :func:`sanatool.optim.estimate_state_bytes`. Activations are *measured*, not
guessed: the transformer runs one forward pass on PyTorch's ``meta`` device (shapes only, no
memory, well under a second even for 4.8B) at the requested batch, latent size and caption
length, and every tensor autograd saves for the backward pass is counted once. With gradient
checkpointing only each block's input is kept, plus one block's activations while it is
recomputed. Transient buffers (attention scores, optimizer temporaries) and the CUDA context add
roughly 1–2 GB on a GPU; the table says so rather than pretending to be exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: GPU sizes the dry run reports a fit for (GB, decimal, as GPUs are sold).
GPU_SIZES_GB = (24, 48, 80)
#: Headroom left for the CUDA context, allocator fragmentation and transient buffers.
OVERHEAD_BYTES = int(1.5e9)


@dataclass
class Budget:
    """A memory budget per device, in bytes, with the settings it was computed for."""

    rows: dict[str, int]
    settings: dict[str, Any]

    @property
    def total(self) -> int:
        return sum(self.rows.values())

    def fits(self) -> dict[str, bool]:
        """For each GPU size: does the total plus overhead fit?"""
        return {f"{size}GB": self.total + OVERHEAD_BYTES <= size * 10**9 for size in GPU_SIZES_GB}

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form: rows, total, overhead allowance and fit per GPU size."""
        return {
            "settings": self.settings,
            "bytes": dict(self.rows),
            "total_bytes": self.total,
            "overhead_allowance_bytes": OVERHEAD_BYTES,
            "fits": self.fits(),
        }


def _saved_activation_bytes(
    config: dict[str, Any], batch: int, side: int, text_len: int, dtype: Any, checkpointing: bool
) -> int:
    """Bytes autograd saves in one forward pass of the transformer, measured on the meta device."""
    import torch

    from sanatool.surgery.initialize import build_meta_transformer

    model = build_meta_transformer(config).to(dtype)
    if checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    param_ids = {id(p) for p in model.parameters()}
    saved: dict[int, int] = {}
    keep: list[Any] = []

    def pack(tensor: Any) -> Any:
        base = tensor._base if tensor._base is not None else tensor
        if id(base) not in param_ids:  # weights (and their transposed views) are not activations
            saved[id(base)] = max(saved.get(id(base), 0), base.numel() * base.element_size())
            keep.append(base)  # hold a reference so ids stay unique during the pass
        return tensor

    hidden = torch.empty(batch, int(config["in_channels"]), side, side, device="meta", dtype=dtype)
    text = torch.empty(batch, text_len, int(config["caption_channels"]), device="meta", dtype=dtype)
    mask = torch.ones(batch, text_len, device="meta")
    timestep = torch.ones(batch, device="meta")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(hidden, encoder_hidden_states=text, timestep=timestep, encoder_attention_mask=mask)
    return sum(saved.values())


def activation_bytes(
    config: dict[str, Any], batch: int, side: int, text_len: int, dtype: Any, checkpointing: bool
) -> int:
    """Peak activation memory of one micro-batch's forward + backward (see the module docstring)."""
    full = _saved_activation_bytes(config, batch, side, text_len, dtype, checkpointing=False)
    if not checkpointing:
        return full
    # With checkpointing the hooks see only what lives outside the blocks.
    outside = _saved_activation_bytes(config, batch, side, text_len, dtype, checkpointing=True)
    layers = int(config["num_layers"])
    patch = int(config.get("patch_size", 1))
    tokens = (side // patch) ** 2
    width = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    element = dtype.itemsize
    block_inputs = layers * batch * tokens * width * element
    one_block = max(0, full - outside) // layers
    return outside + block_inputs + one_block


def memory_budget(
    config: dict[str, Any],
    batch_size: int,
    optimizer: str,
    precision: str = "bf16",
    grad_checkpointing: bool = False,
    ema: bool = False,
    latent_side: int | None = None,
    text_len: int = 300,
    shards: int = 1,
    encoders_bytes: int | None = None,
) -> Budget:
    """The per-device memory of training ``config`` with the given settings.

    ``latent_side`` defaults to the config's ``sample_size``; ``shards`` > 1 divides weights,
    gradients, optimizer state and EMA (FSDP over that many devices). Master weights and
    gradients are fp32; ``bf16`` precision adds the bf16 weight copies autocast keeps during the
    forward pass and halves the activations. ``encoders_bytes`` (text encoder + VAE) is reported
    as the separate, earlier cache phase, not added to the training total.
    """
    import torch

    from sanatool.optim import estimate_state_bytes
    from sanatool.surgery.initialize import build_meta_transformer

    model = build_meta_transformer(config)
    shapes = [tuple(p.shape) for p in model.parameters()]
    params = sum(math.prod(shape) for shape in shapes)
    side = int(latent_side or config.get("sample_size") or 32)
    act_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    rows = {
        "weights (fp32 master)": params * 4 // shards,
        "gradients (fp32)": params * 4 // shards,
        f"optimizer state ({optimizer})": int(estimate_state_bytes(optimizer, shapes)) // shards,
    }
    if precision == "bf16":
        rows["weights (bf16 autocast copies)"] = params * 2
    if ema:
        rows["EMA weights (fp32)"] = params * 4 // shards
    rows["activations"] = activation_bytes(config, batch_size, side, text_len, act_dtype, grad_checkpointing)
    settings = {
        "params": params,
        "batch_size": batch_size,
        "latent_side": side,
        "text_len": text_len,
        "optimizer": optimizer,
        "precision": precision,
        "grad_checkpointing": grad_checkpointing,
        "ema": ema,
        "shards": shards,
    }
    if encoders_bytes is not None:
        settings["cache_phase_encoders_bytes"] = encoders_bytes
    return Budget(rows, settings)
