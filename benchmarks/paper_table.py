"""The SANA 1.5 paper's claims in miniature, measured on the shipped model with error bars.

Parts (``--parts``; the library functions the CLI uses, on ``--model``, default ``builtin:tiny-shapes``):

0. **regime**: a small search for the fine-tuning settings (optimizer × lr × schedule × steps)
   at which continuing to train the base *lowers* its held-out flow-matching loss. It writes
   ``paper_regime.json``, which every "+N steps" row of the other parts reads; it is run on its own
   (``--parts regime``, about 10 minutes on 2 idle cores) and is not part of the table's 90 minutes.
1. **growth**: N → 2N blocks (partial-retain, partial-retain keeping N − 2 source blocks, cyclic,
   block-copy) + N steps, against the base + N steps and 2N blocks from scratch at equal total compute.
2. **pruning**: the grown model (partial-retain) pruned to 12/10/8 blocks by importance, tail and
   uniform; before and after 100 steps (and distilled from the grown model when ``finetune --teacher``
   exists), against the 8-block base.
3. **importance**: per-block profiles of the base and the grown model, cosine against ablation.
4. **scaling**: summarised from ``benchmarks/inference_scaling.py``'s results.json, never recomputed.
5. **optimizers**: AdamW, CAME, CAME-8bit, each at its own tuned lr; optimizer state per parameter.

Evaluation: the whole shapes evaluation suite (300 prompts) × 4 images (GenEval's protocol) at 10
sampler steps (``--sample-steps``; the time budget), the same seeds for every model; overall with a
95% bootstrap interval over prompts, every comparison a paired bootstrap of the difference, verdicts
computed from those intervals (``paper/stats.py``).

Budget (2 idle cores, ``--jobs 2``): the plan printed at start estimates every task from its work
(training block-samples, sampled block-image-steps, held-out forwards) at the rates in
``paper/runner.py`` (replaced by rates measured on tasks already finished in ``--work``) and
simulates the two workers: ~138 CPU-min, ~73 min wall. Evaluation is ~60% of it (25 evals × 1200
images), the 16-block from-scratch run at equal compute ~33 CPU-min, the other fine-tunes ~40.

Every task's result is cached in ``--work/results``: an interrupted run resumes, and a rerun only
rewrites the table. Tasks run on ``--jobs`` single-threaded worker processes. The plan and its time
estimate are printed first.

    python benchmarks/paper_table.py --parts regime --work W                 # the regime search
    python benchmarks/paper_table.py --work W --scaling-results IS/results.json   # the table, ~75 min
    OMP_NUM_THREADS=1 python benchmarks/paper_table.py --quick --work /tmp/pq    # a check, ~3 min idle

``--quick`` shrinks every count, runs its own regime search, and writes under ``--work`` only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from paper import parts as P  # noqa: E402
from paper import runner, work  # noqa: E402

HERE = Path(__file__).parent
TABLE_PARTS = ("growth", "pruning", "importance", "scaling", "optimizers")
ALL_PARTS = ("regime", *TABLE_PARTS)
#: The shipped model's build script (examples/build_tiny_shapes.sh) trains under torchrun with one
#: process per core and a per-process batch of 64 / processes: a global batch of 64.
BUILD_GLOBAL_BATCH = 64


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny-shapes", help="The trained base pipeline.")
    parser.add_argument(
        "--work", type=Path, default=Path("paper-table-work"), help="Artifacts and the result cache."
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="Markdown table (default benchmarks/paper_table.md)."
    )
    parser.add_argument(
        "--plots", type=Path, default=None, help="Folder of the paper_*.png plots (default benchmarks/)."
    )
    parser.add_argument(
        "--regime",
        type=Path,
        default=None,
        help="The regime file to read (default benchmarks/paper_regime.json; --parts regime writes it).",
    )
    parser.add_argument(
        "--parts",
        default=None,
        help=f"Comma-separated, of: {', '.join(ALL_PARTS)} "
        f"(default: {', '.join(TABLE_PARTS)}; with --quick all).",
    )
    parser.add_argument(
        "--base-global-batch",
        type=int,
        default=BUILD_GLOBAL_BATCH,
        help="The base's global training batch (provenance has the per-process one).",
    )
    parser.add_argument("--jobs", type=int, default=2, help="Worker processes (one torch thread each).")
    parser.add_argument("--seed", type=int, default=0)
    # 10, not sample's 20: the table samples ~25 models × 1200 images, and at 20 steps the run takes
    # ~105 min; at 10 it plans ~73. Quality cost, measured on the base (60 prompts × 4 images): overall
    # 0.579 at 10 steps vs 0.612 at 20, paired difference −0.033 [−0.067, −0.004]. Every comparison
    # is at the same steps, so it moves levels, not verdicts' directions.
    parser.add_argument("--sample-steps", type=int, default=10, help="Flow-DPM steps of every eval sample.")
    parser.add_argument("--guidance", type=float, default=4.5)
    parser.add_argument(
        "--scaling-results", type=Path, default=None, help="inference_scaling.py's results.json."
    )
    parser.add_argument(
        "--plan-only", action="store_true", help="Print the plan and its time estimate, then stop."
    )
    parser.add_argument(
        "--quick", action="store_true", help="A few steps and prompts: checks the script only."
    )
    args = parser.parse_args(argv)
    chosen = args.parts.split(",") if args.parts else list(ALL_PARTS if args.quick else TABLE_PARTS)
    args.parts = tuple(p.strip() for p in chosen if p.strip())
    unknown = sorted(set(args.parts) - set(ALL_PARTS))
    if unknown or not args.parts:
        parser.error(
            f"--parts: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(ALL_PARTS)}"
        )
    if args.jobs < 1:
        parser.error("--jobs must be ≥ 1")
    root = args.work if args.quick else HERE
    regime_only = not set(args.parts) & set(TABLE_PARTS)
    args.out = args.out or root / ("paper_regime.md" if regime_only else "paper_table.md")
    args.plots = args.plots or root
    args.regime_out = root / "paper_regime.json"
    args.regime = args.regime or args.regime_out
    if "regime" not in args.parts and not args.regime.is_file():
        parser.error(f"{args.regime} does not exist: run --parts regime first (or pass --regime)")
    return args


def pretraining(model: Any, depth: int, global_batch: int) -> dict[str, Any]:
    """The base's training compute and recipe, from its provenance (``sanatool.json``).

    Provenance records the per-process batch, not the number of processes: ``global_batch`` says it.
    """
    chain = json.loads((model.path / "sanatool.json").read_text()).get("chain", [])
    runs = [e["args"] for e in chain if e.get("command") in ("train", "finetune")]
    if not runs:
        raise SystemExit(f"{model.path}: no training in its provenance; compute cannot be matched")
    steps = sum(int(a["steps"]) for a in runs)
    last = runs[-1]
    recipe = {"optimizer": last["optimizer"], "lr": last["lr"], "schedule": last["lr_schedule"],
              "ema": last.get("ema_decay"), "warmup": last.get("warmup_steps")}  # fmt: skip
    note = (f"{steps} steps × global batch {global_batch} × {depth} blocks (provenance records batch "
            f"{last['batch_size']} per process; --base-global-batch {global_batch})")  # fmt: skip
    return {"steps": steps, "block_samples": steps * global_batch * depth, "recipe": recipe, "note": note}


def distillation_available() -> bool:
    """Whether this sanatool has ``finetune --teacher`` (the fine-tuning issue's distillation)."""
    from importlib.util import find_spec

    return find_spec("sanatool.training.distill") is not None


def make_ctx(args: argparse.Namespace) -> tuple[P.Ctx, work.Env, dict[str, int]]:
    from sanatool.io.modeldir import open_model_dir

    base = open_model_dir(args.model)
    depth = int(base.transformer.num_layers)
    q = args.quick
    sizes = {"data": 256 if q else 12000, "heldout": 32 if q else 256, "draws": 1 if q else 4}
    e = work.Env(work=str(args.work.resolve()), base=args.model, seed=args.seed, batch_size=8 if q else 32,
                 warmup=1 if q else 10, sample_steps=4 if q else args.sample_steps, guidance=args.guidance,
                 images_per_prompt=4, per_category=1 if q else None)  # fmt: skip
    prompts = len(work.eval_prompts(e.per_category))
    ctx = P.Ctx(
        work=Path(e.work), base=args.model, depth=depth, batch_size=e.batch_size,
        pretrain=pretraining(base, depth, args.base_global_batch), regime_file=args.regime, regime_out=args.regime_out, parts=args.parts,
        regime_steps=6 if q else 200, regime_every=2 if q else 50, finetune_steps=4 if q else 100,
        scratch_cap=12 if q else None, calibration_prompts=4 if q else 100, ablation_prompts=2 if q else 24,
        eval_images=prompts * e.images_per_prompt, sample_steps=e.sample_steps,
        heldout_items=sizes["heldout"] * sizes["draws"], distill=distillation_available(), plots=args.plots,
        scaling_results=args.scaling_results,
    )  # fmt: skip
    return ctx, e, sizes


def state_bytes_per_param(e: work.Env, lr: float) -> dict[str, tuple[float, float]]:
    """Per optimizer: (B/param measured on the base after one step, exact estimate for sana1.5-4.8b)."""
    import torch

    from sanatool.arch import preset_config
    from sanatool.io.modeldir import open_model_dir
    from sanatool.optim import build_optimizer, estimate_state_bytes, optimizer_state_bytes
    from sanatool.surgery.initialize import build_meta_transformer
    from sanatool.training.model_io import load_transformer

    big = [tuple(p.shape) for p in build_meta_transformer(preset_config("sana1.5-4.8b")).parameters()]
    big_params = sum(math.prod(shape) for shape in big)
    h = torch.load(e.heldout_file)
    out = {}
    for name in P.OPTIMIZERS:
        model = load_transformer(open_model_dir(e.base).transformer.path)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = build_optimizer(name, params, lr)
        pred = model(
            h["noise"][:4],
            encoder_hidden_states=h["embeds"][:4],
            timestep=h["sigmas"][:4] * h["time_scale"],
            encoder_attention_mask=h["mask"][:4],
            return_dict=False,
        )[0]  # any input: only sizes matter
        pred.float().pow(2).mean().backward()
        optimizer.step()
        measured = optimizer_state_bytes(optimizer) / sum(p.numel() for p in params)
        out[name] = (measured, estimate_state_bytes(name, big) / big_params)
    return out


def print_plan(ctx: P.Ctx, part_tasks: list[Any], results: runner.Results, jobs: int) -> None:
    tasks = runner.all_tasks(part_tasks, results)
    per_part, total, wall = runner.plan(tasks, results, jobs)
    rates = results.measured_rates()
    runner.log(f"plan: {sum(1 for t in tasks if t not in results)} tasks to run, {len(results)} cached; rates "
               + ", ".join(f"{k} {v:.0f}/CPU-s" for k, v in rates.items()))  # fmt: skip
    for part, seconds in per_part.items():
        runner.log(f"  {part:<11} {seconds / 60:6.1f} CPU-min")
    runner.log(
        f"  total       {total / 60:6.1f} CPU-min → about {wall / 60:.0f} min on {jobs} worker(s)"
        + ("" if ctx.regime(results) is not None else " (so far: later tasks wait for the regime search)")
    )


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    started = time.perf_counter()
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    ctx, e, sizes = make_ctx(args)
    results = runner.Results(ctx.work / "results")
    builders = {"regime": P.regime_tasks, "growth": P.growth_tasks, "pruning": P.pruning_tasks,
                "importance": P.importance_tasks, "optimizers": P.optimizer_tasks}  # fmt: skip
    part_tasks = [(lambda r, f=builders[p]: f(ctx, r)) for p in args.parts if p in builders]
    print_plan(ctx, part_tasks, results, args.jobs)
    if args.plan_only:
        return
    work.prepare(e, sizes["data"], sizes["heldout"], sizes["draws"])
    failed = runner.run(part_tasks, results, args.jobs, work.execute, work.init_worker, (work.env_dict(e), 1))
    md: list[str] = []
    if "regime" in args.parts:
        md += P.regime_report(ctx, results)
    if "growth" in args.parts:
        md += P.growth_report(ctx, results)
    if "pruning" in args.parts:
        md += P.pruning_report(ctx, results)
    if "importance" in args.parts:
        md += P.importance_report(ctx, results)
    if "scaling" in args.parts:
        md += P.scaling_report(ctx)
    if "optimizers" in args.parts:
        regime = ctx.regime(results)
        lr = regime["lrs"]["came8bit"] if regime else 1e-5
        md += P.optimizer_report(ctx, results, lambda: state_bytes_per_param(e, lr))
    write_table(args, ctx, e, md, failed, results, time.perf_counter() - started)


def write_table(args: argparse.Namespace, ctx: P.Ctx, e: work.Env, md: list[str], failed: list[str],
                results: runner.Results, wall: float) -> None:  # fmt: skip
    from sanatool.io.modeldir import open_model_dir

    base = open_model_dir(args.model)
    cpu = sum(r.get("cpu_s", 0.0) for r in results.values())
    command = " ".join(["python benchmarks/paper_table.py", *(sys.argv[1:] if sys.argv[1:] else [])])
    head = [
        "# SANA 1.5's claims in miniature (shapes world)", "",
        f"`{command}` ({dt.date.today().isoformat()}"
        f"{'; --quick: a check of the script, not a result' if args.quick else ''}). Base `{args.model}` "
        f"(fingerprint {base.fingerprint()}, {ctx.depth} blocks). Eval: {ctx.eval_images // e.images_per_prompt} "
        f"evaluation-suite prompts × {e.images_per_prompt} images, {e.sample_steps} Flow-DPM steps, guidance "
        f"{e.guidance:g}, seed {e.seed}, the same seeds for every model; overall = mean of the six categories. "
        "Intervals are 95% bootstrap intervals (2000 resamples) over prompts (eval) or held-out images (loss); "
        "every comparison is a paired bootstrap of the difference. Verdict: **yes** when the interval of the "
        "difference lies wholly on the claimed side, **no** when wholly on the other, else **not resolved**. "
        f"This run: {wall / 60:.0f} min wall; the cached tasks behind the table took {cpu / 60:.0f} CPU-min on "
        f"{args.jobs} single-threaded worker(s).", "",
    ]  # fmt: skip
    if failed:
        head += [f"**Failed tasks** (rows that need them are left out): {', '.join(failed)}.", ""]
    if ctx.summary:
        head += ["## Summary", "", *P.table(["part", "claim", "paper", "ours (measured here)", "reproduced?"],
                                            ctx.summary), ""]  # fmt: skip
    per_part: dict[str, list[float]] = {}
    for r in results.values():
        per_part.setdefault(r.get("part", "?"), []).append(r.get("cpu_s", 0.0))
    timing = ["## Cost per part", "", *P.table(["part", "tasks", "CPU min"], [[p, str(len(v)), f"{sum(v) / 60:.1f}"]
              for p, v in per_part.items()]), ""]  # fmt: skip
    text = "\n".join(head + md + timing)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    runner.log(f"table: {args.out}; plots: {args.plots}/paper_*.png; artifacts: {args.work}")


if __name__ == "__main__":
    main()
