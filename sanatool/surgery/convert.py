"""``convert``: lossless round trips between diffusers model dirs and original SANA checkpoints.

Both directions stream like the other surgery commands: every output tensor is a byte range of
the input (a self-attention ``qkv`` splits into q, k, v at a third of its bytes each, since the
concatenation is along dim 0) or, the other way, the bytes of two or three input tensors one
after the other, so nothing larger than one block's attention weights is ever in memory, and
original → diffusers from a ``.safetensors`` is a pure file-to-file copy.

What diffusers has no slot for (``y_embedder.y_embedding``, ``pos_embed``, Sprint's
``logvar_linear``) is kept beside the diffusers weights in :data:`SIDE_FILE` and recorded in
``sanatool.json``; the way back restores it. A model born in diffusers gets them as the official
code creates them (:func:`made_extras`), and the original file says so in its header, as it
carries the diffusers config and the provenance for the way back.

``.pth`` input is read only with ``torch.load(weights_only=True)`` and only when asked
(``allow_pickle``); ``.pth`` output is written with ``torch.save`` from a streamed safetensors file
that it maps (file-backed pages, not a second copy of the model in memory).
"""

from __future__ import annotations

import json
import math
import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sanatool.arch import (
    DEFAULT_MLP_RATIO,
    PRESETS,
    QK_NORM_KIND,
    TRANSFORMER_CLASS,
    check_dtype,
    expected_shapes,
    inner_dim,
    safetensors_dtype,
    torch_dtype,
    validate_config,
)
from sanatool.errors import InputError
from sanatool.formatting import human_bytes
from sanatool.io.modeldir import (
    ModelDir,
    carry_components,
    open_model_dir,
    open_transformer_dir,
    write_transformer_dir,
)
from sanatool.io.outputs import atomic_output_dir, atomic_output_file, check_output_path
from sanatool.io.provenance import write_provenance
from sanatool.io.safetensors import (
    DEFAULT_MAX_SHARD_SIZE,
    DTYPE_BYTES,
    FileSlice,
    TensorEntry,
    read_header,
    write_file,
)
from sanatool.progress import ProgressFn, no_progress
from sanatool.surgery.convert_keys import (
    EXTRAS,
    POS_EMBED,
    SIDE_FILE,
    Y_EMBEDDING,
    check_diffusers_names,
    describe_original,
    key_pairs,
)
from sanatool.surgery.convert_lora import LoraConvertResult, convert_lora, lora_source
from sanatool.surgery.plan import shard_size

#: The header field (safetensors ``__metadata__``, or a top-level key of a ``.pth``) with sanatool's record.
METADATA_KEY = "sanatool"
METADATA_FORMAT = "sanatool-original/1"
#: Caption tokens of the null caption: ``model_max_length`` of every SANA config.
NULL_CAPTION_TOKENS = 300
FORMATS = ("safetensors", "pth")
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")


@dataclass
class ConvertResult:
    """What a conversion wrote."""

    out: Path
    direction: str  # "to-original" or "to-diffusers"
    depth: int
    qk_norm: bool
    sprint: bool
    bytes: int
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.out),
            "direction": self.direction,
            "depth": self.depth,
            "qk_norm": self.qk_norm,
            "sprint": self.sprint,
            "bytes": self.bytes,
            "notes": list(self.notes),
        }


# ---------------------------------------------------------------------------------------------
# Input tensors and the output entries made of them


