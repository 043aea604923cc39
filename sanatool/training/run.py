"""A whole training run: validate, cache, train, checkpoint, resume, and write the output model dir.

Order of work, so that bad input costs nothing: options, model dir, data set and output path are
all validated first; then the latent cache is built (or found); only then is the transformer
loaded. The output is written atomically at the end. Checkpoints and the live loss log go to the
run dir (``OUT.checkpoints`` unless ``--checkpoint-dir``; see :mod:`~sanatool.training.checkpoints`),
which survives a crash, Ctrl-C or a NaN: ``--resume`` continues from its newest checkpoint. A run
without ``--save-every`` removes its run dir once the output is written.
"""

from __future__ import annotations

import logging
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sanatool.arch import flow_shift, resolve_precision, train_timesteps, vae_scale_factor
from sanatool.distributed import DistContext, setup_distributed
from sanatool.errors import InputError, Interrupted, RunFailure
from sanatool.inference.components import check_components as check_component_files
from sanatool.io.modeldir import ModelDir, open_model_dir
from sanatool.io.outputs import atomic_output_dir, check_output_path
from sanatool.io.prompts import PromptItem
from sanatool.progress import ProgressFn, no_progress
from sanatool.training.cache import (
    EncodeSettings,
    build_cache,
    content_hash,
    open_cache,
    resolve_cache_root,
)
from sanatool.training.checkpoints import (
    CheckpointPlan,
    check_resume,
    check_resume_data,
    clear_run_dir,
    latest_checkpoint,
    prepare_run_dir,
    save_checkpoint,
)
from sanatool.training.data import ImageDataset, load_dataset
from sanatool.training.distributed import full_state_dict, load_optimizer_state, wrap_model
from sanatool.training.logs import LOSS_CURVE, LOSS_LOG, append_log, plot_loss, read_log
from sanatool.training.model_io import init_transformer, load_transformer, stored_dtype, write_model_dir
from sanatool.training.options import TrainOptions, validate_options
from sanatool.training.state import load_state
from sanatool.training.validation import Reports, check_reporting, clear_reports

if TYPE_CHECKING:
    from sanatool.training.loop import StepResult, Trainer

log = logging.getLogger("sanatool.training")

TINY_COMPONENTS = "builtin:tiny-shapes"


@dataclass
class Sources:
    """Where a run's pieces come from: the transformer config, its parent, the frozen components."""

    config: dict[str, Any]
    components: ModelDir
    parent: ModelDir | None
    identity: dict[str, Any]
    origin: str | None
    inputs: list[Path] = field(default_factory=list)
    teacher: ModelDir | None = None  # --teacher, checked (headers only) but not loaded


def check_components(config: dict[str, Any], components: ModelDir) -> dict[str, Any]:
    """Refuse a transformer whose latent or caption width does not match the VAE and text encoder."""
    vae = components.component_config("vae")
    text = components.component_config("text_encoder")
    if int(vae.get("latent_channels", -1)) != int(config["in_channels"]):
        raise InputError(
            f"the VAE in {components.path} has {vae.get('latent_channels')} latent channels but the transformer "
            f"takes {config['in_channels']}; use components made for this model"
        )
    if int(text.get("hidden_size", -1)) != int(config["caption_channels"]):
        raise InputError(
            f"the text encoder in {components.path} is {text.get('hidden_size')} wide but the transformer's "
            f"caption_channels is {config['caption_channels']}; use components made for this model"
        )
    return vae


def refuse_sprint(model: ModelDir, command: str) -> None:
    """Refuse to train a SANA-Sprint model (or with its SCM scheduler): flow matching would unlearn its distillation."""
    from sanatool.inference.pipeline import SPRINT_KIND, pipeline_kind

    if pipeline_kind(model) == SPRINT_KIND:
        raise InputError(
            f"{model.path} is a SANA-Sprint model (few-step, guidance-embedding, SCM scheduler): `{command}` "
            "trains with flow matching, but Sprint needs sCM/LADD distillation; train its SANA teacher instead"
        )


