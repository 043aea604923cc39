"""``judge`` and ``train-verifier``: pick the best of N candidates, train the shapes verifier."""

from __future__ import annotations

from pathlib import Path

import typer

from sanatool.cli._app import app, console, emit, progress_bar
from sanatool.cli.options import DEVICE, FORCE, JSON, refuse_existing_output, seed_option

_JUDGE_HELP = (
    "shapes (the rule-based evaluator: an oracle), verifier (the learned shapes verifier shipped "
    "with sanatool), verifier:PATH (one from `sanatool train-verifier`), clip:PATH (a transformers "
    "CLIPModel dir), vlm:PATH (an image-text-to-text model dir)."
)


@app.command()
def judge(
    samples: Path = typer.Argument(
        ..., help="Samples dir (images/ + manifest.jsonl, from `sanatool sample`)."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output samples dir of the picks (must not exist unless --force)."
    ),
    judge_spec: str = typer.Option(..., "--judge", "-j", help=_JUDGE_HELP),
    pick: int = typer.Option(1, "--pick", "-k", help="Candidates to keep per prompt (1 ≤ K ≤ candidates)."),
    mode: str = typer.Option(
        "score",
        "--mode",
        help="score (keep the K best-scored) or tournament (knockout in pairs, as SANA 1.5's picker).",
    ),
    batch_size: int = typer.Option(16, "--batch-size", "-b", help="Images per judge call."),
    template: str | None = typer.Option(
        None,
        "--template",
        help='VLM question with {prompt}, e.g. "Does this image show {prompt}? Answer yes or no."',
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N (model judges)."),
    force: bool = FORCE,
    as_json: bool = JSON,
) -> None:
    """Pick the best K of N candidates per prompt with a judge; write the picks as a samples dir.

    Score mode (the default) keeps the K candidates with the highest scores. Tournament mode
    plays a knockout in pairs until K remain (byes for odd counts): a yes beats a no, two yeses
    go to the higher yes-probability, two noes to the lower no-probability; ties go to the
    earlier candidate. Both judge every candidate once; with K = 1 they pick the same image
    for the shapes, verifier and CLIP judges. OUT holds the picked images and their manifest lines
    (with score and rank), scores.jsonl (every candidate's judgement), judge.json (the judge and
    the compute spent), grid.png (the picks) and candidates.png (every candidate with its score,
    the picks framed in blue). Measure the picks with `sanatool eval OUT`.

    Example: sanatool judge samples/ -o picks --judge verifier --pick 1
    """
    refuse_existing_output(out, force)
    from sanatool.judges.picking import ORACLE_NOTE, judge_samples_dir

    with progress_bar() as progress:
        result = judge_samples_dir(
            samples,
            out,
            judge_spec,
            pick=pick,
            mode=mode,
            batch_size=batch_size,
            device=device,
            template=template,
            force=force,
            progress=progress,
        )
    console.print(
        f"judged {result.candidates} candidates of {result.prompts} prompts with {result.judge['label']} "
        f"({result.mode}): kept {result.pick} per prompt, mean score {result.mean_picked_score:.3f}, "
        f"{result.judge_calls} judge calls, {result.matches} matches"
    )
    if result.judge.get("oracle"):
        console.print(f"note: {ORACLE_NOTE}")
    emit(result.to_json() if as_json else result.out, as_json)


@app.command("train-verifier")
def train_verifier_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Output verifier dir (must not exist unless --force)."),
    steps: int = typer.Option(3000, "--steps", help="Optimizer steps."),
    batch_size: int = typer.Option(
        32, "--batch-size", "-b", help="Images per step (each with its own, perturbed and another caption)."
    ),
    lr: float = typer.Option(1.5e-3, "--lr", help="Peak learning rate (5% warm-up, cosine decay)."),
    renders: int = typer.Option(8000, "--renders", help="Training renders (0: train on --samples only)."),
    samples: list[Path] | None = typer.Option(
        None, "--samples", help="A samples dir with specs, labelled by the evaluator (repeat for several)."
    ),
    heldout: float = typer.Option(
        0.2,
        "--heldout",
        help="Share of the samples' prompts held out to calibrate the yes-threshold and measure agreement.",
    ),
    sample_share: float = typer.Option(
        0.7, "--sample-share", help="Share of each batch drawn from --samples (the rest are renders)."
    ),
    mirror: bool = typer.Option(
        False,
        "--mirror",
        help="Also train on each sample flipped left-right, its caption's left and right swapped.",
    ),
    seed: int = seed_option("Seed of the data and the init (same seed, same verifier)."),
    device: str = DEVICE,
    force: bool = FORCE,
    as_json: bool = typer.Option(False, "--json", help="Print the training summary as JSON."),
) -> None:
    """Train the learned shapes verifier: a small image–text yes/no model, the judge that is not the metric.

    It learns from renders paired with matching and perturbed captions (wrong colour, shape,
    count, relation, swapped colours) and, with --samples, from decoded samples labelled by
    the rule-based evaluator (with the detector's per-cell labels). Its yes-threshold is
    calibrated on the held-out share of the samples' prompts. Reports accuracy on fresh
    renders and agreement with the evaluator on held-out generated images. Use it with
    `sanatool judge --judge verifier:OUT`. Train on the candidates of the model you will judge:
    a verifier trained on renders alone judges a generator's images poorly.

    Example: sanatool train-verifier -o verifier --samples samples/
    """
    refuse_existing_output(out, force)
    from rich.table import Table

    from sanatool.distributed import resolve_device
    from sanatool.judges.verifier_train import VerifierTraining, train_verifier

    options = VerifierTraining(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        renders=renders,
        samples=list(samples or []),
        heldout=heldout,
        sample_share=sample_share,
        seed=seed,
        mirror=mirror,
    )
    with progress_bar() as progress:
        summary = train_verifier(
            out, options, device=str(resolve_device(device)), force=force, progress=progress
        )
    table = Table(title="verifier on held-out data", title_justify="left")
    table.add_column("pairs")
    table.add_column("accuracy", justify="right")
    for kind, value in summary["heldout"]["renders"].items():
        want = "yes" if kind == "match" else "no"
        table.add_row(f"renders, {kind} caption (want {want})", f"{value:.3f}")
    generated = summary["heldout"].get("generated")
    if generated:
        table.add_row(
            f"generated images, agreement with the evaluator (n={generated['images']})",
            f"{generated['agreement']:.3f}",
        )
        table.add_row(
            f"generated images, balanced accuracy (yes-threshold {generated['threshold']:.3f})",
            f"{generated['balanced_accuracy']:.3f}",
        )
    console.print(table)
    emit(summary if as_json else Path(out).expanduser().resolve(), as_json)
