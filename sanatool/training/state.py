"""Resumable training state without pickle: nested state dicts as safetensors plus JSON.

Optimizer, EMA and RNG state are nested dicts, lists and tuples of tensors and plain values.
:func:`save_state` writes every tensor into one safetensors file and the structure (with
references to the tensors) into a JSON file; :func:`load_state` rebuilds the identical
structure — tuples stay tuples, ints stay ints, tensors keep dtype and bytes — so a resumed
run continues bit for bit, and loading a checkpoint never executes code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sanatool.errors import InputError
from sanatool.io.jsonl import read_json_object

STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"
STATE_FORMAT = "sanatool-training-state/1"


def _flatten(value: Any, tensors: dict[str, Any], path: str) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().cpu().contiguous()
        return {"__tensor__": path}
    if isinstance(value, dict):
        if not all(isinstance(k, str | int) for k in value):
            raise TypeError(f"state at {path} has non-string, non-integer keys")
        return {
            "__dict__": [[k, _flatten(v, tensors, f"{path}.{k}")] for k, v in value.items()],
        }
    if isinstance(value, tuple):
        return {"__tuple__": [_flatten(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_flatten(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]
    if value is None or isinstance(value, bool | int | float | str):
        if isinstance(value, float) and value != value:
            return {"__float__": "nan"}
        if isinstance(value, float) and value in (float("inf"), float("-inf")):
            return {"__float__": "inf" if value > 0 else "-inf"}
        return value
    if isinstance(value, torch.dtype):
        return {"__dtype__": str(value).removeprefix("torch.")}
    raise TypeError(f"state at {path} holds a {type(value).__name__}, which cannot be saved without pickle")


def _unflatten(value: Any, tensors: dict[str, Any]) -> Any:
    import torch

    if isinstance(value, list):
        return [_unflatten(v, tensors) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__dict__" in value:
            return {k: _unflatten(v, tensors) for k, v in value["__dict__"]}
        if "__tuple__" in value:
            return tuple(_unflatten(v, tensors) for v in value["__tuple__"])
        if "__float__" in value:
            return float(value["__float__"])
        if "__dtype__" in value:
            return getattr(torch, value["__dtype__"])
    return value


def save_state(folder: Path, state: dict[str, Any]) -> None:
    """Write a nested state (tensors anywhere inside) as ``training_state.{safetensors,json}``."""
    from safetensors.torch import save_file

    tensors: dict[str, Any] = {}
    structure = _flatten(state, tensors, "state")
    save_file(tensors, str(folder / STATE_TENSORS))
    (folder / STATE_JSON).write_text(json.dumps({"format": STATE_FORMAT, "state": structure}) + "\n")


def load_state(folder: Path) -> dict[str, Any]:
    """Read a state written by :func:`save_state` (raises :class:`InputError` when it is incomplete)."""
    from safetensors.torch import load_file

    json_path, tensor_path = folder / STATE_JSON, folder / STATE_TENSORS
    if not json_path.is_file() or not tensor_path.is_file():
        raise InputError(f"checkpoint {folder} has no training state ({STATE_JSON}); it cannot be resumed")
    damaged = "this checkpoint cannot be resumed: delete it or pass --force to start over"
    record = read_json_object(json_path, "training state", hint=damaged)
    if record.get("format") != STATE_FORMAT or "state" not in record:
        raise InputError(f"checkpoint {folder}: {STATE_JSON} is not a {STATE_FORMAT} file; {damaged}")
    try:
        return _unflatten(record["state"], load_file(str(tensor_path)))
    except Exception as err:  # noqa: BLE001 - any damage (a missing tensor, a bad structure, a bad file) is one message
        raise InputError(f"checkpoint {folder}: the training state is damaged ({err!r}); {damaged}") from err
