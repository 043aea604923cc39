"""Checkpoints as users hold them (issue 16): hub-cache snapshots with symlinked shards, variant files,
fp32 + bf16 side by side, ControlNet pipelines, and the symlink rule.

The inputs are stand-ins built with diffusers and transformers directly (tests/standins.py); each
output is loaded back with the input's own diffusers class and compared numerically: a prune equals
the input with those blocks removed, a grow computes exactly what the input computes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import standins
import torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _assert_refused(res, *fragments: str) -> None:
    assert res.code == 2, (res.code, res.stdout, res.stderr)
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    for fragment in fragments:
        assert fragment in lines[0], res.stderr


def _no_links(root: Path) -> None:
    for path in root.rglob("*"):
        assert not path.is_symlink(), path


def _pipeline_class(path: Path):
    import diffusers

    return getattr(diffusers, json.loads((path / "model_index.json").read_text())["_class_name"])


def _load(path: Path, variant: str | None = None, dtype: torch.dtype = torch.float32):
    return _pipeline_class(path).from_pretrained(path, variant=variant, torch_dtype=dtype)


def _inputs(dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "hidden_states": torch.randn(1, 4, 8, 8, generator=generator).to(dtype),
        "encoder_hidden_states": torch.randn(1, 5, 32, generator=generator).to(dtype),
        "timestep": torch.tensor([500.0]),
    }


@torch.no_grad()
def _forward(transformer, residuals=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return transformer(**_inputs(dtype), controlnet_block_samples=residuals, return_dict=False)[0]


@torch.no_grad()
def _residuals(controlnet, dtype: torch.dtype = torch.float32):
    control = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)).to(dtype)
    return controlnet(**_inputs(dtype), controlnet_cond=control, return_dict=False)[0]


def _without_blocks(transformer, dropped: list[int]):
    transformer.transformer_blocks = torch.nn.ModuleList(
        b for i, b in enumerate(transformer.transformer_blocks) if i not in dropped
    )
    transformer.register_to_config(num_layers=len(transformer.transformer_blocks))
    return transformer


def _assert_close(made: torch.Tensor, expected: torch.Tensor) -> None:
    tolerance = 1e-5 if expected.dtype == torch.float32 else 2e-2
    torch.testing.assert_close(made, expected, atol=tolerance, rtol=0)


def _assert_same_model(
    made, expected, dtype: torch.dtype = torch.float32, residuals=None, made_residuals=None
):
    """Same weights bit for bit (under the same names), and the same output (up to the kernels' rounding,
    which depends on where a tensor sits in memory)."""
    made_state, expected_state = made.state_dict(), expected.state_dict()
    assert made_state.keys() == expected_state.keys()
    for name, value in expected_state.items():
        assert torch.equal(made_state[name], value), name
    assert made.config.num_layers == expected.config.num_layers
    _assert_close(_forward(made, made_residuals, dtype), _forward(expected, residuals, dtype))


# --- stand-ins, built once per session ---------------------------------------------------------


@pytest.fixture(scope="session")
def hub_sharded(tmp_path_factory):
    """A hub-cache snapshot whose transformer and text encoder are sharded (every file a symlink into blobs)."""
    root = tmp_path_factory.mktemp("hub")
    saved = standins.save_pipeline(standins.make_pipeline(seed=3), root / "saved", max_shard_size="20KB")
    assert len(list((saved / "transformer").glob("*-of-*.safetensors"))) > 10
    return standins.hub_snapshot(saved, root / "cache", "Efficient-Large-Model/SANA1.5_tiny_diffusers")


@pytest.fixture(scope="session")
def variant_only(tmp_path_factory):
    """A pipeline saved with ``variant="bf16"`` in bf16: every component has only bf16 files, sharded."""
    out = tmp_path_factory.mktemp("variant") / "bf16-only"
    pipe = standins.make_pipeline(seed=4, dtype=torch.bfloat16)
    return standins.save_pipeline(pipe, out, variant="bf16", max_shard_size="40KB")


@pytest.fixture(scope="session")
def side_by_side(tmp_path_factory):
    """fp32 default files and a bf16 variant of the same pipeline in one dir (as the SANA 1.0 repos)."""
    out = tmp_path_factory.mktemp("side") / "fp32-bf16"
    pipe = standins.make_pipeline(seed=5)
    standins.save_pipeline(pipe, out)
    standins.save_pipeline(pipe.to(torch.bfloat16), out, variant="bf16")
    return out


@pytest.fixture(scope="session")
def controlnet_pipeline(tmp_path_factory):
    """A SanaControlNetPipeline: a 6-block transformer and a 2-layer ControlNet (residuals after blocks 1, 2)."""
    out = tmp_path_factory.mktemp("controlnet") / "sana-controlnet"
    return standins.save_pipeline(standins.make_pipeline(seed=6, controlnet_layers=2), out)


# --- the stand-ins are what they claim ----------------------------------------------------------


def test_standin_tokenizer_tokenizes_as_sentencepiece():
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_proto=standins.sentencepiece_model())
    tokenizer = standins.gemma_tokenizer()
    for text in ("a red circle above two blue squares", "a photo of a cat at night"):
        assert tokenizer(text, add_special_tokens=False).input_ids == processor.encode(text)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id) == (0, 1, 2)


def test_hub_snapshot_layout(hub_sharded):
    repo = hub_sharded.parent.parent
    assert (repo / "refs" / "main").read_text() == hub_sharded.name
    shard = next((hub_sharded / "transformer").glob("*-00001-of-*.safetensors"))
    assert shard.is_symlink() and os.readlink(shard).startswith("../../../blobs/")


# --- hub cache with symlinked shards ------------------------------------------------------------


def test_hub_cache_sharded_info_prune_grow(cli, hub_sharded, tmp_path):
    info = cli("info", hub_sharded, "--json")
    assert info.code == 0, info.stderr
    described = json.loads(info.stdout)
    assert described["shards"] == len(list((hub_sharded / "transformer").glob("*-of-*.safetensors")))
    assert described["variant"] is None and described["depth"] == 6
    assert described["history"] == "Efficient-Large-Model/SANA1.5_tiny_diffusers"

    pruned = tmp_path / "pruned"
    res = cli("prune", hub_sharded, "--drop-blocks", "2,4", "-o", pruned)
    assert res.code == 0, res.stderr
    grown = tmp_path / "grown"
    res = cli("grow", hub_sharded, "--to", "8", "-o", grown, "--max-shard-size", "20KB")
    assert res.code == 0, res.stderr
    for out in (pruned, grown):
        _no_links(out)
        assert not out.joinpath("controlnet").exists()
    history = json.loads(cli("info", pruned, "--json").stdout)["history"]
    assert history == "Efficient-Large-Model/SANA1.5_tiny_diffusers → prune(drop 2,4)"

    original = _load(hub_sharded).transformer
    _assert_close(_forward(_load(grown).transformer), _forward(original))
    _assert_same_model(_load(pruned).transformer, _without_blocks(original, [2, 4]))
    # A snapshot's transformer/ alone is a bare transformer dir; its links stay inside the repo's blobs.
    bare = tmp_path / "bare"
    assert cli("prune", hub_sharded / "transformer", "--drop-blocks", "0", "-o", bare).code == 0
    assert (bare / "config.json").is_file() and not (bare / "model_index.json").exists()
    # The carried text encoder is the input's (loaded through its own class, compared byte for byte).
    assert (pruned / "text_encoder" / "config.json").read_bytes() == (
        hub_sharded / "text_encoder" / "config.json"
    ).read_bytes()


# --- variants -----------------------------------------------------------------------------------


def test_variant_only_pipeline(cli, variant_only, tmp_path):
    described = json.loads(cli("info", variant_only, "--json").stdout)
    assert described["variant"] == "bf16" and set(described["dtypes"]) == {"BF16"}
    bare = json.loads(cli("info", variant_only / "transformer", "--json").stdout)
    assert bare["kind"] == "transformer" and bare["variant"] == "bf16"
    assert [w["variant"] for w in described["weights"]["text_encoder"]] == ["bf16"]

    pruned, grown = tmp_path / "pruned", tmp_path / "grown"
    assert cli("prune", variant_only, "--keep-blocks", "0,1,3,5", "-o", pruned).code == 0
    res = cli("grow", variant_only, "--to", "9", "-o", grown, "--max-shard-size", "40KB")
    assert res.code == 0, res.stderr
    assert (pruned / "transformer" / "diffusion_pytorch_model.bf16.safetensors").is_file()
    assert (grown / "transformer" / "diffusion_pytorch_model.safetensors.index.bf16.json").is_file()
    assert not list(grown.glob("transformer/diffusion_pytorch_model-*"))
    assert (pruned / "text_encoder" / "model.safetensors.index.bf16.json").is_file()

    bf16 = torch.bfloat16
    original = _load(variant_only, "bf16", bf16).transformer
    _assert_close(
        _forward(_load(grown, "bf16", bf16).transformer, dtype=bf16), _forward(original, dtype=bf16)
    )
    _assert_same_model(_load(pruned, "bf16", bf16).transformer, _without_blocks(original, [2, 4]), bf16)


def test_side_by_side_variants(cli, side_by_side, tmp_path):
    res = cli("info", side_by_side)
    assert res.code == 0, res.stderr
    assert "default (used): F32" in res.stdout and "bf16: BF16" in res.stdout
    described = json.loads(cli("info", side_by_side, "--json").stdout)
    assert described["variant"] is None and set(described["dtypes"]) == {"F32"}
    chosen = json.loads(cli("info", side_by_side, "--variant", "bf16", "--json").stdout)
    assert chosen["variant"] == "bf16" and set(chosen["dtypes"]) == {"BF16"}
    assert chosen["fingerprint"] != described["fingerprint"]

    default_out, bf16_out = tmp_path / "default", tmp_path / "bf16"
    assert cli("prune", side_by_side, "--drop-blocks", "5", "-o", default_out).code == 0
    assert cli("prune", side_by_side, "--drop-blocks", "5", "--variant", "bf16", "-o", bf16_out).code == 0
    assert sorted(p.name for p in (default_out / "transformer").glob("*.safetensors")) == [
        "diffusion_pytorch_model.safetensors"
    ]
    assert sorted(p.name for p in (bf16_out / "transformer").glob("*.safetensors")) == [
        "diffusion_pytorch_model.bf16.safetensors"
    ]
    # Both outputs carry both text-encoder variants; each loads with the variant it was made from.
    assert (bf16_out / "text_encoder" / "model.bf16.safetensors").is_file()
    assert (bf16_out / "text_encoder" / "model.safetensors").is_file()
    bf16 = torch.bfloat16
    original = _load(side_by_side, "bf16", bf16).transformer
    _assert_same_model(_load(bf16_out, "bf16", bf16).transformer, _without_blocks(original, [5]), bf16)
    assert open_variant(bf16_out) == "bf16"


def open_variant(path: Path) -> str | None:
    from sanatool.io.modeldir import open_model_dir

    return open_model_dir(path).variant


def test_ambiguous_and_missing_variants(cli, tmp_path, side_by_side):
    both = tmp_path / "fp16-bf16"
    pipe = standins.make_pipeline(seed=8)
    standins.save_pipeline(pipe.to(torch.float16), both, variant="fp16")
    standins.save_pipeline(pipe.to(torch.bfloat16), both, variant="bf16")
    for command in (("info", both), ("prune", both, "--drop-blocks", "1", "-o", tmp_path / "o")):
        _assert_refused(cli(*command), "several weight variants (bf16, fp16)", "--variant")
    assert not (tmp_path / "o").exists()
    assert json.loads(cli("info", both, "--variant", "fp16", "--json").stdout)["dtypes"] == {
        "F16": json.loads(cli("info", both, "--variant", "bf16", "--json").stdout)["dtypes"]["BF16"]
    }
    _assert_refused(
        cli("grow", side_by_side, "--to", "8", "--variant", "fp8", "-o", tmp_path / "g"),
        "--variant fp8",
        "default, bf16",
    )
    assert not (tmp_path / "g").exists()


def test_variant_resolution_rules(tmp_path):
    from sanatool.errors import ModelDirError
    from sanatool.io.modelfiles import WeightSet, resolve_variant

    def sets(*variants):
        return {v: WeightSet(tmp_path, "model", v, (), None, None) for v in variants}

    where = tmp_path
    # The transformer holds only bf16; the text encoder falls back to its default files.
    assert (
        resolve_variant({"transformer": sets("bf16"), "text_encoder": sets(None, "fp16")}, None, where)
        == "bf16"
    )
    assert resolve_variant({"transformer": sets(None, "bf16"), "vae": sets(None)}, None, where) is None
    assert resolve_variant({"transformer": sets(None, "bf16"), "vae": sets(None)}, "bf16", where) == "bf16"
    with pytest.raises(ModelDirError, match="neither fp16 nor default"):
        resolve_variant({"transformer": sets("fp16"), "text_encoder": sets("bf16")}, "fp16", where)
    with pytest.raises(ModelDirError, match="no set of weights that all its components hold"):
        resolve_variant({"transformer": sets("fp16"), "text_encoder": sets("bf16")}, None, where)


# --- ControlNet ---------------------------------------------------------------------------------


def test_controlnet_info(cli, controlnet_pipeline):
    described = json.loads(cli("info", controlnet_pipeline, "--json").stdout)
    assert described["controlnet"] == {"class": "SanaControlNetModel", "layers": 2, "feeds_blocks": [1, 2]}
    assert described["family"] == "SANA ControlNet"
    assert "residuals after blocks 1-2" in cli("info", controlnet_pipeline).stdout


def test_diffusers_adds_residual_k_after_block_k_plus_1(controlnet_pipeline):
    """The fact the ControlNet rule rests on, checked against diffusers itself."""
    transformer = _load(controlnet_pipeline).transformer
    seen = []
    for index, block in enumerate(transformer.transformer_blocks):
        block.register_forward_hook(lambda module, args, output, index=index: seen.append((index, output)))
    residuals = [torch.full((1, 64, 32), float(k + 1)) for k in range(2)]
    _forward(transformer, residuals)
    first = [out for _, out in seen]
    seen.clear()
    _forward(transformer)
    # Block 0's and block 1's inputs are unchanged; block 2 sees residual 0 added after block 1.
    assert torch.equal(first[0], seen[0][1]) and torch.equal(first[1], seen[1][1])
    assert not torch.equal(first[2], seen[2][1])


@pytest.mark.parametrize(
    "args, blocks",
    [
        (("prune", "--drop-blocks", "1"), "1-2"),
        (("prune", "--drop-blocks", "0"), "1-2"),
        (("prune", "--keep-blocks", "0,1"), "2"),
        (("grow", "--to", "12", "--strategy", "block"), "1-2"),
        (("grow", "--to", "8", "--source-layers", "2"), "2"),
    ],
)
def test_controlnet_surgery_that_moves_fed_blocks_is_refused(
    cli, controlnet_pipeline, tmp_path, args, blocks
):
    command, *rest = args
    res = cli(command, controlnet_pipeline, *rest, "-o", tmp_path / "out")
    _assert_refused(res, f"moves or removes blocks {blocks}", "--drop-controlnet")
    assert list(tmp_path.iterdir()) == []


def test_controlnet_surgery_that_keeps_fed_blocks(cli, controlnet_pipeline, tmp_path):
    pruned, grown = tmp_path / "pruned", tmp_path / "grown"
    assert cli("prune", controlnet_pipeline, "--drop-blocks", "3,5", "-o", pruned).code == 0
    assert cli("grow", controlnet_pipeline, "--to", "8", "-o", grown).code == 0
    source = _load(controlnet_pipeline)
    residuals = _residuals(source.controlnet)
    expected = _forward(source.transformer, residuals)
    for out in (pruned, grown):
        assert json.loads((out / "model_index.json").read_text())["_class_name"] == "SanaControlNetPipeline"
        _no_links(out)
    grown_pipe = _load(grown)
    _assert_close(_forward(grown_pipe.transformer, _residuals(grown_pipe.controlnet)), expected)
    pruned_pipe = _load(pruned)
    _assert_same_model(
        pruned_pipe.transformer,
        _without_blocks(source.transformer, [3, 5]),
        residuals=residuals,
        made_residuals=_residuals(pruned_pipe.controlnet),
    )


def test_drop_controlnet_writes_a_plain_pipeline(cli, controlnet_pipeline, hub_sharded, tmp_path):
    from diffusers import SanaPipeline

    out = tmp_path / "plain"
    res = cli("prune", controlnet_pipeline, "--drop-blocks", "1", "--drop-controlnet", "-o", out)
    assert res.code == 0, res.stderr
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "SanaPipeline" and "controlnet" not in index
    assert not (out / "controlnet").exists()
    pipe = SanaPipeline.from_pretrained(out)
    original = _load(controlnet_pipeline).transformer
    _assert_same_model(pipe.transformer, _without_blocks(original, [1]))
    assert json.loads(cli("info", out, "--json").stdout)["controlnet"] is None
    _assert_refused(
        cli("prune", hub_sharded, "--drop-blocks", "1", "--drop-controlnet", "-o", tmp_path / "x"),
        "has no ControlNet",
    )


# --- the symlink rule ---------------------------------------------------------------------------


def _copy_repo(snapshot: Path, dst: Path) -> Path:
    """A private copy of a hub-cache repo (links kept); returns its snapshot dir."""
    repo = snapshot.parent.parent
    shutil.copytree(repo, dst / repo.name, symlinks=True)
    return dst / repo.name / "snapshots" / snapshot.name


@pytest.mark.parametrize("victim", ["vae/config.json", "transformer/diffusion_pytorch_model-00002-of-*"])
def test_symlink_leaving_the_cache_is_refused(cli, hub_sharded, tmp_path, victim):
    snapshot = _copy_repo(hub_sharded, tmp_path / "cache")
    link = next(snapshot.glob(victim))
    outside = tmp_path / "outside" / link.name
    outside.parent.mkdir()
    shutil.copyfile(link.resolve(), outside)  # same bytes: only where it lives is wrong
    link.unlink()
    link.symlink_to(outside)
    for args in (
        ("info",),
        ("prune", "--drop-blocks", "1", "-o", tmp_path / "out"),
        ("grow", "--to", "7", "-o", tmp_path / "out"),
    ):
        command, *rest = args
        _assert_refused(cli(command, snapshot, *rest), str(link), "outside the model dir")
    assert not (tmp_path / "out").exists()


def test_symlink_into_another_repos_blobs_is_refused(cli, hub_sharded, tmp_path):
    snapshot = _copy_repo(hub_sharded, tmp_path / "cache")
    other = tmp_path / "cache" / "models--someone--else" / "blobs"
    other.mkdir(parents=True)
    link = snapshot / "tokenizer" / "tokenizer.json"
    shutil.copyfile(link.resolve(), other / "abc")
    link.unlink()
    link.symlink_to(os.path.relpath(other / "abc", link.parent))
    _assert_refused(cli("prune", snapshot, "--drop-blocks", "1", "-o", tmp_path / "out"), str(link))
    assert not (tmp_path / "out").exists()


def test_dangling_blob_link_is_refused(cli, hub_sharded, tmp_path):
    snapshot = _copy_repo(hub_sharded, tmp_path / "cache")
    link = next((snapshot / "transformer").glob("*-00003-of-*.safetensors"))
    link.resolve().unlink()
    for args in (("info",), ("grow", "--to", "7", "-o", tmp_path / "out")):
        command, *rest = args
        _assert_refused(cli(command, snapshot, *rest), str(link), "broken symlink")
    assert not (tmp_path / "out").exists()


def test_a_loop_of_links_in_a_subfolder_is_refused(cli, side_by_side, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(side_by_side, model)
    (model / "extras").mkdir()
    (model / "extras" / "a").symlink_to("b")
    (model / "extras" / "b").symlink_to("a")
    _assert_refused(cli("info", model), str(model / "extras" / "a"), "cannot be resolved")


def test_a_folder_that_is_not_a_model_is_refused_before_it_is_walked(cli, tmp_path):
    # A wrong path (a home dir, /tmp) must not be walked: a loop of links in someone else's files
    # would otherwise be what the user hears about.
    folder = tmp_path / "not-a-model"
    (folder / "deep").mkdir(parents=True)
    (folder / "deep" / "a").symlink_to("b")
    (folder / "deep" / "b").symlink_to("a")
    for args in (("info", folder), ("finetune", "builtin:tiny-shapes", "--teacher", folder, "--dry-run")):
        _assert_refused(cli(*args), f"{folder} is not a model dir", "model_index.json")


def test_link_inside_the_model_dir_is_followed_and_resolved_in_the_output(cli, side_by_side, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(side_by_side, model)
    readme = model / "README.md"
    (model / "docs.md").write_text("model card")
    readme.symlink_to("docs.md")
    out = tmp_path / "out"
    assert cli("prune", model, "--drop-blocks", "0", "-o", out).code == 0
    assert (out / "README.md").read_text() == "model card" and not (out / "README.md").is_symlink()


def test_controlnet_of_a_model_without_qk_norm(cli, tmp_path):
    """Growing a SANA 1.0 ControlNet pipeline adds QK-norm to every block, the fed ones too."""
    model = standins.save_pipeline(
        standins.make_pipeline(seed=9, controlnet_layers=2, qk_norm=None), tmp_path / "sana10-controlnet"
    )
    res = cli("grow", model, "--to", "8", "-o", tmp_path / "out")
    _assert_refused(res, "adds QK-norm to) blocks 1-2", "--no-qk-norm", "--drop-controlnet")
    res = cli("grow", model, "--to", "12", "--strategy", "block", "-o", tmp_path / "out")
    _assert_refused(res, "moves or removes blocks 1-2", "keep blocks 0-2 in place")
    assert cli("grow", model, "--to", "8", "--no-qk-norm", "-o", tmp_path / "out").code == 0


def test_weight_sets_of_a_folder(tmp_path):
    from sanatool.io.modelfiles import weight_sets

    for name in (
        "model.safetensors",
        "model.fp16.safetensors",
        "model.bf16-00001-of-00002.safetensors",
        "model.bf16-00002-of-00002.safetensors",
        "model-00001-of-00002.fp32.safetensors",  # a legacy-named shard of an index: not a set of its own
        "notes.txt",
    ):
        (tmp_path / name).write_bytes(b"")
    index = {
        "weight_map": {
            "a": "model.bf16-00001-of-00002.safetensors",
            "b": "model.bf16-00002-of-00002.safetensors",
        }
    }
    (tmp_path / "model.safetensors.index.bf16.json").write_text(json.dumps(index))
    sets = weight_sets(tmp_path)
    assert sorted(sets, key=str) == sorted([None, "fp16", "bf16"], key=str)
    assert [f.name for f in sets["bf16"].files] == list(index["weight_map"].values())
    assert sets["bf16"].index.name == "model.safetensors.index.bf16.json"
    assert weight_sets(tmp_path, "diffusion_pytorch_model") == {}


def test_hidden_entries_of_a_clone_are_not_part_of_the_model(cli, side_by_side, tmp_path):
    """A git clone's .git (with links anywhere) is neither checked nor carried."""
    model = tmp_path / "clone"
    shutil.copytree(side_by_side, model)
    (model / ".git").mkdir()
    (model / ".git" / "hooks").symlink_to("/usr/bin")
    out = tmp_path / "out"
    assert cli("prune", model, "--drop-blocks", "0", "-o", out).code == 0
    assert not (out / ".git").exists()


def test_plan_records_variant_and_dropped_components(controlnet_pipeline, variant_only, tmp_path):
    from sanatool.surgery.prune import plan_prune

    plan = plan_prune(controlnet_pipeline, tmp_path / "a", drop_blocks="1", drop_controlnet=True)
    assert plan.args["dropped_components"] == ["controlnet"] and "variant" not in plan.args
    assert "components dropped: controlnet" in "\n".join(plan.describe())
    plan = plan_prune(variant_only, tmp_path / "b", drop_blocks="1")
    assert plan.args["variant"] == "bf16" and plan.to_json()["variant"] == "bf16"
