"""Option sets declared once and shared by commands (`cli/options.py`)."""

from __future__ import annotations

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from sanatool.cli.options import Opt, with_options


def _flags(command: object) -> dict[str, tuple[str, ...]]:
    return {p.name: tuple(p.opts) for p in command.params}  # type: ignore[attr-defined]


def test_train_and_finetune_share_one_set_and_sample_and_importance_another():
    from sanatool.cli import app
    from sanatool.cli.sample_cmds import SAMPLER_OPTIONS
    from sanatool.cli.train_cmds import TRAINING_OPTIONS

    commands = get_command(app).commands  # type: ignore[attr-defined]
    for names, options in (
        (("train", "finetune"), TRAINING_OPTIONS),
        (("sample", "importance"), SAMPLER_OPTIONS),
    ):
        shared = {opt.name for opt in options}
        first, second = (_flags(commands[name]) for name in names)
        assert shared <= set(first) and shared <= set(second)
        assert {k: first[k] for k in shared} == {k: second[k] for k in shared}


def test_values_reach_the_command_and_a_command_without_shared_is_refused():
    app = typer.Typer(add_completion=False)
    seen = {}
    options = (Opt("steps", int, typer.Option(3, "--steps")), Opt("name", str, typer.Option("x", "--name")))

    @app.command()
    @with_options(*options)
    def run(
        first: int = typer.Argument(...), *, shared: dict, last: bool = typer.Option(False, "--last")
    ) -> None:
        seen.update(first=first, shared=shared, last=last)

    result = CliRunner().invoke(app, ["7", "--steps", "5", "--last"])
    assert result.exit_code == 0, result.output
    assert seen == {"first": 7, "shared": {"steps": 5, "name": "x"}, "last": True}
    params = [p.name for p in get_command(app).params]
    assert params == ["first", "steps", "name", "last"]  # the set stands where `shared` does

    with pytest.raises(TypeError, match="shared"):

        @with_options(*options)
        def lacking(first: int = 0) -> None: ...


def test_every_path_on_stdout_is_absolute(cli, tmp_path, monkeypatch, capsys):
    """One rule for the result line: `init` (like `importance`) once printed the path as typed."""
    from pathlib import Path

    from sanatool.cli._app import emit

    monkeypatch.chdir(tmp_path)
    res = cli("init", "--preset", "tiny", "-o", "rel")
    assert res.code == 0, res.stderr
    assert res.stdout == f"{(tmp_path / 'rel').resolve()}\n"
    capsys.readouterr()
    emit(Path("importance.json"))  # what `importance` hands it
    assert capsys.readouterr().out == f"{(tmp_path / 'importance.json').resolve()}\n"
