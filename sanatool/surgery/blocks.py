"""Transformer blocks as units of surgery: key patterns, renumbering, block lists, and new-block init.

New blocks start as exact identities: their output projections are zero (the rule and why it
holds are in :mod:`sanatool.arch`). This module holds the block-list syntax, the init rules of
new tensors, and produces their bytes lazily with numpy (no torch), so surgery holds a few
tensors in memory at most, never the model.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sanatool.arch import (
    ATTENTION_MODULES,
    GATE_ROWS,
    OUTPUT_PROJECTIONS,
    SCALE_SHIFT_TABLE,
    block_key,
    block_suffix,
)
from sanatool.errors import InputError, ModelDirError
from sanatool.io.safetensors import DTYPE_BYTES, FileSlice, TensorEntry, TensorInfo, Zeros

if TYPE_CHECKING:
    import numpy as np

#: Std of the small random weights of a new block.
NEW_WEIGHT_STD = 0.02

# Random tensors are drawn in chunks of this many values (4 MB of float32: cache-friendly, small).
_CHUNK = 1 << 20

# numpy dtype names; bf16 bits are made by hand. numpy itself is imported only to make new
# tensors, so `prune` (which only copies bytes) starts without paying for it.
_FLOAT_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "BF16": None}


def parse_block_list(text: str, depth: int, option: str) -> list[int]:
    """Parse ``0,1,5-9`` into sorted block indices, refusing bad syntax, duplicates and out-of-range.

    ``option`` names the flag in error messages.
    """
    indices: list[int] = []  # at most ``depth`` long: ranges are bounded before they are expanded
    for part in text.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not match:
            raise InputError(
                f"{option} {text!r}: cannot read {part!r}; use block numbers and ranges like 0,1,5-9"
            )
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise InputError(f"{option} {text!r}: range {part} runs backwards; write it as {last}-{first}")
        if last >= depth:
            raise InputError(
                f"{option} {text!r} names block {last}, but the model has blocks 0-{depth - 1} only"
            )
        for index in range(first, last + 1):
            if index in indices:
                raise InputError(f"{option} {text!r} names block {index} twice; list each block once")
            indices.append(index)
    return sorted(indices)


@dataclass(frozen=True)
class BlockTensor:
    """One tensor of a block: its name after ``transformer_blocks.N.``, dtype and shape."""

    suffix: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_BYTES[self.dtype]


def block_layout(infos: Sequence[TensorInfo]) -> list[BlockTensor]:
    """The suffixes, dtypes and shapes of one block's tensors, in the order given."""
    return [BlockTensor(_suffix(info), info.dtype, info.shape) for info in infos]


def _suffix(info: TensorInfo) -> str:
    suffix = block_suffix(info.name)
    if suffix is None:
        raise ValueError(f"{info.name} is not a block tensor")
    return suffix


def check_uniform_blocks(blocks: dict[int, list[TensorInfo]], where: object) -> list[BlockTensor]:
    """Refuse a model whose blocks differ in tensor names, dtypes or shapes; return block 0's layout."""
    reference = {t.suffix: t for t in block_layout(blocks[0])}
    for index, infos in blocks.items():
        layout = {t.suffix: t for t in block_layout(infos)}
        if layout != reference:
            odd = sorted(name for name, _ in set(layout.items()) ^ set(reference.items()))[0]
            raise ModelDirError(
                f"{where}: block {index} differs from block 0 in tensor {odd}; "
                "surgery needs blocks of one shape (is this a SANA checkpoint?)"
            )
    return block_layout(sorted(blocks[0], key=lambda i: (str(i.file), i.start)))


def qk_norm_layout(layout: Sequence[BlockTensor]) -> list[BlockTensor]:
    """The QK-norm tensors diffusers' ``rms_norm_across_heads`` adds to a block of this layout.

    ``norm_q`` normalises the whole ``to_q`` output and ``norm_k`` the whole ``to_k`` output (all
    heads together), in self- and cross-attention; weights take the dtype of ``to_q``.
    """
    by_suffix = {t.suffix: t for t in layout}
    added = []
    for module in ATTENTION_MODULES:
        query = by_suffix.get(f"{module}.to_q.weight")
        key = by_suffix.get(f"{module}.to_k.weight")
        if query is None or key is None:
            continue
        added.append(BlockTensor(f"{module}.norm_q.weight", query.dtype, (query.shape[0],)))
        added.append(BlockTensor(f"{module}.norm_k.weight", query.dtype, (key.shape[0],)))
    return added


