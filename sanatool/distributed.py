"""This process's place in a ``torchrun`` run: rank, world size, device, and the few collectives used.

:func:`resolve_device` turns ``--device`` into a torch device (``cuda:LOCAL_RANK`` under ``torchrun``).

One context for every command that runs under ``torchrun`` (training, sampling, importance):
``torch.distributed`` with gloo on CPU and NCCL on CUDA. Outside ``torchrun`` (no ``WORLD_SIZE``)
everything here is a no-op.
"""

from __future__ import annotations

import os
import time
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

    def __enter__(self) -> DistContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def share(self, count: int) -> list[int]:
        """The items (of ``count``) this rank handles: round-robin, equal work ± one item."""
        return list(range(self.rank, count, self.world_size))

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


def resolve_device(device: str | Any = "auto") -> Any:
    """``auto`` → CUDA when available, else CPU; under ``torchrun`` a CUDA device is ``cuda:LOCAL_RANK``."""
    import torch

    name = str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise InputError("--device cuda was asked for but no CUDA device is available; use --device cpu")
        name = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    try:
        target = torch.device(name)
    except RuntimeError as err:
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from err
    if target.type == "cuda" and (target.index or 0) >= torch.cuda.device_count():
        raise InputError(
            f"--device {device}: no such CUDA device ({torch.cuda.device_count()} available); use --device cpu"
        )
    return target


def is_main_process() -> bool:
    """Whether this process is rank 0 of its ``torchrun`` run (always, outside ``torchrun``).

    For the CLI, which prints results only once, after the library has closed its context.
    """
    return int(os.environ.get("RANK", "0")) == 0


def setup_distributed(device: str | Any = "auto") -> DistContext:
    """Join the ``torchrun`` process group if there is one; pick this rank's device.

    gloo on CPU, NCCL on CUDA (``cuda:LOCAL_RANK``). Without ``torchrun`` returns a single-process
    context. Use it as a context manager: leaving it tears down a process group it created.
    """
    import torch
    import torch.distributed as dist

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


#: Environment variables that already fix the CPU thread count; when one is set it is obeyed.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _busy_elsewhere() -> int:
    """How many CPUs other processes keep busy now: the runnable tasks of ``/proc/loadavg`` less this one.

    Instantaneous on purpose: the load average remembers the last minute, so in a shell chain of
    sanatool commands it would count the command that just ended as a competitor and halve the
    next one's threads. Two readings a few milliseconds apart, the smaller kept, so a passing blip
    does not count; a process that computes is runnable in both.
    """
    readings = []
    for attempt in range(2):
        if attempt:
            time.sleep(0.003)
        try:
            with open("/proc/loadavg", encoding="ascii") as handle:
                readings.append(int(handle.read().split()[3].split("/")[0]) - 1)
        except (OSError, ValueError, IndexError):
            return 0
    return max(0, min(readings))


def choose_cpu_threads() -> int:
    """The CPU thread count for this process's torch work: ``OMP_NUM_THREADS`` when set, else the
    CPUs this process may use minus those other processes keep busy now (at least 1).

    torch's default, one thread per CPU, oversubscribes a busy machine: its OpenMP threads spin
    waiting for each other while the kernel runs another process on their core; on 2 CPUs with one
    other busy process `sanatool demo --quick` ran 3-4x slower with 2 threads than with 1
    (benchmarks/demo_time.py).
    """
    for name in THREAD_ENV_VARS:
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, cpus - _busy_elsewhere()))


def apply_cpu_threads() -> int:
    """Give torch :func:`choose_cpu_threads` threads, by setting ``OMP_NUM_THREADS`` before torch is
    imported (commands import it lazily); return the count.

    Where torch is already imported (a notebook, the tests) its thread count was chosen there and
    is left as it is.
    """
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        return int(torch.get_num_threads())
    threads = choose_cpu_threads()
    os.environ["OMP_NUM_THREADS"] = str(threads)
    return threads
