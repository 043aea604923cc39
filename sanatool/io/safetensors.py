"""Streaming safetensors I/O without loading a model: headers, validation, a sharded writer.

The safetensors format is an 8-byte little-endian header length, a JSON header mapping each
tensor name to ``dtype``, ``shape`` and ``data_offsets`` (relative to the end of the header),
then the raw bytes. Knowing the offsets lets surgery copy each kept tensor's bytes straight
from the source file into the output, rewriting only the header, so memory stays bounded by
a copy buffer and time stays close to a file copy. This module never imports torch.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sanatool.errors import ModelDirError
from sanatool.io.jsonl import parse_json
from sanatool.progress import ProgressFn, no_progress

DTYPE_BYTES: dict[str, int] = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "U64": 8,
    "U32": 4,
    "U16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}

#: A header larger than this is not a weight file (real SANA shards have headers of ~100 KB).
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's limit
#: The largest shard diffusers' save_pretrained writes by default, and ours.
DEFAULT_MAX_SHARD_SIZE = "5GB"
_COPY_CHUNK = 64 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its file and absolute byte range, dtype and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _natural(value: Any) -> int:
    """A JSON unsigned integer as safetensors reads one (``usize``): not a float, bool or negative."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
        raise ValueError(value)
    return value


def _tensor_entry(entry: Any) -> tuple[str, tuple[int, ...], int, int]:
    if not isinstance(entry, dict):
        raise ValueError(entry)
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or not isinstance(shape, list) or not isinstance(offsets, list):
        raise ValueError(entry)
    if len(offsets) != 2:
        raise ValueError(offsets)
    return dtype, tuple(_natural(d) for d in shape), _natural(offsets[0]), _natural(offsets[1])


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Read and validate one safetensors file's header, by the rules of the safetensors library.

    Returns the tensors (with absolute offsets) and the ``__metadata__`` dict. Raises
    :class:`ModelDirError` for any file the library refuses: a header that does not fit or is
    not a UTF-8 JSON object, ``__metadata__`` that is not a string-to-string object, an entry
    without a known dtype, an unsigned-integer shape and two unsigned-integer offsets, offsets
    that disagree with a shape, and tensors that do not tile the data section exactly (from byte
    0, no gap, no overlap, no trailing byte).
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            raw_len = handle.read(8)
            if len(raw_len) < 8:
                raise ModelDirError(f"{path} is truncated: shorter than a safetensors header")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                raise ModelDirError(
                    f"{path} is truncated or not a safetensors file (header length {header_len})"
                )
            header_bytes = handle.read(header_len)
    except OSError as err:
        raise ModelDirError(f"cannot read {path}: {err.strerror or err}") from err
    try:
        header = parse_json(header_bytes, nonfinite=False)
    except ValueError as err:
        raise ModelDirError(f"{path} has a corrupt safetensors header ({err})") from err
    if not isinstance(header, dict):
        raise ModelDirError(f"{path} has a corrupt safetensors header (not an object)")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ModelDirError(f"{path} has a corrupt safetensors header (__metadata__ is not a map of strings)")
    data_start = 8 + header_len
    data_len = size - data_start
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        try:
            dtype, shape, begin, end = _tensor_entry(entry)
        except (KeyError, ValueError) as err:
            raise ModelDirError(f"{path}: tensor {name} has a malformed header entry") from err
        if dtype not in DTYPE_BYTES:
            raise ModelDirError(f"{path}: tensor {name} has dtype {dtype}, which sanatool does not read")
        if end < begin or math.prod(shape) * DTYPE_BYTES[dtype] != end - begin:
            raise ModelDirError(
                f"{path}: tensor {name} has offsets that disagree with its shape {list(shape)}"
            )
        if end > data_len:
            raise ModelDirError(
                f"{path} is truncated: tensor {name} ends at byte {data_start + end} of {size}; re-download or re-export it"
            )
        tensors[name] = TensorInfo(name, dtype, shape, path, data_start + begin, data_start + end)
    # The tensors tile the data section: each starts where the one before ends, the last ends the file.
    covered = 0
    for info in sorted(tensors.values(), key=lambda t: (t.start, t.end)):
        if info.start - data_start != covered:
            problem = "overlaps another tensor" if info.start - data_start < covered else "starts after a gap"
            raise ModelDirError(
                f"{path} is corrupt: tensor {info.name} {problem}; re-download or re-export it"
            )
        covered = info.end - data_start
    if covered != data_len:
        raise ModelDirError(
            f"{path} is corrupt: {data_len - covered} bytes after the last tensor; re-download or re-export it"
        )
    return tensors, metadata


