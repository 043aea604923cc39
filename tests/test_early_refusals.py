"""Refusals that need no model come first: before torch is imported, in a fraction of a second."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import sanatool

CHECKOUT = str(Path(sanatool.__file__).parent.parent)

# Runs each argv through the real entry point in one fresh process; reports the exit code, the
# error line and whether torch had been imported by then.
_PROBE = """
import json, sys
from sanatool.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    sys.argv = ["sanatool", *argv]
    try:
        main()
        code = 0
    except SystemExit as ex:
        code = ex.code
    results.append({"argv": argv, "code": code, "torch": "torch" in sys.modules})
print(json.dumps(results))
"""


@pytest.mark.parametrize("flavour", ["existing output", "bad dtype", "bad input"])
def test_refused_before_torch_is_imported(tmp_path, flavour):
    existing = tmp_path / "exists"
    existing.mkdir()
    fresh = tmp_path / "new"
    if flavour == "existing output":
        out = str(existing)
        runs = [
            ["demo", "-o", out],
            ["judge", str(tmp_path), "-o", out, "--judge", "shapes"],
            ["train-verifier", "-o", out],
            ["train-vae", "--data", str(tmp_path), "-o", out],
            ["finetune", "builtin:tiny-shapes", "--data", str(tmp_path), "-o", out],
            ["train", "--preset", "tiny", "--data", str(tmp_path), "-o", out],
            ["sample", "builtin:tiny-shapes", "--prompt", "a red circle", "-o", out],
            ["importance", "builtin:tiny-shapes", "-o", out],
            ["data", "shapes", "-o", out, "-n", "4"],
        ]
        expected = "already exists"
    elif flavour == "bad dtype":
        out = str(fresh)
        runs = [
            ["sample", "builtin:tiny-shapes", "--prompt", "a red circle", "-o", out, "--dtype", "bogus"],
            ["importance", "builtin:tiny-shapes", "-o", out, "--dtype", "bogus"],
            ["finetune", "builtin:tiny-shapes", "--data", str(tmp_path), "-o", out, "--dtype", "bogus"],
            ["train-vae", "--data", str(tmp_path), "-o", out, "--dtype", "bogus"],
            ["init", "--preset", "tiny", "-o", out, "--dtype", "bogus"],
        ]
        expected = "unknown dtype 'bogus'"
    if flavour == "bad input":
        out, missing = str(fresh), str(tmp_path / "missing")
        runs = [
            ["finetune", "builtin:tiny-shapes", "--data", missing, "-o", out],
            ["finetune", "builtin:tiny-shapes", "--data", missing, "-o", out, "--optimizer", "bogus"],
            ["train", "--preset", "tiny", "--data", missing, "-o", out],
            ["train-vae", "--data", missing, "-o", out],
            ["judge", missing, "-o", out, "--judge", "shapes"],
            ["importance", "builtin:tiny-shapes", "-o", out, "--metric", "bogus"],
            ["sample", "builtin:tiny-shapes", "--prompts", missing, "-o", out],
            ["demo", "--model", missing, "-o", out],
        ]
        expected = "error:"
    env = {**os.environ, "PYTHONPATH": CHECKOUT}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(runs)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert [r["code"] for r in results] == [2] * len(runs), proc.stderr
    assert not any(r["torch"] for r in results), [r["argv"][0] for r in results if r["torch"]]
    assert proc.stderr.count(expected) == len(runs), proc.stderr
    assert not fresh.exists() and not any(existing.iterdir())
