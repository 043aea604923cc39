"""``train-verifier``: train the learned shapes verifier and measure it against the evaluator.

Each step takes a batch of images (renders and, when samples dirs are given, decoded samples)
and scores every caption paired with each image (its own, perturbed ones, another image's),
so the image is encoded once for several captions and the verifier learns from the contrast.
The loss is the captions' yes/no cross-entropy (positives weighted to balance the negatives)
plus, on renders, the image encoder's per-cell labels: which class covers each cell, where
each object's centre is, and how many objects of each class there are.

A share of the samples' prompts is held out; the verifier's agreement with the evaluator on
those held-out generated images is recorded in ``verifier.json``, with its accuracy on fresh
renders per perturbation kind.
"""

from __future__ import annotations

import math
import os
import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sanatool.errors import InputError, RunFailure
from sanatool.io.outputs import atomic_output_dir, check_output_path
from sanatool.judges.verifier_data import (
    PERTURBATIONS,
    Caption,
    hard_negatives,
    perturb,
    render_captions,
    render_pool,
)
from sanatool.progress import ProgressFn, no_progress


@dataclass
class SampleImage:
    """A decoded sample: its pixels, its own prompt (labelled by the evaluator) and perturbed prompts."""

    pixels: np.ndarray
    captions: list[Caption]
    prompt: str


