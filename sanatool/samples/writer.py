"""Writing a samples dir: :func:`sample_to_dir` makes ``images/``, ``manifest.jsonl`` and ``grid.png``.

Images come from :mod:`sanatool.inference.sampler`, each from its own seed
(:func:`~sanatool.inference.sampler.image_seed`). Work happens in the output's
:func:`~sanatool.io.outputs.partial_dir`: each finished image is renamed into place and
journalled, so an interrupted run is continued with ``resume``; only a complete samples dir is
renamed to ``OUT``. Under ``torchrun`` the ranks split the prompts round-robin and rank 0 merges
their journals into the one manifest.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sanatool.errors import InputError, Interrupted, OutputExistsError, RunFailure
from sanatool.inference.lora import LoraSpec, apply_loras, check_lora_fits, parse_lora_spec
from sanatool.inference.sampler import (
    DEFAULT_GUIDANCE,
    check_settings,
    check_size,
    default_steps,
    image_seed,
    iter_batches,
    resolve_sampler,
)
from sanatool.inference.skipping import SkipPlan, apply_skip_plan, read_skip_plan
from sanatool.io.jsonl import read_jsonl
from sanatool.io.manifest import IMAGES_DIR, MANIFEST_NAME, image_relpath, write_manifest
from sanatool.io.outputs import check_output_path, link_or_copy, partial_dir, replace_dir
from sanatool.io.prompts import PromptItem
from sanatool.progress import ProgressFn, no_progress
from sanatool.samples.sheet import GRID_NAME, write_contact_sheet

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
    "dtypes",
    "instruction",
    "skip_plan",
    "lora",
)
log = logging.getLogger("sanatool.samples")
_JOURNAL_GLOB = ".journal-*.jsonl"
_REUSED_JOURNAL = ".journal-reused.jsonl"


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
    dtypes: dict[str, str] = field(default_factory=dict)
    vae_tiling: bool = False
    #: The :meth:`~sanatool.inference.skipping.SkipPlan.plan_id` of the skip plan followed, if any.
    skip_plan: str | None = None
    #: The LoRAs sampled with (:meth:`~sanatool.inference.lora.LoraSpec.record` each), if any.
    lora: list[dict[str, Any]] | None = None

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
            "dtypes": dict(self.dtypes),
            "instruction": self.instruction,
            "path": image_relpath(job.prompt_index, job.candidate),
        }
        if self.vae_tiling:
            row["vae_tiling"] = True
        if self.skip_plan is not None:
            row["skip_plan"] = self.skip_plan
        if self.lora:
            row["lora"] = [dict(entry) for entry in self.lora]
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


def _journal_rows(path: Path) -> list[dict[str, Any]]:
    """The records of a journal or manifest; a line torn by a crash mid-write is skipped."""
    return [row for _, row in read_jsonl(path, problems=[])]


def find_reusable(
    out: Path, jobs: Sequence[SampleJob], settings: SampleSettings
) -> dict[tuple[int, int], tuple[dict[str, Any], Path]]:
    """Images of an earlier run (``out`` itself or its unfinished ``.partial``) that match this run exactly.

    Returns job key → (manifest record, image file). The unfinished run wins over ``out``
    because it is newer. An earlier image of the same prompt and candidate made with other
    settings (steps, guidance, model, prompt text, ...) is refused with the settings that
    differ: resuming would silently redraw it.
    """
    wanted = {job.key: settings.record(job) for job in jobs}
    found: dict[tuple[int, int], tuple[dict[str, Any], Path]] = {}
    changed: dict[str, tuple[Any, Any, set[tuple[int, int]]]] = {}  # setting → (earlier, now, images)
    sources: list[tuple[Path, list[dict[str, Any]]]] = []
    partial = partial_dir(out)
    if partial.is_dir():
        for journal in sorted(partial.glob(_JOURNAL_GLOB)):
            sources.append((partial, _journal_rows(journal)))
    if (out / MANIFEST_NAME).is_file():
        sources.append((out, _journal_rows(out / MANIFEST_NAME)))
    for root, rows in sources:
        for row in rows:
            try:
                key = (int(row["prompt_index"]), int(row["candidate"]))
            except (KeyError, TypeError, ValueError):
                continue
            expected = wanted.get(key)
            if key in found or expected is None:
                continue
            differing = [name for name in RESUME_KEYS if row.get(name) != expected.get(name)]
            for name in differing:
                changed.setdefault(name, (row.get(name), expected.get(name), set()))[2].add(key)
            image = root / expected["path"]
            if not differing and image.is_file():
                found[key] = (expected, image)
    if changed:
        what = "; ".join(
            f"{name} {earlier!r} → {now!r} ({len(keys)} image{'s' if len(keys) != 1 else ''})"
            for name, (earlier, now, keys) in changed.items()
        )
        raise InputError(
            f"--resume keeps images made with this run's settings, but the earlier run of {out} differs: "
            f"{what}; rerun with the earlier settings, or pass --force instead of --resume to start over"
        )
    return found


def check_samples_output(out: Path, force: bool, resume: bool, inputs: Sequence[Path]) -> Path:
    """Validate a samples output before any work: refuse an existing output or unfinished run without a flag."""
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
                link_or_copy(source, target)
            handle.write(json.dumps(record) + "\n")
    for journal in partial.glob(_JOURNAL_GLOB):
        journal.unlink()
    os.replace(tmp, partial / _REUSED_JOURNAL)
    return partial


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


def finalize_samples(out: Path, jobs: Sequence[SampleJob], replace: bool = True) -> Path:
    """Merge every rank's journal into ``manifest.jsonl``, draw ``grid.png``, and rename the run to ``out``.

    Without ``replace`` (neither ``--force`` nor ``--resume``), an ``out`` that appeared meanwhile is
    refused, not replaced (see :func:`~sanatool.io.outputs.replace_dir`).
    """
    partial = partial_dir(out)
    by_key: dict[tuple[int, int], dict[str, Any]] = {}
    for journal in sorted(partial.glob(_JOURNAL_GLOB)):
        for row in _journal_rows(journal):
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
    replace_dir(partial, out, force=replace)
    return out


def sample_to_dir(
    model_spec: Any,
    prompts: Sequence[PromptItem | str],
    out: str | os.PathLike,
    candidates: int = 4,
    steps: int | None = None,
    guidance: float = DEFAULT_GUIDANCE,
    seed: int = 0,
    size: Sequence[int] | None = None,
    batch_size: int = 8,
    sampler: str | None = None,
    device: Any = "auto",
    dtype: Any = "auto",
    resume: bool = False,
    force: bool = False,
    progress: ProgressFn = no_progress,
    instruction: bool | None = None,
    offload: bool = False,
    variant: str | None = None,
    allow_pickle: bool = False,
    skip_plan: Any = None,
    lora: Sequence[Any] = (),
) -> Path:
    """Sample ``candidates`` images per prompt into a samples dir; return its path.

    ``model_spec`` is a pipeline dir, ``builtin:NAME`` or an opened ``ModelDir``. Seeds follow
    :func:`image_seed`. ``resume`` keeps images of an earlier (finished or interrupted) run of
    ``out`` and makes only the rest; an earlier image made with other settings is refused
    (:class:`InputError` naming them; see :func:`find_reusable`); ``force`` replaces
    ``out``. ``instruction``: ``None`` = the world's default, ``True``/``False`` = on/off. Under
    ``torchrun`` every rank calls this; rank 0 writes the manifest and the grid. ``sampler=None``
    runs the pipeline's own scheduler and ``steps=None`` its default steps (2 for SANA-Sprint, else
    20); ``variant`` picks the weight files of a path (``bf16`` …); ``offload`` keeps models on the CPU between uses (CUDA only). Each manifest line records
    the dtype of every model (``dtypes``), which :func:`~sanatool.inference.sampler.diffusers_load_kwargs`
    turns into diffusers' loading arguments.
    ``allow_pickle`` lets pickle component weights load (torch's weights_only loader).
    ``skip_plan`` (a :class:`~sanatool.inference.skipping.SkipPlan` or its file) skips blocks at the
    steps it names; each manifest line then records the plan's id (``skip_plan``), which ``resume``
    treats as a setting.
    ``lora``: LoRAs to sample with, unmerged (:class:`~sanatool.inference.lora.LoraSpec` or ``PATH[:SCALE]``
    strings); each is checked against the transformer before anything loads, and the manifest records
    each file's fingerprint and scale (``lora``, a setting for ``resume``).
    """
    from sanatool.arch import dtype_name
    from sanatool.distributed import resolve_device, setup_distributed
    from sanatool.inference.pipeline import (
        check_offload,
        component_dtypes,
        configure_vae,
        load_pipeline,
        resolve_instruction,
    )
    from sanatool.io.modeldir import as_model_dir

    items = [item if isinstance(item, PromptItem) else PromptItem(str(item)) for item in prompts]
    if not items:
        raise InputError("no prompts given; pass --prompt TEXT or --prompts FILE with at least one prompt")
    for index, item in enumerate(items):
        if not item.prompt.strip():
            raise InputError(f"prompt {index} is empty; every prompt needs some text")
    check_settings(steps, guidance, sampler, batch_size, candidates)
    model = as_model_dir(model_spec, variant)
    model.require_pipeline("sample")
    loras = [spec if isinstance(spec, LoraSpec) else parse_lora_spec(str(spec)) for spec in lora]
    for spec in loras:
        check_lora_fits(spec.path, model.transformer.config)
    if skip_plan is not None and not isinstance(skip_plan, SkipPlan):
        skip_plan = read_skip_plan(skip_plan)
    # A plan is made for one sampler and step count: unless told otherwise, sample with those.
    if skip_plan is not None and sampler is None:
        sampler = skip_plan.sampler
    sampler = resolve_sampler(model, sampler)
    if steps is None:
        steps = skip_plan.steps if skip_plan is not None else default_steps(sampler)
    height, width = check_size(model, size)
    if skip_plan is not None:
        skip_plan.check(model.fingerprint(), steps, sampler)
    out_path = check_samples_output(Path(out).expanduser(), force, resume, [model.path])
    target = resolve_device(device)
    check_offload(offload, target)
    with setup_distributed(target) as dist:
        pipe = load_pipeline(
            model, target, dtype, command="sample", offload=offload, allow_pickle=allow_pickle
        )
        apply_loras(pipe, loras)
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
            dtypes=component_dtypes(pipe),
            vae_tiling=configure_vae(pipe, height, width),
            skip_plan=None if skip_plan is None else skip_plan.plan_id(),
            lora=[spec.record() for spec in loras] or None,
        )
        jobs = sample_jobs(items, candidates, seed)
        reused = find_reusable(out_path, jobs, settings) if resume else {}
        if resume and dist.is_main:
            log.info(
                "resume: keeping %d of %d images, making %d", len(reused), len(jobs), len(jobs) - len(reused)
            )
        dist.barrier()  # every rank has read the earlier run before rank 0 rearranges it
        if dist.is_main:
            prepare_partial(out_path, reused, resume)
        dist.barrier()
        mine = set(dist.share(len(items)))
        todo = [job for job in jobs if job.prompt_index in mine and job.key not in reused]
        partial = partial_dir(out_path)
        try:
            with apply_skip_plan(pipe, skip_plan) if skip_plan is not None else nullcontext():
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
        except (KeyboardInterrupt, Interrupted) as err:
            raise Interrupted.keeping(
                err, f"the finished images are kept in {partial}; rerun with --resume to continue"
            ) from err
        except BaseException:
            log.warning(
                "sampling stopped; the finished images are kept in %s: rerun with --resume to continue",
                partial,
            )
            raise
        dist.barrier()
        if dist.is_main:
            finalize_samples(out_path, jobs, replace=force or resume)
        dist.barrier()
    return out_path
