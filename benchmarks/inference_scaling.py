"""Inference-time scaling on the shapes world: best-of-N with a judge, N = 1 … 32.

For each model: sample ``--n-max`` candidates per prompt of the shapes evaluation suite once,
judge every candidate once with each judge (the ``shapes`` oracle and the learned verifier),
then for each N split the candidates into ``n-max / N`` disjoint groups of N, let a knockout
tournament pick one per group, and score the picks with the rule-based evaluator (GenEval
style: per-category accuracy, overall = mean of the six). N = 1 (no judge) is the baseline
every row is compared with. Compute per prompt is counted: transformer forwards
(N × steps × 2 with classifier-free guidance: each image's conditional and unconditional
pass) and judge calls (N: each candidate is judged once; the tournament plays N − 1 matches
on those judgements).

Unless ``--verifier`` names one, a verifier is trained first on the first model's samples of
*training* captions (never evaluation prompts) plus renders; its agreement with the evaluator
is then measured on the evaluation suite's generated candidates, which it never saw.

    python benchmarks/inference_scaling.py --model builtin:tiny-shapes [--model PRUNED_DIR] \\
        [--n-max 32] [--per-category 50] [--steps 20] [--work DIR] [--verifier DIR]

Samples, the verifier and the results are kept under ``--work`` (rerunning reuses them).

``--synthetic P`` replaces the model by a stand-in generator, to measure the judges (and
validate this script) before a trained model exists: each candidate is, with probability P, a
render of its prompt, else a render of a *mismatched* prompt of the same category (colour
swapped, count off by one, relation reversed, …), blurred and noised like a decoder output.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

NS = (1, 2, 4, 8, 16, 32)


def suite_subset(per_category: int) -> list[Any]:
    """The first ``per_category`` evaluation prompts of each category (the suite lists categories in blocks)."""
    from sanatool.shapes import CATEGORIES, evaluation_suite

    suite = evaluation_suite()
    return [
        item
        for category in CATEGORIES
        for item in [i for i in suite if i.category == category][:per_category]
    ]


def sample(model: str, prompts: list[Any], out: Path, candidates: int, args: argparse.Namespace) -> float:
    """Sample (resuming whatever an earlier run left); returns the seconds spent."""
    from sanatool.samples.writer import sample_to_dir

    start = time.perf_counter()
    sample_to_dir(
        model, prompts, out, candidates=candidates, steps=args.steps, guidance=args.guidance, seed=args.seed,
        batch_size=args.batch_size, device=args.device, resume=out.exists(),
    )  # fmt: skip
    return time.perf_counter() - start


def synthesize(prompts: list[Any], out: Path, candidates: int, p_correct: float, seed: int) -> float:
    """Write a samples dir of stand-in candidates (see ``--synthetic``); returns the seconds spent."""
    import random

    from sanatool.io.manifest import image_relpath, write_manifest
    from sanatool.shapes import degrade, mismatched_spec, render_spec

    start = time.perf_counter()
    if (out / "manifest.jsonl").is_file():
        return 0.0
    rng = random.Random(seed)
    (out / "images").mkdir(parents=True)
    rows = []
    for p, item in enumerate(prompts):
        for c in range(candidates):
            good = rng.random() < p_correct
            spec = item.spec if good else mismatched_spec(item.spec, item.category, rng)
            image = render_spec(spec, size=32, seed=rng.randrange(2**31))
            image = degrade(
                image, blur=rng.uniform(0.3, 1.0), noise=rng.uniform(2.0, 10.0), seed=rng.randrange(2**31)
            )
            image.save(out / image_relpath(p, c))
            rows.append({"prompt": item.prompt, "prompt_index": p, "candidate": c, "path": image_relpath(p, c),
                         "spec": item.spec, "category": item.category})  # fmt: skip
    write_manifest(out / "manifest.jsonl", rows)
    return time.perf_counter() - start


def ensure_verifier(args: argparse.Namespace, work: Path) -> tuple[Path, float]:
    """The verifier to judge with: ``--verifier``, or one trained here on training-caption samples."""
    from sanatool.judges.verifier_train import VerifierTraining, train_verifier
    from sanatool.shapes import training_captions

    if args.verifier is not None:
        return args.verifier, 0.0
    if args.synthetic is not None:
        raise SystemExit("--synthetic needs --verifier DIR (train one with `sanatool train-verifier`)")
    path = work / "verifier"
    if (path / "verifier.json").is_file():
        return path, 0.0
    samples = work / "verifier-samples"
    spent = sample(
        args.model[0],
        training_captions(args.verifier_prompts, seed=1),
        samples,
        args.verifier_candidates,
        args,
    )
    start = time.perf_counter()
    train_verifier(path, VerifierTraining(steps=args.verifier_steps, samples=[samples], seed=args.seed))
    return path, spent + time.perf_counter() - start


def judge_all(judge: Any, root: Path) -> tuple[list[Any], dict[str, Any], float]:
    """Every candidate's judgement, grouped per prompt, with the seconds spent."""
    from sanatool.judges.picking import judge_records, load_samples

    groups = load_samples(root, needs_spec=True)
    records = [r for g in groups for r in g.records]
    start = time.perf_counter()
    judgements = judge_records(judge, root, records, batch_size=64)
    by_path = {r["path"]: j for r, j in zip(records, judgements, strict=True)}
    return groups, by_path, time.perf_counter() - start


