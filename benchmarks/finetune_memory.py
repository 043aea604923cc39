"""Peak memory of one real fine-tuning step against the ``--dry-run`` estimate (issue 18).

Each mode runs in its own child process: a ``--preset`` transformer (default sana1.5-1.6b), batch 1,
bf16 autocast, a 1024 px latent (32×32×32) and 300 caption tokens, CAME-8bit, one optimizer step
through sanatool's own ``Trainer`` (the training loop's step: noise, timesteps, caption dropout,
loss, backward, clipping, optimizer step). Modes:

- ``full``: every weight trains (fp32 master weights), gradient checkpointing;
- ``full-nockpt``: the same without gradient checkpointing;
- ``lora-bf16`` / ``lora-int8`` / ``lora-nf4``: rank 16 on the default targets, the base frozen in
  that precision (``--lora-rank 16 --base-precision …``; int8/nf4 are bitsandbytes, CUDA only),
  built by ``finetune``'s own LoRA code, gradient checkpointing.

On the CPU (default) the weights are those of ``sanatool init`` (streamed block by block into the
model); measured = peak RSS during the step − RSS before the model existed. The child runs with
glibc's mmap threshold fixed (``MALLOC_MMAP_THRESHOLD_=131072``, unless set already): by default glibc
raises it as large blocks are freed and then keeps freed blocks of up to 32 MiB resident in its
heap, which RSS counts although the step no longer holds them (+0.4 GB in a LoRA step of 4 blocks). Before that baseline
the child runs one step of the tiny model in the same mode, so the baseline holds every library
and kernel a step loads (the process's code), and the kernel's high-water mark is reset
(``/proc/self/clear_refs``) once the model and optimizer are built, so the transient copies of
building a random model are not counted while the weights are (resident throughout the step).
On CUDA (``--device cuda --model-dir DIR``, a dir from ``sanatool init``) measured =
``torch.cuda.max_memory_allocated`` over the step (reset after building) − memory allocated before
the model. The estimate is ``memory_budget`` for the same settings (what ``finetune --dry-run``
prints), without its 1.5 GB CUDA allowance.

    flock /tmp/bench.lock env OMP_NUM_THREADS=2 python benchmarks/finetune_memory.py
    python benchmarks/finetune_memory.py --device cuda --model-dir /tmp/m16 --modes full,lora-nf4   # see gpu_finetune.sh
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

MODES = ("full", "full-nockpt", "lora-bf16", "lora-int8", "lora-nf4")
CPU_MODES = "full,lora-bf16"
LORA_RANK = 16
TEXT_LEN = 300
#: glibc's default (initial) mmap threshold, fixed for the child (see ``main``).
MMAP_THRESHOLD = 128 * 1024


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def config_of(preset: str, layers: int | None) -> dict:
    from sanatool.arch import preset_config

    config = preset_config(preset)
    if layers:
        config["num_layers"] = layers
    return config


def mode_settings(mode: str) -> dict:
    """A mode's LoRA rank, base precision and gradient checkpointing."""
    if mode not in MODES:
        raise SystemExit(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    lora = mode.startswith("lora-")
    return {
        "lora_rank": LORA_RANK if lora else None,
        "base_precision": mode.split("-")[1] if lora else None,
        "grad_checkpointing": mode != "full-nockpt",
    }


def estimate(config: dict, mode: str, side: int) -> int:
    from sanatool.training.budget import memory_budget

    budget = memory_budget(
        config, batch_size=1, optimizer="came8bit", precision="bf16", latent_side=side, text_len=TEXT_LEN,
        **mode_settings(mode),
    )  # fmt: skip
    return budget.total


class FakeReader:
    """One cached item (latent and caption embedding) where the latent cache would be."""

    def __init__(self, channels: int, side: int, caption: int) -> None:
        import torch

        from sanatool.training.cache import Bucket

        generator = torch.Generator().manual_seed(0)
        self.count = 1
        self.latent_shape = (channels, side, side)
        self.buckets = [Bucket(0, 1, self.latent_shape)]
        self.item = {
            "latents": torch.randn(1, channels, side, side, generator=generator),
            "embeds": torch.randn(1, TEXT_LEN, caption, generator=generator),
            "mask": torch.ones(1, TEXT_LEN, dtype=torch.long),
        }

    def gather(self, indices: list[int], keys: tuple[str, ...]) -> dict:
        return {key: self.item[key].expand(len(indices), *self.item[key].shape[1:]).clone() for key in keys}


def random_model(config: dict, dtype: str):
    """A random-init transformer on the CPU (``sanatool init``'s weights) built without a second copy of itself."""
    import torch
    from diffusers import SanaTransformer2DModel

    from sanatool.arch import model_kwargs, torch_dtype
    from sanatool.surgery.initialize import random_init_entries

    with torch.device("meta"):
        model = SanaTransformer2DModel(**model_kwargs(config))
    model = model.to(torch_dtype(dtype)).to_empty(device="cpu")
    state = model.state_dict()
    for entry in random_init_entries(config, dtype, seed=0):
        data = torch.frombuffer(bytearray(entry.source()), dtype=state[entry.name].dtype)
        state[entry.name].copy_(data.reshape(entry.shape))
    return model


def build_model(config: dict, mode: str, device: str, model_dir: Path | None):
    """The model a ``finetune`` of this mode trains, on ``device`` (LoRA: finetune's own LoRA code)."""
    from sanatool.training.lora import add_lora, load_base_transformer, lora_config
    from sanatool.training.model_io import load_transformer
    from sanatool.training.options import DEFAULT_LORA_TARGETS

    settings = mode_settings(mode)
    base = settings["base_precision"]
    if model_dir is None:
        model = random_model(config, base or "fp32")
    elif base is None:
        model = load_transformer(model_dir)
    else:
        model = load_base_transformer(model_dir, None, base, device)
    if not getattr(model, "is_quantized", False):  # bitsandbytes loads onto its device
        model.to(device)
    if base is not None:
        add_lora(model, lora_config(LORA_RANK, float(LORA_RANK), DEFAULT_LORA_TARGETS), seed=0)
    if settings["grad_checkpointing"]:
        model.enable_gradient_checkpointing()
    return model.train()


def make_trainer(config: dict, mode: str, side: int, device: str, model_dir: Path | None):
    """The model, its CAME-8bit optimizer and sanatool's Trainer over one fake cached item."""
    import torch

    from sanatool.distributed import DistContext
    from sanatool.optim import build_optimizer
    from sanatool.training.loop import Trainer
    from sanatool.training.options import TrainOptions

    reader = FakeReader(int(config["in_channels"]), side, int(config["caption_channels"]))
    empty = torch.zeros(1, TEXT_LEN, dtype=torch.long)
    null = (reader.item["embeds"][:1] * 0, reader.item["mask"][:1], empty)
    model = build_model(config, mode, device, model_dir)
    optimizer = build_optimizer("came8bit", [p for p in model.parameters() if p.requires_grad], 1e-5)
    opts = TrainOptions(
        data=None, out=None, steps=1, source="random", optimizer="came8bit", lr=1e-5, batch_size=1,
        precision="bf16", **mode_settings(mode),
    )  # fmt: skip
    ctx = DistContext(0, 1, torch.device(device))
    return Trainer(opts, ctx, model, model, optimizer, reader, null, 3.0, 1000, 1.0)


def child(args: argparse.Namespace) -> dict:
    import gc

    import torch

    cuda = args.device.startswith("cuda")
    config = config_of(args.preset, args.layers)
    if not cuda:
        # Warm-up: one step of the tiny model in the same mode loads every library and kernel a step
        # touches, so that the baseline holds the process's code and the measurement the step's data.
        make_trainer(config_of("tiny", None), args.child, 8, "cpu", None).step()
        gc.collect()
    baseline = torch.cuda.memory_allocated() if cuda else rss_kib("VmRSS") * 1024
    started = time.perf_counter()
    trainer = make_trainer(config, args.child, args.side, args.device, args.model_dir)
    built = torch.cuda.memory_allocated() if cuda else rss_kib("VmRSS") * 1024
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        # Reset the high-water mark: building a random model has transients that are not the step's.
        Path("/proc/self/clear_refs").write_text("5")
    build_seconds = time.perf_counter() - started
    started = time.perf_counter()
    result = trainer.step()
    if cuda:
        torch.cuda.synchronize()
    step_seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() if cuda else rss_kib("VmHWM") * 1024
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    return {
        "preset": args.preset, "layers": args.layers, "mode": args.child, "device": args.device,
        "baseline_bytes": baseline, "built_bytes": built, "peak_bytes": peak, "measured_bytes": peak - baseline,
        "loss": result.loss, "finite": result.finite, "trained_params": sum(p.numel() for p in params),
        "build_seconds": round(build_seconds, 1), "step_seconds": round(step_seconds, 1),
    }  # fmt: skip


def room(device: str) -> int:
    """Bytes free for a child: available RAM on the CPU, the GPU's free memory on CUDA."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info()[0]
    import psutil

    return psutil.virtual_memory().available


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sana1.5-1.6b")
    parser.add_argument("--modes", default=None, help=f"Comma-separated, of {', '.join(MODES)}.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model-dir", type=Path, default=None, help="Weights to load (needed on CUDA).")
    parser.add_argument("--side", type=int, default=32, help="Latent side (1024 px / 32).")
    parser.add_argument(
        "--layers", type=int, default=None, help="Override the preset's depth (same width) when RAM is short."
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help="Also write the results as JSON here.")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    from sanatool.formatting import human_bytes

    if args.device.startswith("cuda") and args.model_dir is None:
        raise SystemExit(
            "--device cuda needs --model-dir (e.g. from `sanatool init --preset P --dtype bf16`)"
        )
    modes = [m.strip() for m in (args.modes or CPU_MODES).split(",") if m.strip()]
    config = config_of(args.preset, args.layers)
    rows = []
    for mode in modes:
        guess = estimate(config, mode, args.side)
        free = room(args.device)
        # The child's libraries and (on the CPU) building a bf16 model from fp32 entries need more than the step.
        if free < guess + 2e9:
            print(
                f"{mode}: skipped, the estimate is {human_bytes(guess)} and {human_bytes(free)} is free",
                file=sys.stderr,
            )
            continue
        print(f"{mode}: estimate {human_bytes(guess)}, {human_bytes(free)} free; running", file=sys.stderr)
        cmd = [sys.executable, __file__, "--preset", args.preset, "--side", str(args.side), "--child", mode,
               "--device", args.device]  # fmt: skip
        cmd += ["--layers", str(args.layers)] if args.layers else []
        cmd += ["--model-dir", str(args.model_dir)] if args.model_dir else []
        env = os.environ.copy()
        if not args.device.startswith("cuda"):
            # glibc raises its mmap threshold (up to 32 MiB) each time a large block is freed, after which
            # freed blocks below it stay in the heap, resident: RSS then counts the allocator's retention
            # on top of live memory. A fixed threshold returns every large block to the kernel at `free`,
            # so peak RSS measures what the step holds, as max_memory_allocated does on CUDA.
            env.setdefault("MALLOC_MMAP_THRESHOLD_", str(MMAP_THRESHOLD))
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            print(f"{mode} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        row["estimate_bytes"] = guess
        row["estimate_over_measured"] = round(guess / row["measured_bytes"], 3)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    depth = f" with {args.layers} blocks" if args.layers else ""
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    print(
        f"{args.preset}{depth} on {args.device}, bf16 autocast, batch 1, {args.side}×{args.side} latents, "
        f"{TEXT_LEN} caption tokens, CAME-8bit, one step; OMP_NUM_THREADS={threads}"
    )
    print("")
    print(
        "| mode | trained params | baseline | peak | measured (peak − baseline) | estimate | estimate / measured | step s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['trained_params'] / 1e6:,.1f}M | {human_bytes(r['baseline_bytes'])} | "
            f"{human_bytes(r['peak_bytes'])} | {human_bytes(r['measured_bytes'])} | {human_bytes(r['estimate_bytes'])} | "
            f"{r['estimate_over_measured']:.2f} | {r['step_seconds']} |"
        )


if __name__ == "__main__":
    main()
