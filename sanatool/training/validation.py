"""What a run reports beside its loss log: validation grids and TensorBoard scalars.

``--validation-prompts FILE``: every ``--validation-every`` steps and at the end, the model being
trained samples each prompt once with a fixed seed (the seed ``sanatool sample --seed SEED`` gives
candidate 0 of that prompt, so the output model redraws it) using sanatool's own sampler at the
model's defaults (its scheduler, steps, guidance and size), and rank 0 writes the labelled contact
sheet to ``RUN_DIR/validation/step-NNNNNN.png`` atomically. The text encoder and VAE are loaded for
each validation and freed after it, so they take no memory between validations. Under torchrun
every rank samples the same images (FSDP's shards must all take part in each forward pass).

``--report-to tensorboard``: loss, learning rate, gradient norm and step time (and the validation
grids) go to ``RUN_DIR/tensorboard`` with ``torch.utils.tensorboard``; a resumed run drops the
events after its checkpoint's step that the stopped run had written.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sanatool.errors import InputError
from sanatool.io.modeldir import ModelDir
from sanatool.io.prompts import PromptItem, read_prompts
from sanatool.progress import ProgressFn, no_progress
from sanatool.training.options import TrainOptions

VALIDATION_DIR = "validation"
TENSORBOARD_DIR = "tensorboard"
#: A validation grid is small: one sheet, a few seconds of sampling.
MAX_VALIDATION_PROMPTS = 64
TENSORBOARD_INSTALL = "pip install 'sanatool[tensorboard]'"


def read_validation_prompts(path: Path) -> list[PromptItem]:
    """The prompts of ``--validation-prompts`` (text or JSONL, as ``sample`` reads them); bad files refused."""
    items = read_prompts(path)
    if len(items) > MAX_VALIDATION_PROMPTS:
        raise InputError(
            f"--validation-prompts {path} holds {len(items)} prompts; a validation grid takes at most "
            f"{MAX_VALIDATION_PROMPTS}: pick a few that show what the run should learn"
        )
    return items


def check_reporting(opts: TrainOptions) -> list[PromptItem] | None:
    """Refuse what reporting cannot do before any work; return the validation prompts (if any)."""
    if opts.report_to == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise InputError(f"--report-to tensorboard needs the tensorboard package: {TENSORBOARD_INSTALL}")
    if opts.validation_prompts is None:
        return None
    return read_validation_prompts(Path(opts.validation_prompts).expanduser())


def validation_path(run_dir: Path, step: int) -> Path:
    """Where the grid of ``step`` goes: ``RUN_DIR/validation/step-000100.png``."""
    return run_dir / VALIDATION_DIR / f"step-{step:06d}.png"


def clear_reports(run_dir: Path) -> None:
    """Remove an earlier run's grids and event files (a run that starts afresh in this run dir)."""
    for name in (VALIDATION_DIR, TENSORBOARD_DIR):
        shutil.rmtree(run_dir / name, ignore_errors=True)


def _load_scheduler(components: ModelDir) -> Any:
    import diffusers

    _, class_name = components.components["scheduler"]
    return getattr(diffusers, class_name).from_pretrained(str(components.path / "scheduler"))


def sample_validation(
    transformer: Any,
    components: ModelDir,
    prompts: list[PromptItem],
    seed: int,
    device: Any,
    dtype: str,
    text_encoder: Any = None,
    progress: ProgressFn = no_progress,
) -> list[Any]:
    """One image per prompt from ``transformer`` as it is now (PIL images, the model's native size).

    ``text_encoder``: the one being trained (``--train-text-encoder``); else the components' frozen
    one is loaded in ``dtype`` and freed afterwards, with the VAE.
    """
    import torch
    from diffusers import SanaPipeline

    from sanatool.inference.sampler import generate, image_seed
    from sanatool.training.cache import load_encoders

    tokenizer, frozen, vae = load_encoders(components.path, str(device), dtype, components.variant)
    pipe = SanaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder if text_encoder is not None else frozen,
        vae=vae,
        transformer=transformer,
        scheduler=_load_scheduler(components),
    )
    modules = [transformer] + ([text_encoder] if text_encoder is not None else [])
    training = [module.training for module in modules]
    for module in modules:
        module.eval()
    try:
        seeds = [image_seed(seed, index, 0) for index in range(len(prompts))]
        images = generate(pipe, [item.prompt for item in prompts], seeds, progress=progress).images or []
    finally:
        for module, was_training in zip(modules, training, strict=True):
            module.train(was_training)
        del pipe, frozen, vae
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return images


