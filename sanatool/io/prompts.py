"""Prompt files: plain text (one prompt per line) or JSONL with prompt, category and spec."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sanatool.errors import InputError
from sanatool.io.jsonl import read_jsonl


@dataclass
class PromptItem:
    """One prompt, with the GenEval-style category and machine-readable spec when known."""

    prompt: str
    category: str | None = None
    spec: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSONL form: ``{"prompt": ..., "category": ..., "spec": {...}}`` (absent keys omitted)."""
        row: dict[str, Any] = {"prompt": self.prompt}
        if self.category is not None:
            row["category"] = self.category
        if self.spec is not None:
            row["spec"] = self.spec
        row.update(self.extra)
        return row


def _item_from_row(row: dict[str, Any], where: str) -> PromptItem:
    if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
        raise InputError(f'{where}: each line needs a non-empty "prompt" string')
    spec = row.get("spec")
    if spec is not None and not isinstance(spec, dict):
        raise InputError(f'{where}: "spec" must be an object')
    extra = {k: v for k, v in row.items() if k not in ("prompt", "category", "spec")}
    return PromptItem(row["prompt"], row.get("category"), spec, extra)


def read_prompts(path: str | os.PathLike) -> list[PromptItem]:
    """Read a prompts file. ``.jsonl`` lines are objects with a ``prompt`` key; other files are text.

    Blank lines are skipped. Raises :class:`InputError` for a missing or empty file or a
    malformed JSONL line (with its line number).
    """
    file = Path(path)
    # Not is_file(): a pipe (`--prompts <(grep red prompts.txt)`) is a prompts file too.
    if not file.exists():
        raise InputError(f"prompts file {path} does not exist")
    if file.is_dir():
        raise InputError(
            f"prompts file {path} is a directory; give a .txt (one prompt a line) or .jsonl file"
        )
    if file.suffix == ".jsonl":
        items = [_item_from_row(row, f"{path}:{number}") for number, row in read_jsonl(file)]
    else:
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(f"cannot read prompts file {path}: {err}") from err
        items = [PromptItem(prompt=line.strip()) for line in lines if line.strip()]
    if not items:
        raise InputError(f"prompts file {path} holds no prompts")
    return items


def write_prompts(path: str | os.PathLike, items: Iterable[PromptItem]) -> None:
    """Write prompts as JSONL (one object per line)."""
    with open(path, "w", encoding="utf-8") as handle:
        for item in items:
            handle.write(json.dumps(item.to_json()) + "\n")
