"""prune: exact equality with the original minus dropped blocks, block selection, CLI contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sanatool.io.importance_file import Calibration, ImportanceResult, write_importance_file
from sanatool.io.modeldir import open_model_dir

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _importance(fingerprint: str, scores: list[float], path: Path) -> Path:
    calibration = Calibration("calib.jsonl", 4, 2, 4.5, 0, ("cond", "uncond"))
    result = ImportanceResult(fingerprint, "1-cos", calibration, scores, [999.0, 500.0], [scores, scores])
    return write_importance_file(path, result)


def _load(model_dir: Path):
    from diffusers import SanaTransformer2DModel

    model, info = SanaTransformer2DModel.from_pretrained(model_dir, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model.eval()


def _forward(model):
    import torch

    gen = torch.Generator().manual_seed(0)
    inputs = {
        "hidden_states": torch.randn(2, model.config.in_channels, 8, 8, generator=gen),
        "encoder_hidden_states": torch.randn(2, 5, model.config.caption_channels, generator=gen),
        "timestep": torch.tensor([700.0, 10.0]),
    }
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


def test_pruned_model_equals_original_without_the_dropped_blocks(cli, tiny_transformer, tmp_path):
    import torch

    out = tmp_path / "pruned"
    res = cli("prune", tiny_transformer, "--drop-blocks", "1,4-5", "-o", out, "--max-shard-size", "3MB")
    assert res.code == 0, res.stderr
    assert res.stdout.strip() == str(out)
    assert len(list(out.glob("*.safetensors"))) > 1  # sharded, and still exact
    pruned = _load(out)
    reference = _load(tiny_transformer)
    kept = [0, 2, 3, 6, 7]
    reference.transformer_blocks = torch.nn.ModuleList([reference.transformer_blocks[i] for i in kept])
    assert pruned.config.num_layers == 5
    expected, actual = reference.state_dict(), pruned.state_dict()
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    assert torch.equal(_forward(reference), _forward(pruned))
    history = json.loads(cli("info", out, "--json").stdout)["history"]
    assert history.endswith("prune(drop 1,4-5)")


def _block_bytes(model) -> list[dict[str, bytes]]:
    """Each block's tensors (name within the block → bytes), in block order."""
    transformer = open_model_dir(model).transformer
    out = []
    for infos in transformer.block_tensors().values():
        block = {}
        for info in infos:
            with open(info.file, "rb") as handle:
                handle.seek(info.start)
                block[info.name.split(".", 2)[2]] = handle.read(info.nbytes)
        out.append(block)
    return out


def assert_blocks_are(source, pruned, kept: list[int]) -> None:
    """The pruned model's blocks are the source's blocks ``kept``, byte for byte, in that order."""
    before, after = _block_bytes(source), _block_bytes(pruned)
    assert len(after) == len(kept)
    for index, origin in enumerate(kept):
        assert after[index] == before[origin], (index, origin)


def test_keep_by_importance_and_the_provenance_chain(cli, tiny_pipeline, tmp_path):
    grown = tmp_path / "grown"
    assert cli("grow", tiny_pipeline, "--to", 10, "-o", grown).code == 0
    scores = [0.9, 0.1, 0.5, 0.5, 0.05, 0.7, 0.3, 0.8, 0.0, 0.2]
    importance = _importance(open_model_dir(grown).fingerprint(), scores, tmp_path / "importance.json")
    out = tmp_path / "pruned"
    res = cli("prune", grown, "--keep", 6, "--importance", importance, "-o", out, "--json")
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)["depth"] == 6
    chain = open_model_dir(out).provenance["chain"]
    assert chain[-1]["args"]["kept"] == [0, 2, 3, 5, 6, 7]  # the six highest scores, in block order
    assert_blocks_are(grown, out, [0, 2, 3, 5, 6, 7])
    info = json.loads(cli("info", out, "--json").stdout)
    assert info["history"] == "tiny → grow(10, partial) → prune(keep 6 by importance.json)"
    assert set(info["components"]) == {"scheduler", "text_encoder", "tokenizer", "transformer", "vae"}

    from diffusers import SanaPipeline

    assert len(SanaPipeline.from_pretrained(out).transformer.transformer_blocks) == 6


def test_naive_strategies_and_keep_blocks(cli, tiny_transformer, tmp_path):
    from sanatool.surgery.prune import naive_selection

    assert naive_selection("tail", 3, 8) == [0, 1, 2]
    assert naive_selection("uniform", 4, 8) == [0, 2, 5, 7]
    assert naive_selection("uniform", 1, 8) == [0]
    for depth in range(1, 30):
        for keep in range(1, depth + 1):
            picks = naive_selection("uniform", keep, depth)
            assert picks == sorted(set(picks)) and len(picks) == keep and picks[-1] < depth
            assert keep == 1 or (picks[0] == 0 and picks[-1] == depth - 1)
    for args, kept in (
        (["--keep", "5", "--strategy", "uniform"], [0, 2, 4, 5, 7]),
        (["--keep-blocks", "6,0-2"], [0, 1, 2, 6]),
        (["--keep", "8", "--strategy", "tail"], list(range(8))),
    ):
        out = tmp_path / "-".join(args)
        assert cli("prune", tiny_transformer, *args, "-o", out).code == 0
        assert open_model_dir(out).provenance["chain"][-1]["args"]["kept"] == kept
        assert_blocks_are(tiny_transformer, out, kept)