def parse_size(text: str | int) -> int:
    """Parse a size such as ``5GB``, ``500MB``, ``2GiB`` or a byte count (HF convention: GB = 10^9)."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", text.upper())
    if not match:
        raise ValueError(f"cannot parse size {text!r}; use e.g. 5GB, 500MB or a byte count")
    value, unit = float(match.group(1)), match.group(2).rstrip("B")
    powers = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    binary = {"KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}
    factor = binary.get(unit) or powers.get(unit)
    if factor is None:
        raise ValueError(f"cannot parse size {text!r}; use e.g. 5GB, 500MB or a byte count")
    size = int(value * factor)
    if size <= 0:
        raise ValueError(f"size {text!r} must be positive")
    return size


@dataclass(frozen=True)
class FileSlice:
    """Bytes to copy verbatim from a file."""

    file: Path
    start: int
    length: int


@dataclass(frozen=True)
class Zeros:
    """A tensor of zero bytes: never written, left as a hole in the new file (which reads as zeros)."""


@dataclass
class TensorEntry:
    """One tensor to write: its bytes come from a :class:`FileSlice`, :class:`Zeros`, or a callable returning bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    source: FileSlice | Zeros | Callable[[], bytes | memoryview]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_BYTES[self.dtype]

    @classmethod
    def copy_of(cls, info: TensorInfo, name: str | None = None) -> TensorEntry:
        """An entry that copies an existing tensor's bytes (optionally under a new name)."""
        return cls(name or info.name, info.dtype, info.shape, FileSlice(info.file, info.start, info.nbytes))


def plan_shards(entries: Sequence[TensorEntry], max_shard_size: int) -> list[list[TensorEntry]]:
    """Split entries, in order, into shards of at most ``max_shard_size`` bytes (a bigger tensor gets its own)."""
    shards: list[list[TensorEntry]] = [[]]
    size = 0
    for entry in entries:
        if shards[-1] and size + entry.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += entry.nbytes
    return shards


