"""``train``, ``finetune`` and ``train-vae``: flow-matching training, and the tiny pipeline's VAE."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from sanatool.cli._app import app, bold, emit, make_console, progress_bar
from sanatool.cli.options import (
    ALLOW_PICKLE,
    DEVICE,
    FORCE,
    JSON,
    MAX_SHARD_SIZE,
    VARIANT,
    Opt,
    check_dtype_option,
    refuse_existing_output,
    seed_option,
    with_options,
)

# ``train`` and ``finetune``: every TrainOptions field both commands take (names are its fields).
TRAINING_OPTIONS = (
    Opt(
        "data",
        Path | None,
        typer.Option(
            None, "--data", "-d", help="Image folder with metadata.jsonl (file_name, text per line)."
        ),
    ),
    Opt(
        "out",
        Path | None,
        typer.Option(None, "--out", "-o", help="Output pipeline dir (must not exist unless --force)."),
    ),
    Opt("steps", int, typer.Option(100, "--steps", help="Optimizer steps to train.")),
    Opt("weight_decay", float, typer.Option(0.0, "--weight-decay", help="Decoupled weight decay.")),
    Opt("batch_size", int, typer.Option(4, "--batch-size", "-b", help="Images per process per micro-step.")),
    Opt(
        "grad_accum",
        int,
        typer.Option(1, "--grad-accum", help="Micro-steps per optimizer step (gradient accumulation)."),
    ),
    Opt(
        "precision",
        str,
        typer.Option("auto", "--precision", help="bf16 (autocast, fp32 master weights), fp32, or auto."),
    ),
    Opt(
        "grad_checkpointing",
        bool,
        typer.Option(False, "--grad-checkpointing", help="Recompute block activations in backward."),
    ),
    Opt(
        "save_every",
        int,
        typer.Option(0, "--save-every", help="Save a resumable checkpoint every N steps (0: never)."),
    ),
    Opt(
        "keep_checkpoints",
        int,
        typer.Option(2, "--keep-checkpoints", help="How many of the newest checkpoints to keep."),
    ),
    Opt(
        "resume",
        bool,
        typer.Option(False, "--resume", help="Continue bit for bit from the newest checkpoint of this run."),
    ),
    Opt(
        "seed",
        int,
        seed_option("Seed of data order, noise, timesteps and caption dropout."),
    ),
    Opt(
        "cache_dir",
        Path | None,
        typer.Option(
            None,
            "--cache-dir",
            help="Latent/text-embedding cache (default: $XDG_CACHE_HOME/sanatool or ~/.cache/sanatool); "
            "not inside an input.",
        ),
    ),
    Opt(
        "checkpoint_dir",
        Path | None,
        typer.Option(
            None, "--checkpoint-dir", help="Checkpoints and live loss log (default: OUT.checkpoints)."
        ),
    ),
    Opt(
        "resolution",
        int | None,
        typer.Option(None, "--resolution", help="Resize and centre-crop every image to N×N."),
    ),
    Opt(
        "aspect_buckets",
        bool,
        typer.Option(
            False,
            "--aspect-buckets",
            help="Train each image at the nearest of SANA's aspect-ratio bins (scaled to --resolution, else the "
            "model's size), resized to cover and centre-cropped; each batch from one bin.",
        ),
    ),
    Opt(
        "validation_prompts",
        Path | None,
        typer.Option(
            None,
            "--validation-prompts",
            help="Prompts file (.txt or .jsonl) sampled with fixed seeds into RUN_DIR/validation/step-N.png.",
        ),
    ),
    Opt(
        "validation_every",
        int,
        typer.Option(
            0, "--validation-every", help="Sample the validation prompts every N steps (0: at the end only)."
        ),
    ),
    Opt(
        "report_to",
        str,
        typer.Option(
            "none",
            "--report-to",
            help="none, or tensorboard: loss, lr, grad norm, step time into RUN_DIR/tensorboard "
            "(pip install 'sanatool[tensorboard]').",
        ),
    ),
    Opt(
        "caption_dropout",
        float,
        typer.Option(0.1, "--caption-dropout", help="Probability of training on the empty caption (CFG)."),
    ),
    Opt(
        "weighting_scheme",
        str,
        typer.Option(
            "logit_normal",
            "--weighting-scheme",
            help="Timestep density: logit_normal, mode, uniform, sigma_sqrt, cosmap.",
        ),
    ),
    Opt(
        "logit_mean",
        float,
        typer.Option(0.0, "--logit-mean", help="Mean of the logit-normal timestep density."),
    ),
    Opt(
        "logit_std", float, typer.Option(1.0, "--logit-std", help="Std of the logit-normal timestep density.")
    ),
    Opt(
        "ema_decay",
        float | None,
        typer.Option(
            None, "--ema", help="Keep EMA weights with this decay (e.g. 0.999); the output gets them."
        ),
    ),
    Opt(
        "max_grad_norm", float, typer.Option(1.0, "--max-grad-norm", help="Gradient clipping norm (0: off).")
    ),
    Opt("warmup_steps", int, typer.Option(0, "--warmup-steps", help="Linear learning-rate warm-up steps.")),
    Opt(
        "lr_schedule",
        str,
        typer.Option("constant", "--lr-schedule", help="After warm-up: constant, or cosine decay to 10%."),
    ),
    Opt("fsdp", bool, typer.Option(False, "--fsdp", help="Shard the model with FSDP2 (under torchrun).")),
    Opt(
        "train_text_encoder",
        bool,
        typer.Option(
            False,
            "--train-text-encoder",
            help="Train the (small, from-scratch) text encoder with the transformer; the output gets it.",
        ),
    ),
    Opt("device", str, DEVICE),
    Opt("allow_pickle", bool, ALLOW_PICKLE),
    Opt(
        "dtype",
        str | None,
        typer.Option(
            None,
            "--dtype",
            help="Output weights: fp32, bf16, fp16 (default: the input's; fp32 for train).",
            callback=check_dtype_option,
        ),
    ),
    Opt("max_shard_size", str, MAX_SHARD_SIZE),
    Opt("variant", str | None, VARIANT),
    Opt(
        "dry_run",
        bool,
        typer.Option(False, "--dry-run", help="Print the memory budget per device and exit (needs no data)."),
    ),
    Opt(
        "force",
        bool,
        typer.Option(False, "--force", help="Replace an existing output (and a finished run's checkpoints)."),
    ),
    Opt("as_json", bool, JSON),
)


def _lora_targets(value: str | None) -> tuple[str, ...] | None:
    """``--lora-targets to_q,to_k`` → ``("to_q", "to_k")`` (an empty name is refused by the options check)."""
    return None if value is None else tuple(part.strip() for part in value.split(","))


# ``finetune`` only: a LoRA fine-tune (TrainOptions' LoRA fields).
LORA_OPTIONS = (
    Opt(
        "lora_rank",
        int | None,
        typer.Option(
            None,
            "--lora-rank",
            help="Train LoRA adapters of this rank (the base stays frozen) instead of every weight.",
        ),
    ),
    Opt(
        "lora_alpha", float | None, typer.Option(None, "--lora-alpha", help="LoRA alpha (default: the rank).")
    ),
    Opt(
        "lora_targets",
        str | None,
        typer.Option(
            None,
            "--lora-targets",
            help="Modules to adapt, comma-separated (default: to_q,to_k,to_v; e.g. add to_out.0,conv_inverted).",
            callback=_lora_targets,
        ),
    ),
    Opt(
        "lora_dropout", float, typer.Option(0.0, "--lora-dropout", help="Dropout on the LoRA branch's input.")
    ),
    Opt(
        "merge",
        bool,
        typer.Option(
            False, "--merge", help="Write a whole model dir with the adapters merged, not the LoRA file."
        ),
    ),
    Opt(
        "base_precision",
        str | None,
        typer.Option(
            None,
            "--base-precision",
            help="Hold the frozen base in bf16, or int8/nf4 (bitsandbytes, CUDA only); adapters stay fp32.",
        ),
    ),
)


def _run(shared: dict[str, Any], **command_options: Any) -> None:
    """Build the run's options from the shared set and the command's own, then dry-run or train."""
    from sanatool.training.options import TrainOptions

    dry_run, as_json = shared.pop("dry_run"), shared.pop("as_json")
    if not dry_run:
        refuse_existing_output(shared["out"], shared["force"])
    opts = TrainOptions(**shared, **command_options)
    if dry_run:
        _dry_run(opts, as_json)
        return
    from sanatool.distributed import is_main_process
    from sanatool.training.run import run_training

    # Under torchrun only rank 0 draws progress and prints the result.
    main_rank = is_main_process()
    with progress_bar(quiet=not main_rank) as progress:
        result = run_training(opts, progress=progress)
    if main_rank:
        emit(result if as_json else result["out"], as_json=as_json)


def _dry_run(opts: Any, as_json: bool) -> None:
    from rich.table import Table

    from sanatool.formatting import human_bytes, human_count
    from sanatool.training.dry_run import dry_run_budget

    budget = dry_run_budget(opts)
    if as_json:
        emit(budget.to_json(), as_json=True)
        return
    settings = budget.settings
    lora = (
        f", LoRA rank {settings['lora_rank']} ({human_count(settings['trained_params'])} trained)"
        if settings["mode"] == "lora"
        else ""
    )
    title = (
        f"memory per device: {human_count(settings['params'])} params{lora}, batch {settings['batch_size']}, "
        f"{settings['latent_side']}×{settings['latent_side']} latents, {settings['optimizer']}, {settings['precision']}"
        + (", grad checkpointing" if settings["grad_checkpointing"] else "")
    )
    table = Table(title=title, title_justify="left")
    table.add_column("item")
    table.add_column("memory", justify="right")
    for name, value in budget.rows.items():
        table.add_row(name, human_bytes(value))
    phased = budget.forward_only or budget.backward_only
    table.add_row(bold("total (peak)" if phased else "total"), bold(human_bytes(budget.total)))
    fits = ", ".join(f"{size}: {'yes' if ok else 'no'}" for size, ok in budget.fits().items())
    note = " The peak holds autocast's forward copies or the gradients, never both." if phased else ""
    table.caption = f"fits (with ~1.5 GB for CUDA context and buffers): {fits}.{note}"
    # The budget is this command's result, so the table goes to stdout.
    make_console().print(table)


@app.command()
@with_options(*TRAINING_OPTIONS, *LORA_OPTIONS)
def finetune(
    model: str = typer.Argument(..., help="Pipeline dir to fine-tune, or builtin:tiny-shapes."),
    *,
    shared: dict[str, Any],
    optimizer: str = typer.Option("came8bit", "--optimizer", help="came8bit, came, adamw, adamw8bit."),
    lr: float | None = typer.Option(
        None,
        "--lr",
        help="Peak learning rate (default: 1e-5 with came/came8bit, whose early steps are ~10x AdamW's; 1e-4 otherwise).",
    ),
    teacher: Path | None = typer.Option(
        None,
        "--teacher",
        help="Distil from this model dir (e.g. the unpruned model): frozen, same inputs; depth may differ, width not.",
    ),
    distill_weight: float | None = typer.Option(
        None,
        "--distill-weight",
        help="w in (1 − w)·flow-matching loss + w·‖v_student − v_teacher‖² (default 1: pure distillation).",
    ),
) -> None:
    """Fine-tune a pipeline's transformer with flow matching; the text encoder and VAE stay frozen
    (unless [bold]--train-text-encoder[/], for the shapes world's small encoder).

    Latents and caption embeddings are computed once and cached. Runs under
    [bold]torchrun --nproc-per-node N[/] with DDP ([bold]--fsdp[/] for FSDP2). Ctrl-C saves a
    checkpoint; [bold]--resume[/] continues bit for bit. Writes loss.jsonl and loss.png into OUT.

    With [bold]--lora-rank R[/] only LoRA adapters train (peft) and OUT holds
    pytorch_lora_weights.safetensors (SanaPipeline.load_lora_weights reads it) and sanatool.json;
    [bold]--merge[/] writes a whole model dir instead. [bold]--teacher[/] heals a pruned or grown
    model by distillation from the model it came from.

    Example: sanatool finetune pruned/ --data shapes/ -o healed --steps 100 --teacher full/
    """
    _run(shared, source=model, optimizer=optimizer, lr=lr, teacher=teacher, distill_weight=distill_weight)


@app.command()
@with_options(*TRAINING_OPTIONS)
def train(
    preset: str = typer.Option(
        ..., "--preset", "-p", help="tiny, sana-0.6b, sana-1.6b, sana1.5-1.6b, sana1.5-4.8b."
    ),
    components: str | None = typer.Option(
        None,
        "--components",
        help="Pipeline dir lending text encoder, tokenizer, VAE, scheduler (tiny: built-in).",
    ),
    *,
    shared: dict[str, Any],
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw, adamw8bit, came, came8bit."),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate (default 5e-4)."),
) -> None:
    """Train a transformer from a random init (same init as [bold]sanatool init --seed[/]).

    The frozen text encoder, tokenizer, VAE and scheduler come from [bold]--components[/]
    (for the tiny preset, the built-in tiny-shapes pipeline). Same loop, cache, checkpoints,
    resume and torchrun support as [bold]finetune[/]. [bold]--train-text-encoder[/] trains a small
    text encoder along (how the shipped tiny model learns which colour goes with which shape).

    Example: sanatool train --preset tiny --data shapes/ -o tiny-run --steps 1000 --batch-size 64
    """
    _run(shared, preset=preset, components=components, optimizer=optimizer, lr=lr)


@app.command("train-vae")
def train_vae_cmd(
    data: Path = typer.Option(
        ..., "--data", "-d", help="Image folder of 32×32 renders (sanatool data shapes)."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output tiny pipeline dir (must not exist unless --force)."
    ),
    steps: int = typer.Option(3000, "--steps", help="Optimizer steps."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", help="Images per step."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (AdamW, cosine decay)."),
    seed: int = seed_option("Seed of the VAE init, text encoder init and data order."),
    dtype: str = typer.Option(
        "fp16", "--dtype", help="Stored dtype of the VAE and text encoder.", callback=check_dtype_option
    ),
    force: bool = FORCE,
    as_json: bool = JSON,
) -> None:
    """Train the tiny pipeline's AutoencoderDC on shapes renders; write a tiny pipeline dir around it.

    The first step of building the shipped model (see examples/build_tiny_shapes.sh): the output
    holds the trained VAE (latents scaled to unit variance), the tiny text encoder and tokenizer,
    the scheduler, and a random transformer for [bold]train --components[/] to replace.

    Example: sanatool train-vae --data shapes/ -o tiny-vae --steps 3000
    """
    refuse_existing_output(out, force)
    from sanatool.training.vae import train_vae

    with progress_bar() as progress:
        result = train_vae(data, out, steps, batch_size, lr, seed, dtype, force, progress)
    emit(result if as_json else result["out"], as_json=as_json)
