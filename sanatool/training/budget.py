"""The memory budget of a training run (``--dry-run``): weights, gradients, optimizer state, activations.

Weights, gradients and EMA follow from the parameter shapes; optimizer state comes from the
optimizers' own :func:`sanatool.optim.estimate_state_bytes`. Activations are *measured*, not
guessed: the transformer runs one forward pass on fake CPU tensors (PyTorch's ``FakeTensorMode``:
shapes and dtypes only, no memory, seconds even for 4.8B) at the requested batch, latent size and
caption length, with its weights in the dtypes the real step holds and under the same bf16
autocast, and every tensor autograd saves for the backward pass is counted once. With gradient
checkpointing only each block's input is kept, plus one block's activations while it is
recomputed. Transient buffers (attention scores, optimizer temporaries) and the CUDA context add
roughly 1–2 GB on a GPU; the table says so rather than pretending to be exact.

The total is the peak, not the sum of the rows: autocast's bf16 copies of trained weights live
during the forward pass only (PyTorch drops its cast cache when the autocast region ends, before
the backward pass fills the gradients), so the peak is the persistent memory plus the larger of
(forward copies + activations) and (gradients + activations).

A LoRA run (``lora_rank``) trains adapters only: ``rank × (in + out)`` parameters per targeted
linear (peft's rule for ``--lora-targets``), kept in fp32 with their gradients and optimizer state;
the frozen base is held in ``--base-precision``: fp32 (none given), bf16 (2 bytes/param), or
bitsandbytes int8 (1 byte/param plus an fp32 scale per row) or nf4 (half a byte/param plus an fp32
absmax per 64 weights) for the ``nn.Linear`` weights, which is what bitsandbytes quantizes; every
other parameter (SANA's 1×1 convolutions of the feed-forward, norms, embeddings) stays bf16.
Activations are measured with the base frozen in its dtype and peft's fp32 adapters in place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: GPU sizes the dry run reports a fit for (GB, decimal, as GPUs are sold).
GPU_SIZES_GB = (24, 48, 80)
#: Headroom left for the CUDA context, allocator fragmentation and transient buffers.
OVERHEAD_BYTES = int(1.5e9)


#: Bytes of a frozen base's ``nn.Linear`` weight per parameter, and of its per-row / per-block scales.
NF4_BLOCK = (
    64  # bitsandbytes' default 4-bit block size; diffusers' BitsAndBytesConfig keeps it (no double quant)
)


@dataclass
class Budget:
    """A memory budget per device, in bytes, with the settings it was computed for.

    ``forward_only`` rows (autocast copies) and ``backward_only`` rows (gradients) are never held at
    once; :attr:`total` is the peak.
    """

    rows: dict[str, int]
    settings: dict[str, Any]
    forward_only: tuple[str, ...] = ()
    backward_only: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        """The peak: persistent rows + the larger of the forward-only and backward-only rows (activations in both)."""
        phased = set(self.forward_only) | set(self.backward_only)
        persistent = sum(v for k, v in self.rows.items() if k not in phased)
        forward = sum(self.rows[k] for k in self.forward_only)
        backward = sum(self.rows[k] for k in self.backward_only)
        return persistent + max(forward, backward)

    def fits(self) -> dict[str, bool]:
        """For each GPU size: does the total plus overhead fit?"""
        return {f"{size}GB": self.total + OVERHEAD_BYTES <= size * 10**9 for size in GPU_SIZES_GB}

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form: rows, total, overhead allowance and fit per GPU size."""
        return {
            "settings": self.settings,
            "bytes": dict(self.rows),
            "total_bytes": self.total,
            "forward_only": list(self.forward_only),
            "backward_only": list(self.backward_only),
            "overhead_allowance_bytes": OVERHEAD_BYTES,
            "fits": self.fits(),
        }


def _lora_config(rank: int, targets: tuple[str, ...]) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets))


def _trained_weight_copy(tensor: Any, param_ids: set[int]) -> bool:
    """Is ``tensor`` autocast's cast of a trained parameter (``ToCopyBackward0`` straight from its leaf)?"""
    fn = tensor.grad_fn
    if fn is None or type(fn).__name__ != "ToCopyBackward0":
        return False
    return any(
        id(getattr(nxt, "variable", None)) in param_ids for nxt, _ in fn.next_functions if nxt is not None
    )


