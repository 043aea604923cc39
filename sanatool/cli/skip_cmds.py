"""``plan-skips``: a timestep-aware block-skipping plan from an importance file."""

from __future__ import annotations

from pathlib import Path

import typer

from sanatool.cli._app import app, console, emit
from sanatool.cli.options import FORCE, JSON
from sanatool.inference.skipping import DEFAULT_MODE


@app.command("plan-skips")
def plan_skips(
    importance_file: Path = typer.Argument(..., help="Importance JSON from `sanatool importance`."),
    budget: float = typer.Option(
        ..., "--budget", help="Fraction of block-calls (steps × blocks) to keep, in (0, 1]."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Plan JSON to write (for `sample --skip-plan`)."),
    metric: str | None = typer.Option(
        None,
        "--metric",
        help="change (the residual's change per step), curvature (its error from a first-order forecast), "
        "cosine or ablation: the matrix to plan from (default: curvature for a forecast plan, change for a "
        "cache plan, when the file holds it; else change, else the file's own matrix).",
    ),
    mode: str = typer.Option(
        DEFAULT_MODE,
        "--skip-mode",
        help="forecast: a skipped block adds its residual extrapolated in the timestep from its last two "
        "runs (never skips step 0); cache: the residual of its last run as is; identity: it passes its "
        "input through.",
    ),
    force: bool = FORCE,
    as_json: bool = JSON,
) -> None:
    """Choose which blocks to skip at which sampler steps so a fraction of the block-calls is kept.

    The (step, block) calls of the importance file's per-timestep matrix that matter least are
    skipped; in forecast mode (the default) a skipped block adds its residual extrapolated in the
    timestep from its last two runs, in cache mode the residual of its last run as is. The plan is for that model, step count and sampler only; `sample --skip-plan` and
    `sanatool.apply_skip_plan(pipe, plan)` follow it.

    Example: sanatool plan-skips importance.json --budget 0.6 -o plan.json
    """
    from sanatool.inference.skipping import make_skip_plan, write_skip_plan
    from sanatool.io.importance_file import read_importance_file

    plan = make_skip_plan(read_importance_file(importance_file), budget, metric, mode)
    path = write_skip_plan(out, plan, force, source=str(importance_file))
    skipped = [len(blocks) for blocks in plan.skip]
    console.print(
        f"keeps {plan.kept} of {plan.total} block-calls ({plan.kept / plan.total:.1%}; {plan.mode}, "
        f"planned on {plan.metric}); "
        f"blocks skipped per step: {' '.join(map(str, skipped))}"
    )
    emit({"path": str(path), **plan.to_json()} if as_json else path, as_json=as_json)
