"""Healing a pruned model: plain fine-tuning vs LoRA vs distillation from the unpruned model (issue 18).

On the shapes world: ``--model`` (default ``builtin:tiny-shapes``, 8 blocks) is scored by block
importance (cosine, the calibration prompts) and pruned to half its depth by importance (or to
``--keep-blocks``); then each run of ``--runs`` fine-tunes the pruned model for ``--steps`` steps on
the base's own training data (the same batches, noise and timesteps for every run: one seed):

- ``plain``: a full fine-tune with flow matching (what ``finetune`` did before);
- ``loraR``: LoRA of rank R on the default targets (``--lora-rank R --merge``), the adapters merged
  into a whole model for sampling;
- ``distill``: a full fine-tune with ``--teacher`` = the unpruned model (pure distillation, w = 1);
- ``loraR+distill``: both; ``distillW`` (e.g. ``distill0.5``) mixes in flow matching with ``--distill-weight W``;
- ``+cdP`` (e.g. ``distill+cd0.3``): caption dropout P instead of ``finetune``'s 0.1, so the null-caption
  branch that guidance extrapolates from gets more of the training; ``+tsS`` (e.g. ``distill+tsuniform``):
  ``--weighting-scheme S`` (timestep density and weighting) instead of logit-normal; ``+bN``: batch N;
  ``+stepsN``: N steps instead of ``--steps``; ``+cos``: ``--lr-schedule cosine`` (to 10% at the last step);
- ``distill+trajN``, ``distill+daggerNrK``, ``+mixP``: distillation on the states the sampler visits (the
  teacher's trajectories on N training captions; the student's, on N fresh captions every K steps, labelled
  by the teacher; a fraction P of data + noise states kept): see ``distill_states.py``.

A run is ``METHOD[@LR]`` (default lr: ``--lr`` for full fine-tunes, ``--lora-lr`` for LoRA), so a
learning-rate sweep is a list of runs, every one of which lands in the table (nothing is
selected away). Every model samples ``--candidates`` images (default 1) per prompt of the evaluation suite
(``--per-category`` × 6 prompts, the same seeds everywhere) and is scored by the shapes evaluator;
intervals are 95% bootstrap intervals over prompts (stratified by category, 2000 resamples, paired
across models: see ``skipping.py``), and "% of full" is the ratio of overall scores with its paired
interval.

    OMP_NUM_THREADS=1 python benchmarks/distill.py --work /tmp/distill
    OMP_NUM_THREADS=1 python benchmarks/distill.py --work /tmp/distill --runs plain,distill@3e-5 --quick

Writes ``WORK/results.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from skipping import bootstrap_overall, correct_matrix, interval, overall, suite_subset  # noqa: E402

DEFAULT_RUNS = "plain,lora8,lora16,distill,lora16+distill"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_run(spec: str, args: argparse.Namespace) -> dict[str, Any]:
    """``METHOD[@LR]`` → the run's name, LoRA rank (or None), teacher flag and lr."""
    method, _, lr = spec.partition("@")
    parts = method.split("+")
    rank, weight, dropout, timesteps, batch, steps = None, None, None, None, None, None
    states: dict[str, Any] = {}
    schedule = None
    for part in parts:
        if part == "cos":
            schedule = "cosine"
        elif part.startswith("traj") and part[4:].isdigit():
            states["teacher_captions"] = int(part[4:])
        elif part.startswith("dagger") and "r" in part:
            captions, _, every = part[6:].partition("r")
            states["student_captions"], states["refresh"] = int(captions), int(every)
        elif part.startswith("mix"):
            states["data_fraction"] = float(part[3:])
        elif part.startswith("steps") and part[5:].isdigit():
            steps = int(part[5:])
        elif part.startswith("cd"):
            dropout = float(part[2:])
        elif part.startswith("ts"):
            timesteps = part[2:]
        elif part.startswith("b") and part[1:].isdigit():
            batch = int(part[1:])
        elif part.startswith("lora"):
            rank = int(part[4:])
        elif part.startswith("distill"):
            weight = float(part[7:] or 1.0)
        elif part != "plain":
            raise SystemExit(
                f"--runs: unknown method {method!r} (plain, loraR, distill[W], joined by + with loraR, cdP, tsS, "
                "bN, stepsN, cos, trajN, daggerNrK, mixP)"
            )
    if states and weight is None:
        raise SystemExit(
            f"--runs: {method!r}: trajN, daggerNrK and mixP are states to distil on; add distill"
        )
    default_lr = args.lora_lr if rank is not None else args.lr
    return {
        "name": spec,
        "method": method,
        "rank": rank,
        "teacher": weight is not None,
        "distill_weight": weight,
        "caption_dropout": dropout,
        "weighting_scheme": timesteps,
        "batch_size": batch or args.batch_size,
        "steps": steps or args.steps,
        "lr_schedule": schedule,
        "states": states or None,
        "lr": float(lr) if lr else default_lr,
    }


