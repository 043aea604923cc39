"""Block-wise dynamic 8-bit storage for optimizer moments, on bitsandbytes' quantizer.

A tensor is split (flattened, row-major) into blocks of :data:`BLOCK_SIZE` values; each block keeps
one fp32 absmax and one uint8 code per value, indexing bitsandbytes' signed dynamic map (a
sign bit, a unary exponent, a linear fraction: fine steps near zero, coarse near ±1). That costs
``1 + 4 / 256`` bytes per value.

bitsandbytes is imported on first use, so importing :mod:`sanatool.optim` stays light.
"""

from __future__ import annotations

import torch

#: Values per quantization block (one fp32 absmax each).
BLOCK_SIZE = 256

_CODES: dict[torch.device, torch.Tensor] = {}


def num_blocks(numel: int) -> int:
    """How many absmax values a tensor of ``numel`` values needs (the last block may be partial)."""
    return -(-numel // BLOCK_SIZE)


def dynamic_code(device: torch.device) -> torch.Tensor:
    """The signed dynamic 8-bit map (256 fp32 values in [-1, 1]) on ``device``, built once per device."""
    code = _CODES.get(device)
    if code is None:
        import bitsandbytes.functional as bnbf

        code = _CODES[device] = bnbf.create_dynamic_map(signed=True).to(device)
    return code


def quantize_into(values: torch.Tensor, codes_out: torch.Tensor, absmax_out: torch.Tensor) -> None:
    """Quantize fp32 ``values`` (contiguous; its length a multiple of :data:`BLOCK_SIZE` unless it
    ends the tensor) into the uint8 slice ``codes_out`` and the fp32 slice ``absmax_out``."""
    import bitsandbytes.functional as bnbf

    bnbf.quantize_blockwise(
        values.reshape(-1),
        code=dynamic_code(values.device),
        absmax=absmax_out,
        out=codes_out,
        blocksize=BLOCK_SIZE,
    )


def quantize(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize fp32 ``values`` into new flat tensors: uint8 codes and fp32 absmax per block."""
    import bitsandbytes.functional as bnbf

    codes, quant_state = bnbf.quantize_blockwise(
        values.reshape(-1), code=dynamic_code(values.device), blocksize=BLOCK_SIZE
    )
    return codes, quant_state.absmax


def dequantize(codes: torch.Tensor, absmax: torch.Tensor) -> torch.Tensor:
    """The fp32 values of a uint8 slice ``codes`` and its blocks' ``absmax`` (a new flat tensor)."""
    import bitsandbytes.functional as bnbf

    return bnbf.dequantize_blockwise(
        codes.reshape(-1), absmax=absmax, code=dynamic_code(codes.device), blocksize=BLOCK_SIZE
    )
