"""Benchmark CAME / CAME-8bit against AdamW, AdamW8bit and SANA's official CAME-8bit scheme.

Four measurements, each printed as a markdown table (ratios against a baseline of the same run):

1. memory: optimizer-state bytes per parameter for one sana1.5-1.6b block and the whole model,
   analytic (``estimate_state_bytes``) and, for the block, measured on real tensors after one step;
2. fidelity: how far CAME8bit's trajectory drifts from 32-bit CAME on a SANA-shaped linear layer
   (2240 × 2240) fitting a regression with heavy-tailed inputs, next to the official scheme
   (min-max uint8 per chunk of 2048 rows, first moment only), re-implemented here;
3. step time on CPU: ``optimizer.step()`` on the tiny preset and on one real block, plus a full
   training step on the tiny preset, against torch AdamW (foreach); the 8-bit (de)quantizers' speed;
4. convergence: the same short training of a small SanaTransformer2DModel (teacher-student
   regression on random data) with each optimizer, over several seeds, next to a rounding-only
   control that shows the noise floor; curves to ``--plot``.

Run: python benchmarks/optimizer.py [--fidelity-steps 150] [--train-steps 300] [--seeds 3] [--threads 1]
     [--only memory|fidelity|speed|convergence ...]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from sanatool.arch import preset_config
from sanatool.optim import CAME, OPTIMIZER_NAMES, CAME8bit, build_optimizer, estimate_state_bytes
from sanatool.optim import optimizer_state_bytes as measured_state_bytes
from sanatool.optim.blockwise import BLOCK_SIZE, dequantize, dynamic_code, quantize
from sanatool.optim.layout import StateLayout, state_layout
from sanatool.optim.update import Fp32Moments, Workspace

LR = 1e-4


def table(header: list[str], rows: list[list[Any]]) -> None:
    """Print a markdown table."""
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(f"{c:.4g}" if isinstance(c, float) else str(c) for c in row) + " |")
    print(flush=True)


def sana_model(name: str, device: str = "meta", **overrides: Any) -> torch.nn.Module:
    """A SanaTransformer2DModel of a preset (on the meta device: shapes only, nothing allocated)."""
    from diffusers.models.transformers.sana_transformer import SanaTransformer2DModel

    config = {k: v for k, v in preset_config(name).items() if not k.startswith("_")} | overrides
    with torch.device(device):
        return SanaTransformer2DModel(**config)


# --------------------------------------------------------------------------------------------------
# SANA's official CAME-8bit scheme, re-implemented from its description: the first moment of a
# Linear or 1×1-conv weight with more than 16384 values as uint8, min-max scaled per chunk of 2048
# rows; everything else as the official 32-bit CAME keeps it (3×3 convs and 1-D tensors: a full
# fp32 second moment); the step's update uses the fp32 moment before it is quantized again.

OFFICIAL_MIN_8BIT = 16384
OFFICIAL_ROWS = 2048


def official_quantized(shape: tuple[int, ...]) -> bool:
    """Whether the official scheme keeps this tensor's first moment in uint8."""
    matrix = len(shape) == 2 or (len(shape) == 4 and shape[2] == shape[3] == 1)
    return matrix and shape[0] * shape[1] > OFFICIAL_MIN_8BIT


def official_state_bytes(shape: tuple[int, ...]) -> int:
    """State bytes of the official scheme for one parameter (fp32 0-dim RMS tensor included)."""
    numel = math.prod(shape)
    matrix = len(shape) == 2 or (len(shape) == 4 and shape[2] == shape[3] == 1)
    total = 4  # state["RMS"]
    if official_quantized(shape):
        total += numel + 8 * math.ceil(shape[0] / OFFICIAL_ROWS)  # codes + fp32 min and scale per chunk
    else:
        total += 4 * numel
    return total + (16 * (shape[0] + shape[1]) if matrix else 4 * numel)


