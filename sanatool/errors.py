"""Errors the library raises. The CLI maps them to exit codes and one-line messages."""

from __future__ import annotations

import signal


class SanatoolError(Exception):
    """A failure with a message the user can act on (what, where, what to do).

    ``exit_code`` follows the CLI convention: 1 = failed while running, 2 = bad input.
    """

    exit_code = 1


class InputError(SanatoolError):
    """Bad input or usage: a wrong path, a malformed file, an impossible option. Exit code 2."""

    exit_code = 2


class ModelDirError(InputError):
    """A model dir that is missing, malformed, unsafe, or disagrees with its own config."""


class OutputExistsError(InputError):
    """The output path exists and ``--force`` was not given, or it equals the input."""


class RunFailure(SanatoolError):
    """The work started but could not finish (e.g. NaN loss, unreadable images). Exit code 1."""


class Interrupted(BaseException):
    """Ctrl-C (SIGINT) or SIGTERM stopped the run; ``kept`` says what it left for the user.

    A ``BaseException`` like ``KeyboardInterrupt``, so that no ``except Exception`` swallows it and
    every cleanup on the way out runs. Code that keeps something resumable re-raises it with
    :meth:`keeping`. The CLI exits with 128 + the signal's number (130, 143) after one line.
    """

    def __init__(self, signum: int = signal.SIGINT, kept: str = "") -> None:
        super().__init__(signum, kept)
        self.signum = int(signum)
        self.kept = kept

    @property
    def exit_code(self) -> int:
        """The shell's convention for a death by signal: 128 + its number."""
        return 128 + self.signum

    @classmethod
    def keeping(cls, err: BaseException, kept: str) -> Interrupted:
        """The interruption ``err`` (a ``KeyboardInterrupt`` is SIGINT), saying that ``kept`` was kept."""
        return cls(err.signum if isinstance(err, Interrupted) else signal.SIGINT, kept)
