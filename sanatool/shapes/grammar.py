"""The caption grammar: prompts of each GenEval category, built from templates, with their specs.

Every prompt the shapes world uses (evaluation suite, calibration set, training captions)
comes from here, so the words a model sees in training are the words it is tested on;
only the exact evaluation prompts are held out of training (see :mod:`sanatool.shapes.suites`).
"""

from __future__ import annotations

import copy
import itertools
import random
from functools import cache, lru_cache
from typing import Any

from sanatool.errors import InputError
from sanatool.io.prompts import PromptItem
from sanatool.shapes.world import CATEGORIES, COLORS, MAX_OBJECTS, SHAPES, validate_spec

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
#: Phrasings of each relation; ``objects[a] <phrase> objects[b]``.
RELATION_PHRASES = {
    "left_of": ("to the left of", "left of"),
    "right_of": ("to the right of", "right of"),
    "above": ("above", "over"),
    "below": ("below", "under"),
}
_OPPOSITE = {"left_of": "right_of", "right_of": "left_of", "above": "below", "below": "above"}

# {A}/{B}: object phrases with article ("an orange circle"); {cs}: colour + shape; {s}/{c}: bare words.
_SINGLE = ("{A}", "a photo of {A}", "one {cs}", "a single {cs}", "an image of {A}")
_COLORS = (
    "{art_s} {s} that is {c}",
    "{art_s} {s} colored {c}",
    "{art_s} {s} painted {c}",
    "{art_s} {s} in {c}",
    "{art_c} {c} colored {s}",
)
_TWO = ("{A} and {B}", "{A} with {B}", "a photo of {A} and {B}")
_COUNTING = ("{N}", "exactly {N}", "a photo of {N}")
_POSITION = ("{A} {rel} {B}", "a photo of {A} {rel} {B}")
_COLOR_ATTR = ("{A} and {B}", "{A} together with {B}", "a photo of {A} and {B}")
_MULTI = ("{list}", "a photo of {list}")


def article(word: str) -> str:
    """``a`` or ``an`` before ``word``."""
    return "an" if word[0] in "aeiou" else "a"


def object_phrase(shape: str, color: str | None = None, count: int = 1) -> str:
    """``a red circle``, ``an orange square``, ``three blue triangles``, ``a circle``."""
    words = " ".join(([color] if color else []) + [shape + ("s" if count != 1 else "")])
    return f"{article(words)} {words}" if count == 1 else f"{NUMBER_WORDS[count]} {words}"


def _obj(shape: str, color: str | None, count: int = 1) -> dict[str, Any]:
    return {"shape": shape, "color": color, "count": count}


def _item(
    prompt: str, category: str, objects: list[dict[str, Any]], relation: dict | None = None
) -> PromptItem:
    spec: dict[str, Any] = {"objects": objects}
    if relation is not None:
        spec["relation"] = relation
    return PromptItem(prompt=prompt, category=category, spec=spec)


def _single(shape: str, color: str, template: str) -> PromptItem:
    text = template.format(A=object_phrase(shape, color), cs=f"{color} {shape}")
    return _item(text, "single_object", [_obj(shape, color)])


def _colors(shape: str, color: str, template: str) -> PromptItem:
    text = template.format(art_s=article(shape), art_c=article(color), s=shape, c=color)
    return _item(text, "colors", [_obj(shape, color)])


def _pair(category: str, one: tuple[str, str], two: tuple[str, str], template: str) -> PromptItem:
    text = template.format(A=object_phrase(*one), B=object_phrase(*two))
    return _item(text, category, [_obj(*one), _obj(*two)])


def _counting(shape: str, color: str, count: int, template: str) -> PromptItem:
    return _item(
        template.format(N=object_phrase(shape, color, count)), "counting", [_obj(shape, color, count)]
    )


def _position(
    one: tuple[str, str], kind: str, two: tuple[str, str], phrase: str, template: str
) -> PromptItem:
    text = template.format(A=object_phrase(*one), rel=phrase, B=object_phrase(*two))
    return _item(text, "position", [_obj(*one), _obj(*two)], {"a": 0, "kind": kind, "b": 1})


