"""Timestep-aware block skipping against pruning and fewer steps at the same compute (issue 20).

On a trained pipeline (default ``builtin:tiny-shapes``): score the blocks (``importance``, cosine,
on the calibration prompts), then sample the evaluation suite (``--per-category`` prompts per
category × ``--candidates`` images, the same seeds everywhere) and score it with the shapes
evaluator, for each fraction F of block-calls kept (1.0, 0.8, 0.6, 0.5, 0.4):

- **forecast**: ``plan-skips --budget F`` (the default mode, planned on the residual curvature)
  followed by ``sample --skip-plan``: a skipped block adds its residual extrapolated to first
  order, in the sampler's timestep, from its last two runs;
- **cache**: ``plan-skips --budget F --skip-mode cache`` (planned on the residual change): a
  skipped block reuses the residual of its last run;
- **identity**: ``plan-skips --budget F --skip-mode identity --metric cosine``: a skipped block
  passes its input through;
- **prune**: ``prune --keep round(F × depth) --importance`` (no fine-tuning);
- **heal**: that pruned model after ``--heal-steps`` (100) steps of distillation from the full model,
  ``distill.py``'s ``distill`` run (``finetune --teacher``, CAME-8bit, lr 1e-5, batch 32, seed 0, on
  the base's own shapes data);
- **steps**: ``round(F × steps)`` sampler steps.

Intervals are 95% bootstrap intervals over prompts (resampled within each category, every
image of a prompt together; 2000 resamples), and every comparison is paired (the same resample
for both sides), so verdicts come from the interval of the difference. Then the wall time of the
denoising loop (the transformer part) with each plan against without, alternated ``--reps``
times in the same run (median ratio and its order-statistic interval, ideal = F), for the cache
plans and, when ``forecast`` is among ``--methods``, the forecast plans; ``--big`` also times one
transformer call of a random SANA 1.5 1.6B at ``--big-size`` px, the first skipping step of a
plan (the steps before it compute every block and fill the cache: one for cache, two for forecast,
which needs two residuals to extrapolate) that skips the ``(1 − F) × depth`` blocks of a random
ranking, against the same call without a plan.

    flock /tmp/bench.lock env OMP_NUM_THREADS=2 python benchmarks/skipping.py --work /tmp/skipbench

Writes ``WORK/results-METRIC.json`` and the speed/quality plot (``--plot``, default beside this script).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from startup import median_interval  # noqa: E402

FRACTIONS = (0.6, 0.8, 0.5, 0.4)  # 0.6 (the goal) first: a cut-short run still answers it
METHODS = ("cache", "forecast", "identity", "prune", "heal", "steps")
# method: (mode, metric)
PLANS = {
    "cache": ("cache", "change"),
    "forecast": ("forecast", "curvature"),
    "identity": ("identity", "cosine"),
}
RESAMPLES = 2000


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def suite_subset(per_category: int) -> list[Any]:
    """The first ``per_category`` evaluation prompts of each category."""
    from sanatool.shapes import CATEGORIES, evaluation_suite

    suite = evaluation_suite()
    return [item for c in CATEGORIES for item in [i for i in suite if i.category == c][:per_category]]


def correct_matrix(samples: Path, prompts: int, candidates: int) -> np.ndarray:
    """``prompts × candidates`` of 0/1: which images the shapes evaluator passes."""
    from sanatool.samples.evaluate import evaluate_samples_dir

    report = evaluate_samples_dir(samples)
    if report.problems or report.scored != prompts * candidates:
        raise SystemExit(f"{samples}: {report.scored} images scored, problems {report.problems[:3]}")
    out = np.zeros((prompts, candidates))
    for image in report.images:
        name = Path(image.path).stem  # p00012_c003
        out[int(name[1:6]), int(name.split("_c")[1])] = image.correct
    return out


def _per_prompt(m: np.ndarray, categories: list[str]) -> dict[tuple[str, str], float]:
    """A ``prompts × candidates`` 0/1 matrix as :mod:`sanatool.samples.stats` takes it."""
    return {
        (category, f"{i:05d}"): float(v)
        for i, (category, v) in enumerate(zip(categories, m.mean(axis=1), strict=True))
    }


def bootstrap_overall(
    results: dict[str, np.ndarray], categories: list[str], seed: int = 0
) -> dict[str, np.ndarray]:
    """Per configuration, ``RESAMPLES`` overall scores on the same stratified resamples of prompts."""
    from sanatool.samples import stats

    per_prompt = {key: _per_prompt(m, categories) for key, m in results.items()}
    return stats.bootstrap_overall(per_prompt, resamples=RESAMPLES, seed=seed)


def overall(m: np.ndarray, categories: list[str]) -> float:
    """GenEval's overall (the mean over categories of the category means) of a 0/1 matrix."""
    from sanatool.samples import stats

    return stats.overall(_per_prompt(m, categories))


