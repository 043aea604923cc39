"""Training checkpoints and the run dir that holds them.

A run dir (``OUT.checkpoints`` unless ``--checkpoint-dir``) holds the live loss log
(``loss.jsonl``, one line per step) and checkpoints named ``step-NNNNNNNN``. Each checkpoint is a
complete pipeline dir with fp32 weights, so it loads like any model; beside the weights it holds
the resumable state (optimizer, data order and random numbers, EMA; see
:mod:`~sanatool.training.state`), the loss log up to its step, and ``checkpoint.json``: the step
and what the run was (model identity, optimizer, ``--train-text-encoder``, latent cache key,
global batch). A checkpoint is written atomically and ``checkpoint.json`` is part of it, so a dir
without one is not a checkpoint. Only the newest ``--keep-checkpoints`` are kept.

Resume: ``--resume`` continues from the newest checkpoint. :func:`check_resume` refuses one of
another model, optimizer or text-encoder setting, or one already at ``--steps``, before any work;
:func:`check_resume_data` refuses one trained on other data once the latent cache is known.
Without ``--resume``, a run dir holding checkpoints is cleared only with ``--force``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sanatool.errors import InputError
from sanatool.io.jsonl import read_json_object
from sanatool.io.outputs import atomic_output_dir
from sanatool.training.distributed import full_optimizer_state, full_state_dict
from sanatool.training.logs import LOSS_LOG
from sanatool.training.options import TrainOptions
from sanatool.training.state import save_state

if TYPE_CHECKING:
    from sanatool.training.loop import Trainer

CHECKPOINT_PREFIX = "step-"
CHECKPOINT_META = "checkpoint.json"

WriteModel = Callable[[Path, dict[str, Any], str, str], None]
"""Writes a pipeline dir: ``(root, weights, dtype, summary)``."""


_DAMAGED = "delete it or pass --force to start over"


def _step_of(path: Path) -> int | None:
    number = path.name[len(CHECKPOINT_PREFIX) :]
    return int(number) if number.isascii() and number.isdigit() else None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The complete checkpoints in a run dir, oldest first (none if the dir does not exist).

    Only ``step-NUMBER`` dirs with a ``checkpoint.json`` count; :func:`check_run_dir` refuses others.
    """
    if not run_dir.is_dir():
        return []
    found = [
        p
        for p in run_dir.glob(f"{CHECKPOINT_PREFIX}*")
        if p.is_dir() and (p / CHECKPOINT_META).is_file() and _step_of(p) is not None
    ]
    return sorted(found, key=lambda p: _step_of(p) or 0)


def check_run_dir(run_dir: Path) -> None:
    """Refuse a run dir holding a ``step-*`` entry that is not a checkpoint this tool wrote."""
    if not run_dir.is_dir():
        return
    for path in sorted(run_dir.glob(f"{CHECKPOINT_PREFIX}*")):
        if _step_of(path) is None or not path.is_dir():
            raise InputError(f"{path} is not a checkpoint (a step-NUMBER dir); {_DAMAGED}")


def read_checkpoint_meta(checkpoint: Path) -> dict[str, Any]:
    """A checkpoint's ``checkpoint.json``, checked: its ``step`` is the number in the dir's name."""
    meta = read_json_object(checkpoint / CHECKPOINT_META, "checkpoint record", hint=_DAMAGED)
    step = meta.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step != _step_of(checkpoint):
        raise InputError(
            f"{checkpoint / CHECKPOINT_META} has no step matching its dir ({step!r}); {_DAMAGED}"
        )
    return meta


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint in a run dir, or ``None``."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


#: Options that shape the run after the checkpoint (its random stream, batches, schedule, loss): a
#: resumed run must keep them, or it silently continues as another run would not. ``--steps`` may grow.
RESUME_SETTINGS = (
    "seed",
    "batch_size",
    "grad_accum",
    "lr",
    "lr_schedule",
    "warmup_steps",
    "weight_decay",
    "caption_dropout",
    "weighting_scheme",
    "logit_mean",
    "logit_std",
    "mode_scale",
    "ema_decay",
    "max_grad_norm",
    "aspect_buckets",
    "lora_rank",
    "lora_alpha",
    "lora_targets",
    "lora_dropout",
    "base_precision",
    "distill_weight",
)


def _settings(opts: TrainOptions) -> dict[str, Any]:
    # Tuples as lists: what the checkpoint's JSON gives back.
    values = {name: getattr(opts, name) for name in RESUME_SETTINGS}
    return {name: list(v) if isinstance(v, tuple) else v for name, v in values.items()}


