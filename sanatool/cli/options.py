"""Options that several commands share, each declared once.

Single options (``--force``, ``--device``, ``--max-shard-size`` …) are ``typer.Option`` objects
that commands use as parameter defaults (Typer copies them per command). Whole *option sets*
(``train``/``finetune`` in ``train_cmds``, ``sample``/``importance`` in ``sample_cmds``: declared
beside the commands that share them, so other commands do not pay for building them at start-up)
are added to a command by :func:`with_options`: the command declares a ``shared`` parameter where
the set belongs in its ``--help``, and receives the set's values as one dict in it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import typer

from sanatool.io.safetensors import DEFAULT_MAX_SHARD_SIZE

F = TypeVar("F", bound=Callable[..., Any])

FORCE = typer.Option(False, "--force", help="Replace an existing output.")
JSON = typer.Option(False, "--json", help="Print a JSON summary instead of the path.")
DRY_RUN = typer.Option(False, "--dry-run", help="Print the plan and write nothing.")
DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N (cuda:LOCAL_RANK under torchrun).")
MAX_SHARD_SIZE = typer.Option(
    DEFAULT_MAX_SHARD_SIZE, "--max-shard-size", help="Largest safetensors shard, e.g. 5GB, 500MB."
)
VARIANT = typer.Option(
    None,
    "--variant",
    help="Which weight files to read, e.g. bf16 for *.bf16.safetensors (default: the default set, or the only one).",
)
#: Seeds are 0 … 2**32 - 1 for every command: what numpy's legacy seeding takes, and within what torch's
#: generators take, so one range holds whatever a seed reaches.
SEED_MAX = 2**32 - 1


def seed_option(help: str, default: int = 0) -> Any:
    """The ``--seed`` option, refused outside 0 … :data:`SEED_MAX` before any work (``--help`` shows the range)."""
    return typer.Option(default, "--seed", min=0, max=SEED_MAX, help=help)


OUT_MODEL_DIR = typer.Option(..., "--out", "-o", help="Output model dir (must not exist unless --force).")
ALLOW_PICKLE = typer.Option(
    False,
    "--allow-pickle",
    help="Load pickle weights (an original .pth checkpoint; .bin, .pt, .ckpt of the VAE and text encoder) "
    "with torch's weights_only loader (never their code). Without it they are refused: use safetensors.",
)
MODEL_DIR_HELP = "Model dir (pipeline or bare transformer) or builtin:tiny-shapes."
PIPELINE_HELP = "Pipeline dir (with text encoder and VAE) or builtin:tiny-shapes."


@dataclass(frozen=True)
class Opt:
    """One option of a set: the parameter name the command receives, its type, and its declaration."""

    name: str
    annotation: Any
    declaration: Any


def with_options(*options: Opt) -> Callable[[F], F]:
    """Add ``options`` to a command's signature, where its ``shared`` parameter stands.

    The command is called with their values as ``shared={name: value, ...}``.
    """

    def decorate(command: F) -> F:
        signature = inspect.signature(command, eval_str=True)
        params: list[inspect.Parameter] = []
        for param in signature.parameters.values():
            if param.name != "shared":
                params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY))
                continue
            params += [
                inspect.Parameter(
                    opt.name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=opt.declaration,
                    annotation=opt.annotation,
                )
                for opt in options
            ]
        if len(params) != len(signature.parameters) - 1 + len(options):
            raise TypeError(f"{command.__name__} needs a `shared` parameter for its option set")

        @functools.wraps(command)
        def run(**kwargs: Any) -> Any:
            shared = {opt.name: kwargs.pop(opt.name) for opt in options}
            return command(**kwargs, shared=shared)

        # Typer reads the signature (with real types, not the strings of postponed annotations).
        run.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        run.__annotations__ = {}
        return run  # type: ignore[return-value]

    return decorate


def check_dtype_option(value: str | None) -> str | None:
    """Typer callback of ``--dtype``: an unknown name is refused while parsing, before anything loads."""
    if value is None or value == "auto":
        return value
    from sanatool.arch import check_dtype

    return check_dtype(value)


def refuse_existing_output(out: Path | None, force: bool) -> None:
    """Refuse an existing OUT (or a missing parent) before the command imports torch or loads a model.

    The library checks again when it starts writing (with its inputs, and for an output that
    appeared meanwhile); this check only makes the common mistake cost a fraction of a second.
    """
    if out is not None:
        from sanatool.io.outputs import check_output_path

        check_output_path(out, force)
