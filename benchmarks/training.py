"""Training memory budgets for the SANA presets (what `--dry-run` prints), and tiny-model step speed.

    python benchmarks/training.py budget      # per-GPU memory, batch 1 at 1024 px, four optimizers
    python benchmarks/training.py speed       # tiny preset steps/s at batch 64 on this machine

The budget needs no GPU and no weights: parameter shapes come from the presets, optimizer state
from `sanatool.optim.estimate_state_bytes`, activations from a meta-device forward pass. Ratios
are against AdamW (the baseline) in the same table.
"""

from __future__ import annotations

import argparse
import time


def budget_table() -> None:
    from sanatool.arch import preset_config
    from sanatool.training.budget import OVERHEAD_BYTES, memory_budget

    optimizers = ("adamw", "adamw8bit", "came", "came8bit")
    print(
        "| preset | optimizer | grad ckpt | weights+grads | optimizer state | vs AdamW | activations | total | 24 GB | 48 GB | 80 GB |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|:-:|:-:|:-:|")
    for preset in ("sana-0.6b", "sana-1.6b", "sana1.5-1.6b", "sana1.5-4.8b"):
        config = preset_config(preset)
        for checkpointing in (False, True):
            baseline = None
            for name in optimizers:
                budget = memory_budget(config, 1, name, "bf16", checkpointing, latent_side=32)
                rows = budget.rows
                state = rows[f"optimizer state ({name})"]
                baseline = baseline or state
                weights = (
                    rows["weights (fp32 master)"]
                    + rows["gradients (fp32)"]
                    + rows["weights (bf16 autocast copies)"]
                )
                fits = [
                    "yes" if budget.total + OVERHEAD_BYTES <= size * 10**9 else "no" for size in (24, 48, 80)
                ]
                print(
                    f"| {preset} | {name} | {'yes' if checkpointing else 'no'} | {weights / 1e9:.1f} GB | "
                    f"{state / 1e9:.2f} GB | {state / baseline:.2f}× | {rows['activations'] / 1e9:.1f} GB | "
                    f"{budget.total / 1e9:.1f} GB | {' | '.join(fits)} |"
                )


def speed_table(steps: int) -> None:
    import tempfile
    from pathlib import Path

    from sanatool.shapes.dataset import write_shapes_dataset
    from sanatool.surgery.initialize import init_model
    from sanatool.training import TrainOptions, run_training

    root = Path(tempfile.mkdtemp(prefix="sanatool-bench-"))
    pipe = init_model("tiny", root / "pipe")
    data = write_shapes_dataset(root / "data", 256)
    print("| optimizer | batch | steps/s | vs AdamW |")
    print("|---|---:|---:|---:|")
    baseline = None
    for name in ("adamw", "came8bit"):
        opts = TrainOptions(
            source=str(pipe), data=data, out=root / name, steps=steps, optimizer=name, batch_size=64, lr=1e-4
        )
        run_training(opts)  # warm: builds the latent cache on the first optimizer
        started = time.perf_counter()
        result = run_training(TrainOptions(**{**opts.__dict__, "out": root / f"{name}-2"}))
        rate = result["steps_per_s"]
        baseline = baseline or rate
        print(
            f"| {name} | 64 | {rate:.2f} | {rate / baseline:.2f}× |  (wall {time.perf_counter() - started:.0f} s)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("budget", "speed"))
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    if args.what == "budget":
        budget_table()
    else:
        speed_table(args.steps)


if __name__ == "__main__":
    main()
