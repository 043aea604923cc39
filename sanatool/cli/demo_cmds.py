"""``demo``: the whole chain on the shipped tiny model, with a comparison table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from sanatool.cli._app import app, bold, console, emit, progress_bar
from sanatool.cli.options import DEVICE, FORCE, refuse_existing_output, seed_option


def _print_report(report: Any) -> None:
    """The comparison table (one column per model, so it fits 80 columns) and the paths written (stderr)."""
    from rich.table import Table

    from sanatool.formatting import human_count
    from sanatool.shapes.world import CATEGORY_TITLES

    settings = report.settings
    rows = report.rows
    table = Table(
        title=(
            f"demo on {report.model}: {report.prompts} prompts ({settings.prompts_per_category} per category), "
            f"{settings.steps} sampler steps, seed {report.seed}"
        ),
        title_justify="left",
    )
    table.add_column("")
    for row in rows:
        table.add_column(row.name, justify="right")
    for name in rows[0].categories:
        table.add_row(CATEGORY_TITLES.get(name, name), *(f"{row.categories[name]:.2f}" for row in rows))
    table.add_row(bold("overall"), *(bold(f"{row.overall:.3f}") for row in rows), end_section=True)
    table.add_row("blocks", *(str(row.blocks) for row in rows))
    table.add_row("params", *(human_count(row.params) for row in rows))
    table.add_row("build s", *(f"{row.build_seconds:.0f}" if row.build_seconds else "–" for row in rows))
    table.add_row("sample s", *(f"{row.sample_seconds:.0f}" for row in rows))
    console.print(table)
    console.print(
        f"Accuracy by the shapes evaluator; overall = mean of the six categories. pruned: the "
        f"{settings.keep} most important blocks; fine-tuned: {settings.finetune_steps} CAME-8bit steps; "
        f"best-of-{settings.candidates}: the fine-tuned model, the oracle judge's pick of "
        f"{settings.candidates} candidates per prompt. build s: importance + prune, or data + fine-tune; "
        "sample s: sampling (and judging) the prompts."
    )
    console.print(f"wrote in {report.seconds:.0f} s:")
    for what, path in report.artifacts.items():
        console.print(f"  {what}: {path}", soft_wrap=True)


@app.command()
def demo(
    out: Path = typer.Option(
        Path("sanatool-demo"), "--out", "-o", help="Output dir (must not exist unless --force)."
    ),
    quick: bool = typer.Option(
        False, "--quick", help="A smaller run (5 prompts per category, 20 fine-tuning steps): under a minute."
    ),
    model: str = typer.Option(
        "builtin:tiny-shapes",
        "--model",
        help="Shapes-world pipeline dir to run on (builtin:tiny-shapes or a model made from it).",
    ),
    seed: int = seed_option("Seed of the sampling, calibration and fine-tuning noise."),
    device: str = DEVICE,
    force: bool = FORCE,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of the path."),
) -> None:
    """Run the SANA 1.5 chain on the tiny shapes model and compare the results.

    importance → prune to half the blocks → fine-tune 100 steps with CAME-8bit → sample → best-of-4
    with the oracle judge → eval on 30 prompts of each of the six GenEval-style categories. Prints
    a table of full / pruned / pruned + fine-tuned / best-of-N (accuracy per category, overall,
    blocks, params, seconds) and the paths of what it wrote: report.json, the importance heatmap,
    sample grids, the models and the loss curve. About 2 minutes on 2 idle CPU cores.

    Example: sanatool demo --quick -o demo
    """
    refuse_existing_output(out, force)
    from sanatool.demo import run_demo

    with progress_bar() as progress:
        report = run_demo(out, model, quick=quick, seed=seed, force=force, device=device, progress=progress)
    _print_report(report)
    emit(report.to_json() if as_json else report.out, as_json=as_json)
