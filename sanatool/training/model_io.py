"""Getting the transformer in and out of training: load or random-init it, write model dirs.

Checkpoints and the final output are full pipeline dirs: the frozen components are hard-linked
from the pipeline they came from (no bytes copied), the transformer is written from the state
dict, and ``sanatool.json`` records the step. Checkpoints keep fp32 master weights so that a
resumed run continues bit for bit; the final output is cast to the requested dtype.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sanatool.arch import DTYPES, dtype_name, model_kwargs, safetensors_dtype, torch_dtype
from sanatool.errors import ModelDirError
from sanatool.io.modeldir import ModelDir, carry_components, write_transformer_dir
from sanatool.io.provenance import write_provenance
from sanatool.io.safetensors import TensorEntry, parse_size

#: Files that training writes into a model dir; a carried copy from the parent is dropped first
#: (they are hard links to the parent's files, and the parent is never modified).
RUN_FILES = ("loss.jsonl", "loss.png", "training_state.json", "training_state.safetensors")


def load_transformer(path: Path, variant: str | None = None) -> Any:
    """A ``SanaTransformer2DModel`` from a transformer dir, in fp32 (the master weights).

    ``variant``: the model's weights variant (read where the dir has its files), low-memory loading.
    """
    import torch
    from diffusers import SanaTransformer2DModel

    from sanatool.inference.pipeline import load_component

    try:
        return load_component(SanaTransformer2DModel, path, torch.float32, variant)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ModelDirError(f"cannot load the transformer in {path}: {err}") from err


def init_transformer(config: dict[str, Any], seed: int) -> Any:
    """A random-init fp32 transformer, identical to ``sanatool init --preset … --seed SEED``."""
    import torch
    from diffusers import SanaTransformer2DModel

    from sanatool.surgery.initialize import random_init_entries

    model = SanaTransformer2DModel(**model_kwargs(config))
    state = {}
    for entry in random_init_entries(config, "fp32", seed):
        data = bytearray(entry.source())
        state[entry.name] = torch.frombuffer(data, dtype=torch.float32).reshape(entry.shape)
    model.load_state_dict(state, strict=True)
    return model


def state_entries(state: dict[str, Any], dtype: str) -> list[TensorEntry]:
    """Tensor entries that write a state dict in ``dtype`` (each tensor converted when written)."""
    import torch

    target = torch_dtype(dtype)
    st_dtype = safetensors_dtype(dtype)

    def produce(tensor: Any) -> Any:
        # Raw bytes, in the order safetensors stores them (row-major, little-endian).
        return lambda: tensor.to(target).contiguous().reshape(-1).view(torch.uint8).numpy()

    return [TensorEntry(name, st_dtype, tuple(t.shape), produce(t)) for name, t in state.items()]


def write_model_dir(
    root: Path,
    components: ModelDir,
    config: dict[str, Any],
    state: dict[str, Any],
    dtype: str,
    max_shard_size: str,
    parent: ModelDir | None,
    command: str,
    args: dict[str, Any],
    summary: str,
    origin: str | None = None,
) -> str:
    """Fill ``root`` (an empty dir) with a pipeline: carried components, the transformer, provenance.

    Returns the new transformer's fingerprint.
    """
    from sanatool.io.modeldir import open_transformer_dir

    carry_components(components, root)
    for name in RUN_FILES:
        (root / name).unlink(missing_ok=True)
    transformer_dir = root / "transformer"
    # Named as the carried components are (``*.bf16.safetensors`` …), so one ``variant=`` loads the output.
    write_transformer_dir(
        transformer_dir,
        config,
        state_entries(state, dtype),
        parse_size(max_shard_size),
        variant=components.component_variant("transformer"),
    )
    fingerprint = open_transformer_dir(
        transformer_dir, components.component_variant("transformer")
    ).fingerprint()
    write_provenance(root, parent, command, args, summary, fingerprint, origin=origin)
    return fingerprint


def stored_dtype(model: ModelDir) -> str:
    """The CLI name of the dtype most of a model's transformer weights are stored in."""
    counts = model.transformer.dtypes()
    main = max(counts, key=lambda key: counts[key])
    name = dtype_name(main)
    return name if name in DTYPES else "fp32"
