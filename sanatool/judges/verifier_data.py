"""Training data for the learned verifier: (image, caption, yes/no) pairs and dense render labels.

Two sources:

- **Renders** of training captions (evaluation prompts held out by the grammar), most
  blurred and noised like a VAE round-trip. Each is paired with its own caption (yes), with
  *perturbed* captions (no): a wrong colour, a wrong shape, a count off by one, the relation
  reversed, or two objects' colours swapped, and with another render's caption (labelled by
  the evaluator). Perturbations edit the caption word by word, so a negative keeps its
  positive's template and the verifier cannot tell them apart by wording; each is chosen so
  the render cannot satisfy it (the evaluator agrees: tested). Renders also carry per-cell
  labels (which object class covers each cell of the verifier's grid, and where each object's
  centre is), read from the clean render by the shapes detector, to teach the image encoder.
- **Decoded samples** from a samples dir (``sanatool sample`` on prompts with specs), each
  image with its own prompt and with perturbed prompts, labelled by the rule-based
  evaluator. These teach the verifier what a generator's failures look like.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from sanatool.errors import InputError
from sanatool.progress import ProgressFn, no_progress

PERTURBATIONS = ("color", "shape", "count", "relation", "swap")
#: Perturbations tried first when they apply: they are the hardest to learn and the rarest.
_PRIORITY = ("relation", "count")
_OPPOSITE_WORD = {
    "left": "right",
    "right": "left",
    "above": "below",
    "below": "above",
    "over": "under",
    "under": "over",
}
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


def _shape_positions(words: Sequence[str], spec: dict[str, Any]) -> list[int] | None:
    """Index of each object group's shape word (captions name groups in order); None when they do not line up."""
    from sanatool.shapes import SHAPES

    shapes = [i for i, w in enumerate(words) if w in SHAPES or (w.endswith("s") and w[:-1] in SHAPES)]
    groups = spec["objects"]
    if len(shapes) != len(groups) or any(
        not words[i].startswith(obj["shape"]) for i, obj in zip(shapes, groups, strict=True)
    ):
        return None
    return shapes


def _locate(words: Sequence[str], spec: dict[str, Any]) -> tuple[list[int], list[int]] | None:
    """Indices of each object group's colour word and shape word (grammar captions name them in order)."""
    from sanatool.shapes import COLORS

    shapes = _shape_positions(words, spec)
    colors = [i for i, w in enumerate(words) if w in COLORS]
    if shapes is None or len(colors) != len(spec["objects"]):
        return None
    if any(words[ci] != obj.get("color") for obj, ci in zip(spec["objects"], colors, strict=True)):
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
    from sanatool.shapes import COLORS, SHAPES, tokens
    from sanatool.shapes.grammar import NUMBER_WORDS

    words = tokens(caption.lower())
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
        options = [(k, c) for k, obj in enumerate(objects) for c in COLORS if (obj["shape"], c) not in things]
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
        hits = [i for i, w in enumerate(words) if w in _OPPOSITE_WORD]
        if "relation" not in spec or len(hits) != 1:
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


@lru_cache(maxsize=1)
def _evaluation_prompts() -> frozenset[str]:
    from sanatool.shapes import evaluation_suite

    return frozenset(item.prompt for item in evaluation_suite())


def _mirror_words(caption: str) -> str:
    from sanatool.shapes import tokens

    swap = {"left": "right", "right": "left"}
    return _join([swap.get(word, word) for word in tokens(caption.lower())])


def split_key(caption: str) -> str:
    """The text that decides a caption's train/validation side: the same for a caption and its mirror.

    Training on mirrored samples would otherwise train on a validation caption spelled by a
    training caption's mirror (``a red circle left of ...`` ↔ ``... right of ...``).
    """
    from sanatool.shapes import tokens

    return min(_join(tokens(caption.lower())), _mirror_words(caption))


def refer_targets(captions: Sequence[Caption], length: int, classes: Sequence[str]) -> tuple[Any, Any]:
    """What each word of each caption refers to, from its spec: targets (B × L × classes) and a mask (B × L).

    An object group's shape word and the colour word right before it refer to the group's
    class (``"<colour> <shape>"``; spread evenly over the colours when the spec gives none),
    every other word to the background class (index 0: refers to nothing). A caption whose
    shape words do not line up one-to-one with its spec's groups is masked out.
    """
    from sanatool.shapes import COLORS, tokens

    index = {name: i for i, name in enumerate(classes)}
    targets = np.zeros((len(captions), length, len(classes)), dtype=np.float32)
    targets[..., 0] = 1.0
    mask = np.zeros((len(captions), length), dtype=np.float32)
    for row, caption in enumerate(captions):
        words = tokens(caption.text.lower())[:length]
        shapes = _shape_positions(words, caption.spec)
        if shapes is None:
            continue
        mask[row, : len(words)] = 1.0
        for i, obj in zip(shapes, caption.spec["objects"], strict=True):
            colors = [obj["color"]] if obj.get("color") else list(COLORS)
            target = np.zeros(len(classes), dtype=np.float32)
            for color in colors:
                target[index[f"{color} {obj['shape']}"]] = 1.0 / len(colors)
            targets[row, i] = target
            if i > 0 and words[i - 1] in COLORS:
                targets[row, i - 1] = target
    return targets, mask


