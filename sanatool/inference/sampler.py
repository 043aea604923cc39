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

SAMPLERS = ("flow-dpm", "flow-euler", "scm")
DEFAULT_STEPS = 20
#: SANA-Sprint's default: two SCM steps (diffusers' ``SanaSprintPipeline`` default).
SCM_DEFAULT_STEPS = 2
DEFAULT_GUIDANCE = 4.5
#: The sampler each scheduler class of a pipeline runs, when ``--sampler`` is not given.
SCHEDULER_SAMPLERS = {
    "DPMSolverMultistepScheduler": "flow-dpm",
    "FlowMatchEulerDiscreteScheduler": "flow-euler",
    "SCMScheduler": "scm",
}
#: SCMScheduler's trigflow timesteps as ``SanaSprintPipeline`` sets them (the middle one for 2 steps only).
SCM_MAX_TIMESTEP = 1.57080
SCM_INTERMEDIATE_TIMESTEP = 1.3


def image_seed(seed: int, prompt_index: int, candidate: int) -> int:
    """The seed of one image (see the module docstring): independent of batch, rank and order."""
    digest = hashlib.sha256(f"sanatool/{seed}/{prompt_index}/{candidate}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 2**53


def euler_sigmas(steps: int) -> list[float]:
    """Flow-Euler's unshifted sigmas: ``steps`` even steps from 1 to 1/steps (then 0), as SANA's flow Euler."""
    return [1.0 - index / steps for index in range(steps)]


def check_settings(
    steps: int | None, guidance: float, sampler: str | None, batch_size: int, candidates: int = 1
) -> None:
    """Refuse impossible sampling settings with one actionable message (``None``: chosen by the model)."""
    if steps is not None and steps <= 0:
        raise InputError(f"--steps must be at least 1, got {steps}")
    if candidates <= 0:
        raise InputError(f"--candidates must be at least 1, got {candidates}")
    if batch_size <= 0:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    if guidance < 0:
        raise InputError(f"--guidance must be ≥ 0 (1 or less turns guidance off), got {guidance}")
    if sampler is not None and sampler not in SAMPLERS:
        raise InputError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")


def _scheduler_and_config(source: Any) -> tuple[str, Any]:
    """The scheduler class name and the transformer config of a pipeline ``ModelDir`` or loaded pipeline."""
    from sanatool.io.modeldir import ModelDir

    if isinstance(source, ModelDir):
        return source.components.get("scheduler", ("", ""))[1], source.transformer.config
    return type(source.scheduler).__name__, source.transformer.config


def is_sprint(transformer_config: Any) -> bool:
    """Whether a transformer embeds the guidance scale (SANA-Sprint) instead of running two CFG branches."""
    return bool(transformer_config.get("guidance_embeds"))


def resolve_sampler(source: Any, sampler: str | None) -> str:
    """The sampler a pipeline runs: ``sampler``, or (``None``) the one its scheduler names.

    ``source`` is a pipeline ``ModelDir`` (read from its configs, before anything is loaded) or a
    loaded pipeline. SANA-Sprint (a guidance-embedding transformer) runs only ``scm``: it is
    distilled for SCM's trigflow steps, and flow samplers would feed it the wrong time and input.
    """
    scheduler, config = _scheduler_and_config(source)
    sprint = is_sprint(config)
    if sampler is None:
        sampler = SCHEDULER_SAMPLERS.get(scheduler)
        if sampler is None:
            raise InputError(
                f"this pipeline's scheduler is {scheduler or 'missing'}, which sanatool cannot run; "
                f"pass --sampler ({', '.join(SAMPLERS)})"
            )
    if sprint and sampler != "scm":
        raise InputError(
            f"this is a SANA-Sprint model (guidance-embedding transformer): it samples with its SCM scheduler "
            f"only, not --sampler {sampler}; leave --sampler out"
        )
    if sampler == "scm" and (not sprint or scheduler != "SCMScheduler"):
        raise InputError(
            "--sampler scm runs SANA-Sprint models (guidance_embeds transformer with an SCMScheduler); "
            "this pipeline is not one: leave --sampler out to use its own scheduler"
        )
    return sampler


def default_steps(sampler: str) -> int:
    """Steps when ``--steps`` is not given: 2 for SANA-Sprint's SCM sampler, 20 otherwise."""
    return SCM_DEFAULT_STEPS if sampler == "scm" else DEFAULT_STEPS


def scm_timestep_kwargs(steps: int) -> dict[str, Any]:
    """``SCMScheduler.set_timesteps`` keywords as ``SanaSprintPipeline`` passes them for ``steps`` steps.

    diffusers' pipeline defaults to the intermediate timestep 1.3, which SCM accepts for 2 steps
    only; other step counts take the even trigflow schedule (``intermediate_timesteps=None``).
    """
    return {
        "max_timesteps": SCM_MAX_TIMESTEP,
        "intermediate_timesteps": SCM_INTERMEDIATE_TIMESTEP if steps == 2 else None,
    }


def step_timesteps(scheduler: Any) -> Any:
    """The timesteps the transformer runs at: SCM's list ends with the target time 0, which is not a step."""
    from diffusers import SCMScheduler

    return scheduler.timesteps[:-1] if isinstance(scheduler, SCMScheduler) else scheduler.timesteps


def make_scheduler(pipe: Any, sampler: str, steps: int, device: Any = None) -> Any:
    """A fresh scheduler with its timesteps set, as diffusers' pipeline sets it; ``pipe.scheduler`` is not mutated.

    ``flow-dpm``: the pipeline's own Flow-DPM-Solver. ``flow-euler``: the pipeline's own
    ``FlowMatchEulerDiscreteScheduler`` when it has one (so the images are ``SanaPipeline``'s),
    else SANA's flow Euler (the pipeline's flow shift and :func:`euler_sigmas`). ``scm``:
    SANA-Sprint's ``SCMScheduler`` with :func:`scm_timestep_kwargs`.
    """
    from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, SCMScheduler

    config = pipe.scheduler.config
    if sampler == "flow-dpm":
        if not isinstance(pipe.scheduler, DPMSolverMultistepScheduler):
            raise InputError(
                f"this pipeline's scheduler is {type(pipe.scheduler).__name__}, not Flow-DPM-Solver "
                "(DPMSolverMultistepScheduler); leave --sampler out to use its own scheduler"
            )
        scheduler = DPMSolverMultistepScheduler.from_config(config)
        scheduler.set_timesteps(steps, device=device)
        return scheduler
    if sampler == "scm":
        if not isinstance(pipe.scheduler, SCMScheduler):
            raise InputError(
                f"--sampler scm needs an SCMScheduler pipeline (SANA-Sprint); this one has "
                f"{type(pipe.scheduler).__name__}"
            )
        scheduler = SCMScheduler.from_config(config)
        scheduler.set_timesteps(steps, device=device, **scm_timestep_kwargs(steps))
        scheduler.set_begin_index(0)
        return scheduler
    if sampler == "flow-euler":
        if isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler):
            scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
            scheduler.set_timesteps(steps, device=device)
            return scheduler
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


