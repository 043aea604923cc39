"""``grow``: make a transformer deeper (n → m blocks) without loading it.

Strategies (SANA 1.5, section on model growth):

- ``partial`` (partial-retain, the paper's default): keep the first K source blocks and append
  m − K new blocks that are exact identities at init (:mod:`sanatool.surgery.blocks`), so with K = n the
  grown model computes exactly what the base model computes.
- ``cyclic``: output block i copies source block i mod K.
- ``block``: each source block expands into m / K consecutive copies.

``zero_init_copies`` makes the repeated copies of ``cyclic``/``block`` identities too. A model
without QK-norm (SANA 1.0) gets diffusers' ``rms_norm_across_heads`` QK-norm added to every block,
which changes its function (it needs fine-tuning), and says so through the ``sanatool`` logger.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sanatool.arch import QK_NORM_KIND
from sanatool.errors import InputError
from sanatool.io.modeldir import ModelDir, as_model_dir
from sanatool.io.safetensors import DEFAULT_MAX_SHARD_SIZE
from sanatool.progress import ProgressFn, no_progress
from sanatool.surgery.blocks import (
    check_float_layout,
    check_uniform_blocks,
    copied_block_entries,
    has_qk_norm,
    new_block_entries,
    qk_norm_entries,
    qk_norm_layout,
)
from sanatool.surgery.controlnet import check_controlnet
from sanatool.surgery.plan import (
    BlockOrigin,
    SurgeryPlan,
    check_plan_output,
    non_block_entries,
    run_plan,
    shard_size,
)

logger = logging.getLogger("sanatool.surgery.grow")

STRATEGIES = ("partial", "cyclic", "block")

#: The deepest model ``open_model_dir`` accepts (its sanity bound on ``num_layers``).
MAX_DEPTH = 1024


def block_origins(strategy: str, kept: int, depth: int, zero_init_copies: bool) -> list[BlockOrigin]:
    """Where each of ``depth`` output blocks comes from, given ``kept`` source blocks."""
    repeat = "identity-copy" if zero_init_copies else "copy"
    if strategy == "partial":
        return [BlockOrigin(i, i, "copy") if i < kept else BlockOrigin(i, None, "new") for i in range(depth)]
    if strategy == "cyclic":
        return [BlockOrigin(i, i % kept, "copy" if i < kept else repeat) for i in range(depth)]
    factor = depth // kept
    return [BlockOrigin(i, i // factor, "copy" if i % factor == 0 else repeat) for i in range(depth)]


def _validate(strategy: str, to: int, depth: int, kept: int, zero_init_copies: bool) -> None:
    if strategy not in STRATEGIES:
        raise InputError(f"unknown --strategy {strategy!r}; choose one of: {', '.join(STRATEGIES)}")
    if to <= depth:
        raise InputError(
            f"--to {to} must be larger than the model's depth ({depth} blocks): grow only makes a model "
            "deeper; use `sanatool prune` to make it shallower"
        )
    if to > MAX_DEPTH:
        raise InputError(f"--to {to} is more than the {MAX_DEPTH} blocks sanatool accepts")
    if not 1 <= kept <= depth:
        raise InputError(f"--source-layers {kept} must be between 1 and the model's depth ({depth})")
    if strategy == "block" and to % kept:
        lower, upper = (to // kept) * kept, (to // kept + 1) * kept
        hint = f"{lower} or {upper}" if lower > depth else str(upper)
        raise InputError(
            f"--strategy block expands each of the {kept} source blocks into the same number of copies, "
            f"so --to must be a multiple of {kept}; got {to} (try {hint}, or --strategy cyclic)"
        )
    if zero_init_copies and strategy == "partial":
        raise InputError(
            "--zero-init-copies applies to --strategy cyclic or block; partial already adds identity blocks"
        )


def plan_grow(
    model: str | Path | ModelDir,
    out: str | Path,
    to: int,
    strategy: str = "partial",
    source_layers: int | None = None,
    qk_norm: bool = True,
    zero_init_copies: bool = False,
    seed: int = 0,
    force: bool = False,
    variant: str | None = None,
    drop_controlnet: bool = False,
) -> SurgeryPlan:
    """Plan growing ``model`` to ``to`` blocks; validates every input and the output path, writes nothing.

    ``source_layers`` (K, default all) is how many leading source blocks the strategy builds on.
    ``qk_norm=False`` refuses to add QK-norm to a model without it (keeping growth exact).
    ``variant`` chooses the weight files read (and the name of those written); a ControlNet pipeline is
    refused when a block its ControlNet feeds would move or change, unless ``drop_controlnet``.
    """
    source = as_model_dir(model, variant)
    tdir = source.transformer
    depth = tdir.num_layers
    kept = depth if source_layers is None else source_layers
    _validate(strategy, to, depth, kept, zero_init_copies)
    out_path = check_plan_output(source, Path(out), force)
    blocks = tdir.block_tensors()
    layout = check_uniform_blocks(blocks, tdir.path)

    notes = []
    add_qk_norm = False
    if has_qk_norm(layout):
        if not qk_norm:
            raise InputError(
                f"{source.path} already has QK-norm ({tdir.qk_norm}); sanatool keeps it when growing "
                "and cannot remove it (drop --no-qk-norm)"
            )
    elif qk_norm:
        add_qk_norm = True
        note = (
            f"{source.path} has no QK-norm (a SANA 1.0 checkpoint): adding RMSNorm across heads on q and k "
            "of self- and cross-attention in every block (weights one). This changes the model's function: "
            "fine-tune the grown model before using it (or pass --no-qk-norm to keep growth exact)"
        )
        notes.append(note)
    new_layout = layout + (qk_norm_layout(layout) if add_qk_norm else [])
    origins = block_origins(strategy, kept, to, zero_init_copies)
    drop = check_controlnet(source, "grow", origins, add_qk_norm, drop_controlnet)
    for note in notes:
        logger.warning(note)
    if any(o.source is None for o in origins) or add_qk_norm:
        check_float_layout(new_layout)

    entries = non_block_entries(source)
    for origin in origins:
        if origin.source is None:
            entries += new_block_entries(new_layout, origin.index, seed)
            continue
        entries += copied_block_entries(
            blocks[origin.source], origin.index, zero_outputs=origin.how == "identity-copy"
        )
        if add_qk_norm:
            entries += qk_norm_entries(layout, origin.index)

    config = dict(tdir.config)
    config["num_layers"] = to
    if add_qk_norm:
        config["qk_norm"] = QK_NORM_KIND
    details = [str(to), strategy]
    if kept != depth:
        details.append(f"first {kept}")
    if zero_init_copies:
        details.append("zero-init copies")
    if add_qk_norm:
        details.append("+qk-norm")
    args = {
        "to": to,
        "strategy": strategy,
        "source_layers": kept,
        "qk_norm_added": add_qk_norm,
        "zero_init_copies": zero_init_copies,
        "seed": seed,
    }
    summary = f"grow({', '.join(details)})"
    return SurgeryPlan("grow", source, out_path, config, origins, entries, args, summary, notes, drop)


def grow_model(
    model: str | Path | ModelDir,
    out: str | Path,
    to: int,
    strategy: str = "partial",
    source_layers: int | None = None,
    qk_norm: bool = True,
    zero_init_copies: bool = False,
    seed: int = 0,
    force: bool = False,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    progress: ProgressFn = no_progress,
    variant: str | None = None,
    drop_controlnet: bool = False,
) -> Path:
    """Grow ``model`` to ``to`` blocks into ``out`` (see :func:`plan_grow`); returns the output path.

    Kept tensors are copied byte for byte, new ones generated a few at a time; memory stays at a
    few tensors whatever the model size, and the output appears only when complete.
    """
    shard_size(max_shard_size)
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
    return run_plan(plan, force, max_shard_size, progress)