@dataclass(frozen=True)
class _Input:
    """One input tensor: a byte range of a safetensors file, or a (memory-mapped) tensor of a ``.pth``."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    slice: FileSlice | None = None
    tensor: Any = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_BYTES[self.dtype]


def _read_piece(piece: tuple[_Input, int, int], into: memoryview) -> None:
    """Read part ``index`` of ``parts`` equal parts (along dim 0) of an input tensor into ``into``."""
    inp, index, parts = piece
    if inp.slice is None:
        import torch

        part = inp.tensor.reshape(parts, -1)[index].contiguous()
        into[:] = part.view(torch.uint8).numpy().data.cast("B")
        return
    offset = inp.slice.start + index * len(into)
    fd = os.open(inp.slice.file, os.O_RDONLY)
    try:
        while into:
            count = os.preadv(fd, [into], offset)
            if not count:
                raise InputError(
                    f"{inp.slice.file} ended early while reading tensor bytes; the file is truncated"
                )
            into, offset = into[count:], offset + count
    finally:
        os.close(fd)


def _piece_bytes(piece: tuple[_Input, int, int]) -> bytearray:
    """The bytes of one piece (see :func:`_read_piece`)."""
    data = bytearray(piece[0].nbytes // piece[2])
    _read_piece(piece, memoryview(data))
    return data


def _cast(data: bytearray, source: str, target: str) -> bytes:
    import torch

    tensor = torch.frombuffer(data, dtype=torch_dtype(source)).to(torch_dtype(target))
    return tensor.view(torch.uint8).numpy().tobytes()


def _entry(name: str, pieces: list[tuple[_Input, int, int]], dtype: str | None, where: object) -> TensorEntry:
    """An output tensor: the concatenation along dim 0 of equal parts of input tensors, cast to ``dtype``.

    A single part of a safetensors input in its own dtype is a file slice (copied in the kernel);
    anything else is made when the writer asks for it.
    """
    first = pieces[0][0]
    for inp, _, parts in pieces:
        if (
            inp.dtype != first.dtype
            or inp.shape[1:] != first.shape[1:]
            or not inp.shape
            or inp.shape[0] % parts
        ):
            raise InputError(
                f"{where}: tensor {inp.name} ({inp.dtype} {list(inp.shape)}) cannot form {name} "
                f"(with {first.name}, {first.dtype} {list(first.shape)})"
            )
    shape = (sum(inp.shape[0] // parts for inp, _, parts in pieces), *first.shape[1:])
    target = dtype or first.dtype
    if target == first.dtype and len(pieces) == 1 and first.slice is not None:
        inp, index, parts = pieces[0]
        size = inp.slice.length // parts
        return TensorEntry(
            name, target, shape, FileSlice(inp.slice.file, inp.slice.start + index * size, size)
        )

    def produce() -> bytes | bytearray:
        # One buffer, each piece read straight into its place: no joining copy.
        data = bytearray(sum(inp.nbytes // parts for inp, _, parts in pieces))
        view, position = memoryview(data), 0
        for piece in pieces:
            size = piece[0].nbytes // piece[2]
            _read_piece(piece, view[position : position + size])
            position += size
        return data if target == first.dtype else _cast(data, first.dtype, target)

    return TensorEntry(name, target, shape, produce)


def _file_order(entry: TensorEntry) -> tuple[int, int]:
    """Copies in source order (adjacent ranges merge into one copy), made tensors first."""
    return (1, entry.source.start) if isinstance(entry.source, FileSlice) else (0, 0)


def _safetensors_inputs(path: Path) -> tuple[dict[str, _Input], dict[str, str]]:
    tensors, metadata = read_header(path)
    inputs = {
        name: _Input(name, info.dtype, info.shape, FileSlice(info.file, info.start, info.nbytes))
        for name, info in tensors.items()
    }
    return inputs, metadata


def read_original(path: Path, allow_pickle: bool = False) -> tuple[dict[str, _Input], dict[str, Any]]:
    """The tensors of an original checkpoint file and sanatool's record from its header (``{}`` if none).

    ``.safetensors`` are read from the header only. A pickle file (``.pth`` …) is refused unless
    ``allow_pickle``, then read with ``torch.load(weights_only=True, mmap=True)``: only tensors and
    plain containers are unpickled, and the tensors stay in the file until written.
    """
    if not path.is_file():
        raise InputError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    if path.suffix == ".safetensors":
        inputs, metadata = _safetensors_inputs(path)
        return inputs, _record(metadata.get(METADATA_KEY), path)
    if path.suffix not in PICKLE_SUFFIXES:
        raise InputError(
            f"{path}: unknown checkpoint type {path.suffix or '(no suffix)'}; expected .safetensors or .pth"
        )
    if not allow_pickle:
        raise InputError(
            f"{path} is a pickle checkpoint; pass --allow-pickle to read it with torch.load(weights_only=True), "
            "or use a .safetensors file"
        )
    import pickle

    import torch

    try:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # the legacy (pre-zip) format cannot be memory-mapped
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{path} cannot be read as a weights-only checkpoint: {first}") from err
    record = loaded.get(METADATA_KEY) if isinstance(loaded, dict) else None
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(
            f"{path} holds no state dict of tensors (expected {{'state_dict': {{name: tensor}}}})"
        )
    inputs = {}
    for name, tensor in state.items():
        try:
            dtype = safetensors_dtype(tensor.dtype)
        except InputError as err:
            raise InputError(
                f"{path}: tensor {name} has dtype {tensor.dtype}; expected fp32, bf16 or fp16"
            ) from err
        inputs[str(name)] = _Input(str(name), dtype, tuple(tensor.shape), tensor=tensor)
    return inputs, _record(record, path)


def _record(raw: Any, where: Path) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        record = json.loads(raw)
    except (TypeError, json.JSONDecodeError) as err:
        raise InputError(f"{where}: its {METADATA_KEY} header field is not JSON ({err})") from err
    if not isinstance(record, dict) or record.get("format") != METADATA_FORMAT:
        raise InputError(f"{where}: its {METADATA_KEY} header field is not a {METADATA_FORMAT} record")
    return record


# ---------------------------------------------------------------------------------------------
# The tensors diffusers has no slot for


def made_extras(config: dict[str, Any], dtype: str, seed: int) -> tuple[dict[str, Any], dict[str, str]]:
    """``y_embedder.y_embedding`` and ``pos_embed`` as the official SANA code creates them, with notes.

    The null caption is ``randn(300, caption_channels) / sqrt(caption_channels)`` (``CaptionEmbedder``),
    seeded; ``pos_embed`` is ``(1, patches, width)``: the fixed 2-D sin-cos table when the model uses a
    positional embedding (diffusers' ``interpolation_scale`` set), else zeros, as ``initialize_weights``
    leaves the buffer without ``use_pe``.
    """
    import torch

    caption = int(config["caption_channels"])
    generator = torch.Generator().manual_seed(seed)
    null = torch.randn(NULL_CAPTION_TOKENS, caption, generator=generator) / caption**0.5
    grid = int(config.get("sample_size") or 32) // int(config.get("patch_size") or 1)
    width = inner_dim(config)
    scale = config.get("interpolation_scale")
    if scale is None:
        table = torch.zeros(1, grid * grid, width)
        table_note = "zeros (the model uses no positional embedding, as the official code leaves it)"
    else:
        from diffusers.models.embeddings import get_2d_sincos_pos_embed  # seconds to import: only when needed

        table = get_2d_sincos_pos_embed(width, grid, base_size=grid, interpolation_scale=scale).unsqueeze(0)
        table_note = f"the fixed 2-D sin-cos table ({grid}x{grid}, interpolation scale {scale})"
    target = torch_dtype(dtype)
    tensors = {Y_EMBEDDING: null.to(target), POS_EMBED: table.float().to(target)}
    notes = {
        Y_EMBEDDING: f"made: the null caption as the official CaptionEmbedder initialises it "
        f"(randn({NULL_CAPTION_TOKENS}, {caption}) / sqrt({caption}), seed {seed}); a diffusers-trained model "
        "never learned one",
        POS_EMBED: f"made: {table_note}",
    }
    return tensors, notes


def _tensor_entry(name: str, tensor: Any) -> TensorEntry:
    import torch

    data = tensor.contiguous().view(torch.uint8).numpy().tobytes()
    return TensorEntry(name, safetensors_dtype(tensor.dtype), tuple(tensor.shape), lambda: data)


# ---------------------------------------------------------------------------------------------
# diffusers → original


def convert_to_original(
    src: str | os.PathLike | ModelDir,
    out: str | os.PathLike,
    fmt: str = "safetensors",
    dtype: str | None = None,
    variant: str | None = None,
    seed: int = 0,
    force: bool = False,
    progress: ProgressFn = no_progress,
) -> ConvertResult:
    """Write a diffusers model dir's transformer as one original-layout SANA checkpoint file.

    Any depth, with or without QK-norm, SANA 1.0/1.5 and Sprint. The side file's tensors are
    restored; without one they are made (:func:`made_extras`). The header records the diffusers
    config, what was made and the provenance, so converting back gives the same dir.
    """
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    if dtype is not None:
        dtype = safetensors_dtype(check_dtype(dtype))
    model = src if isinstance(src, ModelDir) else open_model_dir(src, variant)
    out_path = check_output_path(out, force, [model.path])
    tdir = model.transformer
    config = dict(tdir.config)
    qk_norm, sprint = bool(tdir.qk_norm), bool(config.get("guidance_embeds"))
    pairs = key_pairs(tdir.num_layers, qk_norm, sprint)
    check_diffusers_names(tdir.tensors, pairs, tdir.path)
    inputs = {
        name: _Input(name, info.dtype, info.shape, FileSlice(info.file, info.start, info.nbytes))
        for name, info in tdir.tensors.items()
    }
    entries = [
        _entry(pair.original, [(inputs[name], 0, 1) for name in pair.diffusers], dtype, tdir.path)
        for pair in pairs
    ]
    made: dict[str, str] = {}
    side = tdir.path / SIDE_FILE
    if side.is_file():
        kept, side_meta = _safetensors_inputs(side)
        stray = sorted(set(kept) - set(EXTRAS))
        if stray:
            raise InputError(f"{side}: tensor {stray[0]} is not one of {', '.join(EXTRAS)}")
        entries += [_entry(name, [(inp, 0, 1)], dtype, side) for name, inp in kept.items()]
        made = _record(side_meta.get(METADATA_KEY), side).get("made", {})
    else:
        model_dtype = dtype or tdir.tensors["patch_embed.proj.weight"].dtype
        tensors, made = made_extras(config, model_dtype, seed)
        entries += [_tensor_entry(name, tensor) for name, tensor in tensors.items()]
    entries.sort(key=_file_order)
    record = {
        "format": METADATA_FORMAT,
        "diffusers_config": config,
        "made": made,
        "provenance": model.provenance,
        "fingerprint": model.fingerprint(),
        "source": model.name,
    }
    metadata = {METADATA_KEY: json.dumps(record, sort_keys=True)}
    with atomic_output_file(out_path, force, [model.path]) as tmp:
        if fmt == "safetensors":
            write_file(tmp, entries, metadata, progress, "convert")
        else:
            staged = tmp.with_name(f"{tmp.name}.safetensors")
            try:
                write_file(staged, entries, metadata, progress, "convert")
                _save_pth(staged, tmp, metadata[METADATA_KEY])
            finally:
                staged.unlink(missing_ok=True)
    notes = [f"{name}: {note}" for name, note in made.items()]
    nbytes = sum(entry.nbytes for entry in entries)
    return ConvertResult(out_path, "to-original", tdir.num_layers, qk_norm, sprint, nbytes, notes)


def _save_pth(staged: Path, out: Path, record: str) -> None:
    """``torch.save({"state_dict": …, "sanatool": record})`` of a safetensors file's tensors, mapped from it."""
    import torch

    tensors, _ = read_header(staged)
    with open(staged, "rb") as handle:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
    state = {
        name: torch.frombuffer(
            mapped, dtype=torch_dtype(info.dtype), count=info.numel, offset=info.start
        ).view(info.shape)
        for name, info in tensors.items()
    }
    torch.save({"state_dict": state, METADATA_KEY: record}, out)
    del state  # the tensors borrow the mapping: drop them before closing it
    mapped.close()


# ---------------------------------------------------------------------------------------------
# original → diffusers


class _FileParent:
    """The parent of a conversion from a file: what its header recorded (provenance, fingerprint, name)."""

    def __init__(self, record: dict[str, Any], name: str) -> None:
        self.provenance = record.get("provenance") or {}
        self._fingerprint = record.get("fingerprint")
        self.name = name

    def fingerprint(self) -> str | None:
        return self._fingerprint


def _infer_config(inputs: dict[str, _Input], where: Path) -> tuple[dict[str, Any], list[str]]:
    """A diffusers config from the tensor shapes, with head counts from the preset of the same widths."""
    width, in_channels, patch, _ = inputs["x_embedder.proj.weight"].shape
    cross_width = inputs["blocks.0.cross_attn.q_linear.weight"].shape[0]
    match = next(
        (
            p
            for p in PRESETS.values()
            if inner_dim(p) == width
            and int(p["num_cross_attention_heads"]) * int(p["cross_attention_head_dim"]) == cross_width
        ),
        None,
    )
    if match is None:
        raise InputError(
            f"{where} is {width} wide, which matches no SANA preset, so its attention head counts are unknown; "
            "pass --components with a pipeline whose transformer/config.json has this model's heads"
        )
    config = {"_class_name": TRANSFORMER_CLASS, **match}
    notes = [f"config: head counts of a {width}-wide SANA (no config in the file)"]
    config.update(
        in_channels=in_channels,
        patch_size=patch,
        caption_channels=inputs["y_embedder.y_proj.fc1.weight"].shape[1],
    )
    pos = inputs.get(POS_EMBED)
    if pos is not None and len(pos.shape) == 3:
        side = math.isqrt(pos.shape[1])
        if side * side == pos.shape[1]:
            config["sample_size"] = side * patch
        config["interpolation_scale"] = _interpolation_scale(pos, config)
    return config, notes


def _interpolation_scale(pos: _Input, config: dict[str, Any]) -> float | None:
    """diffusers' ``interpolation_scale`` of an original ``pos_embed``: ``None`` for zeros (no PE), else
    the scale whose sin-cos table it is."""
    import torch

    table = torch.frombuffer(_piece_bytes((pos, 0, 1)), dtype=torch_dtype(pos.dtype)).float()
    if not table.any():
        return None
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    grid = int(config["sample_size"]) // int(config["patch_size"])
    for scale in (1.0, 2.0, 0.5, 4.0, 3.0, 1.5):
        made = get_2d_sincos_pos_embed(inner_dim(config), grid, base_size=grid, interpolation_scale=scale)
        if made.numel() == table.numel() and torch.allclose(made.flatten(), table, atol=1e-2):
            return scale
    return 1.0


def _original_config(
    inputs: dict[str, _Input],
    record: dict[str, Any],
    pipeline: ModelDir | None,
    depth: int,
    qk_norm: bool,
    sprint: bool,
    where: Path,
) -> tuple[dict[str, Any], list[str]]:
    if record.get("diffusers_config"):
        config, notes = dict(record["diffusers_config"]), []
    elif pipeline is not None:
        config = dict(pipeline.transformer.config)
        notes = [f"config: from {pipeline.path}/transformer/config.json"]
    else:
        config, notes = _infer_config(inputs, where)
    config.update(
        _class_name=TRANSFORMER_CLASS,
        num_layers=depth,
        qk_norm=(config.get("qk_norm") or QK_NORM_KIND) if qk_norm else None,
        guidance_embeds=sprint,
    )
    config["cross_attention_dim"] = inputs["blocks.0.cross_attn.kv_linear.weight"].shape[1]
    hidden = inputs["blocks.0.mlp.inverted_conv.conv.weight"].shape[0] // 2
    if int(float(config.get("mlp_ratio", DEFAULT_MLP_RATIO)) * inner_dim(config)) != hidden:
        config["mlp_ratio"] = hidden / inner_dim(config)
    out_channels = inputs["final_layer.linear.weight"].shape[0] // int(config.get("patch_size") or 1) ** 2
    config["out_channels"] = out_channels
    validate_config(config, where)
    return config, notes


def _check_against_config(entries: Sequence[TensorEntry], config: dict[str, Any], where: Path) -> None:
    shapes = {entry.name: entry.shape for entry in entries}
    for name, shape in expected_shapes(config).items():
        if shapes.get(name) != shape:
            raise InputError(
                f"{where}: tensor {name} would be {list(shapes.get(name) or ())} but the config implies {list(shape)}; "
                "the config does not fit this checkpoint"
            )


def check_original(path: str | os.PathLike, allow_pickle: bool = False) -> tuple[int, bool, bool]:
    """Depth, QK-norm and Sprint of an original checkpoint file, refusing one that cannot be converted."""
    inputs, _ = read_original(Path(path).expanduser(), allow_pickle)
    return describe_original(inputs, path)


def convert_to_diffusers(
    src: str | os.PathLike,
    out: str | os.PathLike,
    components: str | os.PathLike | None = None,
    dtype: str | None = None,
    allow_pickle: bool = False,
    force: bool = False,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    progress: ProgressFn = no_progress,
) -> ConvertResult:
    """Write an original SANA checkpoint as a diffusers transformer dir, or with ``components`` a whole
    pipeline dir whose other components are linked from that pipeline.

    Depth, QK-norm and Sprint come from the tensor names; the config from the file's header (written
    by :func:`convert_to_original`), else the pipeline's transformer config, else the tensor shapes.
    Tensors without a diffusers slot go to :data:`SIDE_FILE`, recorded in ``sanatool.json``.
    """
    src_path = Path(src).expanduser()
    if dtype is not None:
        dtype = safetensors_dtype(check_dtype(dtype))
    pipeline = open_model_dir(components) if components is not None else None
    if pipeline is not None and pipeline.kind != "pipeline":
        raise InputError(
            f"--components {components}: {pipeline.path} is a bare transformer dir, not a pipeline dir"
        )
    inputs_to_protect = [src_path] + ([pipeline.path] if pipeline else [])
    out_path = check_output_path(out, force, inputs_to_protect)
    inputs, record = read_original(src_path, allow_pickle)
    depth, qk_norm, sprint = describe_original(inputs, src_path)
    if pipeline is not None and bool(pipeline.transformer.config.get("guidance_embeds")) != sprint:
        kind = "a SANA-Sprint" if sprint else "not a SANA-Sprint"
        raise InputError(
            f"{src_path} is {kind} checkpoint but --components {pipeline.path} is built for the other kind; "
            "use a pipeline of the same kind"
        )
    try:
        config, notes = _original_config(inputs, record, pipeline, depth, qk_norm, sprint, src_path)
    except (ValueError, IndexError, ZeroDivisionError) as err:  # shapes of the wrong rank or size
        raise InputError(f"{src_path}: its tensor shapes do not form a SANA transformer ({err})") from err
    entries = []
    for pair in key_pairs(depth, qk_norm, sprint):
        parts = len(pair.diffusers)
        for index, name in enumerate(pair.diffusers):
            entries.append(_entry(name, [(inputs[pair.original], index, parts)], dtype, src_path))
    _check_against_config(entries, config, src_path)
    entries.sort(key=_file_order)
    extras = [_entry(name, [(inputs[name], 0, 1)], dtype, src_path) for name in EXTRAS if name in inputs]
    made = record.get("made", {})
    extras_record = {entry.name: made.get(entry.name, "kept from the original file") for entry in extras}
    shard_bytes = shard_size(max_shard_size)
    parent = _FileParent(record, src_path.stem)
    with atomic_output_dir(out_path, force, inputs_to_protect) as tmp:
        if pipeline is not None:
            carry_components(pipeline, tmp)
        transformer_out = tmp / "transformer" if pipeline is not None else tmp
        write_transformer_dir(transformer_out, config, entries, shard_bytes, progress)
        if extras:
            side_meta = {METADATA_KEY: json.dumps({"format": METADATA_FORMAT, "made": extras_record})}
            write_file(transformer_out / SIDE_FILE, extras, side_meta)
        fingerprint = open_transformer_dir(transformer_out).fingerprint()
        args = {
            "source": str(src_path),
            "components": str(pipeline.path) if pipeline else None,
            "dtype": dtype,
            "original_extras": {
                "file": str((transformer_out / SIDE_FILE).relative_to(tmp)) if extras else None,
                "tensors": extras_record,
            },
        }
        summary = f"convert(original → diffusers, {depth} blocks)"
        write_provenance(tmp, parent, "convert", args, summary, fingerprint, origin=src_path.stem)  # type: ignore[arg-type]
    nbytes = sum(entry.nbytes for entry in entries + extras)
    notes += [f"{name}: {note}" for name, note in extras_record.items()]
    return ConvertResult(out_path, "to-diffusers", depth, qk_norm, sprint, nbytes, notes)


def convert(
    src: str | os.PathLike,
    out: str | os.PathLike,
    fmt: str = "safetensors",
    components: str | os.PathLike | None = None,
    dtype: str | None = None,
    variant: str | None = None,
    allow_pickle: bool = False,
    seed: int = 0,
    force: bool = False,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    progress: ProgressFn = no_progress,
) -> ConvertResult | LoraConvertResult:
    """Convert either way: a model dir (or ``builtin:NAME``) → an original file, an original file → a diffusers dir.

    A LoRA (diffusers' LoRA dir or file, or a file with original keys) converts to the other naming
    (:func:`~sanatool.surgery.convert_lora.convert_lora`).
    """
    path = Path(str(src)).expanduser()
    if lora_source(path) is not None:
        for flag, given in (
            ("--components", components is not None),
            ("--variant", variant is not None),
            ("--format pth", fmt != "safetensors"),
        ):
            if given:
                raise InputError(f"{flag} is for model checkpoints; a LoRA converts to a safetensors LoRA")
        return convert_lora(path, out, dtype, force)
    if path.is_file():
        if variant is not None:
            raise InputError("--variant picks the weights of a model dir; the source is a single file")
        if fmt != "safetensors":
            raise InputError(
                f"--format {fmt}: an original file becomes a diffusers dir; --format is for the way back"
            )
        return convert_to_diffusers(
            path, out, components, dtype, allow_pickle, force, max_shard_size, progress
        )
    if components is not None:
        raise InputError(
            "--components is for converting an original file into a pipeline dir; the source is a dir"
        )
    return convert_to_original(src, out, fmt, dtype, variant, seed, force, progress)


def describe_bytes(result: ConvertResult | LoraConvertResult) -> str:
    """One line for people: what was written."""
    if isinstance(result, LoraConvertResult):
        naming = "original" if result.direction == "lora-to-original" else "diffusers"
        return (
            f"LoRA of {result.modules} modules ({result.depth} blocks) in {naming} keys, "
            f"{human_bytes(result.bytes)} written to {result.out}"
        )
    qk = "QK-norm" if result.qk_norm else "no QK-norm"
    kind = ", Sprint" if result.sprint else ""
    return f"{result.depth} blocks, {qk}{kind}, {human_bytes(result.bytes)} written to {result.out}"
