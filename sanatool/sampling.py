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

**Samples dirs.** :func:`sample_to_dir` writes ``images/``, ``manifest.jsonl`` and a contact
sheet ``grid.png``. Work happens in a sibling ``.OUT.partial`` dir: each finished image is
renamed into place and journalled, so an interrupted run is continued with ``resume``; only a
complete samples dir is renamed to ``OUT``. Under ``torchrun`` the ranks split the prompts
round-robin and rank 0 merges their journals into the one manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sanatool.errors import InputError, OutputExistsError, RunFailure
from sanatool.progress import ProgressFn, no_progress
from sanatool.prompts import PromptItem
from sanatool.samples import IMAGES_DIR, MANIFEST_NAME, image_relpath

SAMPLERS = ("flow-dpm", "flow-euler")
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 4.5
GRID_NAME = "grid.png"
#: The contact sheet shows at most this many prompts × candidates, each cell at most GRID_CELL px.
GRID_MAX_ROWS = 32
GRID_MAX_COLS = 16
GRID_CELL = 256
#: Manifest fields that must all match for ``resume`` to keep an existing image.
RESUME_KEYS = (
    "prompt",
    "prompt_index",
    "candidate",
    "seed",
    "steps",
    "guidance",
    "sampler",
    "model",
    "height",
    "width",
    "dtype",
    "instruction",
)
log = logging.getLogger("sanatool.sampling")
_JOURNAL_GLOB = ".journal-*.jsonl"
_REUSED_JOURNAL = ".journal-reused.jsonl"


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
        shift = config.get("flow_shift") or config.get("shift") or 1.0
        scheduler = FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=config.get("num_train_timesteps", 1000), shift=float(shift)
        )
        scheduler.set_timesteps(sigmas=euler_sigmas(steps), device=device)
        return scheduler
    raise InputError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")