def prepare(args: argparse.Namespace, work: Path) -> tuple[Any, Path, Path]:
    """The base, its training data, and the base pruned by importance (each made once per work dir)."""
    import sanatool
    from sanatool.inference.importance import importance_to_file
    from sanatool.io.modeldir import as_model_dir

    base = as_model_dir(args.model)
    data = shapes_data(work, args.data_size)
    importance = work / "importance.json"
    if not importance.exists():
        log(f"importance: {args.calibration_prompts} calibration prompts × {args.sample_steps} steps")
        importance_to_file(
            base, importance, force=True, num_prompts=args.calibration_prompts, steps=args.sample_steps,
            guidance=args.guidance, seed=args.seed, batch_size=16, device="cpu",
        )  # fmt: skip
    if args.keep_blocks:
        # Another choice of blocks than importance's, to ask whether importance picks the best to heal.
        pruned = work / "models" / f"pruned-{args.keep_blocks.replace(',', '_')}"
        if not pruned.exists():
            sanatool.prune(base, pruned, keep_blocks=args.keep_blocks)
        return base, data, pruned
    keep = max(1, base.transformer.num_layers // 2)
    pruned = work / "models" / f"pruned-{keep}"
    if not pruned.exists():
        sanatool.prune(base, pruned, keep=keep, importance=importance)
    return base, data, pruned


def shapes_data(work: Path, size: int) -> Path:
    """The base's own training data (shapes, seed 0) under ``WORK/data``, written once per work dir."""
    from sanatool.shapes.dataset import write_shapes_dataset

    data = work / "data"
    if not (data / "metadata.jsonl").exists():
        write_shapes_dataset(data, size, seed=0, force=True)
    return data


def finetune(
    args: argparse.Namespace, run: dict[str, Any], work: Path, base: Any, data: Path, pruned: Path,
    cache: Path | None = None,
):  # fmt: skip
    """Fine-tune the pruned model as ``run`` says; returns (output dir, per-step records, seconds).

    ``cache``: the latent cache's dir (default ``WORK/cache``), for callers that heal several models.
    """
    from sanatool.training import TrainOptions, run_training
    from sanatool.training.logs import LOSS_LOG, read_log

    out = work / "models" / run["name"].replace("+", "_").replace("@", "_lr")
    if not (out / LOSS_LOG).exists():
        opts = TrainOptions(
            data=data, out=out, steps=run["steps"], source=str(pruned), optimizer=args.optimizer,
            lr=run["lr"], batch_size=run["batch_size"], seed=args.seed, cache_dir=cache or work / "cache",
            warmup_steps=min(args.warmup, run["steps"] - 1), precision="fp32", force=True,
            teacher=base.path if run["teacher"] else None, distill_weight=run["distill_weight"],
        )  # fmt: skip
        if run["rank"] is not None:
            opts.lora_rank, opts.merge = run["rank"], True
        if run["caption_dropout"] is not None:
            opts.caption_dropout = run["caption_dropout"]
        if run["weighting_scheme"] is not None:
            opts.weighting_scheme = run["weighting_scheme"]
        if run["lr_schedule"] is not None:
            opts.lr_schedule = run["lr_schedule"]
        log(f"finetune {run['name']}: {run['steps']} steps, {args.optimizer}, lr {run['lr']:g}")
        started = time.perf_counter()
        report: dict[str, Any] = {}
        if run["states"]:
            from distill_states import states_trainer, trainer_class

            cls = states_trainer(run["states"], base.path, data, args.sample_steps, args.guidance, report)
            with trainer_class(cls):
                run_training(opts)
        else:
            run_training(opts)
        (out / "seconds.txt").write_text(f"{time.perf_counter() - started:.1f}\n")
        if report:
            (out / "states.json").write_text(json.dumps(report) + "\n")
        if run["rank"] is not None:
            check_lora_only(pruned, out)
    return out, read_log(out / LOSS_LOG), float((out / "seconds.txt").read_text())


def check_lora_only(source: Path, out: Path) -> None:
    """A merged LoRA fine-tune changes the targeted projections only; stop if everything moved (no LoRA here)."""
    from safetensors.torch import load_file

    before = load_file(str(source / "transformer" / "diffusion_pytorch_model.safetensors"))
    after = load_file(str(out / "transformer" / "diffusion_pytorch_model.safetensors"))
    frozen = "transformer_blocks.0.ff.conv_point.weight"
    if not before[frozen].to(after[frozen].dtype).equal(after[frozen]):
        raise SystemExit(
            f"{out}: {frozen} changed, so this tree's finetune does not train LoRA adapters only"
        )


def sample_and_score(args: argparse.Namespace, model: Any, name: str, prompts: list[Any], work: Path) -> Any:
    import sanatool

    # One image per prompt keeps its old dir name, so earlier work dirs are reused as they are.
    suffix = "" if args.candidates == 1 else f"-x{args.candidates}"
    out = work / "samples" / (name.replace("+", "_").replace("@", "_lr") + suffix)
    if not (out / "manifest.jsonl").exists():
        started = time.perf_counter()
        sanatool.sample(
            model, prompts, out, candidates=args.candidates, seed=args.seed, steps=args.sample_steps,
            guidance=args.guidance, device="cpu", dtype="fp32", batch_size=64, force=True,
        )  # fmt: skip
        log(f"  sampled {name} ({time.perf_counter() - started:.0f} s)")
    return correct_matrix(out, len(prompts), args.candidates)


def build_parser() -> argparse.ArgumentParser:
    """The options; ``build_parser().parse_args([])`` is the default recipe (``skipping.py``'s heal rows use it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("distill-work"))
    parser.add_argument("--model", default="builtin:tiny-shapes")
    parser.add_argument("--runs", default=DEFAULT_RUNS, help="Comma-separated METHOD[@LR] runs.")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--optimizer", default="came8bit")
    parser.add_argument(
        "--lr", type=float, default=1e-5, help="Full fine-tunes' lr (finetune's CAME default)."
    )
    parser.add_argument("--lora-lr", type=float, default=1e-4, help="LoRA runs' lr.")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument(
        "--data-size", type=int, default=4000, help="Training images (seed 0: the base's data)."
    )
    parser.add_argument("--per-category", type=int, default=50, help="Evaluation prompts per category (6).")
    parser.add_argument(
        "--candidates",
        type=int,
        default=1,
        help="Images per evaluation prompt (seeds 0…N−1, as GenEval's 4).",
    )
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.5)
    parser.add_argument("--calibration-prompts", type=int, default=100)
    parser.add_argument(
        "--keep-blocks",
        help="Prune to these blocks (e.g. 0,1,2,7) instead of half the depth by importance.",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="A few steps and prompts: checks the script only."
    )
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.quick:
        args.steps, args.data_size, args.per_category, args.sample_steps, args.calibration_prompts = (
            3,
            64,
            2,
            4,
            4,
        )
    runs = [parse_run(spec.strip(), args) for spec in args.runs.split(",") if spec.strip()]
    work = args.work
    for sub in ("models", "samples"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    base, data, pruned = prepare(args, work)
    prompts = suite_subset(args.per_category)
    categories = [p.category for p in prompts]
    correct = {"full": sample_and_score(args, base, "full", prompts, work)}
    correct["pruned"] = sample_and_score(args, pruned, "pruned", prompts, work)
    trained: dict[str, dict[str, Any]] = {}
    for run in runs:
        out, records, seconds = finetune(args, run, work, base, data, pruned)
        correct[run["name"]] = sample_and_score(args, out, run["name"], prompts, work)
        tail = records[-10:]
        states_report = out / "states.json"
        trained[run["name"]] = {
            **run,
            **(json.loads(states_report.read_text()) if states_report.exists() else {}),
            "seconds": seconds,
            "loss_last10": sum(r["loss"] for r in tail) / len(tail),
            # A run on sampler states alone has no flow-matching term to report.
            "flow_loss_last10": None
            if run["states"] and "flow_loss" not in tail[-1]
            else sum(r.get("flow_loss", r["loss"]) for r in tail) / len(tail),
        }
    boot = bootstrap_overall(correct, categories)
    full = overall(correct["full"], categories)
    rows = []
    for name, m in correct.items():
        low, high = interval(boot[name])
        ratio_low, ratio_high = interval(boot[name] / boot["full"])
        info = trained.get(name, {})
        versus = interval(boot[name] - boot["plain"]) if "plain" in boot and name != "plain" else None
        # Every variant of distillation against plain distillation, paired over the same resamples.
        over = interval(boot[name] - boot["distill"]) if "distill" in boot and name != "distill" else None
        rows.append({
            "run": name, "lr": info.get("lr"), "overall": round(overall(m, categories), 4),
            "low": round(low, 4), "high": round(high, 4), "of_full": round(overall(m, categories) / full, 4),
            "of_full_low": round(ratio_low, 4), "of_full_high": round(ratio_high, 4),
            "loss_last10": info.get("loss_last10"), "flow_loss_last10": info.get("flow_loss_last10"),
            "train_seconds": info.get("seconds"), "steps": info.get("steps"),
            "teacher_forwards": info.get("teacher_forwards"),
            "student_sampling_forwards": info.get("student_sampling_forwards"),
            "vs_plain": None if versus is None else [round(versus[0], 4), round(versus[1], 4)],
            "vs_distill": None if over is None else [round(over[0], 4), round(over[1], 4)],
        })  # fmt: skip
    kept = json.loads((pruned / "sanatool.json").read_text())["chain"][-1]["args"].get("kept")
    result = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "kept_blocks": kept,
        "prompts": len(prompts),
        "rows": rows,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    (work / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"pruned {base.transformer.num_layers}→{len(kept or [])} blocks by importance (kept {kept}); "
        f"{args.steps} steps each, batch {args.batch_size}, {args.optimizer}, seed {args.seed}; eval: "
        f"{len(prompts)} prompts, {args.candidates} image(s) each, {args.sample_steps} steps, guidance {args.guidance}"
    )
    print("")
    print(
        "| run | lr | eval overall [95% CI] | % of full [95% CI] | − plain [95% CI] | − distill [95% CI] "
        "| train loss (last 10) | flow loss (last 10) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        loss = "—" if r["loss_last10"] is None else f"{r['loss_last10']:.4f}"
        flow = "—" if r["flow_loss_last10"] is None else f"{r['flow_loss_last10']:.4f}"
        lr = "—" if r["lr"] is None else f"{r['lr']:g}"
        versus, over = (
            "—" if r[key] is None else f"[{r[key][0]:+.3f}, {r[key][1]:+.3f}]"
            for key in ("vs_plain", "vs_distill")
        )
        print(
            f"| {r['run']} | {lr} | {r['overall']:.3f} "
            f"[{r['low']:.3f}, {r['high']:.3f}] | {r['of_full']:.0%} [{r['of_full_low']:.0%}, {r['of_full_high']:.0%}] "
            f"| {versus} | {over} | {loss} | {flow} |"
        )
    log(f"done in {result['wall_seconds']:.0f} s; {work / 'results.json'}")


if __name__ == "__main__":
    main()
