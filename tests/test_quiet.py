"""A user sees sanatool's own lines only: no import-time warnings or loading bars of other libraries."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import sanatool

CHECKOUT = str(Path(sanatool.__file__).parent.parent)


def _clean_env() -> dict[str, str]:
    """The environment of a user who set nothing (the test suite's own settings removed)."""
    quiet_vars = (
        "HF_HUB_OFFLINE",
        "HF_HUB_DISABLE_PROGRESS_BARS",
        "TRANSFORMERS_VERBOSITY",
        "DIFFUSERS_VERBOSITY",
    )
    env = {k: v for k, v in os.environ.items() if k not in quiet_vars and not k.startswith("PYTEST")}
    return {**env, "PYTHONPATH": CHECKOUT, "OMP_NUM_THREADS": "1"}


def test_a_command_prints_only_its_progress_and_result(tmp_path):
    out = tmp_path / "s"
    proc = subprocess.run(
        [sys.executable, "-m", "sanatool", "sample", "builtin:tiny-shapes", "--prompt", "a red circle",
         "-n", "1", "--steps", "1", "-o", str(out)],
        capture_output=True, text=True, env=_clean_env(), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{out}\n"
    lines = proc.stderr.splitlines()
    assert lines and all(line.startswith("sample: ") for line in lines), proc.stderr


def test_the_python_api_prints_nothing(tmp_path):
    # Loading a pipeline, and fine-tuning (which loads the text encoder and VAE with transformers
    # and diffusers directly) on a few renders.
    script = f"""
import sanatool
from sanatool.shapes.dataset import write_shapes_dataset
sanatool.load_pipeline("builtin:tiny-shapes")
data = write_shapes_dataset({str(tmp_path / "data")!r}, 4, seed=0)
sanatool.finetune("builtin:tiny-shapes", data, {str(tmp_path / "tuned")!r}, steps=1, batch_size=2,
                  device="cpu", cache_dir={str(tmp_path / "cache")!r})
"""
    # Offline, as the user was (and so that no test waits on a network): the kernels hub then
    # logs "Skipping publisher trust check … offline mode" at bitsandbytes' import.
    env = {**_clean_env(), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""
