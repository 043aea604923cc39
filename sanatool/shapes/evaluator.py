"""The rule-based evaluator: detect coloured shapes from pixels alone and check a spec's clauses.

Detection, step by step:

1. **Background**: the per-channel median of the border pixels (renders and samples are
   mostly background there).
2. **Colour per pixel**: every palette colour ``P`` defines a blend line ``B + α (P − B)``
   from the background ``B``. A pixel takes the colour whose line it lies closest to, and is
   foreground when its blend weight ``α ≥ 0.5`` and it lies near that line. Anti-aliased
   edges are blends of one colour with the background, so they stay on the right line
   (nearest-palette-colour would turn an orange edge yellow).
3. **Objects**: 8-connected components of the foreground; a component whose pixels are
   split between colours (two shapes touching) is split by colour, and pieces smaller
   than a minimum area (noise, fringes) are dropped.
4. **Shape** from the object's soft mask (blend weights, so blur hurts little): an upright
   triangle's mass sits low (vertical skewness about −0.5, the others 0); a square fills
   the product of its tallest column and widest row, a circle only π/4 of it.

Clauses checked, per object group of the spec: ``shape`` (at least one object of that
shape, any colour), ``color`` (at least one of that shape in that colour; only when the spec
gives a colour), ``count`` (exactly ``count`` of that shape and colour); and ``relation``
when the spec has one: some pair of matching objects whose centroid offset, after
subtracting a margin of ``_MARGIN`` × their summed extents per axis, points within 60° of
the named direction. ``score`` is the fraction of clauses met; ``correct`` means all.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from sanatool.errors import InputError
from sanatool.shapes.world import COLORS, validate_spec

_NAMES = tuple(COLORS)
_PALETTE = np.array([COLORS[name] for name in _NAMES], dtype=np.float32)
_MIN_ALPHA = 0.5
_MAX_RESIDUAL = 70.0  # distance (0–255 units) from a colour's blend line still counted as that colour
_MIN_AREA_FRACTION = 0.006  # smallest object, as a fraction of the image area (6 px at 32×32)
_SPLIT_SHARE = 0.25  # a second colour holding this share of a component splits it
_MARGIN = 0.1
_PAD = 2  # pixels around an object's mask that its soft mask may use (blurred edges)
_SOFT_FLOOR = 0.1
# Decision thresholds, about halfway between the shapes' values: the skewness of a triangle
# is −0.57 sharp and stays below −0.35 under a VAE-like blur, the symmetric shapes' near 0;
# fill is 1 for a square and π/4 ≈ 0.79 for a circle (blur moves them by a few hundredths).
_TRIANGLE_SKEW = -0.25
_SQUARE_FILL = 0.9
_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


@dataclass
class Detection:
    """One detected object: colour, shape, pixel area, centroid (x, y) and bounding box (x0, y0, x1, y1)."""

    color: str
    shape: str
    area: int
    centroid: tuple[float, float]
    bbox: tuple[int, int, int, int]


@dataclass
class Clause:
    """One checked clause: a readable name, whether it holds, and what was found."""

    name: str
    met: bool
    found: str


@dataclass
class ImageVerdict:
    """The evaluator's judgement of one image against one spec."""

    correct: bool
    score: float
    clauses: list[Clause] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        """The clauses that do not hold, each as ``"<clause>: <what was found>"``."""
        return [f"{c.name}: {c.found}" for c in self.clauses if not c.met]