def _saved_activation_bytes(
    config: dict[str, Any],
    batch: int,
    side: int,
    text_len: int,
    dtype: Any,
    checkpointing: bool,
    lora: tuple[int, tuple[str, ...]] | None = None,
    base_dtype: Any = None,
) -> int:
    """Bytes autograd saves in one forward pass of the transformer, measured on fake CPU tensors.

    The model is built on the meta device, then every parameter becomes a fake CPU tensor (shape and
    dtype, no memory) in the dtype the real step holds it: trained weights fp32, a LoRA run's frozen
    base in ``base_dtype`` (fp32 when ``None``). With ``dtype`` bf16 the pass runs under CPU autocast,
    as the step does: autocast does not apply to meta tensors, and without it a bf16 base plus fp32
    adapters (or SANA's fp32 linear attention) computes in fp32 and saves twice the bytes.
    ``lora`` = (rank, targets): the base frozen and peft's adapters added, as a LoRA run trains it.
    """
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from sanatool.surgery.initialize import build_meta_transformer

    model = build_meta_transformer(config)
    if lora is not None:
        model.requires_grad_(False)
        with torch.device("meta"):
            model.add_adapter(_lora_config(*lora))
    if checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    frozen = base_dtype or torch.float32
    saved: dict[int, int] = {}
    keep: list[Any] = []
    with FakeTensorMode():
        for module in model.modules():
            for name, param in list(module._parameters.items()):
                if param is not None:
                    held = torch.float32 if param.requires_grad else frozen
                    module._parameters[name] = torch.nn.Parameter(
                        torch.empty(param.shape, dtype=held), requires_grad=param.requires_grad
                    )
            for name, buffer in list(module._buffers.items()):
                if buffer is not None:
                    module._buffers[name] = torch.empty(buffer.shape, dtype=buffer.dtype)
        param_ids = {id(p) for p in model.parameters()}

        def pack(tensor: Any) -> Any:
            base = tensor._base if tensor._base is not None else tensor
            # Weights, their views and autocast's cached copies of trained weights (a row of their own)
            # are not activations; a frozen fp32 weight's bf16 copy, cast anew per call, is.
            if id(base) not in param_ids and not _trained_weight_copy(base, param_ids):
                saved[id(base)] = max(saved.get(id(base), 0), base.numel() * base.element_size())
                keep.append(base)  # hold a reference so ids stay unique during the pass
            return tensor

        # The step's inputs: fp32 noisy latents and caption embeddings (autocast casts them down).
        hidden = torch.empty(batch, int(config["in_channels"]), side, side)
        text = torch.empty(batch, text_len, int(config["caption_channels"]))
        mask = torch.ones(batch, text_len, dtype=torch.long)
        timestep = torch.ones(batch)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
        with autocast, torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(hidden, encoder_hidden_states=text, timestep=timestep, encoder_attention_mask=mask)
    return sum(saved.values())


