"""The progress protocol: the library reports progress through a callback, never by printing."""

from __future__ import annotations

from collections.abc import Callable

#: ``progress(task, done, total)``: ``task`` names the stage ("grow", "sample", ...), ``done`` counts
#: finished units, ``total`` is the number of units or ``None`` when unknown. Optional keyword
#: ``info`` (a short string such as "loss 0.231") may be passed; callbacks must accept it.
ProgressFn = Callable[..., None]


def no_progress(task: str, done: int, total: int | None = None, **info: object) -> None:
    """A progress callback that ignores everything (the library default)."""
