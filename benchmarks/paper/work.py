"""What a task does, in a worker process: grow, prune, init, train, held-out loss, eval, importance.

Every function here calls the library the CLI uses and returns plain JSON. :func:`prepare` runs once
in the main process before any worker starts: the training data (the shipped model's own: 12000
renders, seed 0), its latent cache (built once, so two workers never race to build it), and the
held-out batch (renders of another seed with seeded noise and timesteps, identical for every model).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from paper.runner import Task, timed

#: Set in each worker by :func:`init_worker`.
_ENV: Env | None = None
_HELDOUT: dict[str, Any] = {}


@dataclass(frozen=True)
class Env:
    """What every task needs besides its arguments (plain values, so it pickles to the workers)."""

    work: str
    base: str
    seed: int
    batch_size: int
    warmup: int
    sample_steps: int
    guidance: float
    images_per_prompt: int
    per_category: int

    @property
    def data(self) -> Path:
        return Path(self.work) / "data"

    @property
    def cache(self) -> Path:
        return Path(self.work) / "cache"

    @property
    def heldout_file(self) -> Path:
        return Path(self.work) / "heldout.pt"


def init_worker(env: dict[str, Any], threads: int) -> None:
    """Each worker: its torch threads, quiet diffusers, and the environment."""
    import torch
    from diffusers.utils import logging as diffusers_logging

    global _ENV
    torch.set_num_threads(threads)
    # diffusers warns on every model load that accelerate is missing; the tables are what matter.
    diffusers_logging.set_verbosity_error()
    _ENV = Env(**env)


def env() -> Env:
    assert _ENV is not None, "init_worker was not called"
    return _ENV


def execute(task: Task) -> dict[str, Any]:
    """Run one task (in a worker); its result with the seconds it took."""
    kinds = {"grow": grow, "prune": prune, "init": init_scratch, "train": train, "loss": loss,
             "eval": evaluate, "importance": importance}  # fmt: skip
    return timed(lambda: kinds[task.kind](**task.args))


# -- in the main process, once ---------------------------------------------------------------------


def prepare(e: Env, data_size: int, heldout_size: int, heldout_draws: int) -> None:
    """The training data and its cache, and the held-out batch (each skipped when already there)."""
    import torch

    from sanatool.arch import resolve_precision
    from sanatool.inference.pipeline import default_instruction
    from sanatool.io.modeldir import open_model_dir
    from sanatool.shapes.dataset import write_shapes_dataset
    from sanatool.training.cache import EncodeSettings, build_cache
    from sanatool.training.data import load_dataset

    base = open_model_dir(e.base)
    config = dict(base.transformer.config)
    # As prepare_cache in sanatool.training.run keys it, so every training run finds this entry.
    settings = EncodeSettings(complex_human_instruction=default_instruction(config),
                              dtype=resolve_precision("fp32", "cpu"), device="cpu")  # fmt: skip
    for folder in ("models", "samples", "importance"):
        (Path(e.work) / folder).mkdir(parents=True, exist_ok=True)
    marker = Path(e.work) / "data.json"
    wanted = {"data_size": data_size, "heldout_size": heldout_size, "heldout_draws": heldout_draws,
              "seed": e.seed, "base": base.fingerprint()}  # fmt: skip
    if marker.is_file() and json.loads(marker.read_text()) == wanted and e.heldout_file.is_file():
        return
    write_shapes_dataset(e.data, data_size, seed=0, force=True)
    build_cache(base.path, load_dataset(e.data), e.cache, settings)
    heldout_dir = write_shapes_dataset(Path(e.work) / "heldout", heldout_size, seed=1, force=True)
    cache = build_cache(base.path, load_dataset(heldout_dir), e.cache, settings)
    torch.save(noisy_batch(cache, base, heldout_draws, e.seed), e.heldout_file)
    marker.write_text(json.dumps(wanted))


def noisy_batch(cache: Any, base: Any, draws: int, seed: int, items: int | None = None) -> dict[str, Any]:
    """Every item of a latent cache (or its first ``items``) ``draws`` times (item-major), with seeded
    noise and logit-normal timesteps as in training: the held-out batch, and ``prune_subsets.py``'s."""
    import torch
    from diffusers.training_utils import compute_density_for_timestep_sampling

    from sanatool.arch import flow_shift, train_timesteps

    count = cache.count if items is None else min(items, cache.count)
    indices = [i for i in range(count) for _ in range(draws)]
    batch = cache.reader().gather(indices)
    generator = torch.Generator().manual_seed(seed + 7919)  # its own stream, apart from training's
    n = len(indices)
    noise = torch.randn(batch["latents"].shape, generator=generator)
    u = compute_density_for_timestep_sampling(
        "logit_normal", n, logit_mean=0.0, logit_std=1.0, generator=generator
    )
    scheduler = base.component_config("scheduler")
    shift = flow_shift(scheduler)
    time_scale = train_timesteps(scheduler) * float(base.transformer.config.get("timestep_scale", 1.0))
    return {"x0": batch["latents"].float(), "embeds": batch["embeds"].float(), "mask": batch["mask"],
            "noise": noise, "sigmas": shift * u / (1 + (shift - 1) * u), "time_scale": time_scale,
            "draws": draws}  # fmt: skip


