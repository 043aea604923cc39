"""The table's parts: each lists its tasks (given the results so far) and writes its section.

Model names are the keys of everything: ``base`` is the shipped model, every other model lives in
``WORK/models/NAME`` and is made by the task ``grow:NAME``, ``prune:NAME``, ``init:NAME`` or
``train:NAME``; ``loss:NAME``, ``eval:NAME`` and ``imp-METRIC:NAME`` measure it. A fine-tune is named
after its source and settings (``base+adamw-0.0001-cosine-300``), so parts that need the same run
share one task.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paper import plots
from paper.runner import Task, ceil_div
from paper.stats import NO, OPEN, YES, Interval, eval_difference, eval_interval, loss_difference, loss_of

OPTIMIZERS = ("adamw", "came", "came8bit")
#: Stage 1 of the regime search, AdamW: (lr, schedule, EMA decay). Constant-lr runs keep checkpoints,
#: which are the same run stopped earlier (the steps dimension); cosine runs decay to 0 at the end.
ADAMW_GRID = (
    (1e-5, "cosine", None),
    (3e-5, "cosine", None),
    (1e-4, "cosine", None),
    (3e-5, "constant", None),
)
#: Stage 2: CAME-8bit at these multiples of AdamW's best lr, with its schedule; CAME (32-bit state)
#: at CAME-8bit's best lr. CAME does not bias-correct, so its early steps are ~10× AdamW's at the
#: same lr: the grid sits around a tenth of AdamW's.
CAME_FACTORS = (1 / 30, 1 / 10, 1 / 3)
PRUNE_DEPTHS = (12, 10, 8)  # of the 16-block grown model (the paper: 60 → 40/30/20)
PRUNE_HOW = ("importance", "tail", "uniform")
#: CAME-8bit "trains as well as AdamW": no worse than this many points of eval overall.
NONINFERIORITY = 0.02


@dataclass
class Ctx:
    """The run's settings, as the parts need them."""

    work: Path
    base: str
    depth: int
    batch_size: int
    pretrain: dict[str, Any]  # steps, global_batch, block_samples, recipe, note
    regime_file: Path
    regime_out: Path
    parts: tuple[str, ...]
    regime_steps: int
    regime_every: int
    finetune_steps: int
    scratch_cap: int | None
    calibration_prompts: int
    ablation_prompts: int
    eval_images: int
    sample_steps: int
    heldout_items: int
    distill: bool
    plots: Path
    scaling_results: Path | None
    summary: list[list[str]] = field(default_factory=list)

    def path(self, model: str) -> str:
        return self.base if model == "base" else str(self.work / "models" / model)

    def regime(self, results: dict[str, Any]) -> dict[str, Any] | None:
        """The fine-tuning regime: found in this run (``--parts regime``), else read from its file."""
        if "regime" in self.parts:
            return regime_choice(self, results)
        return json.loads(self.regime_file.read_text())


# -- task builders ---------------------------------------------------------------------------------


def cfg_name(cfg: dict[str, Any]) -> str:
    ema = f"-ema{cfg['ema']:g}" if cfg.get("ema") else ""
    teacher = "-distill" if cfg.get("teacher") else ""
    return f"{cfg['optimizer']}-{cfg['lr']:g}-{cfg['schedule']}{ema}{teacher}-{cfg['steps']}"


def train_task(ctx: Ctx, source: str, cfg: dict[str, Any], part: str, blocks: int, deps: tuple[str, ...] = (),
               save_every: int = 0, name: str | None = None, teacher_blocks: int = 0) -> Task:  # fmt: skip
    """Fine-tune ``source`` with ``cfg`` (optimizer, lr, schedule, ema, steps[, teacher, warmup])."""
    model = name or f"{source}+{cfg_name(cfg)}"
    args = {"source": ctx.path(source), "out": ctx.path(model), "steps": cfg["steps"],
            "optimizer": cfg["optimizer"], "lr": cfg["lr"], "schedule": cfg["schedule"], "ema": cfg.get("ema"),
            "save_every": save_every, "warmup": cfg.get("warmup")}  # fmt: skip
    if cfg.get("teacher"):
        args["teacher"] = ctx.path(cfg["teacher"])
    checkpoints = cfg["steps"] // save_every if save_every else 0
    work = {"train": cfg["steps"] * ctx.batch_size * blocks,
            "forward": ctx.heldout_items * blocks * (1 + checkpoints)
            + cfg["steps"] * ctx.batch_size * teacher_blocks}  # fmt: skip
    return Task(f"train:{model}", "train", args, part, deps, work)


def loss_task(ctx: Ctx, model: str, part: str, blocks: int, deps: tuple[str, ...] = ()) -> Task:
    return Task(f"loss:{model}", "loss", {"model": ctx.path(model)}, part, deps,
                {"forward": ctx.heldout_items * blocks})  # fmt: skip


def eval_task(ctx: Ctx, model: str, part: str, blocks: int, deps: tuple[str, ...] = ()) -> Task:
    return Task(f"eval:{model}", "eval", {"model": ctx.path(model), "name": model}, part, deps,
                {"sample": ctx.eval_images * ctx.sample_steps * blocks})  # fmt: skip


