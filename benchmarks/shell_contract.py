"""The shell-contract cases of issue 17, run from outside against one or more checkouts.

Each case runs the real CLI in a child process (in a fresh temp dir) and reports its exit code and
what it left; with two checkouts it prints them side by side, e.g. before and after a fix:

    python benchmarks/shell_contract.py --checkout /work/main --checkout .

Signals are sent while the child is provably inside the run: one library function is replaced by
one that touches a marker file and waits (see ``_WRAPPER``). Not a timing benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# The CLI, optionally with one function (STALL_AT=module:name) replaced: "stall" touches STALL_MARKER and
# sleeps; "pause" runs the real one first, touches the marker, waits for STALL_GO; "enospc" fails as a full disk.
_WRAPPER = """
import errno, importlib, os, sys, time
from pathlib import Path

if os.environ.get("STALL_AT"):
    module, name = os.environ["STALL_AT"].rsplit(":", 1)
    target = importlib.import_module(module)
    real = getattr(target, name)
    mode = os.environ.get("STALL_MODE", "stall")

    def replaced(*args, **kwargs):
        if mode == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device", str(args[-1]))
        result = real(*args, **kwargs) if mode == "pause" else None
        Path(os.environ["STALL_MARKER"]).touch()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (mode == "pause" and Path(os.environ["STALL_GO"]).exists()):
            time.sleep(0.05)
        return result

    setattr(target, name, replaced)
from sanatool.cli import main

