"""``sample`` and ``importance``: run the sampler for images, or to score the transformer's blocks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from sanatool.cli._app import app, console, emit, progress_bar
from sanatool.cli.options import (
    ALLOW_PICKLE,
    DEVICE,
    FORCE,
    JSON,
    PIPELINE_HELP,
    VARIANT,
    Opt,
    check_dtype_option,
    seed_option,
    with_options,
)
from sanatool.distributed import is_main_process

# ``sample`` and ``importance``: how the sampler runs.
SAMPLER_OPTIONS = (
    Opt(
        "steps",
        int | None,
        typer.Option(None, "--steps", help="Sampler steps (default: 20; 2 for SANA-Sprint)."),
    ),
    Opt(
        "guidance",
        float,
        typer.Option(
            4.5,
            "--guidance",
            help="Classifier-free guidance scale (≤ 1 turns it off); SANA-Sprint embeds it instead.",
        ),
    ),
    Opt("seed", int, seed_option("Base seed; each image's own seed derives from it.")),
    Opt(
        "size",
        tuple[int, int] | None,
        typer.Option(
            None, "--size", help="Image height and width in pixels (default: the model's native size)."
        ),
    ),
    Opt("batch_size", int, typer.Option(8, "--batch-size", help="Images per transformer batch.")),
    Opt(
        "sampler",
        str | None,
        typer.Option(
            None,
            "--sampler",
            help="flow-dpm, flow-euler or scm (SANA-Sprint); default: the one the pipeline's scheduler names.",
        ),
    ),
    Opt("device", str, DEVICE),
    Opt("variant", str | None, VARIANT),
    Opt(
        "dtype",
        str,
        typer.Option(
            "auto",
            "--dtype",
            help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, fp16.",
            callback=check_dtype_option,
        ),
    ),
    Opt(
        "offload",
        bool,
        typer.Option(
            False,
            "--offload",
            help="Keep the models in CPU memory and move each to the GPU only while it runs "
            "(diffusers' model CPU offload; for small cards, CUDA only).",
        ),
    ),
    Opt(
        "instruction",
        bool | None,
        typer.Option(
            None,
            "--instruction/--no-instruction",
            help="Prepend SANA's complex human instruction to prompts (default: on for real SANA models, "
            "off for the shapes world).",
        ),
    ),
    Opt("allow_pickle", bool, ALLOW_PICKLE),
)


def _sampler_settings(shared: dict[str, Any]) -> dict[str, Any]:
    """The sampler options as the library's keyword arguments (``--size`` unset → ``None``)."""
    size = shared["size"]
    return {**shared, "size": None if size is None or size[0] is None else (int(size[0]), int(size[1]))}


@app.command()
@with_options(*SAMPLER_OPTIONS)
def sample(
    model: str = typer.Argument(..., help=PIPELINE_HELP),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output samples dir (must not exist unless --force/--resume)."
    ),
    prompts_file: Path | None = typer.Option(
        None, "--prompts", help="Prompts file: one per line, or .jsonl with prompt/category/spec."
    ),
    prompt: list[str] | None = typer.Option(None, "--prompt", help="A prompt (repeat for several)."),
    candidates: int = typer.Option(4, "--candidates", "-n", help="Images per prompt."),
    skip_plan: Path | None = typer.Option(
        None,
        "--skip-plan",
        help="Skip the blocks a plan from `plan-skips` names at each step (same model, steps, sampler).",
    ),
    lora: list[str] | None = typer.Option(
        None,
        "--lora",
        help="Sample with a LoRA, unmerged: PATH[:SCALE], PATH a LoRA dir or .safetensors file (scale 1.0); "
        "repeat for several.",
    ),
    *,
    shared: dict[str, Any],
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Keep the images of an earlier or interrupted run, make the rest; refuses a run made with "
        "other settings (steps, prompts, model …).",
    ),
    force: bool = FORCE,
    as_json: bool = JSON,
) -> None:
    """Sample N candidates per prompt into a samples dir: images/, manifest.jsonl and grid.png.

    Every image has its own seed (in the manifest) that regenerates it alone in diffusers'
    SanaPipeline. Runs under torchrun: ranks split the prompts, rank 0 writes the manifest.

    Example: sanatool sample builtin:tiny-shapes --prompt "a red circle" -n 4 -o samples
    """
    from sanatool.errors import InputError
    from sanatool.io.manifest import read_manifest
    from sanatool.io.prompts import PromptItem, read_prompts
    from sanatool.samples.writer import sample_to_dir

    if prompts_file is not None and prompt:
        raise InputError("give --prompts FILE or --prompt TEXT, not both")
    if prompts_file is None and not prompt:
        raise InputError("no prompts given; pass --prompts FILE or --prompt TEXT")
    items = (
        read_prompts(prompts_file)
        if prompts_file is not None
        else [PromptItem(text) for text in prompt or []]
    )
    with progress_bar() as progress:
        path = sample_to_dir(
            model,
            items,
            out,
            candidates=candidates,
            resume=resume,
            force=force,
            progress=progress,
            skip_plan=skip_plan,
            lora=lora or (),
            **_sampler_settings(shared),
        )
    if not is_main_process():  # under torchrun only rank 0 prints the result
        return
    if as_json:
        records, _ = read_manifest(path)
        emit(
            {"path": str(path), "images": len(records), "prompts": len(items), "candidates": candidates},
            as_json=True,
        )
    else:
        emit(path)


