"""Block-wise dynamic 8-bit storage for optimizer moments, on bitsandbytes' quantizer.

A tensor is split (flattened, row-major) into blocks of :data:`BLOCK_SIZE` values; each block keeps
one fp32 absmax and one uint8 code per value, indexing bitsandbytes' signed dynamic map (a
sign bit, a unary exponent, a linear fraction: fine steps near zero, coarse near ±1). That costs
``1 + 4 / 256`` bytes per value. A stack of tensors is quantized row by row: each row's blocks
start with it, so its codes and absmax are those of the tensor quantized alone.

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
CUDA tensors always go to bitsandbytes, and dequantizing always does (its CPU kernel is fast). On
CPU that kernel is called straight, as bitsandbytes' own CPU backend calls it, so that it writes into
scratch the caller lends: bitsandbytes' CPU op has no ``out=`` variant, and a fresh multi-megabyte
tensor at every call costs page faults (about 8 % of a CAME8bit step on the tiny preset). That call
too is checked against bitsandbytes' op before first use, and skipped if it differs.

bitsandbytes is imported on first use, so importing :mod:`sanatool.optim` stays light.
"""

from __future__ import annotations

import ctypes
import functools
import math
from collections.abc import Callable

import torch

from sanatool.optim.update import scalar

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


def _fine_index(scaled: torch.Tensor) -> torch.Tensor:
    """The half-bin ``j = trunc(fl(fl(y + 1) · 65535))`` of each normalized fp32 value ``y`` (finite,
    within 1.5e-5 of [-1, 1]), as int32 written over ``scaled`` itself; bitsandbytes' bin is
    ``(j + 1) >> 1``.

    bitsandbytes computes ``65535 · ((clamp(y, −1, 1) + 1) / 2) + 0.5`` in one fused multiply-add;
    rounding the product to fp32 before adding 0.5 gives the same bin for every fp32 ``y`` in
    [-1, 1], and the halving is exact, so the bin is ``trunc(fl(u + 0.5))`` with
    ``u = fl(fl(y + 1) · 32767.5)``. Below 2¹⁶ that is ``floor(u + 0.5)``, and since scaling by 2
    is exact, ``2u = fl(fl(y + 1) · 65535)``, so the bin is ``floor((floor(2u) + 1) / 2)``: one
    pass fewer, the halving folded into the table. Both equalities were checked for all 2³¹ fp32
    values in [-1, 1]. The clamp is left out: ``|x · (1 / absmax)| <= 1`` in fp32 (up to
    1 + 3e-7 when 1 / absmax is subnormal, absmax >= 2^126), and anything within 1.5e-5 of ±1 is
    in an end bin anyway.
    """
    scaled.add_(scalar(1.0)).mul_(scalar(2 * _HALF_SPAN))
    # float to int32 truncates, as C's cast does; element by element in place, so no int32 buffer.
    return scaled.view(torch.int32).copy_(scaled)


def _bins(values: torch.Tensor) -> torch.Tensor:
    """bitsandbytes' bin of each normalized fp32 value (int32; for checks, not the hot path)."""
    return (_fine_index(values.clone()) + 1) >> 1