def has_qk_norm(layout: Sequence[BlockTensor]) -> bool:
    """Whether a block layout already carries QK-norm weights."""
    return any(t.suffix.endswith(("norm_q.weight", "norm_k.weight")) for t in layout)


@dataclass(frozen=True)
class InitRule:
    """How a new tensor starts: ``zeros``, ``ones``, or ``random`` (uniform, zero mean) with ``std``."""

    kind: str
    std: float = 0.0


def new_block_rule(tensor: BlockTensor) -> InitRule:
    """The identity-init rule of a new block's tensor (see the module docstring for why)."""
    if tensor.suffix in OUTPUT_PROJECTIONS:
        return InitRule("zeros")
    if tensor.suffix.endswith(".bias"):
        return InitRule("zeros")
    if tensor.suffix == SCALE_SHIFT_TABLE:
        # The scale of diffusers' own init of the per-block modulation table: std 1/sqrt(hidden).
        return InitRule("random", 1.0 / math.sqrt(tensor.shape[-1]))
    if len(tensor.shape) == 1:
        return InitRule("ones")  # RMSNorm / LayerNorm scales (QK-norm)
    if len(tensor.shape) == 4 and tensor.shape[1] == 1:
        # Depthwise 3×3 conv: fan-in is 9, so 0.02 would nearly switch it off. Use the std of
        # PyTorch's default (kaiming-uniform) init of that layer, 1/sqrt(3·fan_in).
        fan_in = math.prod(tensor.shape[1:])
        return InitRule("random", 1.0 / math.sqrt(3 * fan_in))
    return InitRule("random", NEW_WEIGHT_STD)


def _require_float(tensor: BlockTensor) -> None:
    if tensor.dtype not in _FLOAT_DTYPES:
        raise ModelDirError(
            f"block tensor {tensor.suffix} has dtype {tensor.dtype}; surgery can only create float tensors"
        )


def _buffer(tensor: BlockTensor) -> np.ndarray:
    import numpy as np

    return np.empty(tensor.numel, dtype=_FLOAT_DTYPES[tensor.dtype] or "<u2")


