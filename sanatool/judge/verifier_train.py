"""``train-verifier``: train the learned shapes verifier and measure it against the evaluator.

Training pairs come from :mod:`sanatool.judge.verifier_data`: renders with matching and
perturbed captions, plus, when samples dirs are given, decoded samples labelled by the
rule-based evaluator. A share of the samples' prompts is held out; the verifier's agreement
with the evaluator on those held-out generated images is recorded in ``verifier.json``
(alongside its accuracy on fresh renders, per perturbation kind).
"""

from __future__ import annotations

import os
import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sanatool.errors import InputError, RunFailure
from sanatool.judge.verifier_data import (
    PERTURBATIONS,
    Caption,
    draw_render_pairs,
    perturb,
    random_negative,
    render_pool,
)
from sanatool.outputs import atomic_output_dir, check_output_path
from sanatool.progress import ProgressFn, no_progress


@dataclass
class SampleImage:
    """A decoded sample: its pixels, its own prompt (labelled by the evaluator) and perturbed prompts."""

    pixels: np.ndarray
    captions: list[Caption]
    prompt_key: str
    source: str


@dataclass
class VerifierTraining:
    """The options of one training run (see :func:`train_verifier`)."""

    steps: int = 1500
    batch_size: int = 64
    lr: float = 2e-3
    renders: int = 6000
    samples: Sequence[str | os.PathLike] = ()
    heldout: float = 0.2
    sample_share: float = 0.5
    seed: int = 0
    architecture: dict[str, int] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise :class:`InputError` for impossible options."""
        for name in ("steps", "batch_size", "renders"):
            value = getattr(self, name)
            low = 0 if name == "renders" else 1
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


def _held_out(key: str, share: float, seed: int) -> bool:
    """A stable, seeded split of prompts (the same prompt is always on the same side)."""
    return (zlib.crc32(f"{seed}:{key}".encode()) % 10_000) < share * 10_000


def load_sample_images(
    samples_dirs: Sequence[str | os.PathLike], image_size: int, seed: int
) -> list[SampleImage]:
    """Read samples dirs; label each image's prompt and two perturbations of it with the evaluator.

    Lines without a ``spec`` are skipped (the evaluator cannot label them). Raises
    :class:`InputError` for a dir without usable lines or with missing images.
    """
    from PIL import Image

    from sanatool.judge.picking import load_samples
    from sanatool.shapes import evaluate_image

    rng = random.Random(seed)
    out: list[SampleImage] = []
    for samples_dir in samples_dirs:
        root = Path(samples_dir)
        groups = load_samples(root)
        usable = [r for g in groups for r in g.records if isinstance(r.get("spec"), dict)]
        if not usable:
            raise InputError(f"--samples {root}: no manifest line has a spec, so the evaluator cannot label them")
        for record in usable:
            with Image.open(root / record["path"]) as image:
                rgb = image.convert("RGB")
            if rgb.size != (image_size, image_size):
                rgb = rgb.resize((image_size, image_size), Image.BILINEAR)
            own = Caption(record["prompt"], record["spec"], evaluate_image(rgb, record["spec"]).correct)
            captions = [own]
            for _ in range(2):
                made = random_negative(record["prompt"], record["spec"], rng)
                if made is not None:
                    # On a generated image a "wrong" caption may hold after all: the evaluator decides.
                    made.label = evaluate_image(rgb, made.spec).correct
                    captions.append(made)
            key = f"{record.get('prompt_index', record['prompt'])}:{record['prompt']}"
            out.append(SampleImage(np.asarray(rgb, dtype=np.uint8), captions, key, str(root)))
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

    from sanatool.judge.verifier import (
        DEFAULT_ARCHITECTURE,
        FORMAT,
        FORMAT_VERSION,
        VerifierCodec,
        build_model,
        default_vocabulary,
        save_verifier,
        validate_architecture,
        verifier_probabilities,
    )

    opts = options or VerifierTraining()
    opts.validate()
    arch = validate_architecture({**DEFAULT_ARCHITECTURE, **opts.architecture}, "architecture")
    out_path = check_output_path(out, force, inputs=[str(s) for s in opts.samples])
    samples = load_sample_images(opts.samples, arch["image_size"], opts.seed) if opts.samples else []
    train_samples = [s for s in samples if not _held_out(s.prompt_key, opts.heldout, opts.seed)]
    test_samples = [s for s in samples if _held_out(s.prompt_key, opts.heldout, opts.seed)]
    if opts.renders == 0 and not train_samples:
        raise InputError("every sample's prompt fell in the held-out share and --renders is 0; lower --heldout")

    torch.manual_seed(opts.seed)
    rng = random.Random(opts.seed)
    vocabulary = default_vocabulary()
    codec = VerifierCodec(vocabulary, arch["image_size"], arch["max_words"])
    model = build_model(arch, len(vocabulary)).to(device)
    progress("renders", 0, opts.renders)
    pixels, items = render_pool(opts.renders, arch["image_size"], opts.seed) if opts.renders else (None, [])
    progress("renders", opts.renders, opts.renders)

    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=opts.lr, total_steps=opts.steps, pct_start=0.05, anneal_strategy="cos"
    )
    share = opts.sample_share if train_samples and items else (1.0 if train_samples else 0.0)
    model.train()
    losses: list[float] = []
    for step in range(1, opts.steps + 1):
        from_samples = sum(rng.random() < share for _ in range(opts.batch_size))
        batch_pixels, captions = [], []
        if from_samples:
            for sample in (train_samples[rng.randrange(len(train_samples))] for _ in range(from_samples)):
                batch_pixels.append(sample.pixels)
                captions.append(sample.captions[rng.randrange(len(sample.captions))])
        if opts.batch_size - from_samples:
            indices = [rng.randrange(len(items)) for _ in range(opts.batch_size - from_samples)]
            render_pixels, render_captions = draw_render_pairs(pixels, items, indices, rng)
            batch_pixels += list(render_pixels)
            captions += render_captions
        x = torch.from_numpy(np.stack(batch_pixels)).permute(0, 3, 1, 2).float().div(255.0).to(device)
        words = codec.encode_words([c.text for c in captions]).to(device)
        target = torch.tensor([float(c.label) for c in captions], device=device)
        loss = F.binary_cross_entropy_with_logits(model(x, words), target)
        if not torch.isfinite(loss):
            raise RunFailure(f"the verifier's loss became {loss.item()} at step {step}; lower --lr (now {opts.lr})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
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
        "final_loss": round(float(np.mean(losses[-50:])), 4),
        "heldout": {"renders": render_accuracy(model, codec, arch["image_size"], opts.seed + 1)},
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
        "parameters": sum(p.numel() for p in model.parameters()),
        "training": summary,
    }
    with atomic_output_dir(out_path, force=force, inputs=[str(s) for s in opts.samples]) as tmp:
        save_verifier(model, config, tmp)
    return summary


def render_accuracy(model: Any, codec: Any, image_size: int, seed: int, count: int = 600) -> dict[str, Any]:
    """Accuracy on fresh degraded renders: matching captions (want yes) and each perturbation (want no)."""
    from PIL import Image

    from sanatool.judge.verifier import verifier_probabilities

    pixels, items = render_pool(count, image_size, seed + 7919)
    images = [Image.fromarray(p) for p in pixels]
    rng = random.Random(seed)
    probs = verifier_probabilities(model, codec, images, [i.prompt for i in items]).tolist()
    result: dict[str, Any] = {"match": round(sum(p > 0.5 for p in probs) / len(probs), 4)}
    for kind in PERTURBATIONS:
        made = [(i, perturb(item.prompt, item.spec, kind, rng)) for i, item in enumerate(items)]
        made = [(i, c) for i, c in made if c is not None]
        if made:
            probs = verifier_probabilities(model, codec, [images[i] for i, _ in made], [c.text for _, c in made])
            result[kind] = round(float((probs < 0.5).float().mean()), 4)
    return result