def test_dry_run_prints_the_plan_and_writes_nothing(cli, tiny_transformer, tmp_path):
    out = tmp_path / "never"
    res = cli("prune", tiny_transformer, "--keep-blocks", "0-2,5", "-o", out, "--dry-run")
    assert res.code == 0, res.stderr
    assert "blocks 0-2 ← source blocks 0-2: copied" in res.stdout
    assert "blocks 3 ← source blocks 5" in res.stdout and "dropped source blocks: 3-4,6-7" in res.stdout
    assert "0 B generated" in res.stdout
    res = cli("prune", tiny_transformer, "--drop-blocks", "7", "-o", out, "--dry-run", "--json")
    plan = json.loads(res.stdout)
    assert plan["depth"] == 7 and plan["bytes_generated"] == 0 and plan["summary"] == "prune(drop 7)"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--keep", "0", "--strategy", "tail"], "--keep 0 must be between 1 and"),
        (["--keep", "9", "--strategy", "tail"], "--keep 9 must be between 1 and"),
        (["--keep", "4"], "sanatool importance"),
        (["--keep", "4", "--strategy", "random"], "unknown --strategy"),
        (["--keep-blocks", "0,1,1"], "names block 1 twice"),
        (["--keep-blocks", "0-3,8"], "names block 8"),
        (["--keep-blocks", "5-2"], "runs backwards"),
        (["--keep-blocks", "a,b"], "cannot read"),
        (["--keep-blocks", ""], "is empty"),
        (["--drop-blocks", "0-7"], "keep at least one"),
        (["--keep", "3", "--keep-blocks", "0-2"], "exactly one of"),
        ([], "exactly one of"),
        (["--keep-blocks", "0-2", "--strategy", "tail"], "pass --keep K with them"),
        (["--keep-blocks", "0-2", "--max-shard-size", "0MB"], "--max-shard-size"),
    ],
)
def test_bad_prune_input_exits_2_and_writes_nothing(cli, tiny_transformer, tmp_path, args, message):
    before = _snapshot(tiny_transformer)
    res = cli("prune", tiny_transformer, *args, "-o", tmp_path / "out")
    assert res.code == 2, res.stderr
    assert message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and res.stdout == ""
    assert list(tmp_path.iterdir()) == []
    assert _snapshot(tiny_transformer) == before


