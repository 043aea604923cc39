"""Start-up time of short commands (`prune --dry-run`, `grow --dry-run`, `info`), against a baseline tree.

Shell pipelines call sanatool often, so a command's start-up is part of every surgery's wall time.
Each run is a fresh `python -m sanatool …` process on a tiny model; the runs of this tree and of
the baseline tree (another checkout, e.g. `git worktree add /tmp/old HEAD~3`) alternate, so drift
in the machine's speed hits both alike. Both trees are byte-compiled first, as an install does.
`python -c pass` in the same run is the floor. Medians in milliseconds. "× baseline" is the median
of the paired ratios (run i of this tree over run i of the baseline) with its distribution-free 95%
interval (order statistics of the ratios); the verdict comes from that interval: "slower" when it
lies above 1, "faster" below 1, else "no difference measured".

    python benchmarks/startup.py [--baseline /tmp/old] [--runs 10]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def _timed(args: list[str], tree: Path | None, cwd: Path) -> float:
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, cwd=cwd, check=True, capture_output=True)
    return (time.perf_counter() - start) * 1000


def median_interval(values: list[float]) -> tuple[float, float, float]:
    """The median and a distribution-free ~95% interval for it (order statistics, normal approximation)."""
    ordered = sorted(values)
    n = len(ordered)
    low = max(0, math.floor(n / 2 - 0.98 * math.sqrt(n)))
    return statistics.median(ordered), ordered[low], ordered[min(n - 1, n - 1 - low)]


def verdict(low: float, high: float) -> str:
    """What an interval of ratios says."""
    if low > 1:
        return "slower"
    if high < 1:
        return "faster"
    return "no difference measured"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, default=None, help="Root of another sanatool checkout.")
    parser.add_argument("--runs", type=int, default=10, help="Runs of each command in each tree.")
    args = parser.parse_args()

    trees = {"this tree": HERE}
    if args.baseline is not None:
        trees["baseline"] = args.baseline.resolve()
    work = Path(tempfile.mkdtemp(prefix="sanatool-startup-"))
    for tree in trees.values():
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "sanatool")], check=True)
    model = work / "tiny"
    subprocess.run(
        [sys.executable, "-m", "sanatool", "init", "--preset", "tiny", "-o", str(model)],
        env={**os.environ, "PYTHONPATH": str(HERE)},
        check=True,
        capture_output=True,
    )
    commands = {
        "prune --dry-run": [
            "-m",
            "sanatool",
            "prune",
            str(model),
            "--keep-blocks",
            "0-3",
            "-o",
            "out",
            "--dry-run",
        ],
        "grow --dry-run": ["-m", "sanatool", "grow", str(model), "--to", "12", "-o", "out", "--dry-run"],
        "info --json": ["-m", "sanatool", "info", str(model), "--json"],
    }
    times: dict[tuple[str, str], list[float]] = {}
    floor = []
    load_before = os.getloadavg()[0]
    for _ in range(args.runs):
        floor.append(_timed(["-c", "pass"], None, work))
        for name, command in commands.items():
            for label, tree in trees.items():
                times.setdefault((name, label), []).append(_timed(command, tree, work))
    load_after = os.getloadavg()[0]

    print(
        f"\n{args.runs} runs each, alternating; `python -c pass` {statistics.median(floor):.0f} ms; "
        f"load average {load_before:.1f} before, {load_after:.1f} after\n"
    )
    print(
        "| command          | tree      | median ms | min ms | max ms | × baseline (95% interval) | verdict |"
    )
    print(
        "|------------------|-----------|-----------|--------|--------|---------------------------|---------|"
    )
    for name in commands:
        base = times.get((name, "baseline"))
        for label in trees:
            runs = times[(name, label)]
            ratio, said = "—", ""
            if base and label != "baseline":
                middle, low, high = median_interval([a / b for a, b in zip(runs, base, strict=True)])
                ratio, said = f"{middle:.2f} ({low:.2f}–{high:.2f})", verdict(low, high)
            print(
                f"| {name:<16} | {label:<9} | {statistics.median(runs):>9.0f} | {min(runs):>6.0f} | "
                f"{max(runs):>6.0f} | {ratio:>25} | {said} |"
            )


if __name__ == "__main__":
    main()
