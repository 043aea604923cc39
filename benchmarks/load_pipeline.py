"""Loading a real-size pipeline: time and peak memory from start to the first denoising step.

A random SANA 1.5 1.6B pipeline (the ``sana1.5-1.6b`` transformer as ``sanatool init`` writes it;
a DC-AE f32c32 with the real config; a Gemma-2 text encoder of the real width), stored in
``--stored`` bf16 (3.2 GB transformer) or fp32 (6.4 GB, as the SANA repos' default files), is
loaded in bf16 by ``sanatool.load_pipeline`` and sampled on the CPU at 256 px. Each run is a fresh
subprocess; its wall time (interpreter start included) and peak RSS are taken when the first
denoising step begins and when it ends (the weights, memory-mapped, are all read by then).

Two paths, alternated in the same run:

- ``old``: diffusers' ``low_cpu_mem_usage=False``, what every load did while accelerate was not
  installed (older diffusers built the model with random fp32 weights, then overwrote them; 0.42
  skips the random init but still allocates every parameter and copies the weights in, unless
  the stored dtype is the one asked for, when it adopts the memory-mapped tensors);
- ``new``: sanatool's loading now (``low_cpu_mem_usage=True`` through accelerate: each weight goes
  straight from the file into an empty module, converted on the way).

transformers 5 always loads its models the low-memory way, so the text encoder costs the same
on both paths; it is cut to ``--text-layers`` of Gemma-2-2B's 26 layers (default 2) so that the
old path fits this machine's memory beside the other jobs. Each path's median, a ~95% interval,
and the new/old ratio with its verdict are printed.

    flock /tmp/bench.lock env OMP_NUM_THREADS=2 python benchmarks/load_pipeline.py --runs 3 --stored bf16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from startup import median_interval, verdict  # noqa: E402 - the benchmarks' one interval rule

#: DC-AE f32c32 (``Efficient-Large-Model/Sana_1600M_1024px_diffusers/vae/config.json``).
DCAE_CONFIG = {
    "in_channels": 3,
    "latent_channels": 32,
    "attention_head_dim": 32,
    "encoder_block_types": [
        "ResBlock",
        "ResBlock",
        "ResBlock",
        "EfficientViTBlock",
        "EfficientViTBlock",
        "EfficientViTBlock",
    ],
    "decoder_block_types": [
        "ResBlock",
        "ResBlock",
        "ResBlock",
        "EfficientViTBlock",
        "EfficientViTBlock",
        "EfficientViTBlock",
    ],
    "encoder_block_out_channels": [128, 256, 512, 512, 1024, 1024],
    "decoder_block_out_channels": [128, 256, 512, 512, 1024, 1024],
    "encoder_qkv_multiscales": [[], [], [], [5], [5], [5]],
    "decoder_qkv_multiscales": [[], [], [], [5], [5], [5]],
    "encoder_layers_per_block": [2, 2, 2, 3, 3, 3],
    "decoder_layers_per_block": [3, 3, 3, 3, 3, 3],
    "downsample_block_type": "Conv",
    "upsample_block_type": "interpolate",
    "decoder_norm_types": "rms_norm",
    "decoder_act_fns": "silu",
    "scaling_factor": 0.41407,
}


def build(model_dir: Path, text_layers: int, stored: str) -> None:
    """Write the benchmark pipeline (once): sanatool's transformer, DC-AE, a cut Gemma-2 and a tokenizer."""
    import torch
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler
    from transformers import AutoTokenizer, Gemma2Config, Gemma2Model

    from sanatool.arch import TRANSFORMER_CLASS, torch_dtype
    from sanatool.surgery.initialize import init_model

    tmp = model_dir.with_name(model_dir.name + ".building")
    tmp.mkdir(parents=True, exist_ok=True)
    init_model("sana1.5-1.6b", tmp / "transformer", dtype=stored, seed=0, force=True)
    (tmp / "transformer" / "sanatool.json").unlink(missing_ok=True)
    AutoencoderDC(**DCAE_CONFIG).to(torch_dtype(stored)).save_pretrained(tmp / "vae")
    tiny = Path(__file__).resolve().parent.parent / "sanatool" / "data" / "tiny-shapes"
    tokenizer = AutoTokenizer.from_pretrained(tiny / "tokenizer")
    tokenizer.save_pretrained(tmp / "tokenizer")
    config = Gemma2Config(  # Gemma-2-2B's widths, fewer layers, the tiny tokenizer's vocabulary
        vocab_size=len(tokenizer),
        hidden_size=2304,
        intermediate_size=9216,
        num_hidden_layers=text_layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    torch.manual_seed(0)
    Gemma2Model(config).to(torch_dtype(stored)).save_pretrained(tmp / "text_encoder")
    DPMSolverMultistepScheduler(
        algorithm_type="dpmsolver++",
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=3.0,
        solver_order=2,
        final_sigmas_type="zero",
    ).save_pretrained(tmp / "scheduler")
    index = {
        "_class_name": "SanaPipeline",
        "_diffusers_version": "0.42.0",
        "scheduler": ["diffusers", "DPMSolverMultistepScheduler"],
        "text_encoder": ["transformers", "Gemma2Model"],
        "tokenizer": ["transformers", type(tokenizer).__name__],
        "transformer": ["diffusers", TRANSFORMER_CLASS],
        "vae": ["diffusers", "AutoencoderDC"],
    }
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
    tmp.rename(model_dir)


class FirstStep(Exception):
    """Raised when the first denoising step has run: the end of a measurement."""


def _mark(started: float) -> dict[str, float]:
    return {
        "seconds": time.time() - started,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def child(model_dir: Path, path: str, started: float) -> None:
    """One measurement: load, sample until the first step has run, print JSON (seconds, peak RSS at both marks)."""
    import sanatool.inference.pipeline as pipeline
    from sanatool.inference.sampler import generate

    if path == "old":
        new_kwargs = pipeline.loading_kwargs
        pipeline.loading_kwargs = lambda model: {**new_kwargs(model), "low_cpu_mem_usage": False}
    pipe = pipeline.load_pipeline(model_dir, "cpu", "bf16")
    marks: dict[str, dict[str, float]] = {}

    def begin(*_: object) -> None:
        marks.setdefault("begin", _mark(started))

    def end(*_: object) -> None:
        marks["end"] = _mark(started)
        raise FirstStep

    pipe.transformer.register_forward_pre_hook(begin)
    pipe.transformer.register_forward_hook(end)
    try:
        generate(pipe, ["a cat"], [0], steps=20, guidance=4.5, size=(256, 256), instruction=None)
    except FirstStep:
        pass
    print(json.dumps(marks))


def measure(model_dir: Path, path: str) -> dict[str, dict[str, float]]:
    """Run one measurement in a fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    command = [sys.executable, __file__, "--child", path, "--model-dir", str(model_dir)]
    command += ["--started", repr(time.time())]
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--stored", choices=("bf16", "fp32"), default="bf16", help="dtype of the stored weights."
    )
    parser.add_argument("--model-dir", type=Path, default=None, help="Where the pipeline is built (once).")
    parser.add_argument("--runs", type=int, default=3, help="Runs of each path (alternated).")
    parser.add_argument("--text-layers", type=int, default=2, help="Gemma-2 layers in the text encoder.")
    parser.add_argument("--child", choices=("old", "new"), help=argparse.SUPPRESS)
    parser.add_argument("--started", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    model_dir = args.model_dir or Path(f"/tmp/sanatool-bench-sana15-1.6b-{args.stored}")
    if args.child:
        child(model_dir, args.child, args.started)
        return
    if not (model_dir / "model_index.json").is_file():
        build(model_dir, args.text_layers, args.stored)
    size = sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file())
    print(
        f"pipeline {model_dir}: {size / 1e9:.2f} GB on disk ({args.stored}), loaded in bf16", file=sys.stderr
    )
    results: dict[str, list[dict[str, dict[str, float]]]] = {"old": [], "new": []}
    for run in range(args.runs):
        for path in ("old", "new") if run % 2 == 0 else ("new", "old"):
            results[path].append(measure(model_dir, path))
            print(f"  {path}: {results[path][-1]}", file=sys.stderr)
    print(f"stored {args.stored}, loaded bf16, {args.runs} runs per path")
    print("| path | mark | seconds (median [~95%]) | peak RSS, GB (median [~95%]) |")
    print("|---|---|---|---|")
    for mark in ("begin", "end"):
        for path in ("old", "new"):
            t = median_interval([r[mark]["seconds"] for r in results[path]])
            m = median_interval([r[mark]["peak_rss"] / 1e9 for r in results[path]])
            print(
                f"| {path} | first step {mark}s | {t[0]:.1f} [{t[1]:.1f}, {t[2]:.1f}] "
                f"| {m[0]:.2f} [{m[1]:.2f}, {m[2]:.2f}] |"
            )
    for mark in ("begin", "end"):
        for key, label in (("seconds", "time"), ("peak_rss", "peak RSS")):
            pairs = zip(results["old"], results["new"], strict=True)
            ratio, low, high = median_interval([new[mark][key] / old[mark][key] for old, new in pairs])
            print(
                f"{label} to first step {mark}: new/old = {ratio:.2f} [{low:.2f}, {high:.2f}] -> {verdict(low, high)}"
            )


if __name__ == "__main__":
    main()