def shard_file_names(basename: str, count: int, variant: str | None = None) -> list[str]:
    """Hugging Face shard names: ``name.safetensors`` or ``name-00001-of-00003.safetensors``, with a variant
    ``name.bf16.safetensors`` or ``name.bf16-00001-of-00003.safetensors`` (as diffusers and transformers write)."""
    stem = f"{basename}.{variant}" if variant else basename
    if count == 1:
        return [f"{stem}.safetensors"]
    return [f"{stem}-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def index_file_name(basename: str, variant: str | None = None) -> str:
    """The shard index's name: ``name.safetensors.index.json``, or ``name.safetensors.index.bf16.json``."""
    return f"{basename}.safetensors.index.{variant}.json" if variant else f"{basename}.safetensors.index.json"


#: Copied runs are cut at this size so generated tensors can be written between them.
COPY_RUN_BYTES = 128 * 1024 * 1024

#: The page size copies are placed by (see :func:`_data_start_in_page`).
PAGE_BYTES = 4096

#: A copy whose output offset is not on a boundary of this many bytes starts with a short copy up
#: to the next one (see :func:`_copy_range`).
COPY_ALIGN_BYTES = 64 * 1024

#: Copied tensors up to this size may be moved out of their run to place the next run (see
#: :func:`page_aligned_layout`).
FILLER_MAX_BYTES = 1024 * 1024


def _data_start_in_page(entries: Sequence[TensorEntry]) -> int:
    """Where in a page the data section should start: the first copied tensor keeps its in-page offset.

    With source and output bytes at the same offset within their pages, ``copy_file_range`` moves
    whole pages (and shares extents outright on file systems that reflink) instead of splitting
    every page in two. With nothing copied, or an offset that would break safetensors' 8-byte
    alignment, the data section starts on a page boundary.
    """
    offset = 0
    for entry in entries:
        if isinstance(entry.source, FileSlice):
            wanted = (entry.source.start - offset) % PAGE_BYTES
            return wanted if wanted % 8 == 0 else 0
        offset += entry.nbytes
    return 0


def page_aligned_layout(entries: Sequence[TensorEntry]) -> list[TensorEntry]:
    """The order of one shard's tensors in its data section: copied runs at their source's in-page offsets.

    Runs of tensors that lie back to back in one source file are copied with one
    ``copy_file_range`` each; one whose output offset is not its source offset modulo a page
    splits every page it writes in two, and copies markedly slower (1 GB in 0.42 s against 0.27 s,
    0.9 s against 0.6 s to disk, on ext4, Linux 6.18): a prune that drops blocks shifts each kept
    block by the dropped bytes. The header's padding places the first run. Before each later run
    that is off, the fewest small tensors (up to ``FILLER_MAX_BYTES`` and not whole pages: norms,
    biases, modulation tables; generated tensors too) whose sizes bring it to its offset are
    written out of turn, taken from the tensors after it, nearest first; moving a tensor forward
    shifts only what lies between its two places. The rest keep their order. It is a greedy
    search, not an exact one: on a 4.8B prune to a third of its blocks it places about 80% of
    the bytes (the order as planned: under 10%). safetensors allows any order of tensors in the
    data section (offsets are in the header; names, shapes and bytes do not change), so the file
    loads as before. Returns ``entries`` in their order when a size is not a multiple of 8 (the
    data keeps safetensors' 8-byte alignment).
    """
    if any(entry.nbytes % 8 for entry in entries):
        return list(entries)
    # Runs from different source files sit at unrelated offsets, which the small tensors may not
    # be able to reconcile: also try each file's tensors first, and keep the best layout.
    best = _fill_gaps(entries)
    files = list(dict.fromkeys(e.source.file for e in entries if isinstance(e.source, FileSlice)))
    if len(files) > 1 and _aligned_bytes(best) < sum(
        e.nbytes for e in entries if isinstance(e.source, FileSlice)
    ):
        for file in files[1:]:
            first = [e for e in entries if isinstance(e.source, FileSlice) and e.source.file == file]
            rest = [e for e in entries if not (isinstance(e.source, FileSlice) and e.source.file == file)]
            layout = _fill_gaps(first + rest)
            if _aligned_bytes(layout) > _aligned_bytes(best):
                best = layout
    return best


def _aligned_bytes(layout: Sequence[TensorEntry]) -> int:
    """Bytes of the copied runs of ``layout`` that sit at their source's in-page offset."""
    aligned = position = 0
    base: int | None = None
    in_place = False
    previous: TensorEntry | None = None
    for entry in layout:
        source = entry.source
        if isinstance(source, FileSlice):
            if not (previous and _continues(previous, entry)):
                if base is None:
                    base = (source.start - position) % PAGE_BYTES
                in_place = (source.start - base - position) % PAGE_BYTES == 0
            aligned += entry.nbytes if in_place else 0
        position += entry.nbytes
        previous = entry
    return aligned


def _fill_gaps(entries: Sequence[TensorEntry]) -> list[TensorEntry]:
    """``entries`` with the fillers of :func:`page_aligned_layout` moved forward."""
    layout: list[TensorEntry] = []
    moved: set[int] = set()  # indices of entries written out of turn
    pool: dict[int, TensorEntry] = {}  # candidates seen ahead, still in their place
    donor = 0  # the next candidate to look at
    position = 0  # in the data section
    base: int | None = None  # the data section's offset in its page
    for index, entry in enumerate(entries):
        if index in moved:
            continue
        pool.pop(index, None)
        source = entry.source
        if isinstance(source, FileSlice) and not (layout and _continues(layout[-1], entry)):
            if base is None:
                base = (source.start - position) % PAGE_BYTES
                if base % 8:
                    return list(entries)
            need = (source.start - base - position) % PAGE_BYTES
            if need:
                # Candidates come from after this run, nearest first: moving a tensor forward
                # shifts only what lies between its two places.
                end = index + 1
                while end < len(entries) and _continues(entries[end - 1], entries[end]):
                    end += 1
                donor = max(donor, end)
            fillers = _fillers(pool, need)
            while fillers is None and donor < len(entries):
                taken = 0
                while donor < len(entries) and taken < 8:  # a few more candidates, then look again
                    if donor not in moved and _movable(entries[donor]):
                        pool[donor] = entries[donor]
                        taken += 1
                    donor += 1
                fillers = _fillers(pool, need)
            if fillers is None and need:
                # Nothing after this run will do (the last run, say): take its own small tensors
                # from its end; what follows them becomes a run of its own, placed in turn.
                for k in range(end - 1, index, -1):
                    if k not in moved and _movable(entries[k]):
                        pool[k] = entries[k]
                        fillers = _fillers(pool, need)
                        if fillers is not None:
                            break
            for k in fillers or []:
                layout.append(pool.pop(k))
                moved.add(k)
                position += entries[k].nbytes
        layout.append(entry)
        position += entry.nbytes
    return layout


def _movable(entry: TensorEntry) -> bool:
    """Whether ``entry`` may be written out of turn as a filler: generated, or a small copy."""
    if not isinstance(entry.source, FileSlice):
        return True
    return entry.nbytes <= FILLER_MAX_BYTES and entry.nbytes % PAGE_BYTES != 0


def _fillers(pool: dict[int, TensorEntry], need: int) -> list[int] | None:
    """Keys of the fewest ``pool`` tensors whose sizes add up to ``need`` modulo a page (None if none found)."""
    if need == 0:
        return []
    by_residue: dict[int, list[int]] = {}
    for key, entry in pool.items():
        if entry.nbytes % PAGE_BYTES:
            by_residue.setdefault(entry.nbytes % PAGE_BYTES, []).append(key)
    residues = list(by_residue)
    if need % math.gcd(PAGE_BYTES, *residues):
        return None
    # Breadth first over the sums reached (modulo a page), each with the count taken of each size.
    counts: dict[int, tuple[int, ...]] = {0: (0,) * len(residues)}
    frontier = [0]
    while frontier:
        reached = []
        for total in frontier:
            used = counts[total]
            for k, residue in enumerate(residues):
                if used[k] == len(by_residue[residue]):
                    continue
                nxt = (total + residue) % PAGE_BYTES
                if nxt in counts:
                    continue
                counts[nxt] = used[:k] + (used[k] + 1,) + used[k + 1 :]
                if nxt == need:
                    return [
                        key for r, n in zip(residues, counts[nxt], strict=True) for key in by_residue[r][:n]
                    ]
                reached.append(nxt)
        frontier = reached
    return None


def _encode_header(entries: Sequence[TensorEntry], metadata: dict[str, str]) -> bytes:
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for entry in entries:
        header[entry.name] = {
            "dtype": entry.dtype,
            "shape": list(entry.shape),
            "data_offsets": [offset, offset + entry.nbytes],
        }
        offset += entry.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    # The format allows trailing spaces in the header (safetensors pads to 8 bytes with them); up
    # to a page of them places the data section where copies run fastest.
    raw += b" " * ((_data_start_in_page(entries) - 8 - len(raw)) % PAGE_BYTES)
    return struct.pack("<Q", len(raw)) + raw


def write_order(entries: Sequence[TensorEntry]) -> list[TensorEntry]:
    """The order to write entries in: copied runs in their order, generated tensors spread between them.

    Copied tensors are grouped into runs of consecutive source bytes (up to ``COPY_RUN_BYTES``;
    the writer merges each run into one ``copy_file_range``), and after each run come the
    generated tensors that keep generated and copied bytes advancing in proportion, so a producer
    on another thread makes the next new tensor while the kernel copies, instead of all new
    tensors being made after the copies. Only the order of writing changes: each tensor is written
    at its own offset, so the file's layout (and the alignment of its copies) stays as planned.
    """
    runs: list[list[TensorEntry]] = []
    run_bytes = 0
    generated: list[TensorEntry] = []
    zeros: list[TensorEntry] = []
    for entry in entries:
        if isinstance(entry.source, Zeros):
            zeros.append(entry)  # nothing to write, so nothing to spread
        elif not isinstance(entry.source, FileSlice):
            generated.append(entry)
        elif runs and run_bytes < COPY_RUN_BYTES and _continues(runs[-1][-1], entry):
            runs[-1].append(entry)
            run_bytes += entry.nbytes
        else:
            runs.append([entry])
            run_bytes = entry.nbytes
    copy_total = sum(e.nbytes for run in runs for e in run) or 1
    gen_total = sum(e.nbytes for e in generated) or 1
    order: list[TensorEntry] = []
    copied = made = taken = 0
    for run in runs:
        order += run
        copied += sum(e.nbytes for e in run)
        while taken < len(generated) and made / gen_total < copied / copy_total:
            order.append(generated[taken])
            made += generated[taken].nbytes
            taken += 1
    return order + generated[taken:] + zeros


def _continues(previous: TensorEntry, entry: TensorEntry) -> bool:
    """Whether ``entry``'s bytes follow ``previous``'s in the same source file."""
    a, b = previous.source, entry.source
    return (
        isinstance(a, FileSlice)
        and isinstance(b, FileSlice)
        and a.file == b.file
        and b.start == a.start + a.length
    )


def _copy_range(src_fd: int, dst_fd: int, start: int, length: int, dst_offset: int) -> None:
    """Copy ``length`` bytes from ``start`` in one file to ``dst_offset`` in another, in the kernel.

    With both at the same offset in their pages, the bulk of the copy starts at a
    ``COPY_ALIGN_BYTES`` boundary of the output (after a short first copy): the kernel moves
    the bytes in chunks of 16 pages, and chunks that straddle those boundaries of the output
    copied 1 GB in 0.40 s against 0.27 s (0.9 s against 0.6 s to disk) on ext4, Linux 6.18.
    """
    remaining, offset, target = length, start, dst_offset
    head = 0
    if (start - dst_offset) % PAGE_BYTES == 0 and length > COPY_ALIGN_BYTES:
        head = -dst_offset % COPY_ALIGN_BYTES
    try:
        while remaining:
            count = head or min(remaining, 1 << 30)
            head = 0
            copied = os.copy_file_range(src_fd, dst_fd, count, offset, target)
            if copied == 0:
                raise ModelDirError("source file ended early while copying tensor bytes")
            remaining -= copied
            offset += copied
            target += copied
    except (AttributeError, OSError):
        # copy_file_range is Linux-only and refused across some file systems: fall back to a buffer.
        while remaining:
            chunk = os.pread(src_fd, min(remaining, _COPY_CHUNK), offset)
            if not chunk:
                raise ModelDirError("source file ended early while copying tensor bytes") from None
            _pwrite_all(dst_fd, chunk, target)
            remaining -= len(chunk)
            offset += len(chunk)
            target += len(chunk)


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _write_shard(
    path: Path, entries: Sequence[TensorEntry], metadata: dict[str, str], on_bytes: Callable[[int], None]
) -> None:
    """Write one shard: the header, then every tensor at its offset, in :func:`write_order`.

    The tensors are laid out by :func:`page_aligned_layout`.
    """
    entries = page_aligned_layout(entries)
    header = _encode_header(entries, metadata)
    offsets: dict[str, int] = {}
    position = len(header)
    for entry in entries:
        offsets[entry.name] = position
        position += entry.nbytes
    order = write_order(entries)
    fds: dict[Path, int] = {}
    dst_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _pwrite_all(dst_fd, header, 0)
        index = 0
        while index < len(order):
            entry = order[index]
            if isinstance(entry.source, FileSlice):
                # Merge runs that are contiguous both in one source file and in the output into one copy.
                src = entry.source
                start, length = src.start, src.length
                index += 1
                while index < len(order):
                    nxt = order[index]
                    if not (
                        _continues(order[index - 1], nxt)
                        and offsets[nxt.name] == offsets[entry.name] + length
                    ):
                        break
                    length += nxt.nbytes
                    index += 1
                if src.file not in fds:
                    fds[src.file] = os.open(src.file, os.O_RDONLY)
                _copy_range(fds[src.file], dst_fd, start, length, offsets[entry.name])
                on_bytes(length)
                continue
            index += 1
            if isinstance(entry.source, Zeros):
                # A fresh file reads as zeros wherever nothing was written: skip the bytes entirely
                # (a new block's output projections are a third of it), the final size is set below.
                on_bytes(entry.nbytes)
                continue
            data = entry.source()
            if len(data) != entry.nbytes:
                raise ValueError(f"tensor {entry.name}: produced {len(data)} bytes, expected {entry.nbytes}")
            _pwrite_all(dst_fd, data, offsets[entry.name])
            on_bytes(entry.nbytes)
        os.ftruncate(dst_fd, position)
    finally:
        os.close(dst_fd)
        for fd in fds.values():
            os.close(fd)


def _byte_reporter(
    entries: Sequence[TensorEntry], progress: ProgressFn, task: str
) -> tuple[Callable[[int], None], int]:
    """Refuse duplicate names; return a callback that reports the bytes written so far, and the total."""
    names = [entry.name for entry in entries]
    if len(set(names)) != len(names):
        raise ValueError("duplicate tensor names in output")
    total_bytes = sum(entry.nbytes for entry in entries)
    written = 0
    progress(task, 0, total_bytes)

    def on_bytes(count: int) -> None:
        nonlocal written
        written += count
        progress(task, written, total_bytes)

    return on_bytes, total_bytes


def write_sharded(
    out_dir: Path,
    entries: Sequence[TensorEntry],
    max_shard_size: int,
    basename: str = "diffusion_pytorch_model",
    progress: ProgressFn = no_progress,
    task: str = "write",
    variant: str | None = None,
) -> list[Path]:
    """Write entries as safetensors shards (with a ``.index.json`` when more than one) into ``out_dir``.

    ``variant`` names the files as ``save_pretrained(variant=...)`` does (:func:`shard_file_names`).

    Tensor bytes are streamed: file slices are copied with ``copy_file_range``, generated
    tensors are written as they are produced (in :func:`write_order`). Returns the shard paths.
    """
    on_bytes, total_bytes = _byte_reporter(entries, progress, task)
    shards = plan_shards(entries, max_shard_size)
    files = shard_file_names(basename, len(shards), variant)
    paths = []
    for shard, file_name in zip(shards, files, strict=True):
        _write_shard(out_dir / file_name, shard, {"format": "pt"}, on_bytes)
        paths.append(out_dir / file_name)
    if len(shards) > 1:
        weight_map = {
            entry.name: file_name for shard, file_name in zip(shards, files, strict=True) for entry in shard
        }
        index = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
        (out_dir / index_file_name(basename, variant)).write_text(json.dumps(index, indent=2) + "\n")
    return paths


def write_file(
    path: Path,
    entries: Sequence[TensorEntry],
    metadata: dict[str, str] | None = None,
    progress: ProgressFn = no_progress,
    task: str = "write",
) -> None:
    """Write entries as one safetensors file at ``path`` (no sharding), with ``metadata`` in its header.

    Streams like :func:`write_sharded`; for single-file formats such as the original SANA checkpoints.
    """
    on_bytes, _ = _byte_reporter(entries, progress, task)
    _write_shard(path, entries, {"format": "pt", **(metadata or {})}, on_bytes)