def _to_bf16_bits(values: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 bit patterns, rounding to nearest even as torch does; works in place."""
    import numpy as np

    bits = values.view(np.uint32)
    np.right_shift(bits, 16, out=scratch)
    scratch &= 1
    scratch += 0x7FFF
    bits += scratch
    bits >>= 16
    return bits


def generate(tensor: BlockTensor, rule: InitRule, seed_key: Sequence[int]) -> memoryview:
    """The bytes of a new tensor under ``rule``; random draws are seeded by ``seed_key`` alone.

    Keying each tensor's generator by (seed, block, name) makes every tensor's bytes independent
    of write order and of the other tensors, so the same inputs and seed give the same bytes.
    Random values are uniform in ±sqrt(3)·std: the std asked for, bounded like PixArt/SANA's
    xavier-uniform init, and about 4× cheaper to make than normals, which matters at 55M values
    per SANA-1.6B block. They are made in cache-sized chunks so memory stays at the output tensor.
    """
    import numpy as np

    _require_float(tensor)
    if rule.kind == "zeros":
        return memoryview(bytes(tensor.nbytes))
    out = _buffer(tensor)
    if rule.kind == "ones":
        values = np.ones(tensor.numel, dtype=np.float32)
        out[:] = _to_bf16_bits(values, np.empty_like(out, np.uint32)) if tensor.dtype == "BF16" else values
        return memoryview(out).cast("B")
    bit_generator = np.random.SFC64(np.random.SeedSequence(list(seed_key)))
    scale = np.float32(2.0 * math.sqrt(3.0) * rule.std)
    for start in range(0, tensor.numel, _CHUNK):
        count = min(_CHUNK, tensor.numel - start)
        # Raw generator output is the cheapest randomness numpy has: 23 of its bits become the
        # mantissa of a float32 in [1, 2), shifted to [-0.5, 0.5) and scaled to ±sqrt(3)·std.
        bits = bit_generator.random_raw((count + 1) // 2).view(np.uint32)[:count]
        bits >>= 9
        bits |= 0x3F800000
        values = bits.view(np.float32)
        values -= np.float32(1.5)
        values *= scale
        if tensor.dtype == "BF16":
            out[start : start + count] = _to_bf16_bits(values, np.empty_like(bits))
        else:
            out[start : start + count] = values
    return memoryview(out).cast("B")


def seed_key(seed: int, block: int, suffix: str) -> tuple[int, int, int]:
    """The RNG key of one new tensor: the user's seed, the output block, a hash of the name."""
    return (seed, block, zlib.crc32(suffix.encode()))


def new_tensor_entry(out_block: int, tensor: BlockTensor, rule: InitRule, seed: int) -> TensorEntry:
    """A lazily generated tensor of output block ``out_block`` (zeros are never generated: see :class:`Zeros`)."""
    name = block_key(out_block, tensor.suffix)
    if rule.kind == "zeros":
        return TensorEntry(name, tensor.dtype, tensor.shape, Zeros())
    key = seed_key(seed, out_block, tensor.suffix)

    def produce() -> memoryview:
        return generate(tensor, rule, key)

    return TensorEntry(name, tensor.dtype, tensor.shape, produce)


def _zeroed_gates(info: TensorInfo) -> Callable[[], bytes]:
    """A producer of ``scale_shift_table`` bytes with the gate rows zeroed (rows are contiguous)."""

    def produce() -> bytes:
        with open(info.file, "rb") as handle:
            handle.seek(info.start)
            data = bytearray(handle.read(info.nbytes))
        row = info.nbytes // info.shape[0]
        for gate in GATE_ROWS:
            data[gate * row : (gate + 1) * row] = bytes(row)
        return bytes(data)

    return produce


def copied_block_entries(
    infos: Sequence[TensorInfo], out_block: int, zero_outputs: bool = False
) -> list[TensorEntry]:
    """Entries that copy a source block's tensors into output block ``out_block`` (byte for byte).

    With ``zero_outputs`` the copy starts as an identity: its output projections are zero, and the
    gate rows of its ``scale_shift_table`` too. Copies keep the source's file order, so the writer
    merges each block into one ``copy_file_range``.
    """
    entries = []
    for info in sorted(infos, key=lambda i: (str(i.file), i.start)):
        suffix = _suffix(info)
        name = block_key(out_block, suffix)
        if zero_outputs and suffix in OUTPUT_PROJECTIONS:
            entries.append(TensorEntry(name, info.dtype, info.shape, Zeros()))
        elif zero_outputs and suffix == SCALE_SHIFT_TABLE and len(info.shape) == 2 and info.shape[0] == 6:
            entries.append(TensorEntry(name, info.dtype, info.shape, _zeroed_gates(info)))
        else:
            entries.append(
                TensorEntry(name, info.dtype, info.shape, FileSlice(info.file, info.start, info.nbytes))
            )
    return entries


def new_block_entries(layout: Sequence[BlockTensor], out_block: int, seed: int) -> list[TensorEntry]:
    """Entries of a new block that is an exact identity at init (rules: :func:`new_block_rule`)."""
    check_float_layout(layout)
    return [new_tensor_entry(out_block, t, new_block_rule(t), seed) for t in layout]


def qk_norm_entries(layout: Sequence[BlockTensor], out_block: int) -> list[TensorEntry]:
    """QK-norm weights (ones) for output block ``out_block`` of a model that had none."""
    return [new_tensor_entry(out_block, t, InitRule("ones"), 0) for t in qk_norm_layout(layout)]


def check_float_layout(layout: Sequence[BlockTensor]) -> None:
    """Refuse before writing anything if new tensors would need a dtype surgery cannot create."""
    for tensor in layout:
        _require_float(tensor)
