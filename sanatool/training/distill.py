"""Distillation (``finetune --teacher MODEL_DIR``): heal a pruned or grown model from the model it came from.

The teacher, frozen, sees the same noisy latents, timesteps and caption embeddings as the student
on every micro-step; the loss becomes ``(1 − w)·flow-matching + w·‖v_student − v_teacher‖²``
(``--distill-weight w``, default 1: pure distillation, as depth-pruning work on LLMs and DiTs
recovers, e.g. Minitron, TinyFusion). The teacher's depth may differ from the student's (that is
the point); everything its output is compared through (latent channels, patch size, caption and
cross-attention widths, hidden size) must match, and so must the text encoder and VAE when the
teacher is a pipeline, since the student's cached caption embeddings are what the teacher reads.
All of that is checked from JSON and safetensors headers, before any weight is loaded.
"""

from __future__ import annotations

from typing import Any

from sanatool.arch import inner_dim
from sanatool.errors import InputError, SanatoolError
from sanatool.io.modeldir import ModelDir, open_model_dir

#: Config fields a teacher must share with the student (``num_layers`` may differ).
_WIDTH_FIELDS = ("in_channels", "out_channels", "patch_size", "caption_channels", "cross_attention_dim")


def _width(config: dict[str, Any]) -> dict[str, Any]:
    width = {name: config.get(name) for name in _WIDTH_FIELDS}
    width["out_channels"] = width["out_channels"] or config["in_channels"]
    width["cross_attention_dim"] = width["cross_attention_dim"] or inner_dim(config)
    width["patch_size"] = int(width["patch_size"] or 1)
    width["inner dim"] = inner_dim(config)
    return width


def open_teacher(spec: Any, student_config: dict[str, Any], components: ModelDir | None) -> ModelDir:
    """Open and check the teacher of a distillation run (headers only); raise :class:`InputError` if it cannot teach.

    ``components`` is the pipeline whose text encoder and VAE made the student's latent cache (``None``:
    not known, as in a dry run of a bare transformer; the encoders are then not compared).
    """
    try:
        teacher = open_model_dir(str(spec))
    except SanatoolError as err:
        raise InputError(f"--teacher {spec} is not a model dir: {err}") from err
    mine, theirs = _width(student_config), _width(teacher.transformer.config)
    differ = [f"{name} {theirs[name]} (student {mine[name]})" for name in mine if mine[name] != theirs[name]]
    if differ:
        raise InputError(
            f"the teacher {spec} has another architecture width: {', '.join(differ)}; a teacher may differ in "
            "depth only (e.g. the unpruned model this one was pruned from)"
        )
    if teacher.kind == "pipeline" and components is not None:
        from sanatool.training.cache import encoder_hash

        if encoder_hash(teacher.path) != encoder_hash(components.path):
            raise InputError(
                f"the teacher {spec} has another text encoder or VAE than {components.path}; the teacher reads the "
                "student's caption embeddings and latents, so use a teacher made with the same encoders"
            )
    return teacher


def teacher_identity(teacher: ModelDir) -> dict[str, str]:
    """What a checkpoint records of the teacher, so that ``--resume`` refuses another one."""
    from sanatool.training.cache import content_hash

    return {"fingerprint": teacher.fingerprint(), "weights": content_hash(teacher.transformer.path)}


def load_teacher(teacher: ModelDir, precision: str, device: Any) -> Any:
    """The teacher's transformer, frozen (eval mode, no gradients) on ``device``.

    ``precision``: ``fp32`` or ``bf16``, or a LoRA run's ``--base-precision`` (``int8``/``nf4``
    through bitsandbytes, CUDA only), so the teacher costs what the student's frozen base costs.
    """
    from diffusers import SanaTransformer2DModel

    from sanatool.arch import torch_dtype
    from sanatool.errors import ModelDirError
    from sanatool.inference.pipeline import load_component

    path, variant = teacher.transformer.path, teacher.component_variant("transformer")
    if precision in ("int8", "nf4"):
        from sanatool.training.lora import load_base_transformer

        model = load_base_transformer(path, variant, precision, device)
    else:
        try:
            model = load_component(SanaTransformer2DModel, path, torch_dtype(precision), variant)
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise ModelDirError(f"cannot load the teacher's transformer in {path}: {err}") from err
        model.to(device)
    model.requires_grad_(False)
    return model.eval()
