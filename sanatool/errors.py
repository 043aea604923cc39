"""Errors the library raises. The CLI maps them to exit codes and one-line messages."""

from __future__ import annotations


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
