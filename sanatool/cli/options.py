"""Options that several commands share, each declared once.

Single options (``--force``, ``--device``, ``--max-shard-size`` …) are ``typer.Option`` objects
that commands use as parameter defaults (Typer copies them per command). Whole *option sets*
(``train``/``finetune``, ``sample``/``importance``) are added to a command by :func:`with_options`:
the command declares a ``shared`` parameter where the set belongs in its ``--help``, and receives
the set's values as one dict in it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])

FORCE = typer.Option(False, "--force", help="Replace an existing output.")
JSON = typer.Option(False, "--json", help="Print a JSON summary instead of the path.")
DRY_RUN = typer.Option(False, "--dry-run", help="Print the plan and write nothing.")
DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N (cuda:LOCAL_RANK under torchrun).")
MAX_SHARD_SIZE = typer.Option("5GB", "--max-shard-size", help="Largest safetensors shard, e.g. 5GB, 500MB.")
OUT_MODEL_DIR = typer.Option(..., "--out", "-o", help="Output model dir (must not exist unless --force).")
MODEL_DIR_HELP = "Model dir (pipeline or bare transformer) or builtin:tiny-shapes."
PIPELINE_HELP = "Pipeline dir (with text encoder and VAE) or builtin:tiny-shapes."


@dataclass(frozen=True)
class Opt:
    """One option of a set: the parameter name the command receives, its type, and its declaration."""

    name: str
    annotation: Any
    declaration: Any


def with_options(*options: Opt) -> Callable[[F], F]:
    """Add ``options`` to a command's signature, where its ``shared`` parameter stands.

    The command is called with their values as ``shared={name: value, ...}``.
    """

    def decorate(command: F) -> F:
        signature = inspect.signature(command, eval_str=True)
        params: list[inspect.Parameter] = []
        for param in signature.parameters.values():
            if param.name != "shared":
                params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY))
                continue
            params += [
                inspect.Parameter(
                    opt.name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=opt.declaration,
                    annotation=opt.annotation,
                )
                for opt in options
            ]
        if len(params) != len(signature.parameters) - 1 + len(options):
            raise TypeError(f"{command.__name__} needs a `shared` parameter for its option set")

        @functools.wraps(command)
        def run(**kwargs: Any) -> Any:
            shared = {opt.name: kwargs.pop(opt.name) for opt in options}
            return command(**kwargs, shared=shared)

        # Typer reads the signature (with real types, not the strings of postponed annotations).
        run.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        run.__annotations__ = {}
        return run  # type: ignore[return-value]

    return decorate


# ``train`` and ``finetune``: every TrainOptions field both commands take (names are its fields).
TRAINING_OPTIONS = (
    Opt(
        "data",
        Path | None,
        typer.Option(
            None, "--data", "-d", help="Image folder with metadata.jsonl (file_name, text per line)."
        ),
    ),
    Opt(
        "out",
        Path | None,
        typer.Option(None, "--out", "-o", help="Output pipeline dir (must not exist unless --force)."),
    ),
    Opt("steps", int, typer.Option(100, "--steps", help="Optimizer steps to train.")),
    Opt("weight_decay", float, typer.Option(0.0, "--weight-decay", help="Decoupled weight decay.")),
    Opt("batch_size", int, typer.Option(4, "--batch-size", "-b", help="Images per process per micro-step.")),
    Opt(
        "grad_accum",
        int,
        typer.Option(1, "--grad-accum", help="Micro-steps per optimizer step (gradient accumulation)."),
    ),
    Opt(
        "precision",
        str,
        typer.Option("auto", "--precision", help="bf16 (autocast, fp32 master weights), fp32, or auto."),
    ),
    Opt(
        "grad_checkpointing",
        bool,
        typer.Option(False, "--grad-checkpointing", help="Recompute block activations in backward."),
    ),
    Opt(
        "save_every",
        int,
        typer.Option(0, "--save-every", help="Save a resumable checkpoint every N steps (0: never)."),
    ),
    Opt(
        "keep_checkpoints",
        int,
        typer.Option(2, "--keep-checkpoints", help="How many of the newest checkpoints to keep."),
    ),
    Opt(
        "resume",
        bool,
        typer.Option(False, "--resume", help="Continue bit for bit from the newest checkpoint of this run."),
    ),
    Opt(
        "seed",
        int,
        typer.Option(0, "--seed", help="Seed of data order, noise, timesteps and caption dropout."),
    ),
    Opt(
        "cache_dir",
        Path | None,
        typer.Option(
            None, "--cache-dir", help="Latent/text-embedding cache (default: DATA/.sanatool-cache)."
        ),
    ),
    Opt(
        "checkpoint_dir",
        Path | None,
        typer.Option(
            None, "--checkpoint-dir", help="Checkpoints and live loss log (default: OUT.checkpoints)."
        ),
    ),
    Opt(
        "resolution",
        int | None,
        typer.Option(None, "--resolution", help="Resize and centre-crop every image to N×N."),
    ),
    Opt(
        "caption_dropout",
        float,
        typer.Option(0.1, "--caption-dropout", help="Probability of training on the empty caption (CFG)."),
    ),
    Opt(
        "weighting_scheme",
        str,
        typer.Option(
            "logit_normal",
            "--weighting-scheme",
            help="Timestep density: logit_normal, mode, uniform, sigma_sqrt, cosmap.",
        ),
    ),
    Opt(
        "logit_mean",
        float,
        typer.Option(0.0, "--logit-mean", help="Mean of the logit-normal timestep density."),
    ),
    Opt(
        "logit_std", float, typer.Option(1.0, "--logit-std", help="Std of the logit-normal timestep density.")
    ),
    Opt(
        "ema_decay",
        float | None,
        typer.Option(
            None, "--ema", help="Keep EMA weights with this decay (e.g. 0.999); the output gets them."
        ),
    ),
    Opt(
        "max_grad_norm", float, typer.Option(1.0, "--max-grad-norm", help="Gradient clipping norm (0: off).")
    ),
    Opt("warmup_steps", int, typer.Option(0, "--warmup-steps", help="Linear learning-rate warm-up steps.")),
    Opt(
        "lr_schedule",
        str,
        typer.Option("constant", "--lr-schedule", help="After warm-up: constant, or cosine decay to 10%."),
    ),
    Opt("fsdp", bool, typer.Option(False, "--fsdp", help="Shard the model with FSDP2 (under torchrun).")),
    Opt(
        "train_text_encoder",
        bool,
        typer.Option(
            False,
            "--train-text-encoder",
            help="Train the (small, from-scratch) text encoder with the transformer; the output gets it.",
        ),
    ),
    Opt("device", str, DEVICE),
    Opt(
        "dtype",
        str | None,
        typer.Option(
            None, "--dtype", help="Output weights: fp32, bf16, fp16 (default: the input's; fp32 for train)."
        ),
    ),
    Opt("max_shard_size", str, MAX_SHARD_SIZE),
    Opt(
        "dry_run",
        bool,
        typer.Option(False, "--dry-run", help="Print the memory budget per device and exit (needs no data)."),
    ),
    Opt(
        "force",
        bool,
        typer.Option(False, "--force", help="Replace an existing output (and a finished run's checkpoints)."),
    ),
    Opt("as_json", bool, JSON),
)

# ``sample`` and ``importance``: how the sampler runs.
SAMPLER_OPTIONS = (
    Opt("steps", int, typer.Option(20, "--steps", help="Sampler steps.")),
    Opt(
        "guidance",
        float,
        typer.Option(4.5, "--guidance", help="Classifier-free guidance scale (≤ 1 turns it off)."),
    ),
    Opt("seed", int, typer.Option(0, "--seed", help="Base seed; each image's own seed derives from it.")),
    Opt(
        "size",
        tuple[int, int] | None,
        typer.Option(
            None, "--size", help="Image height and width in pixels (default: the model's native size)."
        ),
    ),
    Opt("batch_size", int, typer.Option(8, "--batch-size", help="Images per transformer batch.")),
    Opt(
        "sampler",
        str,
        typer.Option("flow-dpm", "--sampler", help="flow-dpm (the pipeline's own) or flow-euler."),
    ),
    Opt("device", str, DEVICE),
    Opt(
        "dtype",
        str,
        typer.Option("auto", "--dtype", help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16, fp16."),
    ),
    Opt(
        "instruction",
        bool | None,
        typer.Option(
            None,
            "--instruction/--no-instruction",
            help="Prepend SANA's complex human instruction to prompts (default: on for real SANA models, "
            "off for the shapes world).",
        ),
    ),
)


def sampler_settings(shared: dict[str, Any]) -> dict[str, Any]:
    """The sampler options as the library's keyword arguments (``--size`` unset → ``None``)."""
    size = shared["size"]
    return {**shared, "size": None if size is None or size[0] is None else (int(size[0]), int(size[1]))}
