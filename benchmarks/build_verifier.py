"""Build the shipped learned verifier (``sanatool/data/verifier-shapes``) from the shipped model's own candidates.

1. Sample ``--candidates`` images for each of ``--captions`` *training* captions (the grammar's
   captions with every evaluation prompt held out; seed ``--caption-seed``) from ``--model``, as
   ``sanatool sample`` does (20 steps, guidance 4.5).
2. ``train_verifier`` on those samples (each labelled by the rule-based evaluator, with
   perturbed captions as hard negatives and the detector's cell labels) mixed with renders;
   ``--heldout`` of the captions form the validation split that calibrates the yes-threshold.
3. With ``--ship DIR``, copy the verifier there with its recipe recorded in ``verifier.json``.

The evaluation suite's prompts are never seen: measure the verifier on them with
``benchmarks/inference_scaling.py`` (agreement and balanced accuracy with bootstrap intervals).

    OMP_NUM_THREADS=1 python benchmarks/build_verifier.py --work /tmp/v19 \\
        [--captions 700] [--candidates 4] [--steps 3000] [--mirror] [--architecture JSON] \\
        [--ship sanatool/data/verifier-shapes]

Samples and the verifier are kept under ``--work`` (rerunning resumes the sampling).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny-shapes")
    parser.add_argument("--work", type=Path, default=Path("verifier-work"))
    parser.add_argument("--captions", type=int, default=700, help="Training captions to sample.")
    parser.add_argument("--caption-seed", type=int, default=1)
    parser.add_argument("--candidates", type=int, default=4, help="Samples per caption.")
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3000, help="Verifier optimizer steps.")
    parser.add_argument("--renders", type=int, default=8000)
    parser.add_argument("--sample-share", type=float, default=0.7)
    parser.add_argument("--heldout", type=float, default=0.15, help="Validation share of the captions.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--mirror",
        action="store_true",
        help="Also train on the samples flipped left-right (captions mirrored).",
    )
    parser.add_argument(
        "--architecture",
        type=json.loads,
        default={},
        help="Architecture overrides as JSON, e.g. '{\"stem_layers\": 2}'.",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    parser.add_argument("--ship", type=Path, default=None, help="Copy the verifier here when done.")
    args = parser.parse_args()

    import torch

    from sanatool.judges.verifier_train import VerifierTraining, train_verifier
    from sanatool.samples.writer import sample_to_dir
    from sanatool.shapes import training_captions

    if args.threads:
        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    samples = args.work / "train-samples"
    start = time.perf_counter()
    sample_to_dir(
        args.model, training_captions(args.captions, seed=args.caption_seed), samples,
        candidates=args.candidates, steps=args.sample_steps, guidance=args.guidance, seed=0,
        batch_size=args.batch_size, device="cpu", resume=True,
    )  # fmt: skip
    sampled = time.perf_counter() - start
    out = args.work / "verifier"
    start = time.perf_counter()
    options = VerifierTraining(
        steps=args.steps, renders=args.renders, samples=[samples], heldout=args.heldout,
        sample_share=args.sample_share, seed=args.seed, mirror=args.mirror, architecture=args.architecture,
    )  # fmt: skip
    summary = train_verifier(out, options, force=True)
    trained = time.perf_counter() - start
    print(json.dumps(summary["heldout"], indent=2))
    print(f"sampling {sampled:.0f} s, training {trained:.0f} s (torch threads: {torch.get_num_threads()})")
    if args.ship is not None:
        config = json.loads((out / "verifier.json").read_text())
        # The shipped file records how it was made, not this machine's paths.
        config["training"]["samples"] = [
            {
                "model": args.model,
                "captions": args.captions,
                "caption_seed": args.caption_seed,
                "candidates": args.candidates,
                "steps": args.sample_steps,
                "guidance": args.guidance,
            }
        ]
        config["training"]["seconds"] = {"sampling": round(sampled), "training": round(trained)}
        if args.ship.exists():
            shutil.rmtree(args.ship)
        shutil.copytree(out, args.ship)
        (args.ship / "verifier.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        print(f"shipped: {args.ship}")


if __name__ == "__main__":
    main()
