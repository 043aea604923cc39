"""LoRA fine-tuning (``finetune --lora-rank R``): a frozen base with trainable peft adapters.

The adapters are added the way diffusers' SANA LoRA script adds them: peft's ``LoraConfig``
through diffusers' ``PeftAdapterMixin.add_adapter`` on the ``SanaTransformer2DModel`` (Gaussian
``lora_A``, zero ``lora_B``, so step 0 is the base model), every base weight frozen, the adapters
kept in fp32. The frozen base may be held in lower precision (``--base-precision``): bf16, or int8 /
nf4 through bitsandbytes (diffusers' ``BitsAndBytesConfig``, CUDA only).

The output dir holds ``pytorch_lora_weights.safetensors`` as ``SanaPipeline.save_lora_weights``
writes it (loadable with ``SanaPipeline.load_lora_weights(OUT)``) and ``sanatool.json``: the base
model's fingerprint and history, and the adapter's settings. ``--merge`` writes a whole model dir
instead, the adapters fused into the base weights as stored (not the lower-precision copy).
Checkpoints are LoRA dirs too (the adapters and the optimizer state, never the base).

Public helpers for other parts (memory budgets, distillation): :func:`lora_config`,
:func:`add_lora`, :func:`load_base_transformer`, :func:`build_lora_transformer`.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sanatool.errors import InputError
from sanatool.inference.lora import LORA_WEIGHTS_NAME, check_targets
from sanatool.io.provenance import PROVENANCE_NAME
from sanatool.training.options import TrainOptions

if TYPE_CHECKING:
    from sanatool.io.modeldir import ModelDir

LORA_FORMAT = "sanatool-lora/1"


def check_lora_run(opts: TrainOptions, config: dict[str, Any]) -> None:
    """Refuse what a LoRA run cannot do, before anything is loaded or written (options already validated).

    Targets that match no module of the transformer; int8/nf4 without CUDA; options that train or
    keep full weights (``--ema``, ``--train-text-encoder``) or shard them (``--fsdp``).
    """
    from sanatool.distributed import resolve_device

    if opts.base_precision in ("int8", "nf4") and resolve_device(opts.device).type != "cuda":
        raise InputError(
            f"--base-precision {opts.base_precision} is CUDA-only (bitsandbytes quantization); use "
            "--base-precision bf16 on this device, or run on a CUDA GPU"
        )
    if opts.lora_rank is None:
        return
    for flag, given in (
        ("--ema", opts.ema_decay is not None),
        ("--train-text-encoder", opts.train_text_encoder),
        ("--fsdp", opts.fsdp),
    ):
        if given:
            raise InputError(f"{flag} is for full fine-tunes; a LoRA run (--lora-rank) does not take it")
    if opts.base_precision is not None and opts.precision == "fp32":
        raise InputError(
            f"--base-precision {opts.base_precision} computes in bf16; drop --precision fp32 (or the base precision)"
        )
    assert opts.lora_targets is not None
    check_targets(config, opts.lora_targets)


def lora_config(rank: int, alpha: float, targets: tuple[str, ...] | list[str], dropout: float = 0.0) -> Any:
    """peft's ``LoraConfig`` as diffusers' SANA LoRA script builds it (Gaussian init of ``lora_A``, zero ``lora_B``)."""
    from peft import LoraConfig

    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        init_lora_weights="gaussian",
        target_modules=list(targets),
    )


def add_lora(model: Any, config: Any, seed: int = 0) -> Any:
    """Freeze ``model`` and add a trainable adapter (fp32) of ``config``; the init draws from ``seed``.

    Returns the model (adapted in place).
    """
    import torch
    from diffusers.training_utils import cast_training_params

    model.requires_grad_(False)
    devices = [model.device] if model.device.type == "cuda" else []
    # The Gaussian init draws from torch's global generator: seed it, and leave the caller's as it was.
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model.add_adapter(config)
    # peft creates adapters in the base weights' dtype; the trained copy stays fp32 (autocast computes).
    cast_training_params(model, dtype=torch.float32)
    return model


def load_base_transformer(path: Path, variant: str | None, base_precision: str | None, device: Any) -> Any:
    """The frozen base of a LoRA run: fp32, bf16, or bitsandbytes int8/nf4 (loaded onto ``device``, CUDA only)."""
    import torch
    from diffusers import SanaTransformer2DModel

    from sanatool.errors import ModelDirError
    from sanatool.inference.pipeline import load_component

    extra: dict[str, Any] = {}
    dtype = torch.float32
    if base_precision is not None:
        dtype = torch.bfloat16
    if base_precision in ("int8", "nf4"):
        from diffusers import BitsAndBytesConfig

        if base_precision == "int8":
            quant = BitsAndBytesConfig(load_in_8bit=True)
        else:
            quant = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
            )
        extra = {"quantization_config": quant, "device_map": {"": str(device)}}
    try:
        return load_component(SanaTransformer2DModel, path, dtype, variant, **extra)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ModelDirError(f"cannot load the transformer in {path}: {err}") from err


def build_lora_transformer(
    opts: TrainOptions, transformer_path: Path, variant: str | None = None, device: Any = "cpu"
) -> Any:
    """The model a LoRA run trains: the base of ``transformer_path`` in ``--base-precision``, adapters added.

    ``opts`` must have passed :func:`~sanatool.training.options.validate_options` (rank, alpha and
    targets filled in).
    """
    assert opts.lora_rank is not None and opts.lora_alpha is not None and opts.lora_targets is not None
    model = load_base_transformer(transformer_path, variant, opts.base_precision, device)
    config = lora_config(opts.lora_rank, opts.lora_alpha, opts.lora_targets, opts.lora_dropout)
    return add_lora(model, config, opts.seed)


def unwrap(model: Any) -> Any:
    """The transformer inside a DDP wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def lora_state(model: Any) -> dict[str, Any]:
    """The adapter weights on the CPU, keyed as peft saves them (``transformer_blocks.0.attn1.to_q.lora_A.weight``)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu() for k, v in get_peft_model_state_dict(unwrap(model)).items()}


def load_lora_state(model: Any, lora_dir: Path) -> None:
    """Load the adapter weights of a LoRA dir (a checkpoint) into an adapted model, refusing a mismatch."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    file = lora_dir / LORA_WEIGHTS_NAME
    if not file.is_file():
        raise InputError(
            f"the checkpoint {lora_dir} has no {LORA_WEIGHTS_NAME}; it is not a LoRA run's checkpoint"
        )
    prefix = "transformer."
    state = {k.removeprefix(prefix): v for k, v in load_file(str(file)).items()}
    result = set_peft_model_state_dict(unwrap(model), state)
    unexpected = getattr(result, "unexpected_keys", None) or []
    if unexpected or len(state) != len(lora_state(model)):
        raise InputError(
            f"the adapters in {file} do not match this run's --lora-rank/--lora-targets; resume with the same ones"
        )