def resolve_sources(opts: TrainOptions) -> Sources:
    """The model to fine-tune (or the preset to train) and the pipeline that lends its encoders."""
    from sanatool.arch import preset_config

    if opts.source is not None:
        model = open_model_dir(opts.source, opts.variant)
        refuse_sprint(model, "finetune")
        model.require_pipeline("finetune")
        identity = {"fingerprint": model.fingerprint(), "weights": content_hash(model.transformer.path)}
        return Sources(model.transformer.config, model, model, identity, None, [model.path])
    assert opts.preset is not None
    config = preset_config(opts.preset)
    spec = opts.components or (TINY_COMPONENTS if opts.preset == "tiny" else None)
    if spec is None:
        raise InputError(
            f"train --preset {opts.preset} needs --components PIPELINE_DIR: a SanaPipeline dir whose text encoder, "
            "tokenizer, VAE and scheduler the new transformer will use"
        )
    components = open_model_dir(spec, opts.variant)
    refuse_sprint(components, "train")
    components.require_pipeline("train")
    identity = {"preset": opts.preset, "seed": opts.seed}
    return Sources(config, components, None, identity, opts.preset, [components.path])


def _add_teacher(opts: TrainOptions, sources: Sources) -> None:
    """Check ``--teacher`` against the student (headers only) and make it part of the run's identity."""
    from sanatool.training.distill import open_teacher, teacher_identity

    if opts.train_text_encoder:
        raise InputError(
            "--teacher with --train-text-encoder is not supported: the teacher reads the frozen text encoder's "
            "embeddings; drop one of them"
        )
    sources.teacher = open_teacher(opts.teacher, sources.config, sources.components)
    sources.inputs.append(sources.teacher.path)
    sources.identity["teacher"] = teacher_identity(sources.teacher)


class _DeferredInterrupt:
    """Turn the first Ctrl-C or SIGTERM into a flag checked between steps, so a checkpoint is never half a step.

    A second one interrupts at once. Only the main thread can own signal handlers; elsewhere this
    does nothing.
    """

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _DeferredInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in self._SIGNALS}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise Interrupted(signum)
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def _build_optimizer(opts: TrainOptions, model: Any) -> Any:
    from sanatool.optim import build_optimizer

    params = [p for p in model.parameters() if p.requires_grad]
    return build_optimizer(opts.optimizer, params, opts.lr, weight_decay=opts.weight_decay)


def _scheduler_settings(components: ModelDir) -> tuple[float, int]:
    config = components.component_config("scheduler")
    return flow_shift(config), train_timesteps(config)


def prepare_cache(
    opts: TrainOptions, sources: Sources, dataset: ImageDataset, ctx: DistContext, progress: ProgressFn
) -> Any:
    """Build the latent cache on rank 0 (the others wait), then open it everywhere."""
    from sanatool.inference.pipeline import default_instruction

    cache_root = resolve_cache_root(opts.cache_dir, [*sources.inputs, dataset.root])
    settings = EncodeSettings(
        complex_human_instruction=default_instruction(sources.config),
        dtype=resolve_precision(opts.precision, ctx.device.type),
        device=str(ctx.device),
        variant=sources.components.variant,
    )
    path = None
    if ctx.is_main:
        path = str(build_cache(sources.components.path, dataset, cache_root, settings, progress).path)
    path = ctx.broadcast_object(path)
    cache = open_cache(Path(path))
    if cache is None:
        raise RunFailure(
            f"rank {ctx.rank} cannot read the latent cache {path}; use a --cache-dir all ranks share"
        )
    return cache


