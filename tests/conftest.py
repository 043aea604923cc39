"""Shared fixtures: an in-process CLI runner (no interpreter start-up per call)."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

import pytest


@dataclass
class CliResult:
    """What one CLI invocation produced."""

    code: int
    stdout: str
    stderr: str


@pytest.fixture(autouse=True)
def _private_user_cache(tmp_path_factory, monkeypatch):
    """Point the user cache dir (fine-tuning's latent cache) at a temporary dir: tests never write to ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))


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
        finally:
            # The CLI routes the sanatool logger to its own stderr handler; undo that so later
            # tests' caplog sees library warnings again.
            logger = logging.getLogger("sanatool")
            logger.handlers.clear()
            logger.propagate = True
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """A random-init tiny SanaPipeline dir (``init --preset tiny``), shared read-only by all tests."""
    from sanatool.surgery.initialize import init_model

    out = tmp_path_factory.mktemp("models") / "tiny-pipeline"
    return init_model("tiny", out, seed=0)


@pytest.fixture(scope="module")
def reference(tiny_pipeline):
    """diffusers' own SanaPipeline on the same dir: the reference the sampler must match."""
    from diffusers import SanaPipeline

    ref = SanaPipeline.from_pretrained(tiny_pipeline)
    ref.set_progress_bar_config(disable=True)
    return ref


@pytest.fixture(scope="session")
def tiny_transformer(tmp_path_factory):
    """A random-init bare transformer dir of the tiny preset, shared read-only by all tests."""
    from sanatool.arch import preset_config
    from sanatool.io.modeldir import write_transformer_dir
    from sanatool.surgery.initialize import random_init_entries

    out = tmp_path_factory.mktemp("models") / "tiny-transformer"
    config = preset_config("tiny")
    write_transformer_dir(out, config, random_init_entries(config, "fp32", 0), 10**9)
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models' matrices gain nothing from threads, and lose a lot (up to 5×) when the cores are shared.

    Modules of tiny forward and training passes take it with ``pytestmark``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