def initial_latents(pipe: Any, seeds: Sequence[Any], height: int, width: int, device: Any) -> Any:
    """Starting noise, one CPU generator per image, exactly as diffusers' ``randn_tensor`` draws it.

    Each of ``seeds`` is an int (a fresh generator) or a ``torch.Generator`` that goes on drawing
    (SANA-Sprint's SCM steps draw their noise from the image's own generator, as diffusers does).
    """
    import torch

    factor = int(pipe.vae_scale_factor)
    shape = (1, int(pipe.transformer.config.in_channels), height // factor, width // factor)
    generators = [
        s if isinstance(s, torch.Generator) else torch.Generator().manual_seed(int(s)) for s in seeds
    ]
    noise = [torch.randn(shape, generator=g, dtype=torch.float32) for g in generators]
    return torch.cat(noise).to(device)


def start_noise(
    pipe: Any, seeds: Sequence[int], height: int, width: int, device: Any
) -> tuple[Any, list[Any]]:
    """``(initial latents, generators)``: the generators, past the initial draw, feed SCM's step noise."""
    import torch

    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    return initial_latents(pipe, generators, height, width, device), generators


def _trim_text(embeds: Any, mask: Any) -> tuple[Any, Any]:
    """Drop the text positions that are padding in every row.

    They get exactly zero attention weight (their bias is -10000 before the softmax, and no other
    layer mixes text tokens), so dropping them changes nothing but the cost of cross-attention over
    300 mostly padded positions.
    """
    used = int(mask.bool().any(dim=0).nonzero().max()) + 1 if bool(mask.any()) else mask.shape[1]
    return embeds[:, :used], mask[:, :used]


def _denoise_scm(
    pipe: Any,
    latents: Any,
    embeds: Any,
    mask: Any,
    steps: int,
    guidance: float,
    generators: Sequence[Any],
    before_step: Callable[[int], None] | None,
    after_step: Callable[[int, Any], None] | None,
) -> Any:
    """SANA-Sprint's loop, as ``SanaSprintPipeline.__call__``: trigflow steps, the guidance scale embedded.

    No classifier-free guidance branch: the transformer takes ``guidance`` as a condition. Each
    step's fresh noise comes from each image's own generator, so every image equals diffusers'
    single-image call with that generator. Returns the final denoised latents (fp32).
    """
    import torch

    transformer = pipe.transformer
    scheduler = make_scheduler(pipe, "scm", steps, latents.device)
    sigma_data = float(scheduler.config.sigma_data)
    # diffusers casts the guidance to the prompt embeddings' dtype (the text encoder's) before scaling.
    condition = torch.full([latents.shape[0]], float(guidance), device=latents.device, dtype=torch.float32)
    condition = condition.to(embeds.dtype) * transformer.config.guidance_embeds_scale
    embeds, mask = _trim_text(embeds, mask)
    embeds = embeds.to(dtype=transformer.dtype)
    latents = latents * sigma_data
    denoised = latents
    with torch.no_grad():
        for index, t in enumerate(step_timesteps(scheduler)):
            if before_step is not None:
                before_step(index)
            timestep = t.expand(latents.shape[0])
            scm_t = torch.sin(timestep) / (torch.cos(timestep) + torch.sin(timestep))
            scm_t4 = scm_t.view(-1, 1, 1, 1)
            norm = torch.sqrt(scm_t4**2 + (1 - scm_t4) ** 2)
            model_input = latents / sigma_data * norm
            prediction = transformer(
                model_input.to(dtype=transformer.dtype),
                encoder_hidden_states=embeds,
                encoder_attention_mask=mask,
                guidance=condition,
                timestep=scm_t,
                return_dict=False,
            )[0]
            prediction = (
                (1 - 2 * scm_t4) * model_input + (1 - 2 * scm_t4 + 2 * scm_t4**2) * prediction
            ) / norm
            prediction = prediction.float() * sigma_data
            latents, denoised = scheduler.step(
                prediction, timestep, latents, generator=list(generators), return_dict=False
            )
            if after_step is not None:
                after_step(index, denoised / sigma_data)
    return denoised / sigma_data


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
    generators: Sequence[Any] | None = None,
) -> Any:
    """Run the denoising loop from ``latents`` (fp32); return the final latents (fp32).

    ``negative`` is the unconditional ``(embeds, mask)`` for classifier-free guidance, used when
    ``guidance > 1`` (as diffusers); the batch is ``[unconditional, conditional]``. Trailing text
    positions that are padding in every row are dropped first: exact, and the cross-attention
    then costs the longest prompt, not 300 tokens.
    ``before_step(i)`` runs before the transformer call of step ``i``, ``after_step(i, latents)``
    after the scheduler update (for observers such as importance hooks).
    ``scm`` (SANA-Sprint) embeds ``guidance`` instead of running an unconditional branch
    (``negative`` is ignored), needs the images' ``generators`` from :func:`start_noise`, and
    hands ``after_step`` its current estimate of the final latents.
    """
    import torch

    if sampler == "scm":
        if generators is None:
            raise ValueError("the SCM sampler draws step noise from each image's generator; pass generators")
        return _denoise_scm(pipe, latents, embeds, mask, steps, guidance, generators, before_step, after_step)
    transformer = pipe.transformer
    scheduler = make_scheduler(pipe, sampler, steps, latents.device)
    use_cfg = guidance > 1.0
    if use_cfg:
        if negative is None:
            raise ValueError("classifier-free guidance needs the unconditional embedding")
        embeds = torch.cat([negative[0], embeds])
        mask = torch.cat([negative[1], mask])
    embeds, mask = _trim_text(embeds, mask)
    embeds = embeds.to(dtype=transformer.dtype)
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