def check_size(source: Any, size: Sequence[int] | None) -> tuple[int, int]:
    """Resolve ``size`` (``None`` → the model's native size) and refuse sizes the model cannot draw.

    ``source`` is a loaded ``SanaPipeline`` or a pipeline ``ModelDir``.
    """
    from sanatool.pipeline import image_geometry

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

        from sanatool.text import encode_prompts

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
        from sanatool.text import encode_prompts

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
    ``"auto"`` for the model's world default (see :mod:`sanatool.pipeline`). Images are PIL
    images at ``size`` (default: the model's native size). Each image depends only on its own
    prompt and seed, never on the batch it ran in (up to float rounding).
    """
    import torch

    from sanatool.pipeline import default_instruction

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


# ---------------------------------------------------------------------------------------------
# Distributed: ranks split the prompts; only barriers are needed because journals are files.


def rank_prompt_indices(num_prompts: int, rank: int, world: int) -> list[int]:
    """The prompts one rank handles: round-robin, so ranks get equal work ± one prompt."""
    return list(range(rank, num_prompts, world))


# ---------------------------------------------------------------------------------------------
# Samples dirs


@dataclass
class SampleJob:
    """One image to make: which prompt, which candidate, its seed."""

    prompt_index: int
    candidate: int
    seed: int
    item: PromptItem

    @property
    def key(self) -> tuple[int, int]:
        return self.prompt_index, self.candidate


@dataclass
class SampleSettings:
    """What every manifest line of one run records besides the prompt."""

    steps: int
    guidance: float
    sampler: str
    model: str
    height: int
    width: int
    dtype: str
    instruction: bool

    def record(self, job: SampleJob) -> dict[str, Any]:
        """The manifest line of a job."""
        row: dict[str, Any] = {
            "prompt": job.item.prompt,
            "prompt_index": job.prompt_index,
            "candidate": job.candidate,
            "seed": job.seed,
            "steps": self.steps,
            "guidance": self.guidance,
            "sampler": self.sampler,
            "model": self.model,
            "height": self.height,
            "width": self.width,
            "dtype": self.dtype,
            "instruction": self.instruction,
            "path": image_relpath(job.prompt_index, job.candidate),
        }
        if job.item.category is not None:
            row["category"] = job.item.category
        if job.item.spec is not None:
            row["spec"] = job.item.spec
        for key, value in job.item.extra.items():
            row.setdefault(key, value)
        return row


def sample_jobs(prompts: Sequence[PromptItem], candidates: int, seed: int) -> list[SampleJob]:
    """Every (prompt, candidate) image of a run, in manifest order."""
    return [
        SampleJob(p, c, image_seed(seed, p, c), item)
        for p, item in enumerate(prompts)
        for c in range(candidates)
    ]


def partial_dir(out: Path) -> Path:
    """Where an unfinished run of ``out`` lives (a hidden sibling, renamed to ``out`` when complete)."""
    return out.parent / f".{out.name}.partial"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Lines of a journal or manifest; a torn last line (a crash mid-write) is skipped."""
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def find_reusable(
    out: Path, jobs: Sequence[SampleJob], settings: SampleSettings
) -> dict[tuple[int, int], tuple[dict[str, Any], Path]]:
    """Images of an earlier run (``out`` itself or its unfinished ``.partial``) that match this run exactly.

    Returns job key → (manifest record, image file). The unfinished run wins over ``out``
    because it is newer.
    """
    wanted = {job.key: settings.record(job) for job in jobs}
    found: dict[tuple[int, int], tuple[dict[str, Any], Path]] = {}
    sources: list[tuple[Path, list[dict[str, Any]]]] = []
    partial = partial_dir(out)
    if partial.is_dir():
        for journal in sorted(partial.glob(_JOURNAL_GLOB)):
            sources.append((partial, _read_jsonl(journal)))
    if (out / MANIFEST_NAME).is_file():
        sources.append((out, _read_jsonl(out / MANIFEST_NAME)))
    for root, rows in sources:
        for row in rows:
            try:
                key = (int(row["prompt_index"]), int(row["candidate"]))
            except (KeyError, TypeError, ValueError):
                continue
            expected = wanted.get(key)
            if key in found or expected is None:
                continue
            if any(row.get(name) != expected[name] for name in RESUME_KEYS):
                continue
            image = root / expected["path"]
            if image.is_file():
                found[key] = (expected, image)
    return found


def check_samples_output(out: Path, force: bool, resume: bool, inputs: Sequence[Path]) -> Path:
    """Validate a samples output before any work: refuse an existing output or unfinished run without a flag."""
    from sanatool.outputs import check_output_path

    resolved = check_output_path(out, force or resume, inputs)
    partial = partial_dir(resolved)
    if partial.exists() and not (resume or force):
        raise OutputExistsError(
            f"an unfinished run of {out} exists ({partial}); pass --resume to continue it or --force to start over"
        )
    if resolved.exists() and not resolved.is_dir():
        raise OutputExistsError(f"output {out} exists and is not a directory; choose another path")
    if resume and not force and resolved.exists() and not (resolved / MANIFEST_NAME).is_file():
        raise OutputExistsError(
            f"--resume continues a samples dir, but {out} has no {MANIFEST_NAME}; choose another path "
            "or pass --force to replace it"
        )
    return resolved


def prepare_partial(
    out: Path, reused: dict[tuple[int, int], tuple[dict[str, Any], Path]], resume: bool
) -> Path:
    """Set up the working dir (rank 0): reused images linked in and recorded, stale journals dropped."""
    partial = partial_dir(out)
    if partial.exists() and not resume:
        shutil.rmtree(partial)
    (partial / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    tmp = partial / f"{_REUSED_JOURNAL}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        for record, source in reused.values():
            target = partial / record["path"]
            if source.resolve() != target.resolve():
                _link_into(source, target)
            handle.write(json.dumps(record) + "\n")
    for journal in partial.glob(_JOURNAL_GLOB):
        journal.unlink()
    os.replace(tmp, partial / _REUSED_JOURNAL)
    return partial


def _link_into(source: Path, target: Path) -> None:
    """Put ``source`` at ``target`` atomically: a hard link where possible, a copy otherwise."""
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copy2(source, tmp)
    os.replace(tmp, target)


def sample_share(
    pipe: Any,
    jobs: Sequence[SampleJob],
    partial: Path,
    settings: SampleSettings,
    instruction: Sequence[str] | None,
    batch_size: int,
    rank: int = 0,
    progress: ProgressFn = no_progress,
) -> int:
    """Make one rank's images in ``partial``; journal each as soon as it is on disk. Returns the count."""
    journal_path = partial / f".journal-{rank:05d}.jsonl"
    progress("sample", 0, len(jobs))
    batches = iter_batches(
        pipe,
        [job.item.prompt for job in jobs],
        [job.seed for job in jobs],
        settings.steps,
        settings.guidance,
        settings.height,
        settings.width,
        settings.sampler,
        instruction,
        batch_size,
    )
    with open(journal_path, "a", encoding="utf-8") as journal:
        for start, _, images in batches:
            batch = jobs[start : start + batch_size]
            for job, image in zip(batch, images or [], strict=True):
                record = settings.record(job)
                target = partial / record["path"]
                tmp = target.with_name(f".{target.name}.tmp")
                image.save(tmp, format="PNG")
                os.replace(tmp, target)
                journal.write(json.dumps(record) + "\n")
                journal.flush()
            progress("sample", start + len(batch), len(jobs))
    return len(jobs)


def finalize_samples(out: Path, jobs: Sequence[SampleJob]) -> Path:
    """Merge every rank's journal into ``manifest.jsonl``, draw ``grid.png``, and rename the run to ``out``."""
    from sanatool.samples import write_manifest

    partial = partial_dir(out)
    by_key: dict[tuple[int, int], dict[str, Any]] = {}
    for journal in sorted(partial.glob(_JOURNAL_GLOB)):
        for row in _read_jsonl(journal):
            by_key[(int(row["prompt_index"]), int(row["candidate"]))] = row
    records = []
    for job in jobs:
        row = by_key.get(job.key)
        if row is None or not (partial / row["path"]).is_file():
            raise RunFailure(
                f"image {image_relpath(*job.key)} is missing from {partial} after sampling; "
                "rerun with --resume to make the missing images"
            )
        records.append(row)
    keep = {row["path"] for row in records}
    for image in (partial / IMAGES_DIR).iterdir():
        if f"{IMAGES_DIR}/{image.name}" not in keep:
            image.unlink()  # left over from an earlier run with other settings
    write_manifest(partial / MANIFEST_NAME, records)
    write_contact_sheet(partial, records, partial / GRID_NAME)
    for journal in partial.glob(_JOURNAL_GLOB):
        journal.unlink()
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(partial, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(partial, out)
    return out


def write_contact_sheet(root: Path, records: Sequence[dict[str, Any]], path: Path) -> None:
    """A grid of prompts (rows) × candidates (columns), at most 32 × 16 cells of at most 256 px."""
    from PIL import Image

    rows = sorted({int(r["prompt_index"]) for r in records})[:GRID_MAX_ROWS]
    cols = sorted({int(r["candidate"]) for r in records})[:GRID_MAX_COLS]
    if not rows:
        return
    first = records[0]
    scale = min(1.0, GRID_CELL / max(int(first["height"]), int(first["width"])))
    cell_h, cell_w = max(1, round(int(first["height"]) * scale)), max(1, round(int(first["width"]) * scale))
    gap = 2
    sheet = Image.new(
        "RGB", (len(cols) * (cell_w + gap) + gap, len(rows) * (cell_h + gap) + gap), (255, 255, 255)
    )
    row_of = {p: i for i, p in enumerate(rows)}
    col_of = {c: i for i, c in enumerate(cols)}
    for record in records:
        p, c = int(record["prompt_index"]), int(record["candidate"])
        if p not in row_of or c not in col_of:
            continue
        with Image.open(root / record["path"]) as image:
            cell = image.convert("RGB")
            if cell.size != (cell_w, cell_h):
                cell = cell.resize((cell_w, cell_h), Image.Resampling.LANCZOS)
            sheet.paste(cell, (gap + col_of[c] * (cell_w + gap), gap + row_of[p] * (cell_h + gap)))
    sheet.save(path, format="PNG")


def sample_to_dir(
    model_spec: Any,
    prompts: Sequence[PromptItem | str],
    out: str | os.PathLike,
    candidates: int = 4,
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
    seed: int = 0,
    size: Sequence[int] | None = None,
    batch_size: int = 8,
    sampler: str = "flow-dpm",
    device: Any = "auto",
    dtype: Any = "auto",
    resume: bool = False,
    force: bool = False,
    progress: ProgressFn = no_progress,
    instruction: bool | None = None,
) -> Path:
    """Sample ``candidates`` images per prompt into a samples dir; return its path.

    ``model_spec`` is a pipeline dir, ``builtin:NAME`` or an opened ``ModelDir``. Seeds follow
    :func:`image_seed`. ``resume`` keeps images of an earlier (finished or interrupted) run of
    ``out`` whose manifest lines match this run and makes only the rest; ``force`` replaces
    ``out``. ``instruction``: ``None`` = the world's default, ``True``/``False`` = on/off. Under
    ``torchrun`` every rank calls this; rank 0 writes the manifest and the grid.
    """
    from sanatool.checkpoint import ModelDir, open_model_dir
    from sanatool.distributed import setup_distributed
    from sanatool.pipeline import dtype_name, load_pipeline, resolve_device, resolve_instruction

    items = [item if isinstance(item, PromptItem) else PromptItem(str(item)) for item in prompts]
    if not items:
        raise InputError("no prompts given; pass --prompt TEXT or --prompts FILE with at least one prompt")
    for index, item in enumerate(items):
        if not item.prompt.strip():
            raise InputError(f"prompt {index} is empty; every prompt needs some text")
    check_settings(steps, guidance, sampler, batch_size, candidates)
    model = model_spec if isinstance(model_spec, ModelDir) else open_model_dir(model_spec)
    model.require_pipeline("sample")
    height, width = check_size(model, size)
    out_path = check_samples_output(Path(out).expanduser(), force, resume, [model.path])
    target = resolve_device(device)
    dist = setup_distributed(target)
    pipe = load_pipeline(model, target, dtype, command="sample")
    make_scheduler(pipe, sampler, steps)  # refuses a sampler this pipeline cannot run, before any output
    chosen = resolve_instruction(model, instruction)
    settings = SampleSettings(
        steps=steps,
        guidance=float(guidance),
        sampler=sampler,
        model=model.fingerprint(),
        height=height,
        width=width,
        dtype=dtype_name(pipe.transformer.dtype),
        instruction=bool(chosen),
    )
    jobs = sample_jobs(items, candidates, seed)
    reused = find_reusable(out_path, jobs, settings) if resume else {}
    dist.barrier()  # every rank has read the earlier run before rank 0 rearranges it
    if dist.is_main:
        prepare_partial(out_path, reused, resume)
    dist.barrier()
    mine = set(rank_prompt_indices(len(items), dist.rank, dist.world_size))
    todo = [job for job in jobs if job.prompt_index in mine and job.key not in reused]
    partial = partial_dir(out_path)
    try:
        sample_share(
            pipe,
            todo,
            partial,
            settings,
            chosen,
            batch_size,
            dist.rank,
            progress if dist.is_main else no_progress,
        )
    except BaseException:
        log.warning(
            "sampling stopped; the finished images are kept in %s: rerun with --resume to continue", partial
        )
        raise
    dist.barrier()
    if dist.is_main:
        finalize_samples(out_path, jobs)
    dist.barrier()
    return out_path
