"""demo: the whole chain into one dir (on a random tiny pipeline with tiny settings), and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sanatool.demo import DemoSettings, demo_suite
from sanatool.errors import InputError
from sanatool.io.modeldir import open_model_dir

# Every stage runs, each on a handful of items: one prompt per category, two sampler steps.
TINY = DemoSettings(
    prompts_per_category=1, steps=2, calibration_prompts=2, finetune_steps=2, data_size=8, candidates=2,
    batch_size=12, finetune_batch=4,
)  # fmt: skip
ROWS = ["full", "pruned", "pruned + fine-tuned", "+ best-of-2"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def tiny_settings(monkeypatch):
    """Make the command's own settings (full and --quick alike) the tiny ones."""
    monkeypatch.setattr(DemoSettings, "for_mode", classmethod(lambda cls, quick: TINY))


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_demo_writes_models_samples_and_report(cli, tiny_pipeline, tiny_settings, tmp_path):
    before = _snapshot(tiny_pipeline)
    out = tmp_path / "demo"
    res = cli(
        "demo", "--model", tiny_pipeline, "-o", out, "--quick", "--seed", "1", "--device", "cpu", "--json"
    )
    assert res.code == 0, res.stderr
    report = json.loads(res.stdout)
    assert report == json.loads((out / "report.json").read_text())
    assert report["out"] == str(out.resolve()) and report["quick"] and report["seed"] == 1
    assert report["settings"]["keep"] == 4 and report["prompts"] == 6

    rows = report["rows"]
    assert [row["name"] for row in rows] == ROWS
    assert [row["blocks"] for row in rows] == [8, 4, 4, 4]
    assert rows[0]["params"] > rows[1]["params"] == rows[2]["params"] == rows[3]["params"]
    from sanatool.samples.evaluate import evaluate_samples_dir

    for row in rows:
        # Each row's numbers are its own samples' scores, as `sanatool eval` computes them.
        scored = evaluate_samples_dir(row["samples"])
        assert row["overall"] == pytest.approx(scored.overall, abs=1e-4)
        assert row["categories"] == pytest.approx(
            {k: c.accuracy for k, c in scored.categories.items()}, abs=1e-4
        )
        assert len(row["categories"]) == 6 and scored.scored == 6
        assert row["overall"] == pytest.approx(sum(row["categories"].values()) / 6, abs=1e-3)
        assert (Path(row["samples"]) / "eval.json").is_file()
    # The oracle picks among candidates that include the single sample's seed: never worse.
    assert rows[3]["overall"] >= rows[2]["overall"]

    pruned, tuned = open_model_dir(out / "pruned"), open_model_dir(out / "finetuned")
    assert pruned.transformer.num_layers == tuned.transformer.num_layers == 4
    assert [step["command"] for step in tuned.provenance["chain"]][-2:] == ["prune", "finetune"]
    weights = "transformer/diffusion_pytorch_model.safetensors"
    assert (out / "pruned" / weights).read_bytes() != (out / "finetuned" / weights).read_bytes()
    artifacts = report["artifacts"]
    for key in (
        "importance heatmap",
        "loss curve",
        "sample grid (full)",
        "sample grid (2 candidates per prompt)",
    ):
        assert Path(artifacts[key]).read_bytes()[:4] == b"\x89PNG", key
    assert json.loads(Path(artifacts["importance scores"]).read_text())["ranking"]
    candidates = [json.loads(line) for line in (out / "samples_finetuned_n2" / "manifest.jsonl").open()]
    picks = [json.loads(line) for line in (out / "best_of_2" / "manifest.jsonl").open()]
    assert len(candidates) == 12 and len(picks) == 6 and all("score" in pick for pick in picks)

    # The table and every path go to stderr; the input is untouched and no temporary dir is left.
    table = res.stderr[res.stderr.index("demo on") :]
    assert all(
        word in table for word in ("full", "pruned", "best-of-2", "overall", "colour attribution", "sample s")
    )
    assert "best-of-2 picks" in table
    assert str(out / "importance.png") in res.stderr.replace("\n", "")
    assert _snapshot(tiny_pipeline) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]

    # Every artifact the README lists is there: the picks' grid, the candidates' eval.
    assert (out / "best_of_2" / "grid.png").read_bytes()[:4] == b"\x89PNG"
    assert Path(artifacts["sample grid (best-of-2 picks)"]) == out.resolve() / "best_of_2" / "grid.png"
    choices = Path(artifacts["best-of-2 choices (every candidate, picks framed)"])
    assert (
        choices == out.resolve() / "best_of_2" / "candidates.png" and choices.read_bytes()[:4] == b"\x89PNG"
    )
    assert json.loads((out / "samples_finetuned_n2" / "eval.json").read_text())["scored"] == 12
    # Records written by the stages name the final dir, never the temporary one they ran in.
    for record in [*out.rglob("*.json"), *out.rglob("*.jsonl")]:
        assert ".demo.tmp-" not in record.read_text(), record
    assert json.loads((out / "best_of_2" / "judge.json").read_text())["source"] == str(
        (out / "samples_finetuned_n2").resolve()
    )


