"""Timestep-aware block skipping: `plan-skips`, `sample --skip-plan` and `sanatool.apply_skip_plan`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import pixels

from sanatool.errors import InputError
from sanatool.inference.skipping import SkipPlan, apply_skip_plan, make_skip_plan, write_skip_plan
from sanatool.io.importance_file import Calibration, ImportanceResult, write_importance_file
from sanatool.io.manifest import read_manifest

STEPS = 3
DEPTH = 8


def _importance(
    matrix, fingerprint="f" * 16, metric="cosine", sampler="flow-dpm", change=None, curvature=None
) -> ImportanceResult:
    rows = [list(map(float, row)) for row in matrix]
    extra = {"sampler": sampler}
    if change is not None:
        extra["residual_change"] = [list(map(float, row)) for row in change]
    if curvature is not None:
        extra["residual_curvature"] = [list(map(float, row)) for row in curvature]
    scores = [sum(column) / len(rows) for column in zip(*rows, strict=True)]
    return ImportanceResult(
        fingerprint=fingerprint,
        metric=metric,
        calibration=Calibration("calib", 2, len(rows), 4.5, 0, ("cond", "uncond")),
        scores=tuple(scores),
        timesteps=tuple(float(999 - 100 * i) for i in range(len(rows))),
        per_timestep=tuple(tuple(row) for row in rows),
        extra=extra,
    )


def _random_matrix(steps: int, depth: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((steps, depth))


@pytest.mark.parametrize("budget", [1.0, 0.8, 0.6, 0.5, 0.4, 0.25])
@pytest.mark.parametrize("mode", ["identity", "cache"])
def test_plan_keeps_exactly_the_budget_and_skips_the_least_important_calls(budget, mode):
    matrix = _random_matrix(5, DEPTH)
    if mode == "cache" and budget < 1 / 5 + 4 / 5 / DEPTH:  # all of step 0 and one block per later step
        with pytest.raises(InputError, match="too low"):
            make_skip_plan(_importance(matrix), budget, mode=mode)
        return
    plan = make_skip_plan(_importance(matrix), budget, mode=mode)
    assert plan.kept == round(budget * 5 * DEPTH) and plan.total == 5 * DEPTH
    assert (plan.mode, plan.metric) == (mode, "cosine")  # no residual_change in the file: its own matrix
    first = 1 if mode == "cache" else 0
    assert not plan.skip[0] or mode == "identity"  # nothing is cached before step 0
    skipped = [matrix[s, b] for s in range(5) for b in plan.skip[s]]
    kept = [matrix[s, b] for s in range(first, 5) for b in range(DEPTH) if b not in plan.skip[s]]
    assert not skipped or max(skipped) < min(kept)
    assert SkipPlan.from_json(json.loads(json.dumps(plan.to_json()))) == plan


def test_a_cache_plan_on_the_residual_change_spreads_skips_by_their_accumulated_change():
    # Skipping block 0 at steps 1 and 2 reuses its step-0 residual twice (0.3, then 0.3 + 0.3):
    # dearer than skipping block 0 and block 1 once each at step 2 (0.3 + 0.4).
    change = [[0.0, 0.0, 0.0], [0.3, 0.4, 1.0], [0.3, 0.4, 1.0]]
    importance = _importance(_random_matrix(3, 3), change=change)
    plan = make_skip_plan(importance, 7 / 9, mode="cache")
    assert (plan.mode, plan.metric) == ("cache", "change")
    assert [sorted(s) for s in plan.skip] == [[], [], [0, 1]]
    # no step loses every block, step 0 loses none, and the budget stays exact
    deep = make_skip_plan(importance, 5 / 9, mode="cache")
    assert [sorted(s) for s in deep.skip] == [[], [0, 1], [0, 1]] and deep.kept == 5
    with pytest.raises(InputError, match="too low: at most 4 of 9"):
        make_skip_plan(importance, 0.4, mode="cache")
    with pytest.raises(InputError, match="no residual_change matrix"):
        make_skip_plan(_importance(_random_matrix(3, 3)), 0.8, metric="change")
    with pytest.raises(InputError, match="unknown --skip-mode 'skip'"):
        make_skip_plan(importance, 0.8, mode="skip")
    identity = make_skip_plan(importance, 0.8, mode="identity")
    assert identity.metric == "cosine"  # the change matrix predicts a cache plan's error only


def test_a_forecast_plan_ranks_on_the_residual_curvature_when_the_file_holds_it():
    change = [[0.0, 0.0, 0.0], [0.3, 0.4, 1.0], [0.3, 0.4, 1.0]]
    curvature = [[0.0, 0.0, 0.0], [0.3, 0.4, 1.0], [0.9, 0.9, 0.1]]  # block 2 extrapolates well at step 2
    both = _importance(_random_matrix(3, 3), change=change, curvature=curvature)
    plan = make_skip_plan(both, 8 / 9)  # forecast: the default mode
    skipped = [sorted(s) for s in plan.skip]
    assert (plan.mode, plan.metric, skipped) == ("forecast", "curvature", [[], [], [2]])
    assert make_skip_plan(both, 8 / 9, mode="cache").metric == "change"  # a cache plan keeps its own matrix
    older = make_skip_plan(_importance(_random_matrix(3, 3), change=change), 8 / 9)
    assert older.metric == "change" and [sorted(s) for s in older.skip] == [[], [], [0]]
    with pytest.raises(InputError, match="no residual_curvature matrix"):
        make_skip_plan(_importance(_random_matrix(3, 3), change=change), 0.8, metric="curvature")
    assert SkipPlan.from_json(json.loads(json.dumps(plan.to_json()))) == plan
    with pytest.raises(InputError, match="a forecast plan cannot skip at step 0"):
        SkipPlan.from_json({**plan.to_json(), "skip": [[1], [], []]})
    assert plan.plan_id() != make_skip_plan(both, 8 / 9, "curvature", "cache").plan_id()


def test_plan_files_before_modes_read_as_identity_plans_with_their_old_ids():
    import hashlib

    plan = make_skip_plan(_importance(_random_matrix(STEPS, DEPTH)), 0.5, mode="identity")
    data = plan.to_json()
    del data["mode"]
    old = SkipPlan.from_json(data)
    assert old == plan and old.mode == "identity"
    what = [old.fingerprint, old.steps, old.sampler, [sorted(b) for b in old.skip]]
    assert old.plan_id() == hashlib.sha256(json.dumps(what).encode()).hexdigest()[:16]
    from dataclasses import replace

    cached = replace(plan, skip=(frozenset(),) + plan.skip[1:], mode="cache")
    assert cached.plan_id() != replace(cached, mode="identity").plan_id()
    with pytest.raises(InputError, match="cannot skip at step 0"):
        SkipPlan.from_json({**data, "mode": "cache"})
    with pytest.raises(InputError, match="mode must be one of"):
        SkipPlan.from_json({**data, "mode": "fast"})


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
    result = cli("plan-skips", path, "--budget", "0.9", "--skip-mode", "fast", "-o", tmp_path / "p2.json")
    assert result.code == 2 and "unknown --skip-mode 'fast'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "p2.json").exists()
    result = cli("plan-skips", path, "--budget", "0.9", "--skip-mode", "identity", "-o", tmp_path / "p2.json")
    assert result.code == 0 and "identity, planned on cosine" in result.stderr
    assert json.loads((tmp_path / "p2.json").read_text())["mode"] == "identity"
    forecast = ("plan-skips", path, "--budget", "0.9", "--skip-mode", "forecast", "-o", tmp_path / "p3.json")
    result = cli(*forecast, "--metric", "curvature")
    assert result.code == 2 and "no residual_curvature matrix" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "p3.json").exists()
    result = cli(*forecast)
    assert result.code == 0 and "forecast, planned on cosine" in result.stderr, result.stderr
    assert json.loads((tmp_path / "p3.json").read_text())["skip"][0] == []  # step 0 has nothing to extend


@pytest.fixture(scope="module")
def plan(tiny_pipeline):
    from sanatool.inference.sampler import resolve_sampler
    from sanatool.io.modeldir import open_model_dir

    model = open_model_dir(tiny_pipeline)
    matrix = _random_matrix(STEPS, DEPTH, seed=3)
    importance = _importance(matrix, model.fingerprint(), sampler=resolve_sampler(model, None))
    return make_skip_plan(importance, 0.5, mode="identity")


@pytest.fixture(scope="module")
def cache_plan(tiny_pipeline):
    from sanatool.inference.sampler import resolve_sampler
    from sanatool.io.modeldir import open_model_dir

    model = open_model_dir(tiny_pipeline)
    matrix = _random_matrix(STEPS, DEPTH, seed=3)
    importance = _importance(matrix, model.fingerprint(), sampler=resolve_sampler(model, None))
    return make_skip_plan(importance, 0.7, mode="cache")


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
    plain = pixels(reference(**diffusers_kwargs(record)).images[0])
    block = next(
        b for b in range(DEPTH) if any(b in s for s in plan.skip) and not all(b in s for s in plan.skip)
    )
    seen: list[bool] = []

    def identity(module, args, output):
        seen.append(bool((args[0] == output).all()))

    watcher = reference.transformer.transformer_blocks[block].register_forward_hook(identity)
    try:
        with apply_skip_plan(reference, plan) as handle:
            hooked = pixels(reference(**kwargs).images[0])
            assert handle.step == STEPS - 1
    finally:
        watcher.remove()
    assert seen == [block in plan.skip[step] for step in range(STEPS)]
    assert np.abs(hooked - pixels(Image.open(out / record["path"]))).max() <= 1
    assert np.abs(hooked - plain).max() > 1  # the plan does change the image
    assert all("forward" not in b.__dict__ for b in reference.transformer.transformer_blocks)
    assert not reference.transformer._forward_pre_hooks
    assert np.array_equal(pixels(reference(**diffusers_kwargs(record)).images[0]), plain)


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


def test_a_cache_plan_adds_the_last_residual_per_batch_row_and_starts_afresh_each_call(
    tiny_pipeline, reference, cache_plan, tmp_path, one_torch_thread
):
    from PIL import Image

    from sanatool.inference.sampler import diffusers_kwargs
    from sanatool.samples.writer import sample_to_dir

    out = sample_to_dir(
        tiny_pipeline, ["a red circle"], tmp_path / "s", candidates=1, steps=STEPS, device="cpu",
        skip_plan=cache_plan,
    )  # fmt: skip
    (record,), _ = read_manifest(out)
    block = next(b for b in range(DEPTH) if b in cache_plan.skip[STEPS - 1])
    calls: list[tuple] = []

    def watch(module, args, output):
        calls.append((args[0].clone(), output.clone()))

    transformer = reference.transformer
    watcher = transformer.transformer_blocks[block].register_forward_hook(watch)
    try:
        with apply_skip_plan(reference, cache_plan):
            first = pixels(reference(**diffusers_kwargs(record)).images[0])
            second = pixels(reference(**diffusers_kwargs(record)).images[0])
    finally:
        watcher.remove()
    assert np.array_equal(first, second)  # the second call did not reuse the first one's residuals
    assert np.abs(first - pixels(Image.open(out / record["path"]))).max() <= 1
    assert calls[0][0].shape[0] == 2  # both guidance branches in one batch, each with its own residual
    last_run = None
    for step, (hidden, output) in enumerate(calls[:STEPS]):
        if block in cache_plan.skip[step]:
            assert last_run is not None
            assert np.allclose((output - hidden).numpy(), last_run.numpy(), atol=1e-5)
        else:
            last_run = output - hidden
    assert not np.allclose(calls[-1][1].numpy(), calls[-1][0].numpy())  # not an identity
    assert all("forward" not in b.__dict__ for b in transformer.transformer_blocks)


def test_importance_scores_blocks_while_following_a_plan_and_refuses_another_models(
    cli, tiny_pipeline, plan, tmp_path, one_torch_thread
):
    from dataclasses import replace

    from sanatool.inference.importance import compute_importance

    result = compute_importance(tiny_pipeline, ["a red circle"], device="cpu", skip_plan=plan)
    assert result.calibration.steps == plan.steps and result.extra["sampler"] == plan.sampler
    assert result.extra["skip_plan"] == plan.plan_id()
    for step, row in enumerate(result.per_timestep):
        for block, score in enumerate(row):  # a skipped (identity) call leaves its input as it is
            assert (abs(score) < 1e-6) == (block in plan.skip[step]), (step, block, score)
    other = write_skip_plan(tmp_path / "other.json", replace(plan, fingerprint="0" * 16))
    out = tmp_path / "imp.json"
    args = ("importance", tiny_pipeline, "--prompts", tmp_path / "p.txt", "-o", out, "--device", "cpu")
    (tmp_path / "p.txt").write_text("a red circle\n")
    result = cli(*args, "--skip-plan", other)
    assert result.code == 2 and "made for model 000000000000" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()
    result = cli(*args, "--skip-plan", write_skip_plan(tmp_path / "plan.json", plan), "--steps", "2")
    assert result.code == 2 and "for 3 sampler steps, not 2" in result.stderr, result.stderr


def test_a_cache_hook_runs_a_block_that_has_no_residual_for_its_batch_shape():
    import torch

    class Block(torch.nn.Module):
        def forward(self, hidden):
            return 2 * hidden + 1  # residual: hidden + 1

    class Transformer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer_blocks = torch.nn.ModuleList([Block(), Block()])

        def forward(self, hidden):
            for block in self.transformer_blocks:
                hidden = block(hidden)
            return hidden

    model = Transformer()
    plan = SkipPlan("f" * 16, 2, 2, "flow-dpm", 4.5, "change", 0.75, (frozenset(), frozenset({0})), "cache")
    first, second = torch.zeros(2, 3), torch.full((2, 3), 5.0)
    with apply_skip_plan(model, plan) as handle:
        model(first)  # step 0: block 0 caches residual 1 per row
        assert torch.equal(model(second), 2 * (second + 1) + 1)  # step 1: 5 + cached 1, then block 1
        model(first)
        assert torch.equal(model(torch.zeros(4, 3)), torch.full((4, 3), 3.0))  # no residual of 4 rows: runs
        handle.reset()
        assert torch.equal(model(second), 2 * (2 * second + 1) + 1)  # step 0 again: every block runs
    assert (
        torch.equal(model(second), 2 * (2 * second + 1) + 1)
        and "forward" not in model.transformer_blocks[0].__dict__
    )


def test_a_forecast_hook_extrapolates_the_last_two_residuals_in_the_timestep():
    import torch

    class Block(torch.nn.Module):
        def forward(self, hidden, time):
            return hidden + time**2  # a residual curved in time: first order is not exact

    class Transformer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer_blocks = torch.nn.ModuleList([Block(), Block()])

        def forward(self, hidden, timestep=None):
            time = (timestep if timestep is not None else torch.zeros(len(hidden)))[:, None]
            for block in self.transformer_blocks:
                hidden = block(hidden, time)
            return hidden

    model = Transformer()
    skip = (frozenset(), frozenset({0}), frozenset(), frozenset({0}))
    plan = SkipPlan("f" * 16, 2, 4, "flow-dpm", 4.5, "curvature", 0.75, skip, "forecast")
    zeros = torch.zeros(2, 3)

    def call(t):
        return model(zeros, timestep=torch.full((2,), float(t)))

    with apply_skip_plan(model, plan):
        for _ in range(2):  # the second pipeline call starts afresh
            assert torch.equal(call(10), torch.full((2, 3), 200.0))
            assert torch.equal(call(7), torch.full((2, 3), 100.0 + 49))  # one residual: reused as is
            assert torch.equal(call(5), torch.full((2, 3), 50.0))
            # 25 + (25 − 100) / (5 − 10) · (4 − 5) = 10 from the residuals at t = 10 and t = 5
            assert torch.allclose(call(4), torch.full((2, 3), 10.0 + 16))
    assert "forward" not in model.transformer_blocks[0].__dict__ and not model._forward_pre_hooks
    assert torch.equal(call(4), torch.full((2, 3), 32.0))
    with apply_skip_plan(model, plan):  # no timestep: the step index stands in for it
        for _ in range(3):
            model(zeros)
        assert torch.equal(model(zeros), zeros)  # residual 0 at steps 0 and 2: extrapolates to 0


def test_a_forecast_hook_takes_a_plain_number_as_the_timestep():
    import torch

    class Block(torch.nn.Module):
        def forward(self, hidden, time):
            return hidden + time

    class Transformer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer_blocks = torch.nn.ModuleList([Block(), Block()])

        def forward(self, hidden, encoder_hidden_states, timestep):
            for block in self.transformer_blocks:
                hidden = block(hidden, timestep)
            return hidden

    skip = (frozenset(), frozenset(), frozenset({1}))
    plan = SkipPlan("f" * 16, 2, 3, "flow-dpm", 4.5, "curvature", 5 / 6, skip, "forecast")
    model, zeros = Transformer(), torch.zeros(1, 2)
    with apply_skip_plan(model, plan) as handle:
        outputs = [model(zeros, None, t) for t in (10, 8.0)]  # positional, an int and a float
        # block 1's residual is the timestep itself: 10, 8 extrapolate to 5 at t = 5 (a cache: 8)
        assert torch.equal(model(zeros, None, 5.0), torch.full((1, 2), 10.0))
        assert handle.time == 5.0
    assert torch.equal(outputs[1], torch.full((1, 2), 16.0))


def test_a_forecast_plan_samples_as_the_hook_does_on_a_diffusers_pipeline(
    tiny_pipeline, reference, cache_plan, tmp_path, one_torch_thread
):
    from dataclasses import replace

    from PIL import Image

    from sanatool.inference.sampler import diffusers_kwargs
    from sanatool.samples.writer import sample_to_dir

    # blocks 0 and 2-6 extrapolated from steps 0 and 1; block 1's one residual reused at step 1
    skip = (frozenset(), frozenset({1}), frozenset({0, 2, 3, 4, 5, 6}))
    forecast = replace(cache_plan, skip=skip, mode="forecast", metric="curvature")
    images = {}
    for plan in (forecast, replace(forecast, mode="cache")):
        out = sample_to_dir(
            tiny_pipeline, ["a red circle"], tmp_path / plan.mode, candidates=1, steps=STEPS, device="cpu",
            skip_plan=plan,
        )  # fmt: skip
        (record,), _ = read_manifest(out)
        assert record["skip_plan"] == plan.plan_id()
        images[plan.mode] = pixels(Image.open(out / record["path"]))
    with apply_skip_plan(reference, forecast):
        hooked = pixels(reference(**diffusers_kwargs(record)).images[0])
    assert np.abs(hooked - images["forecast"]).max() <= 1
    assert np.abs(images["forecast"] - images["cache"]).max() > 1  # the forecast is not a plain reuse
