"""One PNG per part (``paper_regime.png``, ``paper_growth.png``, ``paper_pruning.png``,
``paper_importance.png``, ``paper_came8bit.png``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from paper.stats import eval_interval, loss_of

if TYPE_CHECKING:
    from paper.parts import Ctx


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)


def smooth(values: list[float]) -> list[float]:
    """Moving average over ~5% of the curve."""
    window = max(1, len(values) // 20)
    return [sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
            for i in range(len(values))]  # fmt: skip


def curves(runs: dict[str, list[float]], path: Path, title: str) -> None:
    """Training loss per step (moving average)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, losses in runs.items():
        if losses:
            ax.plot(range(1, len(losses) + 1), smooth(losses), label=label, linewidth=1.3)
    ax.set(xlabel="step", ylabel="training loss (moving average)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)


def regime(ctx: Ctx, results: dict[str, Any], found: dict[str, Any]) -> None:
    """Held-out loss against steps for every configuration searched, the base as a line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    series: dict[str, list[tuple[int, float]]] = {}
    for row in found["rows"]:
        if row["loss"] is None:
            continue
        cfg = row["cfg"]
        label = f"{cfg['optimizer']} {cfg['lr']:g} {cfg['schedule']}" + (
            f" ema{cfg['ema']:g}" if cfg.get("ema") else ""
        )
        series.setdefault(label, []).append((cfg["steps"], row["loss"]["value"]))
    for label, points in series.items():
        points.sort()
        ax.plot([0, *(p[0] for p in points)], [found["base_loss"], *(p[1] for p in points)], "o-", label=label,
                linewidth=1.1, markersize=3)  # fmt: skip
    ax.axhline(found["base_loss"], color="black", linestyle=":", label="base (shipped)")
    ax.set(
        xlabel="fine-tuning steps", ylabel="held-out flow-matching loss", title="fine-tuning regime search"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    _save(fig, ctx.plots / "paper_regime.png")


def growth(ctx: Ctx, rows: list[dict[str, Any]], pretrain: float) -> None:
    """Left: training loss of every +N run. Right: the from-scratch run against total compute."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for row in rows:
        if row["losses"] and "scratch" not in row["model"]:
            left.plot(
                range(1, len(row["losses"]) + 1), smooth(row["losses"]), label=row["label"], linewidth=1.2
            )
    left.set(xlabel="step", ylabel="training loss (moving average)", title="after growth: the extra steps")
    left.grid(alpha=0.3)
    left.legend(fontsize=6)
    scratch = next(r for r in rows if "scratch" in r["model"])
    if scratch["losses"]:
        per_step = ctx.batch_size * scratch["blocks"] / pretrain
        right.plot([per_step * (i + 1) for i in range(len(scratch["losses"]))], smooth(scratch["losses"]),
                   label=scratch["label"] + " (training loss)", color="gray")  # fmt: skip
    for row in rows:
        if row["loss"] is not None and "scratch" not in row["model"]:
            right.plot(
                [row["compute"]], [loss_of(row["loss"]).value], "o", label=f"{row['label']} (held-out)"
            )
    if scratch["loss"] is not None:
        right.plot(
            [scratch["compute"]],
            [loss_of(scratch["loss"]).value],
            "k*",
            markersize=10,
            label="scratch (held-out)",
        )
    right.set(xlabel="training block-samples / base pretraining", ylabel="loss", yscale="log",
              title="equal total compute")  # fmt: skip
    right.grid(alpha=0.3)
    right.legend(fontsize=6)
    _save(fig, ctx.plots / "paper_growth.png")


def pruning(ctx: Ctx, results: dict[str, Any], grown: str, after: str, distill: str) -> None:
    """Eval overall with 95% intervals per pruned depth: before, after fine-tuning, distilled; base and grown as lines."""
    from paper.parts import PRUNE_DEPTHS, PRUNE_HOW, same_as_importance

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    series = [("importance, before", "importance", "")]
    series += [(f"{how}, +{ctx.finetune_steps}", how, f"+{after}") for how in PRUNE_HOW]
    if ctx.distill:
        series.append((f"importance, +{ctx.finetune_steps} distilled", "importance", f"+{distill}"))
    width = 0.8 / len(series)
    for i, (label, how, suffix) in enumerate(series):
        xs, ys, errs = [], [], [[], []]
        for j, k in enumerate(PRUNE_DEPTHS):
            same = same_as_importance(results, how, k)  # the same model: its bar repeats importance's
            result = results.get(f"eval:pruned-{'importance' if same else how}-{k}{suffix}")
            if result is None:
                continue
            iv = eval_interval(result)
            xs.append(j + (i - (len(series) - 1) / 2) * width)
            ys.append(iv.value)
            errs[0].append(iv.value - iv.low)
            errs[1].append(iv.high - iv.value)
        ax.bar(xs, ys, width, yerr=errs, capsize=2, label=label)
    for model, style, label in ((grown, "--", "grown 16 (before pruning)"), ("base", ":", "base 8")):
        if f"eval:{model}" in results:
            ax.axhline(
                eval_interval(results[f"eval:{model}"]).value, color="black", linestyle=style, label=label
            )
    ax.set_xticks(range(len(PRUNE_DEPTHS)), [f"{k} blocks" for k in PRUNE_DEPTHS])
    ax.set(ylabel="eval overall (95% interval)", title="the grown model, pruned")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    _save(fig, ctx.plots / "paper_pruning.png")


def importance(ctx: Ctx, found: dict[str, tuple[dict[str, Any], dict[str, Any] | None]]) -> None:
    """Per-block cosine profile of each model, and cosine vs ablation per block.

    Symmetric-log axes: block 0 dwarfs the rest, and a grown model's fresh blocks score ~0, which a
    log axis would drop.
    """
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    for label, (cosine, ablation) in found.items():
        n = len(cosine["scores"])
        left.plot([b / (n - 1) for b in range(n)], cosine["scores"], "o-", label=f"{label} ({n} blocks)")
        if ablation is not None:
            right.plot(ablation["extra"]["cosine_scores"], ablation["scores"], "o", label=label)
    left.set(
        xlabel="relative depth (block / (n − 1))",
        ylabel="cosine importance (symlog)",
        title="per-block profile",
    )
    left.set_yscale("symlog", linthresh=1e-3)
    right.set_xscale("symlog", linthresh=1e-3)
    right.set_yscale("symlog", linthresh=1e-3)
    left.grid(alpha=0.3)
    left.legend(fontsize=7)
    right.set(xlabel="cosine importance", ylabel="ablation importance", title="the two metrics, per block")
    right.grid(alpha=0.3)
    right.legend(fontsize=7)
    _save(fig, ctx.plots / "paper_importance.png")
