"""Training data sets: an image folder with ``metadata.jsonl`` (the Hugging Face imagefolder convention).

Each line of ``metadata.jsonl`` is ``{"file_name": "00001.png", "text": "a red circle"}``. Loading
validates everything from the metadata and the image headers only (no pixel is decoded), so a
broken data set is refused in a second, before any model is loaded or anything is written.

Mixed image sizes are refused unless a ``resolution`` is given, in which case every image is
resized (shorter side to ``resolution``, bicubic) and centre-cropped to ``resolution``² — the
same preprocessing for every image, so nothing is silently distorted.

With aspect-ratio buckets (``--aspect-buckets``, :func:`assign_buckets`) each image instead goes to
the nearest of SANA's own 1024 px aspect-ratio bins (diffusers' ``ASPECT_RATIO_1024_BIN``, what
``SanaPipeline`` snaps sizes to), scaled to the training resolution: it is resized to cover the
bin and centre-cropped to it, so a landscape photo keeps its landscape.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sanatool.errors import InputError
from sanatool.io.images import MAX_SIDE, UnreadableImage, load_image, open_image
from sanatool.io.jsonl import METADATA_NAME, read_jsonl


@dataclass(frozen=True)
class DataItem:
    """One training example: an image file (absolute path) and its caption."""

    path: Path
    text: str


@dataclass
class ImageDataset:
    """A validated image folder: items in metadata order and the training resolution.

    ``buckets``: with aspect-ratio buckets, each item's training size ``(height, width)``; else
    ``None`` and every item is ``resolution``².
    """

    root: Path
    items: list[DataItem]
    resolution: int
    resized: bool
    buckets: list[tuple[int, int]] | None = None

    def size_of(self, index: int) -> tuple[int, int]:
        """The ``(height, width)`` item ``index`` is trained at."""
        return self.buckets[index] if self.buckets is not None else (self.resolution, self.resolution)

    def __len__(self) -> int:
        return len(self.items)

    def fingerprint(self) -> str:
        """Hash of the captions and each image's name, size and modification time.

        Part of the latent cache key: editing a caption or replacing an image invalidates the cache
        without reading every image again on a cache hit.
        """
        digest = hashlib.sha256()
        digest.update(f"resolution={self.resolution}\n".encode())
        for item in self.items:
            stat = item.path.stat()
            digest.update(f"{item.path.name}|{stat.st_size}|{stat.st_mtime_ns}|{item.text}\n".encode())
        square = (self.resolution, self.resolution)
        # Keyed only when some image is not square: then its latents are the square run's, and so is the cache.
        if self.buckets is not None and any(size != square for size in self.buckets):
            digest.update(("buckets=" + ",".join(f"{h}x{w}" for h, w in self.buckets)).encode())
        return digest.hexdigest()[:16]


def _parse_metadata(root: Path) -> list[tuple[int, str, str]]:
    meta = root / METADATA_NAME
    if not meta.is_file():
        raise InputError(
            f"data dir {root} has no {METADATA_NAME}; a data set is an image folder with one JSON line per "
            'image, e.g. {"file_name": "00001.png", "text": "a red circle"} (sanatool data shapes writes one)'
        )
    rows: list[tuple[int, str, str]] = []
    for number, row in read_jsonl(meta):
        where = f"{meta}:{number}"
        name = row.get("file_name")
        text = row.get("text")
        if not isinstance(name, str) or not name:
            raise InputError(f"{where}: missing file_name")
        if not isinstance(text, str) or not text.strip():
            raise InputError(
                f"{where}: the caption (text) of {name} is missing or empty; every image needs one"
            )
        rows.append((number, name, text.strip()))
    if not rows:
        raise InputError(f"{meta} lists no images; the data set is empty")
    return rows


def aspect_bins(resolution: int, multiple: int) -> dict[str, tuple[int, int]]:
    """SANA's 1024 px aspect-ratio bins (diffusers' ``ASPECT_RATIO_1024_BIN``: ratio h/w → (h, w)) scaled
    to ``resolution``, each side rounded to a multiple of ``multiple`` (the VAE factor × patch size)."""
    from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import ASPECT_RATIO_1024_BIN

    def side(pixels: float) -> int:
        return max(multiple, round(pixels * resolution / 1024 / multiple) * multiple)

    return {ratio: (side(h), side(w)) for ratio, (h, w) in ASPECT_RATIO_1024_BIN.items()}


def _nearest_bin(width: int, height: int, bins: dict[str, tuple[int, int]]) -> tuple[int, int]:
    # The bin of the nearest of SANA's ratios (as SanaPipeline snaps a requested size), scaled.
    from diffusers.image_processor import PixArtImageProcessor

    return PixArtImageProcessor.classify_height_width_bin(height, width, bins)


def load_dataset(
    data_dir: str | os.PathLike, resolution: int | None = None, bucket_multiple: int | None = None
) -> ImageDataset:
    """Open and validate an image-folder data set.

    Checks that ``metadata.jsonl`` exists and every line has a file name inside the folder and a
    non-empty caption, that each image exists and is a readable image, and that all images share
    one square-able size (or resizes to ``resolution``). Raises :class:`InputError` naming the
    offending file and line.

    ``bucket_multiple``: sort images into aspect-ratio buckets (:func:`aspect_bins` at ``resolution``,
    sides multiples of this) instead; any mix of sizes is then welcome.
    """
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise InputError(f"data dir {data_dir} does not exist")
    if not root.is_dir():
        raise InputError(f"data {data_dir} is a file; pass the image folder that holds {METADATA_NAME}")
    if resolution is not None and not 8 <= resolution <= MAX_SIDE:
        raise InputError(f"--resolution must be from 8 to {MAX_SIDE}, got {resolution}")
    rows = _parse_metadata(root)
    items: list[DataItem] = []
    image_sizes: list[tuple[int, int]] = []
    sizes: dict[tuple[int, int], str] = {}
    real_root = root.resolve()
    for number, name, text in rows:
        path = root / name
        if real_root not in path.resolve().parents:
            raise InputError(f"{root / METADATA_NAME}:{number}: file_name {name!r} points outside {root}")
        if not path.is_file():
            raise InputError(f"{root / METADATA_NAME}:{number}: image {name} does not exist in {root}")
        with open_image(path) as image:
            size = image.size
        sizes.setdefault(size, name)
        image_sizes.append(size)
        items.append(DataItem(path, text))
    if bucket_multiple is not None:
        assert resolution is not None, "aspect buckets need the training resolution"
        bins = aspect_bins(resolution, bucket_multiple)
        buckets = [_nearest_bin(width, height, bins) for width, height in image_sizes]
        resized = any((w, h) != (bw, bh) for (w, h), (bh, bw) in zip(image_sizes, buckets, strict=True))
        return ImageDataset(root, items, resolution, resized, buckets)
    if resolution is None:
        if len(sizes) > 1:
            (one, first), (two, second) = list(sizes.items())[:2]
            raise InputError(
                f"images in {root} have mixed sizes ({first} is {one[0]}x{one[1]}, {second} is {two[0]}x{two[1]}); "
                "sanatool refuses to guess: pass --resolution N to resize and centre-crop all of them to NxN"
            )
        (width, height) = next(iter(sizes))
        if width != height:
            raise InputError(
                f"images in {root} are {width}x{height}, not square; pass --resolution N to resize and centre-crop"
            )
        return ImageDataset(root, items, width, resized=False)
    return ImageDataset(root, items, resolution, resized=any(s != (resolution, resolution) for s in sizes))


def load_pixels(item: DataItem, resolution: int, width: int | None = None) -> Any:
    """One image as a float tensor (3, H, W) in [-1, 1], the range the VAE expects.

    ``H = resolution`` and ``W = width`` (default: square). Resizes the image to cover H×W
    (bicubic) and centre-crops when it is not already that size.
    """
    import numpy as np
    import torch
    from PIL import Image

    try:
        image = load_image(item.path)
    except UnreadableImage as err:
        from sanatool.errors import RunFailure

        raise RunFailure(f"cannot decode image {item.path} ({err}); fix or remove it and rerun") from err
    target_h, target_w = resolution, resolution if width is None else width
    if image.size != (target_w, target_h):
        old_w, old_h = image.size
        scale = max(target_w / old_w, target_h / old_h)
        new = (max(target_w, round(old_w * scale)), max(target_h, round(old_h * scale)))
        image = image.resize(new, Image.Resampling.BICUBIC)
        left, top = (new[0] - target_w) // 2, (new[1] - target_h) // 2
        image = image.crop((left, top, left + target_w, top + target_h))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
