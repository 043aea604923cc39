"""Training data for the learned verifier: (image, caption, yes/no) pairs.

Two sources:

- **Renders** of training captions (evaluation prompts held out by the grammar), blurred and
  noised like a VAE round-trip, each paired with its own caption (yes) or a *perturbed*
  caption (no): a wrong colour, a wrong shape, a count off by one, the relation reversed, or
  two objects' colours swapped. Perturbations edit the caption word by word, so a negative
  keeps its positive's template and the verifier cannot tell them apart by wording.
  Every perturbation is chosen so the render cannot satisfy it (the evaluator agrees: tested).
- **Decoded samples** from a samples dir (``sanatool sample`` on prompts with specs), each
  image with its own prompt and with perturbed prompts, labelled by the rule-based
  evaluator. These teach the verifier what a generator's failures look like.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sanatool.errors import InputError

PERTURBATIONS = ("color", "shape", "count", "relation", "swap")
_OPPOSITE_WORD = {"left": "right", "right": "left", "above": "below", "below": "above", "over": "under", "under": "over"}
_OPPOSITE_KIND = {"left_of": "right_of", "right_of": "left_of", "above": "below", "below": "above"}


@dataclass
class Caption:
    """A caption, its spec, whether it matches the image it is paired with, and how it was made."""

    text: str
    spec: dict[str, Any]
    label: bool
    kind: str = "match"


def _join(words: Sequence[str]) -> str:
    return " ".join(words).replace(" , ", ", ")


def _locate(words: Sequence[str], spec: dict[str, Any]) -> tuple[list[int], list[int]] | None:
    """Indices of each object group's colour word and shape word (grammar captions name them in order)."""
    from sanatool.shapes import COLORS, SHAPES

    colors = [i for i, w in enumerate(words) if w in COLORS]
    shapes = [i for i, w in enumerate(words) if w in SHAPES or (w.endswith("s") and w[:-1] in SHAPES)]
    groups = len(spec["objects"])
    if len(colors) != groups or len(shapes) != groups:
        return None
    for obj, ci, si in zip(spec["objects"], colors, shapes, strict=True):
        if words[ci] != obj.get("color") or not words[si].startswith(obj["shape"]):
            return None
    return colors, shapes


def _set_word(words: list[str], index: int, word: str) -> None:
    """Replace one word, fixing the article in front of it (``a red`` → ``an orange``)."""
    from sanatool.shapes.grammar import article

    words[index] = word
    if index > 0 and words[index - 1] in ("a", "an"):
        words[index - 1] = article(word)


