"""The samples dir shared by ``sample`` → ``judge`` → ``eval``: ``images/*.png`` + ``manifest.jsonl``.

Each manifest line describes one image: ``prompt``, ``prompt_index``, ``candidate``, ``seed``,
``steps``, ``guidance``, ``sampler``, ``model`` (fingerprint), ``path`` (relative to the samples
dir), and, when known, the prompt's ``spec`` and ``category``. ``judge`` adds ``score`` and
``rank``. Unknown keys are preserved.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sanatool.errors import InputError
from sanatool.io.jsonl import JsonlProblem, read_jsonl

MANIFEST_NAME = "manifest.jsonl"
IMAGES_DIR = "images"
REQUIRED_KEYS = ("prompt", "path")


@dataclass
class ManifestProblem:
    """A manifest line that could not be used, with its 1-based line number."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"{MANIFEST_NAME}:{self.line}: {self.message}"


def image_relpath(prompt_index: int, candidate: int) -> str:
    """The conventional relative path of one image: ``images/p00003_c001.png``."""
    return f"{IMAGES_DIR}/p{prompt_index:05d}_c{candidate:03d}.png"


def read_manifest(samples_dir: str | os.PathLike) -> tuple[list[dict[str, Any]], list[ManifestProblem]]:
    """Read a samples dir's manifest.

    Returns the usable records (each with ``_line``, its line number) and the problems of
    the unusable lines, so callers can score the rest and report the bad ones. Raises
    :class:`InputError` when the dir or its manifest is missing.
    """
    root = Path(samples_dir)
    if not root.is_dir():
        raise InputError(f"samples dir {samples_dir} does not exist")
    manifest = root / MANIFEST_NAME
    if not manifest.is_file():
        raise InputError(
            f"{samples_dir} is not a samples dir: it has no {MANIFEST_NAME} (write one with `sanatool sample`)"
        )
    records: list[dict[str, Any]] = []
    bad: list[JsonlProblem] = []
    rows = read_jsonl(manifest, problems=bad)
    problems = [ManifestProblem(problem.line, problem.message) for problem in bad]
    for number, row in rows:
        missing = [key for key in REQUIRED_KEYS if not isinstance(row.get(key), str)]
        if missing:
            problems.append(ManifestProblem(number, f"missing {', '.join(missing)}"))
            continue
        image = (root / row["path"]).resolve()
        if root.resolve() not in image.parents:
            problems.append(ManifestProblem(number, f"path {row['path']} points outside the samples dir"))
            continue
        row["_line"] = number
        records.append(row)
    problems.sort(key=lambda problem: problem.line)
    return records, problems


def write_manifest(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
    """Write manifest lines (keys starting with ``_`` are internal and dropped)."""
    with open(path, "w", encoding="utf-8") as handle:
        for row in records:
            clean = {k: v for k, v in row.items() if not k.startswith("_")}
            handle.write(json.dumps(clean) + "\n")
