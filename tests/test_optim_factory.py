"""build_optimizer, OPTIMIZER_NAMES, estimate_state_bytes (exact, and on the real SANA shapes)."""

from __future__ import annotations

import pytest
import torch

from sanatool.errors import InputError
from sanatool.optim import (
    CAME,
    OPTIMIZER_NAMES,
    CAME8bit,
    build_optimizer,
    estimate_state_bytes,
    optimizer_state_bytes,
)


def _model() -> torch.nn.Module:
    """Every kind of parameter CAME8bit treats differently: large/small matrices, 1×1 and depthwise
    convs, large and small 1-D tensors."""
    return torch.nn.Sequential(
        torch.nn.Linear(64, 96),
        torch.nn.Conv2d(96, 128, 1),
        torch.nn.Conv2d(128, 128, 3, groups=128, padding=1),
        torch.nn.Embedding(10, 3),
        torch.nn.LayerNorm(5000),
    )


def test_names_and_types():
    assert OPTIMIZER_NAMES == ("came8bit", "came", "adamw", "adamw8bit")
    import bitsandbytes as bnb

    kinds = {"came8bit": CAME8bit, "came": CAME, "adamw": torch.optim.AdamW, "adamw8bit": bnb.optim.AdamW8bit}
    for name in OPTIMIZER_NAMES:
        model = _model()
        opt = build_optimizer(name, model.parameters(), lr=1e-3, weight_decay=0.01)
        assert type(opt) is kinds[name] and opt.param_groups[0]["weight_decay"] == 0.01
        before = [p.detach().clone() for p in model.parameters()]
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        opt.step()
        assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert build_optimizer("adamw", _model().parameters(), lr=1e-3).defaults["foreach"] is True
    assert isinstance(build_optimizer(" CAME8bit ", _model().parameters(), lr=1e-3), CAME8bit)


def test_bad_input_is_an_input_error():
    params = list(_model().parameters())
    with pytest.raises(InputError, match="came8bit, came, adamw, adamw8bit"):
        build_optimizer("adam", params, lr=1e-3)
    for lr in (0.0, -1e-4, float("nan"), float("inf"), "1e-3"):
        with pytest.raises(InputError, match="learning rate"):
            build_optimizer("came8bit", params, lr=lr)
    with pytest.raises(InputError, match="weight_decay"):
        build_optimizer("adamw", params, lr=1e-3, weight_decay=-0.1)
    with pytest.raises(InputError, match=r"betas\[1\]"):
        build_optimizer("came", params, lr=1e-3, betas=(0.9, 1.5, 0.9999))
    with pytest.raises(InputError, match="eps"):
        build_optimizer("came8bit", params, lr=1e-3, eps=(0.0, 1e-16))
    with pytest.raises(InputError, match="empty parameter list"):
        build_optimizer("came", [], lr=1e-3)
    with pytest.raises(InputError, match="unexpected keyword"):
        build_optimizer("came", params, lr=1e-3, momentum=0.9)


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_estimate_equals_the_measured_state(name):
    model = _model()
    opt = build_optimizer(name, model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert optimizer_state_bytes(opt) == estimate_state_bytes(name, shapes) > 0


def test_estimate_bad_shapes_and_names():
    with pytest.raises(InputError, match="unknown optimizer"):
        estimate_state_bytes("sgd", [(3, 3)])
    with pytest.raises(InputError, match="negative"):
        estimate_state_bytes("came", [(3, -1)])
    with pytest.raises(InputError, match="not a tuple of integers"):
        estimate_state_bytes("came", [("a", 2)])
    assert estimate_state_bytes("adamw", [(10,)], param_dtype=torch.bfloat16) == 2 * 10 * 2 + 4


def test_came8bit_memory_target_on_real_sana_shapes():
    """The issue's target, on the sana1.5-1.6b parameter list (meta device, nothing allocated)."""
    from diffusers.models.transformers.sana_transformer import SanaTransformer2DModel

    from sanatool.arch import preset_config

    config = {k: v for k, v in preset_config("sana1.5-1.6b").items() if not k.startswith("_")}
    with torch.device("meta"):
        model = SanaTransformer2DModel(**config)
    shapes = [tuple(p.shape) for p in model.parameters()]
    n = sum(p.numel() for p in model.parameters())
    assert 1.5e9 < n < 1.7e9
    per_param = {name: estimate_state_bytes(name, shapes) / n for name in OPTIMIZER_NAMES}
    assert per_param["came8bit"] <= 1.05
    assert per_param["came8bit"] < per_param["adamw8bit"] < per_param["came"] < per_param["adamw"]
    assert abs(per_param["adamw"] - 8.0) < 1e-3
