"""Loading a pipeline dir for inference, and what its *world* implies.

A model's world decides its defaults: the **shapes** world (the tiny model: 8 latent
channels, 64-wide captions) samples without the complex human instruction and calibrates on
the shapes calibration set; the **general** world (real SANA checkpoints, Gemma-2-2B
captions) uses diffusers' default complex human instruction and the package's 100 general
calibration prompts. World detection reads only the transformer config, so surgery outputs
(grown, pruned, fine-tuned) keep their parent's world.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import resources
from typing import Any

from sanatool.arch import SHAPES_WORLD, detect_world, resolve_precision, torch_dtype, vae_scale_factor
from sanatool.distributed import resolve_device
from sanatool.errors import ModelDirError
from sanatool.inference.components import check_components
from sanatool.io.modeldir import ModelDir, as_model_dir
from sanatool.io.prompts import PromptItem

GENERAL_CALIBRATION_FILE = "general_calibration_v1.txt"


def _transformer_config(source: ModelDir | Any) -> Mapping[str, Any]:
    if isinstance(source, ModelDir):
        return source.transformer.config
    if isinstance(source, Mapping):
        return source
    return source.transformer.config  # a SanaPipeline


def model_world(source: ModelDir | Any) -> str:
    """The world of a model dir, a loaded ``SanaPipeline``, or a transformer config dict."""
    return detect_world(_transformer_config(source))


def default_instruction(source: ModelDir | Any) -> list[str] | None:
    """The complex human instruction a model samples with by default: diffusers' own for real
    SANA checkpoints, none for the shapes world (its word-level tokenizer cannot read it)."""
    from sanatool.inference.text import diffusers_default_instruction

    return None if model_world(source) == SHAPES_WORLD else diffusers_default_instruction()


def resolve_instruction(source: ModelDir | Any, instruction: bool | None) -> list[str] | None:
    """``None`` → the world's default; ``True`` → diffusers' instruction; ``False`` → none."""
    from sanatool.inference.text import diffusers_default_instruction

    if instruction is None:
        return default_instruction(source)
    return diffusers_default_instruction() if instruction else None


def general_calibration_prompts() -> list[PromptItem]:
    """The package's 100 varied general-purpose calibration prompts (for real SANA models)."""
    text = (
        resources.files("sanatool").joinpath("data", "prompts", GENERAL_CALIBRATION_FILE).read_text("utf-8")
    )
    return [PromptItem(line.strip()) for line in text.splitlines() if line.strip()]


def default_calibration_name(source: ModelDir | Any) -> str:
    """How an importance file names the default calibration set of a model's world."""
    if model_world(source) == SHAPES_WORLD:
        from sanatool.shapes.suites import CALIBRATION_FILE

        return f"builtin:shapes/{CALIBRATION_FILE}"
    return f"builtin:prompts/{GENERAL_CALIBRATION_FILE}"


def default_calibration_prompts(source: ModelDir | Any) -> list[PromptItem]:
    """The calibration prompts of a model's world: the shapes calibration set, or the general set."""
    if model_world(source) == SHAPES_WORLD:
        from sanatool.shapes import calibration_prompts

        return list(calibration_prompts())
    return general_calibration_prompts()


def resolve_dtype(dtype: str | Any, device: Any) -> Any:
    """``auto`` → bf16 on CUDA, fp32 elsewhere; otherwise ``fp32``/``bf16``/``fp16`` (or a torch dtype)."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    return torch_dtype(resolve_precision(dtype, torch.device(device).type))


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """Silence diffusers' and transformers' loading progress bars: the library draws none of its own."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    restore = []
    for module in (diffusers_logging, transformers_logging):
        if module.is_progress_bar_enabled():
            module.disable_progress_bar()
            restore.append(module)
    try:
        yield
    finally:
        for module in restore:
            module.enable_progress_bar()


def _dtype_keyword() -> str:
    """``dtype`` where diffusers has renamed ``torch_dtype`` (it warns on the old name), else ``torch_dtype``."""
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"


def load_pipeline(
    model_dir: ModelDir | str | os.PathLike,
    device: str | Any = "cpu",
    dtype: str | Any = "fp32",
    command: str = "sample",
    allow_pickle: bool = False,
) -> Any:
    """Load a pipeline dir's transformer, VAE, text encoder, tokenizer and scheduler as a ``SanaPipeline``.

    Refuses a bare transformer dir (``command`` names who needs the pipeline, for the message),
    and components that fail :func:`~sanatool.inference.components.check_components` (pickle
    weights unless ``allow_pickle``).
    The pipeline is in eval mode on ``device`` (``auto`` allowed) with weights in ``dtype``,
    its own progress bar off.
    """
    from diffusers import SanaPipeline

    model = as_model_dir(model_dir)
    model.require_pipeline(command)
    check_components(model, allow_pickle)
    target = resolve_device(device)
    weights_dtype = resolve_dtype(dtype, target)
    try:
        with _quiet_loading():
            pipe = SanaPipeline.from_pretrained(
                str(model.path),
                local_files_only=True,
                use_safetensors=None if allow_pickle else True,
                **{_dtype_keyword(): weights_dtype},
            )
    except (OSError, ValueError, KeyError) as err:
        raise ModelDirError(
            f"cannot load the pipeline in {model.path}: {err}; check it loads with SanaPipeline.from_pretrained"
        ) from err
    pipe.to(target)
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.transformer, pipe.text_encoder, pipe.vae):
        module.eval()
    return pipe


def image_geometry(source: ModelDir | Any) -> tuple[int, int]:
    """``(native side, size step)`` in pixels of a pipeline dir or loaded ``SanaPipeline``.

    The native side is the transformer's ``sample_size`` × the VAE's downsampling factor; image
    sides must be multiples of the step (that factor × the patch size). A model dir is read
    from its JSON configs only, so bad sizes are refused before anything is loaded.
    """
    if isinstance(source, ModelDir):
        config = source.transformer.config
        factor = vae_scale_factor(source.component_config("vae"))
    else:
        config, factor = source.transformer.config, int(source.vae_scale_factor)
    return int(config.get("sample_size") or 32) * factor, factor * int(config.get("patch_size") or 1)
