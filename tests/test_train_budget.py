"""--dry-run budgets of every mode: full, LoRA (rank × (in + out) per target), frozen base precisions, teacher."""

from __future__ import annotations

import json
import math

import pytest

from sanatool.arch import preset_config


@pytest.fixture(scope="module")
def tiny():
    return preset_config("tiny")


def _budget(config, **kwargs):
    from sanatool.training.budget import memory_budget

    settings = {"batch_size": 2, "optimizer": "adamw", "precision": "bf16", "grad_checkpointing": True}
    return memory_budget(config, **{**settings, **kwargs})


def test_lora_trains_rank_times_in_plus_out_per_targeted_linear_only(tiny):
    rank = 4
    budget = _budget(tiny, lora_rank=rank)  # default targets: to_q, to_k, to_v of attn1 and attn2
    # tiny: every targeted projection is 128 → 128; 6 per block, 8 blocks.
    adapters = 8 * 6 * rank * (128 + 128)
    assert budget.settings["trained_params"] == adapters and budget.settings["mode"] == "lora"
    rows = budget.rows
    assert rows[f"LoRA adapters (fp32, rank {rank})"] == rows["gradients (fp32, adapters)"] == 4 * adapters
    # AdamW: two fp32 moments per adapter parameter, and a step counter per tensor.
    assert rows["optimizer state (adamw, adapters)"] == 8 * adapters + 4 * 8 * 6 * 2
    assert rows["base weights (frozen, fp32)"] == 4 * budget.settings["params"]
    wider = _budget(tiny, lora_rank=rank, lora_targets=("to_q", "to_k", "to_v", "to_out.0", "conv_point"))
    assert wider.settings["trained_params"] > adapters
    full = _budget(tiny)
    assert budget.rows["activations"] <= full.rows["activations"]  # frozen linears keep no inputs


def test_a_quantized_base_counts_linears_at_their_bytes_and_the_rest_at_bf16(tiny):
    import torch

    from sanatool.surgery.initialize import build_meta_transformer
    from sanatool.training.budget import NF4_BLOCK

    model = build_meta_transformer(tiny)
    params = sum(p.numel() for p in model.parameters())
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    weights = sum(m.weight.numel() for m in linears)
    rows = sum(m.out_features for m in linears)
    expected = {
        "bf16": 2 * params,
        "int8": weights + 4 * rows + 2 * (params - weights),
        "nf4": sum(
            math.ceil(m.weight.numel() / 2) + 4 * math.ceil(m.weight.numel() / NF4_BLOCK) for m in linears
        )
        + 2 * (params - weights),
    }
    for precision, value in expected.items():
        budget = _budget(tiny, lora_rank=8, base_precision=precision)
        assert budget.rows[f"base weights (frozen, {precision})"] == value
    assert expected["nf4"] < expected["int8"] < expected["bf16"]


def test_the_peak_holds_autocast_copies_or_gradients_never_both(tiny):
    budget = _budget(tiny)
    rows = budget.rows
    copies, grads = rows["weights (bf16 autocast copies)"], rows["gradients (fp32)"]
    assert budget.total == sum(rows.values()) - min(copies, grads)
    # Accumulating micro-steps run forward passes beside the gradients already there.
    accumulated = _budget(tiny, grad_accum=2)
    assert accumulated.total == sum(accumulated.rows.values())
    fp32 = _budget(tiny, precision="fp32")
    assert "weights (bf16 autocast copies)" not in fp32.rows


def test_dry_run_budgets_a_teacher_and_refuses_one_of_another_width(cli, tiny_pipeline, tmp_path):
    res = cli("finetune", tiny_pipeline, "--dry-run", "--json", "--teacher", tiny_pipeline)
    assert res.code == 0, res.stderr
    budget = json.loads(res.stdout)
    params = budget["settings"]["params"]
    assert (
        budget["bytes"]["teacher weights (frozen, bf16)"]
        == 2 * params
        == 2 * budget["settings"]["teacher_params"]
    )
    table = cli("finetune", tiny_pipeline, "--dry-run", "--teacher", tiny_pipeline)
    assert table.code == 0 and "teacher weights" in table.stdout and "total (peak)" in table.stdout

    from sanatool.io.modeldir import write_transformer_dir
    from sanatool.surgery.initialize import random_init_entries

    config = {**preset_config("tiny"), "in_channels": 4, "out_channels": 4}
    write_transformer_dir(tmp_path / "other", config, random_init_entries(config, "fp32", 0), 10**9)
    res = cli("finetune", tiny_pipeline, "--dry-run", "--teacher", tmp_path / "other")
    assert res.code == 2 and "in_channels 4 (student 8)" in res.stderr, res.stderr


