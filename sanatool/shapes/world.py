"""The vocabulary of the shapes world and its machine-readable ``spec`` (validated here).

A spec is a JSON object::

    {"objects": [{"shape": "circle", "color": "red", "count": 1},
                 {"shape": "square", "color": "blue", "count": 1}],
     "relation": {"a": 0, "kind": "left_of", "b": 1}}

``objects`` lists groups of identical objects; ``color`` may be omitted (any colour) and
``count`` defaults to 1. ``relation`` is optional: ``objects[a]`` is ``kind`` of ``objects[b]``
(``left_of``, ``right_of``, ``above``, ``below``); both groups must have count 1.
"""

from __future__ import annotations

from typing import Any

from sanatool.errors import InputError

#: The fixed palette (name → RGB), chosen so anti-aliased blends with the light background
#: stay on distinct lines in colour space (see :mod:`sanatool.shapes.evaluator`).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 40),
    "green": (30, 160, 60),
    "blue": (35, 75, 220),
    "yellow": (245, 205, 15),
    "purple": (135, 45, 175),
    "orange": (235, 115, 15),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
#: GenEval's six categories, in its reporting order.
CATEGORIES: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
#: How tables name the categories for people (``eval`` and ``demo`` alike); files keep the identifiers.
CATEGORY_TITLES: dict[str, str] = {
    "single_object": "single object",
    "two_object": "two objects",
    "counting": "counting",
    "colors": "colours",
    "position": "position",
    "color_attr": "colour attribution",
}
RELATIONS: tuple[str, ...] = ("left_of", "right_of", "above", "below")
#: The most objects one render holds.
MAX_OBJECTS = 4
#: The most objects a spec may ask for in one group (the evaluator can count past what renders hold).
MAX_COUNT = 16

_OBJECT_KEYS = {"shape", "color", "count"}
_RELATION_KEYS = {"a", "kind", "b"}


def _fail(where: str, message: str) -> InputError:
    return InputError(f"{where}: {message}")


def validate_spec(spec: Any, where: str = "spec") -> dict[str, Any]:
    """Check a spec and return a normalised copy (``count`` filled in, ``color`` None when absent).

    Raises :class:`InputError` naming ``where`` for anything malformed: unknown shape or
    colour, a non-positive count, unknown keys, a relation that points at a missing object.
    """
    if not isinstance(spec, dict):
        raise _fail(where, f"must be an object, got {type(spec).__name__}")
    unknown = set(spec) - {"objects", "relation"}
    if unknown:
        raise _fail(
            where, f"unknown key(s) {sorted(unknown)}; a spec has 'objects' and optionally 'relation'"
        )
    objects = spec.get("objects")
    if not isinstance(objects, list) or not objects:
        raise _fail(where, "'objects' must be a non-empty list of {shape, color, count} objects")
    clean: list[dict[str, Any]] = []
    for index, obj in enumerate(objects):
        here = f"{where}: objects[{index}]"
        if not isinstance(obj, dict):
            raise InputError(f"{here}: must be an object with 'shape', 'color', 'count'")
        extra = set(obj) - _OBJECT_KEYS
        if extra:
            raise InputError(f"{here}: unknown key(s) {sorted(extra)}; allowed: shape, color, count")
        shape = obj.get("shape")
        if shape not in SHAPES:
            raise InputError(f"{here}: unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
        color = obj.get("color")
        if color is not None and color not in COLORS:
            raise InputError(f"{here}: unknown colour {color!r}; choose one of {', '.join(COLORS)}")
        count = obj.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
            raise InputError(f"{here}: count must be an integer from 1 to {MAX_COUNT}, got {count!r}")
        clean.append({"shape": shape, "color": color, "count": count})
    result: dict[str, Any] = {"objects": clean}
    relation = spec.get("relation")
    if relation is not None:
        here = f"{where}: relation"
        if not isinstance(relation, dict) or set(relation) != _RELATION_KEYS:
            raise InputError(f"{here}: must be an object with exactly 'a', 'kind', 'b'")
        if relation["kind"] not in RELATIONS:
            raise InputError(
                f"{here}: unknown kind {relation['kind']!r}; choose one of {', '.join(RELATIONS)}"
            )
        ends = (relation["a"], relation["b"])
        for end in ends:
            if isinstance(end, bool) or not isinstance(end, int) or not 0 <= end < len(clean):
                raise InputError(
                    f"{here}: 'a' and 'b' must index 'objects' (0..{len(clean) - 1}), got {end!r}"
                )
        if ends[0] == ends[1]:
            raise InputError(f"{here}: 'a' and 'b' must be different objects")
        if any(clean[end]["count"] != 1 for end in ends):
            raise InputError(f"{here}: related objects must have count 1")
        result["relation"] = {"a": ends[0], "kind": relation["kind"], "b": ends[1]}
    return result