def uses_cfg(sampler: str, guidance: float) -> bool:
    """Whether sampling runs an unconditional branch: guidance above 1, except SANA-Sprint (it embeds it)."""
    return sampler != "scm" and guidance > 1.0


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
    from sanatool.inference.pipeline import execution_device

    device = execution_device(pipe)
    encoder = PromptEncoder(pipe, instruction, device)
    for start in range(0, len(prompts), batch_size):
        batch_prompts = list(prompts[start : start + batch_size])
        embeds, mask = encoder.conditional(batch_prompts)
        negative = encoder.unconditional(len(batch_prompts)) if uses_cfg(sampler, guidance) else None
        latents, generators = start_noise(pipe, seeds[start : start + batch_size], height, width, device)
        latents = denoise(
            pipe, latents, embeds, mask, negative, steps, guidance, sampler, generators=generators
        )
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
    steps: int | None = None,
    guidance: float = DEFAULT_GUIDANCE,
    size: Sequence[int] | None = None,
    sampler: str | None = None,
    instruction: Sequence[str] | None | str = "auto",
    batch_size: int = 8,
    decode_images: bool = True,
    progress: ProgressFn = no_progress,
) -> Generated:
    """Sample one image per ``(prompt, seed)`` pair, ``batch_size`` images per transformer batch.

    ``instruction``: the complex human instruction (a list of lines), ``None`` for none, or
    ``"auto"`` for the model's world default (see :mod:`sanatool.inference.pipeline`). Images are PIL
    images at ``size`` (default: the model's native size). ``sampler=None`` runs the pipeline's own
    scheduler (:func:`resolve_sampler`), ``steps=None`` its default step count (:func:`default_steps`).
    Each image depends only on its own prompt and seed, never on the batch it ran in (up to float
    rounding).
    """
    import torch

    from sanatool.inference.pipeline import configure_vae, default_instruction

    if len(prompts) != len(seeds):
        raise InputError(f"got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per image")
    check_settings(steps, guidance, sampler, batch_size)
    sampler = resolve_sampler(pipe, sampler)
    steps = default_steps(sampler) if steps is None else steps
    height, width = check_size(pipe, size)
    configure_vae(pipe, height, width)
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
    """Keyword arguments for the diffusers pipeline's ``__call__`` that regenerate one manifest image alone.

    Load the pipeline with :func:`diffusers_load_kwargs` (the record's model dtypes). A record
    sampled with the complex human instruction leaves diffusers its default (the same
    instruction). ``scm`` records (SANA-Sprint) call ``SanaSprintPipeline`` with SCM's timestep
    settings. ``flow-euler`` records of a pipeline whose own scheduler is not
    ``FlowMatchEulerDiscreteScheduler`` also need ``pipe.scheduler = make_scheduler(pipe,
    "flow-euler", steps)`` and ``sigmas=euler_sigmas(steps)``. Images above 2048 px
    (``vae_tiling`` in the record) need ``pipe.vae.enable_tiling()``.
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
    if record.get("sampler") == "scm":
        kwargs.update(scm_timestep_kwargs(int(record["steps"])))
    if not record.get("instruction"):
        kwargs["complex_human_instruction"] = None
    return kwargs


def diffusers_load_kwargs(record: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for ``DiffusionPipeline.from_pretrained`` that load the models as a manifest record ran them.

    Each model in the dtype the record lists (``dtypes``: real repos store the text encoder in
    bf16, which transformers keeps unless told otherwise, while ``sample`` loads every model in
    ``--dtype``). Records without ``dtypes`` (older manifests) give the one ``dtype`` to all.
    """
    from sanatool.arch import torch_dtype
    from sanatool.inference.pipeline import dtype_keyword

    dtypes = record.get("dtypes") or {"default": record.get("dtype", "fp32")}
    return {dtype_keyword(): {name: torch_dtype(value) for name, value in dtypes.items()}}
