"""GenEval-style scoring of a samples dir on the shapes world (what ``sanatool eval`` runs).

Every manifest line that carries a ``spec`` is scored with the rule-based evaluator
(:func:`sanatool.shapes.evaluate_image`). Accuracy is per image, per category; ``overall``
is the mean of the GenEval categories present (so a category with many images does not
outweigh one with few, as GenEval reports it). Lines without a ``spec`` are skipped and
counted; unusable lines (malformed JSON, a bad spec, a missing or unreadable image) are
reported with their line numbers while the rest is still scored.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from sanatool.errors import InputError
from sanatool.io.images import UnreadableImage, load_image
from sanatool.io.manifest import MANIFEST_NAME, read_manifest
from sanatool.io.outputs import atomic_output_file
from sanatool.progress import ProgressFn, no_progress
from sanatool.samples.sheet import GRID_NAME, Verdict, write_contact_sheet
from sanatool.shapes.evaluator import evaluate_image
from sanatool.shapes.world import CATEGORIES

EVAL_NAME = "eval.json"
#: The category of a scored line whose manifest entry names none.
UNCATEGORIZED = "uncategorized"


@dataclass
class CategoryResult:
    """Accuracy of one category: images correct, images scored, and the mean graded score."""

    correct: int = 0
    total: int = 0
    score_sum: float = 0.0

    @property
    def accuracy(self) -> float:
        """Fraction of images with every clause met."""
        return self.correct / self.total if self.total else 0.0

    @property
    def mean_score(self) -> float:
        """Mean fraction of clauses met."""
        return self.score_sum / self.total if self.total else 0.0


@dataclass
class ImageResult:
    """The verdict on one image: where it is in the manifest, and which clauses failed."""

    line: int
    path: str
    prompt: str
    category: str
    correct: bool
    score: float
    failed: list[str] = field(default_factory=list)


@dataclass
class EvalReport:
    """The scores of a samples dir; :meth:`to_json` is what ``eval.json`` holds."""

    samples_dir: str
    categories: dict[str, CategoryResult]
    images: list[ImageResult]
    skipped: int
    problems: list[str]

    @property
    def overall(self) -> float:
        """Mean accuracy over the GenEval categories present (over all categories present if none is)."""
        present = [c for c in CATEGORIES if c in self.categories] or list(self.categories)
        return sum(self.categories[c].accuracy for c in present) / len(present) if present else 0.0

    @property
    def overall_score(self) -> float:
        """The same mean over categories, of the graded scores."""
        present = [c for c in CATEGORIES if c in self.categories] or list(self.categories)
        return sum(self.categories[c].mean_score for c in present) / len(present) if present else 0.0

    @property
    def scored(self) -> int:
        """How many images were scored."""
        return len(self.images)

    @property
    def failures(self) -> list[ImageResult]:
        """The images that missed at least one clause."""
        return [image for image in self.images if not image.correct]

    def to_json(self) -> dict[str, Any]:
        """The JSON report: summary, per-category table, problems, and every image's verdict."""
        ordered = [c for c in CATEGORIES if c in self.categories] + sorted(
            set(self.categories) - set(CATEGORIES)
        )
        return {
            "samples_dir": self.samples_dir,
            "overall": round(self.overall, 6),
            "overall_score": round(self.overall_score, 6),
            "scored": self.scored,
            "correct": sum(image.correct for image in self.images),
            "skipped_without_spec": self.skipped,
            "problems": list(self.problems),
            "categories": {
                name: {
                    "accuracy": round(self.categories[name].accuracy, 6),
                    "mean_score": round(self.categories[name].mean_score, 6),
                    "correct": self.categories[name].correct,
                    "total": self.categories[name].total,
                }
                for name in ordered
            },
            "images": [asdict(image) for image in self.images],
        }


class _Unusable(Exception):
    """A manifest line that cannot be scored (its message says why)."""


def _load_image(root: Path, relpath: str) -> Image.Image:
    path = root / relpath
    if not path.is_file():
        raise _Unusable(f"image {relpath} does not exist")
    try:
        return load_image(path)
    except UnreadableImage as err:
        raise _Unusable(f"image {relpath} {err.reason}") from err


def evaluate_samples_dir(samples_dir: str | os.PathLike, progress: ProgressFn = no_progress) -> EvalReport:
    """Score every image of a samples dir whose manifest line has a ``spec``.

    Raises :class:`InputError` when the dir or manifest is missing, or when no line carries
    a spec (nothing to score). Per-line problems land in ``report.problems`` as
    ``manifest.jsonl:<line>: <what>``; the other lines are scored.
    """
    root = Path(samples_dir)
    records, bad_lines = read_manifest(root)
    problems = [str(problem) for problem in bad_lines]
    with_spec = [row for row in records if row.get("spec") is not None]
    if not with_spec and not bad_lines:
        raise InputError(
            f"no line of {root / MANIFEST_NAME} carries a spec, so nothing can be scored; "
            "sample from a shapes suite (`sanatool eval --export-suite suite.jsonl`, then `sanatool sample`)"
        )
    categories: dict[str, CategoryResult] = {}
    images: list[ImageResult] = []
    for done, row in enumerate(with_spec, start=1):
        where = f"{MANIFEST_NAME}:{row['_line']}"
        try:
            image = _load_image(root, row["path"])
            verdict = evaluate_image(image, row["spec"])
        except (_Unusable, InputError) as err:
            problems.append(f"{where}: {err}")
            continue
        finally:
            progress("eval", done, len(with_spec))
        category = row.get("category") if isinstance(row.get("category"), str) else UNCATEGORIZED
        result = categories.setdefault(category, CategoryResult())
        result.total += 1
        result.correct += verdict.correct
        result.score_sum += verdict.score
        images.append(
            ImageResult(
                line=row["_line"],
                path=row["path"],
                prompt=row["prompt"],
                category=category,
                correct=verdict.correct,
                score=round(verdict.score, 6),
                failed=verdict.failed,
            )
        )
    return EvalReport(
        samples_dir=str(root),
        categories=categories,
        images=images,
        skipped=len(records) - len(with_spec),
        problems=problems,
    )


def write_eval_json(report: EvalReport, path: str | os.PathLike | None = None) -> Path:
    """Write the report as JSON (default: ``eval.json`` in the samples dir, replaced if present; atomic)."""
    target = Path(path) if path is not None else Path(report.samples_dir) / EVAL_NAME
    with atomic_output_file(target, force=True) as tmp:
        tmp.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")
    return target.resolve()


def write_verdict_sheet(report: EvalReport) -> list[Path]:
    """Redraw the samples dir's contact sheet (``grid.png`` …) with each scored image's verdict.

    A check or a cross and the graded score go under each image; a judge's picks keep their
    frame and score (from the manifest). Returns the sheets written.
    """
    root = Path(report.samples_dir)
    records, _ = read_manifest(root)
    verdicts = {image.path: Verdict(image.correct, image.score) for image in report.images}
    return write_contact_sheet(root, records, root / GRID_NAME, verdicts)
