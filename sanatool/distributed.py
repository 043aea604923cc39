"""This process's place in a ``torchrun`` run: rank, world size, device, and the few collectives used.

One context for every command that runs under ``torchrun`` (training, sampling, importance):
``torch.distributed`` with gloo on CPU and NCCL on CUDA. Outside ``torchrun`` (no ``WORLD_SIZE``)
everything here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


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

    def all_reduce_sum(self, tensor: Any) -> Any:
        """Sum a tensor over ranks in place (a no-op in a single process); returns it."""
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

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


def setup_distributed(device: str | Any = "auto") -> DistContext:
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