# -- tasks -------------------------------------------------------------------------------------------


def grow(source: str, out: str, to: int, strategy: str, source_layers: int | None = None) -> dict[str, Any]:
    from sanatool.surgery.grow import grow_model

    grow_model(source, out, to, strategy, source_layers=source_layers, seed=env().seed, force=True)
    return {"path": out}


def prune(
    source: str, out: str, keep: int, importance: str | None = None, strategy: str | None = None
) -> dict[str, Any]:
    from sanatool.surgery.prune import prune_model

    path = prune_model(source, out, keep=keep, importance=importance, strategy=strategy, force=True)
    kept = json.loads((path / "sanatool.json").read_text())["chain"][-1]["args"]["kept"]
    return {"path": out, "kept": kept}


def init_scratch(out: str, depth: int) -> dict[str, Any]:
    """A random-init transformer of ``depth`` blocks with the base's components (VAE, trained text encoder)."""
    from sanatool.io.modeldir import open_model_dir
    from sanatool.io.outputs import atomic_output_dir
    from sanatool.training.model_io import init_transformer, write_model_dir

    e = env()
    base = open_model_dir(e.base)
    config = {**dict(base.transformer.config), "num_layers": depth}
    with atomic_output_dir(Path(out), force=True) as tmp:
        write_model_dir(tmp, base, config, init_transformer(config, e.seed).state_dict(), "fp32", "5GB", None,
                        "init", {"num_layers": depth, "seed": e.seed}, f"init(random, {depth} blocks)",
                        origin="tiny")  # fmt: skip
    return {"path": out}