sys.argv = ["sanatool", *sys.argv[1:]]
main()
"""

TIMEOUT = 120


class Run:
    """One checkout's way of running the CLI in a temp dir."""

    def __init__(self, checkout: Path, cwd: Path) -> None:
        self.checkout, self.cwd = checkout, cwd

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(self.checkout), "OMP_NUM_THREADS": "1", **extra}

    def start(self, *args: object, **extra: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", _WRAPPER, *map(str, args)],
            cwd=self.cwd,
            env=self.env(**extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def __call__(self, *args: object, timeout: float = TIMEOUT, **extra: str) -> tuple[int | str, str, str]:
        child = self.start(*args, **extra)
        try:
            out, err = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            return f"timeout {timeout:.0f}s", "", ""
        return child.returncode, out, err

    def signalled(self, signum: int, stall_at: str, *args: object) -> tuple[int | str, str, str]:
        marker = self.cwd / "stalled"
        child = self.start(*args, STALL_AT=stall_at, STALL_MARKER=str(marker))
        return self._signal_when(child, lambda: marker.exists(), signum)

    def _signal_when(self, child: subprocess.Popen, ready: Callable[[], bool], signum: int) -> tuple:
        deadline = time.monotonic() + TIMEOUT
        while not ready() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if child.poll() is None:
            child.send_signal(signum)
        try:
            out, err = child.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            out, err = child.communicate()
        return child.returncode, out, err


def _last(err: str) -> str:
    lines = [line.strip() for line in err.splitlines() if line.strip()]
    return lines[-1][:150] if lines else ""


def _left(folder: Path, *ignore: str) -> str:
    names = sorted(p.name for p in folder.iterdir() if p.name not in {"stalled", "go", *ignore})
    return "left: " + (", ".join(names) if names else "nothing")


def _tiny(run: Run) -> str:
    run("init", "--preset", "tiny", "-o", "tiny")
    return "tiny"


def _data(run: Run) -> str:
    run("data", "shapes", "--n", "4", "-o", "data")
    return "data"


def case_prune_sigint(run: Run) -> tuple:
    model = _tiny(run)
    code, out, err = run.signalled(
        signal.SIGINT, "sanatool.surgery.plan:carry_components", "prune", model, "--keep", "3", "--strategy",
        "tail", "-o", "out",
    )  # fmt: skip
    return code, f"{_last(err)!r} stdout={out.strip()!r} {_left(run.cwd, model)}"


def case_grow_sigterm(run: Run) -> tuple:
    model = _tiny(run)
    code, out, err = run.signalled(
        signal.SIGTERM, "sanatool.surgery.plan:carry_components", "grow", model, "--to", "10", "-o", "out"
    )
    return code, f"{_last(err)!r} {_left(run.cwd, model)}"


def case_sample_sigint(run: Run) -> tuple:
    code, out, err = run.signalled(
        signal.SIGINT, "sanatool.samples.writer:sample_share", "sample", "builtin:tiny-shapes", "--prompt", "a red circle",
        "--steps", "2", "--device", "cpu", "-o", "samples",
    )  # fmt: skip
    return code, f"{_last(err)!r} {_left(run.cwd)}"


def case_finetune_sigint(run: Run) -> tuple:
    data = _data(run)
    log = run.cwd / "ft.checkpoints" / "loss.jsonl"
    child = run.start(
        "finetune", "builtin:tiny-shapes", "--data", data, "--steps", "200", "--batch-size", "2", "--device", "cpu",
        "-o", "ft",
    )  # fmt: skip
    code, out, err = run._signal_when(child, lambda: log.is_file() and log.stat().st_size > 0, signal.SIGINT)
    return code, f"{_last(err)!r} stdout={out.strip()!r}"


def case_usage(*args: object) -> Callable[[Run], tuple]:
    def run_case(run: Run) -> tuple:
        code, out, err = run(*args)
        return code, _last(err)

    return run_case


def case_no_args(run: Run) -> tuple:
    code, out, err = run()
    return code, f"stdout has help: {'Usage' in out}; stderr: {_last(err)!r}"


def case_markup_info(name: str) -> Callable[[Run], tuple]:
    def run_case(run: Run) -> tuple:
        code, out, err = run("info", name)
        return code, _last(err)

    return run_case


def case_markup_prune(run: Run) -> tuple:
    (run.cwd / "mk[").mkdir()
    (run.cwd / "o[").mkdir()
    run("init", "--preset", "tiny", "-o", "mk[/b]")
    code, out, err = run("prune", "mk[/b]", "--keep", "3", "--strategy", "tail", "-o", "o[/i]")
    return code, f"stdout={out.strip()[-20:]!r} {_last(err)[-60:]!r}"


def case_race(run: Run) -> tuple:
    model = _tiny(run)
    marker, go = run.cwd / "stalled", run.cwd / "go"
    first = run.start(
        "prune", model, "--keep", "3", "--strategy", "tail", "-o", "out",
        STALL_AT="sanatool.surgery.plan:carry_components", STALL_MODE="pause", STALL_MARKER=str(marker),
        STALL_GO=str(go),
    )  # fmt: skip
    deadline = time.monotonic() + TIMEOUT
    while not marker.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    second_code, _, _ = run("prune", model, "--keep", "2", "--strategy", "tail", "-o", "out")
    go.touch()
    out, err = first.communicate(timeout=TIMEOUT)
    depth = json.loads((run.cwd / "out" / "transformer" / "config.json").read_text())["num_layers"]
    return first.returncode, f"second run exit {second_code}; first: {_last(err)!r}; out has {depth} blocks"


def case_stale_temps(run: Run) -> tuple:
    model = _tiny(run)
    marker = run.cwd / "stalled"
    child = run.start(
        "prune", model, "--keep", "3", "--strategy", "tail", "-o", "out",
        STALL_AT="sanatool.surgery.plan:carry_components", STALL_MARKER=str(marker),
    )  # fmt: skip
    run._signal_when(child, marker.exists, signal.SIGKILL)
    stale = [p.name for p in run.cwd.iterdir() if p.name.startswith(".out.")]
    code, out, err = run("prune", model, "--keep", "3", "--strategy", "tail", "-o", "out")
    said = [line.strip() for line in err.splitlines() if "died" in line or "stale" in line]
    return (
        code,
        f"after kill -9: {len(stale)} temp(s); after next run: {_left(run.cwd, model)}; said: {said[:1]}",
    )


def case_enospc(run: Run) -> tuple:
    model = _tiny(run)
    code, out, err = run(
        "prune", model, "--keep", "3", "--strategy", "tail", "-o", "out",
        STALL_AT="sanatool.surgery.plan:carry_components", STALL_MODE="enospc", STALL_MARKER="x",
    )  # fmt: skip
    return code, f"{_last(err)!r} {_left(run.cwd, model)}"


def case_symlink_force(run: Run) -> tuple:
    model = _tiny(run)
    (run.cwd / "precious").mkdir()
    (run.cwd / "precious" / "keep.txt").write_text("mine")
    (run.cwd / "link").symlink_to("precious")
    code, out, err = run("prune", model, "--keep", "3", "--strategy", "tail", "-o", "link", "--force")
    kept = (run.cwd / "precious" / "keep.txt").is_file()
    return code, f"link target kept: {kept}; link is now a dir: {not (run.cwd / 'link').is_symlink()}"


def case_huge_seed(run: Run) -> tuple:
    data = _data(run)
    started = time.perf_counter()
    code, out, err = run("finetune", "builtin:tiny-shapes", "--data", data, "--steps", "2", "--device", "cpu",
                         "-o", "ft", "--seed", str(10**30))  # fmt: skip
    return code, f"{_last(err)!r} after {time.perf_counter() - started:.0f}s; {_left(run.cwd, data)}"


def case_under_file(run: Run) -> tuple:
    model = _tiny(run)
    (run.cwd / "afile").write_text("")
    code, out, err = run("prune", model, "--keep", "3", "--strategy", "tail", "-o", "afile/out")
    return code, _last(err)


def case_absurd_n(run: Run) -> tuple:
    started = time.perf_counter()
    code, out, err = run("data", "shapes", "--n", str(10**12), "-o", "d", timeout=20)
    return code, f"{_last(err)!r} after {time.perf_counter() - started:.1f}s"


def _damaged_run(run: Run, damage: Callable[[Path], None]) -> tuple:
    """Fine-tune 2 steps keeping a checkpoint, damage it, then resume."""
    data = _data(run)
    common = [
        "finetune",
        "builtin:tiny-shapes",
        "--data",
        data,
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "-o",
        "ft",
    ]
    run(*common, "--steps", "2", "--save-every", "1")
    (checkpoint,) = (run.cwd / "ft.checkpoints").glob("step-*")
    damage(checkpoint)
    code, out, err = run(*common, "--steps", "3", "--resume", "--force")  # --force: ft exists
    return code, _last(err)


def _edit_meta(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def damage(checkpoint: Path) -> None:
        path = checkpoint / "checkpoint.json"
        meta = json.loads(path.read_text())
        path.write_text(json.dumps(edit(meta)))

    return damage


def case_checkpoint(kind: str) -> Callable[[Run], tuple]:
    def rename(checkpoint: Path) -> None:
        checkpoint.rename(checkpoint.with_name("step-abc"))

    def bad_reference(checkpoint: Path) -> None:
        path = checkpoint / "training_state.json"
        path.write_text(path.read_text().replace('"__tensor__": "state.', '"__tensor__": "nowhere.', 1))

    damage = {
        "invalid": lambda checkpoint: (checkpoint / "checkpoint.json").write_text("{not json"),
        "list": _edit_meta(lambda meta: [meta]),
        "no-step": _edit_meta(lambda meta: {k: v for k, v in meta.items() if k != "step"}),
        "step-abc": _edit_meta(lambda meta: {**meta, "step": "abc"}),
        "name": rename,
        "tensor": bad_reference,
    }[kind]
    return lambda run: _damaged_run(run, damage)


CASES: list[tuple[str, Callable[[Run], tuple]]] = [
    ("F3 prune, Ctrl-C mid-run", case_prune_sigint),
    ("F3 grow, SIGTERM mid-run", case_grow_sigterm),
    ("F3 sample, Ctrl-C mid-run", case_sample_sigint),
    ("F3 finetune, Ctrl-C mid-run", case_finetune_sigint),
    ("F2 grow --to abc", case_usage("grow", "builtin:tiny-shapes", "--to", "abc", "-o", "o")),
    ("F2 unknown option", case_usage("grow", "builtin:tiny-shapes", "--to", "4", "-o", "o", "--bogus")),
    ("F2 missing option", case_usage("grow", "builtin:tiny-shapes", "-o", "o")),
    ("F2 unknown command", case_usage("frobnicate")),
    ("F2 sample --steps nan", case_usage("sample", "builtin:tiny-shapes", "--prompt", "x", "--steps", "nan", "-o", "o")),
    ("sanatool (no arguments)", case_no_args),
    ("F1 info 'nope[/x]'", case_markup_info("nope[/x]")),
    ("F1 info 'nope[bold]x'", case_markup_info("nope[bold]x")),
    ("F1 prune 'mk[/b]' -o 'o[/i]'", case_markup_prune),
    ("F4 two runs to one -o (2nd ends 1st)", case_race),
    ("kill -9, then the next run", case_stale_temps),
    ("no space left on device", case_enospc),
    ("-o SYMLINK --force", case_symlink_force),
    ("F11 grow --seed=-1", case_usage("grow", "builtin:tiny-shapes", "--to", "10", "-o", "o", "--seed=-1")),
    ("F11 data shapes --seed=-1", case_usage("data", "shapes", "--n", "2", "-o", "o", "--seed=-1")),
    ("F11 finetune --seed 10**30", case_huge_seed),
    ("F12 -o under a regular file", case_under_file),
    ("F13 sample --guidance nan", case_usage("sample", "builtin:tiny-shapes", "--prompt", "x", "--guidance", "nan", "--steps", "1", "--device", "cpu", "-o", "o")),
    ("F13 sample --guidance inf", case_usage("sample", "builtin:tiny-shapes", "--prompt", "x", "--guidance", "inf", "--steps", "1", "--device", "cpu", "-o", "o")),
    ("F16 data shapes --n 10**12", case_absurd_n),
    ("F17 checkpoint.json invalid", case_checkpoint("invalid")),
    ("F17 checkpoint.json a list", case_checkpoint("list")),
    ("F17 checkpoint.json without step", case_checkpoint("no-step")),
    ("F17 checkpoint.json step 'abc'", case_checkpoint("step-abc")),
    ("F17 run dir named step-abc", case_checkpoint("name")),
    ("F17 bad tensor reference", case_checkpoint("tensor")),
]  # fmt: skip


def main() -> None:
    """Run every case (or those matching --only) against each checkout and print a table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkout", action="append", type=Path, help="a sanatool checkout (repeatable)")
    parser.add_argument("--only", default="", help="run only the cases whose name contains this")
    args = parser.parse_args()
    checkouts = [p.resolve() for p in (args.checkout or [Path(__file__).resolve().parents[1]])]
    rows = []
    for name, case in CASES:
        if args.only not in name:
            continue
        row = [name]
        for checkout in checkouts:
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    code, note = case(Run(checkout, Path(tmp)))
                except Exception as err:  # noqa: BLE001 - a case that cannot even be set up is a row too
                    code, note = "case failed", f"{type(err).__name__}: {err}"
            row.append(f"{code}: {note}")
            print(f"{name} [{checkout}]: {code} | {note}", file=sys.stderr, flush=True)
        rows.append(row)
    print("| case | " + " | ".join(f"exit, what it said/left: {c}" for c in checkouts) + " |")
    print("|---" * (len(checkouts) + 1) + "|")
    for row in rows:
        print("| " + " | ".join(cell.replace("|", "/").replace("\n", " ") for cell in row) + " |")


if __name__ == "__main__":
    main()
