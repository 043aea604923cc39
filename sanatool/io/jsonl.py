"""The JSON readers: one for JSONL (manifests, journals, prompt files, data-set metadata, loss logs),
one for a file holding one JSON object (configs, indexes, importance files, provenance)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sanatool.errors import InputError, SanatoolError

#: A data set's captions, one line per image (the Hugging Face imagefolder convention).
METADATA_NAME = "metadata.jsonl"


@dataclass
class JsonlProblem:
    """A line that is not a JSON object, with its 1-based line number."""

    line: int
    message: str


def read_jsonl(
    path: str | os.PathLike, problems: list[JsonlProblem] | None = None
) -> list[tuple[int, dict[str, Any]]]:
    """The JSON objects of a JSONL file with their 1-based line numbers; blank lines are skipped.

    A line that is not a JSON object raises :class:`InputError` naming ``path:line``, unless
    ``problems`` is given: then it is recorded there and reading goes on (a manifest is scored in
    part; a journal's last line may have been torn by a crash).
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from err
    rows: list[tuple[int, dict[str, Any]]] = []
    # Not splitlines(): U+2028 and friends may stand unescaped inside a JSON string.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            message = None if isinstance(row, dict) else "not a JSON object"
        except json.JSONDecodeError as err:
            message = f"not valid JSON ({err.msg})"
        if message is None:
            rows.append((number, row))
        elif problems is None:
            raise InputError(f"{path}:{number}: {message}")
        else:
            problems.append(JsonlProblem(number, message))
    return rows


def read_json_object(
    path: str | os.PathLike, what: str, error: type[SanatoolError] = InputError, hint: str = ""
) -> dict[str, Any]:
    """The JSON object in a file; an unreadable file, bad JSON or another JSON value raises ``error``.

    ``what`` names the file in messages (``"config"``, ``"importance file"``); ``hint`` (what to do)
    is appended to them.
    """
    suffix = f"; {hint}" if hint else ""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise error(f"cannot read {what} {path}: {err.strerror or err}{suffix}") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{what} {path} is not valid JSON ({err}){suffix}") from err
    if not isinstance(data, dict):
        raise error(f"{what} {path} is not a JSON object{suffix}")
    return data
