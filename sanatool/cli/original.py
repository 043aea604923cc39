"""Original SANA single-file checkpoints wherever a command takes a model dir.

:func:`accepts_original_checkpoint` lets a command's ``model`` argument be an original
``.safetensors`` (or, with ``--allow-pickle``, ``.pth``) file: it is converted on the fly into a
temporary diffusers dir (said on stderr), which the command reads and which is removed afterwards.
"""

from __future__ import annotations

import functools
import inspect
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sanatool.cli._app import console, progress_bar
from sanatool.cli.options import ALLOW_PICKLE

F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def original_as_model_dir(spec: str, allow_pickle: bool) -> Iterator[str]:
    """``spec`` as it is, or for a file, a temporary diffusers dir converted from it (removed on exit)."""
    path = Path(spec).expanduser()
    if not path.is_file():
        yield spec
        return
    from sanatool.formatting import human_bytes
    from sanatool.surgery.convert import check_original, convert_to_diffusers

    check_original(path, allow_pickle)
    with tempfile.TemporaryDirectory(prefix="sanatool-convert-") as tmp:
        out = Path(tmp) / path.stem  # the dir's name is the model's name in provenance
        console.print(
            f"{spec} is a single-file checkpoint: converting it to a temporary diffusers dir in {tmp} "
            f"({human_bytes(path.stat().st_size)}; `sanatool convert` makes a lasting one)",
        )
        with progress_bar() as progress:
            convert_to_diffusers(path, out, allow_pickle=allow_pickle, progress=progress)
        yield str(out)


def accepts_original_checkpoint(command: F) -> F:
    """Let ``command``'s ``model`` argument be an original SANA checkpoint file (adds ``--allow-pickle``)."""
    signature = inspect.signature(command, eval_str=True)
    has_flag = "allow_pickle" in signature.parameters
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in signature.parameters.values()]
    if not has_flag:
        params.append(
            inspect.Parameter(
                "allow_pickle", inspect.Parameter.KEYWORD_ONLY, default=ALLOW_PICKLE, annotation=bool
            )
        )

    @functools.wraps(command)
    def run(**kwargs: Any) -> Any:
        allow_pickle = kwargs["allow_pickle"] if has_flag else kwargs.pop("allow_pickle")
        with original_as_model_dir(kwargs["model"], allow_pickle) as model:
            kwargs["model"] = model
            return command(**kwargs)

    run.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    run.__annotations__ = {}
    return run  # type: ignore[return-value]
