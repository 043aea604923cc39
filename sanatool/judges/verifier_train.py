"""``train-verifier``: train the learned shapes verifier and measure it against the evaluator.

Each step takes a batch of images (renders and, when samples dirs are given, decoded samples)
and scores every caption paired with each image (its own, perturbed ones, another image's),
so the image is encoded once for several captions and the verifier learns from the contrast.
The loss is the captions' yes/no cross-entropy (positives weighted to balance the negatives)
plus which object class each caption word refers to (from the caption's spec), plus the image
encoder's per-cell labels: which class covers each cell, where each object's centre is, and how
many objects of each class there are. On renders they come from the clean render; on decoded
samples from the shapes detector run on the sample itself, so the encoder learns to read a
generator's blurred, off-palette objects, not only clean renders.

A share of the samples' prompts is held out as a validation split: the verifier's yes-threshold
is calibrated there (the one with the best balanced accuracy), and its agreement with the
evaluator on those images is recorded in ``verifier.json``, with its accuracy on fresh renders
per perturbation kind.
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
    mirror_caption,
    perturb,
    refer_targets,
    render_captions,
    render_pool,
    split_key,
)
from sanatool.progress import ProgressFn, no_progress


@dataclass
class SampleImage:
    """A decoded sample: its pixels, its own prompt (labelled by the evaluator), other captions, cell labels.

    ``captions[0]`` is the sample's own prompt (mirrored with the image for a mirrored copy); then
    perturbations of it and another sample's prompt, each labelled by the evaluator on this image.
    ``prompt`` is the manifest's prompt, which decides the validation split. ``cover`` and ``centre`` are the
    per-cell class labels the shapes detector reads from the image (see
    :func:`~sanatool.judges.verifier_data.cell_labels`).
    """

    pixels: np.ndarray
    captions: list[Caption]
    prompt: str
    cover: np.ndarray
    centre: np.ndarray
    mirrored: bool = False


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
    sample_share: float = 0.7
    seed: int = 0
    mirror: bool = False
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
    """A stable, seeded split of prompts (the same prompt is always on the same side, in any dir).

    A prompt and its left–right mirror fall on the same side (:func:`split_key`), so a mirrored
    training sample never spells a validation prompt.
    """
    return (zlib.crc32(f"{seed}:{split_key(prompt)}".encode()) % 10_000) < share * 10_000


def load_sample_images(
    samples_dirs: Sequence[str | os.PathLike],
    image_size: int,
    seed: int,
    hard: int = 2,
    grid: int = 8,
    classes: Sequence[str] = (),
    mirror: bool = False,
) -> list[SampleImage]:
    """Read samples dirs; label each image's prompt, ``hard`` perturbations and another prompt with the evaluator.

    Each image also gets its ``grid`` × ``grid`` cell labels over ``classes`` from the shapes
    detector (all background when ``classes`` is empty). With ``mirror``, each image is also
    added flipped left–right with its caption mirrored (:func:`mirror_caption`; skipped when that
    spells an evaluation prompt): twice the generated images, labelled the same way. Lines without a ``spec`` are skipped
    (the evaluator cannot label them). Raises :class:`InputError` for a dir without usable
    lines or with missing images.
    """
    from PIL import Image

    from sanatool.io.images import open_image
    from sanatool.judges.picking import load_samples
    from sanatool.judges.verifier import image_array
    from sanatool.judges.verifier_data import cell_labels
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
            views = [(pixels, record["prompt"], record["spec"])]
            mirrored = mirror_caption(record["prompt"], record["spec"]) if mirror else None
            if mirrored is not None:
                views.append((np.ascontiguousarray(pixels[:, ::-1]), *mirrored))
            for index, (view, prompt, spec) in enumerate(views):
                captions = [Caption(prompt, spec, evaluate_image(view, spec).correct)]
                for made in hard_negatives(prompt, spec, hard, rng):
                    # On a generated image a "wrong" caption may hold after all: the evaluator decides.
                    made.label = evaluate_image(view, made.spec).correct
                    captions.append(made)
                other = usable[rng.randrange(len(usable))]
                if other["prompt"] != record["prompt"]:
                    captions.append(
                        Caption(
                            other["prompt"],
                            other["spec"],
                            evaluate_image(view, other["spec"]).correct,
                            "other",
                        )
                    )
                if classes:
                    cover, centre = cell_labels(Image.fromarray(view), grid, classes)
                else:
                    cover = centre = np.zeros(grid * grid, dtype=np.int64)
                out.append(SampleImage(view, captions, record["prompt"], cover, centre, mirrored=index > 0))
    return out


def calibrate_threshold(probs: Sequence[float], labels: Sequence[bool]) -> float:
    """The yes-threshold with the best balanced accuracy on ``(probs, labels)``; 0.5 without both classes.

    Candidates are the midpoints between consecutive distinct probabilities; ties go to the one
    nearest 0.5.
    """
    values = sorted(set(float(p) for p in probs))
    if not any(labels) or all(labels) or len(values) < 2:
        return 0.5
    best, best_key = 0.5, None
    for low, high in zip(values[:-1], values[1:], strict=True):
        threshold = (low + high) / 2
        if not 0.0 < threshold < 1.0:
            continue
        score = _agreement([p > threshold for p in probs], list(labels))["balanced_accuracy"]
        key = (score, -abs(threshold - 0.5))
        if best_key is None or key > best_key:
            best, best_key = threshold, key
    return best


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
    vocabulary, classes = default_vocabulary(), object_classes()
    grid = arch["image_size"] // arch["patch_size"]
    samples = (
        load_sample_images(
            opts.samples, arch["image_size"], opts.seed, opts.hard_negatives, grid, classes, opts.mirror
        )
        if opts.samples
        else []
    )
    train_samples = [s for s in samples if not _held_out(s.prompt, opts.heldout, opts.seed)]
    # Mirrored copies of validation images stay out of both splits: validation measures the real images.
    test_samples = [s for s in samples if _held_out(s.prompt, opts.heldout, opts.seed) and not s.mirrored]
    if opts.renders == 0 and not train_samples:
        raise InputError(
            "every sample's prompt fell in the held-out share and --renders is 0; lower --heldout"
        )

    torch.manual_seed(opts.seed)
    rng = random.Random(opts.seed)
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
        word_ids = codec.encode_words([c.text for c in captions]).to(device)
        read = model.read_words(word_ids)
        logits = model.score((cover[rows], centre[rows]), word_ids, read)
        target = torch.tensor([float(c.label) for c in captions], device=device)
        positives = target.sum().clamp(min=1.0)
        weight = torch.where(target > 0.5, (len(captions) - positives) / positives, torch.ones_like(target))
        loss = F.binary_cross_entropy_with_logits(logits, target, weight=weight)
        # Which class each word refers to, from the caption's spec: without it the verdict part
        # fits the training captions but grounds new ones poorly (validation 0.70 vs 0.95 balanced
        # accuracy when fed the detector's own cell maps).
        refer, refer_mask = (
            torch.from_numpy(a).to(device) for a in refer_targets(captions, word_ids.shape[1], classes)
        )
        refer_loss = -(refer * read[1].log_softmax(-1)).sum(-1)
        loss = loss + (refer_loss * refer_mask).sum() / refer_mask.sum().clamp(min=1.0)
        # Dense labels for every image: a render's from its clean self, a sample's from the detector.
        cover_labels = torch.from_numpy(
            np.stack([pool.cover[i] for i in renders] + [s.cover for s in picked])
        ).to(device)
        centre_labels = torch.from_numpy(
            np.stack([pool.centre[i] for i in renders] + [s.centre for s in picked])
        ).to(device)
        counts = F.one_hot(centre_labels, len(classes)).sum(1)[:, 1:].float()
        loss = (
            loss
            + F.cross_entropy(cover.flatten(0, 1), cover_labels.flatten())
            + F.cross_entropy(centre.flatten(0, 1), centre_labels.flatten())
            + F.smooth_l1_loss(centre.softmax(-1).sum(1)[:, 1:], counts)
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
        "mirror": opts.mirror,
        "samples": [str(Path(s).resolve()) for s in opts.samples],
        "sample_images": {"train": len(train_samples), "heldout": len(test_samples)},
        "initial_loss": round(float(np.mean(losses[:10])), 4),
        "final_loss": round(float(np.mean(losses[-50:])), 4),
        "heldout": {"renders": render_accuracy(model, codec, arch, classes, opts.seed + 1)},
    }
    threshold = 0.5
    if test_samples:
        from PIL import Image

        images = [Image.fromarray(s.pixels) for s in test_samples]
        own = [s.captions[0] for s in test_samples]
        probs = verifier_probabilities(model, codec, images, [c.text for c in own]).tolist()
        labels = [c.label for c in own]
        threshold = calibrate_threshold(probs, labels)
        summary["heldout"]["generated"] = {
            **_agreement([p > threshold for p in probs], labels),
            "threshold": round(threshold, 6),
            "at_0.5": _agreement([p > 0.5 for p in probs], labels),
        }
    config = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "architecture": arch,
        "vocabulary": vocabulary,
        "classes": classes,
        "threshold": round(threshold, 6),
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
