"""The latent and text-embedding cache: encode a data set once, train many times without the encoders.

SANA users' top complaint is VAE and text-encoder memory during training; here the frozen
encoders run once, in inference mode, and are freed before the transformer is built. Entries live
under ``CACHE_ROOT/<key>/`` as safetensors shards (``latents``, ``embeds``, ``mask`` per item)
plus the empty-caption embedding used for caption dropout. The token ids (``ids``) behind each
embedding are kept too, for runs that train the text encoder (``--train-text-encoder``). The key
hashes the encoders' files (text encoder, tokenizer, VAE), the data set (captions, image names,
sizes, times), the image resolution and the prompt-encoding settings, so any change to any of them
means a fresh entry.
Weight files over 256 MB are hashed by 32 evenly spaced MiB (the first holds the safetensors
header), so keying a 5 GB text encoder takes a fraction of a second.

With aspect-ratio buckets the entry holds the items grouped by bucket (each bucket's items in data
set order, buckets in order of their first item): every shard holds one bucket's latents, and ``cache.json``
lists each bucket's size, first item and count. The per-item sizes are part of the data set's
fingerprint, so the key changes with them (unless every image trains square: then the entry is the
one a square run makes, and either run reuses it).

Text embeddings come from :func:`sanatool.inference.text.encode_prompts`, the function sampling uses, so
training and sampling see identical conditioning. Trailing padding columns that no caption uses are
dropped: cross-attention masks them out, so this changes no result and saves most of the compute.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sanatool.errors import InputError
from sanatool.io.outputs import give_usual_mode
from sanatool.progress import ProgressFn, no_progress
from sanatool.training.data import ImageDataset, load_pixels

CACHE_FORMAT = "sanatool-latent-cache/2"
CACHE_META = "cache.json"
#: The cache's folder under the user cache dir (``$XDG_CACHE_HOME``, else ``~/.cache``).
CACHE_DIR_NAME = "sanatool"
#: Items per safetensors shard of the cache.
SHARD_ITEMS = 1024
#: Files above this size are hashed by header plus sampled chunks (a 5 GB text encoder in ~0.1 s).
_FULL_HASH_LIMIT = 256 * 1024 * 1024
_SAMPLE_CHUNKS = 32
_CHUNK = 1024 * 1024
ENCODER_COMPONENTS = ("text_encoder", "tokenizer", "vae")


def default_cache_root() -> Path:
    """The user's cache dir for sanatool: ``$XDG_CACHE_HOME/sanatool``, else ``~/.cache/sanatool``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec: a relative path is invalid and ignored.
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / CACHE_DIR_NAME


def resolve_cache_root(cache_dir: str | os.PathLike | None, inputs: list[Path]) -> Path:
    """``--cache-dir`` (else :func:`default_cache_root`), refused when it lies in an input: inputs are never modified."""
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_root()
    resolved = root.resolve()
    for item in inputs:
        other = Path(item).expanduser().resolve()
        if resolved == other or other in resolved.parents:
            raise InputError(
                f"the cache dir {root} is inside the input {item}, which sanatool never modifies; "
                "pass a --cache-dir outside the inputs"
            )
    return root