@cache
def _enumerate(category: str) -> tuple[tuple[tuple, PromptItem], ...]:
    """Every prompt of a category, each with the key the suites balance on."""
    colors, pairs = list(COLORS), list(itertools.permutations(SHAPES, 2))
    rows: list[tuple[tuple, PromptItem]] = []
    if category == "single_object":
        for shape, color, template in itertools.product(SHAPES, colors, _SINGLE):
            rows.append(((shape, color), _single(shape, color, template)))
    elif category == "colors":
        for shape, color, template in itertools.product(SHAPES, colors, _COLORS):
            rows.append(((color, shape), _colors(shape, color, template)))
    elif category == "two_object":
        for (s1, s2), c1, c2, template in itertools.product(pairs, colors, colors, _TWO):
            rows.append(((s1, s2), _pair("two_object", (s1, c1), (s2, c2), template)))
    elif category == "counting":
        for shape, color, count, template in itertools.product(SHAPES, colors, (2, 3, 4), _COUNTING):
            rows.append(((count, shape), _counting(shape, color, count, template)))
    elif category == "position":
        things = list(itertools.product(SHAPES, colors))
        for one, two in itertools.permutations(things, 2):
            for kind, template in itertools.product(RELATION_PHRASES, _POSITION):
                for phrase in RELATION_PHRASES[kind]:
                    rows.append(((kind,), _position(one, kind, two, phrase, template)))
    elif category == "color_attr":
        for (s1, s2), (c1, c2), template in itertools.product(
            pairs, itertools.permutations(colors, 2), _COLOR_ATTR
        ):
            rows.append(((s1, s2), _pair("color_attr", (s1, c1), (s2, c2), template)))
    else:
        raise InputError(f"unknown category {category!r}; choose one of {', '.join(CATEGORIES)}")
    return tuple(rows)


def category_prompts(category: str) -> list[tuple[tuple, PromptItem]]:
    """All prompts the grammar has for ``category``, each with its balancing key (fresh copies)."""
    return [(key, copy.deepcopy(item)) for key, item in _enumerate(category)]


def multi_object_prompt(rng: random.Random) -> PromptItem:
    """A training caption for a busier scene: two or three groups, three or four objects in all."""
    total = rng.choice((3, 4))
    groups = rng.choice((2, 3))
    counts = [1] * groups
    for _ in range(total - groups):
        counts[rng.randrange(groups)] += 1
    things = rng.sample(list(itertools.product(SHAPES, COLORS)), groups)
    objects = [_obj(shape, color, count) for (shape, color), count in zip(things, counts, strict=True)]
    phrases = [object_phrase(o["shape"], o["color"], o["count"]) for o in objects]
    listing = ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return _item(rng.choice(_MULTI).format(list=listing), "multi", objects)


def random_prompt(category: str, rng: random.Random) -> PromptItem:
    """One prompt of ``category`` (one of the six, or ``multi`` for training scenes) drawn with ``rng``."""
    if category == "multi":
        return multi_object_prompt(rng)
    rows = _enumerate(category)
    return copy.deepcopy(rows[rng.randrange(len(rows))][1])


def tokens(prompt: str) -> list[str]:
    """Split a prompt into the grammar's tokens: words, and ``,`` on its own."""
    return prompt.replace(",", " , ").split()


@lru_cache(maxsize=1)
def _vocabulary() -> tuple[str, ...]:
    words: set[str] = {","}  # multi-object training captions list their groups with commas
    for category in CATEGORIES:
        for _, item in _enumerate(category):
            words.update(tokens(item.prompt))
    words.update(NUMBER_WORDS.values())  # multi-object captions count up to MAX_OBJECTS
    words.update(f"{shape}s" for shape in SHAPES)
    return tuple(sorted(words))


def vocabulary() -> list[str]:
    """Every token the grammar can produce (words and ``,``), sorted: enough for a word-level tokenizer."""
    return list(_vocabulary())


def mismatched_spec(spec: dict[str, Any], category: str, rng: random.Random) -> dict[str, Any]:
    """A spec of a *different* prompt of the same category, differing where the category tests.

    single_object: another shape; colors: another colour; two_object: one shape replaced by
    the third shape; counting: count off by one; position: relation reversed; color_attr:
    colours swapped. Renders of it must fail the original spec (the evaluator's specificity test).
    """
    clean = validate_spec(spec)
    objects = [dict(obj) for obj in clean["objects"]]
    out: dict[str, Any] = {"objects": objects}
    if category == "single_object":
        objects[0]["shape"] = rng.choice([s for s in SHAPES if s != objects[0]["shape"]])
    elif category == "colors":
        objects[0]["color"] = rng.choice([c for c in COLORS if c != objects[0]["color"]])
    elif category == "two_object":
        unused = [s for s in SHAPES if s not in {o["shape"] for o in objects}]
        objects[rng.randrange(len(objects))]["shape"] = rng.choice(unused)
    elif category == "counting":
        count = objects[0]["count"]
        options = [c for c in (count - 1, count + 1) if 1 <= c <= MAX_OBJECTS]
        objects[0]["count"] = rng.choice(options)
    elif category == "position":
        relation = dict(clean["relation"])
        relation["kind"] = _OPPOSITE[relation["kind"]]
        out["relation"] = relation
    elif category == "color_attr":
        objects[0]["color"], objects[1]["color"] = objects[1]["color"], objects[0]["color"]
    else:
        raise InputError(f"unknown category {category!r}; choose one of {', '.join(CATEGORIES)}")
    return out
