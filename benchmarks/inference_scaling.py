"""Inference-time scaling on the shapes world: best-of-N with a judge, N = 1 … 32, with error bars.

For each model: sample ``--n-max`` candidates per prompt of the shapes evaluation suite once,
judge every candidate once with each judge (the ``shapes`` oracle, the metric itself, and the
learned verifier, a separately trained model: the one shipped in the package unless
``--verifier`` names another), then for each N split the candidates into ``n-max / N``
disjoint groups of N, pick one per group, and score the picks with the rule-based evaluator
(GenEval style: per-category accuracy, overall = mean of the six). N = 1 (no judge) is the
baseline. Intervals are 95% bootstrap intervals over prompts (resampled within each category).

Also measured:

- **The verifier against the evaluator** on every generated candidate: agreement and balanced
  accuracy (the evaluation prompts are held out of the verifier's training).
- **Pruned + best-of-N vs full at N = 1** (with ``--model`` given twice or more): each further
  model with the verifier at each N against the first model at N = 1, the difference's interval
  over prompts, and a verdict computed from it ("yes" when it excludes 0 upwards, "no" when
  it excludes 0 downwards, else "not resolved").
- **Tournament vs score** on the first model at N = ``n-max``, keeping K = 1 and K = 4: judge calls and matches per
  prompt, whether the two modes pick the same candidates, and the picks' accuracy. With
  ``--timing``, seconds per prompt of judging and picking (median of ``--reps`` runs and a
  ~95% interval; run it under ``flock /tmp/bench.lock``).

    OMP_NUM_THREADS=1 python benchmarks/inference_scaling.py --model builtin:tiny-shapes \\
        [--model PRUNED_DIR] [--n-max 32] [--n-max-others 8] [--per-category 10] [--work DIR] \\
        [--verifier DIR] [--timing]

Samples and results are kept under ``--work`` (rerunning reuses the samples).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from startup import median_interval  # noqa: E402

NS = (1, 2, 4, 8, 16, 32)
KS = (1, 4)
SHORT = {"single_object": "single", "two_object": "two", "counting": "count", "colors": "colors",
         "position": "position", "color_attr": "attr"}  # fmt: skip


def suite_subset(per_category: int) -> list[Any]:
    """The first ``per_category`` evaluation prompts of each category, interleaved by category.

    Interleaved so that a smaller subset is a prefix of a larger one: a run with more prompts
    per category resumes the samples of a run with fewer.
    """
    from sanatool.shapes import CATEGORIES, evaluation_suite

    suite = evaluation_suite()
    by_category = [[i for i in suite if i.category == category][:per_category] for category in CATEGORIES]
    return [items[rank] for rank in range(per_category) for items in by_category if rank < len(items)]


def sample(model: str, prompts: list[Any], out: Path, candidates: int, args: argparse.Namespace) -> float:
    """Sample (resuming whatever an earlier run left); returns the seconds spent."""
    from sanatool.samples.writer import sample_to_dir

    start = time.perf_counter()
    sample_to_dir(
        model, prompts, out, candidates=candidates, steps=args.steps, guidance=args.guidance, seed=args.seed,
        batch_size=args.batch_size, device=args.device, resume=True,
    )  # fmt: skip
    return time.perf_counter() - start


def judge_all(judge: Any, root: Path) -> tuple[list[Any], dict[str, Any], float]:
    """Every candidate's judgement (by image path), the prompt groups, and the seconds spent."""
    from sanatool.judges.picking import judge_records, load_samples

    groups = load_samples(root, needs_spec=True)
    records = [r for g in groups for r in g.records]
    start = time.perf_counter()
    judgements = judge_records(judge, root, records, batch_size=64)
    by_path = {r["path"]: j for r, j in zip(records, judgements, strict=True)}
    return groups, by_path, time.perf_counter() - start


def _keyed(values: dict[str, list[float]]) -> dict[tuple[str, str], float]:
    """Per-category lists of per-prompt values as :mod:`sanatool.samples.stats` takes them."""
    return {(c, f"{i:05d}"): v for c, vs in values.items() for i, v in enumerate(vs)}


def overall(values: dict[str, list[float]]) -> float:
    """GenEval's overall: the mean over categories of the per-prompt mean."""
    from sanatool.samples import stats

    return stats.overall(_keyed(values))


def bootstrap(
    per_prompt: dict[str, list[float]],
    reps: int = 2000,
    seed: int = 0,
    other: dict[str, list[float]] | None = None,
) -> tuple[float, float]:
    """A 95% percentile interval of ``overall`` (or of ``overall − overall(other)``, paired by prompt).

    Prompts are resampled within each category, so every resample keeps GenEval's weighting.
    """
    from sanatool.samples import stats

    models = {"this": _keyed(per_prompt)} | ({} if other is None else {"other": _keyed(other)})
    boot = stats.bootstrap_overall(models, resamples=reps, seed=seed)
    return stats.percentile_interval(boot["this"] - boot["other"] if other is not None else boot["this"])


