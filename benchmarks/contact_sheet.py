"""Time of the contact sheets the full demo draws: labelled sheets (this tree) against bare ones (a baseline).

The full `sanatool demo` samples 180 prompts (30 per category) four times with one candidate per
prompt and once with four, judges the four (a picks grid and, new, ``candidates.png``) and
evaluates five samples dirs (new: each redraws its grid with the verdicts). This script draws
those sheets from 32 px images, as the demo's are, with ``write_contact_sheet`` of this tree and
of a baseline tree (``--baseline``, e.g. the checkout before labels; its ``sanatool/samples/sheet.py``
is loaded as a file). Runs alternate between the two. Medians in milliseconds; "new/old" is the
median of the paired ratios with its distribution-free ~95% interval and the verdict from it;
the last line adds up what the new sheets cost the demo per run.

    flock /tmp/bench.lock env OMP_NUM_THREADS=1 python benchmarks/contact_sheet.py --baseline /work/main [--runs 7]
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from startup import median_interval, verdict  # noqa: E402 - the benchmarks' one interval rule

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))
from sanatool.samples.sheet import Verdict, write_contact_sheet  # noqa: E402

PROMPTS = 180
PROMPT = "a photo of a yellow triangle to the left of a yellow square"


def _samples(root: Path, candidates: int) -> list[dict]:
    (root / "images").mkdir(parents=True)
    records = []
    for p in range(PROMPTS):
        for c in range(candidates):
            path = f"images/p{p:05d}_c{c:03d}.png"
            Image.new("RGB", (32, 32), (p, 40 * c, 200)).save(root / path)
            records.append(
                {"prompt": PROMPT, "prompt_index": p, "candidate": c, "seed": 2**52 + p, "path": path,
                 "height": 32, "width": 32, "score": 0.5, "picked": c == 0}
            )  # fmt: skip
    return records


def _load_baseline(root: Path):
    spec = importlib.util.spec_from_file_location(
        "baseline_sheet", root / "sanatool" / "samples" / "sheet.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_contact_sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--baseline", type=Path, required=True, help="Root of the sanatool checkout to compare."
    )
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    old_sheet = _load_baseline(args.baseline)
    work = Path(tempfile.mkdtemp(prefix="sheet-bench-"))
    try:
        cases = {}
        for candidates in (1, 4):
            root = work / f"n{candidates}"
            records = _samples(root, candidates)
            verdicts = {r["path"]: Verdict(r["candidate"] % 2 == 0, 0.5) for r in records}
            cases[candidates] = (root, records, verdicts)
        rows = []
        for candidates, (root, records, verdicts) in cases.items():
            times: dict[str, list[float]] = {"old": [], "new": [], "new + verdicts": []}
            for _ in range(args.runs):
                for name in times:
                    start = time.perf_counter()
                    if name == "old":
                        old_sheet(root, records, root / "old.png")
                    else:
                        write_contact_sheet(
                            root, records, root / "new.png", verdicts if "verdicts" in name else None
                        )
                    times[name].append((time.perf_counter() - start) * 1000)
            ratios = [n / o for n, o in zip(times["new + verdicts"], times["old"], strict=True)]
            rows.append((candidates, times, median_interval(ratios)))
        print(f"Contact sheets of {PROMPTS} prompts of 32 px images, ms, median of {args.runs} runs")
        print(
            "| candidates | old (bare) | new (labels) | new + verdicts | new+verdicts/old [~95%] | verdict |"
        )
        print("|---|---|---|---|---|---|")
        for candidates, times, (ratio, low, high) in rows:
            old, new, marked = (median_interval(times[k])[0] for k in ("old", "new", "new + verdicts"))
            print(f"| {candidates} | {old:.0f} | {new:.0f} | {marked:.0f} | {ratio:.2f} [{low:.2f}, {high:.2f}] | "
                  f"{verdict(low, high)} |")  # fmt: skip
        # The demo: 4 one-candidate sample grids (full, pruned, fine-tuned; and the picks), one
        # four-candidate grid and the judge's candidates.png; then five eval redraws (3 + picks + the 4).
        one = {k: median_interval(v)[0] for k, v in rows[0][1].items()}
        four = {k: median_interval(v)[0] for k, v in rows[1][1].items()}
        before = 4 * one["old"] + four["old"]
        after = 4 * one["new"] + 2 * four["new"] + 4 * one["new + verdicts"] + four["new + verdicts"]
        print(
            f"\nfull demo: sheets {before / 1000:.2f} s before, {after / 1000:.2f} s now (+{(after - before) / 1000:.2f} s)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
