"""Bootstrap intervals for GenEval-style scores, over prompts, and paired across models.

GenEval samples several images per prompt and reports the mean over categories of each category's
accuracy. The unit that varies is the prompt, so intervals resample prompts (within each category,
so every resample keeps the suite's balance), all images of a prompt together. Comparisons are
paired: two models sampled on the same prompts with the same seeds are resampled with the same
prompt indices, and the interval is that of the difference, which is much narrower than the two
separate intervals suggest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from sanatool.errors import InputError

if TYPE_CHECKING:
    from sanatool.samples.evaluate import EvalReport

#: Resamples behind every interval (the percentile interval's ends move by < 0.005 beyond this).
RESAMPLES = 2000


def prompt_accuracy(report: EvalReport) -> dict[tuple[str, str], float]:
    """Per (category, prompt): the fraction of its images the evaluator passed."""
    correct: dict[tuple[str, str], list[bool]] = {}
    for image in report.images:
        correct.setdefault((image.category, image.prompt), []).append(image.correct)
    return {key: sum(values) / len(values) for key, values in correct.items()}


def bootstrap_overall(
    per_prompt: Mapping[str, Mapping[tuple[str, str], float]],
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Per model, ``resamples`` overall scores (mean of category means), on the same prompt resamples.

    ``per_prompt`` maps a model's name to :func:`prompt_accuracy` of its samples; every model must
    cover the same prompts, since the pairing is by prompt. The difference of two models' arrays
    is the paired bootstrap of their difference.
    """
    keys = _common_keys(per_prompt)
    categories = list(dict.fromkeys(category for category, _ in keys))
    rng = np.random.default_rng(seed)
    picks = []
    for name in categories:
        members = np.array([i for i, (category, _) in enumerate(keys) if category == name])
        picks.append(rng.choice(members, size=(resamples, len(members))))
    out = {}
    for model, scores in per_prompt.items():
        values = np.array([scores[key] for key in keys], dtype=float)
        out[model] = np.mean([values[p].mean(axis=1) for p in picks], axis=0)
    return out


def overall(per_prompt: Mapping[tuple[str, str], float]) -> float:
    """The GenEval overall of per-prompt accuracies: the mean over categories of the category means."""
    by_category: dict[str, list[float]] = {}
    for (category, _), value in per_prompt.items():
        by_category.setdefault(category, []).append(value)
    if not by_category:
        raise InputError("no prompts to score")
    return float(np.mean([np.mean(values) for values in by_category.values()]))


def percentile_interval(values: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap values."""
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(np.asarray(values, dtype=float), [tail, 100 - tail])
    return float(low), float(high)


def _common_keys(per_prompt: Mapping[str, Mapping[tuple[str, str], float]]) -> list[tuple[str, str]]:
    if not per_prompt:
        raise InputError("no models to resample")
    sets = [set(scores) for scores in per_prompt.values()]
    if any(s != sets[0] for s in sets[1:]):
        raise InputError("paired resampling needs every model scored on the same prompts")
    if not sets[0]:
        raise InputError("no prompts to resample")
    return sorted(sets[0])
