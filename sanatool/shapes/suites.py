"""The shipped prompt suites (evaluation suite, calibration set) and the held-out training captions.

The suites are data files under ``sanatool/data/shapes/``, generated deterministically by
:func:`build_evaluation_suite` and :func:`build_calibration_prompts`; a test checks that the
shipped files are exactly what the generators produce. To change a suite, bump its version
(old results stay comparable with the old file) and regenerate::

    python -m sanatool.shapes
"""

from __future__ import annotations

import copy
import itertools
import random
from collections.abc import Iterator
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path

from sanatool.errors import InputError
from sanatool.io.prompts import PromptItem, read_prompts, write_prompts
from sanatool.shapes.grammar import category_prompts, random_prompt
from sanatool.shapes.world import CATEGORIES

SUITE_VERSION = 1
EVAL_SUITE_FILE = f"eval_suite_v{SUITE_VERSION}.jsonl"
CALIBRATION_FILE = f"calibration_v{SUITE_VERSION}.jsonl"
EVAL_PER_CATEGORY = 50
CALIBRATION_SIZE = 100
_EVAL_SEED = 20240501
_CALIBRATION_SEED = 20240502
# How often each kind of scene appears in training data; "multi" scenes (3–4 objects, mixed) only there.
_TRAINING_MIX = {
    "single_object": 0.12,
    "colors": 0.10,
    "two_object": 0.18,
    "counting": 0.15,
    "position": 0.20,
    "color_attr": 0.10,
    "multi": 0.15,
}


def _balanced(category: str, count: int, rng: random.Random, taken: set[str]) -> list[PromptItem]:
    """``count`` distinct prompts of a category, cycling over its balancing keys (shape, colour, relation...)."""
    by_key: dict[tuple, list[PromptItem]] = {}
    for key, item in category_prompts(category):
        if item.prompt not in taken:
            by_key.setdefault(key, []).append(item)
    keys = sorted(by_key)
    rng.shuffle(keys)
    chosen: list[PromptItem] = []
    while len(chosen) < count:
        live = [key for key in keys if by_key[key]]
        if not live:
            raise ValueError(f"the grammar has fewer than {count} unused {category} prompts")
        for key in live[: count - len(chosen)]:
            pool = by_key[key]
            item = pool.pop(rng.randrange(len(pool)))
            taken.add(item.prompt)
            chosen.append(item)
    return chosen


def build_evaluation_suite() -> list[PromptItem]:
    """Generate the evaluation suite: ``EVAL_PER_CATEGORY`` prompts per GenEval category, all distinct."""
    rng, taken = random.Random(_EVAL_SEED), set()
    return [item for category in CATEGORIES for item in _balanced(category, EVAL_PER_CATEGORY, rng, taken)]


def build_calibration_prompts() -> list[PromptItem]:
    """Generate the calibration set: ``CALIBRATION_SIZE`` prompts over the six categories, none in the evaluation suite."""
    rng = random.Random(_CALIBRATION_SEED)
    taken = {item.prompt for item in build_evaluation_suite()}
    share, extra = divmod(CALIBRATION_SIZE, len(CATEGORIES))
    items: list[PromptItem] = []
    for index, category in enumerate(CATEGORIES):
        items += _balanced(category, share + (index < extra), rng, taken)
    return items


def shipped_path(name: str) -> Path:
    """The path of a shipped data file under ``sanatool/data/shapes/``."""
    return Path(str(resources.files("sanatool") / "data" / "shapes" / name))


@cache
def _load(name: str) -> tuple[PromptItem, ...]:
    path = shipped_path(name)
    if not path.is_file():
        raise InputError(
            f"the shipped suite {path} is missing; reinstall sanatool (or run python -m sanatool.shapes)"
        )
    return tuple(read_prompts(path))


def evaluation_suite() -> list[PromptItem]:
    """The shipped evaluation suite (``eval_suite_v1.jsonl``): prompts with ``category`` and ``spec``."""
    return copy.deepcopy(list(_load(EVAL_SUITE_FILE)))


def calibration_prompts() -> list[PromptItem]:
    """The shipped calibration set (``calibration_v1.jsonl``) of 100 prompts, for ``importance``."""
    return copy.deepcopy(list(_load(CALIBRATION_FILE)))


@lru_cache(maxsize=1)
def _held_out() -> frozenset[str]:
    return frozenset(item.prompt for item in _load(EVAL_SUITE_FILE))


def iter_training_captions(seed: int = 0) -> Iterator[PromptItem]:
    """Training captions (with ``category`` and ``spec``) from the grammar, seeded, one at a time, forever.

    No caption is an evaluation-suite prompt: those are held out. Categories follow a fixed
    mix that adds busier ``multi`` scenes (three or four objects) to the six GenEval kinds.
    """
    rng = random.Random(seed)
    kinds, weights = list(_TRAINING_MIX), list(_TRAINING_MIX.values())
    held_out = _held_out()
    while True:
        item = random_prompt(rng.choices(kinds, weights)[0], rng)
        if item.prompt not in held_out:
            yield item


def training_captions(n: int, seed: int = 0) -> list[PromptItem]:
    """The first ``n`` of :func:`iter_training_captions` as a list."""
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise InputError(f"the number of captions must be a positive integer, got {n!r}")
    return list(itertools.islice(iter_training_captions(seed), n))


def write_shipped_suites() -> list[Path]:
    """Regenerate the shipped suite files from the generators; returns the paths written."""
    written = []
    for name, items in (
        (EVAL_SUITE_FILE, build_evaluation_suite()),
        (CALIBRATION_FILE, build_calibration_prompts()),
    ):
        write_prompts(shipped_path(name), items)
        written.append(shipped_path(name))
    return written