def scaling_rows(
    groups: list[Any], judged: dict[str, Any], correct: dict[str, bool], n_max: int
) -> list[dict]:
    """Per N: accuracy of tournament picks, averaged over the ``n_max / N`` disjoint groups of each prompt."""
    from sanatool.judges.tournament import knockout
    from sanatool.shapes import CATEGORIES

    rows = []
    for n in (n for n in NS if n <= n_max):
        hits: dict[str, list[float]] = {c: [] for c in CATEGORIES}
        for group in groups:
            records = group.records[:n_max]
            for start in range(0, len(records) - n + 1, n):
                chunk = records[start : start + n]
                winner = chunk[knockout([judged[r["path"]] for r in chunk], 1).picked[0]]
                hits[winner["category"]].append(float(correct[winner["path"]]))
        categories = {c: sum(v) / len(v) for c, v in hits.items() if v}
        rows.append({"n": n, "overall": sum(categories.values()) / len(categories), "categories": categories})
    return rows


def agreement(groups: list[Any], judged: dict[str, Any], correct: dict[str, bool]) -> dict[str, float]:
    """How often the judge's yes/no equals the evaluator's verdict, over every candidate."""
    pairs = [(judged[r["path"]].answer, correct[r["path"]]) for g in groups for r in g.records]
    pos = [a for a, c in pairs if c]
    neg = [not a for a, c in pairs if not c]
    recalls = [sum(x) / len(x) for x in (pos, neg) if x]
    return {
        "images": len(pairs),
        "agreement": sum(a == c for a, c in pairs) / len(pairs),
        "balanced_accuracy": sum(recalls) / len(recalls),
        "evaluator_yes_rate": len(pos) / len(pairs),
        "judge_yes_rate": sum(a for a, _ in pairs) / len(pairs),
    }


