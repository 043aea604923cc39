"""Loading a pipeline dir for inference, and what its *world* implies.

A model's world decides its defaults: the **shapes** world (the tiny model: 8 latent
channels, 64-wide captions) samples without the complex human instruction and calibrates on
the shapes calibration set; the **general** world (real SANA checkpoints, Gemma-2-2B
captions) uses diffusers' default complex human instruction and the package's 100 general
calibration prompts. World detection reads only the transformer config, so surgery outputs
(grown, pruned, fine-tuned) keep their parent's world.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import resources
from typing import Any

from sanatool.checkpoint import ModelDir, open_model_dir
from sanatool.errors import InputError, ModelDirError
from sanatool.prompts import PromptItem

SHAPES_WORLD = "shapes"
GENERAL_WORLD = "general"
GENERAL_CALIBRATION_FILE = "general_calibration_v1.txt"


def detect_world(transformer_config: Mapping[str, Any]) -> str:
    """``"shapes"`` for a transformer with the tiny model's latent and caption widths, else ``"general"``."""
    from sanatool.tiny import LATENT_CHANNELS, TEXT_HIDDEN

    is_shapes = (
        transformer_config.get("in_channels") == LATENT_CHANNELS
        and transformer_config.get("caption_channels") == TEXT_HIDDEN
    )
    return SHAPES_WORLD if is_shapes else GENERAL_WORLD


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
    from sanatool.text import diffusers_default_instruction

    return None if model_world(source) == SHAPES_WORLD else diffusers_default_instruction()


def resolve_instruction(source: ModelDir | Any, instruction: bool | None) -> list[str] | None:
    """``None`` → the world's default; ``True`` → diffusers' instruction; ``False`` → none."""
    from sanatool.text import diffusers_default_instruction

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


def resolve_device(device: str | Any = "auto") -> Any:
    """``auto`` → CUDA when available, else CPU; under ``torchrun`` a CUDA device is ``cuda:LOCAL_RANK``."""
    import torch

    name = str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise InputError("--device cuda was asked for but no CUDA device is available; use --device cpu")
        name = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    try:
        target = torch.device(name)
    except RuntimeError as err:
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from err
    if target.type == "cuda" and (target.index or 0) >= torch.cuda.device_count():
        raise InputError(
            f"--device {device}: no such CUDA device ({torch.cuda.device_count()} available); use --device cpu"
        )
    return target


def resolve_dtype(dtype: str | Any, device: Any) -> Any:
    """``auto`` → bf16 on CUDA, fp32 elsewhere; otherwise ``fp32``/``bf16``/``fp16`` (or a torch dtype)."""
    import torch

    from sanatool.initialize import torch_dtype

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return torch_dtype(dtype)


def dtype_name(dtype: Any) -> str:
    """``torch.bfloat16`` → ``bf16`` (the CLI's names, as manifests record them)."""
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(
        str(dtype).removeprefix("torch."), str(dtype)
    )


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
) -> Any:
    """Load a pipeline dir's transformer, VAE, text encoder, tokenizer and scheduler as a ``SanaPipeline``.

    Refuses a bare transformer dir (``command`` names who needs the pipeline, for the message).
    The pipeline is in eval mode on ``device`` (``auto`` allowed) with weights in ``dtype``,
    its own progress bar off.
    """
    from diffusers import SanaPipeline

    model = model_dir if isinstance(model_dir, ModelDir) else open_model_dir(model_dir)
    model.require_pipeline(command)
    target = resolve_device(device)
    weights_dtype = resolve_dtype(dtype, target)
    try:
        with _quiet_loading():
            pipe = SanaPipeline.from_pretrained(
                str(model.path), local_files_only=True, **{_dtype_keyword(): weights_dtype}
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
        vae_file = source.path / "vae" / "config.json"
        try:
            vae_config = json.loads(vae_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ModelDirError(
                f"cannot read the VAE config {vae_file}: {err}; the pipeline dir is incomplete"
            ) from err
        # diffusers' SanaPipeline: 2 ** (number of encoder stages - 1)
        factor = 2 ** (len(vae_config.get("encoder_block_out_channels", [0] * 6)) - 1)
    else:
        config, factor = source.transformer.config, int(source.vae_scale_factor)
    return int(config.get("sample_size") or 32) * factor, factor * int(config.get("patch_size") or 1)