def verdict(low: float, high: float) -> str:
    """What the interval of a difference says about "better"."""
    if low > 0:
        return "yes"
    if high < 0:
        return "no"
    return "not resolved"


def best_of_n(
    groups: list[Any], judged: dict[str, Any], correct: dict[str, bool], n: int, n_max: int
) -> dict[str, list[float]]:
    """Per category, per prompt: the accuracy of the judge's pick, averaged over the prompt's groups of N."""
    from sanatool.judges.tournament import select

    per_prompt: dict[str, list[float]] = {}
    for group in groups:
        records = group.records[:n_max]
        hits = []
        for start in range(0, len(records) - n + 1, n):
            chunk = records[start : start + n]
            winner = chunk[select([judged[r["path"]] for r in chunk], 1, "score").picked[0]]
            hits.append(float(correct[winner["path"]]))
        per_prompt.setdefault(records[0]["category"], []).append(statistics.fmean(hits))
    return per_prompt


def agreement(groups: list[Any], judged: dict[str, Any], correct: dict[str, bool]) -> dict[str, Any]:
    """The judge's yes/no against the evaluator's verdict over every candidate, with bootstrap intervals."""
    prompts = [[(judged[r["path"]].answer, correct[r["path"]]) for r in g.records] for g in groups]

    def stats(chosen: list[list[tuple[bool, bool]]]) -> tuple[float, float]:
        pairs = [p for prompt in chosen for p in prompt]
        pos = [a for a, c in pairs if c]
        neg = [not a for a, c in pairs if not c]
        recalls = [sum(x) / len(x) for x in (pos, neg) if x]
        return sum(a == c for a, c in pairs) / len(pairs), sum(recalls) / len(recalls)

    rng = random.Random(0)
    boots = [stats([prompts[rng.randrange(len(prompts))] for _ in prompts]) for _ in range(1000)]
    agree, balanced = stats(prompts)
    pairs = [p for prompt in prompts for p in prompt]

    def interval(values: list[float]) -> list[float]:
        values = sorted(values)
        return [round(values[25], 4), round(values[974], 4)]

    return {
        "images": len(pairs),
        "prompts": len(prompts),
        "agreement": round(agree, 4),
        "agreement_interval": interval([b[0] for b in boots]),
        "balanced_accuracy": round(balanced, 4),
        "balanced_accuracy_interval": interval([b[1] for b in boots]),
        "evaluator_yes_rate": round(sum(c for _, c in pairs) / len(pairs), 4),
        "judge_yes_rate": round(sum(a for a, _ in pairs) / len(pairs), 4),
    }


def modes(groups: list[Any], judged: dict[str, Any], correct: dict[str, bool], n: int) -> dict[str, Any]:
    """Tournament vs score at N = ``n`` for each K: same picks?, the picks' accuracy, matches."""
    from sanatool.judges.tournament import select

    out: dict[str, Any] = {}
    for k in KS:
        same = 0
        per_mode: dict[str, dict[str, list[float]]] = {"tournament": {}, "score": {}}
        matches = 0
        for group in groups:
            records = group.records[:n]
            judgements = [judged[r["path"]] for r in records]
            picks = {}
            for mode in per_mode:
                selection = select(judgements, k, mode)
                matches += selection.matches if mode == "tournament" else 0
                picks[mode] = selection.picked
                hits = statistics.fmean(float(correct[records[i]["path"]]) for i in selection.picked)
                per_mode[mode].setdefault(records[0]["category"], []).append(hits)
            same += set(picks["tournament"]) == set(picks["score"])
        out[f"k{k}"] = {
            "same_picks": round(same / len(groups), 4),
            "tournament": round(overall(per_mode["tournament"]), 4),
            "score": round(overall(per_mode["score"]), 4),
            "score_minus_tournament": [
                round(x, 4) for x in bootstrap(per_mode["score"], other=per_mode["tournament"])
            ],
            "judge_calls_per_prompt": n,
            "matches_per_prompt": {"tournament": matches / len(groups), "score": 0},
        }
    return out