def print_table(results: dict[str, Any], steps: int, guidance: float, synthetic: bool) -> None:
    from sanatool.shapes import CATEGORIES

    passes = 2 if guidance > 1.0 else 1
    short = {"single_object": "single", "two_object": "two", "counting": "count", "colors": "colors",
             "position": "position", "color_attr": "attr"}  # fmt: skip
    header = [
        "model",
        "judge",
        "N",
        "overall",
        "vs N=1",
        *[short[c] for c in CATEGORIES],
        "fwd/prompt",
        "judge/prompt",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for model, per_model in results["models"].items():
        for judge, rows in per_model["judges"].items():
            base = rows[0]["overall"]
            for row in rows:
                cats = [f"{row['categories'].get(c, float('nan')):.3f}" for c in CATEGORIES]
                ratio = f"{row['overall'] / base:.2f}×" if base else "—"
                judge_calls = row["n"] if row["n"] > 1 else 0
                cells = [model, judge, str(row["n"]), f"{row['overall']:.3f}", ratio, *cats,
                         "—" if synthetic else str(row["n"] * steps * passes), str(judge_calls)]  # fmt: skip
                print("| " + " | ".join(cells) + " |")


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for model, per_model in results["models"].items():
        for judge, rows in per_model["judges"].items():
            ax.plot(
                [r["n"] for r in rows], [r["overall"] for r in rows], marker="o", label=f"{model} · {judge}"
            )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N candidates per prompt (best-of-N, knockout tournament)")
    ax.set_ylabel("overall accuracy (mean of 6 categories)")
    ax.set_title("Inference-time scaling on the shapes world")
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
        "--per-category", type=int, default=50, help="Evaluation prompts per category (≤ 50)."
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    parser.add_argument("--work", type=Path, default=Path("inference-scaling-work"))
    parser.add_argument(
        "--verifier", type=Path, default=None, help="A trained verifier dir (else one is trained)."
    )
    parser.add_argument("--verifier-steps", type=int, default=3000)
    parser.add_argument(
        "--verifier-prompts", type=int, default=300, help="Training captions sampled for the verifier."
    )
    parser.add_argument("--verifier-candidates", type=int, default=4)
    parser.add_argument("--label", default="", help="A note printed with the results (e.g. 'random model').")
    parser.add_argument(
        "--synthetic",
        type=float,
        default=None,
        metavar="P",
        help="Stand-in candidates, correct with probability P.",
    )
    parser.add_argument("--plot", type=Path, default=Path("benchmarks/inference_scaling.png"))
    args = parser.parse_args()
    models = (
        [f"synthetic (p={args.synthetic})"]
        if args.synthetic is not None
        else args.model or ["builtin:tiny-shapes"]
    )
    args.model = models

    import torch

    from sanatool.io.modeldir import open_model_dir
    from sanatool.judges.oracle import ShapesOracleJudge
    from sanatool.judges.verifier import VerifierJudge
    from sanatool.samples.evaluate import evaluate_samples_dir

    if args.threads:
        torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    prompts = suite_subset(args.per_category)
    verifier_path, verifier_seconds = ensure_verifier(args, args.work)
    judges = {"shapes (oracle)": ShapesOracleJudge(), "verifier": VerifierJudge(verifier_path)}
    results: dict[str, Any] = {
        "label": args.label, "prompts": len(prompts), "n_max": args.n_max, "steps": args.steps,
        "guidance": args.guidance, "verifier": str(verifier_path), "verifier_seconds": round(verifier_seconds, 1),
        "models": {},
    }  # fmt: skip
    for index, model in enumerate(models):
        root = args.work / f"samples-{index}"
        if args.synthetic is not None:
            sample_seconds = synthesize(prompts, root, args.n_max, args.synthetic, args.seed)
        else:
            sample_seconds = sample(model, prompts, root, args.n_max, args)
        report = evaluate_samples_dir(root)
        correct = {image.path: image.correct for image in report.images}
        per_model: dict[str, Any] = {
            "fingerprint": "—" if args.synthetic is not None else open_model_dir(model).fingerprint(),
            "sample_seconds": round(sample_seconds, 1),
            "judges": {},
            "judge_seconds": {},
        }
        for name, judge in judges.items():
            groups, judged, seconds = judge_all(judge, root)
            per_model["judges"][name] = scaling_rows(groups, judged, correct, args.n_max)
            per_model["judge_seconds"][name] = round(seconds, 1)
            if not judge.oracle:
                per_model["verifier_agreement"] = agreement(groups, judged, correct)
        results["models"][model] = per_model

    if args.label:
        print(f"**{args.label}**\n")
    print(
        f"{len(prompts)} evaluation prompts, {args.n_max} candidates each, {args.steps} steps, guidance {args.guidance}\n"
    )
    print_table(results, args.steps, args.guidance, args.synthetic is not None)
    for model, per_model in results["models"].items():
        agree = per_model.get("verifier_agreement")
        if agree:
            print(
                f"\n{model}: verifier vs evaluator on {agree['images']} generated candidates: agreement "
                f"{agree['agreement']:.3f}, balanced accuracy {agree['balanced_accuracy']:.3f} "
                f"(evaluator says yes {agree['evaluator_yes_rate']:.3f}, verifier {agree['judge_yes_rate']:.3f})"
            )
        print(
            f"{model} (fingerprint {per_model['fingerprint']}): sampling {per_model['sample_seconds']} s, "
            f"judging {per_model['judge_seconds']} s; verifier built in {results['verifier_seconds']} s"
        )
    (args.work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.plot)
    print(f"\nresults: {args.work / 'results.json'}, plot: {args.plot}")


if __name__ == "__main__":
    main()
