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


@dataclass
class TensorEntry:
    """One tensor to write: its bytes come from a :class:`FileSlice` or a callable returning bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    source: FileSlice | Callable[[], bytes | memoryview]

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
    # Pad with spaces so the data starts 8-byte aligned, as safetensors itself does.
    raw += b" " * (-(len(raw)) % 8)
    return struct.pack("<Q", len(raw)) + raw


def _copy_range(src_fd: int, dst_fd: int, start: int, length: int) -> None:
    remaining, offset = length, start
    try:
        while remaining:
            copied = os.copy_file_range(src_fd, dst_fd, min(remaining, 1 << 30), offset)
            if copied == 0:
                raise ModelDirError("source file ended early while copying tensor bytes")
            remaining -= copied
            offset += copied
    except (AttributeError, OSError):
        # copy_file_range is Linux-only and refused across some file systems: fall back to a buffer.
        while remaining:
            chunk = os.pread(src_fd, min(remaining, _COPY_CHUNK), offset)
            if not chunk:
                raise ModelDirError("source file ended early while copying tensor bytes") from None
            os.write(dst_fd, chunk)
            remaining -= len(chunk)
            offset += len(chunk)


def _write_shard(
    path: Path, entries: Sequence[TensorEntry], metadata: dict[str, str], on_tensor: Callable[[int], None]
) -> None:
    fds: dict[Path, int] = {}
    with open(path, "wb") as out:
        out.write(_encode_header(entries, metadata))
        out.flush()
        dst_fd = out.fileno()
        try:
            index = 0
            while index < len(entries):
                entry = entries[index]
                if isinstance(entry.source, FileSlice):
                    # Merge runs of slices that are contiguous in one source file into one copy.
                    src = entry.source
                    start, length = src.start, src.length
                    index += 1
                    while index < len(entries):
                        nxt = entries[index].source
                        if not (
                            isinstance(nxt, FileSlice)
                            and nxt.file == src.file
                            and nxt.start == start + length
                        ):
                            break
                        length += nxt.length
                        index += 1
                    if src.file not in fds:
                        fds[src.file] = os.open(src.file, os.O_RDONLY)
                    _copy_range(fds[src.file], dst_fd, start, length)
                    on_tensor(index)
                    continue
                data = entry.source()
                if len(data) != entry.nbytes:
                    raise ValueError(
                        f"tensor {entry.name}: produced {len(data)} bytes, expected {entry.nbytes}"
                    )
                out.write(data)
                out.flush()
                index += 1
                on_tensor(index)
        finally:
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
    tensors are written as they are produced. Returns the shard paths.
    """
    names = [entry.name for entry in entries]
    if len(set(names)) != len(names):
        raise ValueError("duplicate tensor names in output")
    shards = plan_shards(entries, max_shard_size)
    files = shard_file_names(basename, len(shards))
    total_bytes = sum(entry.nbytes for entry in entries)
    written = 0
    progress(task, 0, total_bytes)
    paths = []
    for shard, file_name in zip(shards, files, strict=True):
        sizes = [entry.nbytes for entry in shard]
        base = written

        def on_tensor(done: int, base: int = base, sizes: list[int] = sizes) -> None:
            progress(task, base + sum(sizes[:done]), total_bytes)

        _write_shard(out_dir / file_name, shard, {"format": "pt"}, on_tensor)
        written += sum(sizes)
        paths.append(out_dir / file_name)
    if len(shards) > 1:
        weight_map = {
            entry.name: file_name for shard, file_name in zip(shards, files, strict=True) for entry in shard
        }
        index = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
        (out_dir / f"{basename}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return paths
