"""Training under ``torchrun``: DDP or FSDP2 wrapping, full state dicts for checkpoints.

Nothing home-made: ``torch.distributed`` with gloo on CPU and NCCL on GPU, ``DistributedDataParallel``
for models that fit one device, FSDP2's ``fully_shard`` (one unit per transformer block, then the
root) for models that do not. Outside ``torchrun`` (no ``WORLD_SIZE``) everything here is a no-op.
"""

from __future__ import annotations

from typing import Any

from sanatool.distributed import DistContext
from sanatool.errors import InputError


def wrap_model(model: Any, ctx: DistContext, fsdp: bool) -> Any:
    """DDP (default) or FSDP2 around the transformer; the model itself in a single process.

    FSDP2 shards each transformer block as its own unit, so only one block's full weights exist at
    a time during forward and backward.
    """
    if fsdp and not ctx.distributed:
        raise InputError("--fsdp shards the model across processes; run under torchrun --nproc-per-node N")
    if not ctx.distributed:
        return model
    if fsdp:
        import warnings

        from torch.distributed.fsdp import fully_shard

        # diffusers returns the output as a view; the loss only reads it (no in-place op), which is
        # exactly the case FSDP2's warning says is safe.
        warnings.filterwarnings("ignore", message=".*returned a view tensor.*")

        for block in model.transformer_blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def full_state_dict(model: Any, ctx: DistContext, fsdp: bool) -> dict[str, Any]:
    """The unsharded fp32 state dict on CPU (every rank must call it; only rank 0 gets tensors back for FSDP)."""
    if fsdp and ctx.distributed:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(model, options=options)
    inner = model.module if hasattr(model, "module") else model
    return {name: tensor.detach().cpu() for name, tensor in inner.state_dict().items()}


def full_optimizer_state(model: Any, optimizer: Any, ctx: DistContext, fsdp: bool) -> dict[str, Any]:
    """The optimizer's state dict, unsharded for FSDP (every rank must call it)."""
    if fsdp and ctx.distributed:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(model, optimizer, options=options)
    return optimizer.state_dict()


def load_optimizer_state(
    model: Any, optimizer: Any, state: dict[str, Any], ctx: DistContext, fsdp: bool
) -> None:
    """Load a full optimizer state dict (resharding it under FSDP)."""
    if fsdp and ctx.distributed:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
        set_optimizer_state_dict(model, optimizer, state, options=options)
        return
    optimizer.load_state_dict(state)
