"""A whole training run: validate, cache, train, checkpoint, resume, and write the output model dir.

Order of work, so that bad input costs nothing: options, model dir, data set and output path are
all validated first; then the latent cache is built (or found); only then is the transformer
loaded. The output is written atomically at the end. Checkpoints and the live loss log go to the
run dir (``OUT.checkpoints`` unless ``--checkpoint-dir``), which survives a crash, Ctrl-C or a
NaN: ``--resume`` continues from its newest checkpoint. A run without ``--save-every`` removes
its run dir once the output is written.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sanatool.arch import flow_shift, resolve_precision, train_timesteps, vae_scale_factor
from sanatool.distributed import DistContext, setup_distributed
from sanatool.errors import InputError, RunFailure
from sanatool.io.modeldir import ModelDir, open_model_dir
from sanatool.io.outputs import atomic_output_dir, check_output_path
from sanatool.progress import ProgressFn, no_progress
from sanatool.training.cache import DEFAULT_CACHE_NAME, EncodeSettings, build_cache, content_hash, open_cache
from sanatool.training.data import ImageDataset, load_dataset
from sanatool.training.distributed import (
    full_optimizer_state,
    full_state_dict,
    load_optimizer_state,
    wrap_model,
)
from sanatool.training.logs import LOSS_CURVE, LOSS_LOG, append_log, plot_loss, read_log
from sanatool.training.model_io import init_transformer, load_transformer, stored_dtype, write_model_dir
from sanatool.training.options import TrainOptions, validate_options
from sanatool.training.state import load_state, save_state

log = logging.getLogger("sanatool.training")

CHECKPOINT_PREFIX = "step-"
CHECKPOINT_META = "checkpoint.json"
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


def _read_component_config(model: ModelDir, component: str) -> dict[str, Any]:
    path = model.path / component / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read {path}: {err}") from err


def check_components(config: dict[str, Any], components: ModelDir) -> dict[str, Any]:
    """Refuse a transformer whose latent or caption width does not match the VAE and text encoder."""
    vae = _read_component_config(components, "vae")
    text = _read_component_config(components, "text_encoder")
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


def resolve_sources(opts: TrainOptions) -> Sources:
    """The model to fine-tune (or the preset to train) and the pipeline that lends its encoders."""
    from sanatool.arch import preset_config

    if opts.source is not None:
        model = open_model_dir(opts.source)
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
    components = open_model_dir(spec)
    components.require_pipeline("train")
    identity = {"preset": opts.preset, "seed": opts.seed}
    return Sources(config, components, None, identity, opts.preset, [components.path])


def _checkpoints(run_dir: Path) -> list[Path]:
    if not run_dir.is_dir():
        return []
    found = [
        p for p in run_dir.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and (p / CHECKPOINT_META).is_file()
    ]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint in a run dir, or ``None``."""
    found = _checkpoints(run_dir)
    return found[-1] if found else None


def _check_resume(opts: TrainOptions, sources: Sources, checkpoint: Path) -> dict[str, Any]:
    """Refuse a checkpoint of another model, optimizer or an already-reached step (before any work)."""
    meta = json.loads((checkpoint / CHECKPOINT_META).read_text())
    if meta.get("identity") != sources.identity:
        raise InputError(
            f"the checkpoint {checkpoint} belongs to a run of another model ({_describe(meta.get('identity'))}), "
            f"not {_describe(sources.identity)}; resume with the model it was trained from, or start afresh with --force"
        )
    if bool(meta.get("train_text_encoder", False)) != opts.train_text_encoder:
        flag = "with" if meta.get("train_text_encoder") else "without"
        raise InputError(
            f"the checkpoint {checkpoint} was trained {flag} --train-text-encoder; resume the same way"
        )
    if meta.get("optimizer") != opts.optimizer:
        raise InputError(
            f"the checkpoint {checkpoint} was trained with --optimizer {meta.get('optimizer')}; resume with the same one"
        )
    if int(meta["step"]) >= opts.steps:
        raise InputError(
            f"the checkpoint {checkpoint} is at step {meta['step']} already; pass --steps larger than that to continue"
        )
    return meta


