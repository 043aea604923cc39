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

from sanatool.errors import ModelDirError
from sanatool.progress import ProgressFn, no_progress

DTYPE_BYTES: dict[str, int] = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}

#: A header larger than this is not a weight file (real SANA shards have headers of ~100 KB).
MAX_HEADER_BYTES = 100 * 1024 * 1024
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


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Read and validate one safetensors file's header.

    Returns the tensors (with absolute offsets) and the ``__metadata__`` dict. Raises
    :class:`ModelDirError` for a truncated or corrupt file: a header that does not fit, bad
    JSON, unknown dtypes, offsets that disagree with shapes, overlap, or run past the end.
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
        header = json.loads(header_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelDirError(f"{path} has a corrupt safetensors header ({err})") from err
    if not isinstance(header, dict):
        raise ModelDirError(f"{path} has a corrupt safetensors header (not an object)")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_len
    data_len = size - data_start
    tensors: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        try:
            dtype = entry["dtype"]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as err:
            raise ModelDirError(f"{path}: tensor {name} has a malformed header entry") from err
        if dtype not in DTYPE_BYTES:
            raise ModelDirError(f"{path}: tensor {name} has unknown dtype {dtype}")
        if any(d < 0 for d in shape) or end < begin:
            raise ModelDirError(f"{path}: tensor {name} has a negative shape or offsets")
        if math.prod(shape) * DTYPE_BYTES[dtype] != end - begin:
            raise ModelDirError(
                f"{path}: tensor {name} has offsets that disagree with its shape {list(shape)}"
            )
        if end > data_len:
            raise ModelDirError(
                f"{path} is truncated: tensor {name} ends at byte {data_start + end} of {size}; re-download or re-export it"
            )
        spans.append((begin, end, name))
        tensors[name] = TensorInfo(name, dtype, shape, path, data_start + begin, data_start + end)
    spans.sort()
    for (_, prev_end, prev_name), (begin, _, name) in zip(spans, spans[1:], strict=False):
        if begin < prev_end:
            raise ModelDirError(f"{path} is corrupt: tensors {prev_name} and {name} overlap")
    return tensors, {str(k): str(v) for k, v in metadata.items()}


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


def shard_file_names(basename: str, count: int) -> list[str]:
    """Hugging Face shard names: ``name.safetensors`` or ``name-00001-of-00003.safetensors``."""
    if count == 1:
        return [f"{basename}.safetensors"]
    return [f"{basename}-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


#: Copied runs are cut at this size so generated tensors can be written between them.
COPY_RUN_BYTES = 128 * 1024 * 1024

#: The page size copies are placed by (see :func:`_data_start_in_page`).
PAGE_BYTES = 4096


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
    remaining, offset, target = length, start, dst_offset
    try:
        while remaining:
            copied = os.copy_file_range(src_fd, dst_fd, min(remaining, 1 << 30), offset, target)
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
    """Write one shard: the header, then every tensor at its offset, in :func:`write_order`."""
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


def write_sharded(
    out_dir: Path,
    entries: Sequence[TensorEntry],
    max_shard_size: int,
    basename: str = "diffusion_pytorch_model",
    progress: ProgressFn = no_progress,
    task: str = "write",
) -> list[Path]:
    """Write entries as safetensors shards (with a ``.index.json`` when more than one) into ``out_dir``.

    Tensor bytes are streamed: file slices are copied with ``copy_file_range``, generated
    tensors are written as they are produced (in :func:`write_order`). Returns the shard paths.
    """
    names = [entry.name for entry in entries]
    if len(set(names)) != len(names):
        raise ValueError("duplicate tensor names in output")
    shards = plan_shards(entries, max_shard_size)
    files = shard_file_names(basename, len(shards))
    total_bytes = sum(entry.nbytes for entry in entries)
    written = 0
    progress(task, 0, total_bytes)

    def on_bytes(count: int) -> None:
        nonlocal written
        written += count
        progress(task, written, total_bytes)

    paths = []
    for shard, file_name in zip(shards, files, strict=True):
        _write_shard(out_dir / file_name, shard, {"format": "pt"}, on_bytes)
        paths.append(out_dir / file_name)
    if len(shards) > 1:
        weight_map = {
            entry.name: file_name for shard, file_name in zip(shards, files, strict=True) for entry in shard
        }
        index = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
        (out_dir / f"{basename}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return paths
