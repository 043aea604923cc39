"""Shapes world benchmark: the evaluator's accuracy per category, and how fast data is written.

Accuracy: every evaluation-suite prompt rendered ``--reps`` times, judged clean, after a
mild and a harsh blur + noise (what a VAE round-trip does), and as renders of a different
prompt of the same category (which must be judged wrong). The baseline is a naive evaluator
measured in the same run: nearest palette colour per pixel and a hard mask, instead of
blend lines and soft masks.

Speed: ``write_shapes_dataset`` against the I/O floor (the same number of blank PNGs and
metadata lines), ``sanatool data shapes --n N`` end to end, and evaluator throughput.

    python benchmarks/shapes.py --reps 3 --n 10000
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from sanatool.shapes import (
    CATEGORIES,
    degrade,
    evaluate_image,
    evaluation_suite,
    mismatched_spec,
    render_spec,
)
from sanatool.shapes import evaluator as ev
from sanatool.shapes.dataset import write_shapes_dataset

CONDITIONS: dict[str, tuple[float, float]] = {"clean": (0.0, 0.0), "mild": (0.6, 6.0), "harsh": (1.0, 12.0)}


def _naive_classify(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Baseline: each pixel takes the nearest of background + palette; the mask is hard (0/1)."""
    colours = np.vstack([ev._background(pixels)[None], ev._PALETTE])
    nearest = np.linalg.norm(pixels[..., None, :] - colours, axis=-1).argmin(axis=-1)
    labels, foreground = np.maximum(nearest - 1, 0), nearest > 0
    alpha = np.zeros(labels.shape + (len(ev._PALETTE),), dtype=np.float32)
    np.put_along_axis(alpha, labels[..., None], foreground[..., None].astype(np.float32), axis=-1)
    return labels, foreground, alpha


@contextmanager
def _naive_evaluator():
    original = ev._classify_pixels
    ev._classify_pixels = _naive_classify
    try:
        yield
    finally:
        ev._classify_pixels = original


def _accuracy(reps: int, size: int) -> dict[str, dict[str, float]]:
    """Accuracy per (evaluator, condition) column and category row."""
    suite = evaluation_suite()
    columns: dict[str, dict[str, list[bool]]] = {}
    for rep in range(reps):
        for index, item in enumerate(suite):
            seed = rep * 100_000 + index
            image = render_spec(item.spec, size, seed)
            other = render_spec(mismatched_spec(item.spec, item.category, random.Random(seed)), size, seed)
            for name, (blur, noise) in CONDITIONS.items():
                pictures = {
                    name: degrade(image, blur, noise, seed),
                    f"mismatched {name}": degrade(other, blur, noise, seed),
                }
                for column, picture in pictures.items():
                    for judge in ("rules", "naive"):
                        if judge == "naive":
                            with _naive_evaluator():
                                correct = evaluate_image(picture, item.spec).correct
                        else:
                            correct = evaluate_image(picture, item.spec).correct
                        columns.setdefault(f"{judge}: {column}", {}).setdefault(item.category, []).append(
                            correct
                        )
    return {col: {cat: float(np.mean(v)) for cat, v in rows.items()} for col, rows in columns.items()}


def _timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def _blank_floor(out: Path, n: int, size: int) -> None:
    """The I/O floor: the same number of PNG files and metadata lines, with nothing drawn."""
    out.mkdir()
    blank = Image.new("RGB", (size, size), (240, 240, 240))
    with open(out / "metadata.jsonl", "w") as meta:
        for index in range(n):
            blank.save(out / f"{index:05d}.png")
            meta.write(json.dumps({"file_name": f"{index:05d}.png", "text": "a blank image"}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="renders per evaluation prompt")
    parser.add_argument("--n", type=int, default=10_000, help="images in the data-speed test")
    args = parser.parse_args()

    for size in (32, 64):
        table = _accuracy(args.reps if size == 32 else 1, size)
        images = len(evaluation_suite()) * (args.reps if size == 32 else 1)
        print(
            f"\n### Evaluator accuracy, {size}×{size}, {images} renders per row (fraction judged correct)\n"
        )
        print("| evaluator | renders | " + " | ".join(CATEGORIES) + " | overall |")
        print("|---" * (len(CATEGORIES) + 3) + "|")
        for kind in ("", "mismatched "):
            for condition in CONDITIONS:
                for judge in ("rules", "naive"):
                    row = table[f"{judge}: {kind}{condition}"]
                    cells = [f"{row[c]:.3f}" for c in CATEGORIES] + [f"**{np.mean(list(row.values())):.3f}**"]
                    print(f"| {judge} | {kind}{condition} | " + " | ".join(cells) + " |")

    work = Path(tempfile.mkdtemp(prefix="shapes-bench-"))
    try:
        floor = _timed(lambda: _blank_floor(work / "floor", args.n, 32))
        library = _timed(lambda: write_shapes_dataset(work / "ds32", args.n, size=32, seed=0))
        library64 = _timed(lambda: write_shapes_dataset(work / "ds64", args.n, size=64, seed=0))
        command = [
            sys.executable,
            "-m",
            "sanatool",
            "data",
            "shapes",
            "-o",
            str(work / "cli"),
            "--n",
            str(args.n),
        ]
        cli = _timed(lambda: subprocess.run(command, check=True, capture_output=True))
        sample = [Image.open(work / "ds32" / f"{i:05d}.png").convert("RGB") for i in range(500)]
        sample64 = [Image.open(work / "ds64" / f"{i:05d}.png").convert("RGB") for i in range(500)]
        spec = evaluation_suite()[0].spec
        eval32 = _timed(lambda: [evaluate_image(image, spec) for image in sample]) / len(sample)
        eval64 = _timed(lambda: [evaluate_image(image, spec) for image in sample64]) / len(sample64)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n### Data speed, {args.n} images\n")
    print("| what | seconds | images/s | × I/O floor |")
    print("|---|---|---|---|")
    for name, seconds in (
        ("I/O floor: blank 32×32 PNGs + metadata", floor),
        ("write_shapes_dataset, 32×32", library),
        ("write_shapes_dataset, 64×64", library64),
        (f"`sanatool data shapes --n {args.n}` (process start included)", cli),
    ):
        print(f"| {name} | {seconds:.1f} | {args.n / seconds:.0f} | {seconds / floor:.2f} |")
    print(f"\nEvaluator: {eval32 * 1e3:.2f} ms per 32×32 image, {eval64 * 1e3:.2f} ms per 64×64 image.")


if __name__ == "__main__":
    main()
