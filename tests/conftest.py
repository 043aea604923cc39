"""Shared fixtures: an in-process CLI runner (no interpreter start-up per call)."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest


@dataclass
class CliResult:
    """What one CLI invocation produced."""

    code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run ``sanatool ARGS...`` in-process through the real entry point; returns a CliResult."""
    from sanatool.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["sanatool", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as ex:
            code = ex.code if isinstance(ex.code, int) else (0 if ex.code is None else 1)
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run