def check_resume(opts: TrainOptions, identity: dict[str, Any], checkpoint: Path) -> dict[str, Any]:
    """Refuse a checkpoint of another model, optimizer or an already-reached step (before any work).

    ``identity`` is the model the run starts from; returns the checkpoint's ``checkpoint.json``.
    """
    meta = read_checkpoint_meta(checkpoint)
    recorded_identity = meta.get("identity")
    if isinstance(recorded_identity, dict) and recorded_identity.get("teacher") != identity.get("teacher"):
        how = "with another --teacher" if identity.get("teacher") else "with --teacher"
        if not recorded_identity.get("teacher"):
            how = "without --teacher"
        raise InputError(
            f"the checkpoint {checkpoint} was trained {how}; resume with the teacher it was trained with, or "
            "start afresh with --force"
        )
    if recorded_identity != identity:
        raise InputError(
            f"the checkpoint {checkpoint} belongs to a run of another model ({_describe(meta.get('identity'))}), "
            f"not {_describe(identity)}; resume with the model it was trained from, or start afresh with --force"
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
    recorded = meta.get("settings")
    if isinstance(recorded, dict):  # checkpoints of earlier versions lack it
        changed = [
            f"--{name.replace('_', '-')} {recorded.get(name)} → {value}"
            for name, value in _settings(opts).items()
            if name in recorded and recorded[name] != value
        ]
        if changed:
            raise InputError(
                f"the checkpoint {checkpoint} was trained with other settings ({'; '.join(changed)}); resume with "
                "the same ones, or start afresh with --force"
            )
    if int(meta["step"]) >= opts.steps:
        raise InputError(
            f"the checkpoint {checkpoint} is at step {meta['step']} already; pass --steps larger than that to continue"
        )
    return meta


def check_resume_data(checkpoint: Path, meta: dict[str, Any], cache_key: str) -> None:
    """Refuse a checkpoint trained on other data or encoders than the latent cache keyed ``cache_key``.

    Separate from :func:`check_resume` because the key is known only once the cache is built.
    """
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


def clear_run_dir(run_dir: Path) -> None:
    """Remove what a run wrote (checkpoints, live log) and the dir if that leaves it empty.

    Never a blanket delete: ``--checkpoint-dir`` may name a directory that holds other files.
    """
    for checkpoint in list_checkpoints(run_dir):
        shutil.rmtree(checkpoint, ignore_errors=True)
    (run_dir / LOSS_LOG).unlink(missing_ok=True)
    try:
        run_dir.rmdir()
    except OSError:
        pass  # not empty (the user's own files) or already gone


def prepare_run_dir(opts: TrainOptions, run_dir: Path, out: Path, inputs: list[Path]) -> Path | None:
    """Check the run dir against the output, the inputs and --resume/--force; return the checkpoint to resume from."""
    resolved = run_dir.expanduser().resolve()
    for path in (out, *inputs):
        other = path.expanduser().resolve()
        if resolved == other or other in resolved.parents:
            raise InputError(
                f"the checkpoint dir {run_dir} is inside {path}; pass a --checkpoint-dir outside the output and inputs"
            )
    if opts.resume or not opts.force:  # --force alone starts over; with --resume it only replaces the output
        check_run_dir(run_dir)
    if opts.resume:
        latest = latest_checkpoint(run_dir)
        if latest is None:
            raise InputError(
                f"--resume: there is no checkpoint in {run_dir}; start without --resume (or pass --checkpoint-dir)"
            )
        return latest
    if list_checkpoints(run_dir) and not opts.force:
        raise InputError(
            f"{run_dir} holds checkpoints of an earlier run; pass --resume to continue it or --force to start over"
        )
    return None


@dataclass(frozen=True)
class CheckpointPlan:
    """What every checkpoint of one run shares; :func:`save_checkpoint` adds the step and the live state."""

    opts: TrainOptions
    run_dir: Path
    identity: dict[str, Any]
    cache_key: str
    write_model: WriteModel
    #: The weights a checkpoint keeps, from the (wrapped) model; default: the full state dict.
    weights: Callable[[Any], dict[str, Any]] | None = None


def _record(plan: CheckpointPlan, step: int, world_size: int) -> dict[str, Any]:
    # What check_resume and check_resume_data read back; global_batch is for people reading it.
    opts = plan.opts
    return {
        "step": step,
        "identity": plan.identity,
        "optimizer": opts.optimizer,
        "train_text_encoder": opts.train_text_encoder,
        "cache_key": plan.cache_key,
        "settings": _settings(opts),
        "global_batch": opts.batch_size * opts.grad_accum * world_size,
    }


def save_checkpoint(plan: CheckpointPlan, trainer: Trainer) -> Path:
    """Save the trainer's current step as a checkpoint in the run dir and drop the oldest beyond the limit.

    Every rank must call it (the weights and optimizer state are gathered from all of them); rank 0
    writes. Returns the checkpoint's path.
    """
    opts, ctx = plan.opts, trainer.ctx
    step = trainer.step_count
    if plan.weights is not None:
        weights = plan.weights(trainer.wrapped)
    else:
        weights = full_state_dict(trainer.wrapped, ctx, opts.fsdp)
    opt_state = full_optimizer_state(trainer.wrapped, trainer.optimizer, ctx, opts.fsdp)
    target = plan.run_dir / f"{CHECKPOINT_PREFIX}{step:08d}"
    if ctx.is_main:
        with atomic_output_dir(target, force=True) as tmp:
            plan.write_model(tmp, weights, "fp32", f"{opts.command}(step {step}/{opts.steps})")
            save_state(
                tmp,
                {
                    "optimizer": opt_state,
                    "random": trainer.random_state(),
                    "ema": trainer.ema.state_dict() if trainer.ema is not None else None,
                },
            )
            shutil.copyfile(plan.run_dir / LOSS_LOG, tmp / LOSS_LOG)
            (tmp / CHECKPOINT_META).write_text(
                json.dumps(_record(plan, step, ctx.world_size), indent=2) + "\n"
            )
        for old in list_checkpoints(plan.run_dir)[: -opts.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
    ctx.barrier()
    return target
