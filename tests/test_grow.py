"""grow: exact identity growth, copy strategies, QK-norm insertion, streaming, CLI contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sanatool.arch import preset_config
from sanatool.io.modeldir import open_model_dir
from sanatool.io.safetensors import read_header

# A SANA-1.0-shaped small transformer: no QK-norm, unequal self/cross head layouts, SANA's 32 latent
# channels, no attention bias. Differs from the tiny preset in every dimension that has a name.
SANA_SHAPED = {
    **preset_config("sana-1.6b"),
    "num_attention_heads": 5,
    "num_cross_attention_heads": 2,
    "cross_attention_head_dim": 80,
    "cross_attention_dim": 160,
    "caption_channels": 48,
    "num_layers": 3,
    "sample_size": 8,
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sana10(tmp_path_factory):
    """A random SANA-1.0-shaped bare transformer dir (fp32, no QK-norm)."""
    from sanatool.io.modeldir import write_transformer_dir
    from sanatool.surgery.initialize import random_init_entries

    out = tmp_path_factory.mktemp("models") / "sana10"
    write_transformer_dir(out, SANA_SHAPED, random_init_entries(SANA_SHAPED, "fp32", 1), 10**9)
    return out


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _tensor_bytes(model_dir: Path) -> dict[str, bytes]:
    """Every tensor's raw bytes, by name, from a (possibly sharded) transformer dir."""
    tdir = open_model_dir(model_dir).transformer
    out = {}
    for name, info in tdir.tensors.items():
        with open(info.file, "rb") as handle:
            handle.seek(info.start)
            out[name] = handle.read(info.nbytes)
    return out


def _array(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype=np.float32)


