"""``data shapes`` (render a captioned data set or ground-truth samples) and ``eval`` (GenEval-style scoring)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from sanatool.cli._app import app, bold, console, emit, progress_bar
from sanatool.cli.options import FORCE, JSON, seed_option

if TYPE_CHECKING:
    from sanatool.samples.evaluate import EvalReport

data_app = typer.Typer(
    no_args_is_help=True,
    help="Make data sets: `data shapes` renders the shapes world.\n\nExample: sanatool data shapes -o shapes --n 4000",
)
app.add_typer(data_app, name="data")


@data_app.command("shapes")
def data_shapes(
    out: Path = typer.Option(..., "--out", "-o", help="Output dir (must not exist unless --force)."),
    n: int | None = typer.Option(
        None, "--n", "-n", help="Number of images; with --prompts, renders per prompt (default 1)."
    ),
    size: int = typer.Option(32, "--size", help="Image side in pixels (32 or 64 are typical)."),
    seed: int = seed_option("Seed of captions and renders (same seed, same bytes)."),
    prompts: Path | None = typer.Option(
        None,
        "--prompts",
        help="A shapes prompts .jsonl (with specs): write ground-truth renders as a samples dir.",
    ),
    force: bool = FORCE,
    as_json: bool = JSON,
) -> None:
    """Render the shapes world: a captioned image-folder data set, or ground truth for a prompt suite.

    Without --prompts: N renders of one to four shapes with captions in metadata.jsonl (evaluation prompts held out), for `train` and `finetune`.

    With --prompts: one render per prompt (or N) as a samples dir, the upper bound that `eval` scores at about 1.0.

    Example: sanatool data shapes -o shapes10k --n 10000 --seed 0
    """
    from sanatool.errors import InputError
    from sanatool.io.prompts import read_prompts
    from sanatool.shapes.dataset import write_ground_truth_samples, write_shapes_dataset

    if prompts is None:
        if n is None:
            raise InputError("--n is required: how many images to render (or pass --prompts SUITE.jsonl)")
        with progress_bar() as progress:
            path = write_shapes_dataset(out, n, size=size, seed=seed, progress=progress, force=force)
        summary = {"path": str(path), "images": n, "size": size, "seed": seed, "format": "imagefolder"}
    else:
        items = read_prompts(prompts)
        per_prompt = 1 if n is None else n
        with progress_bar() as progress:
            path = write_ground_truth_samples(
                items, out, per_prompt=per_prompt, size=size, seed=seed, progress=progress, force=force
            )
        summary = {
            "path": str(path),
            "images": len(items) * per_prompt,
            "prompts": len(items),
            "size": size,
            "seed": seed,
            "format": "samples",
        }
    emit(summary if as_json else path, as_json)


def _export(target: Path, which: str, force: bool) -> Path:
    from sanatool.io.outputs import atomic_output_file
    from sanatool.io.prompts import write_prompts
    from sanatool.shapes.suites import calibration_prompts, evaluation_suite

    items = evaluation_suite() if which == "suite" else calibration_prompts()
    with atomic_output_file(target, force=force) as tmp:
        write_prompts(tmp, items)
    return target.resolve()


def _print_table(report: EvalReport) -> None:
    from rich.table import Table

    from sanatool.shapes.world import CATEGORY_TITLES

    table = Table(title=f"shapes eval: {report.samples_dir}", title_justify="left")
    for column, justify in (
        ("category", "left"),
        ("accuracy", "right"),
        ("correct", "right"),
        ("score", "right"),
    ):
        table.add_column(column, justify=justify)
    summary = report.to_json()
    for name, row in summary["categories"].items():
        table.add_row(
            CATEGORY_TITLES.get(name, name),
            f"{row['accuracy']:.3f}",
            f"{row['correct']}/{row['total']}",
            f"{row['mean_score']:.3f}",
        )
    table.add_section()
    table.add_row(
        bold("overall"),
        bold(f"{report.overall:.3f}"),
        f"{summary['correct']}/{report.scored}",
        f"{report.overall_score:.3f}",
    )
    console.print(table)
    if report.skipped:
        console.print(f"{report.skipped} manifest line(s) without a spec were skipped")
    if report.failures:
        first = report.failures[0]
        console.print(
            f"{len(report.failures)} image(s) missed a clause, e.g. line {first.line} ({first.prompt!r}): "
            f"{'; '.join(first.failed)}"
        )


@app.command("eval")
def eval_cmd(
    samples_dir: Path | None = typer.Argument(None, help="Samples dir (images/ + manifest.jsonl) to score."),
    as_json: bool = typer.Option(
        False, "--json", help="Print the report as JSON instead of the eval.json path."
    ),
    export_suite: Path | None = typer.Option(
        None, "--export-suite", help="Write the evaluation suite (prompts .jsonl) to this file."
    ),
    export_calibration: Path | None = typer.Option(
        None, "--export-calibration", help="Write the 100 calibration prompts (.jsonl) to this file."
    ),
    force: bool = typer.Option(False, "--force", help="Replace existing export files."),
) -> None:
    """Score a samples dir on the shapes world, GenEval-style; or export the shipped prompt suites.

    Every image whose manifest line has a spec is checked by the rule-based evaluator; the table (per-category accuracy, overall = mean of the six categories) goes to stderr and eval.json into the samples dir, whose grid.png is redrawn with each image's verdict.

    Unusable lines are reported by line number and the command exits 1 after scoring the rest.

    Example: sanatool eval samples/
    """
    from sanatool.errors import InputError, RunFailure
    from sanatool.io.outputs import check_output_path
    from sanatool.samples.evaluate import evaluate_samples_dir, write_eval_json, write_verdict_sheet

    exports = [
        (path, which)
        for path, which in ((export_suite, "suite"), (export_calibration, "calibration"))
        if path
    ]
    if exports:
        if samples_dir is not None:
            raise InputError("--export-suite/--export-calibration write files; run them without SAMPLES_DIR")
        if len(exports) == 2 and export_suite.resolve() == export_calibration.resolve():
            raise InputError("--export-suite and --export-calibration name the same file; give two paths")
        for path, _ in exports:
            check_output_path(path, force)  # refuse before writing either file
        written = [_export(path, which, force) for path, which in exports]
        emit({"exported": [str(p) for p in written]} if as_json else "\n".join(map(str, written)), as_json)
        return
    if samples_dir is None:
        raise InputError("give a SAMPLES_DIR to score, or --export-suite FILE / --export-calibration FILE")
    with progress_bar(quiet=as_json) as progress:
        report = evaluate_samples_dir(samples_dir, progress=progress)
    path = write_eval_json(report)
    write_verdict_sheet(report)
    if not as_json:
        _print_table(report)
    emit(report.to_json() if as_json else path, as_json)
    if report.problems:
        raise RunFailure(
            f"{len(report.problems)} manifest line(s) could not be scored (first: {report.problems[0]}); "
            f"the rest were scored, every problem is listed in {path}"
        )
