"""The shapes world: spec validation, renderer, and the rule-based evaluator's accuracy."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from sanatool.errors import InputError
from sanatool.shapes import (
    CATEGORIES,
    COLORS,
    SHAPES,
    degrade,
    detect,
    evaluate_image,
    evaluation_suite,
    mismatched_spec,
    render_spec,
    validate_spec,
)

RED_LEFT_OF_BLUE = {
    "objects": [{"shape": "circle", "color": "red"}, {"shape": "square", "color": "blue"}],
    "relation": {"a": 0, "kind": "left_of", "b": 1},
}


def _accuracy(results: list[tuple[str, bool]]) -> dict[str, float]:
    by_category: dict[str, list[bool]] = {}
    for category, correct in results:
        by_category.setdefault(category, []).append(correct)
    return {name: sum(values) / len(values) for name, values in by_category.items()}


@pytest.fixture(scope="module")
def suite_verdicts() -> dict[str, list[tuple[str, bool]]]:
    """The evaluator on the whole evaluation suite: clean, noisy+blurred, and mismatched renders."""
    clean, noisy, mismatched = [], [], []
    for index, item in enumerate(evaluation_suite()):
        image = render_spec(item.spec, 32, seed=index)
        clean.append((item.category, evaluate_image(image, item.spec).correct))
        noisy.append((item.category, evaluate_image(degrade(image, 0.6, 6.0, seed=index), item.spec).correct))
        other = mismatched_spec(item.spec, item.category, random.Random(index))
        mismatched.append(
            (item.category, evaluate_image(render_spec(other, 32, seed=index), item.spec).correct)
        )
    return {"clean": clean, "noisy": noisy, "mismatched": mismatched}


def test_palette_shapes_and_categories_are_the_documented_ones():
    assert set(COLORS) == {"red", "green", "blue", "yellow", "purple", "orange"}
    assert all(len(rgb) == 3 and all(0 <= v <= 255 for v in rgb) for rgb in COLORS.values())
    assert SHAPES == ("circle", "square", "triangle")
    assert CATEGORIES == ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def test_validate_spec_normalises_defaults():
    clean = validate_spec({"objects": [{"shape": "circle"}]})
    assert clean == {"objects": [{"shape": "circle", "color": None, "count": 1}]}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"objects": [{"shape": "circle", "color": "pink"}]}, "unknown colour 'pink'"),
        ({"objects": [{"shape": "hexagon", "color": "red"}]}, "unknown shape 'hexagon'"),
        ({"objects": [{"shape": "circle", "count": 0}]}, "count must be an integer"),
        ({"objects": [{"shape": "circle", "colour": "red"}]}, "unknown key(s) ['colour']"),
        ({"objects": []}, "non-empty list"),
        ({"objects": [{"shape": "circle"}], "relation": {"a": 0, "kind": "left_of", "b": 1}}, "must index"),
        (
            {
                "objects": [{"shape": "circle"}, {"shape": "square"}],
                "relation": {"a": 0, "kind": "near", "b": 1},
            },
            "kind",
        ),
        ("a red circle", "must be an object"),
    ],
)
def test_bad_specs_are_input_errors(spec, message):
    with pytest.raises(InputError, match=None) as err:
        validate_spec(spec)
    assert message in str(err.value)
    with pytest.raises(InputError):
        evaluate_image(Image.new("RGB", (32, 32), "white"), spec)


def test_render_is_deterministic_and_sized():
    one = render_spec(RED_LEFT_OF_BLUE, 32, seed=7)
    assert one.size == (32, 32) and one.mode == "RGB"
    assert one.tobytes() == render_spec(RED_LEFT_OF_BLUE, 32, seed=7).tobytes()
    assert one.tobytes() != render_spec(RED_LEFT_OF_BLUE, 32, seed=8).tobytes()
    assert render_spec(RED_LEFT_OF_BLUE, 64, seed=7).size == (64, 64)


def test_render_has_a_light_background_and_palette_colours():
    pixels = np.asarray(
        render_spec({"objects": [{"shape": "square", "color": "green", "count": 2}]}, 32, seed=3)
    )
    corners = pixels[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners >= 220).all()
    assert (np.abs(pixels.reshape(-1, 3) - COLORS["green"]).sum(axis=1) == 0).sum() >= 2 * 25


def test_render_refuses_too_many_objects_and_tiny_sizes():
    with pytest.raises(InputError, match="at most 4"):
        render_spec({"objects": [{"shape": "circle", "count": 5}]})
    with pytest.raises(InputError, match="size"):
        render_spec({"objects": [{"shape": "circle"}]}, size=8)


def test_detect_finds_each_object_with_colour_and_shape():
    spec = {
        "objects": [
            {"shape": "circle", "color": "orange"},
            {"shape": "triangle", "color": "yellow"},
            {"shape": "square", "color": "purple", "count": 2},
        ]
    }
    found = sorted((d.color, d.shape) for d in detect(render_spec(spec, 32, seed=11)))
    assert found == [("orange", "circle"), ("purple", "square"), ("purple", "square"), ("yellow", "triangle")]


def test_evaluate_accepts_arrays_and_reports_clauses():
    image = render_spec(RED_LEFT_OF_BLUE, 32, seed=1)
    as_uint8 = np.asarray(image)
    for picture in (image, as_uint8, as_uint8.astype(np.float32) / 255.0):
        verdict = evaluate_image(picture, RED_LEFT_OF_BLUE)
        assert verdict.correct and verdict.score == 1.0 and not verdict.failed
    # shape, colour and count per object, plus the relation.
    assert len(verdict.clauses) == 7
    with pytest.raises(InputError, match="H×W×3"):
        evaluate_image(np.zeros((32, 32)), RED_LEFT_OF_BLUE)


def test_graded_score_counts_the_clauses_met():
    three = {"objects": [{"shape": "triangle", "color": "blue", "count": 3}]}
    two = render_spec({"objects": [{"shape": "triangle", "color": "blue", "count": 2}]}, 32, seed=5)
    verdict = evaluate_image(two, three)
    assert not verdict.correct
    assert verdict.score == pytest.approx(2 / 3)  # shape and colour present, count off by one
    assert verdict.failed == ["exactly 3 blue triangles: found 2"]
    blank = evaluate_image(Image.new("RGB", (32, 32), (240, 240, 240)), three)
    assert blank.score == 0.0 and blank.detections == []


def test_reversed_relation_fails_only_the_relation_clause():
    reversed_spec = mismatched_spec(RED_LEFT_OF_BLUE, "position", random.Random(0))
    assert reversed_spec["relation"]["kind"] == "right_of"
    verdict = evaluate_image(render_spec(reversed_spec, 32, seed=2), RED_LEFT_OF_BLUE)
    assert [c.name for c in verdict.clauses if not c.met] == ["1 red circle left of 1 blue square"]
    assert verdict.score == pytest.approx(6 / 7)


def test_objects_without_colour_match_any_colour():
    spec = {"objects": [{"shape": "square", "count": 2}]}
    verdict = evaluate_image(render_spec(spec, 32, seed=4), spec)
    assert verdict.correct and len(verdict.clauses) == 2


def test_clean_renders_of_the_suite_are_judged_correct(suite_verdicts):
    accuracy = _accuracy(suite_verdicts["clean"])
    assert set(accuracy) == set(CATEGORIES)
    assert min(accuracy.values()) >= 0.99, accuracy


def test_blurred_noisy_renders_are_judged_correct(suite_verdicts):
    accuracy = _accuracy(suite_verdicts["noisy"])
    assert min(accuracy.values()) >= 0.95, accuracy


def test_renders_of_a_different_prompt_are_judged_wrong(suite_verdicts):
    accuracy = _accuracy(suite_verdicts["mismatched"])
    assert max(accuracy.values()) <= 0.05, accuracy


def test_64_pixel_renders_are_judged_like_32_pixel_ones():
    items = evaluation_suite()[::10]
    verdicts = [
        evaluate_image(degrade(render_spec(i.spec, 64, seed=n), 1.0, 6.0, n), i.spec)
        for n, i in enumerate(items)
    ]
    assert sum(v.correct for v in verdicts) >= 0.95 * len(items)


def test_mismatched_spec_changes_what_the_category_tests():
    rng = random.Random(0)
    pair = {"objects": [{"shape": "circle", "color": "red"}, {"shape": "square", "color": "blue"}]}
    swapped = mismatched_spec(pair, "color_attr", rng)
    assert [o["color"] for o in swapped["objects"]] == ["blue", "red"]
    counted = mismatched_spec({"objects": [{"shape": "circle", "color": "red", "count": 4}]}, "counting", rng)
    assert counted["objects"][0]["count"] == 3
    with pytest.raises(InputError, match="unknown category"):
        mismatched_spec(pair, "style", rng)


def test_a_relation_needs_its_direction_to_dominate_beyond_the_margin():
    """Mostly above and only a little left is not "left of": the margin keeps diagonal pairs out."""
    from sanatool.shapes.evaluator import Detection, _relation_holds

    def at(x: float, y: float) -> Detection:
        return Detection("red", "circle", 16, (x, y), (int(x) - 2, int(y) - 2, int(x) + 2, int(y) + 2))

    # Offset (−6, −10): 0.51 of its length points left without a margin, 0.43 with one.
    assert not _relation_holds("left_of", at(10, 10), at(16, 20))
    assert _relation_holds("above", at(10, 10), at(16, 20))
    assert _relation_holds("left_of", at(10, 10), at(20, 12))
    assert not _relation_holds("right_of", at(10, 10), at(20, 12))
