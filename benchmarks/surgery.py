"""Speed and peak memory of `grow` and `prune` against `cp -r` and the naive load-edit-save.

A random checkpoint is made with `sanatool init`; then, for each operation and each repeat, in
the same run and interleaved so that load from other processes hits every method alike:

- the `sanatool` command (a fresh process, as a user runs it),
- a copy of the bytes that command writes (`copy_file_range` from the source files, the kernel
  path `cp` takes): the disk-speed floor, and the baseline of "× copy",
- `cp -r` of the source checkpoint,
- the naive way: load the whole state dict with `safetensors.torch.load_file`, edit it in memory,
  `save_file` it (a fresh process).

Every timing starts after `sync` and ends after `sync`, so written bytes are on disk, not only in
the page cache; the source is read once beforehand so every method reads it from the cache.
sanatool's modules are byte-compiled first, as an install does (with PYTHONDONTWRITEBYTECODE set,
every run would otherwise compile them again, some 20 ms of each start-up). Peak
RSS is `/usr/bin/time`'s maximum resident set size of the process, CPU s its user + system time
(on a shared machine the wall times vary with other load; CPU time much less). "× copy" divides
a method's median time by the median time of copying the same number of bytes. The order of the
methods is shuffled (seeded) from repeat to repeat, so none always runs first, or always after the
same method, after the previous output is freed (on a VM, writing into memory the guest has not
touched for a while costs extra).

    python benchmarks/surgery.py [--preset sana1.5-1.6b] [--dtype bf16] [--repeats 3] [--workdir DIR]
                                 [--baseline OTHER_CHECKOUT]

With `--baseline`, the `sanatool` of another checkout (e.g. `git worktree add /tmp/old HEAD~3`) runs
as one more method in the same shuffled order, its output's weights and config are checked to be the same
bytes as this tree's, and the paired ratios (this tree over the baseline, repeat by repeat) are
summarised by their median, a distribution-free interval and the verdict it gives.

At most two checkpoints exist at a time (the source and one output); everything is deleted at the
end unless --keep.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sanatool as sanatool_pkg
from sanatool.formatting import format_block_list, human_bytes
from sanatool.io.modeldir import open_model_dir
from sanatool.surgery.grow import plan_grow
from sanatool.surgery.prune import naive_selection, plan_prune

sys.path.insert(0, str(Path(__file__).resolve().parent))
from startup import median_interval, verdict  # noqa: E402 - the benchmarks' one interval rule

# The disk-speed floor: copy exactly N bytes from the source shards with copy_file_range.
_COPY = r"""
import os, sys
src, dst, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
shards = sorted(os.path.join(src, f) for f in os.listdir(src) if f.endswith(".safetensors"))
os.mkdir(dst)
with open(os.path.join(dst, "copy.bin"), "wb") as out:
    while total:
        for shard in shards:
            with open(shard, "rb") as f:
                size = min(os.fstat(f.fileno()).st_size, total)
                done = 0
                while done < size:
                    done += os.copy_file_range(f.fileno(), out.fileno(), size - done, done)
                total -= size
            if not total:
                break
"""

# The naive baseline: the whole state dict in memory, edited, saved in one file.
_NAIVE = r"""
import json, sys
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file

src, out, op, arg = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
state = {}
for shard in sorted(src.glob("*.safetensors")):
    state.update(load_file(shard))
config = json.loads((src / "config.json").read_text())
depth = config["num_layers"]
blocks = {i: {k.split(".", 2)[2]: v for k, v in state.items() if k.startswith(f"transformer_blocks.{i}.")}
          for i in range(depth)}
new = {k: v for k, v in state.items() if not k.startswith("transformer_blocks.")}
if op == "prune":
    keep = [int(i) for i in arg.split(",")]
    for j, i in enumerate(keep):
        new.update({f"transformer_blocks.{j}.{s}": t for s, t in blocks[i].items()})
    config["num_layers"] = len(keep)
