"""sanatool: model surgery for SANA linear diffusion transformers.

What each command does, as a function (imported on first use, so ``import sanatool`` stays
cheap and ``sanatool info`` never imports torch)::

    import sanatool

    sanatool.init("tiny", "tiny")                                   # sanatool init --preset tiny -o tiny
    sanatool.info("tiny")                                           # sanatool info tiny --json
    sanatool.grow("tiny", "tiny-12", to=12)                         # sanatool grow tiny --to 12 -o tiny-12
    result = sanatool.importance("builtin:tiny-shapes", num_prompts=8, steps=4)
    sanatool.write_importance_file("importance.json", result)       # what `sanatool importance` writes
    sanatool.prune("builtin:tiny-shapes", "pruned", keep=4, importance="importance.json")
    sanatool.finetune("pruned", "shapes-data", "healed", steps=100)  # data from `sanatool data shapes`
    sanatool.sample("healed", ["a red circle"], "samples", candidates=4)
    sanatool.judge("samples", "picked", judge="shapes")
    sanatool.evaluate("picked").overall

``CAME`` and ``CAME8bit`` are ``torch.optim`` optimizers. Every function raises
:class:`SanatoolError` (``InputError`` for bad input) with a message a user can act on, and
reports progress through an optional ``progress`` callback; none prints. Ctrl-C or SIGTERM during
``finetune``/``train``/``sample`` raises :class:`Interrupted` (a ``BaseException``) saying what was kept.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sanatool.quiet import quiet_foreign_logs

__version__ = "0.1.0"

# sanatool's functions import diffusers, whose import-time kernel lookup warns about kernels that
# sanatool never uses (see sanatool.quiet); a user who set those loggers' levels keeps them.
quiet_foreign_logs()

# Public name → (module, attribute). Each function's docstring is its documentation.
_API = {
    "init": ("sanatool.surgery.initialize", "init_model"),
    "info": ("sanatool.surgery.info", "describe_model"),
    "grow": ("sanatool.surgery.grow", "grow_model"),
    "prune": ("sanatool.surgery.prune", "prune_model"),
    "importance": ("sanatool.inference.importance", "compute_importance"),
    "write_importance_file": ("sanatool.io.importance_file", "write_importance_file"),
    "read_importance_file": ("sanatool.io.importance_file", "read_importance_file"),
    "load_pipeline": ("sanatool.inference.pipeline", "load_pipeline"),
    "generate": ("sanatool.inference.sampler", "generate"),
    "make_skip_plan": ("sanatool.inference.skipping", "make_skip_plan"),
    "apply_skip_plan": ("sanatool.inference.skipping", "apply_skip_plan"),
    "sample": ("sanatool.samples.writer", "sample_to_dir"),
    "read_geneval_metadata": ("sanatool.samples.geneval", "read_geneval_metadata"),
    "judge": ("sanatool.judges.picking", "judge_samples_dir"),
    "evaluate": ("sanatool.samples.evaluate", "evaluate_samples_dir"),
    "finetune": ("sanatool.training.api", "finetune"),
    "train": ("sanatool.training.api", "train"),
    "CAME": ("sanatool.optim.came", "CAME"),
    "CAME8bit": ("sanatool.optim.came8bit", "CAME8bit"),
    "open_model_dir": ("sanatool.io.modeldir", "open_model_dir"),
    "SanatoolError": ("sanatool.errors", "SanatoolError"),
    "InputError": ("sanatool.errors", "InputError"),
    "RunFailure": ("sanatool.errors", "RunFailure"),
    "Interrupted": ("sanatool.errors", "Interrupted"),
}

__all__ = [
    "CAME",
    "CAME8bit",
    "InputError",
    "Interrupted",
    "RunFailure",
    "SanatoolError",
    "__version__",
    "apply_skip_plan",
    "evaluate",
    "finetune",
    "generate",
    "grow",
    "importance",
    "info",
    "init",
    "judge",
    "load_pipeline",
    "make_skip_plan",
    "open_model_dir",
    "prune",
    "read_geneval_metadata",
    "read_importance_file",
    "sample",
    "train",
    "write_importance_file",
]

if TYPE_CHECKING:
    from sanatool.errors import InputError, Interrupted, RunFailure, SanatoolError
    from sanatool.inference.importance import compute_importance as importance
    from sanatool.inference.pipeline import load_pipeline
    from sanatool.inference.sampler import generate
    from sanatool.inference.skipping import apply_skip_plan, make_skip_plan
    from sanatool.io.importance_file import read_importance_file, write_importance_file
    from sanatool.io.modeldir import open_model_dir
    from sanatool.judges.picking import judge_samples_dir as judge
    from sanatool.optim.came import CAME
    from sanatool.optim.came8bit import CAME8bit
    from sanatool.samples.evaluate import evaluate_samples_dir as evaluate
    from sanatool.samples.geneval import read_geneval_metadata
    from sanatool.samples.writer import sample_to_dir as sample
    from sanatool.surgery.grow import grow_model as grow
    from sanatool.surgery.info import describe_model as info
    from sanatool.surgery.initialize import init_model as init
    from sanatool.surgery.prune import prune_model as prune
    from sanatool.training.api import finetune, train


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'sanatool' has no attribute {name!r}")
    module, attribute = _API[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
