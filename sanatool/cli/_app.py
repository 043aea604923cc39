"""The Typer app and what every command shares: stderr console, result output, progress bars.

Only this package talks to the terminal. stdout carries the result (a path, or JSON with
``--json``); everything else goes to stderr.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperGroup

if TYPE_CHECKING:
    from rich.console import Console


def click_module(name: str) -> Any:
    """A module of the click that Typer parses with: its own copy (typer >= 0.24) or click itself."""
    import importlib

    try:
        return importlib.import_module(f"typer._click.{name}")
    except ImportError:
        return importlib.import_module(f"click.{name}")


def _finite(callback: Any) -> Any:
    import math

    def check(ctx: Any, param: Any, value: Any) -> Any:
        values = value if isinstance(value, (list, tuple)) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            raise click_module("exceptions").BadParameter(f"{value} is not a finite number", ctx, param)
        return callback(ctx, param, value) if callback is not None else value

    check.finite = True  # type: ignore[attr-defined]
    return check


def refuse_non_finite(command: Any) -> Any:
    """Make every float option of ``command`` (and of its subcommands) refuse nan and ±inf, which
    Python's ``float`` accepts: a NaN guidance silently turns guidance off, an infinite one draws black."""
    float_type = click_module("types").FloatParamType
    for param in command.params:
        if isinstance(param.type, float_type) and not getattr(param.callback, "finite", False):
            param.callback = _finite(param.callback)
    for sub in getattr(command, "commands", {}).values():
        refuse_non_finite(sub)
    return command


class _Group(TyperGroup):
    """The command group. Every float option refuses nan and inf (:func:`refuse_non_finite`), and a
    Ctrl-C inside a command leaves it as :class:`~sanatool.errors.Interrupted`: Typer would turn
    ``KeyboardInterrupt`` into a return value (standalone mode off), losing it.
    """

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        return refuse_non_finite(command) if command is not None else None

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as err:
            from sanatool.errors import Interrupted

            raise Interrupted.keeping(err, "") from err


app = typer.Typer(
    name="sanatool",
    cls=_Group,
    help="Model surgery for SANA diffusion transformers: grow, score, prune, fine-tune, sample, judge.\n\n"
    "On CPU, torch uses one thread per CPU that other processes leave idle (at least one); "
    "set OMP_NUM_THREADS to choose.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def make_console(stderr: bool = False) -> Console:
    """A rich console that never reads text as markup: paths, prompts and messages are the user's text,
    and ``[/x]`` in a file name must print as itself. Styling is given as ``rich.text.Text`` (see
    :func:`bold`), never as markup in a string."""
    from rich.console import Console

    # On stderr a message or path is never broken across lines (logs are grepped); stdout's tables fit the width.
    return Console(stderr=stderr, highlight=False, markup=False, emoji=False, soft_wrap=stderr)


def bold(text: str) -> Any:
    """``text`` in bold, for a table cell (the consoles read no markup)."""
    from rich.text import Text

    return Text(text, style="bold")


class _LazyConsole:
    """The stderr rich ``Console``, made on first use: importing rich costs tens of milliseconds of
    every start-up, and many runs (``--dry-run``, ``--version``) never print to stderr."""

    _console: Console | None = None

    def get(self) -> Console:
        if self._console is None:
            self._console = make_console(stderr=True)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)


_lazy_console = _LazyConsole()

#: Progress, tables and logs. Never stdout: that is for the result.
console: Console = _lazy_console  # type: ignore[assignment]


class _RichLogHandler(logging.Handler):
    """Logs through a rich ``RichHandler`` on ``console``, made at the first record (see above)."""

    def __init__(self) -> None:
        super().__init__()
        self._rich: logging.Handler | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if not _lazy_console.get().is_terminal:
            # In a log file or pipe a record is one line, whatever its length: logs are grepped.
            sys.stderr.write(f"{record.levelname}: {record.getMessage()}\n")
            sys.stderr.flush()
            return
        if self._rich is None:
            from rich.logging import RichHandler

            self._rich = RichHandler(
                console=_lazy_console.get(),
                show_time=False,
                show_path=False,
                markup=False,
            )
        self._rich.emit(record)


class _State:
    debug = False


state = _State()


def setup_logging(debug: bool) -> None:
    """Route the library's ``sanatool`` logger to stderr; quiet third-party chatter unless --debug."""
    import os

    # Everything runs from local dirs: never reach for a hub, never draw foreign progress bars.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not debug:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
        for noisy in ("diffusers", "transformers", "torch.distributed"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
    else:
        from sanatool.quiet import FOREIGN_LOGGERS

        for name in FOREIGN_LOGGERS:  # quiet since `import sanatool`; --debug shows everything
            logging.getLogger(name).setLevel(logging.NOTSET)

    logger = logging.getLogger("sanatool")
    logger.handlers.clear()
    handler = _RichLogHandler()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False


def emit(result: Any, as_json: bool = False) -> None:
    """Write the command's result to stdout: JSON when asked, else the value itself (a path, absolute)."""
    from pathlib import PurePath

    if isinstance(result, PurePath):  # one rule for every command: `OUT=$(...)` works from anywhere
        result = Path(result).expanduser().resolve()
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2, default=str, ensure_ascii=False) + "\n")
    elif result is not None:
        sys.stdout.write(f"{result}\n")
    sys.stdout.flush()


@contextmanager
def progress_bar(quiet: bool = False) -> Iterator[Any]:
    """A rich progress bar on stderr, yielded as a library ``ProgressFn`` callback."""
    if quiet:
        from sanatool.progress import no_progress

        yield no_progress
        return
    if not console.is_terminal:
        # Logs and pipes get no bar; a line per stage every few seconds says it is alive, and how long.
        from sanatool.progress import PeriodicLines

        yield PeriodicLines(lambda line: console.print(line, markup=False, highlight=False, soft_wrap=True))
        return

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    # Task names and the values in ``info`` can hold the user's text (paths): never markup.
    columns = (
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}", markup=False),
    )
    with Progress(*columns, console=_lazy_console.get(), transient=False) as bar:
        ids: dict[str, Any] = {}

        def update(task: str, done: int, total: int | None = None, **info: object) -> None:
            text = " ".join(f"{k} {v}" for k, v in info.items())
            if task not in ids:
                ids[task] = bar.add_task(task, total=total, info=text)
            bar.update(ids[task], completed=done, total=total, info=text)

        yield update
