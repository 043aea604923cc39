"""``sanatool data shapes``: the image-folder data set and the ground-truth samples dir."""

from __future__ import annotations

import json

from sanatool.io.manifest import read_manifest
from sanatool.io.prompts import read_prompts
from sanatool.shapes import evaluation_suite


def test_data_shapes_writes_a_dataset_and_prints_its_path(cli, tmp_path):
    out = tmp_path / "ds"
    res = cli("data", "shapes", "-o", out, "--n", "8", "--seed", "2")
    assert res.code == 0, res.stderr
    assert res.stdout.strip() == str(out.resolve())
    lines = (out / "metadata.jsonl").read_text().splitlines()
    assert len(lines) == 8 and json.loads(lines[0])["file_name"] == "00000.png"
    assert len(list(out.glob("*.png"))) == 8


def test_data_shapes_json_summary_and_size(cli, tmp_path):
    res = cli("data", "shapes", "-o", tmp_path / "ds", "--n", "2", "--size", "64", "--json")
    assert res.code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["images"] == 2 and summary["size"] == 64 and summary["format"] == "imagefolder"


def test_data_shapes_from_prompts_writes_a_samples_dir(cli, tmp_path):
    suite = tmp_path / "suite.jsonl"
    assert cli("eval", "--export-suite", suite).code == 0
    res = cli("data", "shapes", "--prompts", suite, "-o", tmp_path / "gt", "--n", "1")
    assert res.code == 0, res.stderr
    records, problems = read_manifest(tmp_path / "gt")
    assert not problems and len(records) == len(evaluation_suite())
    assert [r["prompt"] for r in records] == [i.prompt for i in read_prompts(suite)]


def test_data_shapes_refuses_bad_input_and_writes_nothing(cli, tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("a red circle\n")
    bad_colour = tmp_path / "bad.jsonl"
    bad_colour.write_text(
        json.dumps({"prompt": "a pink circle", "spec": {"objects": [{"shape": "circle", "color": "pink"}]}})
        + "\n"
    )
    before = bad_colour.read_text()
    existing = tmp_path / "exists"
    existing.mkdir()
    cases = [
        (("--n", "0", "-o", tmp_path / "x"), "positive"),
        (("--n", "-3", "-o", tmp_path / "x"), "positive"),
        (("-o", tmp_path / "x"), "--n is required"),
        (("--n", "2", "-o", existing), "already exists"),
        (("--n", "2", "--size", "8", "-o", tmp_path / "x"), "--size"),
        (("--prompts", plain, "-o", tmp_path / "x"), "has no spec"),
        (("--prompts", bad_colour, "-o", tmp_path / "x"), "unknown colour 'pink'"),
        (("--prompts", tmp_path / "missing.jsonl", "-o", tmp_path / "x"), "does not exist"),
    ]
    for args, message in cases:
        res = cli("data", "shapes", *args)
        assert res.code == 2, (args, res.stderr)
        assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert res.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "exists", "plain.txt"]
    assert not any(existing.iterdir()) and bad_colour.read_text() == before


def test_data_shapes_force_replaces(cli, tmp_path):
    out = tmp_path / "ds"
    assert cli("data", "shapes", "-o", out, "--n", "3").code == 0
    assert cli("data", "shapes", "-o", out, "--n", "2", "--force").code == 0
    assert len((out / "metadata.jsonl").read_text().splitlines()) == 2


def test_help_ends_with_an_example(cli):
    for command in (("data", "shapes"), ("eval",)):
        res = cli(*command, "--help")
        assert res.code == 0 and "Example: sanatool" in res.stdout