def run_training(opts: TrainOptions, progress: ProgressFn = no_progress) -> dict[str, Any]:
    """Train or fine-tune a transformer; return a summary (output path, steps, losses, timing).

    Raises :class:`InputError` for bad input before anything is written, :class:`RunFailure`
    when the loss becomes NaN/inf (the newest checkpoint is kept and named), and re-raises
    an :class:`~sanatool.errors.Interrupted` that names the resumable checkpoint it saved.
    """
    validate_options(opts)
    prompts = check_reporting(opts)
    sources = resolve_sources(opts)
    if opts.lora_rank is not None or opts.base_precision is not None:
        from sanatool.training.lora import check_lora_run

        check_lora_run(opts, sources.config)
    if opts.train_text_encoder:
        from sanatool.inference.pipeline import default_instruction

        if default_instruction(sources.config) is not None:
            raise InputError(
                "--train-text-encoder is for small text encoders trained from scratch (the shapes world); this "
                "model encodes prompts with the complex human instruction of a pretrained Gemma, keep it frozen"
            )
    vae_config = check_components(sources.config, sources.components)
    if opts.teacher is not None:
        _add_teacher(opts, sources)
    assert opts.data is not None and opts.out is not None
    factor = vae_scale_factor(vae_config) * int(sources.config.get("patch_size", 1))
    if opts.aspect_buckets:
        # The bins' pixel area: --resolution², else the model's native side (sample_size × VAE factor).
        native = int(sources.config.get("sample_size") or 32) * vae_scale_factor(vae_config)
        dataset = load_dataset(opts.data, opts.resolution or native, bucket_multiple=factor)
    else:
        dataset = load_dataset(opts.data, opts.resolution)
    if dataset.buckets is None and dataset.resolution % factor:
        raise InputError(
            f"images are {dataset.resolution}px but the VAE and patch size need a multiple of {factor}; "
            f"pass --resolution with a multiple of {factor}"
        )
    out = check_output_path(opts.out, opts.force, [*sources.inputs, dataset.root])
    resolve_cache_root(opts.cache_dir, [*sources.inputs, dataset.root])  # refused before any work
    # Builds each component's skeleton (imports torch): after the checks that need no model.
    check_component_files(sources.components, opts.allow_pickle)
    run_dir = opts.run_dir()
    resume_from = prepare_run_dir(opts, run_dir, out, [*sources.inputs, dataset.root])
    meta = check_resume(opts, sources.identity, resume_from) if resume_from is not None else None
    with setup_distributed(opts.device) as ctx:
        return _train(opts, sources, dataset, out, run_dir, resume_from, meta, ctx, progress, prompts)


@dataclass(frozen=True)
class _Run:
    """The live pieces of one run, shared by the step loop, the checkpoints and the output."""

    opts: TrainOptions
    sources: Sources
    ctx: DistContext
    cache: Any
    run_dir: Path
    trainer: Trainer
    text_encoder: Any  # trained alongside the transformer with --train-text-encoder, else None

    @property
    def live_log(self) -> Path:
        return self.run_dir / LOSS_LOG

    @property
    def checkpoints(self) -> CheckpointPlan:
        if self.opts.lora_rank is not None:  # a LoRA run's checkpoints hold the adapters, never the base
            from sanatool.training.lora import lora_state

            return CheckpointPlan(
                self.opts,
                self.run_dir,
                self.sources.identity,
                self.cache.meta["key"],
                self.write_adapters,
                weights=lora_state,
            )
        return CheckpointPlan(
            self.opts, self.run_dir, self.sources.identity, self.cache.meta["key"], self.write_model
        )

    def write_adapters(self, root: Path, weights: dict[str, Any], dtype: str, summary: str) -> None:
        """A LoRA dir: diffusers' ``pytorch_lora_weights.safetensors`` of ``weights`` and ``sanatool.json``."""
        from sanatool.training.lora import adapter_metadata, write_lora_dir

        assert self.sources.parent is not None
        metadata = adapter_metadata(self.trainer.model)
        write_lora_dir(root, weights, metadata, dtype, self.sources.parent, self.opts, summary)

    def write_model(self, root: Path, weights: dict[str, Any], dtype: str, summary: str) -> None:
        """A full pipeline dir: carried components, the transformer (and a trained text encoder)."""
        opts, sources = self.opts, self.sources
        text_state = None
        if self.text_encoder is not None:
            from sanatool.training.text_encoder import split_state

            weights, text_state = split_state(weights)
        write_model_dir(
            root,
            sources.components,
            sources.config,
            weights,
            dtype,
            opts.max_shard_size,
            sources.parent,
            opts.command,
            opts.recorded(),
            summary,
            origin=sources.origin,
        )
        if text_state is not None:
            from sanatool.training.text_encoder import write_text_encoder

            write_text_encoder(root, self.text_encoder, text_state, dtype)