def mirror_caption(caption: str, spec: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The caption and spec that hold for a left–right mirrored image: ``left`` and ``right`` trade places.

    None when the mirrored caption spells an evaluation-suite prompt (those stay held out).
    The shapes evaluator is mirror-symmetric (colours, fill and vertical skew do not change
    under a horizontal flip), so an image's verdict on a caption is its mirror's on this one.
    """
    text = _mirror_words(caption)
    if text in _evaluation_prompts():
        return None
    mirrored: dict[str, Any] = {"objects": [dict(obj) for obj in spec["objects"]]}
    if "relation" in spec:
        relation = dict(spec["relation"])
        relation["kind"] = {"left_of": "right_of", "right_of": "left_of"}.get(
            relation["kind"], relation["kind"]
        )
        mirrored["relation"] = relation
    return text, mirrored


def hard_negatives(caption: str, spec: dict[str, Any], count: int, rng: random.Random) -> list[Caption]:
    """Up to ``count`` perturbations of different kinds (relation and count first when they apply).

    A perturbation that spells an evaluation-suite prompt is dropped: the evaluation prompts are
    held out, and a verifier that met them only as negatives would learn to say no to them.
    """
    kinds = list(PERTURBATIONS)
    rng.shuffle(kinds)
    kinds.sort(key=lambda kind: kind not in _PRIORITY)
    held_out = _evaluation_prompts()
    out: list[Caption] = []
    for kind in kinds:
        if len(out) == count:
            break
        made = perturb(caption, spec, kind, rng)
        if made is not None and made.text not in held_out:
            out.append(made)
    return out


@dataclass
class RenderPool:
    """Renders (N × S × S × 3 uint8), their caption items, and per-cell class labels (N × cells)."""

    pixels: np.ndarray
    items: list[Any]
    cover: np.ndarray
    centre: np.ndarray

    def __len__(self) -> int:
        return len(self.items)


def cell_labels(image: Any, grid: int, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell labels of a clean render: the class covering each cell's centre, and each object's centre cell."""
    from sanatool.shapes import detect

    size = image.size[0]
    cell = size / grid
    centres = (np.arange(grid) + 0.5) * cell
    index = {name: i for i, name in enumerate(classes)}
    cover = np.zeros((grid, grid), dtype=np.int64)
    centre = np.zeros((grid, grid), dtype=np.int64)
    for found in detect(image):
        label = index[f"{found.color} {found.shape}"]
        x0, y0, x1, y1 = found.bbox
        cols = (centres >= x0) & (centres <= x1 + 1)
        rows = (centres >= y0) & (centres <= y1 + 1)
        cover[np.ix_(rows, cols)] = label
        cx, cy = found.centroid
        centre[min(int(cy // cell), grid - 1), min(int(cx // cell), grid - 1)] = label
    return cover.reshape(-1), centre.reshape(-1)


def render_pool(
    count: int,
    size: int,
    grid: int,
    classes: Sequence[str],
    seed: int,
    degrade_share: float = 0.85,
    labels: bool = True,
    progress: ProgressFn = no_progress,
) -> RenderPool:
    """``count`` renders of training captions, most blurred and noised like a decoder output.

    With ``labels``, each render's cell labels too (else they are all background). ``progress``
    hears ("renders", done, count) every 100 renders (8000 take tens of seconds).
    """
    from sanatool.shapes import degrade, render_spec, training_captions

    rng = np.random.default_rng(seed)
    items = training_captions(count, seed=seed)
    pixels = np.empty((count, size, size, 3), dtype=np.uint8)
    cover = np.zeros((count, grid * grid), dtype=np.int64)
    centre = np.zeros((count, grid * grid), dtype=np.int64)
    for index, item in enumerate(items):
        image = render_spec(item.spec, size=size, seed=seed * 1_000_003 + index)
        if labels:
            cover[index], centre[index] = cell_labels(image, grid, classes)
        if rng.random() < degrade_share:
            image = degrade(
                image, blur=float(rng.uniform(0.0, 1.0)), noise=float(rng.uniform(0.0, 10.0)), seed=index
            )
        pixels[index] = np.asarray(image, dtype=np.uint8)
        if (index + 1) % 100 == 0 or index + 1 == count:
            progress("renders", index + 1, count)
    return RenderPool(pixels, items, cover, centre)


def render_captions(pool: RenderPool, index: int, hard: int, rng: random.Random) -> list[Caption]:
    """The captions one render is trained with: its own, ``hard`` perturbations, and another render's caption.

    The other caption is labelled by the evaluator on this render (it may hold by chance).
    """
    from sanatool.shapes import evaluate_image

    item = pool.items[index]
    other = pool.items[rng.randrange(len(pool))]
    return [
        Caption(item.prompt, item.spec, True),
        *hard_negatives(item.prompt, item.spec, hard, rng),
        Caption(other.prompt, other.spec, evaluate_image(pool.pixels[index], other.spec).correct, "other"),
    ]
