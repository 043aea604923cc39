"""Intervals and verdicts: every comparison is a paired bootstrap of a difference.

Eval accuracy resamples prompts (within categories, all images of a prompt together; see
``sanatool.samples.stats``); held-out loss resamples held-out images (every model is scored on the
same images with the same noise and timesteps). A claim's verdict is "yes" when the 95% interval
of the difference lies wholly on the claimed side, "no" when it lies wholly on the other side, and
"not resolved" when it straddles the boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sanatool.samples.stats import RESAMPLES, bootstrap_overall, overall, percentile_interval

YES, NO, OPEN = "yes", "no", "not resolved"


@dataclass(frozen=True)
class Interval:
    """A point estimate and its 95% bootstrap interval."""

    value: float
    low: float
    high: float

    def cell(self, digits: int = 3, signed: bool = False) -> str:
        f = f"{'+' if signed else ''}.{digits}f"
        return f"{self.value:{f}} [{self.low:{f}}, {self.high:{f}}]"

    def verdict(self, claimed: str, margin: float = 0.0) -> str:
        """``claimed`` "above" or "below" ``margin``: yes when the interval is wholly on that side."""
        above = self.low > margin
        below = self.high < margin
        if claimed == "above":
            return YES if above else NO if below else OPEN
        return YES if below else NO if above else OPEN


def per_prompt(result: dict[str, Any]) -> dict[tuple[str, str], float]:
    """An eval task's per-prompt accuracies, keyed as ``sanatool.samples.stats`` keys them."""
    return {tuple(key.split("\t", 1)): value for key, value in result["per_prompt"].items()}  # type: ignore[misc]


def eval_interval(result: dict[str, Any]) -> Interval:
    """Overall accuracy with its 95% interval over prompts."""
    scores = per_prompt(result)
    low, high = percentile_interval(bootstrap_overall({"m": scores})["m"])
    return Interval(overall(scores), low, high)


def eval_difference(a: dict[str, Any], b: dict[str, Any]) -> Interval:
    """Overall accuracy of ``a`` minus ``b``, paired over prompts."""
    sa, sb = per_prompt(a), per_prompt(b)
    boot = bootstrap_overall({"a": sa, "b": sb})
    low, high = percentile_interval(boot["a"] - boot["b"])
    return Interval(overall(sa) - overall(sb), low, high)


def loss_of(values: list[float]) -> Interval:
    """Mean held-out loss with its 95% interval over held-out images."""
    v = np.asarray(values)
    boot = v[_picks(len(v))].mean(axis=1)
    low, high = percentile_interval(boot)
    return Interval(float(v.mean()), low, high)


def loss_difference(a: list[float], b: list[float], relative: bool = True) -> Interval:
    """Held-out loss of ``a`` minus ``b`` (relative to ``b`` by default), paired over held-out images."""
    va, vb = np.asarray(a), np.asarray(b)
    picks = _picks(len(va))
    da, db = va[picks].mean(axis=1), vb[picks].mean(axis=1)
    boot = (da - db) / db if relative else da - db
    value = (va.mean() - vb.mean()) / vb.mean() if relative else va.mean() - vb.mean()
    low, high = percentile_interval(boot)
    return Interval(float(value), low, high)


def _picks(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(RESAMPLES, n))