def test_demo_prints_the_output_dir_and_replaces_it_with_force(cli, tiny_pipeline, tiny_settings, tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "old.txt").write_text("old")
    res = cli("demo", "--model", tiny_pipeline, "-o", out, "--force")
    assert res.code == 0, res.stderr
    assert res.stdout == f"{out.resolve()}\n"
    assert not (out / "old.txt").exists() and (out / "report.json").is_file()


def test_demo_refuses_an_existing_output(cli, tmp_path, monkeypatch):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    res = cli("demo", "-o", out)
    assert res.code == 2 and "already exists" in res.stderr and "--force" in res.stderr
    assert res.stdout == "" and [p.name for p in out.iterdir()] == ["mine.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]
    # Without -o the output is ./sanatool-demo, refused the same way.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sanatool-demo").mkdir()
    res = cli("demo")
    assert res.code == 2 and "sanatool-demo already exists" in res.stderr


def test_demo_refuses_a_bare_transformer(cli, tiny_transformer, tmp_path):
    before = _snapshot(tiny_transformer)
    res = cli("demo", "--model", tiny_transformer, "-o", tmp_path / "demo")
    assert res.code == 2 and "needs a pipeline dir" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "demo").exists() and _snapshot(tiny_transformer) == before


def test_demo_refuses_a_pipeline_outside_the_shapes_world(cli, tiny_pipeline, tmp_path):
    from sanatool.io.modeldir import write_transformer_dir
    from sanatool.surgery.initialize import random_init_entries

    # The tiny pipeline with a transformer that reads 32-wide captions: a valid pipeline dir,
    # but not one the shapes evaluator's prompts were made for.
    other = tmp_path / "other"
    shutil.copytree(tiny_pipeline, other, ignore=shutil.ignore_patterns("transformer"))
    config = {**open_model_dir(tiny_pipeline).transformer.config, "caption_channels": 32}
    write_transformer_dir(other / "transformer", config, random_init_entries(config, "fp32", 0), 10**9)
    res = cli("demo", "--model", other, "-o", tmp_path / "demo")
    assert res.code == 2 and "not a shapes-world pipeline" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "demo").exists()


def test_settings_are_checked_against_the_model_depth():
    assert TINY.check(8).keep == 4 and TINY.check(3).keep == 1
    assert DemoSettings.for_mode(quick=False).check(8).keep == 4
    with pytest.raises(InputError, match="between 1 and 7"):
        DemoSettings(**{**TINY.__dict__, "keep": 8}).check(8)
    with pytest.raises(InputError, match="only 1 block"):
        TINY.check(1)
    with pytest.raises(InputError, match="candidates must be at least 1"):
        DemoSettings(**{**TINY.__dict__, "candidates": 0}).check(8)


def test_full_demo_uses_every_category_evenly():
    full = DemoSettings.for_mode(quick=False)
    suite = demo_suite(full.prompts_per_category)
    categories = [item.category for item in suite]
    assert len(set(categories)) == 6 and all(
        categories.count(c) == full.prompts_per_category for c in set(categories)
    )
    # Interleaved, so the first rows of a sample grid show every category.
    assert len(set(categories[:6])) == 6
    assert all(item.spec for item in suite) and full.finetune_steps == 100
