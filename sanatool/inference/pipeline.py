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
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from sanatool.arch import SHAPES_WORLD, detect_world, resolve_precision, torch_dtype, vae_scale_factor
from sanatool.distributed import resolve_device
from sanatool.errors import InputError, ModelDirError
from sanatool.inference.components import check_components
from sanatool.io.modeldir import ModelDir, as_model_dir
from sanatool.io.prompts import PromptItem
from sanatool.quiet import quiet_loading

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


def dtype_keyword() -> str:
    """``dtype`` where diffusers has renamed ``torch_dtype`` (it warns on the old name), else ``torch_dtype``."""
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"


#: What :func:`pipeline_kind` calls each kind of SANA pipeline.
SPRINT_KIND = "SANA-Sprint"
CONTROLNET_KIND = "SANA ControlNet"
SANA_KIND = "SANA"
#: Images with a side above this many pixels are VAE-decoded in tiles (DC-AE at 4K needs it).
VAE_TILING_ABOVE = 2048


def load_component(
    cls: Any, folder: str | os.PathLike, dtype: Any, variant: str | None = None, **extra: Any
) -> Any:
    """``cls.from_pretrained(folder)`` by sanatool's loading rules: local files, low memory, quiet, ``dtype``.

    ``cls`` is a diffusers model or transformers class. ``variant`` (the model's, e.g. ``bf16``) is
    read where the folder holds that set of weights, else its default files, as diffusers'
    pipelines do per component (a variant snapshot often has a variant for some components only).
    ``extra``: more ``from_pretrained`` arguments (``quantization_config``, ``device_map`` …).
    """
    from sanatool.io.modelfiles import weight_sets

    kwargs: dict[str, Any] = {"local_files_only": True, "low_cpu_mem_usage": True, **extra}
    # transformers 5 names it ``dtype``; diffusers renamed it in 0.36 (see dtype_keyword).
    kwargs["dtype" if cls.__module__.startswith("transformers") else dtype_keyword()] = dtype
    if variant is not None and variant in weight_sets(Path(folder)):
        kwargs["variant"] = variant
    with quiet_loading():
        return cls.from_pretrained(str(folder), **kwargs)


def pipeline_kind(source: ModelDir | Any) -> str:
    """``"SANA-Sprint"`` (a guidance-embedding transformer, few-step SCM), ``"SANA ControlNet"`` or ``"SANA"``.

    Reads a model dir's configs only (no torch), or a loaded pipeline's class and transformer config.
    """
    if isinstance(source, ModelDir):
        class_name = (source.model_index or {}).get("_class_name", "")
    else:
        class_name = type(source).__name__
    if _transformer_config(source).get("guidance_embeds") or class_name == "SanaSprintPipeline":
        return SPRINT_KIND
    if class_name == "SanaControlNetPipeline":
        return CONTROLNET_KIND
    return SANA_KIND


def pipeline_class(source: ModelDir | Any) -> Any:
    """The diffusers pipeline class that runs a model dir: ``SanaSprintPipeline`` for Sprint, else ``SanaPipeline``."""
    from diffusers import SanaPipeline, SanaSprintPipeline

    return SanaSprintPipeline if pipeline_kind(source) == SPRINT_KIND else SanaPipeline


def loading_kwargs(model: ModelDir) -> dict[str, Any]:
    """What every sanatool ``from_pretrained`` of a model's components passes besides the dtype.

    Local files only; the model's variant (``diffusion_pytorch_model.bf16.safetensors`` …); and
    low-memory loading through accelerate: weights are read straight into empty modules, not
    written over a random initialisation (half the peak memory, most of the time).
    """
    return {"local_files_only": True, "variant": model.variant, "low_cpu_mem_usage": True}


def check_offload(offload: bool, device: Any) -> None:
    """Refuse ``--offload`` where it cannot work, before anything is loaded: it moves models to a CUDA card."""
    import torch

    if not offload:
        return
    if not torch.cuda.is_available():
        raise InputError(
            "--offload moves each model to the GPU only while it runs, so it needs CUDA; this machine has none"
        )
    if torch.device(device).type != "cuda":
        raise InputError(f"--offload runs the models on a CUDA device; --device is {device}")


def execution_device(pipe: Any) -> Any:
    """Where a pipeline computes: its device, or with model CPU offload the card its models visit."""
    return pipe._execution_device


def configure_vae(pipe: Any, height: int, width: int) -> bool:
    """Decode in tiles when an image side exceeds :data:`VAE_TILING_ABOVE` pixels; return whether it does.

    DC-AE decodes a 4096 px image in one piece only with tens of GB of activations; tiles of
    diffusers' default size blend into the same picture with a fraction of the memory.
    """
    tiled = max(height, width) > VAE_TILING_ABOVE
    if tiled:
        pipe.vae.enable_tiling()
    else:
        pipe.vae.disable_tiling()
    return tiled


def load_pipeline(
    model_dir: ModelDir | str | os.PathLike,
    device: str | Any = "cpu",
    dtype: str | Any = "fp32",
    command: str = "sample",
    offload: bool = False,
    allow_pickle: bool = False,
) -> Any:
    """Load a pipeline dir as its diffusers pipeline (``SanaPipeline``, or ``SanaSprintPipeline`` for Sprint).

    Refuses a bare transformer dir (``command`` names who needs the pipeline, for the message).
    The pipeline is in eval mode on ``device`` (``auto`` allowed) with every model's weights in
    ``dtype``, its own progress bar off. ``offload`` keeps the models on the CPU and moves each
    to the CUDA ``device`` only while it runs (diffusers' ``enable_model_cpu_offload``).
    Components that fail :func:`~sanatool.inference.components.check_components` are refused
    (pickle weights unless ``allow_pickle``).
    """
    model = as_model_dir(model_dir)
    model.require_pipeline(command)
    check_components(model, allow_pickle)
    target = resolve_device(device)
    check_offload(offload, target)
    weights_dtype = resolve_dtype(dtype, target)
    cls = pipeline_class(model)
    try:
        with quiet_loading():
            pipe = cls.from_pretrained(
                str(model.path),
                **loading_kwargs(model),
                use_safetensors=None if allow_pickle else True,
                **{dtype_keyword(): weights_dtype},
            )
    except (OSError, ValueError, KeyError) as err:
        raise ModelDirError(
            f"cannot load the pipeline in {model.path}: {err}; check it loads with {cls.__name__}.from_pretrained"
        ) from err
    if offload:
        pipe.enable_model_cpu_offload(device=target)
    else:
        pipe.to(target)
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.transformer, pipe.text_encoder, pipe.vae):
        module.eval()
    return pipe


def component_dtypes(pipe: Any) -> dict[str, str]:
    """The dtype each model of a loaded pipeline computes in (``fp32``, ``bf16`` …), by component name."""
    from sanatool.arch import dtype_name

    return {name: dtype_name(getattr(pipe, name).dtype) for name in ("transformer", "text_encoder", "vae")}


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