def importance_task(
    ctx: Ctx, model: str, metric: str, part: str, blocks: int, deps: tuple[str, ...] = ()
) -> Task:
    prompts = ctx.calibration_prompts if metric == "cosine" else ctx.ablation_prompts
    passes = 1 if metric == "cosine" else blocks + 1
    out = str(ctx.work / "importance" / f"{model}-{metric}.json")
    return Task(f"imp-{metric}:{model}", "importance", {"model": ctx.path(model), "out": out, "metric": metric,
                "prompts": prompts}, part, deps, {"sample": prompts * ctx.sample_steps * blocks * passes})  # fmt: skip


def heldout(results: dict[str, Any], model: str) -> list[float] | None:
    """A model's per-image held-out losses, from its ``loss:`` or ``train:`` task."""
    for name in (f"loss:{model}", f"train:{model}"):
        if results.get(name, {}).get("heldout") is not None:
            return results[name]["heldout"]
    return None


# -- the regime search -----------------------------------------------------------------------------


def stage1(ctx: Ctx) -> list[dict[str, Any]]:
    return [{"optimizer": "adamw", "lr": lr, "schedule": schedule, "ema": ema, "steps": ctx.regime_steps}
            for lr, schedule, ema in ADAMW_GRID]  # fmt: skip


def stage2(ctx: Ctx, best: dict[str, Any]) -> list[dict[str, Any]]:
    return [{**best, "optimizer": "came8bit", "lr": float(f"{best['lr'] * f:.2g}"), "steps": ctx.regime_steps}
            for f in CAME_FACTORS]  # fmt: skip


def stage3(ctx: Ctx, best: dict[str, Any]) -> list[dict[str, Any]]:
    return [{**best, "optimizer": "came", "steps": ctx.regime_steps}]


def regime_tasks(ctx: Ctx, results: dict[str, Any]) -> list[Task]:
    def run(cfg: dict[str, Any]) -> Task:
        every = ctx.regime_every if cfg["schedule"] == "constant" and not cfg.get("ema") else 0
        return train_task(ctx, "base", cfg, "regime", ctx.depth, save_every=every)

    tasks = [loss_task(ctx, "base", "regime", ctx.depth), *(run(cfg) for cfg in stage1(ctx))]
    best = best_of(regime_rows(ctx, results, stage1(ctx)))
    if best is not None:
        tasks += [run(cfg) for cfg in stage2(ctx, best["cfg"])]
        best = best_of(regime_rows(ctx, results, stage2(ctx, best["cfg"])))
        if best is not None:
            tasks += [run(cfg) for cfg in stage3(ctx, best["cfg"])]
    return tasks


def regime_rows(
    ctx: Ctx, results: dict[str, Any], cfgs: list[dict[str, Any]], partial: bool = False
) -> list[dict[str, Any]] | None:
    """Every (config, steps) measured, with its held-out losses; None until every run has finished
    (unless ``partial``: then the finished ones)."""
    rows = []
    for cfg in cfgs:
        result = results.get(f"train:base+{cfg_name(cfg)}")
        if result is None:
            if partial:
                continue
            return None
        for step, losses in sorted((int(k), v) for k, v in result.get("checkpoints", {}).items()):
            rows.append({"cfg": {**cfg, "steps": step}, "heldout": losses, "nan_at": None})
        rows.append({"cfg": cfg, "heldout": result.get("heldout"), "nan_at": result.get("nan_at"),
                     "losses": result["losses"]})  # fmt: skip
    return rows


