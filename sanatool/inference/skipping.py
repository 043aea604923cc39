"""Timestep-aware block skipping: a plan of which blocks to skip at which sampler step, and its hook.

``importance`` measures every block at every sampler step (the per-timestep matrix). A block
that shapes the layout at the first steps may be nearly an identity at the last ones, so instead
of pruning a block at every step, :func:`make_skip_plan` skips the least important
``(step, block)`` calls of the whole matrix until only a fraction ``budget`` of the block-calls is
left. What a skipped call does is the plan's ``mode`` (default ``forecast``):

- ``cache`` (as Learning-to-Cache, Δ-DiT, FORA and TeaCache do): the block adds the residual
  (output − input) it computed at the last step it ran, so only the change of its contribution
  since then is lost. Nothing is cached before the first step, so a cache plan never skips step 0.
- ``forecast`` (as TaylorSeer's first-order feature forecasting): the block adds its residual
  extrapolated linearly in the sampler's timestep from its last two runs,
  ``r₁ + (r₁ − r₀)·(t − t₁)/(t₁ − t₀)``, so only the curvature of its contribution is lost (its
  last residual as is while it has run once). Like a cache plan it never skips step 0.
- ``identity``: the block passes its input hidden states straight through (the residual stream).

The calls are ranked on one of the importance file's per-timestep matrices (``metric``):

- ``change`` (for cache plans): how much the block's residual changes from one step to the next,
  relative to its output (``residual_change``). Skipping a run of consecutive steps costs the sum
  of their changes since the block last ran, so calls are skipped greedily by that running cost.
- ``curvature`` (for forecast plans): how far the block's residual lands from its first-order
  forecast from the two steps before (``residual_curvature``), planned greedily as ``change`` is.
- ``cosine``: the matrix as written (``1 − cos`` at that step).
- ``ablation``: the divergence so far of the trajectory with the block removed at every step; a
  call is ranked on that divergence's growth over its step (the first row as is).

The plan file, format ``sanatool-skip-plan/1``::

    {
      "format": "sanatool-skip-plan/1",
      "fingerprint": "3f2a…",     # the model the importance file scored
      "depth": 20, "steps": 20, "sampler": "flow-dpm", "guidance": 4.5,
      "mode": "forecast", "metric": "curvature", "budget": 0.6, "kept": 240, "total": 400,
      "skip": [[], [3, 17], …]     # one list per step: the blocks skipped at that step
    }

A plan without ``mode`` (written before modes existed) is an ``identity`` plan. A forecast plan
made from an importance file without ``residual_curvature`` (written before it existed) is planned
on ``change``.

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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sanatool import __version__
from sanatool.errors import InputError
from sanatool.io.importance_file import METRICS
from sanatool.io.jsonl import read_json_object
from sanatool.io.outputs import atomic_output_file

FORMAT = "sanatool-skip-plan/1"
MODES = ("cache", "forecast", "identity")
DEFAULT_MODE = "forecast"
#: What each mode plans from by default: the matrix that predicts its error.
DEFAULT_METRIC = {"cache": "change", "forecast": "curvature", "identity": "cosine"}
#: The residual matrices (planned greedily on their accumulated error) and the file key of each.
RESIDUAL_MATRICES = {"change": "residual_change", "curvature": "residual_curvature"}
PLAN_METRICS = (*RESIDUAL_MATRICES, *METRICS)
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
    mode: str = "identity"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
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
        if self.mode != "identity" and self.skip and self.skip[0]:
            raise InputError(
                f"a {self.mode} plan cannot skip at step 0: no residual is cached before the first step"
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
        what: list[Any] = [self.fingerprint, self.steps, self.sampler, [sorted(b) for b in self.skip]]
        if self.mode != "identity":  # identity plans keep the ids they had before modes existed
            what.append(self.mode)
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
            "mode": self.mode,
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
            mode=data.get("mode", "identity"),
        )


def _check_matrix(rows: Any, steps: int, depth: int, what: str) -> list[list[float]]:
    if not isinstance(rows, list | tuple) or len(rows) != steps:
        raise InputError(f"the importance file's {what} must hold one row per step ({steps})")
    out = []
    for row in rows:
        if not isinstance(row, list | tuple) or len(row) != depth:
            raise InputError(f"the importance file's {what} must hold one value per block ({depth}) per step")
        if any(isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) for v in row):
            raise InputError(f"the importance file's {what} must hold finite numbers")
        out.append([float(v) for v in row])
    return out


def _call_scores(importance: Any, metric: str) -> list[list[float]]:
    """The per-step matrix a plan ranks calls on: see the module docstring."""
    if metric in RESIDUAL_MATRICES:
        name = RESIDUAL_MATRICES[metric]
        if name not in importance.extra:
            raise InputError(
                f"the importance file has no {name} matrix (it predates it); rescore it with "
                "`sanatool importance MODEL -o importance.json`, or pass --metric "
                f"{importance.metric}"
            )
        return _check_matrix(importance.extra[name], importance.calibration.steps, importance.depth, name)
    rows = [list(row) for row in importance.per_timestep]
    if metric != "ablation":
        return rows
    return [rows[0]] + [
        [now - before for now, before in zip(row, prev, strict=True)]
        for prev, row in zip(rows, rows[1:], strict=False)
    ]


def _static_plan(scores: list[list[float]], drop: int, first: int, budget: float) -> list[set[int]]:
    """Skip the ``drop`` lowest-scoring calls from step ``first`` on (ties: later step, higher block)."""
    steps, depth = len(scores), len(scores[0])
    calls = sorted((scores[s][b], -s, -b) for s in range(first, steps) for b in range(depth))[:drop]
    skip: list[set[int]] = [set() for _ in range(steps)]
    for _, step, block in calls:
        skip[-step].add(-block)
    full = [step for step, blocks in enumerate(skip) if len(blocks) == depth]
    if full:
        raise InputError(
            f"--budget {budget} would skip every block at step {full[0]}, where the transformer would then do "
            "nothing; raise --budget"
        )
    return skip


def greedy_cache_skips(
    change: Sequence[Sequence[float]], saving: float, weight: Sequence[float] | None = None
) -> tuple[list[set[int]], float]:
    """Greedily skip the calls whose reuse adds the least accumulated residual change.

    ``change[step][lane]``: how much a lane's residual (a block's, or one part of a block's) changes
    at each step. Reusing lane ``b``'s residual from step ``c`` (its last run) at step ``s`` errs by
    about the sum of its changes over steps ``c+1 … s``; skipping ``s`` also lengthens the reuse of
    every skipped step right after it, so its marginal cost is that sum times (1 + those steps),
    divided by the compute it saves (``weight[lane]``, 1 for every lane when not given). Calls are
    skipped until the saved compute reaches ``saving``. Step 0 is never skipped and no step loses
    every lane. Returns the lanes skipped per step and the compute saved, which falls short of
    ``saving`` only when nothing more can be skipped.
    """
    steps, lanes = len(change), len(change[0])
    weight = [1.0] * lanes if weight is None else weight
    skip: list[set[int]] = [set() for _ in range(steps)]
    saved = 0.0
    while saved < saving - 1e-9:
        best: tuple[float, int, int] | None = None
        for lane in range(lanes):
            since = 0.0  # accumulated change since the lane last ran
            for step in range(1, steps):
                since += change[step][lane]
                if lane in skip[step]:
                    continue
                following = 0
                while step + 1 + following < steps and lane in skip[step + 1 + following]:
                    following += 1
                if len(skip[step]) < lanes - 1:
                    candidate = (since * (1 + following) / weight[lane], -step, -lane)
                    if best is None or candidate < best:
                        best = candidate
                since = 0.0
        if best is None:
            break
        skip[-best[1]].add(-best[2])
        saved += weight[-best[2]]
    return skip, saved


def _cache_plan(change: list[list[float]], drop: int) -> list[set[int]]:
    """Skip ``drop`` block-calls by :func:`greedy_cache_skips` (every block costs the same)."""
    skip, saved = greedy_cache_skips(change, drop)
    if saved < drop:
        raise InputError(
            "the budget is too low: every step but the first would lose every block; raise --budget"
        )
    return skip


def make_skip_plan(
    importance: Any, budget: float, metric: str | None = None, mode: str = DEFAULT_MODE
) -> SkipPlan:
    """Skip the block-calls of ``importance``'s matrix that matter least so a fraction ``budget`` is kept.

    ``importance`` is an :class:`~sanatool.io.importance_file.ImportanceResult`; ``mode`` is
    ``cache``, ``forecast`` or ``identity`` (what a skipped call does, see the module docstring).
    ``metric`` (``change``/``curvature``/``cosine``/``ablation``) picks the matrix; ``None``:
    ``curvature`` for a forecast plan and ``change`` for a cache plan when the file holds it (a
    forecast plan falls back to ``change``), else the file's own matrix. Exactly
    ``round(budget × steps × depth)`` calls are kept; cache and forecast plans keep all of step 0. Raises :class:`InputError` for a budget
    outside (0, 1], a matrix the file lacks, or a plan that would skip every block at a step.
    """
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not math.isfinite(budget):
        raise InputError(f"--budget must be a number in (0, 1], got {budget!r}")
    if not 0 < budget <= 1:
        raise InputError(f"--budget is the fraction of block-calls kept: it must be in (0, 1], got {budget}")
    if mode not in MODES:
        raise InputError(f"unknown --skip-mode {mode!r}; choose one of: {', '.join(MODES)}")
    if metric is not None and metric not in PLAN_METRICS:
        raise InputError(f"unknown --metric {metric!r}; choose one of: {', '.join(PLAN_METRICS)}")
    if metric is None:
        # the matrix that predicts the mode's error, else the next best the file holds
        wanted = [DEFAULT_METRIC[mode], "change"] if mode != "identity" else []
        held = [m for m in wanted if RESIDUAL_MATRICES[m] in importance.extra]
        metric = held[0] if held else importance.metric
    if metric not in RESIDUAL_MATRICES and metric != importance.metric:
        raise InputError(
            f"the importance file holds the {importance.metric} matrix, not {metric}; make one with "
            f"`sanatool importance MODEL --metric {metric} -o importance-{metric}.json`"
        )
    sampler = importance.extra.get("sampler")
    if not isinstance(sampler, str):
        raise InputError(
            "the importance file does not record its sampler; rescore it with `sanatool importance`"
        )
    steps, depth = len(importance.per_timestep), importance.depth
    if steps != importance.calibration.steps:
        raise InputError(
            f"the importance file scores {steps} timesteps but records {importance.calibration.steps} steps"
        )
    scores = _call_scores(importance, metric)
    total = steps * depth
    drop = total - round(budget * total)
    residual = metric in RESIDUAL_MATRICES
    first = 1 if mode != "identity" or residual else 0
    if drop > (steps - first) * (depth - 1):
        raise InputError(
            f"--budget {budget} is too low: at most {(steps - first) * (depth - 1)} of {total} block-calls can be "
            "skipped (every step keeps a block" + (", and a cache plan all of step 0)" if first else ")")
        )
    skip = _cache_plan(scores, drop) if residual else _static_plan(scores, drop, first, budget)
    return SkipPlan(
        fingerprint=importance.fingerprint,
        depth=depth,
        steps=steps,
        sampler=sampler,
        guidance=float(importance.calibration.guidance),
        metric=metric,
        budget=float(budget),
        skip=tuple(frozenset(blocks) for blocks in skip),
        mode=mode,
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
    interrupted one). In ``cache`` mode each block the plan skips keeps the residual of its last
    run, one per batch row (so both classifier-free guidance branches keep their own); in
    ``forecast`` mode also its slope in time from the run before, the time being the transformer
    call's ``timestep`` (the step index when it has none). The cache is dropped at every step 0,
    and a skipped call with no cached residual for its batch shape (e.g. after :meth:`reset`
    mid-call with another batch size) runs the block instead.
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
        self._cache: dict[int, Any] = {}
        self._patched: list[tuple[Any, Any]] = []
        #: The sampler's timestep of the current call (forecast mode extrapolates in it).
        self.time = 0.0
        self._counter = transformer.register_forward_pre_hook(self._next_step, with_kwargs=True)
        for index, block in enumerate(blocks):
            if any(index in skipped for skipped in plan.skip):
                self._patch(index, block)

    def _next_step(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        self.step = self._calls % self.plan.steps
        self._calls += 1
        if self.step == 0:
            self._cache.clear()  # a new pipeline call: residuals of the last one are stale
        if self.plan.mode == "forecast":
            timestep = kwargs.get("timestep", args[2] if len(args) > 2 else None)
            # without a timestep the step index stands in: the extrapolation is then uniform in steps
            if timestep is None:
                self.time = float(self.step)
            else:  # a tensor (one value per batch row, all equal) or a plain number
                self.time = float(timestep.flatten()[0] if hasattr(timestep, "flatten") else timestep)

    def _patch(self, index: int, block: Any) -> None:
        # An instance ``forward`` (accelerate's offload hooks set one) is kept and put back on removal.
        own = block.__dict__.get("forward")
        original = block.forward
        skip = self.plan.skip
        mode = self.plan.mode
        cache = self._cache

        def forward(hidden_states: Any, *args: Any, **kwargs: Any) -> Any:
            skipped = index in skip[self.step]
            if mode == "identity":
                return hidden_states if skipped else original(hidden_states, *args, **kwargs)
            # (time, residual, its slope per unit of time: None in cache mode and after a single run)
            last = cache.get(index)
            if skipped and last is not None and last[1].shape == hidden_states.shape:
                time, residual, slope = last
                if slope is None:
                    return hidden_states + residual
                return (hidden_states + residual).add_(slope, alpha=self.time - time)
            output = original(hidden_states, *args, **kwargs)
            residual = (output - hidden_states).detach()
            slope = None
            if (
                mode == "forecast"
                and last is not None
                and last[1].shape == residual.shape
                and last[0] != self.time
            ):
                slope = (residual - last[1]).div_(self.time - last[0])
            cache[index] = (self.time, residual, slope)
            return output

        block.forward = forward
        self._patched.append((block, own))

    def reset(self) -> None:
        """Make the next transformer call step 0 again (and drop cached residuals)."""
        self._calls = 0
        self.step = 0
        self._cache.clear()

    def remove(self) -> None:
        """Restore the blocks' own forwards and stop counting steps (idempotent)."""
        self._counter.remove()
        for block, own in reversed(self._patched):
            if own is None:
                del block.forward
            else:
                block.forward = own
        self._patched.clear()
        self._cache.clear()

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
