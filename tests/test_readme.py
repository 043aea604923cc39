"""The README runs top to bottom: its blocks, in order, in one empty directory, through the real CLI.

What README.md promises and this test keeps true:

- Every ```` ```bash ```` block runs as written, one command line at a time (``set -e``), in one
  temporary directory, ``sanatool`` being this checkout's CLI (a subprocess with ``PYTHONPATH``);
  every ```` ```python ```` block runs there too. Nothing may fail, and no output may be written twice
  ("already exists").
- ``<!-- readme-test: skip (why) -->`` right before a block: not run (it needs your own checkpoint,
  GPUs, or is the test suite itself). ``pip install …`` is not run: the checkout is what is tested.
- A command marked ``# slow: TIME`` (TIME as measured on 2 CPU cores) runs with reduced sizes
  (:data:`REDUCED`: fewer steps, images and prompts), or not at all when it has none (the demo, the
  big presets' ``init``). ``SANATOOL_README_FULL=1`` runs every command as written and prints each
  one's wall time: how the README's times are measured (``SANATOOL_README_SKIP=REGEX`` leaves out the
  commands it matches).

A static check covers every block, skipped ones included: no two commands write the same output
unless the second says ``--force`` (or ``--resume``, which continues it).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import sanatool

CHECKOUT = Path(sanatool.__file__).parent.parent
README = CHECKOUT / "README.md"
FULL = os.environ.get("SANATOOL_README_FULL") == "1"
SKIP = os.environ.get("SANATOOL_README_SKIP")  # a regex: commands not to run (when measuring with FULL)


def _fewer_steps(steps: int | None) -> str:
    return str(max(1, (steps or 100) // 25))


#: Slow commands, made small: subcommand → option → value (or a function of the README's value);
#: an option the command does not give is added. ``finetune``'s 50 and 100 steps become 2 and 4, so
#: a run resumed from a checkpoint still has steps left to do.
REDUCED = {
    "sample": {"-n": "1", "--steps": "2"},
    "importance": {"--num-prompts": "2", "--steps": "2"},
    "finetune": {"--steps": _fewer_steps, "--save-every": lambda n: "1" if n else "0", "--batch-size": "4"},
    "train": {"--steps": "2", "--batch-size": "4"},
    "train-verifier": {"--steps": "2", "--renders": "64"},
    "data": {"--n": "64"},
}
#: A slow command's prompts file is cut to its first lines (written beside it under this prefix).
REDUCED_PROMPTS = 12
SHORT_PROMPTS = ".readme-test-"

_BLOCK = re.compile(
    r"(?:<!-- readme-test: (?P<marker>[^>]*?) -->\n)?```(?P<lang>bash|python)\n(?P<body>.*?)```", re.S
)


@dataclass
class Block:
    lang: str
    body: str
    skip: str | None
    line: int

    def commands(self) -> list[str]:
        """The block's command lines (continuations joined, comments and blank lines dropped)."""
        joined = re.sub(r"\\\n\s*", " ", self.body)
        return [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def readme_blocks() -> list[Block]:
    text = README.read_text(encoding="utf-8")
    blocks = []
    for match in _BLOCK.finditer(text):
        marker = match["marker"]
        skip = marker.removeprefix("skip").strip(" ()") if marker and marker.startswith("skip") else None
        blocks.append(Block(match["lang"], match["body"], skip, text.count("\n", 0, match.start()) + 1))
    return blocks


def _split(command: str) -> tuple[str, str | None]:
    """``(command, slow note)``: the command without its trailing comment, and what ``# slow:`` says."""
    code, _, comment = command.partition(" #")
    comment = comment.strip()
    return code.strip(), comment.removeprefix("slow:").strip() if comment.startswith("slow:") else None


def _sanatool_calls(code: str) -> list[list[str]]:
    """The argument lists of every ``sanatool`` call on a command line (``a && b`` gives two)."""
    calls = []
    for part in code.split("&&"):
        words = shlex.split(part)
        if words and words[0] == "sanatool":
            calls.append(words[1:])
    return calls


def _outputs(args: list[str]) -> list[str]:
    """What a ``sanatool`` call writes (its ``-o``, the demo's default, ``eval --export-*``)."""
    found = [args[i + 1] for i, word in enumerate(args[:-1]) if word in ("-o", "--out")]
    found += [args[i + 1] for i, word in enumerate(args[:-1]) if word.startswith("--export-")]
    if args[:1] == ["demo"] and not found:
        found.append("sanatool-demo")
    return [path.rstrip("/") for path in found]


def test_no_output_is_written_twice():
    written: dict[str, int] = {}
    for block in readme_blocks():
        if block.lang != "bash":
            continue
        for command in block.commands():
            code, _ = _split(command)
            for args in _sanatool_calls(code):
                if "--dry-run" in args:
                    continue
                replaces = bool({"--force", "--resume"} & set(args))  # says so: replaces or continues
                for path in _outputs(args):
                    assert replaces or path not in written, (
                        f"README line {block.line}: `sanatool {' '.join(args)}` writes {path}, "
                        f"already written by the block at line {written[path]}"
                    )
                    written[path] = block.line
    assert {"tiny", "tiny-6", "samples", "cands", "picks"} <= set(written)


def _reduce(code: str) -> str | None:
    """A slow command with reduced sizes (:data:`REDUCED`), or ``None`` when it has none."""
    words = shlex.split(code)
    if words[:1] != ["sanatool"] or "&&" in words or len(words) < 2 or words[1] not in REDUCED:
        return None
    args = words[2:]
    for option, value in REDUCED[words[1]].items():
        if option not in args:
            args += [option, value(None) if callable(value) else value]
            continue
        at = args.index(option) + 1
        args[at] = value(int(args[at])) if callable(value) else value
    if "--prompts" in args:
        args[args.index("--prompts") + 1] = SHORT_PROMPTS + args[args.index("--prompts") + 1]
    return shlex.join(["sanatool", words[1], *args])


def _shorten_prompts(job: dict, workdir: Path) -> str:
    """Write the short prompts file a reduced command reads (the first lines of the real one)."""
    for word in shlex.split(job["code"]) if job["lang"] == "bash" else []:
        if word.startswith(SHORT_PROMPTS):
            source = workdir / word.removeprefix(SHORT_PROMPTS)
            lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
            (workdir / word).write_text("".join(lines[:REDUCED_PROMPTS]), encoding="utf-8")
    return job["code"]


# Runs the README's commands in one fresh process, in order, and reports each one's result as a JSON
# line. A line of `sanatool` calls goes through the real entry point in-process (one torch import
# for all of them instead of one per command, the difference between a minute and ten); any other
# line through bash; a Python block through exec.
_DRIVER = r"""
import contextlib, io, json, os, shlex, subprocess, sys, time
from sanatool.cli import main

def run_sanatool(args):
    sys.argv = ["sanatool", *args]
    try:
        main()
    except SystemExit as ex:
        return ex.code if isinstance(ex.code, int) else (0 if ex.code is None else 1)
    return 0

for line in sys.stdin:
    job = json.loads(line)
    start, out, err = time.perf_counter(), io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            if job["lang"] == "python":
                exec(compile(job["code"], "README", "exec"), {"__name__": "__main__"})
                code = 0
            elif job["calls"] is not None:
                code = 0
                for args in job["calls"]:
                    code = run_sanatool(args)
                    if code:
                        break
            else:
                proc = subprocess.run(["bash", "-eo", "pipefail", "-c", job["code"]], capture_output=True, text=True)
                code = proc.returncode
                out.write(proc.stdout)
                err.write(proc.stderr)
        except BaseException as ex:  # a Python block that raised
            import traceback
            traceback.print_exc(file=err)
            code = 1
    print(json.dumps({"code": code, "stderr": err.getvalue(), "seconds": time.perf_counter() - start}), flush=True)
"""


def _jobs(workdir: Path) -> list[dict]:
    """The README's runnable blocks as driver jobs, slow commands reduced (or left out)."""
    jobs = []
    for block in readme_blocks():
        if block.skip is not None:
            continue
        if block.lang == "python":
            jobs.append({"lang": "python", "code": block.body, "calls": None, "line": block.line})
            continue
        for command in block.commands():
            code, slow = _split(command)
            code = re.sub(r"^pip install [^&]*(&&\s*)?", "", code).strip()
            if code and slow is not None and not FULL:
                code = _reduce(code)
            if code and SKIP and re.search(SKIP, code):
                code = None
            if code:
                calls = _sanatool_calls(code)
                pure = len(calls) == len(code.split("&&"))
                jobs.append(
                    {"lang": "bash", "code": code, "calls": calls if pure else None, "line": block.line}
                )
    return jobs


def test_the_readme_runs_top_to_bottom(tmp_path):
    workdir = tmp_path / "work"
    workdir.mkdir()
    bin_dir = tmp_path / "bin"  # `sanatool` on PATH for bash lines: this checkout's CLI
    bin_dir.mkdir()
    (bin_dir / "sanatool").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m sanatool "$@"\n')
    (bin_dir / "sanatool").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(CHECKOUT),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    jobs = _jobs(workdir)
    driver = subprocess.Popen(
        [sys.executable, "-c", _DRIVER], cwd=workdir, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    timings = []
    try:
        for job in jobs:
            # A slow command's prompts file is cut short just before it runs (it exists by then).
            job = {**job, "code": _shorten_prompts(job, workdir)}
            if job["calls"] is not None:
                job["calls"] = _sanatool_calls(job["code"])
            driver.stdin.write(json.dumps(job) + "\n")
            driver.stdin.flush()
            result = json.loads(driver.stdout.readline())
            timings.append((result["seconds"], job["code"].strip().splitlines()[0]))
            where = f"README line {job['line']}: {job['code']}\n{result['stderr'][-3000:]}"
            assert result["code"] == 0, where
            # Only sanatool's own lines: no other library's import-time warnings.
            assert "Skipping publisher" not in result["stderr"] and "gemm_4bit" not in result["stderr"], where
    finally:
        driver.stdin.close()
        driver.wait(timeout=60)
        if FULL or os.environ.get("SANATOOL_README_TIMES") == "1":
            print("\nREADME commands, wall seconds:")
            for seconds, shown in timings:
                print(f"{seconds:8.1f}  {shown}")
