"""The whole SANA 1.5 chain on one model, end to end: importance → prune → finetune → best-of-N → eval.

``run_demo`` writes everything into one directory and returns a report comparing the full model,
the pruned model, the pruned and fine-tuned model, and that model with best-of-N picking by the
oracle judge. On the shipped tiny shapes model it takes about 2 minutes on an idle 2-core CPU (``quick``:
under one). The numbers are measured, never assumed: a fine-tune that does not recover is reported
as such.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from importlib import import_module
from pathlib import Path
from typing import Any

from sanatool.errors import InputError
from sanatool.io.modeldir import ModelDir
from sanatool.io.prompts import PromptItem
from sanatool.progress import ProgressFn, no_progress

REPORT_NAME = "report.json"


@dataclass(frozen=True)
class DemoSettings:
    """How much work each stage does; :meth:`for_mode` gives the full and ``quick`` settings.

    ``keep`` is the pruned depth (``None``: half the blocks, as the paper's pruning study).
    """

    prompts_per_category: int
    steps: int
    calibration_prompts: int
    finetune_steps: int
    data_size: int
    candidates: int
    keep: int | None = None
    guidance: float = 4.5
    batch_size: int = 64
    finetune_batch: int = 16
    lr: float | None = None  # None: `finetune`'s default for CAME-8bit (sanatool.training.options.default_lr)
    warmup_steps: int = 10

    @classmethod
    def for_mode(cls, quick: bool) -> DemoSettings:
        """The full demo (about 3 CPU minutes) or the ``quick`` one (about half a CPU minute).

        Full: 30 prompts in each of the 6 categories, so one category's accuracy is within about
        ±0.09 and the overall within about ±0.04 (one standard error); the fine-tune is the
        paper's 100 steps. Quick: 5 prompts per category, a smoke test whose numbers are noise.
        """
        if quick:
            return cls(prompts_per_category=5, steps=8, calibration_prompts=16, finetune_steps=20,
                       data_size=320, candidates=4)  # fmt: skip
        return cls(prompts_per_category=30, steps=12, calibration_prompts=32, finetune_steps=100,
                   data_size=1600, candidates=4)  # fmt: skip

    def check(self, depth: int) -> DemoSettings:
        """Validate against a ``depth``-block model; return the settings with ``keep`` resolved."""
        counts = {
            "prompts_per_category": self.prompts_per_category,
            "steps": self.steps,
            "calibration_prompts": self.calibration_prompts,
            "finetune_steps": self.finetune_steps,
            "data_size": self.data_size,
            "candidates": self.candidates,
            "batch_size": self.batch_size,
            "finetune_batch": self.finetune_batch,
        }
        for name, value in counts.items():
            if value < 1:
                raise InputError(f"demo setting {name} must be at least 1, got {value}")
        if depth < 2:
            raise InputError(
                f"the demo prunes blocks, but the model has only {depth} block; use a deeper model"
            )
        keep = self.keep if self.keep is not None else max(1, depth // 2)
        if not 1 <= keep < depth:
            raise InputError(
                f"the demo must keep between 1 and {depth - 1} of the {depth} blocks, not {keep}"
            )
        return replace(self, keep=keep)


@dataclass
class DemoRow:
    """One column of the comparison table: ``full``, ``pruned``, ``pruned + fine-tuned``, ``+ best-of-N``.

    ``build_seconds`` is what making this model cost (importance + prune, or data + fine-tune);
    ``sample_seconds`` is the inference cost over the suite (sampling, and judging for best-of-N).
    """

    name: str
    model: str
    blocks: int
    params: int
    overall: float
    categories: dict[str, float]
    build_seconds: float
    sample_seconds: float
    samples: str


@dataclass
class DemoReport:
    """What the demo measured (``rows``) and the paths it wrote (``artifacts``, by description)."""

    out: Path
    model: str
    quick: bool
    seed: int
    settings: DemoSettings
    prompts: int
    rows: list[DemoRow] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` form, also written to ``report.json`` in the output dir."""
        return {
            "out": str(self.out),
            "model": self.model,
            "quick": self.quick,
            "seed": self.seed,
            "settings": asdict(self.settings),
            "prompts": self.prompts,
            "rows": [
                {
                    **asdict(row),
                    "overall": round(row.overall, 4),
                    "categories": {name: round(acc, 4) for name, acc in row.categories.items()},
                    "build_seconds": round(row.build_seconds, 1),
                    "sample_seconds": round(row.sample_seconds, 1),
                }
                for row in self.rows
            ],
            "artifacts": self.artifacts,
            "seconds": round(self.seconds, 1),
        }


def demo_suite(per_category: int) -> list[PromptItem]:
    """The first ``per_category`` evaluation prompts of each category, interleaved by category.

    Interleaving puts every category into the first rows of the sample grids (which show at
    most 32 prompts) instead of only single objects.
    """
    from sanatool.shapes import evaluation_suite

    by_category: dict[str, list[PromptItem]] = {}
    for item in evaluation_suite():
        by_category.setdefault(item.category or "", []).append(item)
    groups = [items[:per_category] for items in by_category.values()]
    return [group[i] for i in range(per_category) for group in groups if i < len(group)]


def _staged(progress: ProgressFn, stage: str) -> ProgressFn:
    """Prefix a stage's progress tasks so that each stage gets its own bar ("full: sample", ...)."""

    def report(task: str, done: int, total: int | None = None, **info: object) -> None:
        progress(f"{stage}: {task}", done, total, **info)

    return report


def _evaluate(samples: Path) -> tuple[float, dict[str, float]]:
    """Score a samples dir with the shapes evaluator; ``eval.json`` is written beside its images, and
    its ``grid.png`` is redrawn with the verdicts."""
    from sanatool.samples.evaluate import evaluate_samples_dir, write_eval_json, write_verdict_sheet

    report = evaluate_samples_dir(samples)
    write_eval_json(report)
    write_verdict_sheet(report)
    return report.overall, {name: result.accuracy for name, result in report.categories.items()}


def open_demo_model(model: str | os.PathLike) -> ModelDir:
    """Open ``model`` and check the demo can run on it: a shapes-world pipeline dir."""
    from sanatool.arch import SHAPES_WORLD
    from sanatool.inference.pipeline import model_world
    from sanatool.io.modeldir import open_model_dir

    source = open_model_dir(model)
    source.require_pipeline("demo")
    if model_world(source) != SHAPES_WORLD:
        raise InputError(
            f"the demo scores shapes-world prompts, but {model} is not a shapes-world pipeline (its transformer "
            "does not take the tiny VAE's latents and captions); run it on builtin:tiny-shapes or a model "
            "made from it"
        )
    return source


def run_demo(
    out: str | os.PathLike,
    model: str | os.PathLike = "builtin:tiny-shapes",
    quick: bool = False,
    seed: int = 0,
    force: bool = False,
    device: str = "auto",
    settings: DemoSettings | None = None,
    progress: ProgressFn = no_progress,
) -> DemoReport:
    """Run importance → prune → finetune (CAME-8bit) → sample → judge (oracle) → eval into ``out``.

    ``model`` must be a shapes-world pipeline (the evaluator scores shapes prompts). ``settings``
    overrides :meth:`DemoSettings.for_mode` (tests use a tiny one). The output dir is written
    atomically: ``report.json``, ``importance.json`` and its heatmap, the ``pruned`` and
    ``finetuned`` model dirs (with the loss curve), the fine-tuning ``data``, and one samples dir
    per table row, each with ``grid.png`` and ``eval.json``. Returns the report.
    """
    from sanatool.inference.importance import importance_to_file
    from sanatool.io.outputs import atomic_output_dir, check_output_path
    from sanatool.judges.picking import CANDIDATES_SHEET_NAME, judge_samples_dir
    from sanatool.samples.writer import sample_to_dir
    from sanatool.shapes.dataset import write_shapes_dataset
    from sanatool.surgery.prune import prune_model
    from sanatool.training.logs import LOSS_CURVE
    from sanatool.training.options import TrainOptions
    from sanatool.training.run import run_training

    source = open_demo_model(model)
    chosen = (settings or DemoSettings.for_mode(quick)).check(source.transformer.num_layers)
    check_output_path(out, force, [source.path])  # before seconds of imports; checked again when writing
    suite = demo_suite(chosen.prompts_per_category)
    # diffusers takes seconds to import; do it before any clock starts so that the first row's
    # sampling time is the model's, not the import's.
    import_module("diffusers.pipelines.sana.pipeline_sana")
    started = time.perf_counter()
    with atomic_output_dir(out, force, [source.path]) as tmp:
        final = Path(out).expanduser().resolve()
        report = DemoReport(final, str(model), quick, seed, chosen, len(suite))

        def published(path: Path) -> str:
            """Where a file written into the temporary dir will be once the output is in place."""
            return str(final / path.relative_to(tmp))

        def sample(model_dir: Any, name: str, candidates: int, stage: str) -> Path:
            return sample_to_dir(
                model_dir, suite, tmp / name, candidates=candidates, steps=chosen.steps, guidance=chosen.guidance,
                seed=seed, batch_size=chosen.batch_size, device=device, progress=_staged(progress, stage),
            )  # fmt: skip

        def add_row(name: str, model_dir: Path, samples: Path, build: float, inference: float) -> None:
            from sanatool.io.modeldir import open_model_dir

            made = open_model_dir(model_dir).transformer
            overall, categories = _evaluate(samples)
            report.rows.append(
                DemoRow(name, published(model_dir) if model_dir.is_relative_to(tmp) else str(model_dir),
                        made.num_layers, made.num_params, overall, categories, build, inference,
                        published(samples))
            )  # fmt: skip

        clock = time.perf_counter()
        full_samples = sample(source, "samples_full", 1, "full")
        add_row("full", source.path, full_samples, 0.0, time.perf_counter() - clock)

        clock = time.perf_counter()
        importance_json, heatmap, _ = importance_to_file(
            source, tmp / "importance.json", num_prompts=chosen.calibration_prompts, steps=chosen.steps,
            guidance=chosen.guidance, seed=seed, batch_size=chosen.batch_size, device=device,
            progress=_staged(progress, "pruned"),
        )  # fmt: skip
        pruned = prune_model(
            source,
            tmp / "pruned",
            keep=chosen.keep,
            importance=importance_json,
            progress=_staged(progress, "pruned"),
        )
        build = time.perf_counter() - clock
        clock = time.perf_counter()
        pruned_samples = sample(pruned, "samples_pruned", 1, "pruned")
        add_row("pruned", pruned, pruned_samples, build, time.perf_counter() - clock)

        clock = time.perf_counter()
        tuned_name = "pruned + fine-tuned"
        data = write_shapes_dataset(
            tmp / "data", chosen.data_size, seed=seed, progress=_staged(progress, tuned_name)
        )
        finetuned = tmp / "finetuned"
        # The demo's data is new each run: its latent cache is thrown away, not kept in the user's.
        with tempfile.TemporaryDirectory(prefix="sanatool-demo-cache-") as cache_dir:
            run_training(
                TrainOptions(
                    data=data,
                    out=finetuned,
                    cache_dir=Path(cache_dir),
                    steps=chosen.finetune_steps,
                    source=str(pruned),
                    optimizer="came8bit",
                    lr=chosen.lr,
                    warmup_steps=min(chosen.warmup_steps, chosen.finetune_steps - 1),
                    batch_size=chosen.finetune_batch,
                    seed=seed,
                    device=device,
                ),
                _staged(progress, tuned_name),
            )
        build = time.perf_counter() - clock
        clock = time.perf_counter()
        tuned_samples = sample(finetuned, "samples_finetuned", 1, tuned_name)
        add_row(tuned_name, finetuned, tuned_samples, build, time.perf_counter() - clock)

        # Candidate 0 of every prompt has the seed of the single sample above, so best-of-N
        # starts from the same images and the oracle judge can only add to them.
        clock = time.perf_counter()
        n = chosen.candidates
        best_name = f"+ best-of-{n}"
        candidates = sample(finetuned, f"samples_finetuned_n{n}", n, best_name)
        picks = tmp / f"best_of_{n}"
        judge_samples_dir(candidates, picks, judge="shapes", pick=1, progress=_staged(progress, best_name))
        add_row(best_name, finetuned, picks, 0.0, time.perf_counter() - clock)
        _evaluate(candidates)  # every candidate's score, beside the picks' (not a row of the table)

        report.artifacts = {
            "report": published(tmp / REPORT_NAME),
            "importance scores": published(importance_json),
            "importance heatmap": published(heatmap),
            "pruned model": published(pruned),
            "fine-tuning data": published(data),
            "fine-tuned model": published(finetuned),
            "loss curve": published(finetuned / LOSS_CURVE),
            **{
                f"sample grid ({name})": published(samples / "grid.png")
                for name, samples in (
                    ("full", full_samples),
                    ("pruned", pruned_samples),
                    ("pruned + fine-tuned", tuned_samples),
                    (f"{n} candidates per prompt", candidates),
                    (f"best-of-{n} picks", picks),
                )
            },
            f"best-of-{n} picks": published(picks),
            f"best-of-{n} choices (every candidate, picks framed)": published(picks / CANDIDATES_SHEET_NAME),
        }
        report.seconds = time.perf_counter() - started
        (tmp / REPORT_NAME).write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
        _publish_paths(tmp, final)
    return report


def _publish_paths(tmp: Path, final: Path) -> None:
    """Make the stages' records (``sanatool.json``, ``judge.json``, ...) name ``final``, not ``tmp``.

    Each stage wrote into the temporary dir and recorded the paths it saw; once renamed, those
    would point at a dir that no longer exists. A file is replaced, never rewritten in place:
    files linked from the input share its inode.
    """
    old, new = json.dumps(str(tmp))[1:-1], json.dumps(str(final))[1:-1]
    for path in [*tmp.rglob("*.json"), *tmp.rglob("*.jsonl")]:
        text = path.read_text(encoding="utf-8")
        if old in text:
            staged = path.with_name(f".{path.name}.publish")
            staged.write_text(text.replace(old, new), encoding="utf-8")
            os.replace(staged, path)
