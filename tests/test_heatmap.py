"""The importance picture: log colour scale, per-step ranks and the per-block profile, on awkward scores."""

from __future__ import annotations

import warnings

import pytest
from PIL import Image

from sanatool.inference.importance import HEATMAP_DECADES, log_range, step_ranks, write_heatmap
from sanatool.io.importance_file import Calibration, ImportanceResult


def _result(matrix: list[list[float]]) -> ImportanceResult:
    depth = len(matrix[0])
    scores = [sum(row[b] for row in matrix) / len(matrix) for b in range(depth)]
    return ImportanceResult(
        fingerprint="f" * 16,
        metric="1-cos",
        calibration=Calibration("calib.jsonl", 4, len(matrix), 4.5, 0),
        scores=tuple(scores),
        timesteps=tuple(float(999 - 50 * t) for t in range(len(matrix))),
        per_timestep=tuple(tuple(row) for row in matrix),
    )


def test_ranks_per_step_follow_the_ranking_rule():
    result = _result([[0.4, 0.01, 0.02, 0.0], [0.3, 0.05, 0.05, 0.0]])
    # Ties go to the lower block, as the overall ranking's do.
    assert step_ranks(result) == [[1, 3, 2, 4], [1, 2, 3, 4]]


def test_log_range_spans_the_positive_scores_and_gives_up_where_it_cannot():
    assert log_range([0.38, 0.05, 0.0, 0.01]) == (0.01, 0.38)  # a zero (an identity block) is clipped up
    assert log_range([1.0, 1e-9]) == (1.0 / 10**HEATMAP_DECADES, 1.0)  # at most that many decades
    assert log_range([0.0, 0.0]) is None and log_range([0.2, 0.2, 0.0]) is None and log_range([-0.1]) is None


@pytest.mark.parametrize(
    "matrix",
    [
        [[0.38, 0.05, 0.0, 0.02], [0.36, 0.04, 0.0, 0.03]],  # one bright block, an identity block
        [[0.2]],  # one block, one timestep
        [[0.0, 0.0], [0.0, 0.0]],  # nothing measured: no log scale
        [[0.1, 0.1, 0.1]],  # all equal
        [[-1e-9, 0.01], [0.02, 0.0]],  # float noise below zero
        [[0.01 * ((b * 7 + t) % 13) for b in range(60)] for t in range(20)],  # a grown 60-block model
    ],
    ids=["bright-column", "single", "zeros", "equal", "negative-noise", "sixty-blocks"],
)
def test_heatmap_draws_every_case_without_warnings(tmp_path, matrix):
    path = tmp_path / "importance.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns on a log scale it cannot draw
        write_heatmap(_result(matrix), path)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] >= 400 and image.size[1] >= 400
    assert [p.name for p in tmp_path.iterdir()] == ["importance.png"]  # written atomically, nothing left


def test_heatmap_refuses_to_replace_without_force(tmp_path):
    from sanatool.errors import OutputExistsError

    path = tmp_path / "importance.png"
    path.write_bytes(b"mine")
    with pytest.raises(OutputExistsError):
        write_heatmap(_result([[0.3, 0.1]]), path)
    assert path.read_bytes() == b"mine"
    write_heatmap(_result([[0.3, 0.1]]), path, force=True)
    assert path.read_bytes()[:4] == b"\x89PNG"
