"""Training the tiny pipeline's ``AutoencoderDC`` on shapes renders: the first step of the shipped model.

The VAE (config from :func:`sanatool.shapes.tiny.vae_config`) learns to reconstruct the data set's images
with an L1 loss, AdamW and a cosine learning-rate decay. Its ``scaling_factor`` is then set to
1 / std of the latents over the data set, so the transformer sees unit-variance latents (what
``SanaPipeline`` divides by before decoding). The output is a complete tiny pipeline dir — the
trained VAE, the seeded tiny text encoder and tokenizer, the scheduler and a random-init tiny
transformer — that ``sanatool train --preset tiny --components DIR`` takes its encoders from.
Deterministic for a given data set, seed and thread count.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from sanatool.errors import InputError
from sanatool.io.outputs import atomic_output_dir, check_output_path
from sanatool.progress import ProgressFn, no_progress

#: Images held out of VAE training to report an honest reconstruction error.
HOLDOUT_FRACTION = 0.05


def _pixels(dataset: Any, progress: ProgressFn) -> Any:
    import torch

    from sanatool.training.data import load_pixels

    images = []
    for index, item in enumerate(dataset.items):
        images.append(load_pixels(item, dataset.resolution))
        if (index + 1) % 256 == 0 or index + 1 == len(dataset):
            progress("load", index + 1, len(dataset))
    return torch.stack(images)


def train_vae(
    data_dir: str | os.PathLike,
    out: str | os.PathLike,
    steps: int = 3000,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    dtype: str = "fp16",
    force: bool = False,
    progress: ProgressFn = no_progress,
) -> dict[str, Any]:
    """Train the tiny AutoencoderDC on an image folder and write a tiny pipeline dir around it.

    Returns a summary: held-out L1 (in [0, 1] pixel units), training time, the scaling factor.
    ``dtype`` is what the VAE and text encoder are stored in (the transformer stays fp32 until
    ``train`` replaces it).
    """
    from sanatool.arch import check_dtype, preset_config, torch_dtype
    from sanatool.io.modeldir import open_transformer_dir, write_transformer_dir
    from sanatool.io.provenance import write_provenance
    from sanatool.shapes.tiny import IMAGE_SIZE, vae_config, write_tiny_components
    from sanatool.surgery.initialize import random_init_entries
    from sanatool.training.data import load_dataset

    for name, value in (("--steps", steps), ("--batch-size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    if not math.isfinite(lr) or lr <= 0:
        raise InputError(f"--lr must be positive, got {lr}")
    check_dtype(dtype)
    dataset = load_dataset(data_dir)
    if dataset.resolution != IMAGE_SIZE:
        raise InputError(
            f"the tiny VAE is trained on {IMAGE_SIZE}x{IMAGE_SIZE} images, but {data_dir} holds "
            f"{dataset.resolution}x{dataset.resolution}; write the data set with --size {IMAGE_SIZE}"
        )
    if len(dataset) < 2:
        raise InputError(f"{data_dir} has {len(dataset)} image; VAE training needs at least 2")
    check_output_path(out, force, [dataset.root])
    # After every check that needs no model: bad input is refused before seconds of imports.
    import torch
    from diffusers import AutoencoderDC

    pixels = _pixels(dataset, progress)
    holdout = max(1, int(len(pixels) * HOLDOUT_FRACTION))
    train_set, test_set = pixels[:-holdout], pixels[-holdout:]
    torch.manual_seed(seed)
    # channels_last makes the CPU convolutions (oneDNN) markedly faster; the weights are the same.
    vae = AutoencoderDC(**vae_config()).train().to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    loss_value = float("nan")
    for step in range(steps):
        # Cosine decay to 5% of the peak after a short warm-up.
        warm = min(1.0, (step + 1) / 100)
        cosine = 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = lr * warm * cosine
        batch = train_set[torch.randint(len(train_set), (batch_size,), generator=generator)]
        batch = batch.contiguous(memory_format=torch.channels_last)
        recon = vae(batch).sample
        loss = (recon - batch).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            from sanatool.errors import RunFailure

            raise RunFailure(f"VAE training diverged (loss {loss_value}) at step {step + 1}; lower --lr")
        progress("vae", step + 1, steps, loss=f"{loss_value / 2:.4f}")
    seconds = time.perf_counter() - started

    vae.eval()
    with torch.no_grad():
        # Stored precision is what ships: measure the round trip after rounding the weights.
        stored = AutoencoderDC(**vae_config())
        rounded = {k: v.to(torch_dtype(dtype)).float().contiguous() for k, v in vae.state_dict().items()}
        stored.load_state_dict(rounded)
        stored.eval()
        latents = torch.cat([stored.encode(chunk).latent for chunk in pixels.split(256)])
        std = float(latents.std())
        recon = torch.cat(
            [stored.decode(stored.encode(chunk).latent).sample for chunk in test_set.split(256)]
        )
        holdout_l1 = float((recon.clamp(-1, 1) - test_set).abs().mean()) / 2  # [-1, 1] → [0, 1] units
    scaling = 1.0 / std
    stored.register_to_config(scaling_factor=scaling)

    with atomic_output_dir(out, force, [dataset.root]) as tmp:
        write_tiny_components(tmp, seed=seed, dtype=dtype)
        stored.to(torch_dtype(dtype)).save_pretrained(tmp / "vae", safe_serialization=True)
        config = preset_config("tiny")
        write_transformer_dir(tmp / "transformer", config, random_init_entries(config, "fp32", seed), 10**9)
        fingerprint = open_transformer_dir(tmp / "transformer").fingerprint()
        args = {"data": str(dataset.root), "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed}
        write_provenance(
            tmp, None, "train-vae", args, f"train-vae({steps} steps)", fingerprint, origin="tiny"
        )
    return {
        "out": str(Path(out).expanduser().resolve()),
        "steps": steps,
        "images": len(pixels),
        "train_l1": loss_value / 2,
        "holdout_l1": holdout_l1,
        "scaling_factor": scaling,
        "seconds": round(seconds, 1),
        "params": sum(p.numel() for p in vae.parameters()),
    }