def test_dry_run_budgets_a_lora_run_on_an_nf4_base_without_cuda(cli, tiny_pipeline):
    res = cli(
        "finetune", tiny_pipeline, "--dry-run", "--json", "--lora-rank", "4", "--base-precision", "nf4",
        "--grad-checkpointing", "--teacher", tiny_pipeline,
    )  # fmt: skip
    assert res.code == 0, res.stderr
    budget = json.loads(res.stdout)
    settings, rows = budget["settings"], budget["bytes"]
    assert settings["mode"] == "lora" and settings["trained_params"] == 8 * 6 * 4 * 256
    assert settings["base_precision"] == "nf4" and settings["lora_targets"] == ["to_k", "to_q", "to_v"]
    # The teacher is held as the student's base is.
    assert rows["teacher weights (frozen, nf4)"] == rows["base weights (frozen, nf4)"]
    assert (
        "gradients (fp32)" not in rows
        and rows["gradients (fp32, adapters)"] == 4 * settings["trained_params"]
    )


def _real_saved_bytes(config, side, text_len, lora_rank, base_dtype):
    """Bytes autograd saves in a real bf16-autocast forward pass of ``config`` (random weights), by storage."""
    import torch

    from sanatool.surgery.initialize import build_meta_transformer
    from sanatool.training.lora import add_lora, lora_config
    from sanatool.training.options import DEFAULT_LORA_TARGETS

    torch.manual_seed(0)
    model = build_meta_transformer(config).to_empty(device="cpu")
    for param in model.parameters():
        torch.nn.init.normal_(param, std=0.02)
    if lora_rank is not None:
        model.to(base_dtype)
        add_lora(model, lora_config(lora_rank, float(lora_rank), DEFAULT_LORA_TARGETS))
    model.train()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}
    keep = []

    copies: set[int] = set()

    def pack(tensor):
        storage = tensor.untyped_storage()
        # autocast's bf16 copies of trained weights are the budget's "autocast copies" row, not activations
        fn = (tensor._base if tensor._base is not None else tensor).grad_fn
        if fn is not None and type(fn).__name__ == "ToCopyBackward0":
            if hasattr(fn.next_functions[0][0], "variable"):
                copies.add(storage.data_ptr())
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
            keep.append(tensor)
        return tensor

    hidden = torch.randn(1, int(config["in_channels"]), side, side)
    text = torch.randn(1, text_len, int(config["caption_channels"]))
    mask = torch.ones(1, text_len, dtype=torch.long)
    with (
        torch.autocast("cpu", dtype=torch.bfloat16),
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
    ):
        model(
            hidden, encoder_hidden_states=text, timestep=torch.full((1,), 500.0), encoder_attention_mask=mask
        )
    return sum(n for ptr, n in saved.items() if ptr not in copies)


@pytest.mark.parametrize(
    ("lora_rank", "base"),
    [(None, None), (4, "bf16"), (4, None)],
    ids=["full", "lora-bf16-base", "lora-fp32-base"],
)
def test_budgeted_activations_equal_what_a_real_autocast_step_saves(tiny, lora_rank, base):
    # The budget's pass must run as the step does: fp32 trained weights, the frozen base in its dtype,
    # bf16 autocast. Without autocast, a bf16 base plus fp32 adapters computes the attention in fp32.
    import torch

    from sanatool.training.budget import _saved_activation_bytes
    from sanatool.training.options import DEFAULT_LORA_TARGETS

    base_dtype = torch.bfloat16 if base else None
    lora = (lora_rank, DEFAULT_LORA_TARGETS) if lora_rank else None
    budgeted = _saved_activation_bytes(
        tiny, 1, 8, 16, torch.bfloat16, False, lora=lora, base_dtype=base_dtype
    )
    real = _real_saved_bytes(tiny, 8, 16, lora_rank, base_dtype or torch.float32)
    assert budgeted == pytest.approx(real, rel=0.02)