def train(
    source: str,
    out: str,
    steps: int,
    optimizer: str,
    lr: float,
    schedule: str,
    ema: float | None = None,
    warmup: int | None = None,
    save_every: int = 0,
    teacher: str | None = None,
) -> dict[str, Any]:
    """Fine-tune (or train) ``source``; the loss curve and the held-out loss of the result and checkpoints.

    A NaN stop is a result (``nan_at``), not a failure: instability is one of the things measured.
    """
    from sanatool.errors import RunFailure
    from sanatool.training import TrainOptions, run_training
    from sanatool.training.checkpoints import list_checkpoints, read_checkpoint_meta
    from sanatool.training.logs import LOSS_LOG, read_log

    e = env()
    extra = {"teacher": Path(teacher)} if teacher else {}
    opts = TrainOptions(
        data=e.data, out=Path(out), steps=steps, source=source, optimizer=optimizer, lr=lr,
        batch_size=e.batch_size, seed=e.seed, cache_dir=e.cache, precision="fp32", ema_decay=ema,
        warmup_steps=min(e.warmup if warmup is None else warmup, steps - 1), lr_schedule=schedule,
        save_every=save_every, keep_checkpoints=max(1, steps // save_every) if save_every else 2, force=True,
        **extra,
    )  # fmt: skip
    try:
        run_training(opts)
    except RunFailure as err:
        records = read_log(opts.run_dir() / LOSS_LOG)
        return {"losses": [float(r["loss"]) for r in records], "nan_at": len(records) + 1, "error": str(err)}
    result: dict[str, Any] = {"losses": [float(r["loss"]) for r in read_log(Path(out) / LOSS_LOG)],
                              "nan_at": None, "heldout": heldout_losses(out), "checkpoints": {}}  # fmt: skip
    for checkpoint in list_checkpoints(opts.run_dir()) if save_every else []:
        step = int(read_checkpoint_meta(checkpoint)["step"])
        if step < steps:
            result["checkpoints"][str(step)] = heldout_losses(str(checkpoint))
    return result


def loss(model: str) -> dict[str, Any]:
    return {"heldout": heldout_losses(model)}


def heldout_losses(model: str) -> list[float]:
    """Flow-matching loss per held-out image (mean over its draws), the same noise and timesteps for every model."""
    import torch

    from sanatool.io.modeldir import open_model_dir
    from sanatool.training.model_io import load_transformer

    if not _HELDOUT:
        _HELDOUT.update(torch.load(env().heldout_file))
    h = _HELDOUT
    net = load_transformer(open_model_dir(model).transformer.path).eval()
    per_draw = []
    with torch.inference_mode():
        for start in range(0, len(h["x0"]), 256):
            part = slice(start, start + 256)
            sig = h["sigmas"][part].view(-1, 1, 1, 1)
            noisy = (1.0 - sig) * h["x0"][part] + sig * h["noise"][part]
            pred = net(noisy, encoder_hidden_states=h["embeds"][part], timestep=h["sigmas"][part] * h["time_scale"],
                       encoder_attention_mask=h["mask"][part], return_dict=False)[0]  # fmt: skip
            target = h["noise"][part] - h["x0"][part]
            per_draw.append(((pred.float() - target) ** 2).mean(dim=(1, 2, 3)))
    per_image = torch.cat(per_draw).view(-1, h["draws"]).mean(dim=1)
    return [round(float(v), 7) for v in per_image]


def evaluate(model: str, name: str) -> dict[str, Any]:
    """The evaluation suite × ``images_per_prompt`` images, scored per prompt (GenEval's protocol)."""
    from sanatool.samples.evaluate import evaluate_samples_dir
    from sanatool.samples.stats import prompt_accuracy
    from sanatool.samples.writer import sample_to_dir

    e = env()
    out = sample_to_dir(
        model, eval_prompts(e.per_category), Path(e.work) / "samples" / name, candidates=e.images_per_prompt,
        steps=e.sample_steps, guidance=e.guidance, seed=e.seed, batch_size=64, device="cpu", force=True,
    )  # fmt: skip
    report = evaluate_samples_dir(out)
    if report.problems:
        raise RuntimeError(f"{out}: {report.problems[:3]}")
    return {"per_prompt": {f"{c}\t{p}": v for (c, p), v in prompt_accuracy(report).items()}}


def eval_prompts(per_category: int | None) -> list[Any]:
    """The evaluation suite (``per_category`` None), or its first prompts of each category."""
    from sanatool.shapes import CATEGORIES, evaluation_suite

    suite = evaluation_suite()
    if per_category is None:
        return list(suite)
    return [item for c in CATEGORIES for item in [i for i in suite if i.category == c][:per_category]]


def importance(model: str, out: str, metric: str, prompts: int) -> dict[str, Any]:
    from sanatool.inference.importance import importance_to_file

    e = env()
    _, _, result = importance_to_file(
        model, out, force=True, metric=metric, num_prompts=prompts, steps=e.sample_steps,
        guidance=e.guidance, seed=e.seed, batch_size=16, device="cpu",
    )  # fmt: skip
    return {"path": out, "scores": list(result.scores), "ranking": list(result.ranking),
            "per_timestep": [list(row) for row in result.per_timestep], "extra": result.extra}  # fmt: skip


def env_dict(e: Env) -> dict[str, Any]:
    return asdict(e)
