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


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(text: str | bytes, nonfinite: bool = True) -> Any:
    """Parse JSON text; bytes must be UTF-8. ``nonfinite=False`` also refuses ``NaN`` and
    ``Infinity``, which Python's ``json`` accepts (diffusers writes ``-Infinity`` into scheduler
    configs) but JSON and the safetensors library do not.

    Every failure, including nesting too deep to parse (200 000 ``[`` raise ``RecursionError``
    in ``json``), raises ``ValueError`` with a short reason.
    """
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return json.loads(text, **({} if nonfinite else {"parse_constant": _refuse_constant}))
    except RecursionError as err:
        raise ValueError("nested too deeply") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"{err.msg} at line {err.lineno} column {err.colno}") from err
    except UnicodeDecodeError as err:
        raise ValueError(f"not UTF-8 (byte {err.start})") from err


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
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise InputError(f"{path} is not UTF-8 text (byte {err.start}); save it as UTF-8") from err
    rows: list[tuple[int, dict[str, Any]]] = []
    # Not splitlines(): U+2028 and friends may stand unescaped inside a JSON string.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = parse_json(line)
            message = None if isinstance(row, dict) else "not a JSON object"
        except ValueError as err:
            message = f"not valid JSON ({err})"
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
        data = parse_json(Path(path).read_bytes())
    except OSError as err:
        raise error(f"cannot read {what} {path}: {err.strerror or err}{suffix}") from err
    except ValueError as err:
        raise error(f"{what} {path} is not valid JSON ({err}){suffix}") from err
    if not isinstance(data, dict):
        raise error(f"{what} {path} is not a JSON object{suffix}")
    return data
