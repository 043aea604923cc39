"""Timestep-aware block skipping: `plan-skips`, `sample --skip-plan` and `sanatool.apply_skip_plan`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sanatool.errors import InputError
from sanatool.inference.skipping import SkipPlan, apply_skip_plan, make_skip_plan, write_skip_plan
from sanatool.io.importance_file import Calibration, ImportanceResult, write_importance_file
from sanatool.io.manifest import read_manifest

STEPS = 3
DEPTH = 8


def _importance(matrix, fingerprint="f" * 16, metric="cosine", sampler="flow-dpm") -> ImportanceResult:
    rows = [list(map(float, row)) for row in matrix]
    scores = [sum(column) / len(rows) for column in zip(*rows, strict=True)]
    return ImportanceResult(
        fingerprint=fingerprint,
        metric=metric,
        calibration=Calibration("calib", 2, len(rows), 4.5, 0, ("cond", "uncond")),
        scores=tuple(scores),
        timesteps=tuple(float(999 - 100 * i) for i in range(len(rows))),
        per_timestep=tuple(tuple(row) for row in rows),
        extra={"sampler": sampler},
    )


def _random_matrix(steps: int, depth: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((steps, depth))


@pytest.mark.parametrize("budget", [1.0, 0.8, 0.6, 0.5, 0.4, 0.25])
def test_plan_keeps_exactly_the_budget_and_skips_the_least_important_calls(budget):
    matrix = _random_matrix(5, DEPTH)
    plan = make_skip_plan(_importance(matrix), budget)
    assert plan.kept == round(budget * 5 * DEPTH) and plan.total == 5 * DEPTH
    skipped = [matrix[s, b] for s in range(5) for b in plan.skip[s]]
    kept = [matrix[s, b] for s in range(5) for b in range(DEPTH) if b not in plan.skip[s]]
    assert not skipped or max(skipped) < min(kept)
    assert SkipPlan.from_json(json.loads(json.dumps(plan.to_json()))) == plan


def test_an_ablation_plan_ranks_a_call_by_the_divergence_it_adds_at_its_step():
    # cumulative divergence: block 0 adds 1.0 at step 0 then nothing; block 1 adds 0.1 at every step
    matrix = [[1.0, 0.1], [1.0, 0.2], [1.0, 0.3]]
    plan = make_skip_plan(_importance(matrix, metric="ablation"), 4 / 6)
    assert [sorted(s) for s in plan.skip] == [[], [0], [0]]
    with pytest.raises(InputError, match="holds the ablation matrix, not cosine"):
        make_skip_plan(_importance(matrix, metric="ablation"), 0.5, metric="cosine")
    with pytest.raises(InputError, match="unknown --metric 'l2'"):
        make_skip_plan(_importance(matrix, metric="ablation"), 0.5, metric="l2")


def test_plan_skips_refuses_bad_budgets_and_a_step_with_every_block_skipped(cli, tmp_path):
    matrix = _random_matrix(STEPS, DEPTH) + 1.0
    matrix[1] = 0.0  # step 1 matters least for every block
    path = write_importance_file(tmp_path / "imp.json", _importance(matrix))
    for budget in ("0", "1.5", "-0.2"):
        result = cli("plan-skips", path, "--budget", budget, "-o", tmp_path / "plan.json")
        assert result.code == 2 and "--budget" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    # click refuses nan as a usage error; the library refuses it too
    assert cli("plan-skips", path, "--budget", "nan", "-o", tmp_path / "plan.json").code == 2
    with pytest.raises(InputError, match="--budget"):
        make_skip_plan(_importance(matrix), float("nan"))
    result = cli("plan-skips", path, "--budget", "0.6", "-o", tmp_path / "plan.json")
    assert result.code == 2 and "skip every block at step 1" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "plan.json").exists()
    result = cli("plan-skips", path, "--budget", "0.9", "--metric", "ablation", "-o", tmp_path / "plan.json")
    assert result.code == 2 and "holds the cosine matrix" in result.stderr
    result = cli("plan-skips", path, "--budget", "0.9", "-o", tmp_path / "plan.json", "--json")
    assert result.code == 0 and json.loads(result.stdout)["kept"] == round(0.9 * STEPS * DEPTH)
    assert json.loads((tmp_path / "plan.json").read_text())["skip"][1] == [6, 7]  # ties: the higher blocks


@pytest.fixture(scope="module")
def plan(tiny_pipeline):
    from sanatool.inference.sampler import resolve_sampler
    from sanatool.io.modeldir import open_model_dir

    model = open_model_dir(tiny_pipeline)
    matrix = _random_matrix(STEPS, DEPTH, seed=3)
    return make_skip_plan(_importance(matrix, model.fingerprint(), sampler=resolve_sampler(model, None)), 0.5)


@pytest.fixture(scope="module")
def reference(tiny_pipeline):
    from diffusers import SanaPipeline

    ref = SanaPipeline.from_pretrained(tiny_pipeline)
    ref.set_progress_bar_config(disable=True)
    return ref


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def test_the_hook_skips_planned_calls_matches_sample_and_removes_itself(
    tiny_pipeline, reference, plan, tmp_path, one_torch_thread
):
    from PIL import Image

    from sanatool.inference.sampler import diffusers_kwargs
    from sanatool.samples.writer import sample_to_dir

    out = sample_to_dir(
        tiny_pipeline,
        ["a red circle"],
        tmp_path / "s",
        candidates=1,
        steps=STEPS,
        device="cpu",
        skip_plan=plan,
    )
    (record,), _ = read_manifest(out)
    assert record["skip_plan"] == plan.plan_id()
    kwargs = diffusers_kwargs(record)
    plain = _pixels(reference(**diffusers_kwargs(record)).images[0])
    block = next(
        b for b in range(DEPTH) if any(b in s for s in plan.skip) and not all(b in s for s in plan.skip)
    )
    seen: list[bool] = []

    def identity(module, args, output):
        seen.append(bool((args[0] == output).all()))

    watcher = reference.transformer.transformer_blocks[block].register_forward_hook(identity)
    try:
        with apply_skip_plan(reference, plan) as handle:
            hooked = _pixels(reference(**kwargs).images[0])
            assert handle.step == STEPS - 1
    finally:
        watcher.remove()
    assert seen == [block in plan.skip[step] for step in range(STEPS)]
    assert np.abs(hooked - _pixels(Image.open(out / record["path"]))).max() <= 1
    assert np.abs(hooked - plain).max() > 1  # the plan does change the image
    assert all("forward" not in b.__dict__ for b in reference.transformer.transformer_blocks)
    assert not reference.transformer._forward_pre_hooks
    assert np.array_equal(_pixels(reference(**diffusers_kwargs(record)).images[0]), plain)


def test_sample_refuses_a_plan_for_another_model_or_step_count_and_resume_with_another_plan(
    cli, tiny_pipeline, plan, tmp_path
):
    from dataclasses import replace

    other_model = write_skip_plan(tmp_path / "other-model.json", replace(plan, fingerprint="0" * 16))
    other_steps = write_skip_plan(tmp_path / "steps.json", replace(plan, steps=2, skip=plan.skip[:2]))
    mine = write_skip_plan(tmp_path / "plan.json", plan)
    common = ("sample", tiny_pipeline, "--prompt", "a red circle", "-n", "1", "--steps", str(STEPS))
    for bad, message in ((other_model, "made for model 000000000000"), (other_steps, "for 2 sampler steps")):
        result = cli(*common, "--skip-plan", bad, "-o", tmp_path / "s")
        assert result.code == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()
    assert cli(*common, "--skip-plan", mine, "-o", tmp_path / "s").code == 0
    sparser = write_skip_plan(
        tmp_path / "sparser.json",
        replace(plan, skip=tuple(s | {0} if len(s) < DEPTH - 1 else s for s in plan.skip)),
    )
    for other in (("--skip-plan", sparser), ()):
        result = cli(*common, *other, "-o", tmp_path / "s", "--resume")
        assert result.code == 2 and "skip_plan" in result.stderr, result.stderr
    assert cli(*common, "--skip-plan", mine, "-o", tmp_path / "s", "--resume").code == 0


def test_sample_takes_the_plans_steps_and_sampler_unless_told(cli, tiny_pipeline, plan, tmp_path):
    mine = write_skip_plan(tmp_path / "plan.json", plan)
    result = cli(
        "sample",
        tiny_pipeline,
        "--prompt",
        "a red circle",
        "-n",
        "1",
        "--skip-plan",
        mine,
        "-o",
        tmp_path / "s",
    )
    assert result.code == 0, result.stderr
    (record,), _ = read_manifest(tmp_path / "s")
    assert (record["steps"], record["sampler"], record["skip_plan"]) == (
        plan.steps,
        plan.sampler,
        plan.plan_id(),
    )
