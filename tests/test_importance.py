"""`importance`: on-the-fly cosine hooks, ablation, Spearman, the importance file and heatmap, bad input."""

from __future__ import annotations

import json

import pytest

from sanatool.io.prompts import PromptItem, write_prompts


@pytest.fixture(scope="module")
def pipe(tiny_pipeline):
    from sanatool.inference.pipeline import load_pipeline

    return load_pipeline(tiny_pipeline, "cpu", "fp32")


def _run_inputs(pipe, prompt: str, seed: int):
    from sanatool.inference.sampler import PromptEncoder, image_seed, initial_latents

    encoder = PromptEncoder(pipe, None, "cpu")
    embeds, mask = encoder.conditional([prompt])
    noise = initial_latents(pipe, [image_seed(seed, 0, 0)], 32, 32, "cpu")
    return noise, embeds, mask, encoder.unconditional(1)


def test_cosine_scores_equal_a_direct_computation_over_both_cfg_branches(tiny_pipeline, pipe):
    import torch
    import torch.nn.functional as F

    from sanatool.inference.importance import compute_importance
    from sanatool.inference.sampler import denoise

    result = compute_importance(tiny_pipeline, ["a red circle"], steps=3, guidance=4.5, seed=3, device="cpu")
    assert result.metric == "cosine" and result.depth == 8 and len(result.per_timestep) == 3
    assert result.calibration.cfg_branches == ("cond", "uncond")
    assert result.calibration.num_prompts == 1 and result.calibration.prompts == "given prompts"

    # The same run with hooks that keep every hidden state, reduced afterwards.
    kept: dict[tuple[int, int], list] = {}
    step = {"now": 0}
    blocks = pipe.transformer.transformer_blocks

    def keeper(index):
        def hook(module, args, output):
            kept.setdefault((step["now"], index), []).append((args[0].clone(), output.clone()))

        return hook

    handles = [block.register_forward_hook(keeper(i)) for i, block in enumerate(blocks)]
    try:
        noise, embeds, mask, negative = _run_inputs(pipe, "a red circle", 3)
        denoise(pipe, noise, embeds, mask, negative, 3, 4.5, before_step=lambda i: step.update(now=i))
    finally:
        for handle in handles:
            handle.remove()
    for (t, block), [(h_in, h_out)] in kept.items():
        direct = (1 - F.cosine_similarity(h_in, h_out, dim=-1).mean(dim=-1)).mean()  # batch = both branches
        assert result.per_timestep[t][block] == pytest.approx(float(direct), rel=1e-5)
        if t == 0:
            assert result.extra["residual_change"][0][block] == 0.0  # no earlier step
            assert result.extra["residual_curvature"][0][block] == 0.0
            continue
        residuals = [out - into for ((into, out),) in (kept[(s, block)] for s in range(t + 1))]
        scale = h_out.abs().flatten(1).sum(dim=1)

        def relative(moved, scale=scale):
            return float((moved.abs().flatten(1).sum(dim=1) / scale).mean())  # per branch, then averaged

        moved = residuals[t] - residuals[t - 1]
        assert result.extra["residual_change"][t][block] == pytest.approx(relative(moved), rel=1e-4)
        if t == 2:  # the first-order forecast from steps 0 and 1, in the sampler's timesteps
            times = result.timesteps
            slope = (residuals[1] - residuals[0]) / (times[1] - times[0])
            moved = residuals[2] - residuals[1] - slope * (times[2] - times[1])
        assert result.extra["residual_curvature"][t][block] == pytest.approx(relative(moved), rel=1e-4)
    means = torch.tensor(result.per_timestep).mean(dim=0)
    assert list(result.scores) == pytest.approx(means.tolist(), rel=1e-6)
    assert list(result.ranking) == sorted(range(8), key=lambda b: -result.scores[b])
    assert all(not block._forward_hooks for block in blocks)  # hooks removed afterwards


def test_ablation_scores_are_the_change_of_the_final_latent(tiny_pipeline, pipe):
    from sanatool.inference.importance import compute_importance, skip_block, spearman
    from sanatool.inference.sampler import denoise

    result = compute_importance(
        tiny_pipeline, ["a blue square"], steps=1, guidance=1.0, seed=0, metric="ablation", device="cpu"
    )
    assert result.calibration.cfg_branches == ("cond",)
    assert list(result.scores) == list(result.per_timestep[-1]) and min(result.scores) > 0
    cosine = result.extra["cosine_scores"]
    assert len(cosine) == 8
    assert result.extra["spearman_vs_cosine"] == pytest.approx(spearman(result.scores, cosine))

    noise, embeds, mask, _ = _run_inputs(pipe, "a blue square", 0)
    full = denoise(pipe, noise, embeds, mask, None, 1, 1.0)
    with skip_block(pipe.transformer, 5):
        assert len(pipe.transformer.transformer_blocks) == 7
        skipped = denoise(pipe, noise, embeds, mask, None, 1, 1.0)
    assert len(pipe.transformer.transformer_blocks) == 8
    change = float((skipped - full).norm() / full.norm())
    assert result.scores[5] == pytest.approx(change, rel=1e-4)


