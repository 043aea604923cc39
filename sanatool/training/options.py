"""The settings of a training run, validated before anything is loaded or written."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sanatool.errors import InputError
from sanatool.io.safetensors import DEFAULT_MAX_SHARD_SIZE

PRECISIONS = ("auto", "bf16", "fp32")
#: The frozen base of a LoRA fine-tune (``--base-precision``); int8 and nf4 are bitsandbytes, CUDA only.
BASE_PRECISIONS = ("bf16", "int8", "nf4")
#: The linears adapted when ``--lora-targets`` is not given: the attention projections, as diffusers'
#: SANA LoRA script (``train_dreambooth_lora_sana.py``) adapts by default.
DEFAULT_LORA_TARGETS = ("to_k", "to_q", "to_v")
LR_SCHEDULES = ("constant", "cosine")
#: diffusers' timestep densities (``compute_density_for_timestep_sampling``); ``none`` is uniform.
WEIGHTING_SCHEMES = ("logit_normal", "mode", "uniform", "sigma_sqrt", "cosmap")
#: Where ``--report-to`` sends the training scalars besides the loss log.
REPORT_TO = ("none", "tensorboard")
CHECKPOINTS_SUFFIX = ".checkpoints"


@dataclass
class TrainOptions:
    """Everything ``train`` and ``finetune`` take. Exactly one of ``source`` and ``preset`` is set.

    ``batch_size`` is per process and micro-step; the global batch is
    ``batch_size × grad_accum × world size``.
    """

    data: Path | None
    out: Path | None
    steps: int
    source: str | None = None
    preset: str | None = None
    components: str | None = None
    optimizer: str = "came8bit"
    lr: float | None = None
    weight_decay: float = 0.0
    batch_size: int = 4
    grad_accum: int = 1
    precision: str = "auto"
    grad_checkpointing: bool = False
    save_every: int = 0
    keep_checkpoints: int = 2
    resume: bool = False
    seed: int = 0
    cache_dir: Path | None = None
    checkpoint_dir: Path | None = None
    resolution: int | None = None
    aspect_buckets: bool = False  # SANA's aspect-ratio bins at ``resolution`` instead of square crops
    # Sampled every ``validation_every`` steps and at the end into RUN_DIR/validation/.
    validation_prompts: Path | None = None
    validation_every: int = 0
    report_to: str = "none"  # or "tensorboard": scalars into RUN_DIR/tensorboard
    caption_dropout: float = 0.1
    weighting_scheme: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    ema_decay: float | None = None
    max_grad_norm: float = 1.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    fsdp: bool = False
    train_text_encoder: bool = False
    device: str = "auto"
    dtype: str | None = None
    max_shard_size: str = DEFAULT_MAX_SHARD_SIZE
    variant: str | None = None  # the weight files to read (--variant), see ``open_model_dir``
    force: bool = False
    allow_pickle: bool = False
    # LoRA (``--lora-rank`` and friends): only the adapters train; ``merge`` writes a whole model dir.
    lora_rank: int | None = None
    lora_alpha: float | None = None
    lora_targets: tuple[str, ...] | None = None
    lora_dropout: float = 0.0
    merge: bool = False
    base_precision: str | None = None
    # Distillation (``--teacher``): loss = (1 − w)·flow-matching loss + w·‖v_student − v_teacher‖².
    teacher: Path | None = None
    distill_weight: float | None = None

    @property
    def command(self) -> str:
        return "train" if self.preset is not None else "finetune"

    def run_dir(self) -> Path:
        """Where checkpoints and the live loss log go: ``--checkpoint-dir`` or ``OUT.checkpoints``."""
        if self.checkpoint_dir is not None:
            return Path(self.checkpoint_dir).expanduser()
        assert self.out is not None
        out = Path(self.out).expanduser()
        return out.parent / f"{out.name}{CHECKPOINTS_SUFFIX}"

    def recorded(self) -> dict[str, Any]:
        """The options as provenance records them (paths as strings, bookkeeping dropped)."""
        record = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
        for key in ("force", "resume", "device", "allow_pickle"):
            record.pop(key, None)
        return record


def default_lr(optimizer: str, command: str) -> float:
    """The peak learning rate used when none is given: 5e-4 to train, and for a fine-tune by optimizer.

    CAME, like its reference implementation, does not bias-correct its confidence statistic, so over
    its first few hundred steps each step is about ten times AdamW's at the same rate. A short
    fine-tune of a trained model at AdamW's 1e-4 wrecks it (the tiny model's loss went 0.19 → 1.1 in
    40 steps); 1e-5 trains as AdamW at 1e-4 does.
    """
    if command == "train":
        return 5e-4
    return 1e-5 if optimizer.startswith("came") else 1e-4


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an integer ≥ {minimum}, got {value!r}")


def _finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value!r}")


def validate_options(opts: TrainOptions, dry_run: bool = False) -> None:
    """Refuse impossible settings with one actionable message each (nothing has been touched yet).

    Fills ``lr`` with :func:`default_lr` when it is unset, so provenance records the rate used.
    """
    from sanatool.optim import OPTIMIZER_NAMES

    if (opts.source is None) == (opts.preset is None):
        raise InputError("give either a model dir to fine-tune or --preset to train from scratch, not both")
    _positive_int("--steps", opts.steps)
    _positive_int("--batch-size", opts.batch_size)
    _positive_int("--grad-accum", opts.grad_accum)
    _positive_int("--save-every", opts.save_every, minimum=0)
    _positive_int("--keep-checkpoints", opts.keep_checkpoints)
    _positive_int("--warmup-steps", opts.warmup_steps, minimum=0)
    if opts.optimizer not in OPTIMIZER_NAMES:
        raise InputError(f"unknown optimizer {opts.optimizer!r}; choose one of: {', '.join(OPTIMIZER_NAMES)}")
    if opts.lr is None:
        opts.lr = default_lr(opts.optimizer, opts.command)
    for name, value in (
        ("--lr", opts.lr),
        ("--weight-decay", opts.weight_decay),
        ("--caption-dropout", opts.caption_dropout),
        ("--max-grad-norm", opts.max_grad_norm),
        ("--logit-mean", opts.logit_mean),
        ("--logit-std", opts.logit_std),
        ("--mode-scale", opts.mode_scale),
    ):
        _finite(name, value)
    if opts.lr <= 0:
        raise InputError(f"--lr must be positive, got {opts.lr}")
    if opts.weight_decay < 0:
        raise InputError(f"--weight-decay must be ≥ 0, got {opts.weight_decay}")
    if not 0 <= opts.caption_dropout < 1:
        raise InputError(f"--caption-dropout must be in [0, 1), got {opts.caption_dropout}")
    if opts.logit_std <= 0:
        raise InputError(f"--logit-std must be positive, got {opts.logit_std}")
    if opts.ema_decay is not None and not 0 < opts.ema_decay < 1:
        raise InputError(f"--ema must be a decay in (0, 1), e.g. 0.999; got {opts.ema_decay}")
    if opts.ema_decay is not None and opts.fsdp:
        raise InputError("--ema with --fsdp is not supported (EMA keeps a full copy); drop one of them")
    if opts.train_text_encoder and opts.fsdp:
        raise InputError(
            "--train-text-encoder with --fsdp is not supported (FSDP shards the transformer alone)"
        )
    if opts.lr_schedule not in LR_SCHEDULES:
        raise InputError(
            f"unknown --lr-schedule {opts.lr_schedule!r}; choose one of: {', '.join(LR_SCHEDULES)}"
        )
    if opts.precision not in PRECISIONS:
        raise InputError(f"unknown precision {opts.precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if opts.weighting_scheme not in WEIGHTING_SCHEMES:
        raise InputError(
            f"unknown weighting scheme {opts.weighting_scheme!r}; choose one of: {', '.join(WEIGHTING_SCHEMES)}"
        )
    _validate_lora_and_teacher(opts)
    _validate_reporting(opts)
    if opts.dtype is not None:
        from sanatool.arch import check_dtype

        check_dtype(opts.dtype)
    if not dry_run:
        if opts.data is None:
            raise InputError("--data is required: an image folder with metadata.jsonl")
        if opts.out is None:
            raise InputError("--out is required: where the trained model dir goes")


def _validate_lora_and_teacher(opts: TrainOptions) -> None:
    """LoRA, base-precision and distillation settings; fills their defaults (alpha = rank, w = 1)."""
    lora_only = {
        "--lora-alpha": opts.lora_alpha is not None,
        "--lora-targets": opts.lora_targets is not None,
        "--lora-dropout": opts.lora_dropout != 0.0,
        "--merge": opts.merge,
    }
    if opts.lora_rank is None:
        given = [name for name, set_ in lora_only.items() if set_]
        if given:
            raise InputError(f"{given[0]} needs --lora-rank R (it only applies to a LoRA fine-tune)")
        if opts.base_precision in ("int8", "nf4"):
            raise InputError(
                f"--base-precision {opts.base_precision} needs --lora-rank R: a quantized base is frozen,"
                " so only adapters can train"
            )
    else:
        _positive_int("--lora-rank", opts.lora_rank)
        if opts.command == "train":
            raise InputError("--lora-rank needs a trained model to adapt: use `finetune MODEL_DIR`")
        if opts.lora_alpha is None:
            opts.lora_alpha = float(opts.lora_rank)
        _finite("--lora-alpha", opts.lora_alpha)
        if opts.lora_alpha <= 0:
            raise InputError(f"--lora-alpha must be positive, got {opts.lora_alpha}")
        _finite("--lora-dropout", opts.lora_dropout)
        if not 0 <= opts.lora_dropout < 1:
            raise InputError(f"--lora-dropout must be in [0, 1), got {opts.lora_dropout}")
        if opts.lora_targets is None:
            opts.lora_targets = DEFAULT_LORA_TARGETS
        if not opts.lora_targets or any(not t.strip() for t in opts.lora_targets):
            raise InputError("--lora-targets must name module names, comma-separated, e.g. to_q,to_k,to_v")
    if opts.base_precision is not None and opts.base_precision not in BASE_PRECISIONS:
        raise InputError(
            f"unknown --base-precision {opts.base_precision!r}; choose one of: {', '.join(BASE_PRECISIONS)}"
        )
    if opts.teacher is None:
        if opts.distill_weight is not None:
            raise InputError("--distill-weight needs --teacher MODEL_DIR")
    else:
        if opts.command == "train":
            raise InputError("--teacher distils into a model being fine-tuned: use `finetune MODEL_DIR`")
        if opts.distill_weight is None:
            opts.distill_weight = 1.0
        _finite("--distill-weight", opts.distill_weight)
        if not 0 < opts.distill_weight <= 1:
            raise InputError(f"--distill-weight must be in (0, 1], got {opts.distill_weight}")


def _validate_reporting(opts: TrainOptions) -> None:
    """``--validation-prompts``/``--validation-every`` and ``--report-to`` (the prompts file is read later)."""
    _positive_int("--validation-every", opts.validation_every, minimum=0)
    if opts.validation_every and opts.validation_prompts is None:
        raise InputError("--validation-every N needs --validation-prompts FILE (the prompts to sample)")
    if opts.report_to not in REPORT_TO:
        raise InputError(f"unknown --report-to {opts.report_to!r}; choose one of: {', '.join(REPORT_TO)}")