class OfficialMinMaxMoments(Fp32Moments):
    """The official scheme's first moment (for tensors processed in one chunk)."""

    def load(self, states: list[dict[str, Any]], lo: int, hi: int, ws: Workspace) -> torch.Tensor:
        st = states[0]
        if st["exp_avg"].dtype != torch.uint8:
            return super().load(states, lo, hi, ws)
        rows = st["exp_avg"].shape[0]
        parts = []
        for i, r0 in enumerate(range(0, rows, OFFICIAL_ROWS)):
            codes = st["exp_avg"][r0 : r0 + OFFICIAL_ROWS]
            parts.append(codes.float() * st["exp_avg_scale"][i] + st["exp_avg_min"][i])
        return torch.cat(parts).view(1, -1)[:, lo:hi]

    def store(
        self, states: list[dict[str, Any]], lo: int, hi: int, values: torch.Tensor, ws: Workspace
    ) -> None:
        st = states[0]
        if st["exp_avg"].dtype != torch.uint8:
            return super().store(states, lo, hi, values, ws)
        rows = st["exp_avg"].shape[0]
        full = values.reshape(rows, -1)
        for i, r0 in enumerate(range(0, rows, OFFICIAL_ROWS)):
            chunk = full[r0 : r0 + OFFICIAL_ROWS]
            low, high = chunk.min(), chunk.max()
            scale = (high - low) / 255
            safe = torch.where(scale > 0, scale, torch.ones_like(scale))
            st["exp_avg"][r0 : r0 + OFFICIAL_ROWS].view(chunk.shape[0], -1).copy_(
                ((chunk - low) / safe).round()
            )
            st["exp_avg_min"][i], st["exp_avg_scale"][i] = low, scale


class OfficialCAME8bit(CAME):
    """CAME with the official scheme's 8-bit first moment (benchmark only; one chunk per tensor)."""

    def __init__(self, params: Any, lr: float) -> None:
        super().__init__(params, lr=lr, chunk_size=1 << 30)
        self._store = OfficialMinMaxMoments()

    def _layout(self, p: torch.Tensor, group: dict[str, Any]) -> StateLayout:
        layout = state_layout(tuple(p.shape))
        if official_quantized(tuple(p.shape)):
            chunks = math.ceil(p.shape[0] / OFFICIAL_ROWS)
            layout |= {"exp_avg": (tuple(p.shape), torch.uint8)}
            layout |= {"exp_avg_min": ((chunks,), torch.float32), "exp_avg_scale": ((chunks,), torch.float32)}
        return layout

    def _moments(self) -> OfficialMinMaxMoments:
        return self._store

    def _stackable(self, p: torch.Tensor, grad: torch.Tensor) -> bool:
        return False


# --------------------------------------------------------------------------------------------------


def bench_memory() -> None:
    """Optimizer-state bytes per parameter, analytic for the whole model, measured for one block."""
    print("### Optimizer-state bytes per parameter (sana1.5-1.6b, fp32 parameters)\n")
    model = sana_model("sana1.5-1.6b")
    block_shapes = [tuple(p.shape) for p in model.transformer_blocks[0].parameters()]
    all_shapes = [tuple(p.shape) for p in model.parameters()]
    n_block, n_all = sum(map(math.prod, block_shapes)), sum(map(math.prod, all_shapes))
    names = ["adamw", "adamw8bit", "came", "came8bit", "official-came8bit"]

    def state_bytes(name: str, shapes: list[tuple[int, ...]]) -> int:
        if name == "official-came8bit":
            return sum(map(official_state_bytes, shapes))
        return estimate_state_bytes(name, shapes)

    # Measure the block on real tensors: each of our optimizers after one step (the official
    # scheme is counted analytically only: its 32-bit rule for 3×3 convs is not ours).
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s) * 0.02) for s in block_shapes]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    measured = {}
    for name in OPTIMIZER_NAMES:
        opt = build_optimizer(name, params, LR)
        opt.step()
        measured[name] = measured_state_bytes(opt)
        del opt
    whole = {name: state_bytes(name, all_shapes) for name in names}
    rows = []
    for name in names:
        block = state_bytes(name, block_shapes)
        got = measured.get(name)
        rows.append(
            [
                name,
                f"{block / n_block:.4f}",
                "—" if got is None else f"{got / n_block:.4f}",
                "—" if got is None else ("yes" if got == block else "NO"),
                f"{whole[name] / n_all:.4f}",
                f"{whole[name] / 2**30:.2f}",
                f"{whole[name] / whole['adamw']:.3f}",
            ]
        )
    print(
        f"one block: {n_block / 1e6:.1f} M parameters in {len(block_shapes)} tensors; "
        f"whole model: {n_all / 1e9:.3f} B in {len(all_shapes)} tensors\n"
    )
    table(
        [
            "optimizer",
            "block B/param (estimate)",
            "block B/param (measured)",
            "estimate exact",
            "model B/param",
            "model GiB",
            "vs AdamW",
        ],
        rows,
    )


