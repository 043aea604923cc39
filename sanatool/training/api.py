"""``finetune`` and ``train`` as functions: what the commands do, for a notebook or a script."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sanatool.progress import ProgressFn, no_progress
from sanatool.training.options import TrainOptions
from sanatool.training.run import run_training


def finetune(
    model: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    steps: int = 100,
    optimizer: str = "came8bit",
    progress: ProgressFn = no_progress,
    **options: Any,
) -> dict[str, Any]:
    """Fine-tune a pipeline's transformer on an image folder; write the result to ``out``.

    What ``sanatool finetune MODEL --data DATA -o OUT`` does. ``options`` are the other fields
    of :class:`~sanatool.training.options.TrainOptions` (``lr``, ``batch_size``, ``save_every``,
    ``resume``, ``device``, …). Returns the run's summary (output path, losses, timing).
    """
    opts = TrainOptions(
        source=str(model), data=Path(data), out=Path(out), steps=steps, optimizer=optimizer, **options
    )
    return run_training(opts, progress)


def train(
    preset: str,
    data: str | os.PathLike,
    out: str | os.PathLike,
    steps: int = 100,
    optimizer: str = "adamw",
    components: str | os.PathLike | None = None,
    progress: ProgressFn = no_progress,
    **options: Any,
) -> dict[str, Any]:
    """Train a transformer of a preset from a random init; write a pipeline dir to ``out``.

    What ``sanatool train --preset PRESET --data DATA -o OUT`` does: the text encoder, tokenizer,
    VAE and scheduler come from ``components`` (the built-in tiny-shapes pipeline for ``tiny``).
    ``options`` are the other fields of :class:`~sanatool.training.options.TrainOptions`.
    """
    opts = TrainOptions(
        preset=preset,
        components=None if components is None else str(components),
        data=Path(data),
        out=Path(out),
        steps=steps,
        optimizer=optimizer,
        **options,
    )
    return run_training(opts, progress)
