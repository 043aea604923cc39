"""Seeded renders of a spec: flat-coloured shapes on a light background, anti-aliased by supersampling.

Objects never overlap (a gap of a few pixels keeps them apart even after blur), stay inside
the frame, and a spec's relation holds with its axis clearly dominant (the perpendicular
offset is at most ``_PERP_RATIO`` of the parallel one), so no other relation reads true.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from sanatool.errors import InputError
from sanatool.shapes.world import COLORS, MAX_OBJECTS, validate_spec

_SUPERSAMPLE = 4
_GAP = 0.08  # free space between objects, as a fraction of the image side
_BORDER = 0.04  # free space at the frame, as a fraction of the image side
_PERP_RATIO = 0.4
_TRIES = 256  # candidate positions per object before a layout attempt gives up
# Object side, as a fraction of the image side, by how many objects share the image.
_SIDE_RANGE = {1: (0.26, 0.40), 2: (0.25, 0.36), 3: (0.23, 0.30), 4: (0.22, 0.27)}
_AXIS = {"left_of": (0, -1.0), "right_of": (0, 1.0), "above": (1, -1.0), "below": (1, 1.0)}


@dataclass
class _Placed:
    shape: str
    rgb: tuple[int, int, int]
    cx: float
    cy: float
    side: float


def _try_layout(
    instances: list[tuple[str, tuple[int, int, int]]],
    relation: tuple[int, str, int] | None,
    size: int,
    scale: float,
    rng: np.random.Generator,
) -> list[_Placed] | None:
    low, high = _SIDE_RANGE[len(instances)]
    gap, border = _GAP * size, _BORDER * size
    sides = rng.uniform(low, high, len(instances)) * size * scale

    def centres(side: float) -> np.ndarray:
        # A batch of candidate centres at once: numpy draws are cheap in bulk, slow one by one.
        return rng.uniform(border + side / 2, size - border - side / 2, (_TRIES, 2))

    placed: dict[int, _Placed] = {}
    if relation is not None:
        a, kind, b = relation
        axis, sign = _AXIS[kind]
        pa, pb = centres(sides[a]), centres(sides[b])
        par = (pa[:, axis] - pb[:, axis]) * sign  # positive when a sits on the named side of b
        perp = np.abs(pa[:, 1 - axis] - pb[:, 1 - axis])
        ok = np.flatnonzero((par >= (sides[a] + sides[b]) / 2 + gap) & (perp <= _PERP_RATIO * par))
        if not len(ok):
            return None
        placed[a] = _Placed(*instances[a], *map(float, pa[ok[0]]), sides[a])
        placed[b] = _Placed(*instances[b], *map(float, pb[ok[0]]), sides[b])
    for index, inst in enumerate(instances):
        if index in placed:
            continue
        candidates = centres(sides[index])
        free = np.ones(_TRIES, dtype=bool)
        for other in placed.values():
            need = (sides[index] + other.side) / 2 + gap
            free &= (np.abs(candidates[:, 0] - other.cx) >= need) | (
                np.abs(candidates[:, 1] - other.cy) >= need
            )
        ok = np.flatnonzero(free)
        if not len(ok):
            return None
        placed[index] = _Placed(*inst, *map(float, candidates[ok[0]]), sides[index])
    return [placed[i] for i in range(len(instances))]


def _layout(spec: dict[str, Any], size: int, rng: np.random.Generator) -> list[_Placed]:
    palette = list(COLORS)
    instances: list[tuple[str, tuple[int, int, int]]] = []
    first_instance: list[int] = []
    for obj in spec["objects"]:
        first_instance.append(len(instances))
        for _ in range(obj["count"]):
            name = obj["color"] if obj["color"] is not None else palette[int(rng.integers(len(palette)))]
            instances.append((obj["shape"], COLORS[name]))
    relation = None
    if "relation" in spec:
        rel = spec["relation"]
        relation = (first_instance[rel["a"]], rel["kind"], first_instance[rel["b"]])
    # Crowded scenes occasionally fail to fit; shrink a little and retry (still deterministic).
    for attempt in range(12):
        placed = _try_layout(instances, relation, size, 0.93**attempt, rng)
        if placed is not None:
            return placed
    raise InputError(f"cannot lay out {len(instances)} objects in a {size}x{size} image; use a larger --size")


def render_spec(spec: dict[str, Any], size: int = 32, seed: int = 0) -> Image.Image:
    """Render an RGB image of ``size``×``size`` that satisfies ``spec`` (see :mod:`sanatool.shapes`).

    Deterministic in ``(spec, size, seed)``. Objects with no colour get a random palette colour.
    Raises :class:`InputError` for an invalid spec, more than ``MAX_OBJECTS`` objects, or a
    size below 16 pixels.
    """
    clean = validate_spec(spec)
    total = sum(obj["count"] for obj in clean["objects"])
    if total > MAX_OBJECTS:
        raise InputError(f"spec asks for {total} objects; a render holds at most {MAX_OBJECTS}")
    if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= 1024:
        raise InputError(f"image size must be an integer from 16 to 1024, got {size!r}")
    rng = np.random.default_rng(seed)
    grey = int(rng.integers(228, 251))
    background = tuple(int(v) for v in grey + rng.integers(-5, 6, 3))
    placed = _layout(clean, size, rng)
    big = size * _SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), background)
    draw = ImageDraw.Draw(canvas)
    for obj in placed:
        half = obj.side / 2 * _SUPERSAMPLE
        x, y = obj.cx * _SUPERSAMPLE, obj.cy * _SUPERSAMPLE
        box = [x - half, y - half, x + half - 1, y + half - 1]
        if obj.shape == "circle":
            draw.ellipse(box, fill=obj.rgb)
        elif obj.shape == "square":
            draw.rectangle(box, fill=obj.rgb)
        else:  # an upright triangle: apex at the top centre, base along the bottom
            draw.polygon([(x, y - half), (x + half, y + half), (x - half, y + half)], fill=obj.rgb)
    # Box-averaging the supersampled canvas gives exact area coverage at the edges.
    return canvas.reduce(_SUPERSAMPLE)


def degrade(image: Image.Image, blur: float = 0.6, noise: float = 6.0, seed: int = 0) -> Image.Image:
    """Blur (Gaussian, radius in pixels) and add Gaussian noise (std in 0–255 units), like a VAE round-trip.

    Used to test that the evaluator tolerates what a generator's decoder does to edges and flat areas.
    """
    out = image.convert("RGB")
    if blur > 0:
        out = out.filter(ImageFilter.GaussianBlur(blur))
    pixels = np.asarray(out, dtype=np.float32)
    if noise > 0:
        pixels = pixels + np.random.default_rng(seed).normal(0.0, noise, pixels.shape)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