def perturb(caption: str, spec: dict[str, Any], kind: str, rng: random.Random) -> Caption | None:
    """A caption that an image of ``spec`` cannot satisfy, made by one ``kind`` of edit; None if it doesn't apply.

    ``color``: one group gets a colour no group of its shape has. ``shape``: one group gets a
    shape no group of its colour has. ``count``: a count of two or more moves by one (within
    two to four). ``relation``: left/right, above/below, over/under reversed. ``swap``: two
    groups of different shapes trade colours.
    """
    from sanatool.shapes import COLORS, SHAPES
    from sanatool.shapes.grammar import NUMBER_WORDS

    words = caption.lower().replace(",", " , ").split()
    where = _locate(words, spec)
    if where is None:
        return None
    colors, shapes = where
    objects = [dict(obj) for obj in spec["objects"]]
    things = {(obj["shape"], obj["color"]) for obj in objects}
    new_spec: dict[str, Any] = {"objects": objects}
    if "relation" in spec:
        new_spec["relation"] = dict(spec["relation"])
    if kind == "color":
        options = [
            (k, c) for k, obj in enumerate(objects) for c in COLORS if (obj["shape"], c) not in things
        ]
        if not options:
            return None
        k, color = rng.choice(options)
        _set_word(words, colors[k], color)
        objects[k]["color"] = color
    elif kind == "shape":
        options = [(k, s) for k, obj in enumerate(objects) for s in SHAPES if (s, obj["color"]) not in things]
        if not options:
            return None
        k, shape = rng.choice(options)
        plural = words[shapes[k]].endswith("s")
        _set_word(words, shapes[k], shape + ("s" if plural else ""))
        objects[k]["shape"] = shape
    elif kind == "count":
        options = [
            (k, c)
            for k, obj in enumerate(objects)
            if obj["count"] >= 2 and words[colors[k] - 1] == NUMBER_WORDS[obj["count"]]
            for c in (obj["count"] - 1, obj["count"] + 1)
            if 2 <= c <= 4
        ]
        if not options:
            return None
        k, count = rng.choice(options)
        words[colors[k] - 1] = NUMBER_WORDS[count]
        objects[k]["count"] = count
    elif kind == "relation":
        if "relation" not in spec:
            return None
        hits = [i for i, w in enumerate(words) if w in _OPPOSITE_WORD]
        if len(hits) != 1:
            return None
        words[hits[0]] = _OPPOSITE_WORD[words[hits[0]]]
        new_spec["relation"]["kind"] = _OPPOSITE_KIND[spec["relation"]["kind"]]
    elif kind == "swap":
        options = [
            (a, b)
            for a in range(len(objects))
            for b in range(a + 1, len(objects))
            if objects[a]["shape"] != objects[b]["shape"]
            and objects[a]["color"] != objects[b]["color"]
            and (objects[a]["shape"], objects[b]["color"]) not in things
        ]
        if not options:
            return None
        a, b = rng.choice(options)
        ca, cb = objects[a]["color"], objects[b]["color"]
        _set_word(words, colors[a], cb)
        _set_word(words, colors[b], ca)
        objects[a]["color"], objects[b]["color"] = cb, ca
    else:
        raise InputError(f"unknown perturbation {kind!r}; choose one of {', '.join(PERTURBATIONS)}")
    return Caption(_join(words), new_spec, False, kind)


def random_negative(caption: str, spec: dict[str, Any], rng: random.Random) -> Caption | None:
    """A perturbation of a kind drawn uniformly among those that apply to this caption."""
    kinds = list(PERTURBATIONS)
    rng.shuffle(kinds)
    for kind in kinds:
        made = perturb(caption, spec, kind, rng)
        if made is not None:
            return made
    return None


@dataclass
class ImagePool:
    """Images (N × S × S × 3 uint8) and, per image, the captions it can be paired with."""

    pixels: np.ndarray
    captions: list[list[Caption]]

    def __len__(self) -> int:
        return len(self.captions)


def render_pool(count: int, size: int, seed: int, degrade_share: float = 0.85) -> tuple[np.ndarray, list[Any]]:
    """``count`` renders of training captions (``PromptItem``s), most blurred and noised like a decoder output."""
    from sanatool.shapes import degrade, render_spec, training_captions

    rng = np.random.default_rng(seed)
    items = training_captions(count, seed=seed)
    pixels = np.empty((count, size, size, 3), dtype=np.uint8)
    for index, item in enumerate(items):
        image = render_spec(item.spec, size=size, seed=seed * 1_000_003 + index)
        if rng.random() < degrade_share:
            image = degrade(image, blur=float(rng.uniform(0.0, 1.0)), noise=float(rng.uniform(0.0, 10.0)), seed=index)
        pixels[index] = np.asarray(image, dtype=np.uint8)
    return pixels, items


def draw_render_pairs(
    pixels: np.ndarray, items: Sequence[Any], indices: Sequence[int], rng: random.Random
) -> tuple[np.ndarray, list[Caption]]:
    """For each render index: its caption (half the time) or a perturbed one."""
    captions: list[Caption] = []
    for index in indices:
        item = items[index]
        negative = random_negative(item.prompt, item.spec, rng) if rng.random() < 0.5 else None
        captions.append(negative or Caption(item.prompt, item.spec, True))
    return pixels[list(indices)], captions