def best_of(rows: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    finished = [r for r in rows or [] if r["heldout"] is not None]
    return min(finished, key=lambda r: sum(r["heldout"])) if finished else None


def regime_choice(ctx: Ctx, results: dict[str, Any]) -> dict[str, Any] | None:
    """The chosen regime (lowest held-out loss of all runs) and each optimizer's best lr under it."""
    first = regime_rows(ctx, results, stage1(ctx))
    best1 = best_of(first)
    if best1 is None or "loss:base" not in results:
        return None
    second = regime_rows(ctx, results, stage2(ctx, best1["cfg"]))
    best2 = best_of(second)
    third = None if best2 is None else regime_rows(ctx, results, stage3(ctx, best2["cfg"]))
    if third is None:
        return None
    rows = [*(first or []), *(second or []), *third]
    chosen = best_of(rows)
    assert chosen is not None
    # Each optimizer's lr at the chosen schedule and steps (AdamW's from stage 1, the others' from stage 2).
    same = [r for r in rows if r["heldout"] is not None and r["cfg"]["schedule"] == best1["cfg"]["schedule"]
            and r["cfg"].get("ema") == best1["cfg"].get("ema") and r["cfg"]["steps"] == ctx.regime_steps]  # fmt: skip
    lrs = {opt: best_of([r for r in same if r["cfg"]["optimizer"] == opt])["cfg"]["lr"] for opt in OPTIMIZERS}  # type: ignore[index]
    base = results["loss:base"]["heldout"]
    return {"chosen": chosen["cfg"], "lrs": lrs, "base_loss": loss_of(base).value,
            "chosen_change": vars(loss_difference(chosen["heldout"], base)),
            "rows": [{"cfg": r["cfg"], "loss": None if r["heldout"] is None else vars(loss_of(r["heldout"])),
                      "change": None if r["heldout"] is None else vars(loss_difference(r["heldout"], base)),
                      "nan_at": r["nan_at"]} for r in rows]}  # fmt: skip


def regime_report(ctx: Ctx, results: dict[str, Any]) -> list[str]:
    regime = regime_choice(ctx, results)
    if regime is None:
        return regime_so_far(ctx, results)
    ctx.regime_out.parent.mkdir(parents=True, exist_ok=True)
    ctx.regime_out.write_text(json.dumps(regime, indent=1) + "\n")
    rows = []
    for r in regime["rows"]:
        change = None if r["change"] is None else Interval(**r["change"])
        rows.append([r["cfg"]["optimizer"], f"{r['cfg']['lr']:g}", r["cfg"]["schedule"], str(r["cfg"]["steps"]), "—" if r["loss"] is None else f"{r['loss']['value']:.4f}",
                     "—" if change is None else pct(change),
                     "NaN" if r["nan_at"] else "—" if change is None else lowers(change)])  # fmt: skip
    plots.regime(ctx, results, regime)
    c = regime["chosen"]
    return [
        "## 0. The fine-tuning regime", "",
        f"Continuing to train the shipped model (held-out loss {regime['base_loss']:.4f}) for up to "
        f"{ctx.regime_steps} steps at batch {ctx.batch_size}: stage 1 searches AdamW's lr and schedule; stage 2 "
        "CAME-8bit's lr (1/30, 1/10 and 1/3 of AdamW's best) under stage 1's best schedule; stage 3 runs CAME "
        "(32-bit state) at CAME-8bit's best lr. Constant-lr runs are also scored at their checkpoints (the same run "
        "stopped earlier). Change = held-out loss relative to the base, 95% paired bootstrap interval over "
        "held-out images. Plot: `paper_regime.png`.", "",
        *table(["optimizer", "lr", "schedule", "steps", "held-out loss", "change vs base", "verdict"], rows),
        "",
        f"**Chosen**: {c['optimizer']}, lr {c['lr']:g}, {c['schedule']}"
        f"{', EMA ' + format(c['ema'], 'g') if c.get('ema') else ''}, {c['steps']} steps "
        f"({pct(Interval(**regime['chosen_change']))}); each optimizer's own lr under that schedule: "
        + ", ".join(f"{o} {lr:g}" for o, lr in regime["lrs"].items()) + ".", "",
    ]  # fmt: skip


def regime_so_far(ctx: Ctx, results: dict[str, Any]) -> list[str]:
    """An unfinished search: the runs measured so far (nothing is chosen, no regime file is written)."""
    base = heldout(results, "base")
    cfgs = stage1(ctx)
    best = best_of(regime_rows(ctx, results, cfgs))
    if best is not None:
        cfgs += stage2(ctx, best["cfg"])
        best = best_of(regime_rows(ctx, results, stage2(ctx, best["cfg"])))
        cfgs += stage3(ctx, best["cfg"]) if best is not None else []
    rows = []
    for r in regime_rows(ctx, results, cfgs, partial=True) or []:
        c = r["cfg"]
        change = None if r["heldout"] is None or base is None else loss_difference(r["heldout"], base)
        rows.append([c["optimizer"], f"{c['lr']:g}", c["schedule"], str(c["steps"]),
                     "—" if r["heldout"] is None else f"{loss_of(r['heldout']).value:.4f}",
                     "—" if change is None else pct(change), "NaN" if r["nan_at"] else "—" if change is None else lowers(change)])  # fmt: skip
    return ["## 0. The fine-tuning regime", "", f"**Incomplete** ({len(rows)} of the search's measurements so far; "
            "rerun the same command to finish it). Change = held-out loss relative to the base, paired 95% interval "
            "over held-out images.", "", *table(["optimizer", "lr", "schedule", "steps", "held-out loss",
            "change vs base", "verdict"], rows), ""]  # fmt: skip


def pct(i: Interval) -> str:
    return f"{i.value:+.2%} [{i.low:+.2%}, {i.high:+.2%}]"


def lowers(change: Interval) -> str:
    return {YES: "lowers", NO: "raises", OPEN: "no change resolved"}[change.verdict("below")]


# -- growth -----------------------------------------------------------------------------------------


def grow_variants(depth: int) -> dict[str, tuple[str, int | None, str]]:
    keep = depth - 2
    return {"partial": ("partial", None, f"partial-retain (all {depth} source blocks kept)"),
            f"partial{keep}": ("partial", keep, f"partial-retain keeping the first {keep} of {depth} source blocks"),
            "cyclic": ("cyclic", None, "cyclic"), "block": ("block", None, "block-copy")}  # fmt: skip


def scratch_plan(ctx: Ctx, steps: int) -> tuple[int, str]:
    """Steps of the from-scratch 2N-block run at the grown model's total compute, and its model name."""
    to = 2 * ctx.depth
    total = ctx.pretrain["block_samples"] + steps * ctx.batch_size * to
    matched = ceil_div(total, ctx.batch_size * to)
    n = min(matched, ctx.scratch_cap) if ctx.scratch_cap else matched
    return n, f"scratch{to}-{n}"


def growth_tasks(ctx: Ctx, results: dict[str, Any]) -> list[Task]:
    regime = ctx.regime(results)
    if regime is None:
        return []
    cfg, d, to = regime["chosen"], ctx.depth, 2 * ctx.depth
    tasks = [loss_task(ctx, "base", "growth", d), eval_task(ctx, "base", "growth", d),
             train_task(ctx, "base", cfg, "growth", d)]  # fmt: skip
    tasks.append(eval_task(ctx, f"base+{cfg_name(cfg)}", "growth", d, (tasks[-1].name,)))
    for variant, (strategy, keep, _) in grow_variants(d).items():
        grown = f"grow-{variant}"
        made = Task(f"grow:{grown}", "grow", {"source": ctx.path("base"), "out": ctx.path(grown), "to": to,
                    "strategy": strategy, "source_layers": keep}, "growth")  # fmt: skip
        trained = train_task(ctx, grown, cfg, "growth", to, (made.name,))
        tasks += [made, loss_task(ctx, grown, "growth", to, (made.name,)), trained]
        if variant == "partial":  # the other inits: held-out loss only (the time budget)
            tasks.append(eval_task(ctx, f"{grown}+{cfg_name(cfg)}", "growth", to, (trained.name,)))
    steps, scratch = scratch_plan(ctx, cfg["steps"])
    recipe = ctx.pretrain["recipe"]
    init = Task(f"init:scratch{to}", "init", {"out": ctx.path(f"scratch{to}"), "depth": to}, "growth")
    trained = train_task(
        ctx, f"scratch{to}", {**recipe, "steps": steps}, "growth", to, (init.name,), name=scratch
    )
    tasks += [init, loss_task(ctx, f"scratch{to}", "growth", to, (init.name,)), trained,
              eval_task(ctx, scratch, "growth", to, (trained.name,))]  # fmt: skip
    return tasks


def growth_report(ctx: Ctx, results: dict[str, Any]) -> list[str]:
    regime = ctx.regime(results)
    if regime is None:
        return []
    cfg, d, to = regime["chosen"], ctx.depth, 2 * ctx.depth
    n = cfg["steps"]
    base_loss = heldout(results, "base")
    pre = ctx.pretrain["block_samples"]
    steps, scratch = scratch_plan(ctx, n)

    def row(label: str, model: str, init: str | None, blocks: int, compute: float) -> dict[str, Any]:
        train = results.get(f"train:{model}", {})
        return {"label": label, "model": model, "blocks": blocks, "compute": compute / pre,
                "init": heldout(results, init) if init else None, "loss": heldout(results, model),
                "eval": results.get(f"eval:{model}"), "losses": train.get("losses", []), "nan_at": train.get("nan_at")}  # fmt: skip

    ft = cfg_name(cfg)
    rows = [
        row("base (shipped)", "base", None, d, pre),
        row(f"base +{n} steps", f"base+{ft}", "base", d, pre + n * ctx.batch_size * d),
    ]
    for variant, (_, _, label) in grow_variants(d).items():
        rows.append(row(f"grow {d}→{to}, {label}, +{n} steps", f"grow-{variant}+{ft}", f"grow-{variant}", to,
                        pre + n * ctx.batch_size * to))  # fmt: skip
    rows.append(
        row(
            f"{to} blocks from scratch, {steps} steps",
            scratch,
            f"scratch{to}",
            to,
            steps * ctx.batch_size * to,
        )
    )
    body = []
    for r in rows:
        body.append([r["label"], str(r["blocks"]), f"{r['compute']:.3g}×",
                     "—" if r["init"] is None else f"{loss_of(r['init']).value:.4f}",
                     "—" if r["loss"] is None else loss_of(r["loss"]).cell(4),
                     "—" if r["loss"] is None or base_loss is None or r["model"] == "base" else pct(loss_difference(r["loss"], base_loss)),
                     "—" if r["eval"] is None else eval_interval(r["eval"]).cell(),
                     f"step {r['nan_at']}" if r["nan_at"] else "none"])  # fmt: skip
    plots.growth(ctx, rows, pre)
    by = {r["model"]: r for r in rows}
    partial = by[f"grow-partial+{ft}"]
    p = ctx.pretrain
    md = [
        "## 1. Model growth", "",
        f"The base ({d} blocks) grown to {to} and trained {n} more steps with the chosen regime "
        f"({describe(cfg)}), against the base trained the same {n} steps and a {to}-block model trained from "
        f"random init with the base's own recipe ({describe(p['recipe'])}; the base's trained text encoder and VAE, "
        f"frozen, which favours it) for as many training block-samples as the grown model has seen in total. "
        f"Compute = training block-samples (steps × batch × blocks) relative to the base's pretraining: {p['note']}. "
        "Held-out loss ± its 95% interval over held-out images; change = relative to the base, paired; eval = "
        "overall with its 95% interval over prompts. The other inits (keeping fewer blocks, cyclic, block-copy) "
        "are compared by held-out loss only (the time budget). Plot: `paper_growth.png`.", "",
        *table(["model", "blocks", "compute", "held-out loss at init", "held-out loss", "change vs base",
                "eval overall [95%]", "NaN"], body), "",
    ]  # fmt: skip
    if partial["init"] is not None and base_loss is not None:
        gap = max(abs(a - b) for a, b in zip(partial["init"], base_loss, strict=True))
        ctx.summary.append(["1", "partial-retain growth starts as the base (new blocks are identities)",
                            "the grown model starts where the base is", f"largest per-image held-out loss gap at "
                            f"init: {gap:.2e}", YES if gap < 1e-4 else NO])  # fmt: skip
    claim(
        ctx,
        "1",
        f"the grown model beats the base given the same {n} extra steps",
        "4.8B grown from 1.6B beats it (GenEval 0.72 vs 0.66)",
        results,
        f"eval:grow-partial+{ft}",
        f"eval:base+{ft}",
        "grown",
        f"base +{n}",
    )
    claim(
        ctx,
        "1",
        "growth beats training the deeper model from scratch at equal total compute",
        "growth reaches the quality with 60% less training time",
        results,
        f"eval:grow-partial+{ft}",
        f"eval:{scratch}",
        "grown",
        f"scratch ({steps} steps)",
    )
    if partial["loss"] is not None:
        for variant in (f"partial{d - 2}", "cyclic", "block"):
            other = by[f"grow-{variant}+{ft}"]
            label = f"keeping {d - 2} of {d} blocks" if variant.startswith("partial") else f"{variant} init"
            paper = ("(SANA 1.5 keeps the source blocks and appends identity blocks)" if variant.startswith("partial")
                     else "cyclic and block replication are unstable")  # fmt: skip
            text = f"{label} ends worse than partial-retain (held-out loss after {n} steps)"
            if other["nan_at"]:
                ctx.summary.append(["1", text, paper, f"NaN at step {other['nan_at']}", YES])
            elif other["loss"] is not None:
                diff = loss_difference(other["loss"], partial["loss"])
                ctx.summary.append(
                    ["1", text, paper, f"{label} − partial-retain: {pct(diff)}", diff.verdict("above")]
                )
    return md


def describe(cfg: dict[str, Any]) -> str:
    ema = f", EMA {cfg['ema']:g}" if cfg.get("ema") else ""
    warmup = f", {cfg['warmup']} warm-up steps" if cfg.get("warmup") else ""
    return f"{cfg['optimizer']}, lr {cfg['lr']:g}, {cfg['schedule']}{warmup}{ema}"


def claim(ctx: Ctx, part: str, text: str, paper: str, results: dict[str, Any], a: str, b: str, a_label: str,
          b_label: str, claimed: str = "above", margin: float = 0.0) -> None:  # fmt: skip
    """A summary row from the paired interval of eval(a) − eval(b)."""
    if a not in results or b not in results:
        ctx.summary.append([part, text, paper, f"not measured ({a if a not in results else b} missing)", "—"])
        return
    diff = eval_difference(results[a], results[b])
    ia, ib = eval_interval(results[a]), eval_interval(results[b])
    ours = f"{a_label} {ia.value:.3f}, {b_label} {ib.value:.3f}; difference {diff.cell(signed=True)}"
    ctx.summary.append([part, text, paper, ours, diff.verdict(claimed, margin)])


# -- grown then pruned ------------------------------------------------------------------------------


def grown_model(cfg: dict[str, Any]) -> str:
    return f"grow-partial+{cfg_name(cfg)}"


def same_as_importance(results: dict[str, Any], how: str, k: int) -> bool:
    """Whether a naive pruning kept exactly the blocks importance kept (then it is the same model)."""
    kept = results.get(f"prune:pruned-{how}-{k}", {}).get("kept")
    return (
        how != "importance"
        and kept is not None
        and kept == results.get(f"prune:pruned-importance-{k}", {}).get("kept")
    )


def pruning_tasks(ctx: Ctx, results: dict[str, Any]) -> list[Task]:
    regime = ctx.regime(results)
    if regime is None:
        return []
    grown, to = grown_model(regime["chosen"]), 2 * ctx.depth
    after = {**regime["chosen"], "steps": ctx.finetune_steps}
    made = f"train:{grown}"
    imp = importance_task(ctx, grown, "cosine", "pruning", to, (made,))
    tasks = [imp, eval_task(ctx, grown, "pruning", to, (made,)), eval_task(ctx, "base", "pruning", ctx.depth)]
    for how in PRUNE_HOW:
        for k in PRUNE_DEPTHS:
            pruned = f"pruned-{how}-{k}"
            extra = {"importance": imp.args["out"]} if how == "importance" else {"strategy": how}
            # Naive prunings wait for importance's choice, so one that picks the same blocks is not run twice.
            deps = (imp.name,) if how == "importance" else (f"prune:pruned-importance-{k}",)
            make = Task(f"prune:{pruned}", "prune", {"source": ctx.path(grown), "out": ctx.path(pruned), "keep": k,
                        **extra}, "pruning", deps)  # fmt: skip
            tasks.append(make)
            if same_as_importance(results, how, k):
                continue
            trained = train_task(ctx, pruned, after, "pruning", k, (make.name,))
            tasks += [loss_task(ctx, pruned, "pruning", k, (make.name,)), trained,
                      eval_task(ctx, f"{pruned}+{cfg_name(after)}", "pruning", k, (trained.name,))]  # fmt: skip
            if how == "importance":
                tasks.append(eval_task(ctx, pruned, "pruning", k, (make.name,)))
                if ctx.distill:
                    cfg = {**after, "teacher": grown}
                    distilled = train_task(ctx, pruned, cfg, "pruning", k, (make.name,), teacher_blocks=to)
                    tasks += [
                        distilled,
                        eval_task(ctx, f"{pruned}+{cfg_name(cfg)}", "pruning", k, (distilled.name,)),
                    ]
    return tasks


def pruning_report(ctx: Ctx, results: dict[str, Any]) -> list[str]:
    regime = ctx.regime(results)
    if regime is None:
        return []
    grown, to, m = grown_model(regime["chosen"]), 2 * ctx.depth, ctx.finetune_steps
    after = cfg_name({**regime["chosen"], "steps": m})
    distill = cfg_name({**regime["chosen"], "steps": m, "teacher": grown})

    def ev(model: str) -> str:
        return eval_interval(results[f"eval:{model}"]).cell() if f"eval:{model}" in results else "—"

    def ls(model: str) -> str:
        h = heldout(results, model)
        return "—" if h is None else f"{loss_of(h).value:.4f}"

    body = [["base (shipped)", str(ctx.depth), "—", ls("base"), ev("base"), "—", "—", "—", "—"],
            [f"grown {to} (+{regime['chosen']['steps']} steps)", str(to), "all", ls(grown), ev(grown), "—", "—", "—", "—"]]  # fmt: skip
    for k in PRUNE_DEPTHS:
        for how in PRUNE_HOW:
            pruned = f"pruned-{how}-{k}"
            kept = results.get(f"prune:{pruned}", {}).get("kept")
            if same_as_importance(results, how, k):
                body.append([how, str(k), "the same blocks as importance", *["=" for _ in range(6)]])
                continue
            body.append([how, str(k), "—" if kept is None else ",".join(map(str, kept)), ls(pruned), ev(pruned),
                         ls(f"{pruned}+{after}"), ev(f"{pruned}+{after}"),
                         ls(f"{pruned}+{distill}") if ctx.distill and how == "importance" else "—",
                         ev(f"{pruned}+{distill}") if ctx.distill and how == "importance" else "—"])  # fmt: skip
    plots.pruning(ctx, results, grown, after, distill)
    md = [
        "## 2. Grown, then pruned (the paper's table)", "",
        f"The grown {to}-block model (partial-retain, + {regime['chosen']['steps']} steps) pruned to "
        f"{'/'.join(map(str, PRUNE_DEPTHS))} blocks by its cosine importance ({ctx.calibration_prompts} calibration "
        f"prompts), by keeping the first blocks (tail) and evenly spaced blocks (uniform), each scored before and "
        f"after {m} fine-tuning steps with the chosen regime"
        + (f" and, for importance pruning, after {m} steps distilled from the grown model (`finetune --teacher`)"
           if ctx.distill else " (distillation rows left out: this run's sanatool has no `finetune --teacher`)")
        + ". Before fine-tuning, only importance pruning is sampled (the time budget). Eval overall with its 95% "
        "interval over prompts. Plot: `paper_pruning.png`.", "",
        *table(["pruning", "blocks", "kept", "held-out loss", "eval", f"loss +{m}", f"eval +{m}",
                f"loss +{m} distilled", f"eval +{m} distilled"], body), "",
    ]  # fmt: skip
    for k in PRUNE_DEPTHS:
        guided = f"pruned-importance-{k}"
        claim(
            ctx,
            "2",
            f"{m} steps heal the grown model pruned to {k}",
            "pruned 60→20 blocks: GenEval 0.571 → 0.672 after 100 steps",
            results,
            f"eval:{guided}+{after}",
            f"eval:{guided}",
            f"+{m}",
            "before",
        )
    for k in PRUNE_DEPTHS:
        for naive in ("tail", "uniform"):
            if same_as_importance(results, naive, k):
                ctx.summary.append(["2", f"importance pruning to {k} beats {naive}", "importance-guided selection "
                                    "beats dropping blocks naively", "both keep the same blocks", OPEN])  # fmt: skip
                continue
            claim(ctx, "2", f"importance pruning to {k} beats {naive} (after {m} steps)", "importance-guided "
                  "selection beats dropping blocks naively", results, f"eval:pruned-importance-{k}+{after}",
                  f"eval:pruned-{naive}-{k}+{after}", "importance", naive)  # fmt: skip
    claim(
        ctx,
        "2",
        f"grown, pruned back to {ctx.depth} and fine-tuned beats the {ctx.depth}-block base",
        "pruned to 1.6B size + 100 steps: 0.672 vs SANA 1.0 1.6B 0.664",
        results,
        f"eval:pruned-importance-{ctx.depth}+{after}",
        "eval:base",
        "pruned",
        "base",
    )
    if ctx.distill:
        for k in PRUNE_DEPTHS:
            guided = f"pruned-importance-{k}"
            claim(ctx, "2", f"distilling from the grown model beats plain fine-tuning (pruned to {k})", "(beyond the "
                  "paper)", results, f"eval:{guided}+{distill}", f"eval:{guided}+{after}", "distilled", "plain")  # fmt: skip
    return md


# -- importance --------------------------------------------------------------------------------------


def importance_tasks(ctx: Ctx, results: dict[str, Any]) -> list[Task]:
    regime = ctx.regime(results)
    tasks = [importance_task(ctx, "base", m, "importance", ctx.depth) for m in ("cosine", "ablation")]
    if regime is not None:
        grown = grown_model(regime["chosen"])
        tasks += [importance_task(ctx, grown, m, "importance", 2 * ctx.depth, (f"train:{grown}",))
                  for m in ("cosine", "ablation")]  # fmt: skip
    return tasks


def importance_report(ctx: Ctx, results: dict[str, Any]) -> list[str]:
    regime = ctx.regime(results)
    models = {"base": "base", **({"grown": grown_model(regime["chosen"])} if regime else {})}
    found = {
        label: (results.get(f"imp-cosine:{m}"), results.get(f"imp-ablation:{m}"))
        for label, m in models.items()
    }
    found = {label: pair for label, pair in found.items() if pair[0] is not None}
    if not found:
        return []
    plots.importance(ctx, found)
    md = ["## 3. Block importance", "",
          f"Cosine metric (the paper's: 1 − cos(block input, output), {ctx.calibration_prompts} calibration prompts × "
          f"{ctx.sample_steps} sampler steps, both guidance branches) and the ablation metric (each block skipped "
          f"alone, relative change of the final latent, {ctx.ablation_prompts} prompts); Spearman ρ between the two. "
          "Deterministic given the calibration set (no interval). Plot: `paper_importance.png`.", ""]  # fmt: skip
    for label, (cosine, ablation) in found.items():
        scores = cosine["scores"]
        n = len(scores)
        rows = [["cosine", *(f"{v:.4f}" for v in scores)],
                ["cosine rank", *(str(cosine["ranking"].index(b) + 1) for b in range(n))]]  # fmt: skip
        if ablation is not None:
            rows += [["ablation", *(f"{v:.4f}" for v in ablation["scores"])],
                     ["ablation rank", *(str(ablation["ranking"].index(b) + 1) for b in range(n))]]  # fmt: skip
        md += [f"**{label}** ({n} blocks)" + (f": Spearman ρ(ablation, cosine) = "
               f"{ablation['extra']['spearman_vs_cosine']:.2f}" if ablation else ""), "",
               *table(["metric", *map(str, range(n))], rows), ""]  # fmt: skip
        top2 = set(cosine["ranking"][:2])
        ctx.summary.append(["3", f"head and tail blocks matter most ({label})", "first and last blocks score highest",
                            f"most important: {', '.join(map(str, cosine['ranking'][:3]))} of 0–{n - 1}",
                            YES if top2 == {0, n - 1} else NO])  # fmt: skip
        if label == "grown":
            low = middle_to_late_low(scores)
            ctx.summary.append(["3", "the grown model's middle-to-late blocks score low",
                                "middle-to-late blocks of the grown 4.8B are the least important",
                                f"mean cosine score, blocks 1–{n // 2 - 1}: {low[0]:.4f}; blocks {n // 2}–{n - 2}: "
                                f"{low[1]:.4f}; least important: {cosine['ranking'][-1]}", YES if low[1] < low[0] else NO])  # fmt: skip
        if ablation is not None:
            rho = ablation["extra"]["spearman_vs_cosine"]
            ctx.summary.append(["3", f"the cosine metric ranks blocks as ablating them does ({label})",
                                "(beyond the paper)", f"Spearman ρ = {rho:.2f} over {n} blocks",
                                YES if rho is not None and rho >= 0.7 else NO])  # fmt: skip
    return md


def middle_to_late_low(scores: list[float]) -> tuple[float, float]:
    """Mean score of the early-middle blocks (1 … n/2 − 1) and of the middle-to-late ones (n/2 … n − 2)."""
    n = len(scores)
    early, late = scores[1 : n // 2], scores[n // 2 : n - 1]
    return sum(early) / len(early), sum(late) / len(late)


# -- optimizers -------------------------------------------------------------------------------------


def optimizer_cfgs(regime: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {opt: {**regime["chosen"], "optimizer": opt, "lr": regime["lrs"][opt]} for opt in OPTIMIZERS}


def optimizer_tasks(ctx: Ctx, results: dict[str, Any]) -> list[Task]:
    regime = ctx.regime(results)
    if regime is None:
        return []
    tasks = []
    for cfg in optimizer_cfgs(regime).values():
        trained = train_task(ctx, "base", cfg, "optimizers", ctx.depth)
        tasks += [trained, eval_task(ctx, f"base+{cfg_name(cfg)}", "optimizers", ctx.depth, (trained.name,))]
    return tasks


def optimizer_report(
    ctx: Ctx, results: dict[str, Any], memory: Callable[[], dict[str, tuple[float, float]]]
) -> list[str]:
    regime = ctx.regime(results)
    if regime is None:
        return []
    cfgs = optimizer_cfgs(regime)
    state = memory()
    base = heldout(results, "base")
    rows, curves = [], {}
    for opt, cfg in cfgs.items():
        model = f"base+{cfg_name(cfg)}"
        h, train = heldout(results, model), results.get(f"train:{model}", {})
        curves[opt] = train.get("losses", [])
        rows.append([opt, f"{cfg['lr']:g}", f"{state[opt][0]:.3f}", f"{state[opt][1]:.3f}",
                     "—" if h is None else f"{loss_of(h).value:.4f}",
                     "—" if h is None or base is None else pct(loss_difference(h, base)),
                     "—" if f"eval:{model}" not in results else eval_interval(results[f"eval:{model}"]).cell()])  # fmt: skip
    plots.curves(curves, ctx.plots / "paper_came8bit.png", f"fine-tuning the base, each optimizer at its tuned lr "
                 f"({regime['chosen']['schedule']}, {regime['chosen']['steps']} steps)")  # fmt: skip
    ratio = state["came8bit"][1] / state["adamw"][1]
    ctx.summary.append(["5", "CAME-8bit cuts optimizer memory", "about 1/8 of AdamW-32bit's optimizer state",
                        f"{state['came8bit'][0]:.2f} vs AdamW {state['adamw'][0]:.2f} B/param measured on the tiny "
                        f"model; {ratio:.3f}× AdamW on sana1.5-4.8b shapes", YES if ratio <= 0.15 else NO])  # fmt: skip
    a, b = f"eval:base+{cfg_name(cfgs['came8bit'])}", f"eval:base+{cfg_name(cfgs['adamw'])}"
    claim(
        ctx,
        "5",
        f"CAME-8bit trains as well as AdamW (eval no more than {NONINFERIORITY} below)",
        "comparable quality to AdamW",
        results,
        a,
        b,
        "CAME-8bit",
        "AdamW",
        margin=-NONINFERIORITY,
    )
    return [
        "## 5. Optimizers", "",
        f"The base fine-tuned with each optimizer at its own tuned lr (section 0) under the chosen regime's "
        f"{regime['chosen']['schedule']} schedule for {regime['chosen']['steps']} steps, with the same batches, "
        "noise and timesteps. Optimizer state "
        "is measured on the optimizer's state tensors after one step (fp32 parameters); the sana1.5-4.8b "
        "column is `estimate_state_bytes` over that preset's parameter shapes. Plot: `paper_came8bit.png`.", "",
        *table(["optimizer", "lr", "state B/param (tiny)", "B/param (sana1.5-4.8b)", "held-out loss",
                "change vs base", "eval [95%]"], rows), "",
    ]  # fmt: skip


# -- inference-time scaling ----------------------------------------------------------------------------


def scaling_report(ctx: Ctx) -> list[str]:
    """Summarised from inference_scaling.py's results.json, never recomputed here.

    Each point there carries its own 95% interval over prompts (``interval``); "best-of-N lifts the
    score" is read from those unpaired intervals (yes only when they do not overlap, which is
    conservative), "a pruned model with best-of-N beats the full model at N = 1" from the paired
    difference intervals the script reports (``pruned_vs_full``).
    """
    path = ctx.scaling_results
    if path is None or not path.is_file():
        note = ("not run here: it comes from `python benchmarks/inference_scaling.py` (pass its results.json "
                "with --scaling-results)")  # fmt: skip
        ctx.summary.append(["4", "best-of-N with a judge lifts the score", "GenEval 0.72 → 0.80", note, "—"])
        return ["## 4. Inference-time scaling", "", note, ""]
    data = json.loads(path.read_text())
    models = data.get("models", {})
    ns = sorted({int(p["n"]) for m in models.values() for pts in m.get("judges", {}).values() for p in pts})
    rows = []
    for model, per_model in models.items():
        for judge, points in per_model.get("judges", {}).items():
            by_n = {int(p["n"]): p for p in points}
            rows.append([model, judge, *(scaling_cell(by_n.get(k)) for k in ns)])
            if 1 in by_n and len(by_n) > 1:
                top = by_n[max(by_n)]
                one, many = (
                    Interval(by_n[1]["overall"], *by_n[1]["interval"]),
                    Interval(top["overall"], *top["interval"]),
                )
                verdict = YES if many.low > one.high else NO if many.high < one.low else OPEN
                ctx.summary.append(["4", f"best-of-N with a judge lifts the score ({judge}; {model})",
                                    "GenEval 0.72 → 0.80", f"N=1 {one.cell()} → N={top['n']} {many.cell()} "
                                    "(unpaired intervals)", verdict])  # fmt: skip
        agree = per_model.get("verifier_agreement")
        if agree:
            rows.append([model, "verifier vs evaluator", f"balanced accuracy {agree['balanced_accuracy']:.3f}",
                         *([""] * (len(ns) - 1))])  # fmt: skip
    for row in data.get("pruned_vs_full", []):
        low, high = row["difference_interval"]
        diff = Interval(row["overall"] - row["full_n1"], low, high)
        ctx.summary.append(["4", f"a pruned model with best-of-{row['n']} (verifier) beats the full model at N = 1",
                            "smaller models with repeated sampling match larger ones", f"{row['model']}: "
                            f"{row['overall']:.3f} vs {row['full_n1']:.3f}, difference {diff.cell(signed=True)}",
                            diff.verdict("above")])  # fmt: skip
    return ["## 4. Inference-time scaling", "", f"From `{path}` (by `benchmarks/inference_scaling.py`; overall "
            "with its 95% interval over prompts).", "", *table(["model", "judge", *(f"N={k}" for k in ns)], rows), ""]  # fmt: skip


def scaling_cell(point: dict[str, Any] | None) -> str:
    if point is None:
        return "—"
    low, high = point["interval"]
    return f"{point['overall']:.3f} [{low:.3f}, {high:.3f}]"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] + [
        "| " + " | ".join(row) + " |" for row in rows
    ]