def _print_ranking(result: Any) -> None:
    """The blocks, most important first, with their scores and a bar (stderr)."""
    from rich.table import Table

    top = max(result.scores) or 1.0
    table = Table(
        title=f"block importance ({result.metric})", caption="higher = more important", title_justify="left"
    )
    table.add_column("rank", justify="right")
    table.add_column("block", justify="right")
    table.add_column("score", justify="right")
    table.add_column("", min_width=20)
    for rank, block in enumerate(result.ranking, start=1):
        score = result.scores[block]
        table.add_row(str(rank), str(block), f"{score:.4g}", "█" * max(0, round(20 * score / top)))
    console.print(table)
    rho = result.extra.get("spearman_vs_cosine")
    if rho is not None:
        console.print(f"Spearman correlation with the cosine scores: {rho:.3f}")


@app.command()
@with_options(*SAMPLER_OPTIONS)
def importance(
    model: str = typer.Argument(..., help=PIPELINE_HELP),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Importance JSON to write; its heatmap goes next to it (.png)."
    ),
    prompts_file: Path | None = typer.Option(
        None, "--prompts", help="Calibration prompts (default: the 100 of the model's world)."
    ),
    num_prompts: int = typer.Option(100, "--num-prompts", help="Use the first N calibration prompts."),
    metric: str = typer.Option(
        "cosine",
        "--metric",
        help="cosine: 1 − cos(block in, block out) (the paper); ablation: skip each block.",
    ),
    *,
    shared: dict[str, Any],
    force: bool = typer.Option(False, "--force", help="Replace existing outputs."),
    as_json: bool = typer.Option(False, "--json", help="Print the importance JSON instead of its path."),
) -> None:
    """Score every transformer block over calibration prompts × sampler timesteps (SANA 1.5 pruning).

    Writes the importance JSON that `prune --importance` reads, a heatmap PNG (timesteps × blocks)
    beside it, and prints the ranking. Runs under torchrun: ranks split the prompts.

    Example: sanatool importance builtin:tiny-shapes -o importance.json
    """
    from sanatool.inference.importance import importance_to_file
    from sanatool.io.prompts import read_prompts

    items = read_prompts(prompts_file) if prompts_file is not None else None
    with progress_bar() as progress:
        path, png, result = importance_to_file(
            model,
            out,
            items,
            force=force,
            progress=progress,
            metric=metric,
            num_prompts=num_prompts,
            prompts_source=str(prompts_file) if prompts_file is not None else None,
            **_sampler_settings(shared),
        )
    if not is_main_process():  # under torchrun only rank 0 prints the result
        return
    _print_ranking(result)
    console.print(f"heatmap: {png}")
    emit(result.to_json() if as_json else path, as_json=as_json)
