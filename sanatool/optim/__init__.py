"""Optimizers for fine-tuning SANA: CAME, CAME-8bit, and a factory that also builds AdamW(8bit).

``build_optimizer(name, params, lr)`` is what ``train``/``finetune --optimizer`` use;
``estimate_state_bytes(name, shapes)`` counts optimizer memory for a memory budget without
allocating it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sanatool.optim.names import OPTIMIZER_NAMES

if TYPE_CHECKING:
    from sanatool.optim.came import CAME
    from sanatool.optim.came8bit import CAME8bit
    from sanatool.optim.factory import build_optimizer, estimate_state_bytes, optimizer_state_bytes

# Imported on first use: they import torch, and checking an --optimizer name must not.
_LAZY = {
    "CAME": "sanatool.optim.came",
    "CAME8bit": "sanatool.optim.came8bit",
    "build_optimizer": "sanatool.optim.factory",
    "estimate_state_bytes": "sanatool.optim.factory",
    "optimizer_state_bytes": "sanatool.optim.factory",
}

__all__ = [
    "CAME",
    "CAME8bit",
    "OPTIMIZER_NAMES",
    "build_optimizer",
    "estimate_state_bytes",
    "optimizer_state_bytes",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'sanatool.optim' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
