"""The shapes world: sanatool's embedded, offline stand-in for real SANA data and GenEval.

Images are small renders (32×32 by default, 64×64 too) of one to four flat-coloured shapes
(circle, square, upright triangle) in six palette colours on a light background. Every
prompt carries a machine-readable **spec**, the format the renderer draws and the
evaluator checks::

    {"objects": [{"shape": "circle", "color": "red", "count": 1},
                 {"shape": "square", "color": "blue", "count": 1}],
     "relation": {"a": 0, "kind": "left_of", "b": 1}}

- ``objects``: groups of identical objects. ``shape`` ∈ :data:`SHAPES`, ``color`` ∈
  :data:`COLORS` (omit it for "any colour"), ``count`` ≥ 1 (default 1; a render holds at
  most four objects in all).
- ``relation`` (optional): ``objects[a]`` is ``kind`` of ``objects[b]``, ``kind`` one of
  ``left_of``, ``right_of``, ``above``, ``below``; both groups have count 1.

The evaluator's clauses per object group are: the shape is present (any colour); it is
present in the spec's colour; exactly ``count`` of that shape and colour. Plus the relation,
judged by centroid offset with a margin (as GenEval does). An image is *correct* when all
clauses hold; its *score* is the fraction that hold.

Prompt suites come in GenEval's six :data:`CATEGORIES`: ``single_object`` ("a blue
triangle"), ``two_object`` ("a red circle and a green square"), ``counting`` ("three yellow
squares"), ``colors`` ("a circle that is purple"), ``position`` ("a red circle to the left
of a blue square") and ``color_attr`` ("a red square and a blue circle"). The evaluation
suite and calibration set ship as JSONL under ``sanatool/data/shapes/``; training captions
use the same grammar with the evaluation prompts held out.
"""

from __future__ import annotations

from sanatool.shapes.dataset import write_ground_truth_samples, write_shapes_dataset
from sanatool.shapes.evaluator import Clause, Detection, ImageVerdict, detect, evaluate_image
from sanatool.shapes.grammar import mismatched_spec, object_phrase, tokens, vocabulary
from sanatool.shapes.render import degrade, render_spec
from sanatool.shapes.suites import (
    build_calibration_prompts,
    build_evaluation_suite,
    calibration_prompts,
    evaluation_suite,
    training_captions,
)
from sanatool.shapes.world import CATEGORIES, COLORS, MAX_OBJECTS, RELATIONS, SHAPES, validate_spec

__all__ = [
    "CATEGORIES",
    "COLORS",
    "MAX_OBJECTS",
    "RELATIONS",
    "SHAPES",
    "Clause",
    "Detection",
    "ImageVerdict",
    "build_calibration_prompts",
    "build_evaluation_suite",
    "calibration_prompts",
    "degrade",
    "detect",
    "evaluate_image",
    "evaluation_suite",
    "mismatched_spec",
    "object_phrase",
    "render_spec",
    "tokens",
    "training_captions",
    "validate_spec",
    "vocabulary",
    "write_ground_truth_samples",
    "write_shapes_dataset",
]