class CpuQuantizer:
    """bitsandbytes' CPU block-wise quantization of fp32 values, as vectorised torch ops.

    ``table`` (65536 uint8 codes) maps each bin to its code; :func:`cpu_quantizer` builds it.
    """

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table
        self._fine = table[(torch.arange(2 * _BINS - 1) + 1) >> 1]  # indexed by _fine_index

    def quantize_rows(
        self, values: torch.Tensor, codes_out: torch.Tensor, absmax_out: torch.Tensor, scaled: torch.Tensor
    ) -> None:
        """Quantize each row of fp32 ``values`` [B, n] as a tensor of its own (its blocks start with
        the row; the last may be partial) into contiguous uint8 ``codes_out`` [B, n] and fp32
        ``absmax_out`` [B, num_blocks(n)], computing in contiguous fp32 ``scaled`` [B, n] (which
        may be ``values`` itself: it is overwritten)."""
        batch, numel = values.shape
        full = numel - numel % BLOCK_SIZE
        special = False
        if full:
            special |= _scale_blocks(
                values[:, :full].view(batch, -1, BLOCK_SIZE),
                absmax_out[:, : full // BLOCK_SIZE],
                scaled[:, :full].view(batch, -1, BLOCK_SIZE),
            )
        if full < numel:
            special |= _scale_blocks(
                values[:, full:].unsqueeze(1), absmax_out[:, -1:], scaled[:, full:].unsqueeze(1)
            )
        if special:
            # NaN values, ∞ (then absmax = ∞ and ∞ · 0 = NaN), an all-zero block (0 · ∞) or a
            # subnormal absmax (1 / absmax = ∞): NaN goes to bin 0 and ±∞ to the end bins, as in
            # bitsandbytes' clamp and float-to-int conversion. Finite blocks skip this pass.
            scaled.nan_to_num_(nan=-1.0, posinf=1.0, neginf=-1.0)
        torch.index_select(self._fine, 0, _fine_index(scaled).view(-1), out=codes_out.view(-1))


def _scale_blocks(x: torch.Tensor, absmax_out: torch.Tensor, scaled_out: torch.Tensor) -> bool:
    """bitsandbytes' absmax of each block of ``x`` [B, k, size] into ``absmax_out`` [B, k], and
    ``x · (1 / absmax)`` into ``scaled_out``; True when some scaled value may be NaN or ±∞."""
    # max |x| of each block as max(max x, −min x): two fast reductions, no |x| temporary, and fewer
    # small kernels (each costs microseconds) than taking the absolute value of both.
    torch.amax(x, dim=2, out=absmax_out)
    torch.maximum(absmax_out, x.amin(dim=2).neg_(), out=absmax_out)
    inverse = absmax_out.reciprocal()
    # Σ absmax · (1 / absmax) is finite (about the number of blocks), one kernel for all blocks,
    # unless a block holds NaN or ±∞, is all zero or has a subnormal absmax whose inverse overflows.
    special = not math.isfinite(inverse.view(-1).dot(absmax_out.reshape(-1)))
    if special:
        # An all-zero block's absmax may be −0 here; bitsandbytes' max(0, ·) makes it +0.
        absmax_out.abs_()
        nan = absmax_out.isnan()
        if nan.any():  # bitsandbytes' absmax skips NaN values (a NaN value itself gets code 0)
            rows = x[nan]
            absmax_out[nan] = torch.where(rows.isnan(), 0.0, rows.abs()).amax(dim=1)
        inverse = absmax_out.reciprocal()
    # x · (1 / absmax), not x / absmax: the same two roundings as bitsandbytes.
    torch.mul(x, inverse.unsqueeze(2), out=scaled_out)
    return special


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
    and the same codes and absmax (as bits) for every probe tensor quantized whole, alone and as
    the rows of a stack.
    """
    centres = (torch.arange(_BINS, dtype=torch.float64) / _HALF_SPAN - 1.0).float()
    if not torch.equal(_bins(centres), torch.arange(_BINS, dtype=torch.int32)):
        return None
    quantizer = CpuQuantizer(_unit_codes(centres))
    probes = quantizer_probes()
    unit = probes[0]
    if not torch.equal(quantizer.table[_bins(unit)], _unit_codes(unit)):
        return None
    for values in probes:
        ref_codes, ref_absmax = _bnb_quantize(values)
        for rows in (1, 3):  # alone, and as three identical rows of a stack
            codes = torch.empty(rows, values.numel(), dtype=torch.uint8)
            absmax = torch.empty(rows, num_blocks(values.numel()))
            stack = values.reshape(1, -1).expand(rows, -1)
            quantizer.quantize_rows(stack, codes, absmax, torch.empty(stack.shape))
            same_absmax = torch.equal(absmax.view(torch.int32), ref_absmax.view(torch.int32).expand(rows, -1))
            if not (same_absmax and torch.equal(codes, ref_codes.expand(rows, -1))):
                return None
    return quantizer


def _fast_path(device: torch.device) -> CpuQuantizer | None:
    return cpu_quantizer() if device.type == "cpu" else None


def quantize_rows(
    values: torch.Tensor,
    codes_out: torch.Tensor,
    absmax_out: torch.Tensor,
    scratch: torch.Tensor | None = None,
) -> None:
    """Quantize each row of fp32 ``values`` [B, n] as a tensor of its own into contiguous uint8
    ``codes_out`` [B, n] and contiguous fp32 ``absmax_out`` [B, num_blocks(n)].

    A row may also be a slice of a tensor that starts on a block boundary and holds whole blocks
    unless it ends the tensor. ``scratch``, a contiguous fp32 [B, n] tensor, lends the CPU path
    room to compute in (a fresh multi-megabyte tensor costs page faults there); it may be
    ``values`` itself, which is then overwritten, and saves the cache a buffer.
    """
    quantizer = _fast_path(values.device) if values.dtype == torch.float32 else None
    if quantizer is not None:
        scaled = scratch if scratch is not None else torch.empty(values.shape)
        quantizer.quantize_rows(values, codes_out, absmax_out, scaled)
        return
    import bitsandbytes.functional as bnbf

    code = dynamic_code(values.device)
    if values.shape[1] % BLOCK_SIZE == 0:  # rows of whole blocks: one call for all
        values, codes_out, absmax_out = values.reshape(1, -1), codes_out.view(1, -1), absmax_out.view(1, -1)
    for v, c, a in zip(values, codes_out, absmax_out, strict=True):
        bnbf.quantize_blockwise(v.contiguous(), code=code, absmax=a, out=c, blocksize=BLOCK_SIZE)


#: bitsandbytes' fp32 CPU dequantizer called straight: (codes, absmax, out) into ``out``, all
#: contiguous on CPU, ``codes`` uint8 and the others fp32.
_Dequantizer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]


def _bnb_dequantize(codes: torch.Tensor, absmax: torch.Tensor) -> torch.Tensor:
    import bitsandbytes.functional as bnbf

    return bnbf.dequantize_blockwise(
        codes, absmax=absmax, code=dynamic_code(codes.device), blocksize=BLOCK_SIZE
    )


@functools.cache
def cpu_dequantizer() -> _Dequantizer | None:
    """bitsandbytes' fp32 CPU dequantize kernel, writing into a tensor given, or None where calling
    it straight does not give what bitsandbytes' op gives (codes of every value, absmax normal,
    zero, subnormal, ±∞ and NaN, a partial last block), bit for bit."""
    try:
        import bitsandbytes
        from bitsandbytes.cextension import lib

        kernel = lib.cdequantize_blockwise_cpu_fp32
    except (ImportError, AttributeError, RuntimeError):
        return None
    # A C function called through ctypes cannot check its arguments: a release that changed this
    # one's signature could crash inside the check below instead of failing it. Only the releases
    # whose signature was read (0.50.x) are called straight; others go through bitsandbytes' op.
    if bitsandbytes.__version__.split(".")[:2] != ["0", "50"]:
        return None
    code = dynamic_code(torch.device("cpu"))
    block = ctypes.c_longlong(BLOCK_SIZE)

    def dequantize_into(codes: torch.Tensor, absmax: torch.Tensor, out: torch.Tensor) -> None:
        pointers = (ctypes.c_void_p(t.data_ptr()) for t in (code, codes, absmax, out))
        kernel(*pointers, block, ctypes.c_longlong(codes.numel()))

    generator = torch.Generator().manual_seed(0)
    codes = torch.cat([torch.randperm(256, generator=generator) for _ in range(9)])[:-77].to(torch.uint8)
    absmax = torch.randn(num_blocks(codes.numel()), generator=generator).abs_() * 1e-3
    absmax[:5] = torch.tensor([0.0, float("inf"), float("nan"), 1e-40, 3e38])
    out = torch.empty(codes.numel())
    try:
        dequantize_into(codes, absmax, out)
    except Exception:  # e.g. bitsandbytes' stand-in for a library that did not load: use the op
        return None
    if not torch.equal(out.view(torch.int32), _bnb_dequantize(codes, absmax).view(torch.int32)):
        return None
    return dequantize_into


def dequantize_rows(
    codes: torch.Tensor, absmax: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """The fp32 values of uint8 ``codes`` [B, n] as :func:`quantize_rows` wrote them (with their
    ``absmax`` [B, num_blocks(n)]), written into contiguous ``out`` [B, n] (a new tensor if None),
    which is returned.

    bitsandbytes' CPU kernel dequantizes in one pass (a lookup in the 256-value map and a multiply),
    faster than torch ops can; rows of whole blocks (or a lone row) take one call for all.
    """
    if out is None:
        out = torch.empty(codes.shape, dtype=torch.float32, device=codes.device)
    if codes.shape[0] == 1 or codes.shape[1] % BLOCK_SIZE == 0:
        rows = [(codes.reshape(-1), absmax.reshape(-1), out.view(-1))]
    else:
        rows = list(zip(codes, absmax, out, strict=True))
    dequantize_into = cpu_dequantizer() if codes.device.type == "cpu" else None
    for c, a, o in rows:
        if dequantize_into is not None:
            dequantize_into(c.contiguous(), a.contiguous(), o)
        elif o.device.type == "cpu":  # bitsandbytes' CPU op writes only into a tensor of its own
            o.copy_(_bnb_dequantize(c, a))
        else:
            import bitsandbytes.functional as bnbf

            code = dynamic_code(c.device)
            bnbf.dequantize_blockwise(c, absmax=a, code=code, out=o, blocksize=BLOCK_SIZE)
    return out


def quantize(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize fp32 ``values`` into new flat tensors: uint8 codes and fp32 absmax per block."""
    codes = torch.empty(values.numel(), dtype=torch.uint8, device=values.device)
    absmax = torch.empty(num_blocks(values.numel()), device=values.device)
    quantize_rows(values.reshape(1, -1), codes.view(1, -1), absmax.view(1, -1))
    return codes, absmax


def dequantize(codes: torch.Tensor, absmax: torch.Tensor) -> torch.Tensor:
    """The fp32 values of flat uint8 ``codes`` and their blocks' ``absmax`` (a new flat tensor)."""
    return dequantize_rows(codes.reshape(1, -1), absmax.reshape(1, -1)).view(-1)
