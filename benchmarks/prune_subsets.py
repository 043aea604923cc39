"""Which blocks to keep? The distillation loss of every K-block subset of a model, before any healing.

Depth-pruning work on DiTs (TinyFusion) argues that the blocks to keep are the ones that *heal*
best, not the ones whose removal hurts least. This scores every K-of-N subset of ``--model``'s
blocks by the loss ``finetune --teacher`` starts from: ‖v_subset − v_full‖² on the first
``--items`` latents of a latent cache, noised as in training (``paper/work.py``'s ``noisy_batch``:
logit-normal timesteps, the model's flow shift; the same draws for every subset), and says where
the subset importance picks (``--importance``, the K best) ranks.
``distill.py --keep-blocks`` then heals any of them for comparison.

    OMP_NUM_THREADS=1 python benchmarks/prune_subsets.py --cache WORK/cache/KEY --keep 4 \\
        --importance WORK/importance.json

``--cache``: an entry of the latent cache that ``distill.py`` (or ``finetune``) built for the model's
training data under ``WORK/cache``. Prints the best ``--show`` subsets as a markdown table.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny-shapes")
    parser.add_argument(
        "--cache", type=Path, required=True, help="A latent-cache entry dir (has cache.json)."
    )
    parser.add_argument("--keep", type=int, default=4)
    parser.add_argument("--importance", type=Path, help="Importance file: report its K best blocks' rank.")
    parser.add_argument("--items", type=int, default=512)
    parser.add_argument("--show", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    import torch
    from diffusers import SanaTransformer2DModel
    from paper.work import noisy_batch

    from sanatool.io.modeldir import as_model_dir
    from sanatool.training.cache import open_cache

    base = as_model_dir(args.model)
    model = SanaTransformer2DModel.from_pretrained(str(base.transformer.path)).eval()
    cache = open_cache(args.cache)
    if cache is None:
        raise SystemExit(f"{args.cache} is not a latent-cache entry (no readable cache.json)")
    batch = noisy_batch(cache, base, 1, args.seed, items=args.items)
    items = len(batch["x0"])
    sigmas = batch["sigmas"].view(-1, 1, 1, 1)
    noisy = (1 - sigmas) * batch["x0"] + sigmas * batch["noise"]
    inputs = {
        "encoder_hidden_states": batch["embeds"],
        "timestep": batch["sigmas"] * batch["time_scale"],
        "encoder_attention_mask": batch["mask"],
        "return_dict": False,
    }
    blocks = model.transformer_blocks
    rows = []
    with torch.no_grad():
        reference = model(noisy, **inputs)[0]
        for keep in itertools.combinations(range(len(blocks)), args.keep):
            model.transformer_blocks = torch.nn.ModuleList([blocks[i] for i in keep])
            rows.append((float(((model(noisy, **inputs)[0] - reference) ** 2).mean()), keep))
    model.transformer_blocks = blocks
    rows.sort()
    picked = None
    if args.importance:
        ranking = json.loads(args.importance.read_text())["ranking"]
        picked = tuple(sorted(ranking[: args.keep]))
    print(
        f"{len(rows)} subsets of {args.keep} of {len(blocks)} blocks; {items} noisy latents from {args.cache}"
    )
    print("")
    print("| rank | kept blocks | distillation loss before healing |")
    print("|---|---|---|")
    for rank, (loss, keep) in enumerate(rows, 1):
        if rank <= args.show or keep == picked:
            mark = " (importance)" if keep == picked else ""
            print(f"| {rank} | {list(keep)}{mark} | {loss:.4f} |")


if __name__ == "__main__":
    main()
