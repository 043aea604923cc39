"""Fine-tuning memory per GPU by mode, from the ``--dry-run`` budget (the README table of issue 18).

For each preset (``sana-0.6b``, ``sana1.5-1.6b``, ``sana1.5-4.8b``) and mode, the budget that
``finetune --dry-run`` prints (:func:`sanatool.training.budget.memory_budget`: weights, gradients,
optimizer state, activations measured on the meta device; no CUDA needed) at batch 1, 1024 px
(32×32 latents of DC-AE f32), 300 caption tokens, bf16 autocast, CAME-8bit:

- full: every weight trains (fp32 master weights, gradients, CAME-8bit state, bf16 autocast copies);
- full + ckpt: the same with gradient checkpointing;
- LoRA r16 on a bf16 / int8 / nf4 frozen base, with gradient checkpointing (default targets
  to_q, to_k, to_v of both attentions).

A fit means peak + 1.5 GB (CUDA context, allocator, transient buffers) ≤ the card's size (GB as sold).

    python benchmarks/finetune_budget.py            # markdown table on stdout
    python benchmarks/finetune_budget.py --json     # every budget in full
"""

from __future__ import annotations

import argparse
import json
import sys
import time

PRESETS = ("sana-0.6b", "sana1.5-1.6b", "sana1.5-4.8b")
#: name → (LoRA rank or None, base precision, gradient checkpointing)
MODES = {
    "full CAME-8bit": (None, None, False),
    "full CAME-8bit + ckpt": (None, None, True),
    "LoRA r16, bf16 base + ckpt": (16, "bf16", True),
    "LoRA r16, int8 base + ckpt": (16, "int8", True),
    "LoRA r16, nf4 base + ckpt": (16, "nf4", True),
}


def gb(n: float) -> str:
    return f"{n / 1e9:.1f}"


def main() -> None:
    from sanatool.arch import preset_config
    from sanatool.training.budget import GPU_SIZES_GB, OVERHEAD_BYTES, memory_budget

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    side = args.resolution // 32
    results = []
    for preset in PRESETS:
        config = preset_config(preset)
        for mode, (rank, base, ckpt) in MODES.items():
            started = time.perf_counter()
            budget = memory_budget(
                config, batch_size=args.batch_size, optimizer="came8bit", precision="bf16",
                grad_checkpointing=ckpt, latent_side=side, lora_rank=rank, base_precision=base,
            )  # fmt: skip
            results.append({"preset": preset, "mode": mode, **budget.to_json()})
            print(
                f"{preset} · {mode}: {gb(budget.total)} GB ({time.perf_counter() - started:.0f} s)",
                file=sys.stderr,
            )
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"Batch {args.batch_size}, {args.resolution} px ({side}×{side} latents), 300 caption tokens, bf16 autocast, "
        "CAME-8bit. GB = 10⁹ bytes; peak = what the budget holds at once; fit = peak + 1.5 GB ≤ card."
    )
    print("")
    sizes = " | ".join(f"{s} GB" for s in GPU_SIZES_GB)
    print(f"| model | mode | trained params | weights | grads + optimizer | activations | peak | {sizes} |")
    print("|---|---|---|---|---|---|---|" + "---|" * len(GPU_SIZES_GB))
    for r in results:
        rows = r["bytes"]
        weights = sum(v for k, v in rows.items() if "weights" in k or "adapters (fp32" in k)
        state = sum(v for k, v in rows.items() if k.startswith(("gradients", "optimizer")))
        need = r["total_bytes"] + OVERHEAD_BYTES
        fits = ["yes" if need <= s * 10**9 else f"no (+{gb(need - s * 10**9)})" for s in GPU_SIZES_GB]
        trained = r["settings"]["trained_params"]
        print(
            f"| {r['preset']} | {r['mode']} | {trained / 1e6:,.1f}M | {gb(weights)} | {gb(state)} | "
            f"{gb(rows['activations'])} | **{gb(r['total_bytes'])}** | {' | '.join(fits)} |"
        )


if __name__ == "__main__":
    main()
