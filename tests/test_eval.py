"""``sanatool eval`` and :func:`sanatool.samples.evaluate.evaluate_samples_dir`: GenEval-style scoring of a samples dir."""

from __future__ import annotations

import json
import random

import pytest

from sanatool.errors import InputError
from sanatool.io.manifest import MANIFEST_NAME
from sanatool.io.prompts import read_prompts
from sanatool.samples.evaluate import evaluate_samples_dir, write_eval_json
from sanatool.shapes import (
    calibration_prompts,
    evaluation_suite,
    mismatched_spec,
    render_spec,
    write_ground_truth_samples,
)


@pytest.fixture
def ground_truth(tmp_path):
    """A samples dir of ground-truth renders: two prompts of each category."""
    suite = evaluation_suite()
    picked = [
        item
        for category in dict.fromkeys(i.category for i in suite)
        for item in suite
        if item.category == category
    ][::25]
    return write_ground_truth_samples(picked, tmp_path / "gt", seed=3)


def _manifest(samples_dir):
    return [json.loads(line) for line in (samples_dir / MANIFEST_NAME).read_text().splitlines()]


def _rewrite(samples_dir, rows):
    (samples_dir / MANIFEST_NAME).write_text(
        "".join(json.dumps(r) + "\n" if isinstance(r, dict) else r for r in rows)
    )


def test_ground_truth_scores_one(ground_truth):
    report = evaluate_samples_dir(ground_truth)
    assert report.overall == 1.0 and report.scored == 12 and not report.problems
    assert {name: (c.correct, c.total) for name, c in report.categories.items()} == {
        name: (2, 2)
        for name in ("single_object", "two_object", "counting", "colors", "position", "color_attr")
    }


def test_overall_is_the_mean_of_category_accuracies(ground_truth):
    rows = _manifest(ground_truth)
    # Break one counting image: replace it with a render of a different count.
    victim = next(r for r in rows if r["category"] == "counting")
    other = mismatched_spec(victim["spec"], "counting", random.Random(0))
    render_spec(other, 32, seed=1).save(ground_truth / victim["path"])
    rows.append({"prompt": "no spec here", "path": victim["path"]})
    _rewrite(ground_truth, rows)
    report = evaluate_samples_dir(ground_truth)
    assert report.categories["counting"].accuracy == 0.5
    assert report.overall == pytest.approx((5 + 0.5) / 6)
    assert report.skipped == 1
    [failure] = report.failures
    assert failure.line == rows.index(victim) + 1 and failure.category == "counting" and failure.failed
    data = json.loads(write_eval_json(report).read_text())
    assert data["overall"] == pytest.approx(report.overall) and data["categories"]["counting"]["correct"] == 1
    assert len(data["images"]) == 12 and data["skipped_without_spec"] == 1


def test_unusable_lines_are_reported_with_line_numbers_and_the_rest_scored(ground_truth):
    rows = _manifest(ground_truth)
    (ground_truth / rows[1]["path"]).unlink()
    (ground_truth / rows[2]["path"]).write_bytes(b"not a png")
    rows[3]["spec"] = {"objects": [{"shape": "circle", "color": "pink"}]}
    rows[4] = "{not json\n"
    _rewrite(ground_truth, rows)
    report = evaluate_samples_dir(ground_truth)
    assert report.scored == 8 and report.overall == 1.0
    assert [p.split(":")[1] for p in report.problems] == ["5", "2", "3", "4"]
    assert "does not exist" in report.problems[1] and "unreadable" in report.problems[2]
    assert "unknown colour 'pink'" in report.problems[3]


def test_evaluate_refuses_dirs_it_cannot_score(tmp_path, ground_truth):
    with pytest.raises(InputError, match="does not exist"):
        evaluate_samples_dir(tmp_path / "missing")
    rows = [{k: v for k, v in r.items() if k != "spec"} for r in _manifest(ground_truth)]
    _rewrite(ground_truth, rows)
    with pytest.raises(InputError, match="carries a spec"):
        evaluate_samples_dir(ground_truth)


def test_eval_cli_prints_the_report_path_and_table(cli, ground_truth):
    res = cli("eval", ground_truth)
    assert res.code == 0, res.stderr
    assert res.stdout.strip() == str((ground_truth / "eval.json").resolve())
    # The categories are named as the demo's table names them.
    assert "overall" in res.stderr and "colour attribution" in res.stderr and "two objects" in res.stderr
    assert json.loads((ground_truth / "eval.json").read_text())["overall"] == 1.0


def test_eval_cli_json(cli, ground_truth):
    res = cli("eval", ground_truth, "--json")
    assert res.code == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["overall"] == 1.0 and report["scored"] == 12 and len(report["categories"]) == 6


def test_eval_cli_exits_1_after_scoring_the_rest(cli, ground_truth):
    rows = _manifest(ground_truth)
    (ground_truth / rows[0]["path"]).unlink()
    res = cli("eval", ground_truth)
    assert res.code == 1
    assert "manifest.jsonl:1: image images/p00000_c000.png does not exist" in res.stderr
    saved = json.loads((ground_truth / "eval.json").read_text())
    assert saved["scored"] == 11 and len(saved["problems"]) == 1


def test_eval_cli_bad_input_exits_2_and_writes_nothing(cli, tmp_path, ground_truth):
    no_spec = tmp_path / "nospec"
    no_spec.mkdir()
    (no_spec / MANIFEST_NAME).write_text(json.dumps({"prompt": "p", "path": "images/x.png"}) + "\n")
    not_samples = tmp_path / "plain"
    not_samples.mkdir()
    for args, message in [
        ((tmp_path / "missing",), "does not exist"),
        ((not_samples,), "no manifest.jsonl"),
        ((no_spec,), "carries a spec"),
        ((), "give a SAMPLES_DIR"),
        ((ground_truth, "--export-suite", tmp_path / "s.jsonl"), "without SAMPLES_DIR"),
    ]:
        res = cli("eval", *args)
        assert res.code == 2, (args, res.stderr)
        assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1 and res.stdout == ""
    assert not (no_spec / "eval.json").exists() and not (ground_truth / "eval.json").exists()
    assert not (tmp_path / "s.jsonl").exists()


def test_eval_cli_exports_the_shipped_suites(cli, tmp_path):
    suite, calibration = tmp_path / "suite.jsonl", tmp_path / "cal.jsonl"
    res = cli("eval", "--export-suite", suite, "--export-calibration", calibration)
    assert res.code == 0, res.stderr
    assert res.stdout.split() == [str(suite.resolve()), str(calibration.resolve())]
    assert [i.to_json() for i in read_prompts(suite)] == [i.to_json() for i in evaluation_suite()]
    assert [i.to_json() for i in read_prompts(calibration)] == [i.to_json() for i in calibration_prompts()]
    before = suite.read_text()
    res = cli("eval", "--export-suite", suite)
    assert res.code == 2 and "already exists" in res.stderr and suite.read_text() == before
    assert cli("eval", "--export-suite", suite, "--force").code == 0