def regression_grad(w: torch.Tensor, target: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Gradient and loss of mean ||x wᵀ − x targetᵀ||² over the batch."""
    err = x @ (w - target).T
    return (2.0 / x.shape[0]) * err.T @ x, float(err.pow(2).sum(dim=1).mean())


def _fidelity_run(steps: int, seed: int, token_sigma: float) -> list[list[Any]]:
    """Rows of the fidelity table for one gradient regime (see :func:`bench_fidelity`)."""
    gen = torch.Generator().manual_seed(seed)
    dim, batch = 2240, 32
    w0 = torch.randn(dim, dim, generator=gen) * 0.02
    target = w0 + torch.randn(dim, dim, generator=gen) * 0.01
    feature_scale = torch.exp(0.75 * torch.randn(dim, generator=gen))
    runs: dict[str, tuple[torch.nn.Parameter, torch.optim.Optimizer]] = {}
    for name in ("came", "came8bit", "official-came8bit"):
        p = torch.nn.Parameter(w0.clone())
        runs[name] = (p, {"came": CAME, "came8bit": CAME8bit}.get(name, OfficialCAME8bit)([p], lr=LR))
    worst = {name: 0.0 for name in runs}
    losses: dict[str, float] = {}
    for _ in range(steps):
        token_scale = torch.exp(token_sigma * torch.randn(batch, 1, generator=gen))
        x = torch.randn(batch, dim, generator=gen) * feature_scale * token_scale
        for name, (p, opt) in runs.items():
            p.grad, losses[name] = regression_grad(p.detach(), target, x)
            opt.step()
        ref = runs["came"][0].detach()
        moved = (ref - w0).norm()
        for name in ("came8bit", "official-came8bit"):
            worst[name] = max(worst[name], float((runs[name][0].detach() - ref).norm() / moved))
    ref = runs["came"][0].detach()
    rows = []
    for name in ("came8bit", "official-came8bit"):
        p = runs[name][0].detach()
        rows.append(
            [
                "Gaussian tokens" if token_sigma == 0 else f"outlier tokens (σ = {token_sigma:g})",
                name,
                f"{float((p - ref).norm() / (ref - w0).norm()):.4f}",
                f"{worst[name]:.4f}",
                f"{float((p - ref).abs().max() / (ref - w0).abs().max()):.4f}",
                f"{losses[name] / losses['came']:.4f}",
            ]
        )
    return rows


def bench_fidelity(steps: int, seed: int) -> None:
    """Trajectory deviation from 32-bit CAME on a SANA attention-projection-shaped layer.

    The layer (2240 × 2240, as to_q/to_k/to_v/to_out of sana1.5-1.6b) fits a teacher by least
    squares on fresh inputs each step, every optimizer on the same inputs from its own weights.
    Input channels have log-normal scales (outlier features); in the second regime tokens also have
    log-normal norms (a few "massive activation" tokens per batch), which makes per-element spikes
    in the update that a single min-max range per 2048 rows has to cover.
    """
    print(f"### Fidelity: deviation from 32-bit CAME over {steps} steps (2240 × 2240 linear, regression)\n")
    rows = _fidelity_run(steps, seed, 0.0) + _fidelity_run(steps, seed, 1.0)
    table(
        [
            "gradients",
            "first moment",
            "‖W − W_came‖ / ‖W_came − W_0‖ (final)",
            "same, worst step",
            "max abs(W − W_came) / max abs(W_came − W_0)",
            "final loss / CAME's",
        ],
        rows,
    )


def _median_interleaved(fns: dict[str, Any], rounds: int) -> dict[str, float]:
    """Median CPU time (all threads of this process) of each callable, run round-robin.

    CPU time rather than wall time: on a shared machine other jobs stretch wall time by whatever
    they take, while the CPU a step itself needs changes much less.
    """
    return {name: statistics.median(ts) for name, ts in _interleaved_times(fns, rounds).items()}


def _interleaved_times(fns: dict[str, Any], rounds: int) -> dict[str, list[float]]:
    """CPU times of each callable over ``rounds`` round-robin rounds."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.process_time()
            fn()
            times[name].append(time.process_time() - t0)
    return times


def _paired_ratios(times: dict[str, list[float]], baseline: str) -> dict[str, float]:
    """Median over rounds of each callable's time divided by the baseline's in the same round: the
    machine's speed drifts between rounds (a VM's neighbours), and a ratio within one round cancels
    that drift where a ratio of medians does not."""
    return {
        name: statistics.median(t / b for t, b in zip(ts, times[baseline], strict=True))
        for name, ts in times.items()
    }


def _optimizer_steps(shapes: list[tuple[int, ...]], names: tuple[str, ...]) -> dict[str, Any]:
    """For each optimizer: a step over parameters of ``shapes`` with gradients, warmed up once."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s) * 0.02) for s in shapes]  # shared: only states differ
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    fns = {}
    for name in names:
        opt = build_optimizer(name, params, LR, weight_decay=0.01)
        opt.step()
        fns[name] = opt.step
    return fns


def _train_steps(names: tuple[str, ...], batch: int) -> dict[str, Any]:
    """For each optimizer: one flow-matching-style training step of the tiny preset."""
    fns = {}
    for name in names:
        torch.manual_seed(0)
        model = sana_model("tiny", device="cpu")
        opt = build_optimizer(name, model.parameters(), LR, weight_decay=0.01)
        x = torch.randn(batch, 8, 8, 8)
        text = torch.randn(batch, 16, 64)
        t = torch.rand(batch) * 1000

        def step(
            model: torch.nn.Module = model, opt: torch.optim.Optimizer = opt, x=x, text=text, t=t
        ) -> None:
            out = model(x, encoder_hidden_states=text, timestep=t).sample
            loss = out.pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()
        fns[name] = step
    return fns


def bench_speed(rounds: int) -> None:
    """Step time on CPU against torch AdamW (foreach), and the speed of the 8-bit (de)quantizers."""
    print(
        f"### Step time on CPU ({torch.get_num_threads()} thread(s); CPU time, median of interleaved rounds)\n"
    )
    names = ("adamw", "adamw8bit", "came", "came8bit")
    tiny_shapes = [tuple(p.shape) for p in sana_model("tiny").parameters()]
    big = sana_model("sana1.5-1.6b")
    block_shapes = [tuple(p.shape) for p in big.transformer_blocks[0].parameters()]
    results = {
        "tiny preset: optimizer.step()": _interleaved_times(_optimizer_steps(tiny_shapes, names), rounds),
        "tiny preset: train step, batch 16": _interleaved_times(_train_steps(names, 16), max(5, rounds // 6)),
        "sana1.5-1.6b block: optimizer.step()": _interleaved_times(_optimizer_steps(block_shapes, names), 3),
    }
    n_tiny, n_block = sum(map(math.prod, tiny_shapes)), sum(map(math.prod, block_shapes))
    print(
        f"tiny preset: {n_tiny / 1e6:.2f} M parameters in {len(tiny_shapes)} tensors; "
        f"block: {n_block / 1e6:.1f} M in {len(block_shapes)}\n"
    )
    rows = []
    for what, times in results.items():
        ratios = _paired_ratios(times, "adamw")
        rows.append(
            [what, *(f"{statistics.median(times[n]) * 1e3:.1f} ms ({ratios[n]:.2f}×)" for n in names)]
        )
    table(["workload", *names], rows)
    print("Ratios: median over rounds of the step's time over AdamW's in the same round.\n")

    # The 8-bit (de)quantizers (signed dynamic map, blocks of 256): bitsandbytes' CPU kernels, the
    # torch CPU quantizer CAME8bit uses (same codes), and the share of a CAME8bit block step spent in
    # them (timed by wrapping the calls CAME8bit makes).
    import bitsandbytes.functional as bnbf

    values = torch.randn(1 << 22) * 1e-3
    code = dynamic_code(values.device)
    codes, absmax = quantize(values)
    per_value = _median_interleaved(
        {
            "bitsandbytes quantize_blockwise": lambda: bnbf.quantize_blockwise(
                values, code=code, blocksize=BLOCK_SIZE
            ),
            "sanatool CPU quantizer (bit-identical codes)": lambda: quantize(values),
            "bitsandbytes dequantize_blockwise": lambda: dequantize(codes, absmax),
        },
        5,
    )
    inside, total = _bnb_share(block_shapes)
    table(
        ["fp32 on CPU, blocksize 256", "ns / value"],
        [[name, f"{t / values.numel() * 1e9:.2f}"] for name, t in per_value.items()],
    )
    print(
        f"A CAME8bit step on the block: {total * 1e3:.0f} ms CPU, of which {inside * 1e3:.0f} ms "
        f"({inside / total:.0%}) in quantizing and dequantizing (1 quantize + 1 dequantize per 8-bit value, "
        "and a second dequantize for all but the last chunk of a tensor in several chunks).\n"
    )


def _bnb_share(shapes: list[tuple[int, ...]]) -> tuple[float, float]:
    """CPU time of one CAME8bit step over ``shapes`` and the part spent quantizing and dequantizing."""
    import sanatool.optim.came8bit as came8bit_module

    spent = [0.0]

    def timed(fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.process_time()
            out = fn(*args, **kwargs)
            spent[0] += time.process_time() - t0
            return out

        return wrapper

    names = ("quantize_rows", "dequantize_rows")
    originals = {name: getattr(came8bit_module, name) for name in names}
    fns = _optimizer_steps(shapes, ("came8bit",))
    try:
        for name in names:
            setattr(came8bit_module, name, timed(originals[name]))
        t0 = time.process_time()
        fns["came8bit"]()
        total = time.process_time() - t0
    finally:
        for name in names:
            setattr(came8bit_module, name, originals[name])
    return spent[0], total


_SMALL_SANA = {
    "in_channels": 4,
    "out_channels": 4,
    "num_attention_heads": 2,
    "attention_head_dim": 32,
    "num_cross_attention_heads": 2,
    "cross_attention_head_dim": 32,
    "cross_attention_dim": 64,
    "caption_channels": 32,
    "num_layers": 2,
    "sample_size": 8,
}
_CONTROL = "came, rounding control"


def _teacher_data(seed: int, steps: int) -> dict[str, torch.Tensor]:
    """Inputs, a random teacher's outputs (the targets) and the minibatch order of one seed."""
    torch.manual_seed(seed + 1)
    teacher = sana_model("tiny", device="cpu", **_SMALL_SANA).eval()
    gen = torch.Generator().manual_seed(seed)
    n = 512 + 128  # the last 128 are held out
    data = {
        "x": torch.randn(n, 4, 8, 8, generator=gen),
        "text": torch.randn(n, 8, 32, generator=gen),
        "t": torch.rand(n, generator=gen) * 1000,
    }
    with torch.no_grad():
        data["y"] = torch.cat(
            [
                teacher(
                    data["x"][i : i + 64],
                    encoder_hidden_states=data["text"][i : i + 64],
                    timestep=data["t"][i : i + 64],
                ).sample
                for i in range(0, n, 64)
            ]
        )
    data["order"] = torch.randint(0, 512, (steps, 16), generator=gen)
    return data


def _train(
    name: str, seed: int, data: dict[str, torch.Tensor], lr: float, warmup: int
) -> tuple[list[float], float]:
    """Train a fresh student with one optimizer: per-step losses and the final held-out loss."""
    torch.manual_seed(seed)
    student = sana_model("tiny", device="cpu", **_SMALL_SANA)
    if name == _CONTROL:
        # 32-bit CAME again in chunks of 256 values: the same rule, only the rounding (summation
        # order, stacking) differs. Its distance to CAME is this training's noise floor.
        opt = CAME(student.parameters(), lr=lr, chunk_size=BLOCK_SIZE)
    else:
        opt = build_optimizer(name, student.parameters(), lr, weight_decay=0.0)
    # Linear warmup for all: CAME has no bias correction, so its first steps are large.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    x, text, t, y = data["x"], data["text"], data["t"], data["y"]
    losses = []
    for idx in data["order"]:
        loss = torch.nn.functional.mse_loss(
            student(x[idx], encoder_hidden_states=text[idx], timestep=t[idx]).sample, y[idx]
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    with torch.no_grad():
        out = student(x[512:], encoder_hidden_states=text[512:], timestep=t[512:]).sample
    return losses, torch.nn.functional.mse_loss(out, y[512:]).item()


def bench_convergence(steps: int, seeds: int, plot: Path) -> None:
    """The same teacher-student training of a small SANA transformer with each optimizer.

    One run is noisy at the 2% level (a perturbed trajectory decorrelates), so CAME, CAME8bit and
    a rounding-only control run ``seeds`` seeds; AdamW and AdamW8bit run the first seed.
    """
    print(
        f"### Convergence: {steps} steps, SanaTransformer2DModel 2 blocks × 64, teacher-student regression, "
        f"{seeds} seeds\n"
    )
    lr, warmup = 1e-3, max(1, steps // 10)
    names = (*OPTIMIZER_NAMES, _CONTROL)
    finals: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    curves: dict[str, list[float]] = {}
    for seed in range(seeds):
        data = _teacher_data(seed, steps)
        for name in names if seed == 0 else ("came", "came8bit", _CONTROL):
            losses, held_out = _train(name, seed, data, lr, warmup)
            finals[name].append((statistics.mean(losses[-max(1, steps // 10) :]), held_out))
            if seed == 0:
                curves[name] = losses

    def rel(name: str, i: int, seed: int) -> float:
        return finals[name][seed][i] / finals["came"][seed][i] - 1

    rows = []
    for name in names:
        runs = len(finals[name])
        per_seed = ", ".join(f"{rel(name, 0, s):+.1%} / {rel(name, 1, s):+.1%}" for s in range(runs))
        rows.append(
            [
                name,
                runs,
                f"{statistics.mean(f[0] for f in finals[name]):.5f}",
                f"{statistics.mean(rel(name, 0, s) for s in range(runs)):+.2%}",
                f"{statistics.mean(f[1] for f in finals[name]):.5f}",
                f"{statistics.mean(rel(name, 1, s) for s in range(runs)):+.2%}",
                per_seed,
            ]
        )
    table(
        [
            "optimizer",
            "seeds",
            "train loss (last 10%)",
            "vs CAME (mean)",
            "held-out loss",
            "vs CAME (mean)",
            "per seed: train / held-out vs CAME",
        ],
        rows,
    )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    window = 10
    for name, losses in curves.items():
        smooth = [statistics.mean(losses[max(0, i - window + 1) : i + 1]) for i in range(len(losses))]
        ax.plot(smooth, label=name, linewidth=1.2, linestyle=":" if name == _CONTROL else "-")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(f"train loss (mean of {window} steps)")
    ax.set_title(f"SANA 2×64 teacher-student regression, seed 0, lr {lr:g}, warmup {warmup}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(plot, dpi=110)
    print(f"curves: {plot}\n")


def main() -> None:
    """Run the four benchmarks (or those named by ``--only``) and print their tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fidelity-steps", type=int, default=150, help="steps per gradient regime")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=60, help="interleaved timing rounds (tiny preset)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fidelity run")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the convergence runs")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: stable timings on a shared machine)"
    )
    parser.add_argument("--plot", type=Path, default=Path(__file__).with_name("optimizer_convergence.png"))
    parser.add_argument(
        "--only",
        choices=("memory", "fidelity", "speed", "convergence"),
        action="append",
        help="run only this benchmark (repeatable; default: all four)",
    )
    args = parser.parse_args()
    only = set(args.only or ("memory", "fidelity", "speed", "convergence"))
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if "memory" in only:
        bench_memory()
    if "fidelity" in only:
        bench_fidelity(args.fidelity_steps, args.seed)
    if "speed" in only:
        bench_speed(args.rounds)
    if "convergence" in only:
        bench_convergence(args.train_steps, args.seeds, args.plot)
    print(f"total {time.perf_counter() - start:.0f} s wall, {time.process_time():.0f} s CPU")


if __name__ == "__main__":
    main()
