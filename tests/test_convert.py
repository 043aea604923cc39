"""``convert``: original SANA checkpoints ↔ diffusers dirs, bit for bit both ways, any depth."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sanatool.arch import PRESETS
from sanatool.surgery.convert_keys import key_pairs
from tests.standins import make_pipeline, make_transformer, save_pipeline, save_transformer

#: The tiny preset's widths (so head counts can be inferred from an original file without a config).
TINY = PRESETS["tiny"]
WIDTH = TINY["num_attention_heads"] * TINY["attention_head_dim"]


def original_state(
    depth: int, qk_norm: bool = True, sprint: bool = False, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A random SANA-shaped state dict in the original layout, built from the key table.

    Shapes come from a diffusers model of the tiny preset's widths: each original tensor is its
    diffusers parts stacked along dim 0. Extras are there as the official checkpoints hold them.
    """
    from diffusers import SanaTransformer2DModel

    config = {k: v for k, v in TINY.items()}
    config.update(num_layers=1, qk_norm="rms_norm_across_heads", guidance_embeds=True)
    shapes = {name: tuple(t.shape) for name, t in SanaTransformer2DModel(**config).state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for pair in key_pairs(depth, qk_norm, sprint):
        parts = [shapes[_block0(name)] for name in pair.diffusers]
        shape = (sum(p[0] for p in parts), *parts[0][1:])
        state[pair.original] = torch.randn(shape, generator=generator)
    state["y_embedder.y_embedding"] = torch.randn(300, TINY["caption_channels"], generator=generator)
    state["pos_embed"] = torch.zeros(1, TINY["sample_size"] ** 2, WIDTH)
    if sprint:
        state["logvar_linear.weight"] = torch.randn(1, WIDTH, generator=generator)
        state["logvar_linear.bias"] = torch.randn(1, generator=generator)
    return state


def _block0(name: str) -> str:
    parts = name.split(".")
    if parts[0] == "transformer_blocks":
        parts[1] = "0"
    # The guidance model names the timestep embedder without ``emb.``.
    return ".".join(parts).replace("time_embed.emb.", "time_embed.")


def tensors_of(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, a .pth's state dict, or a diffusers dir (weights + side file)."""
    if path.is_dir():
        found = {}
        for file in sorted(path.glob("*.safetensors")):
            found.update(load_file(file))
        return found
    if path.suffix == ".pth":
        return torch.load(path, weights_only=True)["state_dict"]
    return load_file(path)


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name].view(torch.uint8), b[name].view(torch.uint8)), name


@pytest.mark.parametrize(
    ("depth", "qk_norm", "sprint", "dtype"),
    [(5, True, False, torch.float32), (3, False, False, torch.bfloat16), (4, True, True, torch.float16)],
)
def test_original_round_trip_is_bit_exact(cli, tmp_path, depth, qk_norm, sprint, dtype):
    state = {k: v.to(dtype) for k, v in original_state(depth, qk_norm, sprint).items()}
    src = tmp_path / "orig.safetensors"
    save_file(state, src)
    result = cli("convert", src, "-o", tmp_path / "dir")
    assert result.code == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "dir")
    config = json.loads((tmp_path / "dir" / "config.json").read_text())
    assert config["num_layers"] == depth
    assert config["qk_norm"] == ("rms_norm_across_heads" if qk_norm else None)
    assert config["guidance_embeds"] is sprint
    provenance = json.loads((tmp_path / "dir" / "sanatool.json").read_text())
    assert provenance["chain"][-1]["args"]["original_extras"]["tensors"]["y_embedder.y_embedding"] == (
        "kept from the original file"
    )
    assert cli("convert", tmp_path / "dir", "-o", tmp_path / "back.safetensors").code == 0
    assert_same(tensors_of(tmp_path / "back.safetensors"), state)
    assert cli("convert", tmp_path / "dir", "-o", tmp_path / "back.pth", "--format", "pth").code == 0
    assert_same(tensors_of(tmp_path / "back.pth"), state)
    # The .pth carries sanatool's record too: back to diffusers with the same config.
    assert cli("convert", tmp_path / "back.pth", "--allow-pickle", "-o", tmp_path / "dir2").code == 0
    assert json.loads((tmp_path / "dir2" / "config.json").read_text()) == config


