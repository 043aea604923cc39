"""Time and peak memory of `init` and `info` on the big presets.

Each measurement runs in a fresh Python process (the CLI's own entry point) and reports that
process's wall time and peak RSS. `cp -r` of the written checkpoint, in the same run, gives the
disk-speed baseline that `init` is compared with.

    python benchmarks/init_info.py [--presets sana1.5-1.6b sana1.5-4.8b] [--dtype bf16] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_MEASURE = """
import resource, sys, time
from sanatool.cli import main
sys.argv = ["sanatool", *sys.argv[1:]]
start = time.perf_counter()
try:
    main()
except SystemExit as ex:
    code = ex.code or 0
else:
    code = 0
elapsed = time.perf_counter() - start
print("BENCH", elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, file=sys.stderr)
sys.exit(code)
"""


def measure(args: list[str]) -> tuple[float, float, int]:
    """Run ``sanatool ARGS`` in a fresh process: (wall seconds incl. start-up, in-process seconds, peak RSS bytes)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _MEASURE, *args], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"sanatool {' '.join(args)} failed:\n{proc.stderr}")
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("BENCH ")][-1]
    _, inner, rss = line.split()
    return wall, float(inner), int(rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["sana1.5-1.6b", "sana1.5-4.8b"])
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="Where to write checkpoints (needs ~20 GB)."
    )
    args = parser.parse_args()

    rows = []
    workdir = Path(tempfile.mkdtemp(prefix="sanatool-bench-", dir=args.workdir))
    try:
        for preset in args.presets:
            out = workdir / preset
            init_wall, init_inner, init_rss = measure(
                ["init", "--preset", preset, "--dtype", args.dtype, "-o", str(out)]
            )
            size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
            start = time.perf_counter()
            subprocess.run(["cp", "-r", str(out), str(workdir / "copy")], check=True)
            subprocess.run(["sync"], check=True)
            copy_wall = time.perf_counter() - start
            shutil.rmtree(workdir / "copy")
            info_wall, info_inner, info_rss = measure(["info", str(out), "--json"])
            described = json.loads(
                subprocess.run(
                    ["sanatool", "info", str(out), "--json"], capture_output=True, text=True
                ).stdout
            )
            rows.append(
                {
                    "preset": preset,
                    "params": described["params"],
                    "bytes": size,
                    "init_s": init_wall,
                    "copy_s": copy_wall,
                    "init_rss": init_rss,
                    "info_s": info_wall,
                    "info_rss": info_rss,
                }
            )
            shutil.rmtree(out)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"| preset ({args.dtype}) | params | size | init s | cp -r s | init / cp | init peak RSS | info s | info peak RSS |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['preset']} | {r['params'] / 1e9:.2f}B | {r['bytes'] / 1e9:.2f} GB | {r['init_s']:.1f} | {r['copy_s']:.1f} | "
            f"{r['init_s'] / r['copy_s']:.1f}× | {r['init_rss'] / 2**20:.0f} MiB | {r['info_s']:.2f} | {r['info_rss'] / 2**20:.0f} MiB |"
        )


if __name__ == "__main__":
    main()