def activation_bytes(
    config: dict[str, Any],
    batch: int,
    side: int,
    text_len: int,
    dtype: Any,
    checkpointing: bool,
    lora: tuple[int, tuple[str, ...]] | None = None,
    base_dtype: Any = None,
) -> int:
    """Peak activation memory of one micro-batch's forward + backward (see the module docstring).

    ``dtype`` bf16 means the step runs under bf16 autocast; ``base_dtype`` is a LoRA run's frozen base.
    """
    args = (config, batch, side, text_len, dtype)
    full = _saved_activation_bytes(*args, checkpointing=False, lora=lora, base_dtype=base_dtype)
    if not checkpointing:
        return full
    # With checkpointing the hooks see only what lives outside the blocks.
    outside = _saved_activation_bytes(*args, checkpointing=True, lora=lora, base_dtype=base_dtype)
    layers = int(config["num_layers"])
    patch = int(config.get("patch_size", 1))
    tokens = (side // patch) ** 2
    width = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    element = dtype.itemsize
    block_inputs = layers * batch * tokens * width * element
    one_block = max(0, full - outside) // layers
    return outside + block_inputs + one_block


def adapter_shapes(model: Any, rank: int, targets: tuple[str, ...]) -> list[tuple[int, ...]]:
    """The ``lora_A`` / ``lora_B`` weight shapes peft adds for ``targets`` (its matching rule) to ``model``.

    Linears get ``[rank, in]`` and ``[out, rank]``; ungrouped convolutions (SANA's 1×1 feed-forward)
    ``[rank, in, k, k]`` and ``[out, rank, 1, 1]``.
    """
    import torch

    shapes: list[tuple[int, ...]] = []
    for name, module in model.named_modules():
        if not any(name == t or name.endswith(f".{t}") for t in targets):
            continue
        if isinstance(module, torch.nn.Linear):
            shapes += [(rank, module.in_features), (module.out_features, rank)]
        elif isinstance(module, torch.nn.Conv2d) and module.groups == 1:
            shapes += [(rank, module.in_channels, *module.kernel_size), (module.out_channels, rank, 1, 1)]
    return shapes


def frozen_base_bytes(model: Any, base_precision: str | None) -> int:
    """Bytes of a LoRA run's frozen base: fp32 (``None``), bf16, or int8/nf4 ``nn.Linear`` weights with the rest bf16."""
    import torch

    params = sum(p.numel() for p in model.parameters())
    if base_precision is None:
        return params * 4
    if base_precision == "bf16":
        return params * 2
    quantized = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            numel, rows = module.weight.numel(), module.out_features
            scales = rows * 4 if base_precision == "int8" else math.ceil(numel / NF4_BLOCK) * 4
            quantized += (numel if base_precision == "int8" else math.ceil(numel / 2)) + scales
            params -= numel  # its bias (if any) stays bf16 with the other parameters
    return quantized + params * 2


def memory_budget(
    config: dict[str, Any],
    batch_size: int,
    optimizer: str,
    precision: str = "bf16",
    grad_checkpointing: bool = False,
    ema: bool = False,
    latent_side: int | None = None,
    text_len: int = 300,
    shards: int = 1,
    encoders_bytes: int | None = None,
    lora_rank: int | None = None,
    lora_targets: tuple[str, ...] | None = None,
    base_precision: str | None = None,
    teacher_config: dict[str, Any] | None = None,
    grad_accum: int = 1,
) -> Budget:
    """The per-device memory of training ``config`` with the given settings.

    ``latent_side`` defaults to the config's ``sample_size``; ``shards`` > 1 divides weights,
    gradients, optimizer state and EMA (FSDP over that many devices). Master weights and
    gradients are fp32; ``bf16`` precision adds the bf16 weight copies autocast keeps during the
    forward pass and halves the activations. ``encoders_bytes`` (text encoder + VAE) is reported
    as the separate, earlier cache phase, not added to the training total. ``lora_rank`` budgets a
    LoRA run (adapters on ``lora_targets``, the base frozen in ``base_precision``; see the module
    docstring); ``teacher_config`` adds a frozen distillation teacher, held as the frozen base is (a
    full fine-tune's teacher: in the compute dtype). With
    ``grad_accum`` > 1 later micro-steps run their forward pass beside the gradients of earlier ones,
    so nothing is phased.
    """
    import torch

    from sanatool.optim import estimate_state_bytes
    from sanatool.surgery.initialize import build_meta_transformer
    from sanatool.training.options import DEFAULT_LORA_TARGETS

    model = build_meta_transformer(config)
    shapes = [tuple(p.shape) for p in model.parameters()]
    params = sum(math.prod(shape) for shape in shapes)
    side = int(latent_side or config.get("sample_size") or 32)
    # A lowered base computes under autocast whatever --precision says (the Trainer's rule).
    autocast = precision == "bf16" or (lora_rank is not None and base_precision is not None)
    act_dtype = torch.bfloat16 if autocast else torch.float32
    forward_only: list[str] = []
    backward_only: list[str] = []
    lora = None
    if lora_rank is None:
        rows = {
            "weights (fp32 master)": params * 4 // shards,
            "gradients (fp32)": params * 4 // shards,
            f"optimizer state ({optimizer})": int(estimate_state_bytes(optimizer, shapes)) // shards,
        }
        backward_only.append("gradients (fp32)")
        if precision == "bf16":
            rows["weights (bf16 autocast copies)"] = params * 2
            forward_only.append("weights (bf16 autocast copies)")
        if ema:
            rows["EMA weights (fp32)"] = params * 4 // shards
        trained = params
    else:
        targets = tuple(lora_targets or DEFAULT_LORA_TARGETS)
        lora = (lora_rank, targets)
        adapters = adapter_shapes(model, lora_rank, targets)
        trained = sum(math.prod(shape) for shape in adapters)
        rows = {
            f"base weights (frozen, {base_precision or 'fp32'})": frozen_base_bytes(model, base_precision),
            f"LoRA adapters (fp32, rank {lora_rank})": trained * 4,
            "gradients (fp32, adapters)": trained * 4,
            f"optimizer state ({optimizer}, adapters)": int(estimate_state_bytes(optimizer, adapters)),
        }
        backward_only.append("gradients (fp32, adapters)")
    teacher_params = None
    if teacher_config is not None:
        teacher = build_meta_transformer(teacher_config)
        teacher_params = sum(p.numel() for p in teacher.parameters())
        held = base_precision or ("bf16" if precision == "bf16" else None)
        rows[f"teacher weights (frozen, {held or 'fp32'})"] = frozen_base_bytes(teacher, held)
    base_dtype = torch.bfloat16 if lora is not None and base_precision is not None else None
    rows["activations"] = activation_bytes(
        config, batch_size, side, text_len, act_dtype, grad_checkpointing, lora=lora, base_dtype=base_dtype
    )
    settings = {
        "params": params,
        "trained_params": trained,
        "mode": "full" if lora_rank is None else "lora",
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "latent_side": side,
        "text_len": text_len,
        "optimizer": optimizer,
        "precision": precision,
        "grad_checkpointing": grad_checkpointing,
        "ema": ema,
        "shards": shards,
    }
    if lora is not None:
        settings.update(
            lora_rank=lora_rank, lora_targets=list(lora[1]), base_precision=base_precision or "fp32"
        )
    if teacher_params is not None:
        settings["teacher_params"] = teacher_params
    if encoders_bytes is not None:
        settings["cache_phase_encoders_bytes"] = encoders_bytes
    if grad_accum > 1:
        forward_only, backward_only = [], []
    return Budget(rows, settings, tuple(forward_only), tuple(backward_only))
