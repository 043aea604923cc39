"""Timestep-aware block skipping: a plan of which blocks to skip at which sampler step, and its hook.

``importance`` measures every block at every sampler step (the per-timestep matrix). A block
that shapes the layout at the first steps may be nearly an identity at the last ones, so instead
of pruning a block at every step, :func:`make_skip_plan` skips the least important
``(step, block)`` calls of the whole matrix until only a fraction ``budget`` of the block-calls is
left. A skipped block passes its input hidden states straight through (the residual stream).

``cosine`` files are ranked on their matrix as written (``1 − cos`` at that step). ``ablation``
files hold, per step, the divergence so far of the trajectory with the block removed at every
step; a call is ranked on that divergence's growth over its step (the first row as is).

The plan file, format ``sanatool-skip-plan/1``::

    {
      "format": "sanatool-skip-plan/1",
      "fingerprint": "3f2a…",     # the model the importance file scored
      "depth": 20, "steps": 20, "sampler": "flow-dpm", "guidance": 4.5,
      "metric": "cosine", "budget": 0.6, "kept": 240, "total": 400,
      "skip": [[3, 17], [], …]     # one list per step: the blocks skipped at that step
    }

:func:`apply_skip_plan` makes a loaded pipeline (sanatool's sampler or a plain diffusers
``SanaPipeline``) follow a plan: each transformer call is one sampler step (classifier-free
guidance runs both branches in one call), so a counter on the transformer's forward knows the step.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sanatool import __version__
from sanatool.errors import InputError
from sanatool.inference.importance import METRICS
from sanatool.io.jsonl import read_json_object
from sanatool.io.outputs import atomic_output_file

FORMAT = "sanatool-skip-plan/1"
_HOW_TO_MAKE = "make one with `sanatool plan-skips IMPORTANCE.json --budget F -o plan.json`"


@dataclass(frozen=True)
class SkipPlan:
    """Which blocks a model skips at each sampler step (validated on construction)."""

    fingerprint: str
    depth: int
    steps: int
    sampler: str
    guidance: float
    metric: str
    budget: float
    skip: tuple[frozenset[int], ...]

    def __post_init__(self) -> None:
        if not isinstance(self.depth, int) or isinstance(self.depth, bool) or self.depth < 1:
            raise InputError(f"depth must be a positive integer, got {self.depth!r}")
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise InputError(f"steps must be a positive integer, got {self.steps!r}")
        if len(self.skip) != self.steps:
            raise InputError(f"skip has {len(self.skip)} rows, expected one per step ({self.steps})")
        for step, blocks in enumerate(self.skip):
            if any(isinstance(b, bool) or not isinstance(b, int) or not 0 <= b < self.depth for b in blocks):
                raise InputError(f"skip[{step}] must list block indices 0-{self.depth - 1}")
            if len(blocks) == self.depth:
                raise InputError(
                    f"the plan skips every block at step {step}: the transformer would do nothing there"
                )

    @property
    def total(self) -> int:
        """Block-calls of one image without skipping (``steps × depth``)."""
        return self.steps * self.depth

    @property
    def kept(self) -> int:
        """Block-calls the plan runs."""
        return self.total - sum(len(blocks) for blocks in self.skip)

    def plan_id(self) -> str:
        """A short fingerprint of what the plan does (model, steps, sampler, skipped calls): the manifest's ``skip_plan``."""
        what = [self.fingerprint, self.steps, self.sampler, [sorted(blocks) for blocks in self.skip]]
        return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]

    def check(self, fingerprint: str, steps: int, sampler: str) -> None:
        """Refuse running the plan on another model, step count or sampler (:class:`InputError`)."""
        if fingerprint != self.fingerprint:
            raise InputError(
                f"the skip plan was made for model {self.fingerprint[:12]}, not this one ({fingerprint[:12]}); "
                "plan from this model's importance file"
            )
        if steps != self.steps:
            raise InputError(
                f"the skip plan is for {self.steps} sampler steps, not {steps}; pass --steps {self.steps} "
                "or plan from an importance file scored at this step count"
            )
        if sampler != self.sampler:
            raise InputError(
                f"the skip plan is for the {self.sampler} sampler, not {sampler}; pass --sampler {self.sampler}"
            )

    def to_json(self) -> dict[str, Any]:
        """The plan file's JSON object (see the module docstring)."""
        return {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "depth": self.depth,
            "steps": self.steps,
            "sampler": self.sampler,
            "guidance": self.guidance,
            "metric": self.metric,
            "budget": self.budget,
            "kept": self.kept,
            "total": self.total,
            "skip": [sorted(blocks) for blocks in self.skip],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SkipPlan:
        """Validate a parsed plan file; raises :class:`InputError` naming the first problem."""
        if data.get("format") != FORMAT:
            raise InputError(f"format is {data.get('format')!r}, expected {FORMAT!r}")
        missing = [k for k in ("fingerprint", "depth", "steps", "sampler", "skip") if k not in data]
        if missing:
            raise InputError(f"it lacks {', '.join(missing)}")
        skip = data["skip"]
        if not isinstance(skip, list) or not all(isinstance(row, list) for row in skip):
            raise InputError("skip must be a list of lists of block indices")
        if any(len(set(row)) != len(row) for row in skip):
            raise InputError("skip lists a block twice at one step")
        for key in ("fingerprint", "sampler"):
            if not isinstance(data[key], str) or not data[key]:
                raise InputError(f"{key} must be a non-empty string")
        return cls(
            fingerprint=data["fingerprint"],
            depth=data["depth"],
            steps=data["steps"],
            sampler=data["sampler"],
            guidance=float(data.get("guidance", 0.0)),
            metric=str(data.get("metric", "")),
            budget=float(data.get("budget", 0.0)),
            skip=tuple(frozenset(row) for row in skip),
        )


def _call_scores(importance: Any) -> list[list[float]]:
    """The importance of each (step, block) call: see the module docstring."""
    rows = [list(row) for row in importance.per_timestep]
    if importance.metric != "ablation":
        return rows
    return [rows[0]] + [
        [now - before for now, before in zip(row, prev, strict=True)]
        for prev, row in zip(rows, rows[1:], strict=False)
    ]


def make_skip_plan(importance: Any, budget: float, metric: str | None = None) -> SkipPlan:
    """Skip the least important block-calls of ``importance``'s matrix so a fraction ``budget`` is kept.

    ``importance`` is an :class:`~sanatool.io.importance_file.ImportanceResult`. Exactly
    ``round(budget × steps × depth)`` calls are kept; ties go to the later step and higher block.
    ``metric`` (``cosine``/``ablation``), when given, must be the file's. Raises
    :class:`InputError` for a budget outside (0, 1] or a plan that would skip every block at a step.
    """
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not math.isfinite(budget):
        raise InputError(f"--budget must be a number in (0, 1], got {budget!r}")
    if not 0 < budget <= 1:
        raise InputError(f"--budget is the fraction of block-calls kept: it must be in (0, 1], got {budget}")
    if metric is not None and metric not in METRICS:
        raise InputError(f"unknown --metric {metric!r}; choose one of: {', '.join(METRICS)}")
    if metric is not None and metric != importance.metric:
        raise InputError(
            f"the importance file holds the {importance.metric} matrix, not {metric}; make one with "
            f"`sanatool importance MODEL --metric {metric} -o importance-{metric}.json`"
        )
    sampler = importance.extra.get("sampler")
    if not isinstance(sampler, str):
        raise InputError(
            "the importance file does not record its sampler; rescore it with `sanatool importance`"
        )
    scores = _call_scores(importance)
    steps, depth = len(scores), importance.depth
    if steps != importance.calibration.steps:
        raise InputError(
            f"the importance file scores {steps} timesteps but records {importance.calibration.steps} steps"
        )
    total = steps * depth
    drop = total - round(budget * total)
    calls = sorted((scores[s][b], -s, -b) for s in range(steps) for b in range(depth))[:drop]
    skip: list[set[int]] = [set() for _ in range(steps)]
    for _, step, block in calls:
        skip[-step].add(-block)
    full = [step for step, blocks in enumerate(skip) if len(blocks) == depth]
    if full:
        raise InputError(
            f"--budget {budget} would skip every block at step {full[0]}, where the transformer would then do "
            "nothing; raise --budget"
        )
    return SkipPlan(
        fingerprint=importance.fingerprint,
        depth=depth,
        steps=steps,
        sampler=sampler,
        guidance=float(importance.calibration.guidance),
        metric=importance.metric,
        budget=float(budget),
        skip=tuple(frozenset(blocks) for blocks in skip),
    )


def write_skip_plan(path: str | os.PathLike, plan: SkipPlan, force: bool = False, source: str = "") -> Path:
    """Write ``plan`` as a plan file, atomically (refuses an existing file without ``force``)."""
    data = plan.to_json()
    if source:
        data["importance"] = source
    data["sanatool_version"] = __version__
    data["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    with atomic_output_file(path, force) as tmp:
        tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return Path(path)


def read_skip_plan(path: str | os.PathLike) -> SkipPlan:
    """Read and validate a plan file; a bad one raises :class:`InputError` naming the problem."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise InputError(f"skip plan {path} does not exist; {_HOW_TO_MAKE}")
    data = read_json_object(file, "skip plan", hint=_HOW_TO_MAKE)
    try:
        return SkipPlan.from_json(data)
    except InputError as err:
        raise InputError(f"skip plan {path} is not a valid {FORMAT} file: {err}") from err


class SkipHandle:
    """Blocks of a transformer following a :class:`SkipPlan`; :meth:`remove` (or ``with``) restores them.

    Each transformer call counts as the next sampler step, wrapping around after ``plan.steps``
    calls, so every pipeline call must run ``plan.steps`` steps (call :meth:`reset` after an
    interrupted one).
    """

    def __init__(self, transformer: Any, plan: SkipPlan) -> None:
        blocks = list(transformer.transformer_blocks)
        if len(blocks) != plan.depth:
            raise InputError(
                f"the skip plan is for a {plan.depth}-block transformer; this one has {len(blocks)} blocks"
            )
        self.plan = plan
        self.step = 0
        self._calls = 0
        self._patched: list[tuple[Any, Any]] = []
        self._counter = transformer.register_forward_pre_hook(self._next_step)
        for index, block in enumerate(blocks):
            if any(index in skipped for skipped in plan.skip):
                self._patch(index, block)

    def _next_step(self, module: Any, args: Any) -> None:
        self.step = self._calls % self.plan.steps
        self._calls += 1

    def _patch(self, index: int, block: Any) -> None:
        # An instance ``forward`` (accelerate's offload hooks set one) is kept and put back on removal.
        own = block.__dict__.get("forward")
        original = block.forward
        skip = self.plan.skip

        def forward(hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
            if index in skip[self.step]:
                return hidden_states
            return original(hidden_states, *args, **kwargs)

        block.forward = forward
        self._patched.append((block, own))

    def reset(self) -> None:
        """Make the next transformer call step 0 again."""
        self._calls = 0
        self.step = 0

    def remove(self) -> None:
        """Restore the blocks' own forwards and stop counting steps (idempotent)."""
        self._counter.remove()
        for block, own in reversed(self._patched):
            if own is None:
                del block.forward
            else:
                block.forward = own
        self._patched.clear()

    def __enter__(self) -> SkipHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def apply_skip_plan(pipe: Any, plan: SkipPlan | str | os.PathLike) -> SkipHandle:
    """Make ``pipe`` (a diffusers ``SanaPipeline`` or anything with ``.transformer``) follow a skip plan.

    ``plan`` is a :class:`SkipPlan` or a plan file's path. Returns a :class:`SkipHandle`: use it
    as a context manager, or call ``remove()``, to restore the pipeline exactly. Each pipeline call
    must run ``num_inference_steps=plan.steps`` with the plan's sampler (the pipeline's own
    scheduler is not checked). Example::

        with sanatool.apply_skip_plan(pipe, "plan.json"):
            image = pipe("a red circle", num_inference_steps=20).images[0]
    """
    if not isinstance(plan, SkipPlan):
        plan = read_skip_plan(plan)
    return SkipHandle(getattr(pipe, "transformer", pipe), plan)
