"""Running under ``torchrun``: process group, device per rank, DDP or FSDP2 wrapping, reductions.

Nothing home-made: ``torch.distributed`` with gloo on CPU and NCCL on GPU, ``DistributedDataParallel``
for models that fit one device, FSDP2's ``fully_shard`` (one unit per transformer block, then the
root) for models that do not. Outside ``torchrun`` (no ``WORLD_SIZE``) everything here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from sanatool.errors import InputError


@dataclass
class DistContext:
    """This process's place in the run: rank, world size, device."""

    rank: int
    world_size: int
    device: Any
    initialised_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        """Wait for every rank (no-op in a single process)."""
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def mean(self, value: float) -> float:
        """The mean of a float over all ranks (the value itself in a single process)."""
        if not self.distributed:
            return value
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world_size

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's value on every rank."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _comm_device(self) -> Any:
        return self.device if self.device.type == "cuda" else "cpu"

    def close(self) -> None:
        """Tear the process group down if this context created it."""
        if self.initialised_here:
            import torch.distributed as dist

            dist.destroy_process_group()


def setup_distributed(device: str = "auto") -> DistContext:
    """Join the ``torchrun`` process group if there is one; pick this rank's device.

    gloo on CPU, NCCL on CUDA (``cuda:LOCAL_RANK``). Without ``torchrun`` returns a single-process context.
    """
    import torch
    import torch.distributed as dist

    from sanatool.pipeline import resolve_device

    target = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(0, 1, target)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if target.type == "cuda" else "gloo")
        created = True
    return DistContext(dist.get_rank(), dist.get_world_size(), target, created)


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
