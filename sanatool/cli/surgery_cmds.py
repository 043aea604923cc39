"""``grow`` and ``prune``: block surgery that streams tensor bytes and never loads the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from sanatool.cli._app import app, console, emit, progress_bar
from sanatool.cli.options import (
    DRY_RUN,
    FORCE,
    MAX_SHARD_SIZE,
    MODEL_DIR_HELP,
    OUT_MODEL_DIR,
    VARIANT,
    seed_option,
)
from sanatool.cli.original import accepts_original_checkpoint

_PLAN_JSON = typer.Option(False, "--json", help="Print JSON instead of the path (or plan).")
_DROP_CONTROLNET = typer.Option(
    False,
    "--drop-controlnet",
    help="ControlNet pipeline: leave the ControlNet out and write a plain SanaPipeline "
    "(needed when the surgery moves blocks the ControlNet feeds).",
)


def _finish(plan: Any, dry_run: bool, force: bool, max_shard_size: str, as_json: bool) -> None:
    """Print the plan (dry run) or run it, then print the result."""
    from sanatool.formatting import human_bytes
    from sanatool.surgery.plan import run_plan, shard_size

    shard_bytes = shard_size(max_shard_size)
    if dry_run:
        if as_json:
            emit({"dry_run": True, **plan.to_json(shard_bytes)}, as_json=True)
        else:
            emit("\n".join(plan.describe()))
        return
    with progress_bar() as progress:
        path = run_plan(plan, force, max_shard_size, progress)
    console.print(
        f"{plan.summary}: {plan.config['num_layers']} blocks, {human_bytes(plan.bytes_total)} written to {path}"
    )
    if as_json:
        emit(
            {
                "path": str(path),
                "summary": plan.summary,
                "depth": plan.config["num_layers"],
                "qk_norm": plan.config.get("qk_norm"),
                "fingerprint": plan.fingerprint(),
                "bytes_copied": plan.bytes_copied,
                "bytes_generated": plan.bytes_generated,
            },
            as_json=True,
        )
    else:
        emit(path)


@app.command()
@accepts_original_checkpoint
def grow(
    model: str = typer.Argument(..., help=MODEL_DIR_HELP),
    to: int = typer.Option(..., "--to", help="Depth of the grown model, in blocks (more than now)."),
    out: Path = OUT_MODEL_DIR,
    strategy: str = typer.Option(
        "partial",
        "--strategy",
        help="partial: keep K blocks, append identity blocks; cyclic: block i copies i mod K; "
        "block: each block repeated M/K times.",
    ),
    source_layers: int | None = typer.Option(
        None,
        "--source-layers",
        help="K: leading source blocks to build on (default all; SANA 1.5 keeps 18 of 20).",
    ),
    qk_norm: bool = typer.Option(
        True, "--qk-norm/--no-qk-norm", help="Add QK-norm to a model without it (changes its function)."
    ),
    zero_init_copies: bool = typer.Option(
        False,
        "--zero-init-copies",
        help="cyclic/block: zero the repeated copies' output projections and gates.",
    ),
    seed: int = seed_option("Seed of the new blocks' random weights (same seed, same bytes)."),
    variant: str | None = VARIANT,
    drop_controlnet: bool = _DROP_CONTROLNET,
    max_shard_size: str = MAX_SHARD_SIZE,
    dry_run: bool = DRY_RUN,
    force: bool = FORCE,
    as_json: bool = _PLAN_JSON,
) -> None:
    """Grow a model deeper: N → M blocks, copying kept blocks byte for byte.

    With the default [bold]partial[/] strategy the new blocks are exact identities at init, so the
    grown model computes what the base model computes until it is fine-tuned. Never loads the
    model: kept tensors are copied file to file, new ones generated one at a time.

    Example: sanatool grow sana16 --to 24 -o sana16-24
    """
    from sanatool.surgery.grow import plan_grow

    plan = plan_grow(
        model,
        out,
        to,
        strategy,
        source_layers,
        qk_norm,
        zero_init_copies,
        seed,
        force,
        variant,
        drop_controlnet,
    )
    _finish(plan, dry_run, force, max_shard_size, as_json)


@app.command()
@accepts_original_checkpoint
def prune(
    model: str = typer.Argument(..., help=MODEL_DIR_HELP),
    out: Path = OUT_MODEL_DIR,
    keep: int | None = typer.Option(
        None, "--keep", help="Keep K blocks, chosen by --importance or --strategy."
    ),
    importance: Path | None = typer.Option(
        None, "--importance", help="Importance file (from `sanatool importance`): keep the K best blocks."
    ),
    strategy: str | None = typer.Option(
        None, "--strategy", help="Naive choice for --keep: tail (first K) or uniform (evenly spaced)."
    ),
    keep_blocks: str | None = typer.Option(None, "--keep-blocks", help="Blocks to keep, e.g. 0,1,5-9."),
    drop_blocks: str | None = typer.Option(None, "--drop-blocks", help="Blocks to drop, e.g. 3,4."),
    variant: str | None = VARIANT,
    drop_controlnet: bool = _DROP_CONTROLNET,
    max_shard_size: str = MAX_SHARD_SIZE,
    dry_run: bool = DRY_RUN,
    force: bool = FORCE,
    as_json: bool = _PLAN_JSON,
) -> None:
    """Prune a model to K blocks, renumbered 0..K-1, copying kept blocks byte for byte.

    The output equals the original with the other blocks removed. Never loads the model: kept
    tensors are copied file to file, so memory stays small whatever the model size.

    Example: sanatool prune sana16 --keep 16 --importance importance.json -o sana16-16
    """
    from sanatool.surgery.prune import plan_prune

    plan = plan_prune(
        model, out, keep, importance, strategy, keep_blocks, drop_blocks, force, variant, drop_controlnet
    )
    _finish(plan, dry_run, force, max_shard_size, as_json)