def _check_resume_data(checkpoint: Path, meta: dict[str, Any], cache_key: str) -> None:
    if meta.get("cache_key") != cache_key:
        raise InputError(
            f"the checkpoint {checkpoint} was trained on other data or encoders; resume with the same --data, or start "
            "afresh with --force"
        )


def _describe(identity: Any) -> str:
    if not isinstance(identity, dict):
        return "unknown"
    if "preset" in identity:
        return f"preset {identity['preset']}, seed {identity['seed']}"
    return f"fingerprint {identity.get('fingerprint')}, weights {identity.get('weights')}"


class _DeferredInterrupt:
    """Turn the first Ctrl-C into a flag checked between steps, so a checkpoint is never half a step.

    A second Ctrl-C interrupts immediately. Only the main thread can own signal handlers; elsewhere
    this does nothing.
    """

    def __init__(self) -> None:
        self.hit = False
        self._previous: Any = None

    def __enter__(self) -> _DeferredInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _clear_run_dir(run_dir: Path) -> None:
    """Remove what a run wrote (checkpoints, live log) and the dir if that leaves it empty.

    Never a blanket delete: ``--checkpoint-dir`` may name a directory that holds other files.
    """
    for checkpoint in _checkpoints(run_dir):
        shutil.rmtree(checkpoint, ignore_errors=True)
    (run_dir / LOSS_LOG).unlink(missing_ok=True)
    try:
        run_dir.rmdir()
    except OSError:
        pass  # not empty (the user's own files) or already gone


def _prepare_run_dir(opts: TrainOptions, run_dir: Path, out: Path, inputs: list[Path]) -> Path | None:
    """Check the run dir against the output, the inputs and --resume/--force; return the checkpoint to resume from."""
    resolved = run_dir.expanduser().resolve()
    for path in (out, *inputs):
        other = path.expanduser().resolve()
        if resolved == other or other in resolved.parents:
            raise InputError(
                f"the checkpoint dir {run_dir} is inside {path}; pass a --checkpoint-dir outside the output and inputs"
            )
    if opts.resume:
        latest = latest_checkpoint(run_dir)
        if latest is None:
            raise InputError(
                f"--resume: there is no checkpoint in {run_dir}; start without --resume (or pass --checkpoint-dir)"
            )
        return latest
    if _checkpoints(run_dir) and not opts.force:
        raise InputError(
            f"{run_dir} holds checkpoints of an earlier run; pass --resume to continue it or --force to start over"
        )
    return None


def _build_optimizer(opts: TrainOptions, model: Any) -> Any:
    from sanatool.optim import build_optimizer

    params = [p for p in model.parameters() if p.requires_grad]
    return build_optimizer(opts.optimizer, params, opts.lr, weight_decay=opts.weight_decay)


def _scheduler_settings(components: ModelDir) -> tuple[float, int]:
    path = components.path / "scheduler" / "scheduler_config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read the scheduler config {path}: {err}") from err
    return flow_shift(config), train_timesteps(config)


