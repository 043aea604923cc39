"""Block-wise dynamic 8-bit storage for optimizer moments, on bitsandbytes' quantizer.

A tensor is split (flattened, row-major) into blocks of :data:`BLOCK_SIZE` values; each block keeps
one fp32 absmax and one uint8 code per value, indexing bitsandbytes' signed dynamic map (a
sign bit, a unary exponent, a linear fraction: fine steps near zero, coarse near ±1). That costs
``1 + 4 / 256`` bytes per value.

Quantizing fp32 on CPU does not call bitsandbytes at every step, and why: bitsandbytes 0.50's CPU
kernel (``quantize_cpu`` in ``libbitsandbytes_cpu``) is built so that it calls ``std::fabs``,
``std::max`` and ``std::clamp`` out of line for every value, with no vector path: about 8 ns a
value, more than a whole AdamW step, and no other bitsandbytes entry point quantizes on CPU (its
pure-torch "default" kernel rounds differently, and torch's ``bucketize`` is as slow). That
kernel's rule is not nearest-value but a table over 65536 bins of [−1, 1]: bin
``i = trunc(fp32(65535 · (clamp(x · (1/absmax), −1, 1) + 1) / 2 + 0.5))``, code ``table[i]``.
:class:`CpuQuantizer` applies the same rule with vectorised torch ops (about 2 ns a value), on a
table read out of bitsandbytes' own quantizer, and :func:`cpu_quantizer` checks it against
bitsandbytes before first use: the codes and absmax are bit for bit what bitsandbytes writes, and
if that check fails (another bitsandbytes version, another rule) every call goes to bitsandbytes.
CUDA tensors always go to bitsandbytes.

bitsandbytes is imported on first use, so importing :mod:`sanatool.optim` stays light.
"""

from __future__ import annotations

import functools

import torch

from sanatool.optim.update import Workspace

#: Values per quantization block (one fp32 absmax each).
BLOCK_SIZE = 256

_CODES: dict[torch.device, torch.Tensor] = {}

# bitsandbytes' CPU table: 65536 bins over [-1, 1]; bin i holds the values that round to
# -1 + i / 32767.5.
_BINS = 65536
_HALF_SPAN = (_BINS - 1) / 2


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


