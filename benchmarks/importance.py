"""Block importance: the cost of the cosine hooks, and memory that stays flat in depth.

Speed: the same calibration sampling (tiny pipeline, same prompts, seeds, steps, batch) with
and without the on-the-fly cosine hooks, alternating runs on one loaded pipeline, median of
``--reps`` in process CPU time (one torch thread by default, so that other jobs on a shared
machine slow the wall clock but not the measurement); plus ``compute_importance`` end to end (pipeline load included) against
load + sampling. The tiny model (128 wide) is the worst case for the hooks: their work grows
with width, a block's with width squared.

Memory: in a fresh process per row, a random transformer of each depth (tiny width, 64×64
images = 256 tokens, batch 8 with CFG) is scored with the hooks, and, as the contrast, with
naive hooks that keep every block's input and output. Peak RSS growth during scoring should
stay flat in depth for sanatool and grow with depth × steps for the naive way.

    python benchmarks/importance.py [--prompts 16] [--steps 20] [--reps 3] [--depths 4 8 16 32] [--threads 1] [--only speed|memory]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 2**20


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(model: str, depth: int, variant: str, steps: int, threads: int) -> None:
    """One memory row, run in its own process: prints weights bytes, peak RSS before and after scoring."""
    import torch
    from diffusers import SanaTransformer2DModel

    from sanatool.arch import preset_config
    from sanatool.inference.importance import CosineHooks
    from sanatool.inference.pipeline import load_pipeline
    from sanatool.inference.sampler import PromptEncoder, denoise, image_seed, initial_latents

    torch.set_num_threads(threads)
    pipe = load_pipeline(model, "cpu", "fp32")
    config = {k: v for k, v in preset_config("tiny").items() if not k.startswith("_")}
    torch.manual_seed(0)
    pipe.transformer = SanaTransformer2DModel(**{**config, "num_layers": depth}).eval()
    weights = sum(p.numel() * p.element_size() for p in pipe.transformer.parameters())
    encoder = PromptEncoder(pipe, None, "cpu")
    prompts = [f"a red circle and {n} blue squares" for n in ("one", "two", "three", "four")] * 2
    embeds, mask = encoder.conditional(prompts)
    negative = encoder.unconditional(len(prompts))
    noise = initial_latents(pipe, [image_seed(0, i, 0) for i in range(len(prompts))], 64, 64, "cpu")
    # Warm-up: the same sampling without hooks, so the baseline peak holds every ordinary transient.
    denoise(pipe, noise, embeds, mask, negative, steps, 4.5)
    before = _peak_rss()
    blocks = pipe.transformer.transformer_blocks
    if variant == "hooks":
        with CosineHooks(blocks, steps, "cpu") as hooks:
            denoise(pipe, noise, embeds, mask, negative, steps, 4.5, before_step=hooks.set_step)
    else:
        kept = []
        handles = [
            b.register_forward_hook(lambda m, a, o: kept.append((a[0].clone(), o.clone()))) for b in blocks
        ]
        denoise(pipe, noise, embeds, mask, negative, steps, 4.5)
        for handle in handles:
            handle.remove()
    print("ROW", weights, before, _peak_rss())


def speed(args: argparse.Namespace, model: Path) -> None:
    import torch

    from sanatool.inference.importance import CosineHooks, compute_importance
    from sanatool.inference.pipeline import load_pipeline
    from sanatool.inference.sampler import PromptEncoder, denoise, generate, image_seed, initial_latents
    from sanatool.shapes import calibration_prompts

    pipe = load_pipeline(model, "cpu", "fp32")
    prompts = [item.prompt for item in calibration_prompts()[: args.prompts]]
    seeds = [image_seed(0, p, 0) for p in range(len(prompts))]

    def sampling(with_hooks: bool) -> None:
        encoder = PromptEncoder(pipe, None, "cpu")
        hooks = CosineHooks(pipe.transformer.transformer_blocks, args.steps, "cpu")
        with hooks if with_hooks else contextlib.nullcontext():
            for start in range(0, len(prompts), args.batch):
                batch = prompts[start : start + args.batch]
                embeds, mask = encoder.conditional(batch)
                noise = initial_latents(pipe, seeds[start : start + args.batch], 32, 32, "cpu")
                negative = encoder.unconditional(len(batch))
                denoise(pipe, noise, embeds, mask, negative, args.steps, 4.5, before_step=hooks.set_step)

    def end_to_end_importance() -> None:
        compute_importance(
            model, prompts, steps=args.steps, batch_size=args.batch, device="cpu", dtype="fp32", size=(32, 32)
        )

    def end_to_end_sampling() -> None:
        fresh = load_pipeline(model, "cpu", "fp32")
        generate(
            fresh,
            prompts,
            seeds,
            steps=args.steps,
            batch_size=args.batch,
            instruction=None,
            decode_images=False,
        )

    runs = {
        "plain": lambda: sampling(False),
        "hooks": lambda: sampling(True),
        "load+sampling": end_to_end_sampling,
        "compute_importance": end_to_end_importance,
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    sampling(True)  # warm-up
    for _ in range(args.reps):
        for name, fn in runs.items():
            start = time.process_time()
            fn()
            times[name].append(time.process_time() - start)
    med = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"\nSpeed: tiny pipeline (8 blocks × 128), {len(prompts)} shapes calibration prompts, {args.steps} steps, "
        f"batch {args.batch} (×2 CFG), 32×32, torch threads {torch.get_num_threads()}, CPU time, median of {args.reps}\n"
    )
    print("| run | CPU seconds | ÷ baseline | overhead |")
    print("|---|---|---|---|")
    for name, base, label in (
        ("plain", "plain", "sampling loop, no hooks (baseline)"),
        ("hooks", "plain", "same loop with cosine hooks"),
        ("load+sampling", "load+sampling", "load + `generate`, no decode (baseline)"),
        ("compute_importance", "load+sampling", "`compute_importance(metric='cosine')`"),
    ):
        ratio = med[name] / med[base]
        print(f"| {label} | {med[name]:.2f} | {ratio:.3f} | {100 * (ratio - 1):+.1f}% |")


def memory(args: argparse.Namespace, model: Path) -> None:
    print(
        f"\nMemory: random transformers 128 wide, 64×64 images (256 tokens), batch 8 ×2 CFG, "
        f"{args.mem_steps} steps; one fresh process per cell\n"
    )
    print(
        "| depth | weights MiB | peak RSS MiB (hooks) | growth while scoring, hooks MiB | growth, naive keep-all MiB |"
    )
    print("|---|---|---|---|---|")
    for depth in args.depths:
        cells = {}
        for variant in ("hooks", "naive"):
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    str(model),
                    str(depth),
                    variant,
                    str(args.mem_steps),
                    str(args.threads),
                ],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                raise SystemExit(proc.stderr)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("ROW ")][-1]
            cells[variant] = [int(v) for v in line.split()[1:]]
        weights, before, after = cells["hooks"]
        naive_growth = cells["naive"][2] - cells["naive"][1]
        print(
            f"| {depth} | {weights / MIB:.1f} | {after / MIB:.0f} | {(after - before) / MIB:.1f} | "
            f"{naive_growth / MIB:.1f} |"
        )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        model, depth, variant, steps, threads = sys.argv[2:7]
        child(model, int(depth), variant, int(steps), int(threads))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--depths", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--mem-steps", type=int, default=4)
    parser.add_argument("--only", choices=("speed", "memory"), default=None, help="Run one half only.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default).")
    args = parser.parse_args()

    import torch

    from sanatool.surgery.initialize import init_model

    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    model = init_model("tiny", Path(tempfile.mkdtemp(prefix="sanatool-bench-importance-")) / "tiny", seed=0)
    if args.only != "memory":
        speed(args, model)
    if args.only != "speed":
        memory(args, model)


if __name__ == "__main__":
    main()
