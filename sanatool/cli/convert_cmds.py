"""``convert``: diffusers model dirs ↔ original SANA single-file checkpoints, both ways, lossless."""

from __future__ import annotations

from pathlib import Path

import typer

from sanatool.cli._app import app, console, emit, progress_bar
from sanatool.cli.options import ALLOW_PICKLE, FORCE, MAX_SHARD_SIZE, VARIANT, check_dtype_option, seed_option


@app.command()
def convert(
    src: str = typer.Argument(
        ...,
        help="A diffusers model dir (pipeline or bare transformer), or an original SANA .safetensors/.pth; "
        "or a LoRA (a LoRA dir or .safetensors file, diffusers or original keys).",
    ),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="The output: an original-layout file, or a diffusers dir (must not exist unless --force).",
    ),
    fmt: str = typer.Option(
        "safetensors", "--format", help="Original file format when writing one: safetensors or pth."
    ),
    components: str | None = typer.Option(
        None,
        "--components",
        help="Pipeline dir whose other components (text encoder, VAE, …) are linked into the output, "
        "which becomes a whole pipeline dir (original → diffusers).",
    ),
    dtype: str | None = typer.Option(
        None,
        "--dtype",
        help="Cast every tensor: bf16, fp16 or fp32 (default: keep).",
        callback=check_dtype_option,
    ),
    seed: int = seed_option(
        "Seed of the null caption made for a model born in diffusers (same seed, same bytes)."
    ),
    variant: str | None = VARIANT,
    allow_pickle: bool = ALLOW_PICKLE,
    max_shard_size: str = MAX_SHARD_SIZE,
    force: bool = FORCE,
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary instead of the path."),
) -> None:
    """Convert between a diffusers model dir and an original SANA checkpoint, either way, bit for bit.

    Any depth, with or without QK-norm, SANA 1.0, 1.5 and Sprint. Tensors diffusers has no slot for
    (the null caption y_embedding, pos_embed) are kept beside the diffusers weights and restored on
    the way back. Streams tensor by tensor: memory stays near one block.

    A LoRA converts to the other naming: diffusers' (a finetune --lora-rank output) to one
    .safetensors file with original keys (blocks.N.attn.qkv.lora_A.weight …, fused q/k/v stacked),
    and back to a LoRA dir that SanaPipeline.load_lora_weights reads.

    Example: sanatool convert SANA1.5_4.8B.safetensors --components sana15-pipeline -o sana15-dir
    """
    from sanatool.surgery.convert import convert as run_convert
    from sanatool.surgery.convert import describe_bytes

    with progress_bar() as progress:
        result = run_convert(
            src,
            out,
            fmt=fmt,
            components=components,
            dtype=dtype,
            variant=variant,
            allow_pickle=allow_pickle,
            seed=seed,
            force=force,
            max_shard_size=max_shard_size,
            progress=progress,
        )
    for note in result.notes:
        console.print(f"note: {note}")
    console.print(f"convert: {describe_bytes(result)}")
    emit(result.to_json() if as_json else result.out, as_json=as_json)
