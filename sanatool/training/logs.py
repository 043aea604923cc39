"""The loss log (JSONL, one line per optimizer step) and its PNG curve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sanatool.io.jsonl import read_jsonl

LOSS_LOG = "loss.jsonl"
LOSS_CURVE = "loss.png"


def append_log(path: Path, record: dict[str, Any]) -> None:
    """Append one record as a JSON line (flushed, so ``tail -f`` shows progress)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def read_log(path: Path) -> list[dict[str, Any]]:
    """All records of a loss log (an absent file is an empty log)."""
    if not path.is_file():
        return []
    return [record for _, record in read_jsonl(path)]


def plot_loss(records: list[dict[str, Any]], out: Path, title: str = "training loss") -> None:
    """Draw loss per step (raw and a moving average) into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [int(r["step"]) for r in records]
    losses = [float(r["loss"]) for r in records]
    window = max(1, len(losses) // 50)
    smooth = [
        sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
        for i in range(len(losses))
    ]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, losses, color="#9bb7d4", linewidth=0.8, label="loss")
    if window > 1:
        ax.plot(steps, smooth, color="#1f4e79", linewidth=1.6, label=f"moving average ({window} steps)")
    ax.set_xlabel("step")
    ax.set_ylabel("flow-matching loss")
    ax.set_title(title)
    if losses and min(losses) > 0 and max(losses) / min(losses) > 20:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
