"""Speed and peak memory of `convert`, both ways, against a copy of the same bytes in the same run.

A random transformer is made with `sanatool init` (bf16 by default), converted once to the original
layout (the source of the way back), and then, for each repeat, in a seeded shuffled order:

- `sanatool convert DIR -o FILE.safetensors` (diffusers → original: q/k/v and k/v are concatenated,
  the rest copied with `copy_file_range`),
- `sanatool convert FILE.safetensors -o DIR` (original → diffusers: every tensor a byte range),
- for each, a copy of as many bytes as it writes from its source (`copy_file_range`, the kernel
  path `cp` takes): the disk-speed floor and the baseline of "× copy".

Every timing starts and ends after `sync` (written bytes on disk), the sources are read once
beforehand so every method reads them from the page cache. Peak RSS is `/usr/bin/time`'s maximum
resident set size. "× copy" is the median of the per-repeat ratios (convert over the copy run
in the same repeat) with a distribution-free interval; the verdict compares it with the goal
(≤ 1.5× copy).

    OMP_NUM_THREADS=1 flock /tmp/bench.lock python benchmarks/convert.py [--preset sana1.5-4.8b]
        [--dtype bf16] [--repeats 3] [--workdir DIR]

Three checkpoints exist at a time (source dir, original file, one output); all deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import sanatool as sanatool_pkg
from sanatool.formatting import human_bytes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from startup import median_interval  # noqa: E402 - the benchmarks' one interval rule
from surgery import _timed as timed_command  # noqa: E402 - the benchmarks' one timed subprocess

GOAL_RATIO = 1.5
GOAL_RSS = 600 * 10**6

# The floor: copy exactly N bytes from the source's safetensors files with copy_file_range.
_COPY = r"""
import os, sys
src, dst, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
files = [src] if os.path.isfile(src) else sorted(
    os.path.join(d, f) for d, _, names in os.walk(src) for f in names if f.endswith(".safetensors"))
if not files:
    sys.exit(f"no safetensors in {src}")
with open(dst, "wb") as out:
    while total:
        for name in files:
            with open(name, "rb") as f:
                size = min(os.fstat(f.fileno()).st_size, total)
                done = 0
                while done < size:
                    done += os.copy_file_range(f.fileno(), out.fileno(), size - done, done)
                total -= size
            if not total:
                break
"""


def _timed(cmd: list[str], rss_file: Path) -> tuple[float, int]:
    """Wall seconds (sync to sync) and peak RSS bytes of one command."""
    seconds, _, peak = timed_command(cmd, rss_file)
    return seconds, peak


def _bytes(path: Path) -> int:
    return (
        path.stat().st_size
        if path.is_file()
        else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    )


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    os.sync()


def _warm(path: Path) -> None:
    for file in [path] if path.is_file() else sorted(path.rglob("*.safetensors")):
        with open(file, "rb") as handle:
            while handle.read(1 << 26):
                pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sana1.5-4.8b")
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="Parent of the scratch dir.")
    args = parser.parse_args()

    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sanatool-convert-bench-", dir=args.workdir))
    src, original, rss = work / "src", work / "original.safetensors", work / "rss.txt"
    here = Path(sanatool_pkg.__file__).resolve().parent.parent
    sanatool = ["env", f"PYTHONPATH={here}", sys.executable, "-m", "sanatool"]
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(here / "sanatool")], check=True)
    load_before = os.getloadavg()
    try:
        init_s, _ = _timed(
            [*sanatool, "init", "--preset", args.preset, "--dtype", args.dtype, "-o", str(src)], rss
        )
        operations = {
            "diffusers → original": (src, work / "out.safetensors"),
            "original → diffusers": (original, work / "out-dir"),
        }
        # One untimed conversion each way: the original file (the way back's source), and the bytes
        # each way writes (what its copy copies).
        subprocess.run([*sanatool, "convert", str(src), "-o", str(original)], check=True, capture_output=True)
        sizes = {"diffusers → original": _bytes(original)}
        back = operations["original → diffusers"][1]
        subprocess.run(
            [*sanatool, "convert", str(original), "-o", str(back)], check=True, capture_output=True
        )
        sizes["original → diffusers"] = _bytes(back)
        _remove(back)
        _warm(src)
        _warm(original)
        results: dict[tuple[str, str], list[tuple[float, int, int]]] = {}
        for repeat in range(args.repeats):
            methods = [
                (name, method, source, out)
                for name, (source, out) in operations.items()
                for method in ("sanatool convert", "copy of the same bytes")
            ]
            random.Random(repeat).shuffle(methods)
            for name, method, source, out in methods:
                if method == "sanatool convert":
                    cmd = [*sanatool, "convert", str(source), "-o", str(out)]
                else:
                    cmd = [sys.executable, "-c", _COPY, str(source), str(out), str(sizes[name])]
                seconds, peak = _timed(cmd, rss)
                results.setdefault((name, method), []).append((seconds, peak, _bytes(out)))
                _remove(out)
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\n{args.preset} {args.dtype}: init {init_s:.1f} s; {args.repeats} repeats; "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after\n"
    )
    header = (
        f"| {'operation':<22} | {'method':<22} | {'written':>9} | {'wall s (median)':>15} | {'GB/s':>5} "
        f"| {'peak RSS':>9} | {'all runs, s':<20} |"
    )
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
    verdicts = []
    for name in operations:
        for method in ("sanatool convert", "copy of the same bytes"):
            runs = results[(name, method)]
            seconds = statistics.median(s for s, _, _ in runs)
            peak = max(p for _, p, _ in runs)
            written = runs[0][2]
            print(
                f"| {name:<22} | {method:<22} | {human_bytes(written):>9} | {seconds:>15.2f} | "
                f"{written / seconds / 1e9:>5.2f} | {human_bytes(peak):>9} | "
                f"{' '.join(f'{s:.1f}' for s, _, _ in runs):<20} |"
            )
        ratios = [
            a / b
            for (a, _, _), (b, _, _) in zip(
                results[(name, "sanatool convert")], results[(name, "copy of the same bytes")], strict=True
            )
        ]
        middle, low, high = median_interval(ratios)
        peak = max(p for _, p, _ in results[(name, "sanatool convert")])
        speed = (
            "meets"
            if high <= GOAL_RATIO
            else ("misses" if low > GOAL_RATIO else "cannot tell whether it meets")
        )
        memory = "meets" if peak <= GOAL_RSS else "misses"
        verdicts.append(
            f"{name}: × copy {middle:.2f} (interval {low:.2f}–{high:.2f}): {speed} the ≤ {GOAL_RATIO}× goal; "
            f"peak RSS {human_bytes(peak)}: {memory} the ≤ {human_bytes(GOAL_RSS)} goal"
        )
    print()
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