def _hash_file(path: Path, digest: Any) -> None:
    size = path.stat().st_size
    digest.update(f"{path.name}|{size}\n".encode())
    with open(path, "rb") as handle:
        if size <= _FULL_HASH_LIMIT:
            for block in iter(lambda: handle.read(_CHUNK), b""):
                digest.update(block)
            return
        # Large weight files: the header (names, shapes, dtypes) plus evenly spaced chunks of data.
        # Any retraining touches every chunk, so a changed encoder still changes the hash.
        for index in range(_SAMPLE_CHUNKS):
            handle.seek(index * (size - _CHUNK) // (_SAMPLE_CHUNKS - 1))
            digest.update(handle.read(_CHUNK))


def content_hash(folder: Path) -> str:
    """Hash of every file under ``folder`` (names and contents; large files sampled, see module notes)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(folder)}\n".encode())
        _hash_file(file.resolve(), digest)
    return digest.hexdigest()[:16]


def encoder_hash(pipeline_dir: Path) -> str:
    """Content hash of a pipeline's text encoder, tokenizer and VAE (the frozen encoders)."""
    parts = []
    for component in ENCODER_COMPONENTS:
        folder = pipeline_dir / component
        if not folder.is_dir():
            raise InputError(f"{pipeline_dir} has no {component}/; training needs a full pipeline dir")
        parts.append(f"{component}:{content_hash(folder)}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


@dataclass
class EncodeSettings:
    """How captions and images are encoded. Fields that change the result are part of the cache key."""

    max_sequence_length: int = 300
    complex_human_instruction: list[str] | None = None
    dtype: str = "fp32"
    device: str = "cpu"
    batch_size: int = 32
    variant: str | None = None  # which weights files of the encoders (a dir may hold fp32 and bf16 sets)

    def key_fields(self) -> dict[str, Any]:
        # The device and batch size do not change what is computed (beyond float noise): not keyed.
        fields: dict[str, Any] = {
            "max_sequence_length": self.max_sequence_length,
            "complex_human_instruction": self.complex_human_instruction,
            "dtype": self.dtype,
        }
        if self.variant is not None:  # keyed only when set: caches of default files keep their names
            fields["variant"] = self.variant
        return fields


def cache_key(pipeline_dir: Path, dataset: ImageDataset, settings: EncodeSettings) -> str:
    """The cache entry name: a hash of encoders, data set and encoding settings."""
    digest = hashlib.sha256()
    digest.update(CACHE_FORMAT.encode())
    digest.update(encoder_hash(pipeline_dir).encode())
    digest.update(dataset.fingerprint().encode())
    digest.update(json.dumps(settings.key_fields(), sort_keys=True).encode())
    return digest.hexdigest()[:20]


@dataclass(frozen=True)
class Bucket:
    """Items ``start … start + count − 1`` of a cache entry, whose latents share one shape."""

    start: int
    count: int
    latent_shape: tuple[int, ...]


@dataclass
class LatentCache:
    """An opened cache entry: per-item latents and caption embeddings in safetensors shards."""

    path: Path
    meta: dict[str, Any]

    @property
    def count(self) -> int:
        return int(self.meta["count"])

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.meta["latent_shape"])

    @property
    def buckets(self) -> list[Bucket]:
        """The entry's buckets in item order (one, spanning every item, without aspect buckets)."""
        rows = self.meta.get("buckets")
        if rows is None:  # entries written before aspect buckets
            return [Bucket(0, self.count, self.latent_shape)]
        return [Bucket(int(r["start"]), int(r["count"]), tuple(r["latent_shape"])) for r in rows]

    def reader(self) -> CacheReader:
        """A reader that gathers batches of items from the memory-mapped shards."""
        return CacheReader(self)

    def null_embedding(self) -> tuple[Any, Any, Any]:
        """The empty caption's embedding, mask and token ids, (1, L, D), (1, L) and (1, L): what
        caption dropout swaps in."""
        from safetensors.torch import load_file

        null = load_file(str(self.path / "null.safetensors"))
        return null["embeds"], null["mask"], null["ids"]


class CacheReader:
    """Gathers items by index from the memory-mapped cache shards (only the rows asked for are read)."""

    def __init__(self, cache: LatentCache) -> None:
        from safetensors import safe_open

        shards = sorted(cache.path.glob("items-*.safetensors"))
        self._handles = [safe_open(str(shard), framework="pt") for shard in shards]
        # Bucketed entries end a shard at each bucket's end, so shards are not all SHARD_ITEMS long.
        self._starts = list(
            itertools.accumulate((h.get_slice("latents").get_shape()[0] for h in self._handles), initial=0)
        )
        self.count = cache.count
        self.latent_shape = cache.latent_shape
        self.buckets = cache.buckets

    def gather(
        self, indices: list[int], keys: tuple[str, ...] = ("latents", "embeds", "mask")
    ) -> dict[str, Any]:
        """``latents`` (B, C, h, w), ``embeds`` (B, L, D), ``mask`` and ``ids`` (B, L), those named
        in ``keys``, for the given items."""
        import torch

        rows: dict[str, list[Any]] = {key: [] for key in keys}
        for index in indices:
            shard = bisect.bisect_right(self._starts, index) - 1
            handle, row = self._handles[shard], index - self._starts[shard]
            for key, values in rows.items():
                values.append(handle.get_slice(key)[row : row + 1])
        return {key: torch.cat(values) for key, values in rows.items()}


def open_cache(path: Path) -> LatentCache | None:
    """Open a complete cache entry, or ``None`` when it is missing or of another format."""
    meta_path = path / CACHE_META
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if meta.get("format") != CACHE_FORMAT:
        return None
    return LatentCache(path, meta)


def load_encoders(
    pipeline_dir: Path, device: str, dtype: str, variant: str | None = None
) -> tuple[Any, Any, Any]:
    """The frozen tokenizer, text encoder and VAE of a pipeline dir, in eval mode on ``device``.

    ``variant``: the pipeline's weights variant, read where a component has its files.
    """
    from diffusers import AutoencoderDC
    from transformers import AutoModel, AutoTokenizer

    from sanatool.arch import torch_dtype
    from sanatool.inference.pipeline import load_component

    target = torch_dtype(dtype)
    tokenizer = AutoTokenizer.from_pretrained(pipeline_dir / "tokenizer")
    text_encoder = load_component(AutoModel, pipeline_dir / "text_encoder", target, variant)
    vae = load_component(AutoencoderDC, pipeline_dir / "vae", target, variant)
    for module in (text_encoder, vae):
        module.to(device).eval().requires_grad_(False)
    return tokenizer, text_encoder, vae


def _last_used_column(mask: Any) -> int:
    used = mask.sum(dim=0).nonzero()
    return int(used.max()) + 1 if len(used) else 1


def _pad_columns(tensor: Any, length: int) -> Any:
    """Trim or zero-pad dim 1 (text tokens) to ``length``."""
    import torch

    if tensor.shape[1] >= length:
        return tensor[:, :length].contiguous()
    pad = torch.zeros((tensor.shape[0], length - tensor.shape[1], *tensor.shape[2:]), dtype=tensor.dtype)
    return torch.cat([tensor, pad], dim=1)


class _ShardWriter:
    """Collects encoded batches and writes them as shards of ``SHARD_ITEMS`` items."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.pending: list[dict[str, Any]] = []
        self.count = 0
        self.shards = 0

    def add(self, batch: dict[str, Any]) -> None:
        self.pending.append(batch)
        self.count += len(batch["latents"])
        while self.count >= SHARD_ITEMS:
            self._flush(SHARD_ITEMS)

    def close(self) -> None:
        if self.count:
            self._flush(self.count)

    def _flush(self, items: int) -> None:
        import torch
        from safetensors.torch import save_file

        width = max(batch["mask"].shape[1] for batch in self.pending)
        merged = {"latents": torch.cat([b["latents"] for b in self.pending])}
        for key in ("embeds", "mask", "ids"):
            merged[key] = torch.cat([_pad_columns(b[key], width) for b in self.pending])
        head = {key: value[:items].contiguous() for key, value in merged.items()}
        save_file(head, str(self.folder / f"items-{self.shards:05d}.safetensors"))
        self.shards += 1
        self.count -= items
        self.pending = [{key: value[items:] for key, value in merged.items()}] if self.count else []


def _bucket_members(dataset: ImageDataset) -> list[tuple[tuple[int, int], list[int]]]:
    """Each training size with its items (data set order); the sizes ordered by their first item."""
    members: dict[tuple[int, int], list[int]] = {}
    for index in range(len(dataset)):
        members.setdefault(dataset.size_of(index), []).append(index)
    return list(members.items())


def build_cache(
    pipeline_dir: Path,
    dataset: ImageDataset,
    cache_root: Path,
    settings: EncodeSettings,
    progress: ProgressFn = no_progress,
) -> LatentCache:
    """Return the cache entry for this pipeline and data set, encoding it first if it does not exist.

    The entry is written into a temporary sibling and renamed when complete, so an interrupted
    encode never leaves a half cache that a later run would trust.
    """
    import torch
    from safetensors.torch import load_file, save_file

    from sanatool.inference.text import encode_prompts, tokenize_prompts

    key = cache_key(pipeline_dir, dataset, settings)
    target = cache_root / key
    existing = open_cache(target)
    if existing is not None:
        return existing
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=cache_root))
        give_usual_mode(tmp)
    except OSError as err:
        raise InputError(
            f"cannot create the latent cache in {cache_root} ({err.strerror or err}); pass --cache-dir DIR"
        ) from err
    try:
        tokenizer, text_encoder, vae = load_encoders(
            pipeline_dir, settings.device, settings.dtype, settings.variant
        )
        scaling = float(vae.config.scaling_factor)

        def encode_text(texts: list[str], instruction: bool = True) -> tuple[Any, Any, Any]:
            embeds, mask = encode_prompts(
                tokenizer,
                text_encoder,
                texts,
                settings.device,
                max_sequence_length=settings.max_sequence_length,
                complex_human_instruction=settings.complex_human_instruction if instruction else None,
            )
            use_instruction = instruction and settings.complex_human_instruction
            # The ids behind the embeddings: only without an instruction do they line up column for
            # column (training a text encoder refuses instruction runs); zeros stand in otherwise.
            ids = (
                torch.zeros_like(mask)
                if use_instruction
                else tokenize_prompts(tokenizer, texts, settings.max_sequence_length)[0]
            )
            # Each batch keeps only the columns its captions use; shards are padded to a common width.
            width = _last_used_column(mask)
            return embeds[:, :width].cpu(), mask[:, :width].cpu(), ids[:, :width].to(torch.int32).cpu()

        writer = _ShardWriter(tmp)
        total = len(dataset)
        buckets: list[dict[str, Any]] = []
        done = 0
        progress("encode", 0, total)
        with torch.inference_mode():
            # The unconditional embedding is the empty prompt without instruction, as sampling computes it.
            null_embeds, null_mask, null_ids = encode_text([""], instruction=False)
            for (height, width), members in _bucket_members(dataset):
                latent_shape: tuple[int, ...] = ()
                for start in range(0, len(members), settings.batch_size):
                    batch = [dataset.items[index] for index in members[start : start + settings.batch_size]]
                    pixels = torch.stack([load_pixels(item, height, width) for item in batch])
                    pixels = pixels.to(settings.device, dtype=vae.dtype)
                    latents = vae.encode(pixels).latent.float().cpu() * scaling
                    embeds, mask, ids = encode_text([item.text for item in batch])
                    latent_shape = tuple(latents.shape[1:])
                    writer.add({"latents": latents, "embeds": embeds, "mask": mask, "ids": ids})
                    done += len(batch)
                    progress("encode", done, total)
                writer.close()  # a shard never spans two buckets: their latents differ in shape
                buckets.append(
                    {
                        "size": [height, width],
                        "start": done - len(members),
                        "count": len(members),
                        "latent_shape": list(latent_shape),
                    }
                )
        # Give every shard (and the empty caption) one width: the longest caption's.
        shards = sorted(tmp.glob("items-*.safetensors"))
        loaded = {shard: load_file(str(shard)) for shard in shards}
        used = max([null_mask.shape[1]] + [data["mask"].shape[1] for data in loaded.values()])
        for shard, data in loaded.items():
            if data["mask"].shape[1] != used:
                for key in ("embeds", "mask", "ids"):
                    data[key] = _pad_columns(data[key], used)
                save_file(data, str(shard))
        del loaded
        null = {
            "embeds": _pad_columns(null_embeds, used),
            "mask": _pad_columns(null_mask, used),
            "ids": _pad_columns(null_ids, used),
        }
        save_file(null, str(tmp / "null.safetensors"))
        meta = {
            "format": CACHE_FORMAT,
            "key": key,
            "count": total,
            "latent_shape": buckets[0]["latent_shape"],
            "buckets": buckets,
            "text_length": int(used),
            "text_dim": int(null_embeds.shape[-1]),
            "resolution": dataset.resolution,
            "scaling_factor": scaling,
            "data_dir": str(dataset.root),
            "encoders": encoder_hash(pipeline_dir),
            "settings": settings.key_fields(),
        }
        (tmp / CACHE_META).write_text(json.dumps(meta, indent=2) + "\n")
        if target.exists():  # another process finished the same entry first: theirs is as good
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    opened = open_cache(target)
    if opened is None:
        raise InputError(f"the latent cache {target} could not be read back after writing it")
    return opened