def test_pth_input_needs_allow_pickle_and_round_trips(cli, tmp_path):
    state = original_state(4, qk_norm=True)
    src = tmp_path / "Sana_orig.pth"
    torch.save({"state_dict": state}, src)
    refused = cli("convert", src, "-o", tmp_path / "dir")
    assert refused.code == 2
    assert "--allow-pickle" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "dir").exists()
    assert cli("convert", src, "--allow-pickle", "-o", tmp_path / "dir").code == 0
    assert cli("convert", tmp_path / "dir", "-o", tmp_path / "back.safetensors").code == 0
    assert_same(tensors_of(tmp_path / "back.safetensors"), state)


@pytest.mark.parametrize("sprint", [False, True])
def test_diffusers_round_trip_is_bit_exact(cli, tmp_path, sprint):
    """A model born in diffusers (any depth, QK-norm, Sprint) → original → diffusers: same tensors and config."""
    model = make_transformer(3, num_layers=7, guidance_embeds=sprint)
    src = save_transformer(model, tmp_path / "src")
    result = cli("convert", src, "-o", tmp_path / "orig.safetensors", "--seed", "5")
    assert result.code == 0, result.stderr
    assert "null caption" in result.stderr
    original = tensors_of(tmp_path / "orig.safetensors")
    assert original["blocks.6.attn.qkv.weight"].shape[0] == 3 * original["blocks.6.attn.proj.weight"].shape[0]
    assert "blocks.0.cross_attn.k_norm.weight" in original
    assert ("cfg_embedder.mlp.0.weight" in original) is sprint
    # The null caption as the official CaptionEmbedder makes it: randn(300, C) / sqrt(C), seeded.
    caption = model.config.caption_channels
    null = torch.randn(300, caption, generator=torch.Generator().manual_seed(5)) / caption**0.5
    assert torch.equal(original["y_embedder.y_embedding"], null)
    assert cli("convert", tmp_path / "orig.safetensors", "-o", tmp_path / "back").code == 0
    back = tensors_of(tmp_path / "back")
    extras = {"pos_embed", "y_embedder.y_embedding"}
    assert extras <= set(back)
    assert_same({k: v for k, v in back.items() if k not in extras}, tensors_of(src))
    src_config = json.loads((src / "config.json").read_text())
    back_config = json.loads((tmp_path / "back" / "config.json").read_text())
    strip = {"_diffusers_version", "_class_name"}
    assert {k: v for k, v in back_config.items() if k not in strip} == {
        k: v for k, v in src_config.items() if k not in strip
    }
    # The made extras travel too: original → diffusers → original gives the same file's tensors.
    assert cli("convert", tmp_path / "back", "-o", tmp_path / "again.safetensors").code == 0
    assert_same(tensors_of(tmp_path / "again.safetensors"), original)


def test_diffusers_single_file_loader_reads_our_sana10_output(cli, tmp_path):
    """An independent client: diffusers' own from_single_file loads our SANA 1.0 file with the same forward."""
    from diffusers import SanaTransformer2DModel

    model = make_transformer(4, num_layers=5, qk_norm=None)
    src = save_transformer(model, tmp_path / "src")
    assert cli("convert", src, "-o", tmp_path / "orig.safetensors").code == 0
    loaded = SanaTransformer2DModel.from_single_file(tmp_path / "orig.safetensors", config=str(src)).eval()
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    caption = torch.randn(1, 6, model.config.caption_channels, generator=generator)
    timestep = torch.tensor([500.0])
    with torch.no_grad():
        expected = model(latents, encoder_hidden_states=caption, timestep=timestep).sample
        got = loaded(latents, encoder_hidden_states=caption, timestep=timestep).sample
    # Same weights bit for bit; kernels round differently by memory alignment, so the outputs get a tolerance.
    reference = model.state_dict()
    assert all(torch.equal(t, reference[name]) for name, t in loaded.state_dict().items())
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_components_make_a_pipeline_with_linked_parts(cli, tmp_path):
    pipe = save_pipeline(make_pipeline(6), tmp_path / "pipe")
    assert cli("convert", pipe, "-o", tmp_path / "orig.safetensors", "--dtype", "bf16").code == 0
    original = tensors_of(tmp_path / "orig.safetensors")
    assert {t.dtype for t in original.values()} == {torch.bfloat16}
    out = tmp_path / "pipe2"
    result = cli("convert", tmp_path / "orig.safetensors", "--components", pipe, "-o", out)
    assert result.code == 0, result.stderr
    text_encoder = next((pipe / "text_encoder").glob("*.safetensors"))
    assert os.path.samefile(text_encoder, out / "text_encoder" / text_encoder.name)
    assert (out / "transformer" / "sana_original_extras.safetensors").is_file()
    from diffusers import SanaPipeline

    loaded = SanaPipeline.from_pretrained(out)
    source = tensors_of(pipe / "transformer")
    for name, tensor in loaded.transformer.state_dict().items():
        assert torch.equal(tensor, source[name].to(torch.bfloat16)), name


