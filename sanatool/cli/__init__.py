"""The ``sanatool`` command line. Each command lives in its own module and registers on ``app``."""

from __future__ import annotations

import importlib
import sys
import traceback
from typing import Any

import typer

from sanatool import __version__
from sanatool.cli._app import app as _typer_app
from sanatool.cli._app import click_module, console, setup_logging, state
from sanatool.distributed import apply_cpu_threads

# Where each command is defined. Importing a module registers its commands on the app, so a run
# of one command imports only its module (``main``); ``app`` (tests, docs) has them all.
_COMMAND_MODULES = {
    "init": "model_cmds",
    "info": "model_cmds",
    "judge": "judge_cmds",
    "train-verifier": "judge_cmds",
    "finetune": "train_cmds",
    "train": "train_cmds",
    "train-vae": "train_cmds",
    "grow": "surgery_cmds",
    "prune": "surgery_cmds",
    "data": "shapes_cmds",
    "eval": "shapes_cmds",
    "sample": "sample_cmds",
    "importance": "sample_cmds",
    "plan-skips": "skip_cmds",
    "demo": "demo_cmds",
    "convert": "convert_cmds",
}
# Registration order, which is the order of ``sanatool --help``.
_MODULES = (
    "model_cmds",
    "judge_cmds",
    "train_cmds",
    "surgery_cmds",
    "shapes_cmds",
    "sample_cmds",
    "skip_cmds",
    "demo_cmds",
    "convert_cmds",
)


def _register(modules: tuple[str, ...] = _MODULES) -> None:
    for module in modules:
        importlib.import_module(f"sanatool.cli.{module}")
    if len(modules) > 1:
        # Keep the help's order whatever ran first in this process (tests run many commands).
        rank = {f"sanatool.cli.{module}": i for i, module in enumerate(_MODULES)}
        _typer_app.registered_commands.sort(
            key=lambda info: rank.get(getattr(info.callback, "__module__", ""), -1)
        )


def _register_for(argv: list[str]) -> None:
    """Register the module of the command in ``argv``; all of them when it is not a known command."""
    # The root options (--debug, --version, --help) take no value: the command is the first word.
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if command in _COMMAND_MODULES:
        _register((_COMMAND_MODULES[command],))
    else:
        _register()


def __getattr__(name: str) -> Any:
    # ``from sanatool.cli import app``: the app with every command registered.
    if name == "app":
        _register()
        return _typer_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"sanatool {__version__}\n")
        raise typer.Exit()


@_typer_app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks and debug logs."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Model surgery for SANA diffusion transformers: grow, score, prune, fine-tune, sample, judge."""
    state.debug = debug
    setup_logging(debug)
    apply_cpu_threads()  # before any command imports torch


def _error(message: str) -> None:
    """One line on stderr. The message is the user's text as much as ours (paths, prompts): no markup."""
    from rich.text import Text

    console.print(Text.assemble(("error:", "red"), " ", message), soft_wrap=True)


def _on_sigterm(signum: int, frame: Any) -> None:
    from sanatool.errors import Interrupted

    raise Interrupted(signum)


def _report_interrupt(err: Any) -> None:
    import signal

    what = (
        "interrupted (Ctrl-C)"
        if err.signum == signal.SIGINT
        else f"stopped by {signal.Signals(err.signum).name}"
    )
    console.print(f"{what}: {err.kept or 'nothing was written'}", soft_wrap=True)


def main() -> None:
    """Entry point: run the app, turning library errors into one line and an exit code.

    Exit codes: 0 done, 1 failed while running, 2 bad input or usage, 130 Ctrl-C, 143 SIGTERM.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        _run()  # only the main thread may own signal handlers
        return
    # SIGTERM takes the same way out as Ctrl-C: the same cleanup, checkpoint and one line.
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        _run()
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run() -> None:
    import signal

    from sanatool.errors import Interrupted, SanatoolError

    click_errors = click_module("exceptions")
    try:
        _register_for(sys.argv[1:])
        code = _typer_app(standalone_mode=False)
    except SanatoolError as err:
        if state.debug:
            traceback.print_exc()
        _error(str(err))
        sys.exit(err.exit_code)
    except Interrupted as err:
        if state.debug:
            traceback.print_exc()
        _report_interrupt(err)
        sys.exit(err.exit_code)
    except click_errors.NoArgsIsHelpError as err:
        # `sanatool` alone asks for the help (Typer's rich help has printed itself already).
        if err.format_message():
            sys.stdout.write(err.format_message() + "\n")
        sys.exit(0)
    except click_errors.ClickException as err:
        err.show()  # click's usage line, the hint and the error
        sys.exit(err.exit_code)
    except (typer.Abort, EOFError):
        console.print("aborted")
        sys.exit(1)
    except Exception as err:  # noqa: BLE001 - the CLI boundary: one line unless --debug
        if state.debug:
            traceback.print_exc()
        _error(f"{type(err).__name__}: {err} (run with --debug for the traceback)")
        sys.exit(1)
    # Not standalone, Typer returns what it would have exited with: typer.Exit's code, or 130 for a
    # Ctrl-C that came before the command started (after that, the command group turns it into Interrupted).
    if isinstance(code, int) and code:
        if code == 128 + signal.SIGINT:
            _report_interrupt(Interrupted(signal.SIGINT))
        sys.exit(code)
