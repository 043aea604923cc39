"""Wall time of the README's demo command, alone and beside a busy process, old and new thread choice.

The README promises `sanatool demo --quick -o demo` in under a minute and `sanatool demo` in about two
on a 2-core machine. Each run is a fresh `python -m sanatool demo [--quick] -o DIR` process of this
tree. Two thread choices: "old" forces torch's default (one thread per CPU, `OMP_NUM_THREADS` = the
CPUs this process may use), "new" leaves `OMP_NUM_THREADS` unset so sanatool picks
(`sanatool.distributed.choose_cpu_threads`). Two machine states: "alone", and "busy" with a second
process spinning one core (`python -c 'while True: pass'`, started 2 s before the run). Each round
runs the four cases in a shuffled order, so drift hits all alike. Medians in seconds; "new/old" is
the median of the paired ratios with its distribution-free ~95% interval and the verdict from it.

    flock /tmp/bench.lock python benchmarks/demo_time.py [--runs 3] [--full] [--workdir /tmp/demo-bench]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from startup import median_interval, verdict  # noqa: E402 - the benchmarks' one interval rule

HERE = Path(__file__).resolve().parent.parent
CASES = [(state, choice) for state in ("alone", "busy") for choice in ("old", "new")]


def _run(quick: bool, state: str, choice: str, out: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = str(HERE)
    if choice == "old":
        env["OMP_NUM_THREADS"] = str(len(os.sched_getaffinity(0)))
    busy = None
    if state == "busy":
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(2)
    try:
        command = [sys.executable, "-m", "sanatool", "demo", *(["--quick"] if quick else []), "-o", str(out)]
        start = time.perf_counter()
        done = subprocess.run(command, env=env, cwd=HERE, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{' '.join(command)} exited {done.returncode}: {done.stderr[-2000:]}")
        return time.perf_counter() - start
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
        shutil.rmtree(out, ignore_errors=True)


def _table(name: str, times: dict[tuple[str, str], list[float]]) -> None:
    print(f"\n`{name}` wall seconds, median [~95% interval] of {len(times[CASES[0]])} runs")
    print("| machine | old (threads = CPUs) | new (sanatool picks) | new/old (paired) | verdict |")
    print("|---|---|---|---|---|")
    for state in ("alone", "busy"):
        old, new = times[(state, "old")], times[(state, "new")]
        ratios = [n / o for n, o in zip(new, old, strict=True)]
        cells = []
        for values in (old, new):
            mid, low, high = median_interval(values)
            cells.append(f"{mid:.1f} [{low:.1f}, {high:.1f}]")
        mid, low, high = median_interval(ratios)
        print(
            f"| {state} | {cells[0]} | {cells[1]} | {mid:.2f} [{low:.2f}, {high:.2f}] | {verdict(low, high)} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="also time the full `demo` (minutes a run)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="demo-bench-", dir=args.workdir))
    print(
        f"{len(os.sched_getaffinity(0))} CPUs, load average {os.getloadavg()[0]:.2f} at start, "
        f"{time.strftime('%Y-%m-%d %H:%M')}"
    )
    rng = random.Random(0)
    for quick in [True, False] if args.full else [True]:
        times: dict[tuple[str, str], list[float]] = {case: [] for case in CASES}
        for round_ in range(args.runs):
            order = list(CASES)
            rng.shuffle(order)
            for state, choice in order:
                seconds = _run(quick, state, choice, workdir / f"demo-{round_}-{state}-{choice}")
                times[(state, choice)].append(seconds)
                print(
                    f"  {'--quick' if quick else 'full'} round {round_} {state} {choice}: {seconds:.1f} s",
                    flush=True,
                )
        _table("sanatool demo --quick -o demo" if quick else "sanatool demo", times)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