def interval(values: np.ndarray) -> tuple[float, float]:
    """The 95% percentile interval of bootstrap values."""
    from sanatool.samples import stats

    return stats.percentile_interval(values)


def beats(low: float, high: float, what: str) -> str:
    """What the interval of a difference (this − other) says."""
    if low > 0:
        return f"beats {what}"
    if high < 0:
        return f"loses to {what}"
    return f"no difference measured vs {what}"


def sample_all(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Importance, plans, pruned models, and every samples dir with its per-image scores and wall time."""
    import sanatool
    from sanatool.errors import InputError
    from sanatool.inference.skipping import make_skip_plan
    from sanatool.io.importance_file import read_importance_file
    from sanatool.io.modeldir import as_model_dir

    model = as_model_dir(args.model)
    depth = int(model.transformer.config["num_layers"])
    prompts = suite_subset(args.per_category)
    categories = [p.category for p in prompts]
    # plan and prune runs of another metric get their own names; full and fewer-steps runs are shared
    tag = "" if args.metric == "cosine" else f"-{args.metric}"
    importance_path = work / f"importance{tag}.json"
    if not importance_path.exists():
        log(
            f"importance ({args.metric}): {args.calibration_prompts} calibration prompts × {args.steps} steps"
        )
        result = sanatool.importance(
            model,
            steps=args.steps,
            num_prompts=args.calibration_prompts,
            device="cpu",
            dtype="fp32",
            metric=args.metric,
        )
        sanatool.write_importance_file(importance_path, result)
    importance = read_importance_file(importance_path)
    common = {
        "candidates": args.candidates,
        "seed": args.seed,
        "device": "cpu",
        "dtype": "fp32",
        "batch_size": 16,
    }
    configs: list[tuple[str, float, float, dict[str, Any]]] = [
        ("full", 1.0, 1.0, {"model": model, "steps": args.steps})
    ]
    refused = []
    for fraction in args.fractions:
        for method, (mode, plan_metric) in PLANS.items():
            if method not in args.methods:
                continue
            plan_metric = plan_metric if plan_metric in ("change", "curvature") else args.metric
            try:
                plan = make_skip_plan(importance, fraction, plan_metric, mode)
            except InputError as err:  # e.g. every block at a step: recorded, not sampled
                refused.append({"method": method, "fraction": fraction, "why": str(err)})
                log(f"  {method} F={fraction:g} refused: {err}")
                continue
            kwargs = {"model": model, "steps": args.steps, "skip_plan": plan}
            configs.append((method, fraction, plan.kept / plan.total, kwargs))
        keep = round(fraction * depth)
        pruned = work / f"pruned{tag}-{keep}"
        if not pruned.exists():
            sanatool.prune(model, pruned, keep=keep, importance=importance_path)
        configs.append(("prune", fraction, keep / depth, {"model": pruned, "steps": args.steps}))
        if "heal" in args.methods:
            healed = heal(args, work, model, pruned)
            configs.append(("heal", fraction, keep / depth, {"model": healed, "steps": args.steps}))
        steps = round(fraction * args.steps)
        configs.append(("steps", fraction, steps / args.steps, {"model": model, "steps": steps}))
    rows = []
    (work / "samples").mkdir(exist_ok=True)
    configs = [c for c in configs if c[0] == "full" or c[0] in args.methods]
    for method, fraction, kept, kwargs in configs:
        out = work / "samples" / f"{method}{tag if method in ('identity', 'prune') else ''}-{fraction:g}"
        started = time.perf_counter()
        if not (out / "manifest.jsonl").exists():
            sanatool.sample(kwargs.pop("model"), prompts, out, **common, **kwargs)
        seconds = time.perf_counter() - started
        correct = correct_matrix(out, len(prompts), args.candidates)
        rows.append(
            {"method": method, "fraction": fraction, "kept": kept, "seconds": seconds, "correct": correct}
        )
        log(f"  {method} F={fraction:g}: overall {overall(correct, categories):.3f} ({seconds:.0f} s)")
    return {
        "rows": rows,
        "categories": categories,
        "importance": importance,
        "depth": depth,
        "refused": refused,
    }


def heal(args: argparse.Namespace, work: Path, model: Any, pruned: Path) -> Path:
    """``pruned`` after ``--heal-steps`` steps of distillation from ``model``: ``distill.py``'s ``distill`` run."""
    from distill import build_parser, finetune, parse_run, shapes_data

    data = shapes_data(work, args.data_size)
    # distill.py's own defaults (optimizer, lr, batch, warm-up), so the two benchmarks heal alike
    recipe = build_parser().parse_args([])
    recipe.steps, recipe.seed = args.heal_steps, args.seed
    (work / "heal" / pruned.name / "models").mkdir(parents=True, exist_ok=True)
    out, _, _ = finetune(recipe, parse_run("distill", recipe), work / "heal" / pruned.name, model, data, pruned,
                         cache=work / "cache")  # fmt: skip
    return out


def timing(args: argparse.Namespace, importance: Any) -> list[dict[str, Any]]:
    """Wall time of the denoising loop with each fraction's plan / without, alternated in the same run."""
    from sanatool.errors import InputError
    from sanatool.inference.pipeline import load_pipeline
    from sanatool.inference.sampler import PromptEncoder, check_size, denoise, start_noise
    from sanatool.inference.skipping import apply_skip_plan, make_skip_plan

    pipe = load_pipeline(args.model, "cpu", "fp32")
    prompts = [p.prompt for p in suite_subset(2)][: args.timing_batch]
    encoder = PromptEncoder(pipe, None, "cpu")
    embeds, mask = encoder.conditional(prompts)
    negative = encoder.unconditional(len(prompts))
    height, width = check_size(pipe, None)
    noise, _ = start_noise(pipe, list(range(len(prompts))), height, width, "cpu")

    def run() -> float:
        started = time.perf_counter()
        denoise(pipe, noise, embeds, mask, negative, args.steps, 4.5)
        return time.perf_counter() - started

    run()  # warm-up
    out = []
    for method in [m for m in ("cache", "forecast") if m in args.methods]:
        mode, metric = PLANS[method]
        for fraction in args.fractions:
            try:
                plan = make_skip_plan(importance, fraction, metric, mode)
            except InputError:
                continue  # refused plans are reported with the quality table
            ratios = []
            for _ in range(args.reps):
                full = run()
                with apply_skip_plan(pipe, plan):
                    skipped = run()
                ratios.append(skipped / full)
            median, low, high = median_interval(ratios)
            kept = plan.kept / plan.total
            out.append({"mode": mode, "fraction": kept, "ratio": median, "low": low, "high": high})
            log(f"  timing {mode} F={fraction:g}: plan/full {median:.3f} [{low:.3f}, {high:.3f}]")
    return out


def big_timing(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The first skipping step of a plan on a random SANA 1.5 1.6B (one transformer call) against it unplanned."""
    import torch
    from diffusers import SanaTransformer2DModel

    from sanatool.arch import preset_config
    from sanatool.inference.skipping import SkipPlan, apply_skip_plan

    config = preset_config(args.big_preset)
    transformer = SanaTransformer2DModel(**{k: v for k, v in config.items() if not k.startswith("_")}).eval()
    depth = len(transformer.transformer_blocks)
    side = args.big_size // 32
    latents = torch.randn(args.big_batch, config["in_channels"], side, side)
    text = torch.randn(args.big_batch, 32, config["caption_channels"])
    ranking = np.random.default_rng(0).permutation(depth)

    def run() -> float:
        started = time.perf_counter()
        with torch.no_grad():
            transformer(latents, encoder_hidden_states=text, timestep=torch.full((args.big_batch,), 999.0))
        return time.perf_counter() - started

    run()
    out = []
    modes = [m for m in ("cache", "forecast") if m in args.methods]
    for mode, fraction in [(m, f) for m in modes for f in args.big_fractions]:
        skipped = frozenset(int(b) for b in ranking[: depth - round(fraction * depth)])
        warm = 1 if mode == "cache" else 2  # full steps that fill the cache (forecast needs two residuals)
        skip = (frozenset(),) * warm + (skipped,)
        plan = SkipPlan("random", depth, warm + 1, "flow-dpm", 4.5, "random", fraction, skip, mode)
        ratios = []
        for rep in range(args.big_reps):
            if rep % 2 == 0:  # alternate which call goes first, so a drift in speed cancels out
                full = run()
            with apply_skip_plan(transformer, plan):
                for _ in range(warm):
                    run()
                planned = run()
            if rep % 2 == 1:
                full = run()
            ratios.append(planned / full)
        median, low, high = median_interval(ratios)
        kept = 1 - len(skipped) / depth
        out.append({"mode": mode, "fraction": kept, "ratio": median, "low": low, "high": high})
        log(f"  {args.big_preset} {mode} F={kept:g}: plan/full {median:.3f} [{low:.3f}, {high:.3f}]")
    return out


PARTS = ("attn1", "attn2", "ff")  # linear self-attention, cross-attention, Mix-FFN


def weighted_cache_plan(change: np.ndarray, weight: np.ndarray, keep: float) -> list[set[int]]:
    """Greedy cache plan over lanes (a block, or one part of a block) of unequal cost.

    The library's rule (:func:`sanatool.inference.skipping.greedy_cache_skips`), ranked per unit of
    compute saved, until the kept compute is at most ``keep`` of the total. Step 0 always runs.
    """
    from sanatool.inference.skipping import greedy_cache_skips

    steps = change.shape[0]
    skip, _ = greedy_cache_skips(change, (1 - keep) * steps * weight.sum(), weight)
    return skip


class PartCache:
    """Cache skipping per part: a skipped part returns its output of its last run (the block gates it anew)."""

    def __init__(self, transformer: Any, skip: list[set[int]]) -> None:
        self.skip, self.step, self.calls, self.cache = skip, 0, 0, {}
        self.patched = []
        self.counter = transformer.register_forward_pre_hook(self.next_step)
        for index, block in enumerate(transformer.transformer_blocks):
            for number, name in enumerate(PARTS):
                lane = index * len(PARTS) + number
                if any(lane in row for row in skip):
                    module = getattr(block, name)
                    module.forward = self.wrap(lane, module.forward)
                    self.patched.append(module)

    def next_step(self, module: Any, args: Any) -> None:
        self.step, self.calls = self.calls % len(self.skip), self.calls + 1
        if self.step == 0:
            self.cache.clear()

    def wrap(self, lane: int, original: Any) -> Any:
        def forward(*args: Any, **kwargs: Any) -> Any:
            if lane in self.skip[self.step] and lane in self.cache:
                return self.cache[lane]
            self.cache[lane] = original(*args, **kwargs)
            return self.cache[lane]

        return forward

    def __enter__(self) -> PartCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.counter.remove()
        for module in self.patched:
            del module.forward


def part_changes(args: argparse.Namespace, pipe: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-step change of each block's and each part's contribution to the stream, and the parts' FLOP shares.

    A part's contribution is what it adds to the hidden states (attn1: gated self-attention;
    attn2: cross-attention; ff: gated Mix-FFN), so the three add up to the block's residual.
    Returns ``(block change steps × depth, part change steps × depth·3, part FLOP share of a block)``.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from sanatool.inference.pipeline import default_calibration_prompts
    from sanatool.inference.sampler import PromptEncoder, check_size, denoise, image_seed, start_noise

    blocks = pipe.transformer.transformer_blocks
    depth = len(blocks)
    prompts = [p.prompt for p in default_calibration_prompts(pipe)[: args.parts_calibration]]
    encoder = PromptEncoder(pipe, None, "cpu")
    embeds, mask = encoder.conditional(prompts)
    negative = encoder.unconditional(len(prompts))
    height, width = check_size(pipe, None)
    noise, _ = start_noise(
        pipe, [image_seed(args.seed, p, 0) for p in range(len(prompts))], height, width, "cpu"
    )
    seen: dict[tuple[int, str], Any] = {}
    block_change = np.zeros((args.steps, depth))
    part_change = np.zeros((args.steps, depth * len(PARTS)))
    previous: dict[int, list[Any]] = {}
    step = {"now": 0}

    def note(index: int, what: str) -> Any:
        def hook(module: Any, hook_args: Any, output: Any = None) -> None:
            seen[(index, what)] = (hook_args[0] if output is None else output).detach().clone()
            if what != "out":
                return
            h_in, mid, cross, h_out = (seen[(index, k)] for k in ("in", "mid", "cross", "out"))
            now = [h_out - h_in, mid - h_in, cross, h_out - mid - cross]
            if index in previous:
                scale = h_out.abs().flatten(1).sum(1)
                moved = [
                    ((a - b).abs().flatten(1).sum(1) / scale).mean().item()
                    for a, b in zip(now, previous[index], strict=True)
                ]
                block_change[step["now"], index] = moved[0]
                part_change[step["now"], index * len(PARTS) : (index + 1) * len(PARTS)] = moved[1:]
            previous[index] = now

        return hook

    handles = []
    for index, block in enumerate(blocks):
        handles += [
            block.register_forward_pre_hook(note(index, "in")),
            block.attn2.register_forward_pre_hook(note(index, "mid")),
            block.attn2.register_forward_hook(note(index, "cross")),
            block.register_forward_hook(note(index, "out")),
        ]
    try:
        with torch.no_grad():
            denoise(
                pipe, noise, embeds, mask, negative, args.steps, 4.5, before_step=lambda i: step.update(now=i)
            )
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        denoise(pipe, noise, embeds, mask, negative, 1, 4.5)
    flops = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}
    share = np.zeros(len(PARTS))
    for index in range(depth):
        name = next(k for k in flops if k.endswith(f"transformer_blocks.{index}"))
        share += [flops.get(f"{name}.{part}", 0) / flops[name] / depth for part in PARTS]
    return block_change, part_change, share


def parts_experiment(args: argparse.Namespace, work: Path, sampled: dict[str, Any]) -> list[dict[str, Any]]:
    """Cache plans over parts (attention, cross-attention, FFN) against whole-block cache plans, same FLOPs."""
    import sanatool
    import sanatool.samples.writer as writer
    from sanatool.inference.pipeline import load_pipeline
    from sanatool.inference.sampler import resolve_sampler
    from sanatool.inference.skipping import SkipPlan
    from sanatool.io.modeldir import as_model_dir

    model = as_model_dir(args.model)
    pipe = load_pipeline(model, "cpu", "fp32")
    block_change, part_change, share = part_changes(args, pipe)
    depth = block_change.shape[1]
    log(f"  part FLOP shares of a block: {dict(zip(PARTS, np.round(share, 3), strict=True))}")
    weights = np.tile(share, depth)
    prompts = suite_subset(args.per_category)
    empty = SkipPlan(
        model.fingerprint(),
        depth,
        args.steps,
        resolve_sampler(model, None),
        4.5,
        "parts",
        1.0,
        (frozenset(),) * args.steps,
    )
    out = []
    for fraction in args.parts_fractions:
        skip = weighted_cache_plan(part_change, weights, fraction)
        kept = 1 - sum(weights[lane] for row in skip for lane in row) / (args.steps * weights.sum())
        target = work / "samples" / f"parts-{fraction:g}"
        started = time.perf_counter()
        if not (target / "manifest.jsonl").exists():
            original = writer.apply_skip_plan
            writer.apply_skip_plan = lambda pipe, plan, skip=skip: PartCache(pipe.transformer, skip)
            try:
                sanatool.sample(
                    model,
                    prompts,
                    target,
                    candidates=args.candidates,
                    seed=args.seed,
                    device="cpu",
                    dtype="fp32",
                    batch_size=16,
                    steps=args.steps,
                    skip_plan=empty,
                )
            finally:
                writer.apply_skip_plan = original
        correct = correct_matrix(target, len(prompts), args.candidates)
        skipped = {
            part: sum(1 for row in skip for lane in row if lane % len(PARTS) == n)
            for n, part in enumerate(PARTS)
        }
        out.append(
            {
                "fraction": fraction,
                "kept": kept,
                "correct": correct,
                "skipped": skipped,
                "seconds": time.perf_counter() - started,
            }
        )
        log(
            f"  parts F={fraction:g}: kept {kept:.3f} of block FLOPs, skipped part-calls {skipped}, "
            f"overall {overall(correct, sampled['categories']):.3f}"
        )
    return out


def plot(
    path: Path, rows: list[dict[str, Any]], boot: dict[str, np.ndarray], times: list[dict[str, Any]]
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, panels = plt.subplots(1, 2 if times else 1, figsize=(11 if times else 6, 4), squeeze=False)
    quality = panels[0][0]
    full = next(r for r in rows if r["method"] == "full")
    for method, marker in zip(METHODS, "o*sDv^", strict=True):
        if not any(r["method"] == method for r in rows):
            continue  # not run (--methods): no line in the legend
        chosen = [full] + sorted((r for r in rows if r["method"] == method), key=lambda r: -r["kept"])
        xs = [r["kept"] for r in chosen]
        ys = [float(np.median(boot[key(r)])) for r in chosen]
        errors = np.array(
            [
                [y - interval(boot[key(r)])[0], interval(boot[key(r)])[1] - y]
                for r, y in zip(chosen, ys, strict=True)
            ]
        ).T
        quality.errorbar(xs, ys, yerr=errors, marker=marker, capsize=3, label=method)
    quality.set_xlabel("fraction of block-calls kept")
    quality.set_ylabel("eval overall (95% bootstrap interval)")
    quality.invert_xaxis()
    quality.legend()
    if times:
        speed = panels[0][1]
        for mode in dict.fromkeys(t["mode"] for t in times):
            line = sorted((t for t in times if t["mode"] == mode), key=lambda t: t["fraction"])
            speed.errorbar(
                [t["fraction"] for t in line], [t["ratio"] for t in line],
                yerr=np.array([[t["ratio"] - t["low"], t["high"] - t["ratio"]] for t in line]).T,
                marker="o", capsize=3, label=f"{mode} plan (denoising loop)",
            )  # fmt: skip
        speed.plot([0.4, 1.0], [0.4, 1.0], "k--", label="ideal (= fraction kept)")
        speed.set_xlabel("fraction of block-calls kept (plan)")
        speed.set_ylabel("wall time, plan / full")
        speed.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def key(row: dict[str, Any]) -> str:
    return f"{row['method']}-{row['fraction']:g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:tiny-shapes")
    parser.add_argument(
        "--work", type=Path, required=True, help="Work dir (reused: finished parts are kept)."
    )
    parser.add_argument("--per-category", type=int, default=50, help="Evaluation prompts per category (6).")
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibration-prompts", type=int, default=100)
    parser.add_argument(
        "--metric", default="cosine", help="Importance metric for plans and pruning: cosine or ablation."
    )
    parser.add_argument("--reps", type=int, default=7, help="Timing repetitions (alternated).")
    parser.add_argument("--timing-batch", type=int, default=8, help="Images per timed denoising loop.")
    parser.add_argument(
        "--big", action="store_true", help="Also time a random SANA 1.5 1.6B transformer call."
    )
    parser.add_argument("--big-preset", default="sana1.5-1.6b")
    parser.add_argument("--big-size", type=int, default=1024)
    parser.add_argument("--big-reps", type=int, default=3)
    parser.add_argument("--big-batch", type=int, default=2, help="Latents per call (2: both CFG branches).")
    parser.add_argument("--big-fractions", type=float, nargs="+", default=list(FRACTIONS))
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    parser.add_argument("--heal-steps", type=int, default=100, help="Distillation steps of the heal rows.")
    parser.add_argument("--data-size", type=int, default=4000, help="Training images of the heal rows.")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument(
        "--parts", action="store_true", help="Also plan and sample cache skipping per part (attn1/attn2/ff)."
    )
    parser.add_argument("--parts-fractions", type=float, nargs="+", default=[0.6, 0.4])
    parser.add_argument(
        "--parts-calibration", type=int, default=10, help="Calibration prompts for part changes."
    )
    parser.add_argument("--plot", type=Path, default=Path(__file__).with_name("skipping.png"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    sampled = sample_all(args, args.work)
    rows, categories = sampled["rows"], sampled["categories"]
    parts = parts_experiment(args, args.work, sampled) if args.parts else []
    results = {key(r): r["correct"] for r in rows} | {f"parts-{p['fraction']:g}": p["correct"] for p in parts}
    boot = bootstrap_overall(results, categories)
    log("timing the denoising loop")
    times = timing(args, sampled["importance"]) if args.reps else []
    big = big_timing(args) if args.big else []
    base = boot["full-1"]
    table = []
    for r in rows:
        k = key(r)
        low, high = interval(boot[k])
        loss_low, loss_high = interval(base - boot[k])
        line = {
            "method": r["method"], "target": r["fraction"], "kept": round(r["kept"], 4),
            "overall": round(overall(r["correct"], categories), 4), "low": round(low, 4), "high": round(high, 4),
            "loss_vs_full": [round(loss_low, 4), round(loss_high, 4)], "sample_seconds": round(r["seconds"], 1),
        }  # fmt: skip
        if r["method"] in PLANS:
            names = {
                "prune": "pruning", "heal": "pruning + distillation", "steps": "fewer steps",
                "identity": "identity skipping", "cache": "cache skipping",
            }  # fmt: skip
            others = {
                "forecast": ("prune", "heal", "steps", "cache", "identity"),
                "cache": ("prune", "heal", "steps", "identity"),
                "identity": ("prune", "heal", "steps"),
            }[r["method"]]
            for other in others:
                if f"{other}-{r['fraction']:g}" not in boot:
                    continue
                d_low, d_high = interval(boot[k] - boot[f"{other}-{r['fraction']:g}"])
                line[f"vs_{other}"] = [round(d_low, 4), round(d_high, 4)]
                line[f"verdict_{other}"] = beats(d_low, d_high, names[other])
            line["verdict_loss"] = (
                "loses <= 0.03"
                if loss_high <= 0.03
                else "loses > 0.03"
                if loss_low > 0.03
                else "undecided (interval spans 0.03)"
            )
        table.append(line)
    print(
        "| method | F target | block-calls kept | overall [95% CI] | loss vs full [95% CI] | sample s (one run, 0 = reused) | verdicts |"
    )
    print("|---|---|---|---|---|---|---|")
    for line, r in zip(table, rows, strict=True):
        kinds = ("loss", "prune", "heal", "steps", "cache", "identity")
        verdicts = "; ".join(line[f"verdict_{v}"] for v in kinds if f"verdict_{v}" in line)
        print(
            f"| {line['method']} | {line['target']:g} | {line['kept']:.3f} | {line['overall']:.3f} "
            f"[{line['low']:.3f}, {line['high']:.3f}] | {line['loss_vs_full'][0]:+.3f} … {line['loss_vs_full'][1]:+.3f} "
            f"| {r['seconds']:.0f} | {verdicts} |"
        )
    for plan in sampled["refused"]:
        print(f"| {plan['method']} | {plan['fraction']:g} | refused: {plan['why']} | | | | |")
    print(
        "\n| plan | keeps | denoising-loop wall, plan / full [95% CI] | ideal | within 10% of ideal speed-up |"
    )
    print("|---|---|---|---|---|")
    for t in times:
        speedup, ideal = 1 / t["ratio"], 1 / t["fraction"]
        # within 10% of the ideal speed-up 1/F: wall ratio ≤ F / 0.9, judged on the whole interval
        bound = t["fraction"] / 0.9
        within = "yes" if t["high"] <= bound else "no" if t["low"] > bound else "undecided"
        print(f"| {t['mode']} | {t['fraction']:.3f} | {t['ratio']:.3f} [{t['low']:.3f}, {t['high']:.3f}] | "
              f"{t['fraction']:.3f} | {within} ({speedup:.2f}× of {ideal:.2f}×) |")  # fmt: skip
    if big:
        print(
            f"\n| plan | {args.big_preset} blocks kept | first skipping step at {args.big_size} px, plan / full "
            "[95% CI] | ideal |"
        )
        print("|---|---|---|---|")
        for t in big:
            print(
                f"| {t['mode']} | {t['fraction']:.3f} | {t['ratio']:.3f} [{t['low']:.3f}, {t['high']:.3f}] "
                f"| {t['fraction']:.3f} |"
            )
    if parts:
        print(
            "\n| F (block FLOPs kept) | parts: skipped part-calls attn1/attn2/ff | parts overall [95% CI] "
            "| cache (whole blocks) overall | parts − cache [95% CI] |"
        )
        print("|---|---|---|---|---|")
    for part in parts:
        k, other = f"parts-{part['fraction']:g}", f"cache-{part['fraction']:g}"
        low, high = interval(boot[k])
        versus = "(no whole-block cache run at this F)"
        if other in boot:
            d_low, d_high = interval(boot[k] - boot[other])
            versus = f"{d_low:+.3f} … {d_high:+.3f}: {beats(d_low, d_high, 'whole blocks')}"
            versus = f"{overall(results[other], categories):.3f} | {versus}"
        sk = part["skipped"]
        print(
            f"| {part['kept']:.3f} | {sk['attn1']}/{sk['attn2']}/{sk['ff']} | "
            f"{overall(part['correct'], categories):.3f} [{low:.3f}, {high:.3f}] | {versus} |"
        )
    n = len(categories)
    print(
        f"\n{n} prompts ({args.per_category} per category) × {args.candidates} images, {args.steps} steps, "
        f"{args.metric} importance on {args.calibration_prompts} calibration prompts; bootstrap {RESAMPLES} resamples; "
        f"timing {args.reps} alternated reps of {args.timing_batch} images; {time.perf_counter() - started:.0f} s"
    )
    plot(args.plot, rows, boot, times)
    (args.work / f"results-{args.metric}.json").write_text(
        json.dumps(
            {
                "table": table,
                "refused": sampled["refused"],
                "timing": times,
                "big": big,
                "parts": [{k: v for k, v in p.items() if k != "correct"} for p in parts],
                "args": {k: str(v) for k, v in vars(args).items()},
            },
            indent=2,
        )
    )
    log(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
