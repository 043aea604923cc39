"""Optimizers for fine-tuning SANA: CAME, CAME-8bit, and a factory that also builds AdamW(8bit).

``build_optimizer(name, params, lr)`` is what ``train``/``finetune --optimizer`` use;
``estimate_state_bytes(name, shapes)`` counts optimizer memory for a memory budget without
allocating it.
"""

from sanatool.optim.came import CAME
from sanatool.optim.came8bit import CAME8bit
from sanatool.optim.factory import (
    OPTIMIZER_NAMES,
    build_optimizer,
    estimate_state_bytes,
    optimizer_state_bytes,
)

__all__ = [
    "CAME",
    "CAME8bit",
    "OPTIMIZER_NAMES",
    "build_optimizer",
    "estimate_state_bytes",
    "optimizer_state_bytes",
]
