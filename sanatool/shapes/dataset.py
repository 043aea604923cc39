"""Writers: a captioned training set (image folder) and a ground-truth samples dir for a prompt suite."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from sanatool.errors import InputError
from sanatool.io.jsonl import METADATA_NAME
from sanatool.io.manifest import MANIFEST_NAME, image_relpath, write_manifest
from sanatool.io.outputs import atomic_output_dir
from sanatool.io.prompts import PromptItem
from sanatool.progress import ProgressFn, no_progress
from sanatool.shapes.render import render_spec
from sanatool.shapes.suites import iter_training_captions
from sanatool.shapes.world import MAX_OBJECTS, validate_spec

#: What a ground-truth samples dir records as its "model" and "sampler".
GROUND_TRUTH_MODEL = "ground-truth"
GROUND_TRUTH_SAMPLER = "render"

#: The most images one data set or ground-truth samples dir holds: ten million 32px renders are days of
#: rendering and ten million files in one folder; an absurd count is refused before any work.
MAX_IMAGES = 10_000_000


def render_seed(seed: int, index: int) -> int:
    """The seed of image ``index`` in a set written with ``seed`` (independent streams, no overlap between seeds)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= 1024:
        raise InputError(f"--size must be an integer from 16 to 1024, got {size!r}")


def _check_count(name: str, value: int, total: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    total = value if total is None else total
    if total > MAX_IMAGES:
        raise InputError(f"{name} asks for {total:,} images; the most one output holds is {MAX_IMAGES:,}")


def _ticks(total: int) -> int:
    # About a hundred progress reports whatever the size, so a callback never dominates the work.
    return max(1, total // 100)


def write_shapes_dataset(
    out_dir: str | os.PathLike,
    n: int,
    size: int = 32,
    seed: int = 0,
    progress: ProgressFn = no_progress,
    force: bool = False,
) -> Path:
    """Write ``n`` captioned renders as an image folder: ``00000.png``… and ``metadata.jsonl``.

    Each metadata line is ``{"file_name": "00000.png", "text": "<caption>"}`` (the Hugging
    Face imagefolder convention). Captions come from :func:`iter_training_captions` (evaluation
    prompts held out). The output is atomic; an existing ``out_dir`` is refused unless
    ``force``. Same ``n``, ``size`` and ``seed`` give the same bytes. Returns the output path.
    """
    _check_count("--n (the number of images)", n)
    _check_size(size)
    # Streamed: memory stays one caption, whatever n.
    captions = itertools.islice(iter_training_captions(seed), n)
    width = max(5, len(str(n - 1)))
    step = _ticks(n)
    with (
        atomic_output_dir(out_dir, force=force) as tmp,
        open(tmp / METADATA_NAME, "w", encoding="utf-8") as meta,
    ):
        for index, item in enumerate(captions):
            name = f"{index:0{width}d}.png"
            render_spec(item.spec or {}, size, render_seed(seed, index)).save(tmp / name)
            meta.write(json.dumps({"file_name": name, "text": item.prompt}) + "\n")
            if (index + 1) % step == 0 or index + 1 == n:
                progress("render", index + 1, n)
    return Path(out_dir).expanduser().resolve()


def write_ground_truth_samples(
    prompts: list[PromptItem],
    out_dir: str | os.PathLike,
    per_prompt: int = 1,
    size: int = 32,
    seed: int = 0,
    progress: ProgressFn = no_progress,
    force: bool = False,
) -> Path:
    """Render ``per_prompt`` ground-truth images per prompt into a samples dir (``images/`` + manifest).

    Every prompt needs a ``spec``; manifest lines carry its ``spec`` and ``category`` so
    ``sanatool eval`` can score them (the upper bound a generator can reach). All prompts
    are validated before anything is written. Returns the output path.
    """
    if not prompts:
        raise InputError("no prompts to render")
    _check_count("--n (renders per prompt)", per_prompt, len(prompts) * per_prompt)
    _check_size(size)
    specs: list[dict[str, Any]] = []
    for number, item in enumerate(prompts, start=1):
        where = f"prompt {number} ({item.prompt!r})"
        if item.spec is None:
            raise InputError(
                f"{where} has no spec; ground-truth renders need shapes prompts with a spec "
                "(write them with `sanatool eval --export-suite FILE`)"
            )
        spec = validate_spec(item.spec, where=f"{where} spec")
        total = sum(obj["count"] for obj in spec["objects"])
        if total > MAX_OBJECTS:
            raise InputError(f"{where} asks for {total} objects; a render holds at most {MAX_OBJECTS}")
        specs.append(spec)
    total_images = len(prompts) * per_prompt
    step = _ticks(total_images)
    records: list[dict[str, Any]] = []
    with atomic_output_dir(out_dir, force=force) as tmp:
        (tmp / "images").mkdir()
        for prompt_index, item in enumerate(prompts):
            for candidate in range(per_prompt):
                index = prompt_index * per_prompt + candidate
                image_seed = render_seed(seed, index)
                path = image_relpath(prompt_index, candidate)
                render_spec(specs[prompt_index], size, image_seed).save(tmp / path)
                record: dict[str, Any] = {
                    "prompt": item.prompt,
                    "prompt_index": prompt_index,
                    "candidate": candidate,
                    "seed": image_seed,
                    "steps": 0,
                    "guidance": 0.0,
                    "sampler": GROUND_TRUTH_SAMPLER,
                    "model": GROUND_TRUTH_MODEL,
                    "path": path,
                    "spec": item.spec,
                }
                if item.category is not None:
                    record["category"] = item.category
                records.append(record)
                if (index + 1) % step == 0 or index + 1 == total_images:
                    progress("render", index + 1, total_images)
        write_manifest(tmp / MANIFEST_NAME, records)
    return Path(out_dir).expanduser().resolve()