def _train(
    opts: TrainOptions,
    sources: Sources,
    dataset: ImageDataset,
    out: Path,
    run_dir: Path,
    resume_from: Path | None,
    meta: dict[str, Any] | None,
    ctx: DistContext,
    progress: ProgressFn,
    prompts: list[PromptItem] | None = None,
) -> dict[str, Any]:
    """The work after validation: cache, run dir, model, steps, output; returns the run's summary.

    ``prompts``: the validation prompts (``--validation-prompts``), already read.
    """
    cache = prepare_cache(opts, sources, dataset, ctx, progress)
    if resume_from is not None and meta is not None:
        check_resume_data(resume_from, meta, cache.meta["key"])
    if ctx.is_main:
        if resume_from is None:
            clear_run_dir(run_dir)  # --force was given (or the dir held no checkpoints)
            clear_reports(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    ctx.barrier()

    run = _build_run(opts, sources, cache, ctx, run_dir, resume_from)
    if resume_from is not None and meta is not None:
        _restore(run, resume_from, meta)
    elif ctx.is_main:
        run.live_log.write_text("")
    start_step = run.trainer.step_count
    reports = Reports(opts, prompts, run, start_step, progress)
    try:
        losses, seconds = _step_loop(run, out, progress, reports)
        reports.finish(run.trainer.step_count)
    finally:
        reports.close()
    _write_output(run, out, dataset)
    return _summary(run, out, start_step, resume_from is not None, losses, seconds)


def _load_model(
    opts: TrainOptions, sources: Sources, resume_from: Path | None, device: Any = "cpu"
) -> tuple[Any, Any]:
    """The model to train (from the checkpoint, the parent or fresh) and the text encoder if it trains too."""
    variant = sources.components.variant
    if opts.lora_rank is not None:
        from sanatool.training.lora import build_lora_transformer, load_lora_state

        assert sources.parent is not None
        model = build_lora_transformer(opts, sources.parent.transformer.path, variant, device)
        if resume_from is not None:
            load_lora_state(model, resume_from)
        if opts.grad_checkpointing:
            model.enable_gradient_checkpointing()
        return model, None
    if resume_from is not None:
        model = load_transformer(resume_from / "transformer", variant)
    elif sources.parent is not None:
        model = load_transformer(sources.parent.transformer.path, variant)
    else:
        model = init_transformer(sources.config, opts.seed)
    if opts.grad_checkpointing:
        model.enable_gradient_checkpointing()
    if not opts.train_text_encoder:
        return model, None
    from sanatool.training.text_encoder import TextConditionedTransformer, load_text_encoder

    text_encoder = load_text_encoder(
        resume_from if resume_from is not None else sources.components.path, variant
    )
    return TextConditionedTransformer(model, text_encoder), text_encoder


def _build_run(
    opts: TrainOptions,
    sources: Sources,
    cache: Any,
    ctx: DistContext,
    run_dir: Path,
    resume_from: Path | None,
) -> _Run:
    """Load the model onto the device, wrap it for DDP/FSDP, and build its optimizer and trainer."""
    from sanatool.training.loop import Trainer

    model, text_encoder = _load_model(opts, sources, resume_from, ctx.device)
    if not getattr(model, "is_quantized", False):  # a bitsandbytes base is loaded onto its device
        model.to(ctx.device)
    model.train()
    wrapped = wrap_model(model, ctx, opts.fsdp)
    optimizer = _build_optimizer(opts, model)
    shift, timesteps = _scheduler_settings(sources.components)
    null = cache.null_embedding()
    teacher = None
    if sources.teacher is not None:
        from sanatool.training.distill import load_teacher

        # In the student's base precision (a LoRA run's), else in the precision the step computes in.
        compute = "bf16" if resolve_precision(opts.precision, ctx.device.type) == "bf16" else "fp32"
        teacher = load_teacher(sources.teacher, opts.base_precision or compute, ctx.device)
    trainer = Trainer(
        opts,
        ctx,
        model,
        wrapped,
        optimizer,
        cache.reader(),
        null,
        shift,
        timesteps,
        float(sources.config.get("timestep_scale", 1.0)),
        teacher=teacher,
    )
    return _Run(opts, sources, ctx, cache, run_dir, trainer, text_encoder)


def _restore(run: _Run, checkpoint: Path, meta: dict[str, Any]) -> None:
    """Continue from a checkpoint: optimizer, data order, EMA, step count and the loss log so far."""
    opts, ctx, trainer = run.opts, run.ctx, run.trainer
    state = load_state(checkpoint)
    load_optimizer_state(trainer.wrapped, trainer.optimizer, state["optimizer"], ctx, opts.fsdp)
    trainer.load_random_state(state["random"])
    if trainer.ema is not None:
        if state.get("ema") is None:
            raise InputError(f"the checkpoint {checkpoint} has no EMA weights; resume without --ema")
        trainer.ema.load_state_dict(state["ema"])
        trainer.ema.to(ctx.device)
    trainer.step_count = int(meta["step"])
    if ctx.is_main:
        shutil.copyfile(checkpoint / LOSS_LOG, run.live_log)
        log.info("resuming from %s (step %d of %d)", checkpoint, trainer.step_count, opts.steps)


def _step_loop(run: _Run, out: Path, progress: ProgressFn, reports: Reports) -> tuple[list[float], float]:
    """Step up to ``--steps``, checkpointing every ``--save-every`` and reporting each step to ``reports``
    (validation grids, TensorBoard); return the losses and the seconds taken.

    Raises :class:`RunFailure` on a NaN/inf loss; on Ctrl-C finishes the step, saves a checkpoint
    and raises :class:`~sanatool.errors.Interrupted`.
    """
    opts, ctx, trainer = run.opts, run.ctx, run.trainer
    start_step = trainer.step_count
    started = time.perf_counter()
    losses: list[float] = []
    progress("train", start_step, opts.steps)
    with _DeferredInterrupt() as interrupt:
        while trainer.step_count < opts.steps:
            step_started = time.perf_counter()
            result = trainer.step()
            if not result.finite:
                raise _nan_failure(result, out, run.run_dir)
            losses.append(result.loss)
            _report_step(run, result, time.perf_counter() - started, start_step, progress)
            reports.after_step(result, time.perf_counter() - step_started)
            # Every rank must agree, or the ranks that stop would wait forever in the checkpoint's gather.
            signum = ctx.broadcast_object(interrupt.signum) if ctx.distributed else interrupt.signum
            if signum is not None:
                saved = save_checkpoint(run.checkpoints, trainer)
                raise Interrupted(
                    signum,
                    f"saved a resumable checkpoint of step {trainer.step_count} in {saved}; continue with the "
                    "same command and --resume",
                )
            if (
                opts.save_every
                and trainer.step_count % opts.save_every == 0
                and trainer.step_count < opts.steps
            ):
                save_checkpoint(run.checkpoints, trainer)
    return losses, time.perf_counter() - started


def _nan_failure(result: StepResult, out: Path, run_dir: Path) -> RunFailure:
    latest = latest_checkpoint(run_dir)
    where = (
        f"the last good checkpoint is {latest}; continue from it with --resume and a lower --lr"
        if latest
        else "no checkpoint was saved yet (use --save-every N to keep some)"
    )
    return RunFailure(
        f"the loss became {result.loss:g} (gradient norm {result.grad_norm:g}) at step {result.step}; "
        f"training stopped and {out} was not written; {where}"
    )


def _report_step(
    run: _Run, result: StepResult, elapsed: float, start_step: int, progress: ProgressFn
) -> None:
    """One line of the live loss log (rank 0) and a progress report."""
    rate = (run.trainer.step_count - start_step) / max(elapsed, 1e-9)
    if run.ctx.is_main:
        append_log(
            run.live_log,
            {
                "step": result.step,
                "loss": result.loss,
                "grad_norm": result.grad_norm,
                "lr": result.lr,
                **result.parts,
                "elapsed_s": round(elapsed, 3),
            },
        )
    progress(
        "train",
        run.trainer.step_count,
        run.opts.steps,
        loss=f"{result.loss:.4f}",
        lr=f"{result.lr:.2e}",
        speed=f"{rate:.2f} steps/s",
    )


def _write_output(run: _Run, out: Path, dataset: ImageDataset) -> None:
    """Write the trained model (the EMA weights with ``--ema``) with its loss log and curve to ``out``."""
    opts, ctx, sources = run.opts, run.ctx, run.sources
    lora = opts.lora_rank is not None
    if lora:
        from sanatool.training.lora import lora_state, merged_weights

        weights = lora_state(run.trainer.wrapped)
    else:
        weights = run.trainer.final_weights() or full_state_dict(run.trainer.wrapped, ctx, opts.fsdp)
    out_dtype = opts.dtype or (stored_dtype(sources.parent) if sources.parent is not None else "fp32")
    if ctx.is_main:
        records = read_log(run.live_log)
        with atomic_output_dir(out, force=opts.force, inputs=[*sources.inputs, dataset.root]) as tmp:
            detail = ", text encoder trained" if opts.train_text_encoder else ""
            if lora:
                detail += f", LoRA rank {opts.lora_rank}{' merged' if opts.merge else ''}"
            summary = f"{opts.command}({opts.preset + ', ' if opts.preset else ''}{opts.steps} steps{detail})"
            if lora and not opts.merge:
                run.write_adapters(tmp, weights, opts.dtype or "fp32", summary)
            else:
                if lora:
                    assert sources.parent is not None
                    weights = merged_weights(opts, sources.parent, weights)
                run.write_model(tmp, weights, out_dtype, summary)
            shutil.copyfile(run.live_log, tmp / LOSS_LOG)
            plot_loss(records, tmp / LOSS_CURVE, title=f"{opts.command}: {out.name}")
        if not opts.save_every:
            clear_run_dir(run.run_dir)
    ctx.barrier()


def _summary(
    run: _Run, out: Path, start_step: int, resumed: bool, losses: list[float], seconds: float
) -> dict[str, Any]:
    opts, ctx = run.opts, run.ctx
    return {
        "out": str(out),
        "command": opts.command,
        "steps": opts.steps,
        "resumed_from_step": start_step if resumed else None,
        "final_loss": losses[-1] if losses else None,
        "mean_loss_last_10": sum(losses[-10:]) / len(losses[-10:]) if losses else None,
        "seconds": round(seconds, 2),
        "steps_per_s": round((opts.steps - start_step) / max(seconds, 1e-9), 3),
        "global_batch": opts.batch_size * opts.grad_accum * ctx.world_size,
        "world_size": ctx.world_size,
        "optimizer": opts.optimizer,
        "ema": opts.ema_decay is not None,
        "cache": str(run.cache.path.resolve()),
        "checkpoints": str(run.run_dir.resolve()) if opts.save_every else None,
    }
