"""Build an optimizer by name (``train``/``finetune --optimizer``) and count optimizer-state memory."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from sanatool.errors import InputError
from sanatool.optim.blockwise import num_blocks
from sanatool.optim.came import CAME
from sanatool.optim.came8bit import DEFAULT_MIN_8BIT_SIZE, CAME8bit
from sanatool.optim.layout import layout_bytes, state_layout
from sanatool.optim.names import OPTIMIZER_NAMES

#: The names ``build_optimizer`` accepts, the recommended one first.

# bitsandbytes' AdamW8bit keeps fp32 state for tensors below this size and blocks of 256 values
# (one fp32 absmax per block and state) above it, plus two 256-entry fp32 maps shared by all.
_BNB_MIN_8BIT_SIZE = 4096
_BNB_SHARED_MAP_BYTES = 2 * 256 * 4


def _check_name(name: str) -> str:
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in OPTIMIZER_NAMES:
        raise InputError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZER_NAMES)}")
    return key


def build_optimizer(
    name: str, params: Iterable[Any], lr: float, weight_decay: float = 0.0, **kwargs: Any
) -> torch.optim.Optimizer:
    """The optimizer ``name`` (one of :data:`OPTIMIZER_NAMES`) over ``params``.

    ``came8bit``/``came``: :class:`~sanatool.optim.CAME8bit` / :class:`~sanatool.optim.CAME`;
    ``adamw``: ``torch.optim.AdamW`` (foreach); ``adamw8bit``: ``bitsandbytes.optim.AdamW8bit``.
    ``weight_decay`` is decoupled for all four; ``kwargs`` go to the optimizer (e.g. ``betas``).

    Raises:
        InputError: an unknown name, lr <= 0, weight_decay < 0, no parameters, or options the
            optimizer refuses.

    Example::

        opt = build_optimizer("came8bit", model.parameters(), lr=1e-4, weight_decay=0.01)
    """
    key = _check_name(name)
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) or lr <= 0:
        raise InputError(f"optimizer {key}: the learning rate must be a finite number > 0, got {lr!r}")
    if (
        not isinstance(weight_decay, (int, float))
        or isinstance(weight_decay, bool)
        or not math.isfinite(weight_decay)
        or weight_decay < 0
    ):
        raise InputError(f"optimizer {key}: weight_decay must be a finite number >= 0, got {weight_decay!r}")
    params = list(params)
    try:
        if key == "came8bit":
            return CAME8bit(params, lr=lr, weight_decay=weight_decay, **kwargs)
        if key == "came":
            return CAME(params, lr=lr, weight_decay=weight_decay, **kwargs)
        if key == "adamw":
            return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **{"foreach": True, **kwargs})
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay, **kwargs)
    except (ValueError, TypeError) as err:
        raise InputError(f"cannot build optimizer {key}: {err}") from err


def estimate_state_bytes(
    name: str, shapes: Iterable[tuple[int, ...]], *, param_dtype: torch.dtype = torch.float32
) -> int:
    """Exact optimizer-state bytes after the first step, for trained parameters of ``shapes``.

    Counts what :func:`optimizer_state_bytes` measures on the real optimizer (built with default
    options by :func:`build_optimizer`), without allocating anything, so it works for
    multi-billion-parameter shapes. ``param_dtype`` matters only for ``adamw``, whose moments take
    the parameter dtype; CAME's state is always fp32 and AdamW8bit's fp32/uint8.

    Raises:
        InputError: an unknown name or a shape that is not a tuple of non-negative integers.
    """
    key = _check_name(name)
    total = 0
    any_8bit = False
    for shape in shapes:
        try:
            dims = tuple(int(d) for d in shape)
        except (TypeError, ValueError) as err:
            raise InputError(f"estimate_state_bytes: shape {shape!r} is not a tuple of integers") from err
        if any(d < 0 for d in dims):
            raise InputError(f"estimate_state_bytes: shape {dims} has a negative dimension")
        numel = math.prod(dims)
        if key == "adamw":
            # exp_avg and exp_avg_sq in the param dtype, plus a 0-dim fp32 step tensor.
            total += 2 * numel * torch.empty((), dtype=param_dtype).element_size() + 4
        elif key == "adamw8bit":
            if numel >= _BNB_MIN_8BIT_SIZE:
                total += 2 * numel + 2 * 4 * num_blocks(numel)
                any_8bit = True
            else:
                total += 2 * 4 * numel
        elif numel:  # CAME keeps no state for empty parameters
            total += layout_bytes(
                state_layout(dims, quantized=key == "came8bit" and numel >= DEFAULT_MIN_8BIT_SIZE)
            )
    return total + (_BNB_SHARED_MAP_BYTES if any_8bit else 0)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the tensors an optimizer holds in its state (tensors shared by several parameters,
    like bitsandbytes' quantization maps, counted once)."""
    seen: set[tuple[str, int]] = set()
    total = 0

    def visit(value: Any) -> None:
        nonlocal total
        if isinstance(value, torch.Tensor):
            key = (str(value.device), value.data_ptr())
            if key not in seen:
                seen.add(key)
                total += value.numel() * value.element_size()
        elif isinstance(value, dict):
            for v in value.values():
                visit(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                visit(v)

    for state in optimizer.state.values():
        visit(state)
    return total