def adapter_metadata(model: Any) -> dict[str, Any]:
    """peft's config of the adapter, as diffusers stores it in a LoRA file's header."""
    return unwrap(model).peft_config["default"].to_dict()


def write_lora_dir(
    root: Path,
    state: dict[str, Any],
    metadata: dict[str, Any],
    dtype: str,
    base: ModelDir,
    opts: TrainOptions,
    summary: str,
) -> None:
    """Fill ``root`` (an empty dir) with a LoRA: diffusers' ``pytorch_lora_weights.safetensors`` and ``sanatool.json``."""
    from diffusers import SanaPipeline

    from sanatool import __version__
    from sanatool.arch import torch_dtype
    from sanatool.io.outputs import give_usual_mode
    from sanatool.io.provenance import chain_summary

    target = torch_dtype(dtype)
    SanaPipeline.save_lora_weights(
        str(root),
        transformer_lora_layers={k: v.to(target).contiguous() for k, v in state.items()},
        transformer_lora_adapter_metadata=metadata,
    )
    record = {
        "format": LORA_FORMAT,
        "base": {
            "fingerprint": base.fingerprint(),
            "name": base.name,
            "path": str(base.path),
            "history": chain_summary(base.provenance, base.name),
        },
        "lora": {
            "rank": opts.lora_rank,
            "alpha": opts.lora_alpha,
            "targets": list(opts.lora_targets or ()),
            "dropout": opts.lora_dropout,
            "base_precision": opts.base_precision,
            "dtype": dtype,
        },
        "command": opts.command,
        "args": opts.recorded(),
        "summary": summary,
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "sanatool_version": __version__,
    }
    (root / PROVENANCE_NAME).write_text(json.dumps(record, indent=2) + "\n")
    give_usual_mode(root / LORA_WEIGHTS_NAME)  # safetensors writes it private (0600)


def merged_weights(opts: TrainOptions, base: ModelDir, state: dict[str, Any]) -> dict[str, Any]:
    """The base transformer's weights (fp32, as stored, on the CPU) with the trained adapters fused in."""
    from peft import set_peft_model_state_dict

    assert opts.lora_rank is not None and opts.lora_alpha is not None and opts.lora_targets is not None
    model = load_base_transformer(base.transformer.path, base.variant, None, "cpu")
    model.add_adapter(lora_config(opts.lora_rank, opts.lora_alpha, opts.lora_targets))
    set_peft_model_state_dict(model, state)
    model.fuse_lora()
    model.unload_lora()
    return {name: tensor.detach() for name, tensor in model.state_dict().items()}
