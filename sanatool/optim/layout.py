"""What CAME and CAME8bit store per parameter: the one description used to allocate the state,
to check a loaded state dict, and to count optimizer memory without allocating anything."""

from __future__ import annotations

import math

import torch

from sanatool.optim.blockwise import num_blocks

#: ``state key -> (shape, dtype)`` for one parameter.
StateLayout = dict[str, tuple[tuple[int, ...], torch.dtype]]

_F32 = torch.float32


def factored_dims(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """``(rows, cols)`` of the matrix a parameter of ``shape`` is factored as, or None (< 2 dims).

    A conv weight ``[out, in, kh, kw]`` is the matrix ``[out, in·kh·kw]``.
    """
    if len(shape) < 2:
        return None
    return shape[0], math.prod(shape[1:])


def state_layout(shape: tuple[int, ...], quantized: bool = False) -> StateLayout:
    """The optimizer state of one parameter of ``shape``: key -> (shape, dtype).

    ``quantized`` stores the first moment as block-wise 8-bit codes plus one fp32 absmax per block
    (CAME8bit's large tensors). ≥ 2-D parameters keep row and column vectors of the second moment
    and of the instability; 1-D (and 0-D) parameters keep a full fp32 second moment.
    """
    shape = tuple(int(d) for d in shape)
    layout: StateLayout = {"step": ((), _F32)}
    if quantized:
        layout["exp_avg"] = (shape, torch.uint8)
        layout["exp_avg_absmax"] = ((num_blocks(math.prod(shape)),), _F32)
    else:
        layout["exp_avg"] = (shape, _F32)
    dims = factored_dims(shape)
    if dims is None:
        layout["exp_avg_sq"] = (shape, _F32)
    else:
        rows, cols = dims
        layout["exp_avg_sq_row"] = ((rows,), _F32)
        layout["exp_avg_sq_col"] = ((cols,), _F32)
        layout["exp_avg_res_row"] = ((rows,), _F32)
        layout["exp_avg_res_col"] = ((cols,), _F32)
    return layout


def layout_bytes(layout: StateLayout) -> int:
    """Bytes a state of this layout holds."""
    return sum(
        math.prod(shape) * torch.empty((), dtype=dtype).element_size() for shape, dtype in layout.values()
    )
