"""The optimizer names ``--optimizer`` takes: torch-free, so that a wrong name is refused at once."""

from __future__ import annotations

OPTIMIZER_NAMES: tuple[str, ...] = ("came8bit", "came", "adamw", "adamw8bit")
