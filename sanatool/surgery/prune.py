"""``prune``: keep K of a transformer's blocks, renumbered 0..K−1, without loading it.

Which blocks to keep comes from exactly one of: ``keep`` with an importance file (the K
highest-scoring blocks), ``keep`` with a naive ``strategy`` (``tail`` keeps the first K,
``uniform`` K evenly spaced), an explicit ``keep_blocks`` list, or a ``drop_blocks`` list. Kept
blocks stay in their original order, so the output is the original model with the other blocks
removed from ``transformer_blocks``; their bytes are copied verbatim.
"""

from __future__ import annotations

from pathlib import Path

from sanatool.errors import InputError
from sanatool.formatting import format_block_list
from sanatool.io.modeldir import ModelDir, as_model_dir
from sanatool.io.safetensors import DEFAULT_MAX_SHARD_SIZE
from sanatool.progress import ProgressFn, no_progress
from sanatool.surgery.blocks import check_uniform_blocks, copied_block_entries, parse_block_list
from sanatool.surgery.controlnet import check_controlnet
from sanatool.surgery.plan import (
    BlockOrigin,
    SurgeryPlan,
    check_plan_output,
    non_block_entries,
    run_plan,
    shard_size,
)

NAIVE_STRATEGIES = ("tail", "uniform")


