"""The ``sanatool`` command line. Each command lives in its own module and registers on ``app``."""

from __future__ import annotations

import sys
import traceback

import typer

from sanatool import __version__
from sanatool.cli._app import app, console, setup_logging, state

# Registering the commands: each import adds its commands to ``app``.
from sanatool.cli import model_cmds  # noqa: E402,F401  isort: skip
from sanatool.cli import judge_cmds  # noqa: E402,F401  isort: skip
from sanatool.cli import train_cmds  # noqa: E402,F401  isort: skip
from sanatool.cli import surgery_cmds  # noqa: E402,F401  isort: skip
from sanatool.cli import shapes_cmds  # noqa: E402,F401  isort: skip
from sanatool.cli import sample_cmds  # noqa: E402,F401  isort: skip
from sanatool.cli import demo_cmds  # noqa: E402,F401  isort: skip


def _version(value: bool) -> None:
    if value:
        sys.stdout.write(f"sanatool {__version__}\n")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks and debug logs."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Model surgery for SANA diffusion transformers: grow, score, prune, fine-tune, sample, judge."""
    state.debug = debug
    setup_logging(debug)


def main() -> None:
    """Entry point: run the app, turning library errors into one line and an exit code."""
    from sanatool.errors import SanatoolError

    try:
        app(standalone_mode=False)
    except SanatoolError as err:
        if state.debug:
            traceback.print_exc()
        console.print(f"[red]error:[/red] {err}", markup=True, soft_wrap=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        sys.exit(130)
    except typer.Exit as ex:
        sys.exit(ex.exit_code)
    except typer.Abort:
        console.print("aborted")
        sys.exit(1)
    except Exception as err:  # noqa: BLE001 - the CLI boundary: one line unless --debug
        import click

        if isinstance(err, click.exceptions.ClickException):
            err.show()
            sys.exit(err.exit_code)
        if state.debug:
            traceback.print_exc()
        console.print(
            f"[red]error:[/red] {type(err).__name__}: {err} (run with --debug for the traceback)",
            soft_wrap=True,
        )
        sys.exit(1)
