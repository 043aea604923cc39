"""Small checks several test modules share."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


def tree_digest(root: Path) -> str:
    """Names and bytes of every file under ``root``: equal digests mean nothing was added, removed or changed."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def pixels(image) -> np.ndarray:
    """An image's RGB values as signed integers, so that differences do not wrap."""
    return np.asarray(image.convert("RGB")).astype(np.int16)