else:
    to = int(arg)
    for i in range(depth):
        new.update({f"transformer_blocks.{i}.{s}": t for s, t in blocks[i].items()})
    torch.manual_seed(0)
    zero = ("attn1.to_out.0", "attn2.to_out.0", "ff.conv_point")
    for i in range(depth, to):
        for s, t in blocks[0].items():
            if s.startswith(zero) or s.endswith("bias"):
                v = torch.zeros_like(t)
            elif t.dim() == 1:
                v = torch.ones_like(t)
            else:
                v = (torch.randn(t.shape) * 0.02).to(t.dtype)
            new[f"transformer_blocks.{i}.{s}"] = v
    config["num_layers"] = to
out.mkdir()
save_file(new, out / "diffusion_pytorch_model.safetensors", metadata={"format": "pt"})
(out / "config.json").write_text(json.dumps(config))
"""


def _weights_digest(model_dir: Path) -> str:
    """SHA-256 of a model dir's config and weights (provenance, which holds the time, left out)."""
    digest = hashlib.sha256()
    for file in sorted(model_dir.rglob("*")):
        if file.is_file() and (file.suffix == ".safetensors" or file.name == "config.json"):
            digest.update(str(file.relative_to(model_dir)).encode())
            with open(file, "rb") as handle:
                while chunk := handle.read(1 << 24):
                    digest.update(chunk)
    return digest.hexdigest()


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _timed(cmd: list[str], rss_file: Path) -> tuple[float, float, int]:
    """Wall seconds (sync to sync), CPU seconds (user + system) and peak RSS bytes of one command."""
    os.sync()
    start = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%M %U %S", "-o", str(rss_file), *cmd],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.sync()
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    peak_kb, user, system = rss_file.read_text().split()[-3:]
    return elapsed, float(user) + float(system), int(peak_kb) * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sana1.5-1.6b")
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument(
        "--repeats", type=int, default=3, help="Runs of sanatool and the copies per operation."
    )
    parser.add_argument("--naive-repeats", type=int, default=1, help="Runs of the (slow) naive baseline.")
    parser.add_argument("--prune-to", type=int, default=None, help="Blocks kept by prune (default 4/5).")
    parser.add_argument("--grow-to", type=int, default=None, help="Depth grown to (default 6/5).")
    parser.add_argument("--workdir", type=Path, default=None, help="Parent of the scratch dir.")
    parser.add_argument("--keep", action="store_true", help="Keep the scratch dir.")
    parser.add_argument("--baseline", type=Path, default=None, help="Root of another sanatool checkout.")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="sanatool-surgery-bench-", dir=args.workdir))
    src, out, rss = work / "src", work / "out", work / "rss.txt"
    here = Path(sanatool_pkg.__file__).resolve().parent.parent
    sanatool = ["env", f"PYTHONPATH={here}", sys.executable, "-m", "sanatool"]
    baseline = None
    if args.baseline is not None:
        baseline = ["env", f"PYTHONPATH={args.baseline.resolve()}", sys.executable, "-m", "sanatool"]
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(args.baseline / "sanatool")], check=True
        )
    load_before = os.getloadavg()
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(Path(sanatool_pkg.__file__).parent)], check=True
    )
    try:
        init_s, _, _ = _timed(
            [*sanatool, "init", "--preset", args.preset, "--dtype", args.dtype, "-o", str(src)], rss
        )
        depth = open_model_dir(src).transformer.num_layers
        keep = naive_selection("uniform", args.prune_to or depth * 4 // 5, depth)
        grow_to = args.grow_to or depth * 6 // 5
        keep_list = format_block_list(keep)
        for shard in src.glob("*.safetensors"):  # warm the page cache for every method alike
            with open(shard, "rb") as handle:
                while handle.read(1 << 26):
                    pass
        operations = {
            f"prune {depth}→{len(keep)} (--keep-blocks)": (
                ["prune", str(src), "--keep-blocks", keep_list, "-o", str(out)],
                ["prune", ",".join(map(str, keep))],
                plan_prune(src, out, keep_blocks=keep_list),
            ),
            f"grow {depth}→{grow_to} (--to, partial)": (
                ["grow", str(src), "--to", str(grow_to), "-o", str(out)],
                ["grow", str(grow_to)],
                plan_grow(src, out, grow_to),
            ),
        }
        results: dict[tuple[str, str], list[tuple[float, float, int, int]]] = {}
        digests: dict[str, set[str]] = {}
        for repeat in range(args.repeats):
            for name, (command, naive_args, plan) in operations.items():
                methods = [
                    ("sanatool", [*sanatool, *command]),
                    (
                        "copy of the same bytes",
                        [sys.executable, "-c", _COPY, str(src), str(out), str(plan.bytes_total)],
                    ),
                    ("cp -r (the source)", ["cp", "-r", str(src), str(out)]),
                ]
                if baseline is not None:
                    methods.append(("sanatool, baseline tree", [*baseline, *command]))
                # A new order each repeat (seeded): a fixed rotation would give every method the same
                # predecessor, whose freed output the kernel may still be reclaiming.
                random.Random(repeat).shuffle(methods)
                if repeat < args.naive_repeats:
                    methods.append(
                        (
                            "naive load-edit-save",
                            [sys.executable, "-c", _NAIVE, str(src), str(out), *naive_args],
                        )
                    )
                for method, cmd in methods:
                    seconds, cpu, peak = _timed(cmd, rss)
                    if method.startswith("sanatool") or method == "naive load-edit-save":
                        depth_out = open_model_dir(out).transformer.num_layers
                        assert depth_out == plan.config["num_layers"], (name, method)
                    if method.startswith("sanatool"):
                        digests.setdefault(name, set()).add(_weights_digest(out))
                    results.setdefault((name, method), []).append((seconds, cpu, peak, _dir_bytes(out)))
                    shutil.rmtree(out)
                    os.sync()
        startup = statistics.median(_timed([*sanatool, "--version"], rss)[0] for _ in range(3))
        load_after = os.getloadavg()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(
        f"\n{args.preset} {args.dtype}: init {init_s:.1f} s; {args.repeats} repeats (naive: {args.naive_repeats}); "
        f"sanatool start-up (--version) {startup:.2f} s; "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after; prune keeps blocks {keep_list}\n"
    )
    header = (
        f"| {'operation':<28} | {'method':<22} | {'written':>9} | {'wall s (median)':>15} | {'GB/s':>5} "
        f"| {'× copy':>6} | {'CPU s':>5} | {'peak RSS':>9} | {'all runs, s':<20} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for name in operations:
        floor = statistics.median(s for s, _, _, _ in results[(name, "copy of the same bytes")])
        for method in (
            "sanatool",
            "sanatool, baseline tree",
            "copy of the same bytes",
            "cp -r (the source)",
            "naive load-edit-save",
        ):
            runs = results.get((name, method))
            if not runs:
                continue
            seconds = statistics.median(s for s, _, _, _ in runs)
            cpu = statistics.median(c for _, c, _, _ in runs)
            written = runs[0][3]
            peak = max(p for _, _, p, _ in runs)
            print(
                f"| {name:<28} | {method:<22} | {human_bytes(written):>9} | {seconds:>15.2f} | "
                f"{written / seconds / 1e9:>5.2f} | {seconds / floor:>6.2f} | {cpu:>5.1f} | {human_bytes(peak):>9} | "
                f"{' '.join(f'{s:.1f}' for s, _, _, _ in runs):<20} |"
            )
    if baseline is not None:
        print()
        for name in operations:
            ours = [s for s, _, _, _ in results[(name, "sanatool")]]
            theirs = [s for s, _, _, _ in results[(name, "sanatool, baseline tree")]]
            middle, low, high = median_interval([a / b for a, b in zip(ours, theirs, strict=True)])
            same = "the same bytes" if len(digests[name]) == 1 else "DIFFERENT bytes"
            print(
                f"{name}: this tree / baseline {middle:.2f} (interval {low:.2f}–{high:.2f}): "
                f"{verdict(low, high)}; weights and config: {same}"
            )


if __name__ == "__main__":
    main()