def _bin_index(scaled: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """bitsandbytes' bin of each finite normalized fp32 value, into int32 ``out`` (``scaled`` is
    overwritten).

    bitsandbytes computes ``65535 · ((clamp(y, −1, 1) + 1) / 2) + 0.5`` in one fused multiply-add;
    rounding the product to fp32 before adding 0.5 gives the same bin for every fp32 ``y`` in
    [-1, 1] (checked for all 2³¹ of them), and the halving is exact, so this is
    ``(y + 1) · 32767.5 + 0.5``. The clamp is left out: ``|x · (1 / absmax)| <= 1`` in fp32 (up to
    1 + 3e-7 when 1 / absmax is subnormal, absmax >= 2^126), and anything within 1.5e-5 of ±1 is
    in an end bin anyway.
    """
    scaled.add_(1.0).mul_(_HALF_SPAN).add_(0.5)
    return out.copy_(scaled)  # float to int32 truncates, as C's cast does


class CpuQuantizer:
    """bitsandbytes' CPU block-wise quantization of fp32 values, as vectorised torch ops.

    ``table`` (65536 uint8 codes) maps each bin to its code; :func:`cpu_quantizer` builds it.
    """

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table

    def quantize_into(
        self, values: torch.Tensor, codes_out: torch.Tensor, absmax_out: torch.Tensor, ws: Workspace
    ) -> None:
        """Quantize fp32 ``values`` into flat contiguous uint8 ``codes_out`` and fp32 ``absmax_out``
        (one absmax per block of :data:`BLOCK_SIZE`; the last block may be partial), with scratch
        from ``ws``."""
        flat = values.reshape(-1)
        numel = flat.numel()
        full = numel - numel % BLOCK_SIZE
        if full:
            blocks = full // BLOCK_SIZE
            x = flat[:full].view(blocks, BLOCK_SIZE)
            self._blocks(x, codes_out[:full], absmax_out[:blocks], ws)
        if full < numel:
            self._blocks(flat[full:].view(1, -1), codes_out[full:], absmax_out[-1:], ws)

    def _blocks(
        self, x: torch.Tensor, codes_out: torch.Tensor, absmax_out: torch.Tensor, ws: Workspace
    ) -> None:
        # max |x| of each block from its max and min: two fast reductions and no |x| temporary;
        # abs_() makes an all-zero block's absmax +0, as bitsandbytes' max(0, ·) does.
        torch.maximum(x.amax(dim=1).abs_(), x.amin(dim=1).abs_(), out=absmax_out)
        nan = absmax_out.isnan()
        if nan.any():  # bitsandbytes' absmax skips NaN values (a NaN value itself gets code 0)
            rows = x[nan]
            absmax_out[nan] = torch.where(rows.isnan(), 0.0, rows.abs()).amax(dim=1)
        # x · (1 / absmax), not x / absmax: the same two roundings as bitsandbytes.
        inverse = absmax_out.reciprocal()
        scaled = torch.mul(x, inverse.unsqueeze(1), out=ws.take("quantize", tuple(x.shape), x))
        if nan.any() or not (torch.isfinite(absmax_out).all() and torch.isfinite(inverse).all()):
            # NaN values, ∞ (then absmax = ∞ and ∞ · 0 = NaN), an all-zero block (0 · ∞) or a
            # subnormal absmax (1 / absmax = ∞): NaN goes to bin 0 and ±∞ to the end bins, as in
            # bitsandbytes' clamp and float-to-int conversion. Finite blocks skip this pass.
            scaled.nan_to_num_(nan=-1.0, posinf=1.0, neginf=-1.0)
        index = _bin_index(scaled, ws.take("quantize_bin", tuple(x.shape), x, torch.int32))
        torch.index_select(self.table, 0, index.view(-1), out=codes_out)


def _bnb_quantize(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    import bitsandbytes.functional as bnbf

    codes, state = bnbf.quantize_blockwise(values, code=dynamic_code(values.device), blocksize=BLOCK_SIZE)
    return codes, state.absmax


def _unit_codes(values: torch.Tensor) -> torch.Tensor:
    """bitsandbytes' codes of fp32 values in [-1, 1] themselves: quantized in blocks of 255, each led
    by a 1.0, so that absmax is 1 and x · (1 / absmax) = x."""
    per = BLOCK_SIZE - 1
    padded = torch.zeros(-(-values.numel() // per) * per)
    padded[: values.numel()] = values
    blocks = padded.view(-1, per)
    led = torch.cat([torch.ones(blocks.shape[0], 1), blocks], dim=1)
    codes = _bnb_quantize(led.view(-1))[0].view(-1, BLOCK_SIZE)[:, 1:]
    return codes.reshape(-1)[: values.numel()]


def _with_neighbours(values: torch.Tensor, steps: int) -> torch.Tensor:
    """``values`` and the ``steps`` nearest fp32 values on each side of each."""
    out, up, down = [values], values, values
    for _ in range(steps):
        up, down = torch.nextafter(up, torch.tensor(2.0)), torch.nextafter(down, torch.tensor(-2.0))
        out += [up, down]
    return torch.cat(out)


def quantizer_probes() -> list[torch.Tensor]:
    """fp32 CPU tensors on which :class:`CpuQuantizer` must equal bitsandbytes, each quantized whole.

    The first holds values in [-1, 1], to be quantized as they are (absmax 1): every bin edge, every
    code and every midpoint between two codes (the ties of a nearest-value rule), each with its two
    fp32 neighbours on both sides. The others: normal values over seven decades with outliers, an
    all-zero block, a partial last block, and NaN, ±∞, ±0, a subnormal absmax and one whose inverse
    is subnormal.
    """
    code = dynamic_code(torch.device("cpu"))
    edges = ((torch.arange(1, _BINS, dtype=torch.float64) - 0.5) / _HALF_SPAN - 1.0).float()
    midpoints = (code[1:] + code[:-1]) / 2
    generator = torch.Generator().manual_seed(0)
    spread = torch.randn(64, BLOCK_SIZE, generator=generator) * torch.logspace(-6, 1, 64).unsqueeze(1)
    spread[::7, 3] *= 1e4
    nan, inf = float("nan"), float("inf")
    return [
        _with_neighbours(torch.cat([edges, code, midpoints]), 2).clamp_(-1.0, 1.0),
        spread.view(-1),
        torch.zeros(BLOCK_SIZE),
        torch.randn(3 * BLOCK_SIZE + 77, generator=generator),
        torch.tensor([nan, 0.5, -2.0]),
        torch.tensor([nan, nan]),
        torch.tensor([inf, 1.0, -0.0, nan]),
        torch.tensor([-inf, 0.25]),
        torch.tensor([1e-40, -1e-41, 0.0]),
        torch.tensor([-3.3e38, 3.2e38, 1e-3]),
        torch.tensor([-0.0, 0.0]),
    ]


@functools.cache
def cpu_quantizer() -> CpuQuantizer | None:
    """The torch quantizer for fp32 CPU tensors, or None where it would not match bitsandbytes.

    Its table is bitsandbytes' code for the centre of each bin. Before use, it must give the same
    codes as bitsandbytes for the values of the first :func:`quantizer_probes` tensor (absmax 1),
    and the same codes and absmax (as bits) for every probe tensor quantized whole.
    """
    centres = (torch.arange(_BINS, dtype=torch.float64) / _HALF_SPAN - 1.0).float()
    bins = torch.arange(_BINS, dtype=torch.int32)
    if not torch.equal(_bin_index(centres.clone(), torch.empty_like(bins)), bins):
        return None
    quantizer = CpuQuantizer(_unit_codes(centres))
    probes = quantizer_probes()
    unit = probes[0]
    unit_bins = _bin_index(unit.clone(), torch.empty(unit.shape, dtype=torch.int32))
    if not torch.equal(quantizer.table[unit_bins], _unit_codes(unit)):
        return None
    ws = Workspace()
    for values in probes:
        codes = torch.empty(values.numel(), dtype=torch.uint8)
        absmax = torch.empty(num_blocks(values.numel()))
        quantizer.quantize_into(values, codes, absmax, ws)
        ref_codes, ref_absmax = _bnb_quantize(values)
        same_absmax = torch.equal(absmax.view(torch.int32), ref_absmax.view(torch.int32))
        if not (same_absmax and torch.equal(codes, ref_codes)):
            return None
    return quantizer


def _fast_path(values: torch.Tensor) -> CpuQuantizer | None:
    if values.device.type != "cpu" or values.dtype != torch.float32:
        return None
    return cpu_quantizer()


def quantize_into(
    values: torch.Tensor, codes_out: torch.Tensor, absmax_out: torch.Tensor, ws: Workspace | None = None
) -> None:
    """Quantize fp32 ``values`` (contiguous; its length a multiple of :data:`BLOCK_SIZE` unless it
    ends the tensor) into the uint8 slice ``codes_out`` and the fp32 slice ``absmax_out``.

    ``ws`` lends scratch to the CPU path (fresh multi-megabyte tensors cost page faults there).
    """
    quantizer = _fast_path(values)
    if quantizer is not None:
        quantizer.quantize_into(values, codes_out.view(-1), absmax_out, ws if ws is not None else Workspace())
        return
    import bitsandbytes.functional as bnbf

    bnbf.quantize_blockwise(
        values.reshape(-1),
        code=dynamic_code(values.device),
        absmax=absmax_out,
        out=codes_out,
        blocksize=BLOCK_SIZE,
    )


def quantize(values: torch.Tensor, ws: Workspace | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize fp32 ``values`` into new flat tensors: uint8 codes and fp32 absmax per block."""
    if _fast_path(values) is None:
        return _bnb_quantize(values.reshape(-1))
    codes = torch.empty(values.numel(), dtype=torch.uint8)
    absmax = torch.empty(num_blocks(values.numel()))
    quantize_into(values, codes, absmax, ws)
    return codes, absmax


def dequantize(codes: torch.Tensor, absmax: torch.Tensor) -> torch.Tensor:
    """The fp32 values of a uint8 slice ``codes`` and its blocks' ``absmax`` (a new flat tensor)."""
    import bitsandbytes.functional as bnbf

    return bnbf.dequantize_blockwise(
        codes.reshape(-1), absmax=absmax, code=dynamic_code(codes.device), blocksize=BLOCK_SIZE
    )
