"""The shell contract (issue 17): exit codes, one-line messages, and what is left on disk.

0 done, 1 failed while running, 2 bad input or usage, 130 Ctrl-C, 143 SIGTERM; user text is never
rich markup; an output is never half-written, never silently replaced, never left as a temp.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs the real CLI in a child process, with one library function replaced by one that touches a
# marker file and sleeps: the test signals the child while it is provably inside the run.
_STALLED_CLI = """
import importlib, os, sys, time
from pathlib import Path

module, name = os.environ["STALL_AT"].rsplit(":", 1)

def stall(*args, **kwargs):
    Path(os.environ["STALL_MARKER"]).touch()
    time.sleep(120)

setattr(importlib.import_module(module), name, stall)
from sanatool.cli import main

sys.argv = ["sanatool", *sys.argv[1:]]
main()
"""


def _signal_when_stalled(
    tmp_path: Path, stall_at: str, signum: int, *args: object
) -> subprocess.CompletedProcess:
    marker = tmp_path / "stalled"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STALL_AT": stall_at, "STALL_MARKER": str(marker)}
    child = subprocess.Popen(
        [sys.executable, "-c", _STALLED_CLI, *map(str, args)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the run never reached the stall"
            time.sleep(0.05)
        child.send_signal(signum)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return subprocess.CompletedProcess(child.args, child.returncode, out, err)


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --- Ctrl-C and SIGTERM --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "signum", "code", "said"),
    [
        ("prune", signal.SIGINT, 130, "interrupted (Ctrl-C): nothing was written"),
        ("grow", signal.SIGTERM, 143, "stopped by SIGTERM: nothing was written"),
    ],
)
def test_a_signal_mid_surgery_exits_128_plus_it_says_so_and_leaves_nothing(
    tiny_transformer, tmp_path, command, signum, code, said
):
    how = ["--keep", "3", "--strategy", "tail"] if command == "prune" else ["--to", "10"]
    result = _signal_when_stalled(
        tmp_path,
        "sanatool.surgery.plan:carry_components",
        signum,
        command,
        tiny_transformer,
        *how,
        "-o",
        "out",
    )
    assert result.returncode == code, result.stderr
    assert _lines(result.stderr) == [said]
    assert result.stdout == ""  # `OUT=$(sanatool prune …) && next` must not go on
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stalled"]  # no output, no temp sibling


def test_ctrl_c_mid_sample_keeps_the_partial_dir_and_says_how_to_resume(tmp_path):
    result = _signal_when_stalled(
        tmp_path,
        "sanatool.samples.writer:sample_share",
        signal.SIGINT,
        "sample",
        "builtin:tiny-shapes",
        "--prompt",
        "a red circle",
        "--steps",
        "2",
        "--device",
        "cpu",
        "-o",
        "samples",
    )
    assert result.returncode == 130, result.stderr
    last = _lines(result.stderr)[-1]
    assert last.startswith("interrupted (Ctrl-C): the finished images are kept in ")
    assert last.endswith(".samples.partial; rerun with --resume to continue")
    assert (tmp_path / ".samples.partial").is_dir() and not (tmp_path / "samples").exists()


def test_interrupted_exit_codes_follow_the_signal():
    from sanatool.errors import Interrupted

    assert Interrupted(signal.SIGTERM).exit_code == 143 and Interrupted().exit_code == 130
    kept = Interrupted.keeping(Interrupted(signal.SIGTERM), "a checkpoint")
    assert (kept.signum, kept.kept) == (signal.SIGTERM, "a checkpoint")
    assert Interrupted.keeping(KeyboardInterrupt(), "x").signum == signal.SIGINT


def test_sigterm_mid_training_finishes_the_step_and_saves_a_checkpoint_like_ctrl_c(
    tiny_pipeline, shapes_data, tmp_path
):
    import torch

    from sanatool.errors import Interrupted
    from sanatool.training.options import TrainOptions
    from sanatool.training.run import run_training

    def sigterm_at_1(task: str, done: int, total: int | None = None, **info: object) -> None:
        if task == "train" and done == 1 and info:
            os.kill(os.getpid(), signal.SIGTERM)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    opts = TrainOptions(
        out=tmp_path / "ft", data=shapes_data, steps=3, source=str(tiny_pipeline), batch_size=2
    )
    try:
        with pytest.raises(Interrupted) as stopped:
            run_training(opts, progress=sigterm_at_1)
    finally:
        torch.set_num_threads(threads)
    assert stopped.value.exit_code == 143
    assert "resumable checkpoint of step 1" in stopped.value.kept and "--resume" in stopped.value.kept
    assert [p.name for p in (tmp_path / "ft.checkpoints").glob("step-*")] == ["step-00000001"]
    assert not (tmp_path / "ft").exists()


# --- usage errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["grow", "M", "--to", "abc", "-o", "out"], "Invalid value for '--to'"),
        (["grow", "M", "--to", "4", "-o", "out", "--bogus"], "No such option: --bogus"),
        (["grow", "M", "-o", "out"], "Missing option '--to'"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["sample", "M", "--prompt", "x", "--steps", "nan", "-o", "out"], "Invalid value for '--steps'"),
        (["sample", "M", "--prompt", "x", "--guidance", "nan", "-o", "out"], "nan is not a finite number"),
        (["sample", "M", "--prompt", "x", "--guidance", "inf", "-o", "out"], "inf is not a finite number"),
        (["finetune", "M", "--data", "d", "-o", "out", "--lr", "-inf"], "-inf is not a finite number"),
        (["grow", "M", "--to", "4", "-o", "out", "--seed=-1"], "-1 is not in the range 0<=x<=4294967295"),
        (["data", "shapes", "-o", "out", "--n", "2", "--seed=-1"], "-1 is not in the range"),
        (["finetune", "M", "--data", "d", "-o", "out", "--seed", str(10**30)], "is not in the range"),
        (["demo", "--seed", str(2**32)], "is not in the range"),
    ],
)
def test_usage_errors_exit_2_with_clicks_usage_line_before_any_work(cli, tmp_path, monkeypatch, args, error):
    monkeypatch.chdir(tmp_path)
    result = cli(*args)
    assert result.code == 2, result.stderr
    lines = _lines(result.stderr)
    assert lines[0].startswith("Usage: ") and lines[-1].startswith("Error: ") and error in lines[-1]
    assert list(tmp_path.iterdir()) == []


def test_seed_range_ends_are_accepted(cli, tmp_path):
    assert cli("data", "shapes", "-o", tmp_path / "a", "--n", "1", "--seed", str(2**32 - 1)).code == 0
    assert cli("data", "shapes", "-o", tmp_path / "b", "--n", "1", "--seed", "0").code == 0


def test_every_float_option_of_every_command_refuses_non_finite_numbers():
    from typer.main import get_command

    from sanatool.cli import app
    from sanatool.cli._app import click_module

    group = get_command(app)
    ctx = click_module("core").Context(group)
    float_type = click_module("types").FloatParamType
    checked = []
    names = list(group.commands) + [f"data {name}" for name in group.commands["data"].commands]
    for name in names:
        parts = name.split()
        command = group.get_command(ctx, parts[0])
        if len(parts) == 2:
            command = command.commands[parts[1]]
        for param in command.params:
            if isinstance(param.type, float_type):
                checked.append(f"{name} {param.name}")
                assert getattr(param.callback, "finite", False), f"{name} --{param.name} takes nan"
    assert len(checked) >= 10  # guidance, lr, weight decay, …


def test_bare_sanatool_prints_the_help_and_exits_0(cli):
    result = cli()
    assert result.code == 0
    assert "Usage" in result.stdout and "grow" in result.stdout
    assert result.stderr.strip() == ""


# --- user text is never markup -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["nope[/x]", "nope[bold]x", "[red]r"])
def test_a_path_with_brackets_is_printed_as_itself(cli, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    result = cli("info", name)
    assert result.code == 2
    assert _lines(result.stderr) == [f"error: model dir {name} does not exist"]


def test_surgery_with_bracketed_paths_writes_and_reports_them(cli, tiny_transformer, tmp_path):
    (tmp_path / "mk[").mkdir()
    (tmp_path / "o[").mkdir()
    source, out = tmp_path / "mk[" / "b]", tmp_path / "o[" / "i]"
    assert cli("prune", tiny_transformer, "--keep", "4", "--strategy", "tail", "-o", source).code == 0
    result = cli("prune", source, "--keep", "3", "--strategy", "tail", "-o", out)
    assert result.code == 0, result.stderr
    assert result.stdout == f"{out}\n"
    assert _lines(result.stderr)[-1].endswith(f"written to {out}")
    info = cli("info", out)
    assert info.code == 0 and str(out) in info.stdout


# --- outputs: races, stale temps, full disks, links, files in the way ----------------------------


def _prune(cli, source, out, *extra):
    return cli("prune", source, "--keep", "3", "--strategy", "tail", "-o", out, *extra)


def test_an_output_that_appears_while_writing_is_never_replaced_without_force(
    cli, tiny_transformer, tmp_path, monkeypatch
):
    import sanatool.surgery.plan as plan

    out = tmp_path / "out"
    real = plan.carry_components

    def another_run_finishes_first(model, tmp, *args):
        real(model, tmp, *args)
        out.mkdir()
        (out / "theirs").write_text("the other run's result")

    monkeypatch.setattr(plan, "carry_components", another_run_finishes_first)
    result = _prune(cli, tiny_transformer, out)
    assert result.code == 2
    assert (
        _lines(result.stderr)[-1]
        == f"error: {out} appeared while this run was writing; rerun with --force to replace it"
    )
    assert result.stdout == ""
    assert [p.name for p in out.iterdir()] == ["theirs"] and _hidden(tmp_path) == []

    out_force = tmp_path / "forced"

    def appears(model, tmp, *args):
        real(model, tmp, *args)
        out_force.mkdir()

    monkeypatch.setattr(plan, "carry_components", appears)
    assert _prune(cli, tiny_transformer, out_force, "--force").code == 0
    assert (out_force / "config.json").is_file() and _hidden(tmp_path) == []


def test_a_file_output_that_appears_meanwhile_is_refused(tmp_path):
    from sanatool.errors import OutputExistsError
    from sanatool.io.outputs import atomic_output_file

    out = tmp_path / "scores.json"
    with pytest.raises(OutputExistsError, match="appeared while this run was writing"):
        with atomic_output_file(out) as tmp:
            tmp.write_text("mine")
            out.write_text("theirs")
    assert out.read_text() == "theirs" and _hidden(tmp_path) == []


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temps_of_dead_runs_are_removed_and_said_live_ones_kept(cli, tiny_transformer, tmp_path):
    from sanatool.io.outputs import _HOST

    dead = _dead_pid()
    stale = tmp_path / f".out.tmp-{dead}-{_HOST}-abc123"
    (stale / "transformer").mkdir(parents=True)
    stale_old = tmp_path / f".out.old-{dead}-{_HOST}"
    stale_old.mkdir()
    live = tmp_path / f".out.tmp-{os.getpid()}-{_HOST}-def456"
    live.mkdir()
    elsewhere = tmp_path / f".out.tmp-{dead}-0000beef-ghi789"
    elsewhere.mkdir()
    other_output = tmp_path / f".out2.tmp-{dead}-{_HOST}-jkl"
    other_output.mkdir()
    result = _prune(cli, tiny_transformer, tmp_path / "out")
    assert result.code == 0, result.stderr
    assert not stale.exists() and not stale_old.exists()
    assert live.exists() and elsewhere.exists() and other_output.exists()
    said = [line for line in _lines(result.stderr) if "died" in line]
    assert len(said) == 2 and all(f"(pid {dead})" in line for line in said)
    # Off a terminal a log record is one whole line (not wrapped at 80 columns), naming the temp.
    assert all(line.startswith("WARNING: ") and str(tmp_path) in line for line in said)


def test_a_full_disk_is_one_line_naming_the_output_and_the_size(cli, tiny_transformer, tmp_path, monkeypatch):
    import sanatool.surgery.plan as plan

    def disk_full(model, tmp, *args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "transformer"))

    monkeypatch.setattr(plan, "carry_components", disk_full)
    out = tmp_path / "out"
    result = _prune(cli, tiny_transformer, out)
    assert result.code == 1
    (line,) = _lines(result.stderr)
    assert line.startswith(f"error: no space left on the device while writing {out} (")
    assert "it needs about 3.8" in line and "free there now" in line
    assert list(tmp_path.iterdir()) == []


def test_force_onto_a_symlink_replaces_the_link_never_its_target(cli, tiny_transformer, tmp_path):
    target = tmp_path / "precious"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    link = tmp_path / "link"
    link.symlink_to(target)
    assert _prune(cli, tiny_transformer, link).code == 2  # exists: refused without --force
    result = _prune(cli, tiny_transformer, link, "--force")
    assert result.code == 0, result.stderr
    assert not link.is_symlink() and (link / "config.json").is_file()
    assert [p.name for p in target.iterdir()] == ["keep.txt"]
    assert _hidden(tmp_path) == []


@pytest.mark.parametrize("under", ["afile/out", "afile/deeper/out"])
def test_an_output_under_a_regular_file_is_one_line_exit_2(cli, tiny_transformer, tmp_path, under):
    (tmp_path / "afile").write_text("")
    result = _prune(cli, tiny_transformer, tmp_path / under)
    assert result.code == 2
    assert _lines(result.stderr) == [
        f"error: output {tmp_path / under} cannot be made: a parent of it is a file, not a directory"
    ]


# --- absurd counts, damaged checkpoints ----------------------------------------------------------


def test_an_absurd_image_count_is_refused_at_once(cli, tmp_path):
    started = time.perf_counter()
    result = cli("data", "shapes", "-o", tmp_path / "d", "--n", str(10**12))
    assert result.code == 2
    assert _lines(result.stderr) == [
        "error: --n (the number of images) asks for 1,000,000,000,000 images; the most one output holds is 10,000,000"
    ]
    assert time.perf_counter() - started < 5 and list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    from sanatool.shapes.dataset import write_shapes_dataset

    return write_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", 4, seed=1)


def _checkpoint(run_dir: Path, name: str, meta: object) -> Path:
    folder = run_dir / name
    folder.mkdir(parents=True)
    (folder / "checkpoint.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
    return folder


@pytest.mark.parametrize(
    ("name", "meta", "flags", "said"),
    [
        ("step-abc", {"step": 1}, (), "{folder} is not a checkpoint (a step-NUMBER dir)"),
        ("step-abc", {"step": 1}, ("--resume",), "{folder} is not a checkpoint (a step-NUMBER dir)"),
        (
            "step-abc",
            {"step": 1},
            ("--resume", "--force"),
            "{folder} is not a checkpoint (a step-NUMBER dir)",
        ),
        (
            "step-00000002",
            "{not json",
            ("--resume",),
            "checkpoint record {folder}/checkpoint.json is not valid JSON",
        ),
        (
            "step-00000002",
            {"identity": {}},
            ("--resume",),
            "{folder}/checkpoint.json has no step matching its dir (None)",
        ),
        (
            "step-00000002",
            {"step": "2"},
            ("--resume",),
            "{folder}/checkpoint.json has no step matching its dir ('2')",
        ),
    ],
)
def test_a_damaged_checkpoint_is_one_line_exit_2_and_left_as_it_is(
    cli, shapes_data, tmp_path, name, meta, flags, said
):
    out = tmp_path / "ft"
    folder = _checkpoint(tmp_path / "ft.checkpoints", name, meta)
    before = sorted(p.name for p in folder.parent.rglob("*"))
    args = ["finetune", "builtin:tiny-shapes", "--data", shapes_data, "-o", out, "--steps", "3"]
    result = cli(*args, *flags)
    assert result.code == 2, result.stderr
    (line,) = _lines(result.stderr)
    assert line.startswith("error: " + said.format(folder=folder)) and "delete it or pass --force" in line
    assert sorted(p.name for p in folder.parent.rglob("*")) == before and not out.exists()


def test_a_bad_tensor_reference_in_the_training_state_is_an_input_error(tmp_path):
    import torch

    from sanatool.errors import InputError
    from sanatool.training.state import STATE_JSON, load_state, save_state

    save_state(tmp_path, {"optimizer": {"exp_avg": torch.zeros(2)}})
    record = json.loads((tmp_path / STATE_JSON).read_text())
    record["state"]["__dict__"][0][1]["__dict__"][0][1] = {"__tensor__": "state.nowhere"}
    (tmp_path / STATE_JSON).write_text(json.dumps(record))
    with pytest.raises(InputError, match=r"the training state is damaged .*delete it or pass --force"):
        load_state(tmp_path)


@pytest.mark.parametrize("shift", [float("nan"), float("inf"), -1.0, "3", True])
def test_a_scheduler_config_with_a_non_finite_flow_shift_is_refused(shift):
    from sanatool.arch import flow_shift
    from sanatool.errors import ModelDirError

    with pytest.raises(ModelDirError, match="flow shift .* is not a positive number"):
        flow_shift({"flow_shift": shift})
    assert (
        flow_shift({"flow_shift": 3}) == 3.0 and flow_shift({"shift": 2.5}) == 2.5 and flow_shift({}) == 1.0
    )