def test_prune_accepts_an_original_file(cli, tmp_path):
    src = tmp_path / "Sana_orig.safetensors"
    state = original_state(5, qk_norm=False)
    save_file(state, src)
    result = cli("prune", src, "--keep-blocks", "0,3", "-o", tmp_path / "small")
    assert result.code == 0, result.stderr
    assert "converting it to a temporary diffusers dir" in result.stderr
    pruned = tensors_of(tmp_path / "small")
    assert torch.equal(
        pruned["transformer_blocks.1.attn1.to_out.0.weight"], state["blocks.3.attn.proj.weight"]
    )
    chain = json.loads((tmp_path / "small" / "sanatool.json").read_text())["chain"]
    assert [step["command"] for step in chain] == ["convert", "prune"]
    # The learned null caption survives the surgery and goes back into the original file.
    assert cli("convert", tmp_path / "small", "-o", tmp_path / "small.safetensors").code == 0
    small = tensors_of(tmp_path / "small.safetensors")
    assert torch.equal(small["y_embedder.y_embedding"], state["y_embedder.y_embedding"])
    assert torch.equal(small["blocks.1.attn.qkv.weight"], state["blocks.3.attn.qkv.weight"])


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    neither = tmp_path / "neither.safetensors"
    save_file({"encoder.weight": torch.zeros(2, 2)}, neither)
    gap = original_state(5)
    for name in [n for n in gap if n.startswith("blocks.3.")]:
        del gap[name]
    missing = tmp_path / "missing.safetensors"
    save_file(gap, missing)
    mixed_state = original_state(4)
    for name in [n for n in mixed_state if n.startswith("blocks.2.") and "_norm." in n]:
        del mixed_state[name]
    mixed = tmp_path / "mixed.safetensors"
    save_file(mixed_state, mixed)
    bad_shape = original_state(2)
    bad_shape["x_embedder.proj.weight"] = torch.zeros(WIDTH, 8)
    shapes = tmp_path / "shapes.safetensors"
    save_file(bad_shape, shapes)
    pickle = tmp_path / "orig.pth"
    torch.save({"state_dict": original_state(2)}, pickle)
    return {
        "neither": (neither, "neither an original SANA checkpoint"),
        "missing": (missing, "blocks 3 are missing"),
        "mixed": (mixed, "mixed QK-norm"),
        "shapes": (shapes, "do not form a SANA transformer"),
        "pickle": (pickle, "--allow-pickle"),
    }


@pytest.mark.parametrize("command", ["convert", "info", "prune"])
def test_bad_inputs_exit_2_with_one_line_and_write_nothing(cli, tmp_path, command):
    for what, (path, message) in _bad_inputs(tmp_path).items():
        out = tmp_path / f"out-{what}"
        args = {"convert": ["-o", out], "info": [], "prune": ["--keep", "1", "--strategy", "tail", "-o", out]}
        result = cli(command, path, *args[command])
        assert result.code == 2, (what, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip() and "converting it" not in line]
        assert len(lines) == 1 and message in result.stderr, (what, result.stderr)
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