def _load(model_dir: Path):
    from diffusers import SanaTransformer2DModel

    model, info = SanaTransformer2DModel.from_pretrained(model_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model.eval()


def _inputs(config: dict, seed: int = 0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(2, 7)
    mask[1, 5:] = 0  # padded caption tokens exercise the cross-attention mask
    return {
        "hidden_states": torch.randn(2, config["in_channels"], 8, 8, generator=gen),
        "encoder_hidden_states": torch.randn(2, 7, config["caption_channels"], generator=gen),
        "timestep": torch.tensor([900.0, 35.0]),
        "encoder_attention_mask": mask,
    }


def _forward(model, inputs):
    import torch

    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


def _max_diff(a, b) -> float:
    return float((a - b).abs().max())


def test_partial_grow_is_an_exact_identity_on_tiny(cli, tiny_transformer, tmp_path):
    import torch

    out = tmp_path / "grown"
    res = cli("grow", tiny_transformer, "--to", 11, "-o", out)
    assert res.code == 0, res.stderr
    assert res.stdout.strip() == str(out)
    base, grown = _load(tiny_transformer), _load(out)
    assert len(grown.transformer_blocks) == 11 and grown.config.num_layers == 11
    inputs = _inputs(base.config)
    expected, actual = _forward(base, inputs), _forward(grown, inputs)
    assert _max_diff(expected, actual) <= 1e-5
    # The new blocks do run: disturb one output projection and the output moves.
    with torch.no_grad():
        grown.transformer_blocks[9].attn1.to_out[0].weight.add_(0.05)
    assert _max_diff(expected, _forward(grown, inputs)) > 1e-4

    source, result = _tensor_bytes(tiny_transformer), _tensor_bytes(out)
    for name, raw in source.items():  # kept blocks and non-block weights are byte-identical
        assert result[name] == raw, name
    new = {
        k[len("transformer_blocks.9.") :]: _array(v)
        for k, v in result.items()
        if k.startswith("transformer_blocks.9.")
    }
    for suffix in (
        "attn1.to_out.0.weight",
        "attn1.to_out.0.bias",
        "attn2.to_out.0.weight",
        "ff.conv_point.weight",
    ):
        assert not new[suffix].any(), suffix
    for suffix in ("attn1.norm_q.weight", "attn2.norm_k.weight"):
        assert (new[suffix] == 1).all()
    assert not new["ff.conv_inverted.bias"].any() and not new["attn2.to_q.bias"].any()
    assert abs(new["attn1.to_q.weight"].std() - 0.02) < 0.002
    assert abs(new["ff.conv_depth.weight"].std() - 1 / np.sqrt(27)) < 0.02
    assert abs(new["scale_shift_table"].std() - 1 / np.sqrt(128)) < 0.02
    assert not np.array_equal(
        new["attn1.to_q.weight"], _array(result["transformer_blocks.10.attn1.to_q.weight"])
    )

    info = json.loads(cli("info", out, "--json").stdout)
    assert info["history"].endswith("grow(11, partial)")
    assert info["provenance"][-1]["parent_fingerprint"] == open_model_dir(tiny_transformer).fingerprint()


@pytest.mark.parametrize(
    ("strategy", "to", "extra"),
    [("partial", 5, []), ("cyclic", 7, ["--zero-init-copies"]), ("block", 6, ["--zero-init-copies"])],
)
def test_identity_growth_on_a_sana_shaped_model(cli, sana10, tmp_path, strategy, to, extra):
    out = tmp_path / strategy
    res = cli("grow", sana10, "--to", to, "--strategy", strategy, "--no-qk-norm", *extra, "-o", out)
    assert res.code == 0, res.stderr
    assert "QK-norm" not in res.stderr
    base, grown = _load(sana10), _load(out)
    assert grown.config.qk_norm is None and len(grown.transformer_blocks) == to
    inputs = _inputs(base.config, seed=1)
    assert _max_diff(_forward(base, inputs), _forward(grown, inputs)) <= 1e-5


def test_cyclic_and_block_copy_the_right_blocks(cli, tiny_transformer, tmp_path):
    source = _tensor_bytes(tiny_transformer)
    cases = {"cyclic": (12, lambda i: i % 8), "block": (16, lambda i: i // 2)}
    for strategy, (to, origin) in cases.items():
        out = tmp_path / strategy
        assert cli("grow", tiny_transformer, "--to", to, "--strategy", strategy, "-o", out).code == 0
        result = _tensor_bytes(out)
        for name, raw in result.items():
            if name.startswith("transformer_blocks."):
                _, index, suffix = name.split(".", 2)
                assert raw == source[f"transformer_blocks.{origin(int(index))}.{suffix}"], name
    # With --zero-init-copies only the repeats change: output projections and the gate rows.
    out = tmp_path / "zeroed"
    assert (
        cli("grow", tiny_transformer, "--to", 16, "--strategy", "block", "--zero-init-copies", "-o", out).code
        == 0
    )
    result = _tensor_bytes(out)
    assert (
        result["transformer_blocks.2.attn1.to_out.0.weight"]
        == source["transformer_blocks.1.attn1.to_out.0.weight"]
    )
    assert not _array(result["transformer_blocks.3.attn1.to_out.0.weight"]).any()
    assert not _array(result["transformer_blocks.3.ff.conv_point.weight"]).any()
    assert (
        result["transformer_blocks.3.attn1.to_q.weight"] == source["transformer_blocks.1.attn1.to_q.weight"]
    )
    table = _array(result["transformer_blocks.3.scale_shift_table"]).reshape(6, 128)
    original = _array(source["transformer_blocks.1.scale_shift_table"]).reshape(6, 128)
    assert not table[[2, 5]].any()
    assert np.array_equal(table[[0, 1, 3, 4]], original[[0, 1, 3, 4]])


def test_qk_norm_is_added_to_a_sana10_model_with_a_warning(cli, sana10, tmp_path):
    out = tmp_path / "qk"
    res = cli("grow", sana10, "--to", 4, "-o", out)
    assert res.code == 0, res.stderr
    assert "no QK-norm" in res.stderr and "fine-tune" in res.stderr
    model = _load(out)  # loads with no missing or unexpected keys
    assert model.config.qk_norm == "rms_norm_across_heads"
    result, source = _tensor_bytes(out), _tensor_bytes(sana10)
    for block in range(4):
        for module, width in (("attn1", 160), ("attn2", 160)):
            for norm in ("norm_q", "norm_k"):
                values = _array(result[f"transformer_blocks.{block}.{module}.{norm}.weight"])
                assert values.shape == (width,) and (values == 1).all()
    for name, raw in source.items():
        assert result[name] == raw, name
    assert model.transformer_blocks[0].attn2.norm_k.weight.shape == (2 * 80,)
    history = json.loads(cli("info", out, "--json").stdout)["history"]
    assert history.endswith("grow(4, partial, +qk-norm)")


def test_source_layers_drop_trailing_blocks_and_seed_is_reproducible(tiny_transformer, tmp_path):
    from sanatool.surgery.grow import grow_model

    a = grow_model(tiny_transformer, tmp_path / "a", 10, source_layers=6, seed=5)
    b = grow_model(tiny_transformer, tmp_path / "b", 10, source_layers=6, seed=5)
    c = grow_model(tiny_transformer, tmp_path / "c", 10, source_layers=6, seed=6)
    weights = "diffusion_pytorch_model.safetensors"
    assert (a / weights).read_bytes() == (b / weights).read_bytes()
    assert (a / weights).read_bytes() != (c / weights).read_bytes()
    source, result = _tensor_bytes(tiny_transformer), _tensor_bytes(a)
    assert (
        result["transformer_blocks.5.attn1.to_q.weight"] == source["transformer_blocks.5.attn1.to_q.weight"]
    )
    assert not _array(result["transformer_blocks.6.attn1.to_out.0.weight"]).any()
    assert open_model_dir(a).provenance["chain"][-1]["summary"] == "grow(10, partial, first 6)"


def test_pipeline_grow_hard_links_components_and_shards(cli, tiny_pipeline, tmp_path):
    out = tmp_path / "grown"
    res = cli("grow", tiny_pipeline, "--to", 9, "-o", out, "--max-shard-size", "4MB", "--json")
    assert res.code == 0, res.stderr
    result = json.loads(res.stdout)
    assert result["depth"] == 9 and result["path"] == str(out)
    for file in (tiny_pipeline / "text_encoder").rglob("*"):
        if file.is_file():
            twin = out / file.relative_to(tiny_pipeline)
            assert os.stat(twin).st_ino == os.stat(file).st_ino
    assert (out / "model_index.json").read_bytes() == (tiny_pipeline / "model_index.json").read_bytes()
    shards = sorted((out / "transformer").glob("*.safetensors"))
    assert (
        len(shards) > 1 and (out / "transformer" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    )
    assert all(sum(i.nbytes for i in read_header(s)[0].values()) <= 4_000_000 for s in shards)
    assert _load(out / "transformer").config.num_layers == 9
    assert open_model_dir(out).fingerprint() == result["fingerprint"]


def test_grow_streams_without_torch(tiny_transformer, tmp_path):
    script = (
        "import sys\n"
        "from sanatool.surgery.grow import grow_model\n"
        f"grow_model({str(tiny_transformer)!r}, {str(tmp_path / 'g')!r}, 12)\n"
        "assert 'torch' not in sys.modules, 'grow imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    assert open_model_dir(tmp_path / "g").transformer.num_layers == 12


def test_dry_run_prints_the_plan_and_writes_nothing(cli, tiny_transformer, tmp_path):
    out = tmp_path / "never"
    res = cli("grow", tiny_transformer, "--to", 20, "--strategy", "cyclic", "-o", out, "--dry-run")
    assert res.code == 0, res.stderr
    assert "blocks 0-7 ← source blocks 0-7: copied" in res.stdout
    assert (
        "blocks 8-15 ← source blocks 0-7" in res.stdout and "blocks 16-19 ← source blocks 0-3" in res.stdout
    )
    assert "bytes to write" in res.stdout
    assert not out.exists() and list(tmp_path.iterdir()) == []
    res = cli("grow", tiny_transformer, "--to", 10, "-o", out, "--dry-run", "--json")
    plan = json.loads(res.stdout)
    assert plan["dry_run"] and plan["depth"] == 10 and plan["shards"] == 1
    assert [b["source"] for b in plan["blocks"]] == [*range(8), None, None]
    assert plan["bytes_generated"] > 0 and not out.exists()


def test_force_replaces_an_existing_output(cli, tiny_transformer, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "old.txt").write_text("x")
    res = cli("grow", tiny_transformer, "--to", 9, "-o", out)
    assert res.code == 2 and "--force" in res.stderr and (out / "old.txt").exists()
    assert cli("grow", tiny_transformer, "--to", 9, "-o", out, "--force").code == 0
    assert not (out / "old.txt").exists() and open_model_dir(out).transformer.num_layers == 9


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--to", "8"], "must be larger than the model's depth"),
        (["--to", "12", "--strategy", "block"], "multiple of 8"),
        (["--to", "12", "--strategy", "wide"], "unknown --strategy"),
        (["--to", "12", "--zero-init-copies"], "--zero-init-copies applies to"),
        (["--to", "12", "--no-qk-norm"], "already has QK-norm"),
        (["--to", "12", "--source-layers", "9"], "--source-layers 9 must be between 1 and"),
        (["--to", "12", "--source-layers", "0"], "--source-layers 0 must be between 1 and"),
        (["--to", "2000"], "1024 blocks"),
        (["--to", "12", "--max-shard-size", "lots"], "--max-shard-size"),
    ],
)
def test_bad_grow_input_exits_2_and_writes_nothing(cli, tiny_transformer, tmp_path, args, message):
    before = _snapshot(tiny_transformer)
    res = cli("grow", tiny_transformer, *args, "-o", tmp_path / "out")
    assert res.code == 2, res.stderr
    assert message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and res.stdout == ""
    assert list(tmp_path.iterdir()) == []
    assert _snapshot(tiny_transformer) == before


def test_grow_refuses_missing_model_and_output_inside_input(cli, tiny_transformer, tmp_path):
    res = cli("grow", tmp_path / "nope", "--to", 9, "-o", tmp_path / "out")
    assert res.code == 2 and "does not exist" in res.stderr
    before = _snapshot(tiny_transformer)
    res = cli("grow", tiny_transformer, "--to", 9, "-o", tiny_transformer / "inner")
    assert res.code == 2 and "overlaps the input" in res.stderr
    assert _snapshot(tiny_transformer) == before


def test_generated_bf16_matches_torch_rounding_and_bounds():
    import torch

    from sanatool.surgery.blocks import BlockTensor, InitRule, _to_bf16_bits, generate

    values = torch.randn(4096) * 0.03
    # Exact ties (low half 0x8000) on even and odd upper halves exercise round-to-nearest-even.
    ties = torch.tensor([0x3F808000, 0x3F818000, 0xBC238000, 0x3C23FFFF], dtype=torch.int64).to(torch.int32)
    values = torch.cat([values, ties.view(torch.float32)])
    expected = values.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    scratch = np.empty(values.numel(), dtype=np.uint32)
    assert np.array_equal(_to_bf16_bits(values.numpy().copy(), scratch).astype(np.uint16), expected)

    tensor = BlockTensor("attn1.to_q.weight", "BF16", (300, 40))
    raw = generate(tensor, InitRule("random", 0.02), (0, 1, 2))
    assert raw == generate(tensor, InitRule("random", 0.02), (0, 1, 2))
    back = torch.frombuffer(bytearray(raw), dtype=torch.bfloat16).float()
    assert back.abs().max() <= 0.02 * 3**0.5 + 1e-3 and abs(back.std() - 0.02) < 0.001


def test_write_order_interleaves_without_losing_or_reordering_copies(tiny_transformer, monkeypatch):
    from sanatool.io import safetensors as safetensors_io
    from sanatool.io.safetensors import FileSlice, write_order
    from sanatool.surgery.grow import plan_grow

    monkeypatch.setattr(
        safetensors_io, "COPY_RUN_BYTES", 1_000_000
    )  # the tiny model is 9 MB; real runs cut at 128 MB
    plan = plan_grow(tiny_transformer, tiny_transformer.parent / "unused", 12)
    order = write_order(plan.entries)
    assert sorted(e.name for e in order) == sorted(e.name for e in plan.entries)
    copies = [e.name for e in plan.entries if isinstance(e.source, FileSlice)]
    assert [e.name for e in order if isinstance(e.source, FileSlice)] == copies
    first_new = next(i for i, e in enumerate(order) if not isinstance(e.source, FileSlice))
    assert first_new < len(copies)  # new tensors are spread among the copies, not all at the end


def test_a_failing_generator_leaves_no_output(tiny_transformer, tmp_path):
    from sanatool.errors import RunFailure
    from sanatool.io.safetensors import FileSlice, TensorEntry
    from sanatool.surgery.grow import plan_grow
    from sanatool.surgery.plan import run_plan

    plan = plan_grow(tiny_transformer, tmp_path / "out", 12)
    index = max(i for i, e in enumerate(plan.entries) if not isinstance(e.source, FileSlice))
    broken = plan.entries[index]

    def fail() -> bytes:
        raise RunFailure("generator broke")

    plan.entries[index] = TensorEntry(broken.name, broken.dtype, broken.shape, fail)
    with pytest.raises(RunFailure, match="generator broke"):
        run_plan(plan)
    assert list(tmp_path.iterdir()) == []


def test_prefetcher_keeps_order_and_budget_and_reraises():
    import threading

    from sanatool.surgery.plan import Prefetcher

    running, peak = [0], [0]
    lock = threading.Lock()

    def producer(value: int):
        def produce() -> bytes:
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            if value == 7:
                raise ValueError("seven")
            with lock:
                running[0] -= 1
            return bytes([value]) * 10

        return produce

    with Prefetcher([producer(i) for i in range(7)], [10] * 7, budget=30, workers=2) as prefetcher:
        assert len(prefetcher._futures) == 3  # 30 bytes of budget: three results ahead, no more
        assert [prefetcher.take(i) for i in range(7)] == [bytes([i]) * 10 for i in range(7)]
        assert prefetcher._held == 0
    assert peak[0] <= 2
    with Prefetcher([producer(1), producer(7)], [10, 10], budget=5, workers=2) as prefetcher:
        assert prefetcher.take(0) == bytes([1]) * 10
        with pytest.raises(ValueError, match="seven"):
            prefetcher.take(1)