def write_validation_grid(images: list[Any], prompts: list[PromptItem], out: Path) -> Path:
    """The labelled contact sheet of ``images`` (one per prompt), written atomically to ``out``."""
    from sanatool.io.outputs import atomic_output_file
    from sanatool.samples.sheet import write_contact_sheet

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sanatool-validation-") as scratch:
        root = Path(scratch)
        records = []
        for index, (image, item) in enumerate(zip(images, prompts, strict=True)):
            image.save(root / f"{index:04d}.png")
            records.append(
                {
                    "prompt": item.prompt,
                    "prompt_index": index,
                    "candidate": 0,
                    "path": f"{index:04d}.png",
                    "height": image.height,
                    "width": image.width,
                }
            )
        write_contact_sheet(root, records, root / "grid.png")
        with atomic_output_file(out, force=True) as tmp:
            shutil.copyfile(root / "grid.png", tmp)
    return out


class TensorBoardReport:
    """Scalars (and validation grids) of one run in ``RUN_DIR/tensorboard``."""

    def __init__(self, run_dir: Path, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # A resumed run: events past the checkpoint (written before the stop) would draw twice.
        purge = start_step + 1 if start_step else None
        self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR), purge_step=purge)

    def scalars(self, step: int, loss: float, lr: float, grad_norm: float, step_seconds: float) -> None:
        """One optimizer step's numbers."""
        for tag, value in (
            ("train/loss", loss),
            ("train/lr", lr),
            ("train/grad_norm", grad_norm),
            ("train/step_time_s", step_seconds),
        ):
            self.writer.add_scalar(tag, value, step)

    def grid(self, step: int, path: Path) -> None:
        """A validation grid, as the image ``validation``."""
        import numpy as np
        from PIL import Image

        with Image.open(path) as image:
            self.writer.add_image("validation", np.asarray(image.convert("RGB")), step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


class Reports:
    """The validation grids and TensorBoard scalars of a run; every rank calls it, rank 0 writes."""

    def __init__(
        self,
        opts: TrainOptions,
        prompts: list[PromptItem] | None,
        run: Any,
        start_step: int,
        progress: ProgressFn = no_progress,
    ) -> None:
        self.opts = opts
        self.progress = progress
        self.prompts = prompts
        self.run = run
        self.last_grid: int | None = None
        self.tensorboard = (
            TensorBoardReport(run.run_dir, start_step)
            if opts.report_to == "tensorboard" and run.ctx.is_main
            else None
        )

    def after_step(self, result: Any, step_seconds: float) -> None:
        """Record a finished step; sample the grid when ``--validation-every`` says so."""
        if self.tensorboard is not None:
            self.tensorboard.scalars(result.step, result.loss, result.lr, result.grad_norm, step_seconds)
        every = self.opts.validation_every
        if every and result.step % every == 0:
            self.validate(result.step)

    def finish(self, step: int) -> None:
        """The grid of the final weights (unless the last step drew one)."""
        if self.prompts is not None and self.last_grid != step:
            self.validate(step)

    def validate(self, step: int) -> None:
        """Sample the validation prompts with the weights of ``step`` and write their grid (rank 0)."""
        from sanatool.arch import resolve_precision

        if self.prompts is None:
            return
        run, trainer = self.run, self.run.trainer
        transformer = trainer.model.transformer if run.text_encoder is not None else trainer.model
        images = sample_validation(
            transformer,
            run.sources.components,
            self.prompts,
            self.opts.seed,
            run.ctx.device,
            resolve_precision(self.opts.precision, run.ctx.device.type),
            run.text_encoder,
            lambda task, done, total=None, **info: self.progress("validate", done, total, step=step),
        )
        self.last_grid = step
        if run.ctx.is_main:
            path = write_validation_grid(images, self.prompts, validation_path(run.run_dir, step))
            if self.tensorboard is not None:
                self.tensorboard.grid(step, path)
        run.ctx.barrier()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