def timing(judge: Any, root: Path, n: int, reps: int) -> dict[str, Any]:
    """Seconds per prompt to judge ``n`` candidates and pick K of them in each mode (median, ~95% interval)."""
    from sanatool.judges.tournament import select

    groups, judged, _ = judge_all(judge, root)
    judge_runs = []
    for _ in range(reps):
        judge_runs.append(judge_all(judge, root)[2] / len(groups))
    out: dict[str, Any] = {"judge_s_per_prompt": [round(x, 6) for x in median_interval(judge_runs)]}
    for k in KS:
        for mode in ("tournament", "score"):
            runs = []
            for _ in range(reps):
                start = time.perf_counter()
                for group in groups:
                    select([judged[r["path"]] for r in group.records[:n]], k, mode)
                runs.append((time.perf_counter() - start) / len(groups))
            out[f"k{k}_{mode}_pick_s_per_prompt"] = [round(x, 8) for x in median_interval(runs)]
    return out


def print_tables(results: dict[str, Any]) -> None:
    from sanatool.shapes import CATEGORIES

    passes = 2 if results["guidance"] > 1.0 else 1
    header = ["model", "judge", "N", "overall", "95% interval", "vs N=1", *[SHORT[c] for c in CATEGORIES],
              "fwd/prompt", "judge calls/prompt"]  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for model, per_model in results["models"].items():
        for judge, rows in per_model["judges"].items():
            base = rows[0]["overall"]
            for row in rows:
                cats = [f"{row['categories'].get(c, float('nan')):.3f}" for c in CATEGORIES]
                low, high = row["interval"]
                cells = [model, judge, str(row["n"]), f"{row['overall']:.3f}", f"{low:.3f}–{high:.3f}",
                         f"{row['overall'] / base:.2f}×" if base else "—", *cats,
                         str(row["n"] * results["steps"] * passes), str(row["n"] if row["n"] > 1 else 0)]  # fmt: skip
                print("| " + " | ".join(cells) + " |")
    for model, per_model in results["models"].items():
        agree = per_model["verifier_agreement"]
        print(
            f"\n{model}: verifier vs evaluator on {agree['images']} generated candidates of {agree['prompts']} "
            f"held-out prompts: agreement {agree['agreement']:.3f} ({agree['agreement_interval'][0]:.3f}–"
            f"{agree['agreement_interval'][1]:.3f}), balanced accuracy {agree['balanced_accuracy']:.3f} "
            f"({agree['balanced_accuracy_interval'][0]:.3f}–{agree['balanced_accuracy_interval'][1]:.3f}); "
            f"evaluator says yes {agree['evaluator_yes_rate']:.3f}, verifier {agree['judge_yes_rate']:.3f}"
        )
    if results["pruned_vs_full"]:
        print(
            "\n| model + verifier best-of-N | N | overall | full model at N = 1 | difference (95%) | better? |"
        )
        print("|---|---|---|---|---|---|")
        for row in results["pruned_vs_full"]:
            low, high = row["difference_interval"]
            print(f"| {row['model']} | {row['n']} | {row['overall']:.3f} | {row['full_n1']:.3f} | "
                  f"{row['overall'] - row['full_n1']:+.3f} ({low:+.3f} to {high:+.3f}) | {row['verdict']} |")  # fmt: skip
    print(f"\nTournament vs score, N = {results['n_max']} candidates per prompt:\n")
    print("| model | judge | K | same picks | tournament acc. | score acc. | score − tournament (95%) | "
          "judge calls/prompt | matches/prompt (tournament) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for model, per_model in results["models"].items():
        for judge, by_k in per_model["modes"].items():
            for k, row in by_k.items():
                low, high = row["score_minus_tournament"]
                print(f"| {model} | {judge} | {k[1:]} | {row['same_picks']:.3f} | {row['tournament']:.3f} | "
                      f"{row['score']:.3f} | {low:+.3f} to {high:+.3f} | {row['judge_calls_per_prompt']} | "
                      f"{row['matches_per_prompt']['tournament']:.0f} |")  # fmt: skip


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    for model, per_model in results["models"].items():
        name = Path(model).name if not model.startswith("builtin:") else model
        for judge, rows in per_model["judges"].items():
            ns = [r["n"] for r in rows]
            line = ax.plot(ns, [r["overall"] for r in rows], marker="o", label=f"{name} · {judge}")[0]
            ax.fill_between(
                ns, [r["interval"][0] for r in rows], [r["interval"][1] for r in rows],
                color=line.get_color(), alpha=0.15,
            )  # fmt: skip
    if results["models"]:
        first = next(iter(results["models"].values()))
        base = next(iter(first["judges"].values()))[0]["overall"]
        ax.axhline(base, color="grey", linestyle=":", linewidth=1, label="first model at N = 1")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N candidates per prompt (best-of-N)")
    ax.set_ylabel("overall accuracy (mean of 6 categories)")
    ax.set_title(
        f"Best-of-N on the shapes world ({results['prompts']} held-out prompts, 95% bootstrap bands)"
    )
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", action="append", default=None, help="Pipeline dir or builtin:tiny-shapes (repeat)."
    )
    parser.add_argument("--n-max", type=int, default=32)
    parser.add_argument(
        "--n-max-others",
        type=int,
        default=0,
        help="Candidates per prompt of the further models (0: --n-max).",
    )
    parser.add_argument(
        "--per-category", type=int, default=10, help="Evaluation prompts per category (≤ 50)."
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    parser.add_argument("--work", type=Path, default=Path("inference-scaling-work"))
    parser.add_argument(
        "--verifier", type=Path, default=None, help="A verifier dir (default: the shipped one)."
    )
    parser.add_argument("--timing", action="store_true", help="Also time judging and picking (use flock).")
    parser.add_argument("--reps", type=int, default=5, help="Timed repetitions with --timing.")
    parser.add_argument("--plot", type=Path, default=Path("benchmarks/inference_scaling.png"))
    args = parser.parse_args()
    models = args.model or ["builtin:tiny-shapes"]

    import torch

    from sanatool.io.modeldir import open_model_dir
    from sanatool.judges.oracle import ShapesOracleJudge
    from sanatool.judges.verifier import VerifierJudge, shipped_verifier_path
    from sanatool.samples.evaluate import evaluate_samples_dir
    from sanatool.shapes import CATEGORIES

    if args.threads:
        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    prompts = suite_subset(args.per_category)
    verifier_path = args.verifier or shipped_verifier_path()
    judges = {"shapes (oracle)": ShapesOracleJudge(), "verifier": VerifierJudge(verifier_path)}
    results: dict[str, Any] = {
        "prompts": len(prompts), "n_max": args.n_max, "steps": args.steps, "guidance": args.guidance,
        "verifier": str(verifier_path), "models": {}, "pruned_vs_full": [],
    }  # fmt: skip
    per_prompt_verifier: dict[str, dict[int, dict[str, list[float]]]] = {}
    for index, model in enumerate(models):
        root = args.work / f"samples-{index}"
        n_max = args.n_max if index == 0 else args.n_max_others or args.n_max
        sample_seconds = sample(model, prompts, root, n_max, args)
        correct = {image.path: image.correct for image in evaluate_samples_dir(root).images}
        per_model: dict[str, Any] = {
            "fingerprint": open_model_dir(model).fingerprint(),
            "sample_seconds": round(sample_seconds, 1),
            "judges": {},
            "judge_seconds": {},
            "modes": {},
        }
        for name, judge in judges.items():
            groups, judged, seconds = judge_all(judge, root)
            rows = []
            for n in (n for n in NS if n <= n_max):
                values = best_of_n(groups, judged, correct, n, n_max)
                categories = {c: statistics.fmean(values[c]) for c in CATEGORIES if values.get(c)}
                low, high = bootstrap(values)
                rows.append(
                    {"n": n, "overall": overall(values), "interval": [low, high], "categories": categories}
                )
                if not judge.oracle:
                    per_prompt_verifier.setdefault(model, {})[n] = values
            per_model["judges"][name] = rows
            per_model["judge_seconds"][name] = round(seconds, 1)
            if index == 0:
                per_model["modes"][name] = modes(groups, judged, correct, n_max)
            if not judge.oracle:
                per_model["verifier_agreement"] = agreement(groups, judged, correct)
            if args.timing and index == 0:
                per_model.setdefault("timing", {})[name] = timing(judge, root, n_max, args.reps)
        results["models"][model] = per_model

    full = per_prompt_verifier[models[0]][1]
    for model in models[1:]:
        for n, values in per_prompt_verifier[model].items():
            low, high = bootstrap(values, other=full)
            results["pruned_vs_full"].append({
                "model": model, "n": n, "overall": overall(values), "full_n1": overall(full),
                "difference_interval": [low, high], "verdict": verdict(low, high),
            })  # fmt: skip

    print(f"{len(prompts)} evaluation prompts, {args.n_max} candidates each, {args.steps} steps, "
          f"guidance {args.guidance}; verifier {verifier_path}\n")  # fmt: skip
    print_tables(results)
    for model, per_model in results["models"].items():
        print(f"\n{model} (fingerprint {per_model['fingerprint']}): sampling {per_model['sample_seconds']} s, "
              f"judging {per_model['judge_seconds']} s")  # fmt: skip
        for name, row in per_model.get("timing", {}).items():
            print(f"  timing, {name}: {json.dumps(row)}")
    (args.work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.plot)
    print(f"\nresults: {args.work / 'results.json'}, plot: {args.plot}")


if __name__ == "__main__":
    main()
