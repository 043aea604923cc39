"""What a model dir holds, from JSON and safetensors headers only (fast on any size, no torch)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sanatool.inference.pipeline import pipeline_kind
from sanatool.io.modeldir import ModelDir, open_model_dir, params_per_block
from sanatool.io.provenance import chain_summary
from sanatool.surgery.controlnet import CONTROLNET, fed_blocks, has_controlnet


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _controlnet(model: ModelDir) -> dict[str, Any] | None:
    if not has_controlnet(model):
        return None
    return {
        "class": model.components[CONTROLNET][1],
        "layers": model.component_config(CONTROLNET).get("num_layers"),
        "feeds_blocks": fed_blocks(model),
    }


def describe_model(spec: str | os.PathLike, variant: str | None = None) -> dict[str, Any]:
    """A JSON-ready description of a model dir: components, shape, params, dtype, shards, weight variants
    (each component's sets, their dtypes and bytes, the one used), the ControlNet, provenance."""
    model = open_model_dir(spec, variant)
    tdir = model.transformer
    config = tdir.config
    components = {}
    for name, (library, cls) in model.components.items():
        folder = model.path / name if model.kind == "pipeline" else model.path
        components[name] = {
            "library": library,
            "class": cls,
            "bytes": _dir_bytes(folder) if folder.is_dir() and name != "transformer" else tdir.total_bytes,
        }
    per_block = params_per_block(tdir)
    return {
        "path": str(model.path),
        "kind": model.kind,
        "family": pipeline_kind(model),
        "components": components,
        "class": config["_class_name"],
        "depth": tdir.num_layers,
        "hidden_size": tdir.hidden_size,
        "attention_heads": config["num_attention_heads"],
        "attention_head_dim": config["attention_head_dim"],
        "cross_attention_heads": config.get("num_cross_attention_heads"),
        "caption_channels": config["caption_channels"],
        "latent_channels": config["in_channels"],
        "params": tdir.num_params,
        "params_per_block": per_block,
        "params_outside_blocks": tdir.num_params - per_block * tdir.num_layers,
        "dtypes": tdir.dtypes(),
        "qk_norm": tdir.qk_norm,
        "shards": len(tdir.shard_files),
        "bytes": tdir.total_bytes,
        "fingerprint": tdir.fingerprint(),
        "variant": model.variant,
        "weights": {
            name: [
                {
                    "variant": ws.label,
                    "dtypes": ws.dtypes(),
                    "bytes": ws.nbytes,
                    "files": len(ws.files),
                    "used": ws.variant == model.component_variant(name),
                }
                for ws in sorted(sets.values(), key=lambda ws: (ws.variant is not None, ws.label))
            ]
            for name, sets in model.weight_sets.items()
            if sets
        },
        "controlnet": _controlnet(model),
        "history": chain_summary(model.provenance, fallback_origin=model.name),
        "provenance": model.provenance.get("chain", []),
    }