def test_importance_file_of_another_model_is_refused(cli, tiny_transformer, tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    fingerprint = open_model_dir(tiny_transformer).fingerprint()
    cases = {
        "other.json": _importance("0123456789abcdef", [1.0] * 8, files / "other.json"),
        "deeper.json": _importance(fingerprint, [1.0] * 9, files / "deeper.json"),
    }
    broken = files / "broken.json"
    broken.write_text('{"format": "sanatool-importance/1"')
    for name, path in cases.items():
        res = cli("prune", tiny_transformer, "--keep", 4, "--importance", path, "-o", tmp_path / name)
        assert (
            res.code == 2 and "scores a different model" in res.stderr and "sanatool importance" in res.stderr
        )
    res = cli("prune", tiny_transformer, "--keep", 4, "--importance", broken, "-o", tmp_path / "b")
    assert res.code == 2 and "not valid JSON" in res.stderr
    res = cli(
        "prune", tiny_transformer, "--keep", 4, "--importance", files / "none.json", "-o", tmp_path / "n"
    )
    assert res.code == 2 and "does not exist" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["files"]


def test_prune_refuses_existing_output_and_output_overlapping_input(cli, tiny_transformer, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    res = cli("prune", tiny_transformer, "--keep-blocks", "0-3", "-o", out)
    assert res.code == 2 and "--force" in res.stderr and list(out.iterdir()) == []
    res = cli("prune", tiny_transformer, "--keep-blocks", "0-3", "-o", tiny_transformer)
    assert res.code == 2 and "overlaps the input" in res.stderr
    assert cli("prune", tiny_transformer, "--keep-blocks", "0-3", "-o", out, "--force").code == 0
    assert open_model_dir(out).transformer.num_layers == 4


def _data_start(path: Path) -> int:
    with open(path, "rb") as handle:
        return 8 + int.from_bytes(handle.read(8), "little")


def _written_by_safetensors(tiny_transformer: Path, src: Path) -> dict:
    """A copy of the tiny transformer at ``src`` written by safetensors itself (name-sorted, data
    only 8-byte aligned, unlike sanatool's outputs), and its state dict."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    src.mkdir()
    (src / "config.json").write_bytes((tiny_transformer / "config.json").read_bytes())
    with safe_open(tiny_transformer / "diffusion_pytorch_model.safetensors", "pt") as f:
        state = {name: f.get_tensor(name) for name in list(f.keys())}
    save_file(state, src / "diffusion_pytorch_model.safetensors", metadata={"format": "pt"})
    return state


def test_written_headers_place_copies_at_their_source_page_offset(tiny_transformer, tmp_path):
    """A generated file's data starts on a page; a copy keeps its source's in-page offsets; both read back exactly."""
    import torch
    from safetensors import safe_open

    from sanatool.io.safetensors import PAGE_BYTES, TensorEntry, Zeros, read_header, write_sharded
    from sanatool.surgery.prune import prune_model

    generated = [
        TensorEntry("a", "F32", (3, 5), lambda: torch.arange(15, dtype=torch.float32).numpy().tobytes()),
        TensorEntry(
            "b", "BF16", (7,), lambda: torch.ones(7, dtype=torch.bfloat16).view(torch.int16).numpy().tobytes()
        ),
        TensorEntry("c", "F16", (4, 3), Zeros()),  # last: a hole the file must still cover
    ]
    (tmp_path / "gen").mkdir()
    [gen] = write_sharded(tmp_path / "gen", generated, 10**9)
    assert _data_start(gen) % PAGE_BYTES == 0
    with safe_open(gen, "pt") as f:
        assert torch.equal(f.get_tensor("a"), torch.arange(15, dtype=torch.float32).reshape(3, 5))
        assert torch.equal(f.get_tensor("b"), torch.ones(7, dtype=torch.bfloat16))
        assert torch.equal(f.get_tensor("c"), torch.zeros(4, 3, dtype=torch.float16))

    # A source written by safetensors itself (data only 8-byte aligned), copied by prune.
    src = tmp_path / "src"
    state = _written_by_safetensors(tiny_transformer, src)
    assert _data_start(src / "diffusion_pytorch_model.safetensors") % PAGE_BYTES != 0
    out = prune_model(src, tmp_path / "pruned", keep_blocks="0,2-3")
    weights = out / "diffusion_pytorch_model.safetensors"
    source, _ = read_header(src / "diffusion_pytorch_model.safetensors")
    written, _ = read_header(weights)
    first = min(written.values(), key=lambda info: info.start)
    assert first.start % PAGE_BYTES == source[first.name].start % PAGE_BYTES
    assert _data_start(weights) % 8 == 0
    kept = [0, 2, 3]
    with safe_open(weights, "pt") as f:
        names = list(f.keys())
        assert len(names) == len([n for n in state if not n.startswith("transformer_blocks.")]) + sum(
            n.startswith(tuple(f"transformer_blocks.{i}." for i in kept)) for n in state
        )
        for name in names:
            parts = name.split(".", 2)
            origin = (
                f"{parts[0]}.{kept[int(parts[1])]}.{parts[2]}" if parts[0] == "transformer_blocks" else name
            )
            assert torch.equal(f.get_tensor(name), state[origin]), name


def test_pruned_runs_keep_their_source_page_offsets(tiny_transformer, tmp_path):
    """Dropping blocks shifts the kept ones; small tensors moved out of turn put each copy back in phase."""
    import torch
    from safetensors import safe_open

    from sanatool.io.safetensors import PAGE_BYTES, read_header
    from sanatool.surgery.prune import prune_model

    src = tmp_path / "src"
    state = _written_by_safetensors(tiny_transformer, src)
    kept = [0, 2, 3, 6]
    out = prune_model(src, tmp_path / "pruned", keep_blocks="0,2-3,6")
    weights = out / "diffusion_pytorch_model.safetensors"
    source, _ = read_header(src / "diffusion_pytorch_model.safetensors")
    written, _ = read_header(weights)

    def origin(name: str) -> str:
        parts = name.split(".", 2)
        return f"{parts[0]}.{kept[int(parts[1])]}.{parts[2]}" if parts[0] == "transformer_blocks" else name

    # Most bytes sit at their source's in-page offset (as written in order, about a third would)...
    in_phase = sum(
        info.nbytes
        for info in written.values()
        if (info.start - source[origin(info.name)].start) % PAGE_BYTES == 0
    )
    assert in_phase > 0.8 * sum(info.nbytes for info in written.values())
    # ... the data section has no gaps, and every tensor reads back as the original.
    spans = sorted((info.start, info.end) for info in written.values())
    assert all(a_end == b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False))
    assert spans[-1][1] == weights.stat().st_size
    with safe_open(weights, "pt") as f:
        assert len(list(f.keys())) == len(written)
        for name in f.keys():
            assert torch.equal(f.get_tensor(name), state[origin(name)]), name
    assert open_model_dir(out).transformer.num_layers == len(kept)


def test_keep_without_a_ranking_suggests_the_importance_command_as_the_user_names_the_model(cli, tmp_path):
    res = cli("prune", "builtin:tiny-shapes", "--keep", "6", "-o", tmp_path / "out")
    assert res.code == 2 and not (tmp_path / "out").exists()
    assert "`sanatool importance builtin:tiny-shapes -o importance.json`" in res.stderr
