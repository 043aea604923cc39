"""GenEval's folder layout (``sample --layout geneval``): samples the GenEval toolkit scores as they are.

GenEval (github.com/djghosh13/geneval) lists its prompts in ``prompts/evaluation_metadata.jsonl``,
one object per line: ``{"tag": "counting", "include": [{"class": "clock", "count": 2}],
"exclude": [{"class": "clock", "count": 3}], "prompt": "a photo of two clocks"}`` (an ``include``
clause may add ``color`` or ``position``). Its writer (``generation/diffusers_generate.py``) and
reader (``evaluation/evaluate_images.py``) agree on::

    OUT/00000/metadata.jsonl       the prompt's metadata line, one JSON object (the reader json.load()s it)
    OUT/00000/samples/00000.png    candidate 0, 00001.png candidate 1, …  (``f"{n:05}.png"``)

The reader visits every all-digit folder of ``OUT`` and every ``\\d+\\.png`` file of its
``samples/``; anything else is ignored, so sanatool keeps its own ``manifest.jsonl`` (image paths
point into the prompt folders) and ``grid.png`` at the top of ``OUT``, where ``judge`` and
``eval`` find them as in any samples dir.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sanatool.errors import InputError
from sanatool.io.jsonl import read_jsonl
from sanatool.io.prompts import PromptItem

LAYOUTS = ("sanatool", "geneval")
METADATA_NAME = "metadata.jsonl"
SAMPLES_DIR = "samples"
_HOW = "GenEval's prompts/evaluation_metadata.jsonl has one such line per prompt"


def prompt_folder(prompt_index: int) -> str:
    """The folder of one prompt: ``00003``."""
    return f"{prompt_index:05d}"


def geneval_relpath(prompt_index: int, candidate: int) -> str:
    """Where GenEval keeps one image: ``00003/samples/00001.png``."""
    return f"{prompt_folder(prompt_index)}/{SAMPLES_DIR}/{candidate:05d}.png"


def _check_clauses(value: Any, name: str, where: str, required: bool) -> None:
    if value is None and not required:
        return
    if not isinstance(value, list) or (required and not value):
        raise InputError(
            f'{where}: "{name}" must be a list of {{"class": ..., "count": ...}} objects; {_HOW}'
        )
    for number, clause in enumerate(value):
        what = f'{where}: "{name}"[{number}]'
        if not isinstance(clause, dict) or not isinstance(clause.get("class"), str) or not clause["class"]:
            raise InputError(f'{what} needs a "class" name; {_HOW}')
        count = clause.get("count")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise InputError(f'{what} needs a positive integer "count", got {count!r}')


def check_geneval_item(item: PromptItem, where: str) -> None:
    """Refuse a prompt that GenEval's reader could not score (no ``tag``, no ``include`` clauses)."""
    tag = item.extra.get("tag")
    if not isinstance(tag, str) or not tag:
        raise InputError(
            f'{where}: a GenEval metadata line needs a "tag" (its task, e.g. "counting"); {_HOW}'
        )
    _check_clauses(item.extra.get("include"), "include", where, required=True)
    _check_clauses(item.extra.get("exclude"), "exclude", where, required=False)


def read_geneval_metadata(path: str | os.PathLike) -> list[PromptItem]:
    """Read GenEval's ``evaluation_metadata.jsonl``: one :class:`PromptItem` per line, ``category`` = its tag.

    The whole line but ``prompt`` is kept in ``extra``, so :func:`geneval_metadata` gives it back.
    Raises :class:`InputError` (naming the line) for a missing file, malformed JSON, or a line
    without ``prompt``, ``tag`` or ``include``.
    """
    file = Path(path)
    if not file.is_file():
        raise InputError(f"GenEval metadata file {path} does not exist")
    items = []
    for number, row in read_jsonl(file):
        where = f"{path}:{number}"
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f'{where}: a GenEval metadata line needs a non-empty "prompt"; {_HOW}')
        item = PromptItem(
            prompt, category=row.get("tag"), extra={k: v for k, v in row.items() if k != "prompt"}
        )
        check_geneval_item(item, where)
        items.append(item)
    if not items:
        raise InputError(f"GenEval metadata file {path} holds no prompts")
    return items


def geneval_metadata(item: PromptItem) -> dict[str, Any]:
    """The metadata line of a prompt read by :func:`read_geneval_metadata` (its keys in GenEval's order)."""
    return {**item.extra, "prompt": item.prompt}


def metadata_files(root: Path, paths: Sequence[str]) -> list[str]:
    """The ``metadata.jsonl`` (relative to ``root``) of each GenEval prompt folder that holds one of ``paths``.

    A selection of a GenEval-layout samples dir (``judge``'s picks) keeps these so that it is
    itself a layout GenEval's reader scores.
    """
    found = set()
    for path in paths:
        parts = Path(path).parts
        if len(parts) == 3 and parts[0].isdigit() and parts[1] == SAMPLES_DIR:
            relpath = f"{parts[0]}/{METADATA_NAME}"
            if (root / relpath).is_file():
                found.add(relpath)
    return sorted(found)


def finish_geneval_dir(root: Path, items: Sequence[PromptItem], keep: set[str]) -> None:
    """Write each prompt folder's ``metadata.jsonl``; drop what an earlier, resumed run left behind.

    ``keep`` holds the relative paths of this run's images. Prompt folders and images of an
    earlier run that this one did not make are removed: GenEval's reader scores every
    all-digit folder it finds.
    """
    folders = {prompt_folder(index) for index in range(len(items))}
    for entry in root.iterdir():
        if entry.is_dir() and entry.name.isdigit() and entry.name not in folders:
            shutil.rmtree(entry)
    for index, item in enumerate(items):
        folder = root / prompt_folder(index)
        samples = folder / SAMPLES_DIR
        for image in samples.iterdir():
            if f"{folder.name}/{SAMPLES_DIR}/{image.name}" not in keep:
                image.unlink()
        for entry in folder.iterdir():
            if entry.name not in (SAMPLES_DIR, METADATA_NAME):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        tmp = folder / f".{METADATA_NAME}.tmp"
        tmp.write_text(json.dumps(geneval_metadata(item)), encoding="utf-8")
        os.replace(tmp, folder / METADATA_NAME)
