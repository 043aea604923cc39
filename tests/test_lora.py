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
    from sanatool.errors import ModelDirError
    from sanatool.io.modeldir import open_model_dir

    assert record["base"]["fingerprint"] == open_model_dir(tiny_pipeline).fingerprint()
    with pytest.raises(ModelDirError, match="is a LoRA, not a model dir"):
        open_model_dir(out)

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
    # The in-memory adapted model (as training builds it, adapters read back from OUT) computes it too.
    from sanatool.training import TrainOptions
    from sanatool.training.lora import build_lora_transformer, load_lora_state
    from sanatool.training.options import validate_options

    targets = ("to_q", "to_k", "to_v", "to_out.0", "conv_inverted")
    opts = TrainOptions(
        data=Path("d"), out=Path("o"), steps=1, source=str(tiny_pipeline), lora_rank=4, lora_alpha=8.0,
        lora_targets=targets,
    )  # fmt: skip
    validate_options(opts)
    in_memory = build_lora_transformer(opts, tiny_pipeline / "transformer")
    load_lora_state(in_memory, out)
    torch.testing.assert_close(_forward(in_memory), adapted, atol=1e-5, rtol=1e-4)
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
        (["--base-precision", "bf16"], "a full fine-tune trains every weight"),
        (["--lora-rank", "4", "--base-precision", "bf16", "--precision", "fp32"], "drop --precision fp32"),
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


def test_ddp_wraps_a_lora_model_training_only_the_adapters(tiny_pipeline):
    """DDP around an adapted model: frozen base weights are not DDP parameters, the adapters get the gradients.

    A one-process gloo group in this process (the 2-process equality is the full fine-tune's DDP test;
    this checks what LoRA adds: frozen parameters inside DDP and the adapter state read through the wrapper).
    """
    import torch
    import torch.distributed as dist

    from sanatool.training import TrainOptions
    from sanatool.training.lora import build_lora_transformer, lora_state
    from sanatool.training.options import validate_options

    opts = TrainOptions(data=Path("d"), out=Path("o"), steps=1, source=str(tiny_pipeline), lora_rank=2)
    validate_options(opts)
    model = build_lora_transformer(opts, tiny_pipeline / "transformer")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
        wrapped(**_inputs())[0].pow(2).mean().backward()
    finally:
        dist.destroy_process_group()
    grads = {n for n, p in model.named_parameters() if p.grad is not None}
    assert grads == {n for n, p in model.named_parameters() if p.requires_grad} and grads
    assert all(".lora_" in n for n in grads)
    through = lora_state(wrapped)
    assert through.keys() == lora_state(model).keys() and all(".default" not in k for k in through)


def test_convert_a_lora_to_original_keys_and_back(cli, lora_runs, tiny_pipeline, tmp_path):
    """Both files compute the same update: on the original checkpoint's fused qkv/kv, and back in diffusers."""
    import torch
    from diffusers import SanaPipeline, SanaTransformer2DModel
    from safetensors.torch import load_file, save_file

    original = tmp_path / "lora-original.safetensors"
    res = cli("convert", lora_runs / "lora", "-o", original)
    assert res.code == 0 and res.stdout.strip() == str(original), res.stderr
    tensors = load_file(str(original))
    assert tensors["blocks.0.attn.qkv.lora_A.weight"].shape == (12, 128)  # q, k, v stacked: rank 3 × 4
    assert tensors["blocks.0.attn.qkv.lora_B.weight"].shape == (384, 12)
    assert tensors["blocks.0.mlp.inverted_conv.conv.lora_A.weight"].shape == (4, 128, 1, 1)
    back = tmp_path / "lora-back"
    assert cli("convert", original, "-o", back).code == 0
    pipe = SanaPipeline.from_pretrained(str(tiny_pipeline))
    pipe.load_lora_weights(str(lora_runs / "lora"))
    expected = _forward(pipe.transformer)
    pipe.unload_lora_weights()
    pipe.load_lora_weights(str(back))
    torch.testing.assert_close(_forward(pipe.transformer), expected, atol=1e-5, rtol=1e-4)
    # The original-key file, applied to the original checkpoint's weights (W + alpha/rank · B·A) and
    # converted to diffusers, is the adapted model too.
    checkpoint = tmp_path / "tiny-original.safetensors"
    assert cli("convert", tiny_pipeline, "-o", checkpoint).code == 0
    weights = load_file(str(checkpoint))
    for key in [k for k in tensors if k.endswith(".lora_A.weight")]:
        module = key.removesuffix(".lora_A.weight")
        down, up = tensors[key], tensors[f"{module}.lora_B.weight"]
        scale = float(tensors[f"{module}.alpha"]) / down.shape[0]
        weight = weights[f"{module}.weight"]
        weights[f"{module}.weight"] = weight + scale * (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)
    save_file(weights, str(checkpoint))
    assert cli("convert", checkpoint, "-o", tmp_path / "adapted").code == 0
    adapted = SanaTransformer2DModel.from_pretrained(str(tmp_path / "adapted"))
    torch.testing.assert_close(_forward(adapted), expected, atol=1e-5, rtol=1e-4)


def test_convert_refuses_a_lora_it_cannot_place(cli, lora_runs, tmp_path):
    import torch
    from safetensors.torch import save_file

    stray = tmp_path / "stray.safetensors"
    save_file({"transformer.nowhere.lora_A.weight": torch.zeros(2, 4), "transformer.nowhere.lora_B.weight": torch.zeros(4, 2)}, str(stray))  # fmt: skip
    for args, message in (
        ([stray, "-o", tmp_path / "x.safetensors"], "no place in the original SANA layout"),
        (
            [lora_runs / "lora", "-o", tmp_path / "x.pth", "--format", "pth"],
            "a LoRA converts to a safetensors",
        ),
    ):
        res = cli("convert", *args)
        assert res.code == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, (
            res.stderr
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stray.safetensors"]


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="bitsandbytes bases need CUDA")
@pytest.mark.parametrize("base_precision", ["int8", "nf4"])
def test_quantized_base_trains_fp32_adapters_on_cuda(tiny_pipeline, shapes_data, tmp_path, base_precision):
    import torch
    from diffusers import SanaPipeline
    from safetensors.torch import load_file

    from sanatool.training import TrainOptions, run_training

    out = tmp_path / base_precision
    summary = run_training(
        TrainOptions(
            data=shapes_data,
            out=out,
            steps=2,
            source=str(tiny_pipeline),
            batch_size=2,
            optimizer="adamw",
            lr=1e-2,
            lora_rank=2,
            base_precision=base_precision,
            device="cuda",
            save_every=1,
        )  # fmt: skip
    )
    assert summary["final_loss"] == summary["final_loss"]  # finite, not NaN
    weights = load_file(str(out / "pytorch_lora_weights.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float32}
    assert any(t.abs().sum() > 0 for k, t in weights.items() if ".lora_B." in k)
    SanaPipeline.from_pretrained(str(tiny_pipeline)).load_lora_weights(str(out))
