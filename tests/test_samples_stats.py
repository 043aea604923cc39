"""Bootstrap intervals over prompts: stratified by category, paired across models."""

from __future__ import annotations

import numpy as np
import pytest

from sanatool.errors import InputError
from sanatool.samples.evaluate import EvalReport, ImageResult
from sanatool.samples.stats import bootstrap_overall, overall, percentile_interval, prompt_accuracy


def _scores(values: dict[str, list[float]]) -> dict[tuple[str, str], float]:
    return {(category, f"{category} {i}"): v for category, vs in values.items() for i, v in enumerate(vs)}


def test_prompt_accuracy_averages_the_images_of_each_prompt() -> None:
    images = [
        ImageResult(i, f"p{i}.png", prompt, "colors", correct, 1.0)
        for i, (prompt, correct) in enumerate([("a", True), ("a", False), ("a", True), ("b", False)])
    ]
    report = EvalReport("s", {}, images, 0, [])
    assert prompt_accuracy(report) == {("colors", "a"): pytest.approx(2 / 3), ("colors", "b"): 0.0}


def test_overall_is_the_mean_of_category_means() -> None:
    # 3 prompts at 1.0 in one category and 1 at 0.0 in another: 0.5, not 0.75
    assert overall(_scores({"x": [1, 1, 1], "y": [0]})) == 0.5


def test_paired_difference_is_exact_when_one_model_is_the_other_shifted() -> None:
    rng = np.random.default_rng(1)
    a = _scores({c: list(rng.random(20)) for c in ("x", "y")})
    b = {key: value + 0.1 for key, value in a.items()}
    boot = bootstrap_overall({"a": a, "b": b}, resamples=500)
    diff = boot["b"] - boot["a"]
    assert np.allclose(diff, 0.1)  # the same resample on both sides: no noise in the difference
    low, high = percentile_interval(boot["a"])
    assert low < overall(a) < high and high - low > 0.05  # alone, each overall is uncertain


def test_resamples_stay_within_each_category() -> None:
    # every prompt of x scores 1, every prompt of y 0: any stratified resample has overall 0.5
    boot = bootstrap_overall({"m": _scores({"x": [1] * 5, "y": [0] * 9})}, resamples=200)
    assert np.allclose(boot["m"], 0.5)


def test_models_on_different_prompts_cannot_be_paired() -> None:
    with pytest.raises(InputError, match="same prompts"):
        bootstrap_overall({"a": _scores({"x": [1, 0]}), "b": _scores({"x": [1]})})
    with pytest.raises(InputError):
        bootstrap_overall({})