def prepare_cache(
    opts: TrainOptions, sources: Sources, dataset: ImageDataset, ctx: DistContext, progress: ProgressFn
) -> Any:
    """Build the latent cache on rank 0 (the others wait), then open it everywhere."""
    from sanatool.inference.pipeline import default_instruction

    cache_root = Path(opts.cache_dir).expanduser() if opts.cache_dir else dataset.root / DEFAULT_CACHE_NAME
    settings = EncodeSettings(
        complex_human_instruction=default_instruction(sources.config),
        dtype=resolve_precision(opts.precision, ctx.device.type),
        device=str(ctx.device),
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
    ``KeyboardInterrupt`` after saving a resumable checkpoint.
    """
    validate_options(opts)
    sources = resolve_sources(opts)
    if opts.train_text_encoder:
        from sanatool.inference.pipeline import default_instruction

        if default_instruction(sources.config) is not None:
            raise InputError(
                "--train-text-encoder is for small text encoders trained from scratch (the shapes world); this "
                "model encodes prompts with the complex human instruction of a pretrained Gemma, keep it frozen"
            )
    vae_config = check_components(sources.config, sources.components)
    assert opts.data is not None and opts.out is not None
    dataset = load_dataset(opts.data, opts.resolution)
    factor = vae_scale_factor(vae_config) * int(sources.config.get("patch_size", 1))
    if dataset.resolution % factor:
        raise InputError(
            f"images are {dataset.resolution}px but the VAE and patch size need a multiple of {factor}; "
            f"pass --resolution with a multiple of {factor}"
        )
    out = check_output_path(opts.out, opts.force, [*sources.inputs, dataset.root])
    run_dir = opts.run_dir()
    resume_from = _prepare_run_dir(opts, run_dir, out, [*sources.inputs, dataset.root])
    meta = _check_resume(opts, sources, resume_from) if resume_from is not None else None
    ctx = setup_distributed(opts.device)
    try:
        return _train(opts, sources, dataset, out, run_dir, resume_from, meta, ctx, progress)
    finally:
        ctx.close()


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
) -> dict[str, Any]:
    from sanatool.training.loop import Trainer

    cache = prepare_cache(opts, sources, dataset, ctx, progress)
    cache_key = cache.meta["key"]
    if resume_from is not None and meta is not None:
        _check_resume_data(resume_from, meta, cache_key)
    if ctx.is_main:
        if resume_from is None:
            _clear_run_dir(run_dir)  # --force was given (or the dir held no checkpoints)
        run_dir.mkdir(parents=True, exist_ok=True)
    ctx.barrier()

    if resume_from is not None:
        model = load_transformer(resume_from / "transformer")
    elif sources.parent is not None:
        model = load_transformer(sources.parent.transformer.path)
    else:
        model = init_transformer(sources.config, opts.seed)
    if opts.grad_checkpointing:
        model.enable_gradient_checkpointing()
    text_encoder = None
    if opts.train_text_encoder:
        from sanatool.training.text_encoder import TextConditionedTransformer, load_text_encoder

        text_encoder = load_text_encoder(resume_from if resume_from is not None else sources.components.path)
        model = TextConditionedTransformer(model, text_encoder)
    model.to(ctx.device).train()
    wrapped = wrap_model(model, ctx, opts.fsdp)
    optimizer = _build_optimizer(opts, model)
    shift, train_timesteps = _scheduler_settings(sources.components)
    null = cache.null_embedding()
    trainer = Trainer(
        opts,
        ctx,
        model,
        wrapped,
        optimizer,
        cache.reader(),
        null,
        shift,
        train_timesteps,
        float(sources.config.get("timestep_scale", 1.0)),
    )
    live_log = run_dir / LOSS_LOG
    if resume_from is not None and meta is not None:
        state = load_state(resume_from)
        load_optimizer_state(wrapped, optimizer, state["optimizer"], ctx, opts.fsdp)
        trainer.load_random_state(state["random"])
        if trainer.ema is not None:
            if state.get("ema") is None:
                raise InputError(f"the checkpoint {resume_from} has no EMA weights; resume without --ema")
            trainer.ema.load_state_dict(state["ema"])
            trainer.ema.to(ctx.device)
        trainer.step_count = int(meta["step"])
        if ctx.is_main:
            shutil.copyfile(resume_from / LOSS_LOG, live_log)
            log.info("resuming from %s (step %d of %d)", resume_from, trainer.step_count, opts.steps)
    elif ctx.is_main:
        live_log.write_text("")

    def write_output(root: Path, weights: dict[str, Any], dtype: str, summary: str) -> None:
        """A full pipeline dir: carried components, the transformer (and a trained text encoder)."""
        text_state = None
        if text_encoder is not None:
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

            write_text_encoder(root, text_encoder, text_state, dtype)

    def save_checkpoint() -> Path:
        step = trainer.step_count
        weights = full_state_dict(wrapped, ctx, opts.fsdp)
        opt_state = full_optimizer_state(wrapped, optimizer, ctx, opts.fsdp)
        target = run_dir / f"{CHECKPOINT_PREFIX}{step:08d}"
        if ctx.is_main:
            with atomic_output_dir(target, force=True) as tmp:
                write_output(tmp, weights, "fp32", f"{opts.command}(step {step}/{opts.steps})")
                save_state(
                    tmp,
                    {
                        "optimizer": opt_state,
                        "random": trainer.random_state(),
                        "ema": trainer.ema.state_dict() if trainer.ema is not None else None,
                    },
                )
                shutil.copyfile(live_log, tmp / LOSS_LOG)
                record = {
                    "step": step,
                    "identity": sources.identity,
                    "optimizer": opts.optimizer,
                    "train_text_encoder": opts.train_text_encoder,
                    "cache_key": cache_key,
                    "global_batch": opts.batch_size * opts.grad_accum * ctx.world_size,
                }
                (tmp / CHECKPOINT_META).write_text(json.dumps(record, indent=2) + "\n")
            for old in _checkpoints(run_dir)[: -opts.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        ctx.barrier()
        return target

    global_batch = opts.batch_size * opts.grad_accum * ctx.world_size
    start_step = trainer.step_count
    started = time.perf_counter()
    losses: list[float] = []
    progress("train", start_step, opts.steps)
    with _DeferredInterrupt() as interrupt:
        while trainer.step_count < opts.steps:
            result = trainer.step()
            if not result.finite:
                latest = latest_checkpoint(run_dir)
                where = (
                    f"the last good checkpoint is {latest}; continue from it with --resume and a lower --lr"
                    if latest
                    else "no checkpoint was saved yet (use --save-every N to keep some)"
                )
                raise RunFailure(
                    f"the loss became {result.loss:g} (gradient norm {result.grad_norm:g}) at step {result.step}; "
                    f"training stopped and {out} was not written; {where}"
                )
            losses.append(result.loss)
            elapsed = time.perf_counter() - started
            rate = (trainer.step_count - start_step) / max(elapsed, 1e-9)
            if ctx.is_main:
                append_log(
                    live_log,
                    {
                        "step": result.step,
                        "loss": result.loss,
                        "grad_norm": result.grad_norm,
                        "lr": result.lr,
                        "elapsed_s": round(elapsed, 3),
                    },
                )
            progress(
                "train",
                trainer.step_count,
                opts.steps,
                loss=f"{result.loss:.4f}",
                lr=f"{result.lr:.2e}",
                speed=f"{rate:.2f} steps/s",
            )
            interrupted = ctx.broadcast_object(interrupt.hit) if ctx.distributed else interrupt.hit
            if interrupted:
                saved = save_checkpoint()
                if ctx.is_main:
                    log.warning(
                        "interrupted at step %d: saved a resumable checkpoint in %s; continue with the same command "
                        "and --resume",
                        trainer.step_count,
                        saved,
                    )
                raise KeyboardInterrupt
            if (
                opts.save_every
                and trainer.step_count % opts.save_every == 0
                and trainer.step_count < opts.steps
            ):
                save_checkpoint()
    seconds = time.perf_counter() - started

    weights = trainer.final_weights() or full_state_dict(wrapped, ctx, opts.fsdp)
    out_dtype = opts.dtype or (stored_dtype(sources.parent) if sources.parent is not None else "fp32")
    if ctx.is_main:
        records = read_log(live_log)
        with atomic_output_dir(out, force=opts.force, inputs=[*sources.inputs, dataset.root]) as tmp:
            detail = ", text encoder trained" if opts.train_text_encoder else ""
            summary = f"{opts.command}({opts.preset + ', ' if opts.preset else ''}{opts.steps} steps{detail})"
            write_output(tmp, weights, out_dtype, summary)
            shutil.copyfile(live_log, tmp / LOSS_LOG)
            plot_loss(records, tmp / LOSS_CURVE, title=f"{opts.command}: {out.name}")
        if not opts.save_every:
            _clear_run_dir(run_dir)
    ctx.barrier()
    return {
        "out": str(out),
        "command": opts.command,
        "steps": opts.steps,
        "resumed_from_step": start_step if resume_from is not None else None,
        "final_loss": losses[-1] if losses else None,
        "mean_loss_last_10": sum(losses[-10:]) / len(losses[-10:]) if losses else None,
        "seconds": round(seconds, 2),
        "steps_per_s": round((opts.steps - start_step) / max(seconds, 1e-9), 3),
        "global_batch": global_batch,
        "world_size": ctx.world_size,
        "optimizer": opts.optimizer,
        "ema": opts.ema_decay is not None,
        "cache": str(cache.path.resolve()),
        "checkpoints": str(run_dir.resolve()) if opts.save_every else None,
    }