@dataclass
class VerifierTraining:
    """The options of one training run (see :func:`train_verifier`)."""

    steps: int = 3000
    batch_size: int = 32
    lr: float = 1.5e-3
    renders: int = 8000
    hard_negatives: int = 2
    samples: Sequence[str | os.PathLike] = ()
    heldout: float = 0.2
    sample_share: float = 0.5
    seed: int = 0
    architecture: dict[str, int] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise :class:`InputError` for impossible options."""
        for name in ("steps", "batch_size", "renders", "hard_negatives"):
            value = getattr(self, name)
            low = 0 if name in ("renders", "hard_negatives") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"--{name.replace('_', '-')} must be an integer ≥ {low}, got {value!r}")
        if not self.lr > 0:
            raise InputError(f"--lr must be positive, got {self.lr!r}")
        if not 0.0 <= self.heldout < 1.0:
            raise InputError(f"--heldout must be in [0, 1), got {self.heldout!r}")
        if not 0.0 <= self.sample_share <= 1.0:
            raise InputError(f"--sample-share must be in [0, 1], got {self.sample_share!r}")
        if self.renders == 0 and not self.samples:
            raise InputError("nothing to train on: --renders is 0 and no --samples dir was given")


def _held_out(prompt: str, share: float, seed: int) -> bool:
    """A stable, seeded split of prompts (the same prompt is always on the same side, in any dir)."""
    return (zlib.crc32(f"{seed}:{prompt}".encode()) % 10_000) < share * 10_000


def load_sample_images(
    samples_dirs: Sequence[str | os.PathLike], image_size: int, seed: int, hard: int = 2
) -> list[SampleImage]:
    """Read samples dirs; label each image's prompt and ``hard`` perturbations of it with the evaluator.

    Lines without a ``spec`` are skipped (the evaluator cannot label them). Raises
    :class:`InputError` for a dir without usable lines or with missing images.
    """
    from sanatool.io.images import open_image
    from sanatool.judges.picking import load_samples
    from sanatool.judges.verifier import image_array
    from sanatool.shapes import evaluate_image

    rng = random.Random(seed)
    out: list[SampleImage] = []
    for samples_dir in samples_dirs:
        root = Path(samples_dir)
        groups = load_samples(root)
        usable = [r for g in groups for r in g.records if isinstance(r.get("spec"), dict)]
        if not usable:
            raise InputError(
                f"--samples {root}: no manifest line has a spec, so the evaluator cannot label them"
            )
        for record in usable:
            with open_image(root / record["path"]) as image:
                pixels = image_array(image, image_size)
            captions = [
                Caption(record["prompt"], record["spec"], evaluate_image(pixels, record["spec"]).correct)
            ]
            for made in hard_negatives(record["prompt"], record["spec"], hard, rng):
                # On a generated image a "wrong" caption may hold after all: the evaluator decides.
                made.label = evaluate_image(pixels, made.spec).correct
                captions.append(made)
            out.append(SampleImage(pixels, captions, record["prompt"]))
    return out


def _agreement(verifier_yes: Sequence[bool], evaluator_yes: Sequence[bool]) -> dict[str, Any]:
    """Agreement, balanced accuracy and yes-rates of the verifier against the evaluator."""
    pairs = list(zip(verifier_yes, evaluator_yes, strict=True))
    pos = [v for v, e in pairs if e]
    neg = [not v for v, e in pairs if not e]
    recalls = [sum(group) / len(group) for group in (pos, neg) if group]
    return {
        "images": len(pairs),
        "agreement": round(sum(v == e for v, e in pairs) / len(pairs), 4) if pairs else None,
        "balanced_accuracy": round(sum(recalls) / len(recalls), 4) if recalls else None,
        "evaluator_yes_rate": round(sum(evaluator_yes) / len(pairs), 4) if pairs else None,
        "verifier_yes_rate": round(sum(verifier_yes) / len(pairs), 4) if pairs else None,
    }


def train_verifier(
    out: str | os.PathLike,
    options: VerifierTraining | None = None,
    device: str = "cpu",
    force: bool = False,
    progress: ProgressFn = no_progress,
) -> dict[str, Any]:
    """Train a shapes verifier and write it to ``out`` (``verifier.json`` + ``model.safetensors``).

    Returns the training summary (also stored in ``verifier.json`` under ``training``):
    final loss, accuracy on fresh degraded renders per perturbation kind, and agreement
    with the evaluator on held-out generated images when samples were given.
    """
    import torch
    import torch.nn.functional as F

    from sanatool.judges.verifier import (
        DEFAULT_ARCHITECTURE,
        FORMAT,
        FORMAT_VERSION,
        VerifierCodec,
        build_model,
        default_vocabulary,
        object_classes,
        save_verifier,
        validate_architecture,
        verifier_probabilities,
    )

    opts = options or VerifierTraining()
    opts.validate()
    arch = validate_architecture({**DEFAULT_ARCHITECTURE, **opts.architecture}, "architecture")
    inputs = [str(s) for s in opts.samples]
    out_path = check_output_path(out, force, inputs=inputs)
    samples = (
        load_sample_images(opts.samples, arch["image_size"], opts.seed, opts.hard_negatives)
        if opts.samples
        else []
    )
    train_samples = [s for s in samples if not _held_out(s.prompt, opts.heldout, opts.seed)]
    test_samples = [s for s in samples if _held_out(s.prompt, opts.heldout, opts.seed)]
    if opts.renders == 0 and not train_samples:
        raise InputError(
            "every sample's prompt fell in the held-out share and --renders is 0; lower --heldout"
        )

    torch.manual_seed(opts.seed)
    rng = random.Random(opts.seed)
    vocabulary, classes = default_vocabulary(), object_classes()
    grid = arch["image_size"] // arch["patch_size"]
    codec = VerifierCodec(vocabulary, arch["image_size"], arch["max_words"])
    model = build_model(arch, len(vocabulary), len(classes)).to(device)
    progress("renders", 0, opts.renders)
    pool = (
        render_pool(opts.renders, arch["image_size"], grid, classes, opts.seed, progress=progress)
        if opts.renders
        else None
    )

    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=0.01)
    warmup = max(1, round(0.05 * opts.steps))

    def shape(step: int) -> float:
        """Linear warm-up over the first 5% of steps, then a cosine decay to zero."""
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, opts.steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, shape)
    share = opts.sample_share if pool is not None else 1.0
    if not train_samples:
        share = 0.0
    model.train()
    losses: list[float] = []
    for step in range(1, opts.steps + 1):
        from_samples = sum(rng.random() < share for _ in range(opts.batch_size))
        renders = [rng.randrange(len(pool)) for _ in range(opts.batch_size - from_samples)] if pool else []
        picked = [train_samples[rng.randrange(len(train_samples))] for _ in range(from_samples)]
        arrays = (
            [pool.pixels[i] for i in renders] + [s.pixels for s in picked]
            if pool
            else [s.pixels for s in picked]
        )
        captions: list[Caption] = []
        owner: list[int] = []
        for slot, index in enumerate(renders):
            made = render_captions(pool, index, opts.hard_negatives, rng)
            captions += made
            owner += [slot] * len(made)
        for slot, sample in enumerate(picked, start=len(renders)):
            captions += sample.captions
            owner += [slot] * len(sample.captions)
        cover, centre = model.encode_image(codec.pixels(np.stack(arrays)).to(device))
        rows = torch.tensor(owner, device=device)
        logits = model.score(
            (cover[rows], centre[rows]), codec.encode_words([c.text for c in captions]).to(device)
        )
        target = torch.tensor([float(c.label) for c in captions], device=device)
        positives = target.sum().clamp(min=1.0)
        weight = torch.where(target > 0.5, (len(captions) - positives) / positives, torch.ones_like(target))
        loss = F.binary_cross_entropy_with_logits(logits, target, weight=weight)
        if renders:
            cover_labels = torch.from_numpy(pool.cover[renders]).to(device)
            centre_labels = torch.from_numpy(pool.centre[renders]).to(device)
            n = len(renders)
            counts = F.one_hot(centre_labels, len(classes)).sum(1)[:, 1:].float()
            loss = (
                loss
                + F.cross_entropy(cover[:n].flatten(0, 1), cover_labels.flatten())
                + F.cross_entropy(centre[:n].flatten(0, 1), centre_labels.flatten())
                + F.smooth_l1_loss(centre[:n].softmax(-1).sum(1)[:, 1:], counts)
            )
        if not torch.isfinite(loss):
            raise RunFailure(
                f"the verifier's loss became {loss.item()} at step {step}; lower --lr (now {opts.lr})"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        progress("train-verifier", step, opts.steps, loss=f"{np.mean(losses[-50:]):.3f}")

    model.eval()
    summary: dict[str, Any] = {
        "steps": opts.steps,
        "batch_size": opts.batch_size,
        "lr": opts.lr,
        "seed": opts.seed,
        "renders": opts.renders,
        "samples": [str(Path(s).resolve()) for s in opts.samples],
        "sample_images": {"train": len(train_samples), "heldout": len(test_samples)},
        "initial_loss": round(float(np.mean(losses[:10])), 4),
        "final_loss": round(float(np.mean(losses[-50:])), 4),
        "heldout": {"renders": render_accuracy(model, codec, arch, classes, opts.seed + 1)},
    }
    if test_samples:
        from PIL import Image

        images = [Image.fromarray(s.pixels) for s in test_samples]
        own = [s.captions[0] for s in test_samples]
        probs = verifier_probabilities(model, codec, images, [c.text for c in own]).tolist()
        summary["heldout"]["generated"] = _agreement([p > 0.5 for p in probs], [c.label for c in own])
    config = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "architecture": arch,
        "vocabulary": vocabulary,
        "classes": classes,
        "parameters": sum(p.numel() for p in model.parameters()),
        "training": summary,
    }
    with atomic_output_dir(out_path, force=force, inputs=inputs) as tmp:
        save_verifier(model, config, tmp)
    return summary


def render_accuracy(
    model: Any, codec: Any, arch: dict[str, int], classes: Sequence[str], seed: int, count: int = 600
) -> dict[str, Any]:
    """Accuracy on fresh degraded renders: matching captions (want yes) and each perturbation (want no)."""
    from PIL import Image

    from sanatool.judges.verifier import verifier_probabilities

    grid = arch["image_size"] // arch["patch_size"]
    pool = render_pool(count, arch["image_size"], grid, classes, seed + 7919, labels=False)
    images = [Image.fromarray(p) for p in pool.pixels]
    rng = random.Random(seed)
    probs = verifier_probabilities(model, codec, images, [i.prompt for i in pool.items])
    result: dict[str, Any] = {"match": round(float((probs > 0.5).float().mean()), 4)}
    for kind in PERTURBATIONS:
        made = [(i, perturb(item.prompt, item.spec, kind, rng)) for i, item in enumerate(pool.items)]
        made = [(i, c) for i, c in made if c is not None]
        if made:
            probs = verifier_probabilities(
                model, codec, [images[i] for i, _ in made], [c.text for _, c in made]
            )
            result[kind] = round(float((probs < 0.5).float().mean()), 4)
    return result
