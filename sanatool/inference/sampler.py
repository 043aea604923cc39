"""The sampler: SANA's denoising loop over the pipeline's own scheduler, batched, seed-exact.

The loop is the one in diffusers' ``SanaPipeline.__call__`` (classifier-free guidance batched
as ``[unconditional, conditional]``, fp32 latents, the transformer in its own dtype, VAE
decode, the pipeline's image post-processing) with differences that matter for best-of-N
sampling and block importance: any mix of prompts and candidates shares one batch, every
image has its own seed, each distinct prompt and the empty negative prompt are encoded once,
text padding shared by the whole batch is not attended over, and the loop reports each step
to observers (hooks).

**Seeds.** Image ``candidate`` of prompt ``prompt_index`` under base seed ``seed`` starts from
the noise ``torch.randn((1, C, H/f, W/f), generator=torch.Generator().manual_seed(s))`` with
``s = image_seed(seed, prompt_index, candidate)``: the first 8 bytes of
``sha256("sanatool/{seed}/{prompt_index}/{candidate}")`` modulo 2**53. That is exactly what
diffusers draws for ``SanaPipeline(prompt, generator=torch.Generator().manual_seed(s))``, so
the seed in a manifest regenerates its image alone in diffusers (see :func:`diffusers_kwargs`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sanatool.arch import flow_shift, train_timesteps
from sanatool.errors import InputError
from sanatool.progress import ProgressFn, no_progress

SAMPLERS = ("flow-dpm", "flow-euler")
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 4.5


def image_seed(seed: int, prompt_index: int, candidate: int) -> int:
    """The seed of one image (see the module docstring): independent of batch, rank and order."""
    digest = hashlib.sha256(f"sanatool/{seed}/{prompt_index}/{candidate}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 2**53


def euler_sigmas(steps: int) -> list[float]:
    """Flow-Euler's unshifted sigmas: ``steps`` even steps from 1 to 1/steps (then 0), as SANA's flow Euler."""
    return [1.0 - index / steps for index in range(steps)]


def check_settings(steps: int, guidance: float, sampler: str, batch_size: int, candidates: int = 1) -> None:
    """Refuse impossible sampling settings with one actionable message."""
    if steps <= 0:
        raise InputError(f"--steps must be at least 1, got {steps}")
    if candidates <= 0:
        raise InputError(f"--candidates must be at least 1, got {candidates}")
    if batch_size <= 0:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    if guidance < 0:
        raise InputError(f"--guidance must be ≥ 0 (1 or less turns guidance off), got {guidance}")
    if sampler not in SAMPLERS:
        raise InputError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")


def make_scheduler(pipe: Any, sampler: str, steps: int, device: Any = None) -> Any:
    """A fresh scheduler with its timesteps set: the pipeline's own Flow-DPM-Solver, or flow Euler.

    ``flow-euler`` is ``FlowMatchEulerDiscreteScheduler`` with the pipeline's flow shift and
    :func:`euler_sigmas`; the pipeline's scheduler object is never mutated.
    """
    from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

    config = pipe.scheduler.config
    if sampler == "flow-dpm":
        if not isinstance(pipe.scheduler, DPMSolverMultistepScheduler):
            raise InputError(
                f"this pipeline's scheduler is {type(pipe.scheduler).__name__}, not Flow-DPM-Solver "
                "(DPMSolverMultistepScheduler); use --sampler flow-euler"
            )
        scheduler = DPMSolverMultistepScheduler.from_config(config)
        scheduler.set_timesteps(steps, device=device)
        return scheduler
    if sampler == "flow-euler":
        scheduler = FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=train_timesteps(config), shift=flow_shift(config)
        )
        scheduler.set_timesteps(sigmas=euler_sigmas(steps), device=device)
        return scheduler
    raise InputError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")


def check_size(source: Any, size: Sequence[int] | None) -> tuple[int, int]:
    """Resolve ``size`` (``None`` → the model's native size) and refuse sizes the model cannot draw.

    ``source`` is a loaded ``SanaPipeline`` or a pipeline ``ModelDir``.
    """
    from sanatool.inference.pipeline import image_geometry

    native, step = image_geometry(source)
    if size is None:
        return native, native
    height, width = (int(value) for value in size)
    if height <= 0 or width <= 0 or height % step or width % step:
        raise InputError(
            f"--size {height} {width} is not drawable: height and width must be positive multiples of {step} "
            "(the VAE's downsampling × the patch size)"
        )
    return height, width


def initial_latents(pipe: Any, seeds: Sequence[int], height: int, width: int, device: Any) -> Any:
    """Starting noise, one CPU generator per image, exactly as diffusers' ``randn_tensor`` draws it."""
    import torch

    factor = int(pipe.vae_scale_factor)
    shape = (1, int(pipe.transformer.config.in_channels), height // factor, width // factor)
    noise = [
        torch.randn(shape, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float32)
        for s in seeds
    ]
    return torch.cat(noise).to(device)


def denoise(
    pipe: Any,
    latents: Any,
    embeds: Any,
    mask: Any,
    negative: tuple[Any, Any] | None,
    steps: int,
    guidance: float,
    sampler: str = "flow-dpm",
    before_step: Callable[[int], None] | None = None,
    after_step: Callable[[int, Any], None] | None = None,
) -> Any:
    """Run the denoising loop from ``latents`` (fp32); return the final latents (fp32).

    ``negative`` is the unconditional ``(embeds, mask)`` for classifier-free guidance, used when
    ``guidance > 1`` (as diffusers); the batch is ``[unconditional, conditional]``. Trailing text
    positions that are padding in every row are dropped first: exact, and the cross-attention
    then costs the longest prompt, not 300 tokens.
    ``before_step(i)`` runs before the transformer call of step ``i``, ``after_step(i, latents)``
    after the scheduler update (for observers such as importance hooks).
    """
    import torch

    transformer = pipe.transformer
    scheduler = make_scheduler(pipe, sampler, steps, latents.device)
    use_cfg = guidance > 1.0
    if use_cfg:
        if negative is None:
            raise ValueError("classifier-free guidance needs the unconditional embedding")
        embeds = torch.cat([negative[0], embeds])
        mask = torch.cat([negative[1], mask])
    # Text positions that are padding in every row get exactly zero attention weight (their bias is
    # -10000 before the softmax, and no other layer mixes text tokens), so dropping them changes
    # nothing but the cost of cross-attention over 300 mostly padded positions.
    used = int(mask.bool().any(dim=0).nonzero().max()) + 1 if bool(mask.any()) else mask.shape[1]
    embeds, mask = embeds[:, :used].to(dtype=transformer.dtype), mask[:, :used]
    latent_channels = int(transformer.config.in_channels)
    learned_sigma = int(transformer.config.out_channels or latent_channels) // 2 == latent_channels
    with torch.no_grad():
        for index, t in enumerate(scheduler.timesteps):
            if before_step is not None:
                before_step(index)
            model_input = torch.cat([latents] * 2) if use_cfg else latents
            timestep = t.expand(model_input.shape[0]) * transformer.config.timestep_scale
            prediction = transformer(
                model_input.to(dtype=transformer.dtype),
                encoder_hidden_states=embeds,
                encoder_attention_mask=mask,
                timestep=timestep,
                return_dict=False,
            )[0].float()
            if use_cfg:
                uncond, cond = prediction.chunk(2)
                prediction = uncond + guidance * (cond - uncond)
            if learned_sigma:
                prediction = prediction.chunk(2, dim=1)[0]
            latents = scheduler.step(prediction, t, latents, return_dict=False)[0]
            if after_step is not None:
                after_step(index, latents)
    return latents


def decode(pipe: Any, latents: Any, output_type: str = "pil") -> Any:
    """VAE-decode latents and post-process them as the pipeline does (``pil`` or ``np``)."""
    import torch

    with torch.no_grad():
        scaled = latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor
        images = pipe.vae.decode(scaled, return_dict=False)[0]
    return pipe.image_processor.postprocess(images, output_type=output_type)


class PromptEncoder:
    """Encodes prompts for one sampling run, caching recent prompts and the unconditional embedding."""

    def __init__(self, pipe: Any, instruction: Sequence[str] | None, device: Any) -> None:
        self.pipe = pipe
        self.instruction = list(instruction) if instruction else None
        self.device = device
        self._cache: dict[str, tuple[Any, Any]] = {}
        self._negative: tuple[Any, Any] | None = None

    def conditional(self, prompts: Sequence[str]) -> tuple[Any, Any]:
        """``(embeds, mask)`` for a batch of prompts (repeats allowed; each distinct prompt is encoded once)."""
        import torch

        from sanatool.inference.text import encode_prompts

        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            embeds, mask = encode_prompts(
                self.pipe.tokenizer,
                self.pipe.text_encoder,
                missing,
                self.device,
                complex_human_instruction=self.instruction,
            )
            # Keep only this batch's prompts: candidates of one prompt span adjacent batches at most.
            self._cache = {p: self._cache[p] for p in prompts if p in self._cache}
            self._cache.update({p: (embeds[i : i + 1], mask[i : i + 1]) for i, p in enumerate(missing)})
        embeds = torch.cat([self._cache[p][0] for p in prompts])
        return embeds, torch.cat([self._cache[p][1] for p in prompts])

    def unconditional(self, count: int) -> tuple[Any, Any]:
        """The empty-prompt embedding without instruction (diffusers' negative), ``count`` times."""
        from sanatool.inference.text import encode_prompts

        if self._negative is None:
            self._negative = encode_prompts(self.pipe.tokenizer, self.pipe.text_encoder, [""], self.device)
        embeds, mask = self._negative
        return embeds.expand(count, -1, -1), mask.expand(count, -1)


def iter_batches(
    pipe: Any,
    prompts: Sequence[str],
    seeds: Sequence[int],
    steps: int,
    guidance: float,
    height: int,
    width: int,
    sampler: str,
    instruction: Sequence[str] | None,
    batch_size: int,
    decode_images: bool = True,
) -> Iterator[tuple[int, Any, list[Any] | None]]:
    """Sample ``(prompt, seed)`` pairs batch by batch; yield ``(start index, final latents, images or None)``."""
    device = pipe.transformer.device
    encoder = PromptEncoder(pipe, instruction, device)
    for start in range(0, len(prompts), batch_size):
        batch_prompts = list(prompts[start : start + batch_size])
        embeds, mask = encoder.conditional(batch_prompts)
        negative = encoder.unconditional(len(batch_prompts)) if guidance > 1.0 else None
        latents = initial_latents(pipe, seeds[start : start + batch_size], height, width, device)
        latents = denoise(pipe, latents, embeds, mask, negative, steps, guidance, sampler)
        yield start, latents, (decode(pipe, latents) if decode_images else None)


@dataclass
class Generated:
    """What :func:`generate` returns: decoded images (``None`` when not decoded) and final fp32 latents (CPU)."""

    images: list[Any] | None
    latents: Any


def generate(
    pipe: Any,
    prompts: Sequence[str],
    seeds: Sequence[int],
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
    size: Sequence[int] | None = None,
    sampler: str = "flow-dpm",
    instruction: Sequence[str] | None | str = "auto",
    batch_size: int = 8,
    decode_images: bool = True,
    progress: ProgressFn = no_progress,
) -> Generated:
    """Sample one image per ``(prompt, seed)`` pair, ``batch_size`` images per transformer batch.

    ``instruction``: the complex human instruction (a list of lines), ``None`` for none, or
    ``"auto"`` for the model's world default (see :mod:`sanatool.inference.pipeline`). Images are PIL
    images at ``size`` (default: the model's native size). Each image depends only on its own
    prompt and seed, never on the batch it ran in (up to float rounding).
    """
    import torch

    from sanatool.inference.pipeline import default_instruction

    if len(prompts) != len(seeds):
        raise InputError(f"got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per image")
    check_settings(steps, guidance, sampler, batch_size)
    height, width = check_size(pipe, size)
    if instruction == "auto":
        instruction = default_instruction(pipe)
    images: list[Any] = []
    finals = []
    batches = iter_batches(
        pipe, prompts, seeds, steps, guidance, height, width, sampler, instruction, batch_size, decode_images
    )
    for start, latents, decoded in batches:
        finals.append(latents.float().cpu())
        images.extend(decoded or [])
        progress("sample", min(start + batch_size, len(prompts)), len(prompts))
    return Generated(images if decode_images else None, torch.cat(finals))


def diffusers_kwargs(record: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for diffusers' ``SanaPipeline.__call__`` that regenerate one manifest image alone.

    A record sampled with the complex human instruction leaves diffusers its default (the same
    instruction). For ``flow-euler`` records, also set ``pipe.scheduler`` to
    ``make_scheduler(pipe, "flow-euler", steps)`` and pass ``sigmas=euler_sigmas(steps)``.
    """
    import torch

    kwargs = {
        "prompt": record["prompt"],
        "num_inference_steps": record["steps"],
        "guidance_scale": record["guidance"],
        "height": record["height"],
        "width": record["width"],
        "generator": torch.Generator().manual_seed(int(record["seed"])),
        "use_resolution_binning": False,
    }
    if not record.get("instruction"):
        kwargs["complex_human_instruction"] = None
    return kwargs
