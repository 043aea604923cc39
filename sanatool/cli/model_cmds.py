"""``init`` and ``info``: create a random-init model dir, describe any model dir."""

from __future__ import annotations

from pathlib import Path

import typer

from sanatool.cli._app import app, emit, make_console, progress_bar
from sanatool.cli.options import (
    FORCE,
    MAX_SHARD_SIZE,
    MODEL_DIR_HELP,
    OUT_MODEL_DIR,
    VARIANT,
    check_dtype_option,
    seed_option,
)
from sanatool.cli.original import accepts_original_checkpoint


@app.command()
def init(
    preset: str = typer.Option(
        ..., "--preset", "-p", help="tiny, sana-0.6b, sana-1.6b, sana1.5-1.6b, sana1.5-4.8b."
    ),
    out: Path = OUT_MODEL_DIR,
    dtype: str = typer.Option("fp32", "--dtype", help="bf16, fp16 or fp32.", callback=check_dtype_option),
    seed: int = seed_option("Seed of the random init (same seed, same bytes)."),
    max_shard_size: str = MAX_SHARD_SIZE,
    force: bool = FORCE,
) -> None:
    """Write a random-init model: a transformer dir, or for [bold]tiny[/] a whole SanaPipeline dir.

    Big presets are written block by block: peak memory is one block in fp32 (twice over) plus
    torch: about 1.2 GB for sana1.5-1.6b and 1.6 GB for sana1.5-4.8b.

    Example: sanatool init --preset sana1.5-1.6b --dtype bf16 -o sana16
    """
    from sanatool.surgery.initialize import init_model

    with progress_bar() as progress:
        path = init_model(
            preset, out, dtype=dtype, seed=seed, force=force, max_shard_size=max_shard_size, progress=progress
        )
    emit(path)


@app.command()
@accepts_original_checkpoint
def info(
    model: str = typer.Argument(..., help=MODEL_DIR_HELP),
    variant: str | None = VARIANT,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Describe a model dir: components, depth, width, params, dtype, QK-norm, shards, variants, history.

    Reads only headers: answers in about a second on a 10 GB checkpoint.

    Example: sanatool info builtin:tiny-shapes --json
    """
    from rich.table import Table
    from rich.text import Text

    from sanatool.formatting import format_block_list, human_bytes, human_count
    from sanatool.surgery.info import describe_model

    described = describe_model(model, variant)
    if as_json:
        emit(described, as_json=True)
        return
    # The description is this command's result, so the table goes to stdout.
    # Paths and file names are user text: never rich markup.
    table = Table(title=Text(described["path"]), show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    dtypes = ", ".join(f"{k} ({human_count(v)})" for k, v in described["dtypes"].items())
    rows = [
        ("kind", f"{described['family']} {described['kind']}"),
        ("components", ", ".join(f"{n}: {c['class']}" for n, c in described["components"].items())),
        ("depth", str(described["depth"])),
        (
            "hidden size",
            f"{described['hidden_size']} ({described['attention_heads']} heads × {described['attention_head_dim']})",
        ),
        (
            "params",
            f"{human_count(described['params'])} ({human_count(described['params_per_block'])} per block)",
        ),
        ("dtype", dtypes),
        ("qk-norm", str(described["qk_norm"] or "none")),
        ("weights", f"{human_bytes(described['bytes'])} in {described['shards']} shard(s)"),
        ("fingerprint", described["fingerprint"]),
    ]
    if any(ws["variant"] != "default" for sets in described["weights"].values() for ws in sets):
        rows.append(("variant", described["variant"] or "default"))
        for name, sets in described["weights"].items():
            listed = [
                f"{ws['variant']}{' (used)' if ws['used'] else ''}: {'+'.join(ws['dtypes'])}, {human_bytes(ws['bytes'])}"
                for ws in sets
            ]
            rows.append((f"  {name}", "; ".join(listed)))
    controlnet = described["controlnet"]
    if controlnet:
        rows.append(
            (
                "controlnet",
                f"{controlnet['class']}, {controlnet['layers']} layers, residuals after blocks "
                f"{format_block_list(controlnet['feeds_blocks']) or 'none'}",
            )
        )
    rows.append(("history", described["history"]))
    for key, value in rows:
        table.add_row(key, Text(value))
    make_console().print(table)
