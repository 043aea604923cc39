"""LoRA fine-tuning: diffusers' file format and loader, step 0 = the base, merge, resume, bad input."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from sanatool.errors import Interrupted

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RUN = ("--steps", "3", "--batch-size", "2", "--optimizer", "adamw", "--lr", "1e-2", "--seed", "5")


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    from sanatool.shapes.dataset import write_shapes_dataset

    return write_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", 8, seed=3)


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory, tiny_pipeline, shapes_data):
    """One LoRA run (rank 4, alpha 8, attention and FF targets) written as a LoRA dir and, merged, as a model dir."""
    from sanatool.training import TrainOptions, run_training

    root = tmp_path_factory.mktemp("lora")
    common = {
        "data": shapes_data, "source": str(tiny_pipeline), "steps": 3, "batch_size": 2, "optimizer": "adamw",
        "lr": 1e-2, "seed": 5, "lora_rank": 4, "lora_alpha": 8.0,
        "lora_targets": ("to_q", "to_k", "to_v", "to_out.0", "conv_inverted"),
    }  # fmt: skip
    run_training(TrainOptions(out=root / "lora", **common))
    run_training(TrainOptions(out=root / "merged", merge=True, **common))
    return root


def _inputs(seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(2, 8, 8, 8, generator=g),
        "encoder_hidden_states": torch.randn(2, 6, 64, generator=g),
        "timestep": torch.tensor([250.0, 800.0]),
        "return_dict": False,
    }


def _forward(transformer) -> object:
    import torch

    with torch.no_grad():
        return transformer.eval()(**_inputs())[0]


def test_lora_file_loads_in_plain_diffusers_and_equals_the_merged_model(lora_runs, tiny_pipeline):
    import torch
    from diffusers import SanaPipeline, SanaTransformer2DModel
    from safetensors import safe_open

    out = lora_runs / "lora"
    assert sorted(p.name for p in out.iterdir()) == [
        "loss.jsonl",
        "loss.png",
        "pytorch_lora_weights.safetensors",
        "sanatool.json",
    ]
    with safe_open(str(out / "pytorch_lora_weights.safetensors"), "pt") as f:
        keys = list(f.keys())
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
        a = f.get_tensor("transformer.transformer_blocks.0.attn1.to_q.lora_A.weight")
        b = f.get_tensor("transformer.transformer_blocks.0.attn1.to_q.lora_B.weight")
    # 8 blocks × (attn1 + attn2) × 4 projections + 8 FF convs, an A and a B each.
    assert len(keys) == 2 * (8 * 2 * 4 + 8) and all(k.startswith("transformer.") for k in keys)
    assert meta["transformer.r"] == 4 and meta["transformer.lora_alpha"] == 8.0
    assert a.shape == (4, 128) and b.shape == (128, 4) and b.abs().sum() > 0  # B moved off its zero init
    record = json.loads((out / "sanatool.json").read_text())
    assert record["lora"]["rank"] == 4 and record["lora"]["targets"][-1] == "conv_inverted"
    from sanatool.io.modeldir import open_model_dir

    assert record["base"]["fingerprint"] == open_model_dir(tiny_pipeline).fingerprint()

    # Plain diffusers: the pipeline loads the dir, and its transformer computes base + (alpha/r)·B·A.
    pipe = SanaPipeline.from_pretrained(str(tiny_pipeline))
    pipe.load_lora_weights(str(out))
    adapted = _forward(pipe.transformer)
    base = SanaTransformer2DModel.from_pretrained(str(tiny_pipeline / "transformer"))
    state = base.state_dict()
    with safe_open(str(out / "pytorch_lora_weights.safetensors"), "pt") as f:
        for key in f.keys():
            if ".lora_A." in key:
                module = key.removeprefix("transformer.").removesuffix(".lora_A.weight")
                down, up = f.get_tensor(key), f.get_tensor(key.replace("lora_A", "lora_B"))
                delta = 2.0 * (up.flatten(1) @ down.flatten(1)).reshape(state[f"{module}.weight"].shape)
                state[f"{module}.weight"] = state[f"{module}.weight"] + delta
    plain = _forward(base)
    base.load_state_dict(state)
    by_hand = _forward(base)
    assert not torch.allclose(plain, by_hand, atol=1e-4)  # the adapter changes the output
    torch.testing.assert_close(adapted, by_hand, atol=1e-5, rtol=1e-4)
    # --merge writes a whole model dir with the same function.
    merged = SanaTransformer2DModel.from_pretrained(str(lora_runs / "merged" / "transformer"))
    torch.testing.assert_close(_forward(merged), adapted, atol=1e-5, rtol=1e-4)
    SanaPipeline.from_pretrained(str(lora_runs / "merged"))


def test_zero_init_b_gives_the_base_model_and_only_adapters_train(tiny_pipeline):
    import torch
    from diffusers import SanaTransformer2DModel

    from sanatool.training import TrainOptions
    from sanatool.training.lora import build_lora_transformer
    from sanatool.training.options import validate_options

    opts = TrainOptions(data=Path("d"), out=Path("o"), steps=1, source=str(tiny_pipeline), lora_rank=4)
    validate_options(opts)
    model = build_lora_transformer(opts, tiny_pipeline / "transformer")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if n in trainable)
    assert len(trainable) == 2 * 8 * 2 * 3  # to_q, to_k, to_v of attn1 and attn2 in 8 blocks
    base = SanaTransformer2DModel.from_pretrained(str(tiny_pipeline / "transformer"))
    assert torch.equal(_forward(model), _forward(base))
    # The adapter's random half is drawn from --seed: same seed, same adapter.
    again = build_lora_transformer(opts, tiny_pipeline / "transformer")
    name = next(n for n in trainable if ".lora_A." in n)
    assert torch.equal(model.get_parameter(name), again.get_parameter(name))


def test_bf16_base_on_cpu_keeps_fp32_adapters(tiny_pipeline, shapes_data, tmp_path):
    import torch
    from safetensors.torch import load_file

    from sanatool.training import TrainOptions, run_training
    from sanatool.training.lora import build_lora_transformer

    opts = TrainOptions(
        data=shapes_data, out=tmp_path / "bf16", steps=2, source=str(tiny_pipeline), batch_size=2,
        optimizer="adamw", lr=1e-2, lora_rank=2, base_precision="bf16",
    )  # fmt: skip
    summary = run_training(opts)
    assert summary["final_loss"] is not None and summary["final_loss"] == summary["final_loss"]
    weights = load_file(str(tmp_path / "bf16" / "pytorch_lora_weights.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float32}
    model = build_lora_transformer(opts, tiny_pipeline / "transformer")
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert dtypes["transformer_blocks.0.attn1.to_q.base_layer.weight"] == torch.bfloat16
    assert dtypes["transformer_blocks.0.attn1.to_q.lora_A.default.weight"] == torch.float32


def test_lora_resume_after_ctrl_c_is_bit_exact_and_checkpoints_hold_no_base(
    tiny_pipeline, shapes_data, tmp_path
):
    from safetensors.torch import load_file

    from sanatool.training import TrainOptions, run_training

    common = {
        "data": shapes_data, "steps": 6, "source": str(tiny_pipeline), "batch_size": 2, "lr": 1e-2,
        "optimizer": "adamw", "lora_rank": 2, "lora_dropout": 0.2, "caption_dropout": 0.3,
    }  # fmt: skip
    run_training(TrainOptions(out=tmp_path / "straight", **common))

    def ctrl_c_at_3(task: str, done: int, total: int | None = None, **info: object) -> None:
        if task == "train" and done == 3 and info:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        run_training(TrainOptions(out=tmp_path / "split", **common), progress=ctrl_c_at_3)
    checkpoint = tmp_path / "split.checkpoints" / "step-00000003"
    held = sorted(p.name for p in checkpoint.iterdir())
    assert "pytorch_lora_weights.safetensors" in held and "transformer" not in held and "vae" not in held
    summary = run_training(TrainOptions(out=tmp_path / "split", resume=True, **common))
    assert summary["resumed_from_step"] == 3
    straight = load_file(str(tmp_path / "straight" / "pytorch_lora_weights.safetensors"))
    split = load_file(str(tmp_path / "split" / "pytorch_lora_weights.safetensors"))
    assert straight.keys() == split.keys() and all(straight[k].equal(split[k]) for k in straight)


def test_resume_refuses_other_lora_settings(cli, tiny_pipeline, shapes_data, tmp_path):
    run = [tiny_pipeline, "--data", shapes_data, "-o", tmp_path / "out", *RUN, "--lora-rank", "2"]
    res = cli("finetune", *run, "--save-every", "2", "--keep-checkpoints", "1")
    assert res.code == 0, res.stderr
    res = cli("finetune", *run[:-1], "4", "--steps", "5", "--resume", "--force", "--save-every", "2")
    assert res.code == 2 and "--lora-rank 2 → 4" in res.stderr, res.stderr


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--lora-rank", "0"], "--lora-rank must be an integer ≥ 1"),
        (
            ["--lora-rank", "4", "--lora-targets", "to_q,nothing_here"],
            "--lora-targets nothing_here matches no",
        ),
        (["--lora-rank", "4", "--lora-targets", "norm_q"], "matches no linear or convolution"),
        (["--merge"], "--merge needs --lora-rank"),
        (["--lora-rank", "4", "--base-precision", "nf4", "--device", "cpu"], "CUDA-only"),
        (["--lora-rank", "4", "--base-precision", "int8", "--device", "cpu"], "CUDA-only"),
        (["--lora-rank", "4", "--ema", "0.9"], "--ema is for full fine-tunes"),
        (["--lora-rank", "4", "--lora-alpha", "-1"], "--lora-alpha must be positive"),
    ],
)
def test_bad_lora_input_exits_2_and_writes_nothing(
    cli, tiny_pipeline, shapes_data, tmp_path, extra, expected
):
    cache = Path(os.environ["XDG_CACHE_HOME"])
    before, cache_before = _snapshot(tmp_path), _snapshot(cache) if cache.exists() else {}
    res = cli("finetune", tiny_pipeline, "--data", shapes_data, "-o", tmp_path / "out", *RUN, *extra)
    assert res.code == 2, res.stderr
    assert expected in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert _snapshot(tmp_path) == before
    assert (_snapshot(cache) if cache.exists() else {}) == cache_before  # not even a latent cache


def test_parse_lora_spec(tmp_path):
    from sanatool.errors import InputError
    from sanatool.inference.lora import LORA_WEIGHTS_NAME, parse_lora_spec

    (tmp_path / "a:b").mkdir()
    (tmp_path / "a:b" / LORA_WEIGHTS_NAME).write_bytes(b"")
    file = tmp_path / "style.safetensors"
    file.write_bytes(b"")
    assert parse_lora_spec(str(tmp_path / "a:b")).path == tmp_path / "a:b" / LORA_WEIGHTS_NAME
    assert parse_lora_spec(f"{tmp_path / 'a:b'}:0.25").scale == 0.25
    spec = parse_lora_spec(f"{file}:1.5")
    assert spec.path == file and spec.scale == 1.5
    assert parse_lora_spec(str(file)).scale == 1.0
    for bad, message in (
        (f"{file}:-1", "finite number ≥ 0"),
        (f"{file}:nan", "finite number ≥ 0"),
        (f"{file}:abc", "SCALE a number"),
        (str(tmp_path), "holds no pytorch_lora_weights"),
        (str(tmp_path / "missing.safetensors"), "does not exist"),
    ):
        with pytest.raises(InputError, match=message):
            parse_lora_spec(bad)


def _sample(cli, model, out, *extra):
    return cli("sample", model, "--prompt", "a red circle", "-n", "2", "--steps", "2", "-o", out, *extra)


def test_sample_with_a_lora_unmerged(cli, lora_runs, tiny_pipeline, tmp_path):
    from sanatool.io.manifest import read_manifest

    lora = lora_runs / "lora"
    assert _sample(cli, tiny_pipeline, tmp_path / "plain").code == 0
    res = _sample(cli, tiny_pipeline, tmp_path / "zero", "--lora", f"{lora}:0")
    assert res.code == 0, res.stderr
    res = _sample(cli, tiny_pipeline, tmp_path / "full", "--lora", str(lora))
    assert res.code == 0, res.stderr
    images = {name: _snapshot(tmp_path / name / "images") for name in ("plain", "zero", "full")}
    assert images["zero"] == images["plain"]  # scale 0: the base model
    assert images["full"] != images["plain"]
    records, _ = read_manifest(tmp_path / "full")
    assert records[0]["lora"][0]["scale"] == 1.0 and len(records[0]["lora"][0]["fingerprint"]) == 16
    assert "lora" not in read_manifest(tmp_path / "plain")[0][0]
    # The LoRA and its scale are settings of the samples dir: --resume refuses another one.
    res = _sample(cli, tiny_pipeline, tmp_path / "full", "--lora", f"{lora}:0.5", "--resume")
    assert res.code == 2 and "lora" in res.stderr, res.stderr


@pytest.mark.parametrize("case", ["narrower", "deeper", "not-lora", "negative"])
def test_sample_refuses_a_lora_for_another_model(cli, lora_runs, tiny_pipeline, tmp_path, case):
    import torch
    from safetensors.torch import save_file

    key = "transformer.transformer_blocks.{}.attn1.to_q.lora_{}.weight"
    file = tmp_path / "other.safetensors"
    lora = str(file)
    if case == "narrower":  # a LoRA of a 32-wide SANA
        save_file({key.format(0, "A"): torch.zeros(4, 32), key.format(0, "B"): torch.zeros(32, 4)}, str(file))
    elif case == "deeper":  # a block the 8-block model does not have
        save_file(
            {key.format(11, "A"): torch.zeros(4, 128), key.format(11, "B"): torch.zeros(128, 4)}, str(file)
        )
    elif case == "not-lora":
        lora = str(tiny_pipeline / "transformer" / "diffusion_pytorch_model.safetensors")
    else:
        lora = f"{lora_runs / 'lora'}:-0.5"
    before = _snapshot(tmp_path)
    res = _sample(cli, tiny_pipeline, tmp_path / "out", "--lora", lora)
    assert res.code == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert _snapshot(tmp_path) == before


def test_two_process_ddp_lora_matches_single_process(tiny_pipeline, shapes_data, tmp_path):
    import subprocess
    import sys

    from safetensors.torch import load_file

    from sanatool.training import TrainOptions, run_training

    run_training(
        TrainOptions(
            source=str(tiny_pipeline),
            data=shapes_data,
            out=tmp_path / "one",
            steps=2,
            optimizer="adamw",
            lr=1e-2,
            batch_size=4,
            device="cpu",
            seed=4,
            lora_rank=2,
        )  # fmt: skip
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "sanatool", "finetune", str(tiny_pipeline), "--data", str(shapes_data), "-o", str(tmp_path / "two"),
        "--batch-size", "2", "--steps", "2", "--optimizer", "adamw", "--lr", "1e-2", "--device", "cpu",
        "--seed", "4", "--lora-rank", "2", "--save-every", "1",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if proc.returncode != 0 and "gloo" in proc.stderr.lower() and "address" in proc.stderr.lower():
        pytest.skip("gloo cannot open a socket on this machine")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "two.checkpoints" / "step-00000001" / "pytorch_lora_weights.safetensors").is_file()
    name = "pytorch_lora_weights.safetensors"
    a, b = load_file(str(tmp_path / "one" / name)), load_file(str(tmp_path / "two" / name))
    assert a.keys() == b.keys()
    update = sum(float(a[k].pow(2).sum()) for k in a if ".lora_B." in k) ** 0.5
    disagreement = sum(float((a[k] - b[k]).pow(2).sum()) for k in a) ** 0.5
    assert update > 0 and disagreement / update < 1e-2