def test_spearman():
    from sanatool.inference.importance import spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833)  # ties share their rank
    assert spearman([1, 1, 1], [1, 2, 3]) is None


def test_cli_importance_writes_the_file_prune_reads_and_a_heatmap(cli, tiny_pipeline, tmp_path):
    from PIL import Image

    from sanatool.io.importance_file import read_importance_file
    from sanatool.io.modeldir import open_model_dir

    out = tmp_path / "imp.json"
    res = cli(
        "importance", tiny_pipeline, "-o", out, "--num-prompts", "2", "--steps", "2", "--batch-size", "2"
    )
    assert res.code == 0, res.stderr
    assert res.stdout.strip() == str(out)
    result = read_importance_file(out)
    assert result.fingerprint == open_model_dir(tiny_pipeline).fingerprint()
    assert result.calibration.prompts == "builtin:shapes/calibration_v1.jsonl"
    assert result.calibration.num_prompts == 2 and len(result.timesteps) == 2
    assert result.extra["sampler"] == "flow-dpm" and result.extra["size"] == [32, 32]
    assert "block importance" in res.stderr and "█" in res.stderr
    assert Image.open(tmp_path / "imp.png").size[0] > 100

    prompts = tmp_path / "p.txt"
    write_prompts(prompts, [PromptItem("a green triangle")])
    res = cli(
        "importance", tiny_pipeline, "-o", tmp_path / "b.json", "--prompts", prompts, "--steps", "1", "--json"
    )
    assert res.code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["format"] == "sanatool-importance/1" and data["calibration"]["prompts"] == str(prompts)
    written = json.loads((tmp_path / "b.json").read_text())
    assert data["scores"] == written["scores"] and data["ranking"] == written["ranking"]


def test_importance_bad_inputs(cli, tiny_pipeline, tiny_transformer, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    out = tmp_path / "imp.json"
    cases = [
        ([tiny_transformer, "-o", out], "needs a pipeline dir"),
        ([tiny_pipeline, "-o", out, "--metric", "magnitude"], "unknown metric"),
        ([tiny_pipeline, "-o", out, "--steps", "0"], "--steps"),
        ([tiny_pipeline, "-o", out, "--num-prompts", "0"], "--num-prompts"),
        ([tiny_pipeline, "-o", out, "--prompts", empty], "holds no prompts"),
        ([tiny_pipeline, "-o", tmp_path / "imp.png"], "heatmap"),
    ]
    for args, message in cases:
        res = cli("importance", *args)
        assert res.code == 2 and message in res.stderr, (args, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt"]
    (tmp_path / "imp.png").write_bytes(b"mine")
    res = cli("importance", tiny_pipeline, "-o", out)
    assert res.code == 2 and "imp.png already exists" in res.stderr
    assert (tmp_path / "imp.png").read_bytes() == b"mine" and not out.exists()


def test_scores_over_several_batches_are_the_mean_over_every_prompt(tiny_pipeline):
    """Per-timestep scores are means over all prompts: the divisor counts every batch, not the last."""
    from sanatool.inference.importance import compute_importance

    def scores(batch_size):
        prompts = ["a red circle", "two blue squares", "a green triangle"]
        result = compute_importance(
            tiny_pipeline, prompts, steps=2, seed=3, batch_size=batch_size, device="cpu"
        )
        return result.per_timestep

    one_batch, three_batches = scores(3), scores(1)
    for batched, split in zip(one_batch, three_batches, strict=True):
        assert split == pytest.approx(batched, rel=1e-4)


def test_the_residual_curvature_is_the_error_of_a_first_order_forecast_in_the_timesteps():
    import torch

    from sanatool.inference.importance import CosineHooks

    class Block(torch.nn.Module):
        now = 0.0

        def forward(self, hidden):
            return hidden + self.now**2  # residual t²

    block, times = Block(), [10.0, 5.0, 4.0]  # uneven: the step index would forecast another value
    with CosineHooks([block], 3, "cpu", times) as hooks:
        for step, time in enumerate(times):
            hooks.set_step(step)
            block.now = time
            block(torch.ones(1, 2, 4))
    # step 2: the forecast 25 + (25 − 100) / (5 − 10) · (4 − 5) = 10 misses the residual 16 by 6
    assert hooks.changes[:, 0].tolist() == pytest.approx([0.0, 75 / 26, 9 / 17])
    assert hooks.curvatures[:, 0].tolist() == pytest.approx([0.0, 75 / 26, 6 / 17])
