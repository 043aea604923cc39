"""``train``, ``finetune`` and ``train-vae``: flow-matching training, and the tiny pipeline's VAE."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from sanatool.cli._app import app, emit, progress_bar

# Options shared by `train` and `finetune` (Typer accepts one OptionInfo in several commands).
_DATA = typer.Option(
    None, "--data", "-d", help="Image folder with metadata.jsonl (file_name, text per line)."
)
_OUT = typer.Option(None, "--out", "-o", help="Output pipeline dir (must not exist unless --force).")
_STEPS = typer.Option(100, "--steps", help="Optimizer steps to train.")
_LR = typer.Option(
    None,
    "--lr",
    help="Peak learning rate (default: 1e-5 with came/came8bit, whose early steps are ~10x AdamW's; 1e-4 otherwise).",
)
_WEIGHT_DECAY = typer.Option(0.0, "--weight-decay", help="Decoupled weight decay.")
_BATCH = typer.Option(4, "--batch-size", "-b", help="Images per process per micro-step.")
_ACCUM = typer.Option(1, "--grad-accum", help="Micro-steps per optimizer step (gradient accumulation).")
_PRECISION = typer.Option("auto", "--precision", help="bf16 (autocast, fp32 master weights), fp32, or auto.")
_CKPT = typer.Option(False, "--grad-checkpointing", help="Recompute block activations in backward.")
_SAVE_EVERY = typer.Option(0, "--save-every", help="Save a resumable checkpoint every N steps (0: never).")
_KEEP = typer.Option(2, "--keep-checkpoints", help="How many of the newest checkpoints to keep.")
_RESUME = typer.Option(False, "--resume", help="Continue bit for bit from the newest checkpoint of this run.")
_SEED = typer.Option(0, "--seed", help="Seed of data order, noise, timesteps and caption dropout.")
_CACHE = typer.Option(
    None, "--cache-dir", help="Latent/text-embedding cache (default: DATA/.sanatool-cache)."
)
_CKPT_DIR = typer.Option(
    None, "--checkpoint-dir", help="Checkpoints and live loss log (default: OUT.checkpoints)."
)
_RESOLUTION = typer.Option(None, "--resolution", help="Resize and centre-crop every image to N×N.")
_DROPOUT = typer.Option(0.1, "--caption-dropout", help="Probability of training on the empty caption (CFG).")
_WEIGHTING = typer.Option(
    "logit_normal",
    "--weighting-scheme",
    help="Timestep density: logit_normal, mode, uniform, sigma_sqrt, cosmap.",
)
_LOGIT_MEAN = typer.Option(0.0, "--logit-mean", help="Mean of the logit-normal timestep density.")
_LOGIT_STD = typer.Option(1.0, "--logit-std", help="Std of the logit-normal timestep density.")
_EMA = typer.Option(
    None, "--ema", help="Keep EMA weights with this decay (e.g. 0.999); the output gets them."
)
_CLIP = typer.Option(1.0, "--max-grad-norm", help="Gradient clipping norm (0: off).")
_WARMUP = typer.Option(0, "--warmup-steps", help="Linear learning-rate warm-up steps.")
_SCHEDULE = typer.Option("constant", "--lr-schedule", help="After warm-up: constant, or cosine decay to 10%.")
_FSDP = typer.Option(False, "--fsdp", help="Shard the model with FSDP2 (under torchrun).")
_TRAIN_TE = typer.Option(
    False,
    "--train-text-encoder",
    help="Train the (small, from-scratch) text encoder with the transformer; the output gets it.",
)
_DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda (cuda:LOCAL_RANK under torchrun).")
_DTYPE = typer.Option(
    None, "--dtype", help="Output weights: fp32, bf16, fp16 (default: the input's; fp32 for train)."
)
_SHARD = typer.Option("5GB", "--max-shard-size", help="Largest safetensors shard of the output.")
_DRY = typer.Option(False, "--dry-run", help="Print the memory budget per device and exit (needs no data).")
_FORCE = typer.Option(False, "--force", help="Replace an existing output (and a finished run's checkpoints).")
_JSON = typer.Option(False, "--json", help="Print a JSON summary instead of the output path.")


def _options(**kwargs: Any) -> Any:
    from sanatool.training.options import TrainOptions

    return TrainOptions(**kwargs)


def _run(opts: Any, dry_run: bool, as_json: bool) -> None:
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
    from rich.console import Console
    from rich.table import Table

    from sanatool.formatting import human_bytes, human_count
    from sanatool.training.dry_run import dry_run_budget

    budget = dry_run_budget(opts)
    if as_json:
        emit(budget.to_json(), as_json=True)
        return
    settings = budget.settings
    title = (
        f"memory per device: {human_count(settings['params'])} params, batch {settings['batch_size']}, "
        f"{settings['latent_side']}×{settings['latent_side']} latents, {settings['optimizer']}, {settings['precision']}"
        + (", grad checkpointing" if settings["grad_checkpointing"] else "")
    )
    table = Table(title=title, title_justify="left")
    table.add_column("item")
    table.add_column("memory", justify="right")
    for name, value in budget.rows.items():
        table.add_row(name, human_bytes(value))
    table.add_row("[bold]total[/]", f"[bold]{human_bytes(budget.total)}[/]")
    fits = ", ".join(f"{size}: {'yes' if ok else 'no'}" for size, ok in budget.fits().items())
    table.caption = f"fits (with ~1.5 GB for CUDA context and buffers): {fits}"
    # The budget is this command's result, so the table goes to stdout.
    Console(soft_wrap=False).print(table)


@app.command()
def finetune(
    model: str = typer.Argument(..., help="Pipeline dir to fine-tune, or builtin:tiny-shapes."),
    data: Path = _DATA,
    out: Path = _OUT,
    steps: int = _STEPS,
    optimizer: str = typer.Option("came8bit", "--optimizer", help="came8bit, came, adamw, adamw8bit."),
    lr: float | None = _LR,
    weight_decay: float = _WEIGHT_DECAY,
    batch_size: int = _BATCH,
    grad_accum: int = _ACCUM,
    precision: str = _PRECISION,
    grad_checkpointing: bool = _CKPT,
    save_every: int = _SAVE_EVERY,
    keep_checkpoints: int = _KEEP,
    resume: bool = _RESUME,
    seed: int = _SEED,
    cache_dir: Path = _CACHE,
    checkpoint_dir: Path = _CKPT_DIR,
    resolution: int = _RESOLUTION,
    caption_dropout: float = _DROPOUT,
    weighting_scheme: str = _WEIGHTING,
    logit_mean: float = _LOGIT_MEAN,
    logit_std: float = _LOGIT_STD,
    ema: float = _EMA,
    max_grad_norm: float = _CLIP,
    warmup_steps: int = _WARMUP,
    lr_schedule: str = _SCHEDULE,
    fsdp: bool = _FSDP,
    train_text_encoder: bool = _TRAIN_TE,
    device: str = _DEVICE,
    dtype: str = _DTYPE,
    max_shard_size: str = _SHARD,
    dry_run: bool = _DRY,
    force: bool = _FORCE,
    as_json: bool = _JSON,
) -> None:
    """Fine-tune a pipeline's transformer with flow matching; the text encoder and VAE stay frozen
    (unless [bold]--train-text-encoder[/], for the shapes world's small encoder).

    Latents and caption embeddings are computed once and cached. Runs under
    [bold]torchrun --nproc-per-node N[/] with DDP ([bold]--fsdp[/] for FSDP2). Ctrl-C saves a
    checkpoint; [bold]--resume[/] continues bit for bit. Writes loss.jsonl and loss.png into OUT.

    Example: sanatool finetune pruned/ --data shapes/ -o healed --steps 100
    """
    opts = _options(
        source=model, data=data, out=out, steps=steps, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
        batch_size=batch_size, grad_accum=grad_accum, precision=precision, grad_checkpointing=grad_checkpointing,
        save_every=save_every, keep_checkpoints=keep_checkpoints, resume=resume, seed=seed, cache_dir=cache_dir,
        checkpoint_dir=checkpoint_dir, resolution=resolution, caption_dropout=caption_dropout,
        weighting_scheme=weighting_scheme, logit_mean=logit_mean, logit_std=logit_std, ema_decay=ema,
        max_grad_norm=max_grad_norm, warmup_steps=warmup_steps, lr_schedule=lr_schedule, fsdp=fsdp, train_text_encoder=train_text_encoder, device=device, dtype=dtype,
        max_shard_size=max_shard_size, force=force,
    )  # fmt: skip
    _run(opts, dry_run, as_json)


@app.command()
def train(
    preset: str = typer.Option(
        ..., "--preset", "-p", help="tiny, sana-0.6b, sana-1.6b, sana1.5-1.6b, sana1.5-4.8b."
    ),
    components: str = typer.Option(
        None,
        "--components",
        help="Pipeline dir lending text encoder, tokenizer, VAE, scheduler (tiny: built-in).",
    ),
    data: Path = _DATA,
    out: Path = _OUT,
    steps: int = _STEPS,
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw, adamw8bit, came, came8bit."),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate (default 5e-4)."),
    weight_decay: float = _WEIGHT_DECAY,
    batch_size: int = _BATCH,
    grad_accum: int = _ACCUM,
    precision: str = _PRECISION,
    grad_checkpointing: bool = _CKPT,
    save_every: int = _SAVE_EVERY,
    keep_checkpoints: int = _KEEP,
    resume: bool = _RESUME,
    seed: int = _SEED,
    cache_dir: Path = _CACHE,
    checkpoint_dir: Path = _CKPT_DIR,
    resolution: int = _RESOLUTION,
    caption_dropout: float = _DROPOUT,
    weighting_scheme: str = _WEIGHTING,
    logit_mean: float = _LOGIT_MEAN,
    logit_std: float = _LOGIT_STD,
    ema: float = _EMA,
    max_grad_norm: float = _CLIP,
    warmup_steps: int = _WARMUP,
    lr_schedule: str = _SCHEDULE,
    fsdp: bool = _FSDP,
    train_text_encoder: bool = _TRAIN_TE,
    device: str = _DEVICE,
    dtype: str = _DTYPE,
    max_shard_size: str = _SHARD,
    dry_run: bool = _DRY,
    force: bool = _FORCE,
    as_json: bool = _JSON,
) -> None:
    """Train a transformer from a random init (same init as [bold]sanatool init --seed[/]).

    The frozen text encoder, tokenizer, VAE and scheduler come from [bold]--components[/]
    (for the tiny preset, the built-in tiny-shapes pipeline). Same loop, cache, checkpoints,
    resume and torchrun support as [bold]finetune[/]. [bold]--train-text-encoder[/] trains a small
    text encoder along (how the shipped tiny model learns which colour goes with which shape).

    Example: sanatool train --preset tiny --data shapes/ -o tiny-run --steps 1000 --batch-size 64
    """
    opts = _options(
        preset=preset, components=components, data=data, out=out, steps=steps, optimizer=optimizer, lr=lr,
        weight_decay=weight_decay, batch_size=batch_size, grad_accum=grad_accum, precision=precision,
        grad_checkpointing=grad_checkpointing, save_every=save_every, keep_checkpoints=keep_checkpoints,
        resume=resume, seed=seed, cache_dir=cache_dir, checkpoint_dir=checkpoint_dir, resolution=resolution,
        caption_dropout=caption_dropout, weighting_scheme=weighting_scheme, logit_mean=logit_mean,
        logit_std=logit_std, ema_decay=ema, max_grad_norm=max_grad_norm, warmup_steps=warmup_steps, lr_schedule=lr_schedule, fsdp=fsdp, train_text_encoder=train_text_encoder,
        device=device, dtype=dtype, max_shard_size=max_shard_size, force=force,
    )  # fmt: skip
    _run(opts, dry_run, as_json)


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
    seed: int = typer.Option(0, "--seed", help="Seed of the VAE init, text encoder init and data order."),
    dtype: str = typer.Option("fp16", "--dtype", help="Stored dtype of the VAE and text encoder."),
    force: bool = _FORCE,
    as_json: bool = _JSON,
) -> None:
    """Train the tiny pipeline's AutoencoderDC on shapes renders; write a tiny pipeline dir around it.

    The first step of building the shipped model (see examples/build_tiny_shapes.sh): the output
    holds the trained VAE (latents scaled to unit variance), the tiny text encoder and tokenizer,
    the scheduler, and a random transformer for [bold]train --components[/] to replace.

    Example: sanatool train-vae --data shapes/ -o tiny-vae --steps 3000
    """
    from sanatool.training.vae import train_vae

    with progress_bar() as progress:
        result = train_vae(data, out, steps, batch_size, lr, seed, dtype, force, progress)
    emit(result if as_json else result["out"], as_json=as_json)
