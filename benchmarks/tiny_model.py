"""Quality of a shapes-world pipeline: `sample` + `eval` on the evaluation suite, and its VAE alone.

Two rows per model: the transformer's samples (one per prompt of the 300-prompt suite, the
defaults of `sanatool sample`), and the VAE's round trip of a clean render of every prompt
(encode → decode → evaluate), the ceiling the decoder leaves the transformer.

    python benchmarks/tiny_model.py [--model builtin:tiny-shapes] [--model OTHER] [--work DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def vae_round_trip(model: str) -> dict[str, float]:
    """Per-category accuracy of the evaluator on VAE reconstructions of clean renders."""
    import numpy as np
    import torch

    from sanatool.inference.pipeline import load_pipeline
    from sanatool.shapes import CATEGORIES, evaluate_image, evaluation_suite, render_spec

    vae = load_pipeline(model, "cpu", "fp32", command="benchmark").vae
    hits: dict[str, list[bool]] = {c: [] for c in CATEGORIES}
    with torch.no_grad():
        for index, item in enumerate(evaluation_suite()):
            render = np.asarray(render_spec(item.spec, size=32, seed=index).convert("RGB"), dtype=np.float32)
            pixels = torch.from_numpy(render / 127.5 - 1.0).permute(2, 0, 1)[None]
            decoded = vae.decode(vae.encode(pixels).latent).sample.clamp(-1, 1)
            image = ((decoded[0].permute(1, 2, 0).numpy() + 1.0) * 127.5).round().astype(np.uint8)
            hits[item.category].append(evaluate_image(image, item.spec).correct)
    categories = {c: float(np.mean(v)) for c, v in hits.items()}
    return {"overall": float(np.mean(list(categories.values()))), **categories}


def sampled(model: str, out: Path, seed: int) -> dict[str, Any]:
    """Per-category accuracy of one sample per evaluation prompt."""
    from sanatool.samples.evaluate import evaluate_samples_dir
    from sanatool.samples.writer import sample_to_dir
    from sanatool.shapes import evaluation_suite

    sample_to_dir(model, evaluation_suite(), out, candidates=1, seed=seed, force=True)
    report = evaluate_samples_dir(out)
    categories = {name: result.accuracy for name, result in report.categories.items()}
    return {"overall": report.overall, **categories}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", action="append", default=None, help="Pipeline dir or builtin:NAME (repeat)."
    )
    parser.add_argument("--work", type=Path, default=Path("tiny-model-work"), help="Samples dirs go here.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from sanatool.io.modeldir import open_model_dir
    from sanatool.shapes import CATEGORIES

    args.work.mkdir(parents=True, exist_ok=True)
    header = ["model", "fingerprint", "row", "overall", *CATEGORIES]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for index, model in enumerate(args.model or ["builtin:tiny-shapes"]):
        fingerprint = open_model_dir(model).fingerprint()
        rows = {
            "samples (1 per prompt)": sampled(model, args.work / f"samples-{index}", args.seed),
            "VAE round trip of renders": vae_round_trip(model),
        }
        for name, row in rows.items():
            cells = [
                model,
                fingerprint,
                name,
                f"{row['overall']:.3f}",
                *(f"{row[c]:.2f}" for c in CATEGORIES),
            ]
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
