"""Sampling throughput: sanatool's sampler vs diffusers' ``SanaPipeline.__call__`` on the same pipeline.

Both draw the same images (same prompts, one seeded CPU generator per image, same steps,
guidance, batch size) from one loaded tiny pipeline; the runs alternate so that load on a
shared machine hits both alike, and each row reports the median of ``--reps`` runs in process
CPU time (one torch thread by default, so other jobs slow the wall clock, not the measurement).
``sample_to_dir`` adds what the command does on top (pipeline load, PNG files, manifest, grid).

    python benchmarks/sampling.py [--images 32] [--batch 8] [--steps 20] [--reps 3] [--size 32] [--instruction] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument(
        "--instruction",
        action="store_true",
        help="Prepend the complex human instruction, as real SANA models do.",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default).")
    args = parser.parse_args()

    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from sanatool.inference.pipeline import load_pipeline
    from sanatool.inference.sampler import generate, image_seed
    from sanatool.inference.text import diffusers_default_instruction
    from sanatool.samples.writer import sample_to_dir
    from sanatool.surgery.initialize import init_model

    work = Path(tempfile.mkdtemp(prefix="sanatool-bench-sampling-"))
    model = init_model("tiny", work / "tiny", seed=0)
    pipe = load_pipeline(model, "cpu", "fp32")
    words = ["red", "green", "blue", "yellow", "purple", "orange"]
    shapes = ["circle", "square", "triangle"]
    prompts = [f"a {words[i % 6]} {shapes[i % 3]}" for i in range(args.images)]
    seeds = [image_seed(0, i, 0) for i in range(args.images)]
    size = (args.size, args.size)
    instruction = diffusers_default_instruction() if args.instruction else None

    def run_diffusers() -> list:
        images = []
        for start in range(0, args.images, args.batch):
            images += pipe(
                prompt=prompts[start : start + args.batch],
                num_inference_steps=args.steps,
                height=args.size,
                width=args.size,
                complex_human_instruction=instruction,
                use_resolution_binning=False,
                generator=[torch.Generator().manual_seed(s) for s in seeds[start : start + args.batch]],
            ).images
        return images

    def run_sanatool() -> list:
        return generate(
            pipe, prompts, seeds, steps=args.steps, size=size, instruction=instruction, batch_size=args.batch
        ).images

    def run_command(rep: int) -> None:
        sample_to_dir(
            model,
            prompts,
            work / f"samples-{rep}",
            candidates=1,
            steps=args.steps,
            size=size,
            batch_size=args.batch,
            device="cpu",
            dtype="fp32",
            instruction=args.instruction,
        )

    times: dict[str, list[float]] = {"diffusers": [], "sanatool": [], "command": []}
    run_sanatool()  # warm-up (first-call allocations)
    for rep in range(args.reps):
        for name, fn in (("diffusers", run_diffusers), ("sanatool", run_sanatool), ("command", run_command)):
            start = time.process_time()
            result = fn(rep) if name == "command" else fn()
            times[name].append(time.process_time() - start)
            if name == "diffusers":
                reference = result
            elif name == "sanatool":
                diff = max(
                    int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max())
                    for a, b in zip(result, reference, strict=True)
                )
    base = statistics.median(times["diffusers"])
    print(
        f"tiny pipeline, {args.images} images of {args.size}×{args.size}, {args.steps} steps, batch {args.batch}, "
        f"guidance 4.5 (CFG batched), complex human instruction {'on' if args.instruction else 'off'}, torch threads {torch.get_num_threads()}, CPU time, median of {args.reps}; max pixel diff sanatool vs diffusers: {diff}/255"
    )
    print("| sampler | CPU seconds | images/CPU-s | throughput ÷ diffusers |")
    print("|---|---|---|---|")
    labels = {
        "diffusers": "diffusers `SanaPipeline.__call__` (baseline)",
        "sanatool": "sanatool `generate` (in-process sampler)",
        "command": "sanatool `sample_to_dir` (load + PNGs + manifest + grid)",
    }
    for name, label in labels.items():
        seconds = statistics.median(times[name])
        print(f"| {label} | {seconds:.2f} | {args.images / seconds:.1f} | {base / seconds:.2f} |")


if __name__ == "__main__":
    main()
