"""Block importance over calibration prompts × sampler timesteps (SANA 1.5's pruning criterion).

``cosine`` (the paper's metric): the sampler runs over the calibration prompts, and at every
timestep a forward hook on each block measures ``BI_i = 1 − mean over tokens of
cos(h_in, h_out)`` on the block's input and output hidden states. Hooks reduce on the fly
into a ``timesteps × blocks`` sum on the device, so no activation is ever kept and the cost
is the sampling itself. The score is averaged over prompts **and both classifier-free
guidance branches** (conditional and unconditional; only the conditional one when guidance
is off) into the per-timestep matrix, then over timesteps into one score per block.

``ablation`` (beyond the paper, the honest check of it): each block is skipped alone and the
sampler rerun from the same noise; the score is the relative L2 change of the final denoised
latent, ``‖x_skip − x_full‖ / ‖x_full‖``, averaged over prompts (the per-timestep matrix
holds the same distance after every step). It costs ``depth + 1`` samplings and also records
the cosine scores of the full run and their Spearman correlation with the ablation scores.

Higher is more important for both. Results are :class:`~sanatool.io.importance_file.ImportanceResult`
written by :func:`~sanatool.io.importance_file.write_importance_file`. Under ``torchrun`` ranks
split the prompts and sum their accumulators.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sanatool.errors import InputError
from sanatool.io.importance_file import METRICS, Calibration, ImportanceResult, write_importance_file
from sanatool.io.prompts import PromptItem
from sanatool.progress import ProgressFn, no_progress

DEFAULT_NUM_PROMPTS = 100
METRIC_DEFINITIONS = {
    "cosine": "1 - mean over tokens of cos(block input, block output); mean over prompts, CFG branches, timesteps",
    "ablation": "relative L2 change of the final denoised latent when the block alone is skipped; mean over prompts",
}


class CosineHooks:
    """Forward hooks on every block that add ``1 − mean_tokens cos(h_in, h_out)`` into ``sums[step, block]``.

    They also add the residual change ``‖r_s − r_{s−1}‖₁ / ‖h_out‖₁`` (``r = h_out − h_in``, per
    sample) into ``changes[step, block]``: the error of reusing the block's last residual, which
    cache skip plans rank on; and into ``curvatures[step, block]`` the error of extrapolating
    it to first order from the two before, ``‖r_s − r_{s−1} − (r_{s−1} − r_{s−2})·(t_s − t_{s−1}) /
    (t_{s−1} − t_{s−2})‖₁ / ‖h_out‖₁`` in the sampler's ``timesteps`` (default: the step index),
    which forecast skip plans rank on (at step 1, where one residual is all there is, the change
    itself). Set :attr:`step` (:meth:`set_step`) before each transformer call; step 0 starts a new
    trajectory. Only the last two residuals of each block are kept.
    """

    def __init__(
        self, blocks: Sequence[Any], steps: int, device: Any, timesteps: Sequence[float] | None = None
    ) -> None:
        import torch

        self.blocks = list(blocks)
        self.timesteps = [float(t) for t in range(steps)] if timesteps is None else list(timesteps)
        self.sums = torch.zeros(steps, len(self.blocks), dtype=torch.float32, device=device)
        self.changes = torch.zeros(steps, len(self.blocks), dtype=torch.float32, device=device)
        self.curvatures = torch.zeros(steps, len(self.blocks), dtype=torch.float32, device=device)
        #: Per block, its last residuals (at most two) with the step of each.
        self._previous: dict[int, list[tuple[int, Any]]] = {}
        #: Samples (batch rows, both CFG branches) seen by block 0 at each step: the divisor of ``sums``.
        self.samples = [0] * steps
        self.step = 0
        #: Off while ablated runs reuse the same blocks: they are not part of the cosine score.
        self.active = True
        self._handles: list[Any] = []

    def _hook(self, index: int) -> Any:
        import torch

        def hook(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
            if not self.active:
                return
            hidden_in = (args[0] if args else kwargs["hidden_states"]).float()
            hidden_out = (output[0] if isinstance(output, tuple) else output).float()
            rows, tokens = hidden_in.shape[0], hidden_in.shape[1]
            # cos over the feature dim without materialising normalised copies of the hidden states
            dot = torch.linalg.vecdot(hidden_in, hidden_out)
            norms = torch.linalg.vector_norm(hidden_in, dim=-1) * torch.linalg.vector_norm(hidden_out, dim=-1)
            cosine = dot / norms.clamp_min(1e-8)  # (batch, tokens)
            # Σ over rows of (1 − mean over tokens of cos)
            self.sums[self.step, index] += rows - cosine.sum() / tokens
            residual = hidden_out - hidden_in
            scale = hidden_out.abs().flatten(1).sum(dim=1).clamp_min(1e-12)
            previous = [(s, r) for s, r in self._previous.get(index, []) if r.shape == residual.shape]
            if previous:
                step, last = previous[-1]
                moved = residual - last
                self.changes[self.step, index] += (moved.abs().flatten(1).sum(dim=1) / scale).sum()
                times = self.timesteps
                if len(previous) == 2 and times[step] != times[previous[0][0]]:
                    before, first = previous[0]
                    ratio = (times[self.step] - times[step]) / (times[step] - times[before])
                    moved = moved - (last - first) * ratio
                self.curvatures[self.step, index] += (moved.abs().flatten(1).sum(dim=1) / scale).sum()
            self._previous[index] = [*previous[-1:], (self.step, residual)]
            if index == 0:
                self.samples[self.step] += rows

        return hook

    def __enter__(self) -> CosineHooks:
        for index, block in enumerate(self.blocks):
            self._handles.append(block.register_forward_hook(self._hook(index), with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._previous.clear()

    def set_step(self, step: int) -> None:
        """Attribute the next transformer call to sampler step ``step`` (0: a new trajectory)."""
        self.step = step
        if step == 0:
            self._previous.clear()


@contextmanager
def skip_block(transformer: Any, index: int) -> Iterator[None]:
    """Run ``transformer`` without block ``index`` (the residual stream passes straight through)."""
    import torch

    original = transformer.transformer_blocks
    transformer.transformer_blocks = torch.nn.ModuleList([b for i, b in enumerate(original) if i != index])
    try:
        yield
    finally:
        transformer.transformer_blocks = original


def _ranks(values: Sequence[float]) -> list[float]:
    """Ranks from 1, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation of two equal-length sequences (``None`` when a side is constant)."""
    if len(a) != len(b):
        raise ValueError("spearman needs two sequences of the same length")
    ra, rb = _ranks(a), _ranks(b)
    mean = (len(a) + 1) / 2
    cov = sum((x - mean) * (y - mean) for x, y in zip(ra, rb, strict=True))
    var_a = sum((x - mean) ** 2 for x in ra)
    var_b = sum((y - mean) ** 2 for y in rb)
    if var_a == 0 or var_b == 0:
        return None
    return cov / (var_a * var_b) ** 0.5


def _prompt_set(
    model: Any, prompts: Sequence[PromptItem | str] | None, num_prompts: int, source: str | None
) -> tuple[list[PromptItem], str]:
    from sanatool.inference.pipeline import default_calibration_name, default_calibration_prompts

    if num_prompts <= 0:
        raise InputError(f"--num-prompts must be at least 1, got {num_prompts}")
    if prompts is None:
        items, name = default_calibration_prompts(model), default_calibration_name(model)
    else:
        items = [p if isinstance(p, PromptItem) else PromptItem(str(p)) for p in prompts]
        name = source or "given prompts"
    if not items:
        raise InputError("no calibration prompts given; pass --prompts FILE with at least one prompt")
    for index, item in enumerate(items):
        if not item.prompt.strip():
            raise InputError(f"calibration prompt {index} is empty; every prompt needs some text")
    return items[:num_prompts], name


def compute_importance(
    model_spec: Any,
    prompts: Sequence[PromptItem | str] | None = None,
    steps: int | None = None,
    guidance: float = 4.5,
    seed: int = 0,
    metric: str = "cosine",
    batch_size: int = 8,
    device: Any = "auto",
    progress: ProgressFn = no_progress,
    dtype: Any = "auto",
    num_prompts: int = DEFAULT_NUM_PROMPTS,
    size: Sequence[int] | None = None,
    sampler: str | None = None,
    instruction: bool | None = None,
    prompts_source: str | None = None,
    offload: bool = False,
    variant: str | None = None,
    allow_pickle: bool = False,
    skip_plan: Any = None,
) -> ImportanceResult:
    """Score every block of a pipeline's transformer over calibration prompts (see the module docstring).

    ``prompts=None`` uses the model world's 100 calibration prompts; the first ``num_prompts``
    are used. Prompt ``p`` starts from the noise of :func:`~sanatool.inference.sampler.image_seed`
    ``(seed, p, 0)``, so a calibration run is the sampling of candidate 0 of each prompt.
    ``sampler``/``steps`` ``None``: the pipeline's own scheduler and its default steps (SANA-Sprint:
    SCM, 2 steps, guidance embedded so one branch); ``variant``: the weight files of a path; ``offload``: models visit the GPU only while they run.
    ``allow_pickle`` lets pickle component weights load (torch's weights_only loader).
    ``skip_plan`` (a :class:`~sanatool.inference.skipping.SkipPlan` or its file): every sampling
    follows it, so the blocks are scored as the plan runs them (its steps and sampler unless
    given; a plan for another model, step count or sampler is refused); the file records its id.
    """
    from sanatool.distributed import resolve_device, setup_distributed
    from sanatool.inference.pipeline import (
        check_offload,
        execution_device,
        load_pipeline,
        resolve_instruction,
    )
    from sanatool.inference.sampler import (
        PromptEncoder,
        check_settings,
        check_size,
        default_steps,
        denoise,
        image_seed,
        make_scheduler,
        resolve_sampler,
        start_noise,
        step_timesteps,
        uses_cfg,
    )
    from sanatool.inference.skipping import apply_skip_plan
    from sanatool.io.modeldir import as_model_dir

    if metric not in METRICS:
        raise InputError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    check_settings(steps, guidance, sampler, batch_size)
    model = as_model_dir(model_spec, variant)
    model.require_pipeline("importance")
    if skip_plan is not None:
        from sanatool.inference.skipping import SkipPlan, read_skip_plan

        if not isinstance(skip_plan, SkipPlan):
            skip_plan = read_skip_plan(skip_plan)
        sampler = skip_plan.sampler if sampler is None else sampler
        steps = skip_plan.steps if steps is None else steps
    sampler = resolve_sampler(model, sampler)
    steps = default_steps(sampler) if steps is None else steps
    if skip_plan is not None:
        skip_plan.check(model.fingerprint(), steps, sampler)
    items, source_name = _prompt_set(model, prompts, num_prompts, prompts_source)
    height, width = check_size(model, size)
    import torch  # after every check that needs no model: a bad option is refused at once

    target = resolve_device(device)
    check_offload(offload, target)
    cfg = uses_cfg(sampler, guidance)
    with setup_distributed(target) as dist:
        pipe = load_pipeline(
            model, target, dtype, command="importance", offload=offload, allow_pickle=allow_pickle
        )
        chosen = resolve_instruction(model, instruction)
        transformer = pipe.transformer
        depth = len(transformer.transformer_blocks)
        timesteps = [float(t) for t in step_timesteps(make_scheduler(pipe, sampler, steps))]
        target = execution_device(pipe)
        encoder = PromptEncoder(pipe, chosen, target)
        mine = dist.share(len(items))
        batches = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
        passes = 1 + (depth if metric == "ablation" else 0)
        total = len(batches) * passes
        distances = torch.zeros(steps, depth, dtype=torch.float32, device=target)
        report = progress if dist.is_main else no_progress
        report("importance", 0, total)
        following = nullcontext() if skip_plan is None else apply_skip_plan(transformer, skip_plan)
        with following, CosineHooks(transformer.transformer_blocks, steps, target, timesteps) as hooks:
            for number, batch in enumerate(batches):
                embeds, mask = encoder.conditional([items[p].prompt for p in batch])
                negative = encoder.unconditional(len(batch)) if cfg else None
                seeds = [image_seed(seed, p, 0) for p in batch]
                noise, generators = start_noise(pipe, seeds, height, width, target)
                trajectory: list[Any] = []

                def keep(step: int, latents: Any, trajectory: list[Any] = trajectory) -> None:
                    trajectory.append(latents.clone())

                denoise(
                    pipe,
                    noise,
                    embeds,
                    mask,
                    negative,
                    steps,
                    guidance,
                    sampler,
                    before_step=hooks.set_step,
                    after_step=keep if metric == "ablation" else None,
                    generators=generators,
                )
                report("importance", number * passes + 1, total)
                if metric != "ablation":
                    continue
                hooks.active = False
                for block in range(depth):

                    def measure(
                        step: int, latents: Any, block: int = block, trajectory: list[Any] = trajectory
                    ) -> None:
                        reference = trajectory[step].flatten(1)
                        change = (latents.flatten(1) - reference).norm(dim=1)
                        distances[step, block] += (change / reference.norm(dim=1).clamp_min(1e-12)).sum()

                    # The same draws again: SCM's step noise comes from the images' generators.
                    _, generators = start_noise(pipe, seeds, height, width, target)
                    with skip_block(transformer, block):
                        denoise(
                            pipe,
                            noise,
                            embeds,
                            mask,
                            negative,
                            steps,
                            guidance,
                            sampler,
                            after_step=measure,
                            generators=generators,
                        )
                    report("importance", number * passes + 2 + block, total)
                hooks.active = True
        samples = torch.tensor(hooks.samples, dtype=torch.float32, device=target)
        dist.all_reduce_sum(hooks.sums)
        dist.all_reduce_sum(hooks.changes)
        dist.all_reduce_sum(hooks.curvatures)
        dist.all_reduce_sum(samples)
        dist.all_reduce_sum(distances)
    cosine_matrix = (hooks.sums / samples.clamp_min(1.0)[:, None]).double().cpu()
    cosine_scores = [float(v) for v in cosine_matrix.mean(dim=0)]
    change_matrix = (hooks.changes / samples.clamp_min(1.0)[:, None]).double().cpu()
    curvature_matrix = (hooks.curvatures / samples.clamp_min(1.0)[:, None]).double().cpu()
    branches = ("cond", "uncond") if cfg else ("cond",)
    extra: dict[str, Any] = {
        "model": str(model.path),
        "metric_definition": METRIC_DEFINITIONS[metric],
        "sampler": sampler,
        "size": [height, width],
        "instruction": bool(chosen),
        # row 0 is 0: there is no earlier step to change from
        "residual_change": [[float(v) for v in row] for row in change_matrix],
        "residual_curvature": [[float(v) for v in row] for row in curvature_matrix],
    }
    if skip_plan is not None:
        extra["skip_plan"] = skip_plan.plan_id()
    if metric == "ablation":
        matrix = (distances / len(items)).double().cpu()
        scores = [float(v) for v in matrix[-1]]
        extra["cosine_scores"] = cosine_scores
        extra["spearman_vs_cosine"] = spearman(scores, cosine_scores)
    else:
        matrix, scores = cosine_matrix, cosine_scores
    return ImportanceResult(
        fingerprint=model.fingerprint(),
        metric=metric,
        calibration=Calibration(
            prompts=source_name,
            num_prompts=len(items),
            steps=steps,
            guidance=float(guidance),
            seed=seed,
            cfg_branches=branches,
        ),
        scores=tuple(scores),
        timesteps=tuple(timesteps),
        per_timestep=tuple(tuple(float(v) for v in row) for row in matrix),
        extra=extra,
    )


def heatmap_path(out: str | os.PathLike) -> Path:
    """Where the heatmap of an importance file goes: the same name with ``.png``."""
    path = Path(out)
    if path.suffix.lower() == ".png":
        raise InputError(
            f"importance output {out} ends in .png, which is where its heatmap goes; name it .json"
        )
    return path.with_suffix(".png")


def step_ranks(result: ImportanceResult) -> list[list[int]]:
    """Each block's rank at each timestep (1 = most important there; ties to the lower block, as the ranking)."""
    ranks = []
    for row in result.per_timestep:
        order = sorted(range(len(row)), key=lambda block: (-row[block], block))
        rank = [0] * len(row)
        for place, block in enumerate(order, start=1):
            rank[block] = place
        ranks.append(rank)
    return ranks


#: The log colour scale spans at most this many decades below the largest score.
HEATMAP_DECADES = 4


def log_range(values: Sequence[float]) -> tuple[float, float] | None:
    """The (low, high) of a log colour scale for ``values``: from the smallest positive value (at most
    :data:`HEATMAP_DECADES` decades down) to the largest; ``None`` when a log scale cannot show them
    (no positive value, or all positive values equal)."""
    positive = [v for v in values if v > 0]
    if not positive:
        return None
    high = max(positive)
    low = max(min(positive), high / 10**HEATMAP_DECADES)
    return (low, high) if low < high else None


def write_heatmap(result: ImportanceResult, path: str | os.PathLike, force: bool = False) -> Path:
    """Save the importance picture (atomically): three views sharing the block axis.

    Top: the per-timestep scores on a log colour scale, so that blocks far below the strongest
    still differ (one block often dominates: block 0 of the shipped model scores ~0.38, the others
    at most 0.05); a zero (an identity block, e.g. one just grown) gets the lowest colour. Middle:
    each block's rank at each timestep (1 = most important there), how the order moves over the
    steps. Bottom: each block's overall score, what ``prune`` ranks by, with its rank.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm, Normalize

    from sanatool.io.outputs import atomic_output_file

    rows, depth = len(result.timesteps), result.depth
    values = [v for row in result.per_timestep for v in row]
    span = log_range(values)
    if span is None:
        norm, shown, scale = Normalize(), result.per_timestep, "linear"
    else:
        norm = LogNorm(*span)
        shown = [[min(max(v, span[0]), span[1]) for v in row] for row in result.per_timestep]
        scale = "log"
    panel_h = min(1.0 + 0.12 * rows, 4.0)
    # Colour bars in a column of their own, so that the three views keep one block axis.
    figure, grid = plt.subplots(
        3,
        2,
        figsize=(min(4 + 0.4 * depth, 24), 2 * panel_h + 2.8),
        gridspec_kw={"height_ratios": [panel_h, panel_h, 2.2], "width_ratios": [40, 1]},
        layout="constrained",
    )
    (scores_axes, scores_bar), (ranks_axes, ranks_bar), (bars, unused) = grid
    unused.axis("off")
    try:
        tick_every = max(1, depth // 24)
        row_every = max(1, rows // 10)
        for axes in (scores_axes, ranks_axes):
            axes.set_ylabel("sampler timestep")
            axes.set_yticks(range(0, rows, row_every))
            axes.set_yticklabels([f"{result.timesteps[i]:.4g}" for i in range(0, rows, row_every)])
        picture = scores_axes.imshow(shown, aspect="auto", cmap="viridis", interpolation="nearest", norm=norm)
        scores_axes.set_title(f"block importance ({result.metric}) per timestep, {scale} colour scale")
        figure.colorbar(picture, cax=scores_bar, label=result.metric)
        ranked = ranks_axes.imshow(
            step_ranks(result),
            aspect="auto",
            cmap="viridis_r",
            interpolation="nearest",
            vmin=1,
            vmax=max(depth, 2),
        )
        ranks_axes.set_title("rank at each timestep (1 = most important)")
        figure.colorbar(ranked, cax=ranks_bar, label="rank")

        rank_of = {block: place for place, block in enumerate(result.ranking, start=1)}
        bars.bar(range(depth), result.scores, color="#4f81bd")
        top = max(max(result.scores), 0.0)
        if span is not None and log_range(result.scores) is not None and span[1] / span[0] > 20:
            bars.set_yscale("log")
            bars.set_ylim(span[0] / 2, top * 2)  # headroom for the rank labels
        elif top > 0:
            bars.set_ylim(top=top * 1.15)
        if depth <= 40:
            for block, score in enumerate(result.scores):
                bars.annotate(f"#{rank_of[block]}", (block, score), ha="center", va="bottom", fontsize=7)
        bars.set_ylabel(f"overall ({bars.get_yscale()})")
        bars.set_title("overall score per block (#rank; prune keeps the top ranks)")
        bars.set_xlabel("block (0 = first)")
        for axes in (scores_axes, ranks_axes, bars):
            axes.set_xticks(range(0, depth, tick_every))
            axes.set_xlim(-0.5, depth - 0.5)
        with atomic_output_file(path, force) as tmp:
            figure.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(figure)
    return Path(path)


def importance_to_file(
    model_spec: Any,
    out: str | os.PathLike,
    prompts: Sequence[PromptItem | str] | None = None,
    force: bool = False,
    progress: ProgressFn = no_progress,
    **settings: Any,
) -> tuple[Path, Path, ImportanceResult]:
    """Compute importance and write the JSON file plus its heatmap; return (json, png, result).

    Both outputs are checked before any work, and only rank 0 writes under ``torchrun``.
    ``settings`` are :func:`compute_importance`'s keyword arguments.
    """
    from sanatool.distributed import is_main_process
    from sanatool.io.modeldir import as_model_dir
    from sanatool.io.outputs import check_output_path

    model = as_model_dir(model_spec, settings.pop("variant", None))
    model.require_pipeline("importance")
    png = heatmap_path(out)
    for path in (out, png):
        check_output_path(path, force, [model.path])
    result = compute_importance(model, prompts, progress=progress, **settings)
    if is_main_process():
        write_importance_file(out, result, force=force)
        write_heatmap(result, png, force=force)
    return Path(out), png, result
