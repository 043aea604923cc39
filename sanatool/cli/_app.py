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
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

app = typer.Typer(
    name="sanatool",
    help="Model surgery for SANA diffusion transformers: grow, score, prune, fine-tune, sample, judge.\n\n"
    "On CPU, torch uses one thread per CPU that other processes leave idle (at least one); "
    "set OMP_NUM_THREADS to choose.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class _LazyConsole:
    """The stderr rich ``Console``, made on first use: importing rich costs tens of milliseconds of
    every start-up, and many runs (``--dry-run``, ``--version``) never print to stderr."""

    _console: Console | None = None

    def get(self) -> Console:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=True, highlight=False)
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
        for noisy in ("bitsandbytes", "diffusers", "transformers", "torch.distributed"):
            logging.getLogger(noisy).setLevel(logging.ERROR)

    logger = logging.getLogger("sanatool")
    logger.handlers.clear()
    handler = _RichLogHandler()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False


def emit(result: Any, as_json: bool = False) -> None:
    """Write the command's result to stdout: JSON when asked, else the value itself (a path)."""
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2, default=str, ensure_ascii=False) + "\n")
    elif result is not None:
        sys.stdout.write(f"{result}\n")
    sys.stdout.flush()


@contextmanager
def progress_bar(quiet: bool = False) -> Iterator[Any]:
    """A rich progress bar on stderr, yielded as a library ``ProgressFn`` callback."""
    if quiet or not console.is_terminal:
        tasks_seen: dict[str, int] = {}

        def plain(task: str, done: int, total: int | None = None, **info: object) -> None:
            # Without a terminal, a short line per finished stage keeps logs readable.
            if total is not None and done >= total and tasks_seen.get(task) != done:
                tasks_seen[task] = done
                if not quiet:
                    extra = " ".join(f"{k}={v}" for k, v in info.items())
                    console.print(f"{task}: {done}/{total} {extra}".rstrip())

        yield plain
        return

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, console=_lazy_console.get(), transient=False) as bar:
        ids: dict[str, Any] = {}

        def update(task: str, done: int, total: int | None = None, **info: object) -> None:
            text = " ".join(f"{k} {v}" for k, v in info.items())
            if task not in ids:
                ids[task] = bar.add_task(task, total=total, info=text)
            bar.update(ids[task], completed=done, total=total, info=text)

        yield update
