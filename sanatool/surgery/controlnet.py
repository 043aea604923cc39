"""ControlNet pipelines under surgery: which transformer blocks a ControlNet feeds, and dropping it.

In diffusers' ``SanaTransformer2DModel.forward`` the ControlNet's residual k (of ``num_layers`` N) is
added to the hidden states right after transformer block k + 1 (``0 < index_block <=
len(controlnet_block_samples)``), so blocks 1..N (those that exist) receive residuals, each trained
for the block at that index and for the blocks before it. Surgery may keep such a pipeline only
when blocks 0..N stay where they were, with the same weights; otherwise the ControlNet is dropped
(``--drop-controlnet``) and a plain pipeline is written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sanatool.errors import InputError
from sanatool.formatting import format_block_list
from sanatool.io.modeldir import ModelDir

CONTROLNET = "controlnet"
#: The pipeline a ControlNet pipeline becomes without its ControlNet.
PLAIN_PIPELINE = {"SanaControlNetPipeline": "SanaPipeline"}


def has_controlnet(model: ModelDir) -> bool:
    """Whether ``model`` is a pipeline with a ControlNet component."""
    return CONTROLNET in model.components


def fed_blocks(model: ModelDir) -> list[int]:
    """The transformer blocks whose output receives a ControlNet residual (1..N, those that exist)."""
    if not has_controlnet(model):
        return []
    layers = model.component_config(CONTROLNET).get("num_layers")
    if not isinstance(layers, int) or isinstance(layers, bool) or layers < 0:
        raise InputError(f"{model.path}/{CONTROLNET}/config.json has no valid num_layers")
    return list(range(1, min(layers, model.transformer.num_layers - 1) + 1))


def check_controlnet(
    model: ModelDir,
    command: str,
    origins: Sequence[Any],
    changes_blocks: bool,
    drop_controlnet: bool,
) -> tuple[str, ...]:
    """Refuse surgery that moves, removes or changes a block the ControlNet feeds (unless it is dropped);
    return the components to leave out of the output (``("controlnet",)`` with ``drop_controlnet``).

    ``origins`` are the output blocks' :class:`~sanatool.surgery.plan.BlockOrigin`; ``changes_blocks``
    says that every copied block is changed too (QK-norm added).
    """
    if not has_controlnet(model):
        if drop_controlnet:
            raise InputError(f"--drop-controlnet: {model.path} has no ControlNet ({CONTROLNET}/) to drop")
        return ()
    if drop_controlnet:
        pipeline = str((model.model_index or {}).get("_class_name"))
        if pipeline not in PLAIN_PIPELINE:
            raise InputError(
                f"--drop-controlnet: sanatool does not know which pipeline a {pipeline} becomes without its ControlNet"
            )
        return (CONTROLNET,)
    fed = fed_blocks(model)
    in_place = {o.index for o in origins if o.source == o.index and o.how == "copy"}
    moved = [block for block in fed if block not in in_place]
    if moved:
        why, fix = "moves or removes", f"keep blocks 0-{fed[-1]} in place"
    elif fed and changes_blocks:
        moved, why, fix = fed, "changes (adds QK-norm to)", "pass --no-qk-norm to keep them unchanged"
    if moved:
        raise InputError(
            f"{command}: {model.path} has a ControlNet that adds residuals after transformer blocks "
            f"{format_block_list(fed)}, and this {command} {why} blocks {format_block_list(moved)}; {fix}, "
            "or pass --drop-controlnet to write a plain SanaPipeline without the ControlNet"
        )
    return ()


def write_plain_model_index(model: ModelDir, out_root: Path) -> None:
    """Write ``model_index.json`` of ``model`` without its ControlNet, as the plain pipeline's."""
    index = {k: v for k, v in (model.model_index or {}).items() if k != CONTROLNET}
    index["_class_name"] = PLAIN_PIPELINE[str(index.get("_class_name"))]
    (out_root / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
