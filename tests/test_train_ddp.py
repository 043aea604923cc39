"""finetune under torchrun: 2 gloo processes match one process on the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def test_two_process_ddp_matches_single_process(tiny_pipeline, tmp_path):
    from safetensors.torch import load_file

    from sanatool.shapes.dataset import write_shapes_dataset
    from sanatool.training import TrainOptions, run_training

    data = write_shapes_dataset(tmp_path / "data", 8, seed=1)
    common = ["--steps", "2", "--optimizer", "adamw", "--lr", "1e-3", "--device", "cpu", "--seed", "4"]
    # One process, global batch 4 (this also builds the latent cache the two ranks then share).
    single = run_training(
        TrainOptions(
            source=str(tiny_pipeline),
            data=data,
            out=tmp_path / "one",
            steps=2,
            optimizer="adamw",
            lr=1e-3,
            batch_size=4,
            device="cpu",
            seed=4,
        )  # fmt: skip
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "sanatool", "finetune", str(tiny_pipeline), "--data", str(data), "-o", str(tmp_path / "two"),
        "--batch-size", "2", "--json", *common,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if proc.returncode != 0 and "gloo" in proc.stderr.lower() and "address" in proc.stderr.lower():
        pytest.skip("gloo cannot open a socket on this machine")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)  # only rank 0 prints
    assert summary["world_size"] == 2 and summary["global_batch"] == 4
    one = [json.loads(line)["loss"] for line in (tmp_path / "one" / "loss.jsonl").read_text().splitlines()]
    two = [json.loads(line)["loss"] for line in (tmp_path / "two" / "loss.jsonl").read_text().splitlines()]
    assert one == pytest.approx(two, rel=1e-5)
    assert single["final_loss"] == pytest.approx(two[-1], rel=1e-5)
    # The weight updates agree too. Not bit for bit: gradients are summed in another order, and
    # AdamW's first steps (≈ lr·sign(g)) amplify that where a gradient is near zero.
    weights = "transformer/diffusion_pytorch_model.safetensors"
    init = load_file(str(tiny_pipeline / weights))
    a, b = load_file(str(tmp_path / "one" / weights)), load_file(str(tmp_path / "two" / weights))
    update = sum(float((a[k] - init[k]).pow(2).sum()) for k in a) ** 0.5
    disagreement = sum(float((a[k] - b[k]).pow(2).sum()) for k in a) ** 0.5
    assert update > 0 and disagreement / update < 1e-2


def _torchrun_finetune(model, data, out, *args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "sanatool", "finetune", str(model), "--data", str(data), "-o", str(out), "--json", *args,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if proc.returncode != 0 and "gloo" in proc.stderr.lower() and "address" in proc.stderr.lower():
        pytest.skip("gloo cannot open a socket on this machine")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_two_process_fsdp_matches_single_process_and_resumes(tiny_pipeline, tmp_path):
    """FSDP2 (fully_shard per block) on gloo: same losses and updates as one process; its sharded
    optimizer state survives a checkpoint and a resume. The images are landscape and square, in
    aspect-ratio buckets: the ranks must agree on each batch's bucket."""
    from PIL import Image
    from safetensors.torch import load_file

    from sanatool.training import TrainOptions, run_training

    data = tmp_path / "data"
    data.mkdir()
    captions = ["a red circle", "a blue square above a green triangle"]
    for index in range(8):
        size = (48, 32) if index % 2 else (32, 32)
        Image.new("RGB", size, (30 * index, 90, 200)).save(data / f"{index}.png")
    (data / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": f"{i}.png", "text": captions[i % 2]}) + "\n" for i in range(8))
    )
    one = TrainOptions(
        source=str(tiny_pipeline), data=data, out=tmp_path / "one", steps=2, optimizer="adamw", lr=1e-3,
        batch_size=4, device="cpu", seed=4, aspect_buckets=True,
    )  # fmt: skip
    run_training(one)
    common = ["--steps", "2", "--optimizer", "adamw", "--lr", "1e-3", "--device", "cpu", "--seed", "4"]
    common += ["--batch-size", "2", "--fsdp", "--aspect-buckets", "--checkpoint-dir", str(tmp_path / "ckpt")]
    summary = _torchrun_finetune(tiny_pipeline, data, tmp_path / "two", *common, "--save-every", "1")
    assert summary["world_size"] == 2 and summary["global_batch"] == 4
    assert [p.name for p in (tmp_path / "ckpt").glob("step-*")] == ["step-00000001"]
    # From the step-1 checkpoint: the gathered weights and optimizer state are resharded.
    resumed = _torchrun_finetune(tiny_pipeline, data, tmp_path / "resumed", *common, "--resume")
    assert resumed["resumed_from_step"] == 1

    def losses(name: str) -> list[float]:
        return [
            json.loads(line)["loss"] for line in (tmp_path / name / "loss.jsonl").read_text().splitlines()
        ]

    assert losses("one") == pytest.approx(losses("two"), rel=1e-5)
    assert losses("resumed") == pytest.approx(losses("two"), rel=1e-6)
    weights = "transformer/diffusion_pytorch_model.safetensors"
    init = load_file(str(tiny_pipeline / weights))
    one, two = load_file(str(tmp_path / "one" / weights)), load_file(str(tmp_path / "two" / weights))
    again = load_file(str(tmp_path / "resumed" / weights))
    assert one.keys() == two.keys() == again.keys()
    update = sum(float((one[k] - init[k]).pow(2).sum()) for k in one) ** 0.5
    # As for DDP: reductions in another order, amplified by AdamW's first ≈ lr·sign(g) steps.
    assert update > 0 and sum(float((one[k] - two[k]).pow(2).sum()) for k in one) ** 0.5 / update < 1e-3
    assert sum(float((two[k] - again[k]).pow(2).sum()) for k in two) ** 0.5 / update < 1e-6
