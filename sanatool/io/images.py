"""Reading images that users hand in (data sets, samples dirs): one place that refuses what PIL
would choke on (a file that is not an image, a truncated one, a header claiming gigapixels)
with one line naming the file, never PIL's own exceptions."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from sanatool.errors import InputError

if TYPE_CHECKING:
    from PIL.Image import Image

#: The largest image side sanatool reads (data sets, samples, candidates).
MAX_SIDE = 8192


class UnreadableImage(InputError):
    """A file that is not a readable image, or one larger than :data:`MAX_SIDE` (exit code 2).

    ``reason`` is the message without the path, for callers that name the file their own way.
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path} {reason}")
        self.reason = reason


_DECODE_ERRORS: tuple[type[Exception], ...] = (OSError, SyntaxError, ValueError)


def open_image(path: str | os.PathLike) -> Image:
    """Open an image lazily (its header only), refusing one that cannot be identified or whose
    header claims a side over :data:`MAX_SIDE` before any pixel is decoded.

    Use it as a context manager (``with open_image(p) as image``) like ``PIL.Image.open``.
    """
    from PIL import Image as PILImage

    try:
        image = PILImage.open(Path(path))
    except (PILImage.DecompressionBombError, *_DECODE_ERRORS) as err:
        raise UnreadableImage(path, f"is unreadable ({err})") from err
    if max(image.size) > MAX_SIDE:
        size = image.size
        image.close()
        raise UnreadableImage(path, f"is {size[0]}x{size[1]}; images larger than {MAX_SIDE} px are refused")
    return image


def load_image(path: str | os.PathLike, mode: str = "RGB") -> Image:
    """Decode a whole image in ``mode`` (see :func:`open_image`); a truncated or corrupt file raises
    :class:`UnreadableImage`."""
    with open_image(path) as image:
        try:
            return image.convert(mode)
        except _DECODE_ERRORS as err:
            raise UnreadableImage(path, f"is unreadable ({err})") from err
