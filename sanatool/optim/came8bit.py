"""CAME-8bit: CAME with a block-wise dynamic 8-bit first moment (SANA 1.5's memory-saving optimizer).

Same update rule as :class:`~sanatool.optim.came.CAME`; only the storage differs. The first moment
of a tensor of at least ``min_8bit_size`` values is kept as bitsandbytes' block-wise dynamic 8-bit
codes (signed map, blocks of 256, fp32 absmax per block): 1.016 bytes per value instead of 4.
Row/column statistics, 1-D second moments and small tensors stay fp32.

Chunks of the update are whole rows holding whole quantization blocks, so a chunk's moment is
dequantized, updated in fp32 and quantized again exactly as if the whole tensor were. The update
applied to the weights uses the fp32 new moment; only later steps see its 8-bit copy. A step
dequantizes a factored tensor's moment twice when it spans several chunks (once for the instability
statistics, once to update it), once when it fits in one, and quantizes it once. Stacks of small
tensors are quantized row by row, each row as its own tensor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from sanatool.optim.blockwise import BLOCK_SIZE, dequantize_rows, quantize_rows
from sanatool.optim.came import (
    CAME,
    DEFAULT_CHUNK_SIZE,
    base_defaults,
    validate_hyperparameters,
)
from sanatool.optim.layout import StateLayout, state_layout
from sanatool.optim.update import Fp32Moments, Workspace, span, stacked

#: Tensors with at least this many values get an 8-bit first moment by default.
DEFAULT_MIN_8BIT_SIZE = 4096


class Blockwise8bitMoments(Fp32Moments):
    """The first moment as uint8 ``exp_avg`` codes + fp32 ``exp_avg_absmax`` (fp32 states pass through).

    Each row of a stack is quantized as its own tensor, so a stack's codes and absmax are those of
    its members quantized one by one, whatever their sizes.
    """

    def load(self, states: list[dict[str, Any]], lo: int, hi: int, ws: Workspace) -> torch.Tensor:
        """Dequantized values ``[lo, hi)`` of each state, as [B, hi - lo] in scratch (valid until the
        next load)."""
        if states[0]["exp_avg"].dtype != torch.uint8:
            return super().load(states, lo, hi, ws)
        codes, absmax = self._rows(states, lo, hi)
        return dequantize_rows(codes, absmax, ws.take("moment", tuple(codes.shape), absmax))

    def store(
        self, states: list[dict[str, Any]], lo: int, hi: int, values: torch.Tensor, ws: Workspace
    ) -> None:
        """Quantize updated values back into the states' codes and absmax, computing in
        ``values`` itself when it is contiguous (one buffer fewer for the cache to hold)."""
        if states[0]["exp_avg"].dtype != torch.uint8:
            return super().store(states, lo, hi, values, ws)
        codes, absmax = self._rows(states, lo, hi)
        rows = values.flatten(1)
        scratch = rows if rows.is_contiguous() else ws.take("quantize", tuple(rows.shape), rows)
        quantize_rows(rows, codes, absmax, scratch)

    @staticmethod
    def _rows(states: list[dict[str, Any]], lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes ``[lo, hi)`` of each state and the absmax of their blocks, as [B, ...] views."""
        codes = span(stacked(states, "exp_avg").flatten(1), lo, hi)
        return codes, span(stacked(states, "exp_avg_absmax"), lo // BLOCK_SIZE, -(-hi // BLOCK_SIZE))


class CAME8bit(CAME):
    """CAME with an 8-bit block-wise first moment (see the module docstring).

    Args:
        params, lr, betas, eps, clip_threshold, weight_decay, chunk_size: as :class:`CAME`
            (chunks are rounded to whole quantization blocks).
        min_8bit_size: tensors with at least this many values get an 8-bit first moment.

    Example::

        opt = CAME8bit(model.parameters(), lr=1e-4, weight_decay=0.01)
    """

    _required_group_keys = (*CAME._required_group_keys, "min_8bit_size")

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-4,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
        eps: tuple[float, float] = (1e-30, 1e-16),
        clip_threshold: float = 1.0,
        weight_decay: float = 0.0,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        min_8bit_size: int = DEFAULT_MIN_8BIT_SIZE,
    ) -> None:
        defaults = base_defaults(lr, betas, eps, clip_threshold, weight_decay, chunk_size)
        self._init(params, {**defaults, "min_8bit_size": min_8bit_size})

    def _validate_group(self, group: dict[str, Any]) -> None:
        name = type(self).__name__
        validate_hyperparameters(group, name)
        size = group.get("min_8bit_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"{name}: min_8bit_size must be an integer >= 1, got {size!r}")

    def _layout(self, p: torch.Tensor, group: dict[str, Any]) -> StateLayout:
        return state_layout(tuple(p.shape), quantized=p.numel() >= group["min_8bit_size"])

    def _moments(self) -> Blockwise8bitMoments:
        return Blockwise8bitMoments()

    def _row_alignment(self, cols: int) -> int:
        # Rows whose values fill whole quantization blocks: chunked quantization then stores exactly
        # what quantizing the whole tensor at once would.
        return BLOCK_SIZE // math.gcd(cols, BLOCK_SIZE)