def naive_selection(strategy: str, keep: int, depth: int) -> list[int]:
    """The naive baselines: ``tail`` drops the last blocks, ``uniform`` keeps evenly spaced ones."""
    if strategy == "tail":
        return list(range(keep))
    if keep == 1:
        return [0]
    # round(i·(depth−1)/(keep−1)) with halves up, in integers; consecutive picks are ≥ 1 apart.
    return [(2 * i * (depth - 1) + keep - 1) // (2 * (keep - 1)) for i in range(keep)]


def _block_list(text: str, depth: int, option: str) -> list[int]:
    if not text.strip():
        raise InputError(f"{option} is empty; list block numbers and ranges like 0,1,5-9")
    return parse_block_list(text, depth, option)


def select_blocks(
    model: ModelDir,
    keep: int | None = None,
    importance: str | Path | None = None,
    strategy: str | None = None,
    keep_blocks: str | None = None,
    drop_blocks: str | None = None,
) -> tuple[list[int], str, dict[str, object]]:
    """Decide which blocks to keep; returns (sorted indices, summary like ``prune(keep 20 by x.json)``, args).

    Refuses conflicting or missing options, K outside 1..N, bad lists, an empty keep list, and an
    importance file computed for another model.
    """
    depth = model.transformer.num_layers
    chosen = [
        name
        for name, value in (("--keep", keep), ("--keep-blocks", keep_blocks), ("--drop-blocks", drop_blocks))
        if value is not None
    ]
    if len(chosen) != 1:
        given = f"; got {' and '.join(chosen)}" if chosen else ""
        raise InputError(
            f"say which blocks to keep with exactly one of --keep K, --keep-blocks LIST, --drop-blocks LIST{given}"
        )
    if keep is None and (importance is not None or strategy is not None):
        raise InputError("--importance and --strategy choose blocks for --keep K; pass --keep K with them")

    if keep is not None:
        if not 1 <= keep <= depth:
            raise InputError(f"--keep {keep} must be between 1 and the model's depth ({depth} blocks)")
        if importance is not None and strategy is not None:
            raise InputError("pass either --importance FILE or --strategy tail|uniform with --keep, not both")
        if importance is not None:
            from sanatool.io.importance_file import read_importance_file

            result = read_importance_file(importance)
            fingerprint = model.fingerprint()
            if result.fingerprint != fingerprint or result.depth != depth:
                raise InputError(
                    f"importance file {importance} scores a different model (fingerprint {result.fingerprint}, "
                    f"{result.depth} blocks) than {model.path} (fingerprint {fingerprint}, {depth} blocks); "
                    f"recompute it with `sanatool importance {model.argument} -o FILE`"
                )
            kept = result.top(keep)
            summary = f"prune(keep {keep} by {Path(importance).name})"
            args: dict[str, object] = {"keep": keep, "importance": str(importance), "metric": result.metric}
        elif strategy is not None:
            if strategy not in NAIVE_STRATEGIES:
                raise InputError(
                    f"unknown --strategy {strategy!r}; choose one of: {', '.join(NAIVE_STRATEGIES)}"
                )
            kept = naive_selection(strategy, keep, depth)
            summary = f"prune(keep {keep}, {strategy})"
            args = {"keep": keep, "strategy": strategy}
        else:
            raise InputError(
                f"--keep {keep} needs to know which blocks matter: pass --importance FILE (make one with "
                f"`sanatool importance {model.argument} -o importance.json`), or --strategy tail|uniform for a "
                "naive baseline, or name the blocks with --keep-blocks"
            )
    elif keep_blocks is not None:
        kept = _block_list(keep_blocks, depth, "--keep-blocks")
        summary = f"prune(keep {format_block_list(kept)})"
        args = {"keep_blocks": format_block_list(kept)}
    else:
        dropped = _block_list(drop_blocks or "", depth, "--drop-blocks")
        kept = sorted(set(range(depth)) - set(dropped))
        if not kept:
            raise InputError(f"--drop-blocks {drop_blocks} drops all {depth} blocks; keep at least one")
        summary = f"prune(drop {format_block_list(dropped)})"
        args = {"drop_blocks": format_block_list(dropped)}
    args["kept"] = kept
    return kept, summary, args


def plan_prune(
    model: str | Path | ModelDir,
    out: str | Path,
    keep: int | None = None,
    importance: str | Path | None = None,
    strategy: str | None = None,
    keep_blocks: str | None = None,
    drop_blocks: str | None = None,
    force: bool = False,
    variant: str | None = None,
    drop_controlnet: bool = False,
) -> SurgeryPlan:
    """Plan pruning ``model`` (see :func:`select_blocks`); validates inputs and the output, writes nothing.

    ``variant`` chooses the weight files read (and the name of those written); a ControlNet pipeline is
    refused when a block its ControlNet feeds would move, unless ``drop_controlnet``.
    """
    source = as_model_dir(model, variant)
    kept, summary, args = select_blocks(source, keep, importance, strategy, keep_blocks, drop_blocks)
    out_path = check_plan_output(source, Path(out), force)
    blocks = source.transformer.block_tensors()
    check_uniform_blocks(blocks, source.transformer.path)
    origins = [BlockOrigin(index, block, "copy") for index, block in enumerate(kept)]
    drop = check_controlnet(source, "prune", origins, False, drop_controlnet)
    entries = non_block_entries(source)
    for origin in origins:
        entries += copied_block_entries(blocks[origin.source], origin.index)
    config = dict(source.transformer.config)
    config["num_layers"] = len(kept)
    return SurgeryPlan("prune", source, out_path, config, origins, entries, args, summary, drop=drop)


def prune_model(
    model: str | Path | ModelDir,
    out: str | Path,
    keep: int | None = None,
    importance: str | Path | None = None,
    strategy: str | None = None,
    keep_blocks: str | None = None,
    drop_blocks: str | None = None,
    force: bool = False,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    progress: ProgressFn = no_progress,
    variant: str | None = None,
    drop_controlnet: bool = False,
) -> Path:
    """Prune ``model`` into ``out`` (see :func:`plan_prune`); returns the output path.

    Every kept tensor's bytes are copied with ``copy_file_range``; nothing is loaded.
    """
    shard_size(max_shard_size)
    plan = plan_prune(
        model, out, keep, importance, strategy, keep_blocks, drop_blocks, force, variant, drop_controlnet
    )
    return run_plan(plan, force, max_shard_size, progress)
