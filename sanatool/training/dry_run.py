"""``--dry-run``: the memory budget of the run the options describe, from headers and presets only."""

from __future__ import annotations

import os

from sanatool.io.modeldir import ModelDir, open_model_dir
from sanatool.training.budget import Budget, memory_budget
from sanatool.training.options import TrainOptions, validate_options

#: The VAE downsampling a world implies when no VAE is at hand (DC-AE f32 for SANA, f4 for tiny).
_DEFAULT_FACTOR = {"shapes": 4, "general": 32}


def _folder_bytes(model: ModelDir, component: str) -> int:
    folder = model.path / component
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0


def dry_run_budget(opts: TrainOptions) -> Budget:
    """The per-device memory budget for ``opts`` (no data, no output, nothing loaded).

    ``--precision auto`` is budgeted as bf16 (the GPU case the question is about); under
    ``--fsdp`` the model is sharded over ``WORLD_SIZE`` devices. ``--lora-rank``, ``--base-precision``
    and ``--teacher`` are budgeted too (see :mod:`~sanatool.training.budget`); nothing needs CUDA.
    """
    from sanatool.arch import detect_world, preset_config, vae_scale_factor
    from sanatool.training.run import TINY_COMPONENTS

    validate_options(opts, dry_run=True)
    components: ModelDir | None = None
    if opts.source is not None:
        from sanatool.training.run import refuse_sprint

        model = open_model_dir(opts.source, opts.variant)
        refuse_sprint(model, opts.command)
        config = model.transformer.config
        components = model if model.kind == "pipeline" else None
    else:
        assert opts.preset is not None
        config = preset_config(opts.preset)
        spec = opts.components or (TINY_COMPONENTS if opts.preset == "tiny" else None)
        if spec is not None and (opts.components is not None or _builtin_installed(spec)):
            components = open_model_dir(spec, opts.variant)
    factor = _DEFAULT_FACTOR[detect_world(config)]
    encoders_bytes = None
    if components is not None and (components.path / "vae" / "config.json").is_file():
        factor = vae_scale_factor(components.component_config("vae"))
        encoders_bytes = _folder_bytes(components, "text_encoder") + _folder_bytes(components, "vae")
    side = opts.resolution // factor if opts.resolution else int(config.get("sample_size") or 32)
    shards = int(os.environ.get("WORLD_SIZE", "1")) if opts.fsdp else 1
    teacher_config = None
    if opts.teacher is not None:
        from sanatool.training.distill import open_teacher

        teacher_config = open_teacher(opts.teacher, config, components).transformer.config
    return memory_budget(
        config,
        batch_size=opts.batch_size,
        optimizer=opts.optimizer,
        precision="fp32" if opts.precision == "fp32" else "bf16",
        grad_checkpointing=opts.grad_checkpointing,
        ema=opts.ema_decay is not None,
        latent_side=max(1, side),
        shards=max(1, shards),
        encoders_bytes=encoders_bytes,
        lora_rank=opts.lora_rank,
        lora_targets=opts.lora_targets,
        base_precision=opts.base_precision,
        teacher_config=teacher_config,
        grad_accum=opts.grad_accum,
    )


def _builtin_installed(spec: str) -> bool:
    from sanatool.errors import SanatoolError
    from sanatool.io.modeldir import resolve_model_path

    try:
        resolve_model_path(spec)
    except SanatoolError:
        return False
    return True
