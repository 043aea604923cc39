"""Numbers and block lists as people read them: ``1.23M`` params, ``3.21 GB``, blocks ``0-2,5``."""

from __future__ import annotations

from collections.abc import Sequence


def format_block_list(indices: Sequence[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` → ``0-2,5,7-8`` (the syntax :func:`~sanatool.surgery.blocks.parse_block_list` reads)."""
    parts: list[list[int]] = []
    for value in indices:
        if parts and value == parts[-1][1] + 1:
            parts[-1][1] = value
        else:
            parts.append([value, value])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in parts)


def human_count(value: float) -> str:
    """1234567 → ``1.23M``."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:.0f}"


def human_bytes(value: float) -> str:
    """Bytes in decimal units, as file managers and HF show them."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.0f} B"