def _as_pixels(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    if not isinstance(image, np.ndarray):
        raise InputError(f"expected a PIL image or a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] not in (3, 4) or min(image.shape[:2]) < 8:
        raise InputError(f"expected an H×W×3 (or ×4) image array of at least 8×8, got shape {image.shape}")
    pixels = image[..., :3].astype(np.float32)
    if np.issubdtype(image.dtype, np.floating) and pixels.max(initial=0.0) <= 1.0:
        pixels = pixels * 255.0  # floats in [0, 1]
    return pixels


def _background(pixels: np.ndarray) -> np.ndarray:
    border = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    return np.median(border, axis=0)


def _classify_pixels(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel: the palette index of its blend line, whether it is foreground, and all blend weights."""
    background = _background(pixels)
    offset = pixels - background  # H×W×3
    lines = _PALETTE - background  # K×3
    norms = np.maximum((lines**2).sum(axis=1), 1.0)
    alpha = np.clip(np.einsum("hwc,kc->hwk", offset, lines) / norms, 0.0, 1.0)
    residual = np.linalg.norm(offset[..., None, :] - alpha[..., None] * lines, axis=-1)
    best = residual.argmin(axis=-1)
    best_alpha = np.take_along_axis(alpha, best[..., None], axis=-1)[..., 0]
    best_residual = np.take_along_axis(residual, best[..., None], axis=-1)[..., 0]
    return best, (best_alpha >= _MIN_ALPHA) & (best_residual <= _MAX_RESIDUAL), alpha


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a boolean mask, each as an (N, 2) array of (row, col)."""
    height, width = mask.shape
    seen = np.zeros_like(mask)
    found: list[np.ndarray] = []
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        queue, members = deque([start]), []
        while queue:
            row, col = queue.popleft()
            members.append((row, col))
            for dr, dc in _NEIGHBOURS:
                r, c = row + dr, col + dc
                if 0 <= r < height and 0 <= c < width and mask[r, c] and not seen[r, c]:
                    seen[r, c] = True
                    queue.append((r, c))
        found.append(np.array(members))
    return found


def _shape_features(soft: np.ndarray) -> tuple[float, float]:
    """Size-free features of one object's soft mask: (fill, skew).

    ``fill`` = area / (tallest column × widest row): 1 for a square, π/4 for a circle, 1/2
    for an upright triangle; blur spreads mass but keeps the column and row sums through a
    shape's middle, so it barely moves. ``skew`` = skewness of the mass along the vertical
    axis: about −0.57 for an upright triangle (its mass sits low), 0 for the symmetric
    shapes; blur only shrinks it a little (it adds variance, never a third moment).
    """
    columns, rows = soft.sum(axis=0), soft.sum(axis=1)
    area = float(rows.sum())
    fill = area / max(float(columns.max()) * float(rows.max()), 1e-6)
    y = np.arange(len(rows), dtype=np.float64)
    mean = float((rows * y).sum()) / area
    var = float((rows * (y - mean) ** 2).sum()) / area
    skew = float((rows * (y - mean) ** 3).sum()) / area / max(var, 1e-6) ** 1.5
    return fill, skew


def _shape_of(fill: float, skew: float) -> str:
    if skew < _TRIANGLE_SKEW:
        return "triangle"
    return "square" if fill >= _SQUARE_FILL else "circle"


def detect(image: Image.Image | np.ndarray) -> list[Detection]:
    """Detect the coloured shapes in an image (PIL image, or H×W×3 array: uint8 or floats in [0, 1])."""
    pixels = _as_pixels(image)
    labels, foreground, alpha = _classify_pixels(pixels)
    min_area = max(4, round(_MIN_AREA_FRACTION * labels.size))
    pieces: list[tuple[int, np.ndarray]] = []
    for component in _components(foreground):
        if len(component) < min_area:
            continue
        colours = labels[component[:, 0], component[:, 1]]
        votes = np.bincount(colours, minlength=len(_NAMES))
        major = [k for k in np.argsort(-votes) if votes[k] >= max(min_area, _SPLIT_SHARE * len(component))]
        if len(major) <= 1:
            pieces.append((int(votes.argmax()), component))
            continue
        # Shapes of different colours touching: split the component by colour.
        for k in major:
            sub = np.zeros_like(foreground)
            keep = component[colours == k]
            sub[keep[:, 0], keep[:, 1]] = True
            pieces += [(int(k), piece) for piece in _components(sub) if len(piece) >= min_area]
    # Which piece owns each foreground pixel, so one object's soft mask excludes its neighbours.
    owner = np.full(labels.shape, -1)
    for index, (_, points) in enumerate(pieces):
        owner[points[:, 0], points[:, 1]] = index
    height, width = labels.shape
    detections: list[Detection] = []
    for index, (k, points) in enumerate(pieces):
        rows, cols = points[:, 0], points[:, 1]
        top, bottom = max(rows.min() - _PAD, 0), min(rows.max() + _PAD + 1, height)
        left, right = max(cols.min() - _PAD, 0), min(cols.max() + _PAD + 1, width)
        soft = alpha[top:bottom, left:right, k].copy()
        window_owner = owner[top:bottom, left:right]
        soft[(window_owner != -1) & (window_owner != index)] = 0.0
        soft[soft < _SOFT_FLOOR] = 0.0  # background noise projected onto the colour line
        detections.append(
            Detection(
                color=_NAMES[k],
                shape=_shape_of(*_shape_features(soft)),
                area=len(points),
                centroid=(round(float(cols.mean()), 2), round(float(rows.mean()), 2)),
                bbox=(int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())),
            )
        )
    return detections


def _noun(obj: dict[str, Any], count: int | None = None) -> str:
    count = obj["count"] if count is None else count
    colour = f"{obj['color']} " if obj["color"] else ""
    return f"{count} {colour}{obj['shape']}{'s' if count != 1 else ''}"


def _relation_holds(kind: str, one: Detection, two: Detection) -> bool:
    offset = np.subtract(one.centroid, two.centroid)
    extent = np.array(
        [
            one.bbox[2] - one.bbox[0] + two.bbox[2] - two.bbox[0] + 2,
            one.bbox[3] - one.bbox[1] + two.bbox[3] - two.bbox[1] + 2,
        ]
    )
    length = float(np.linalg.norm(offset))
    if length == 0.0:
        return False
    revised = np.maximum(np.abs(offset) - _MARGIN * extent, 0.0) * np.sign(offset) / length
    dx, dy = revised
    return {"left_of": dx < -0.5, "right_of": dx > 0.5, "above": dy < -0.5, "below": dy > 0.5}[kind]


def evaluate_image(image: Image.Image | np.ndarray, spec: dict[str, Any]) -> ImageVerdict:
    """Check every clause of ``spec`` against the shapes detected in ``image``.

    Returns an :class:`ImageVerdict` (``correct`` when all clauses hold, ``score`` = fraction
    met, the clauses and the detections). Raises :class:`InputError` for an invalid spec
    (unknown colour or shape, ...) or an image that is not H×W×3.
    """
    clean = validate_spec(spec)
    detections = detect(image)
    clauses: list[Clause] = []
    matches: list[list[Detection]] = []
    for obj in clean["objects"]:
        same_shape = [d for d in detections if d.shape == obj["shape"]]
        matching = [d for d in same_shape if obj["color"] is None or d.color == obj["color"]]
        matches.append(matching)
        clauses.append(Clause(f"a {obj['shape']}", bool(same_shape), f"found {len(same_shape)}"))
        if obj["color"] is not None:
            clauses.append(
                Clause(
                    f"a {obj['color']} {obj['shape']}",
                    bool(matching),
                    f"{obj['shape']} colours: {sorted(d.color for d in same_shape) or 'none'}",
                )
            )
        clauses.append(
            Clause(f"exactly {_noun(obj)}", len(matching) == obj["count"], f"found {len(matching)}")
        )
    relation = clean.get("relation")
    if relation is not None:
        kind, a, b = relation["kind"], relation["a"], relation["b"]
        holds = any(
            _relation_holds(kind, one, two) for one in matches[a] for two in matches[b] if one is not two
        )
        found = (
            f"centroids {[d.centroid for d in matches[a]]} vs {[d.centroid for d in matches[b]]}"
            if matches[a] and matches[b]
            else "an object is missing"
        )
        name = f"{_noun(clean['objects'][a])} {kind.replace('_', ' ')} {_noun(clean['objects'][b])}"
        clauses.append(Clause(name, holds, found))
    met = sum(c.met for c in clauses)
    return ImageVerdict(
        correct=met == len(clauses), score=met / len(clauses), clauses=clauses, detections=detections
    )
