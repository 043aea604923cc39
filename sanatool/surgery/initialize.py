"""Random initialisation of a transformer, streamed block by block into safetensors.

The model is built on the meta device (no memory), then each group of modules (the
non-block layers, then one block at a time) is materialised, initialised with PyTorch's own
``reset_parameters``, serialised and released. Peak memory is one block (in fp32, and its
converted bytes) plus torch, not the model, so a 4.8B checkpoint is written on a laptop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sanatool.arch import inner_dim, model_kwargs, safetensors_dtype, torch_dtype
from sanatool.errors import InputError
from sanatool.io.outputs import atomic_output_dir
from sanatool.io.safetensors import DEFAULT_MAX_SHARD_SIZE, TensorEntry, parse_size
from sanatool.progress import ProgressFn, no_progress


def build_meta_transformer(config: dict[str, Any]) -> Any:
    """A ``SanaTransformer2DModel`` on the meta device: names and shapes, no memory."""
    import torch
    from diffusers import SanaTransformer2DModel

    with torch.device("meta"):
        return SanaTransformer2DModel(**model_kwargs(config))


def _init_group(params: list[tuple[str, Any, Any]], hidden: int) -> None:
    """Initialise materialised parameters: PyTorch's reset where a module has one, SANA's rule elsewhere."""
    import torch

    done: set[int] = set()
    for _, _, owner in params:
        if id(owner) not in done and hasattr(owner, "reset_parameters"):
            owner.reset_parameters()
            done.add(id(owner))
    with torch.no_grad():
        for name, param, owner in params:
            if id(owner) in done:
                continue
            if name.endswith("scale_shift_table"):
                param.copy_(torch.randn(param.shape) / math.sqrt(hidden))
            elif name.endswith("bias"):
                param.zero_()
            elif param.dim() == 1:
                param.fill_(1.0)  # RMSNorm scales (QK-norm, caption norm)
            else:
                param.normal_(0.0, 0.02)


def random_init_entries(config: dict[str, Any], dtype: str = "fp32", seed: int = 0) -> list[TensorEntry]:
    """Tensor entries of a randomly initialised transformer, generated lazily group by group.

    Writing the entries in order materialises one block at a time; the same config, dtype and
    seed give the same bytes.
    """
    import torch

    target = torch_dtype(dtype)
    st_dtype = safetensors_dtype(dtype)
    model = build_meta_transformer(config)
    hidden = inner_dim(config)
    owners = {}
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            owners[f"{module_name}.{param_name}" if module_name else param_name] = module
    names = list(dict(model.named_parameters()))
    groups: list[list[str]] = [[n for n in names if not n.startswith("transformer_blocks.")]]
    for index in range(len(model.transformer_blocks)):
        prefix = f"transformer_blocks.{index}."
        groups.append([n for n in names if n.startswith(prefix)])

    generator_state: dict[str, Any] = {"rng": None}
    cache: dict[str, bytes] = {}

    def materialise(group: list[str]) -> None:
        if generator_state["rng"] is None:
            torch.manual_seed(seed)
            generator_state["rng"] = True
        modules = {id(owners[n]): owners[n] for n in group}
        for module in modules.values():
            for pname, param in list(module.named_parameters(recurse=False)):
                setattr(
                    module,
                    pname,
                    torch.nn.Parameter(torch.empty(param.shape, dtype=torch.float32), requires_grad=False),
                )
        params = [(n, getattr(owners[n], n.rsplit(".", 1)[-1]), owners[n]) for n in group]
        _init_group(params, hidden)
        for name, param, _ in params:
            cache[name] = param.detach().to(target).contiguous().view(torch.uint8).numpy().tobytes()
        for module in modules.values():
            for pname, param in list(module.named_parameters(recurse=False)):
                setattr(
                    module,
                    pname,
                    torch.nn.Parameter(torch.empty(param.shape, device="meta"), requires_grad=False),
                )

    def producer(group: list[str], name: str) -> Callable[[], bytes]:
        def produce() -> bytes:
            if name not in cache:
                materialise(group)
            return cache.pop(name)

        return produce

    params = dict(model.named_parameters())
    entries = []
    for group in groups:
        for name in group:
            entries.append(TensorEntry(name, st_dtype, tuple(params[name].shape), producer(group, name)))
    return entries


def init_model(
    preset: str,
    out: Path,
    dtype: str = "fp32",
    seed: int = 0,
    force: bool = False,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    progress: ProgressFn = no_progress,
) -> Path:
    """Write a random-init model for a preset: a transformer dir, or for ``tiny`` a whole pipeline dir.

    The transformer is streamed block by block (peak memory about one block). Returns the path.
    """
    from sanatool.arch import preset_config
    from sanatool.io.modeldir import write_transformer_dir
    from sanatool.io.provenance import write_provenance

    config = preset_config(preset)
    safetensors_dtype(dtype)  # refuses an unknown dtype before anything is written
    try:
        shard_bytes = parse_size(max_shard_size)
    except ValueError as err:
        raise InputError(str(err)) from err
    with atomic_output_dir(out, force) as tmp:
        is_pipeline = preset == "tiny"
        transformer_dir = tmp / "transformer" if is_pipeline else tmp
        if is_pipeline:
            from sanatool.shapes.tiny import write_tiny_components

            write_tiny_components(tmp, seed=seed, dtype=dtype)
        entries = random_init_entries(config, dtype, seed)
        write_transformer_dir(transformer_dir, config, entries, shard_bytes, progress)
        from sanatool.io.modeldir import open_transformer_dir

        fingerprint = open_transformer_dir(transformer_dir).fingerprint()
        write_provenance(
            tmp,
            None,
            "init",
            {"preset": preset, "dtype": dtype, "seed": seed},
            f"init({preset})",
            fingerprint,
            origin=preset,
        )
    return Path(out)
