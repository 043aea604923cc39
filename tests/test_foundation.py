"""Foundation: init/info, model dir validation, sharded writing, CLI conventions."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from sanatool.io.modeldir import open_model_dir
from sanatool.io.safetensors import parse_size


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_init_tiny_then_info_json_and_diffusers_loads(cli, tmp_path):
    out = tmp_path / "t"
    res = cli("init", "--preset", "tiny", "-o", out)
    assert res.code == 0, res.stderr
    assert res.stdout.strip() == str(out)
    res = cli("info", out, "--json")
    assert res.code == 0, res.stderr
    described = json.loads(res.stdout)
    assert described["kind"] == "pipeline"
    assert described["depth"] == 8 and described["hidden_size"] == 128
    assert described["qk_norm"] == "rms_norm_across_heads"
    assert set(described["components"]) == {"scheduler", "text_encoder", "tokenizer", "transformer", "vae"}
    assert described["history"] == "tiny"
    assert described["provenance"][0]["command"] == "init"
    assert described["params"] == described["params_per_block"] * 8 + described["params_outside_blocks"]

    import torch
    from diffusers import SanaPipeline

    pipe = SanaPipeline.from_pretrained(out)
    image = pipe(
        "a red circle",
        height=32,
        width=32,
        num_inference_steps=2,
        complex_human_instruction=None,
        use_resolution_binning=False,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert image.shape == (1, 32, 32, 3)


def test_info_table_goes_to_stdout(cli, tiny_pipeline):
    res = cli("info", tiny_pipeline)
    assert res.code == 0
    assert "fingerprint" in res.stdout and "rms_norm_across_heads" in res.stdout


def test_init_is_reproducible_and_seed_matters(tmp_path):
    from sanatool.surgery.initialize import init_model

    a = init_model("tiny", tmp_path / "a", seed=3)
    b = init_model("tiny", tmp_path / "b", seed=3)
    c = init_model("tiny", tmp_path / "c", seed=4)
    weights = "transformer/diffusion_pytorch_model.safetensors"
    assert (a / weights).read_bytes() == (b / weights).read_bytes()
    assert (a / weights).read_bytes() != (c / weights).read_bytes()


def test_sharded_bf16_output_loads_and_matches_unsharded(cli, tmp_path):
    import torch
    from diffusers import SanaTransformer2DModel

    assert cli("init", "--preset", "tiny", "-o", tmp_path / "one", "--dtype", "bf16").code == 0
    res = cli(
        "init", "--preset", "tiny", "-o", tmp_path / "many", "--dtype", "bf16", "--max-shard-size", "1MB"
    )
    assert res.code == 0, res.stderr
    tdir = tmp_path / "many" / "transformer"
    index = json.loads((tdir / "diffusion_pytorch_model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0] == f"diffusion_pytorch_model-00001-of-{len(shards):05d}.safetensors"
    assert open_model_dir(tmp_path / "many").fingerprint() == open_model_dir(tmp_path / "one").fingerprint()
    one = SanaTransformer2DModel.from_pretrained(tmp_path / "one" / "transformer").state_dict()
    many = SanaTransformer2DModel.from_pretrained(tdir).state_dict()
    assert one.keys() == many.keys()
    assert all(torch.equal(one[k], many[k]) for k in one)
    assert set(open_model_dir(tmp_path / "many").transformer.dtypes()) == {"BF16"}


def test_big_preset_streams_block_by_block(tmp_path, monkeypatch):
    """sana1.5-4.8b's entries are generated lazily: building the plan allocates nothing."""
    import math
    import resource

    import torch  # noqa: F401 - imported before measuring: the plan's memory, not torch's

    from sanatool.arch import preset_config
    from sanatool.surgery.initialize import random_init_entries

    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    entries = random_init_entries(preset_config("sana1.5-4.8b"), "bf16", 0)
    params = sum(math.prod(e.shape) for e in entries)
    assert 4.5e9 < params < 5.0e9
    assert sum(e.nbytes for e in entries) == params * 2
    # 9.6 GB of weights exist only as generators until written: the process's peak barely moves.
    assert all(callable(e.source) for e in entries)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 256 * 1024
    first = min(entries, key=lambda e: e.nbytes)
    assert len(memoryview(first.source()).cast("B")) == first.nbytes


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("500MB") == 500 * 10**6
    assert parse_size("2GiB") == 2 * 2**30
    with pytest.raises(ValueError):
        parse_size("lots")


# --- bad input: exit 2, one line, nothing written, input untouched -----------------------------


def _assert_refused(res, *fragments: str) -> None:
    assert res.code == 2, (res.code, res.stderr)
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert lines and lines[0].startswith("error:"), res.stderr
    text = " ".join(res.stderr.split())
    for fragment in fragments:
        assert fragment in text, res.stderr


def test_info_missing_dir(cli, tmp_path):
    _assert_refused(cli("info", tmp_path / "nope"), "does not exist")


def test_info_dir_without_config(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    _assert_refused(cli("info", tmp_path / "empty"), "not a model dir")


def test_info_config_of_another_class(cli, tmp_path, tiny_transformer):
    bad = _copy(tiny_transformer, tmp_path / "bad")
    config = json.loads((bad / "config.json").read_text())
    config["_class_name"] = "UNet2DConditionModel"
    (bad / "config.json").write_text(json.dumps(config))
    _assert_refused(cli("info", bad), "UNet2DConditionModel", "not a SanaTransformer2DModel")


def _sharded_copy(cli, tmp_path: Path) -> Path:
    assert cli("init", "--preset", "tiny", "-o", tmp_path / "sharded", "--max-shard-size", "2MB").code == 0
    return tmp_path / "sharded" / "transformer"


def test_index_naming_a_missing_shard(cli, tmp_path):
    tdir = _sharded_copy(cli, tmp_path)
    sorted(tdir.glob("*-00002-of-*.safetensors"))[0].unlink()
    _assert_refused(cli("info", tmp_path / "sharded"), "missing")


def test_index_pointing_outside_the_dir(cli, tmp_path):
    tdir = _sharded_copy(cli, tmp_path)
    index_path = tdir / "diffusion_pytorch_model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "../../../etc/passwd"
    index_path.write_text(json.dumps(index))
    _assert_refused(cli("info", tmp_path / "sharded"), "outside")


def test_truncated_safetensors(cli, tmp_path, tiny_transformer):
    bad = _copy(tiny_transformer, tmp_path / "bad")
    weights = bad / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    _assert_refused(cli("info", bad), "truncated")


def test_corrupt_safetensors_header(cli, tmp_path, tiny_transformer):
    bad = _copy(tiny_transformer, tmp_path / "bad")
    weights = bad / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    (length,) = struct.unpack("<Q", data[:8])
    data[8 : 8 + 16] = b"\xff" * 16
    weights.write_bytes(bytes(data))
    _assert_refused(cli("info", bad), "corrupt")


def test_shapes_disagree_with_config(cli, tmp_path, tiny_transformer):
    bad = _copy(tiny_transformer, tmp_path / "bad")
    config = json.loads((bad / "config.json").read_text())
    config["caption_channels"] = 96
    (bad / "config.json").write_text(json.dumps(config))
    _assert_refused(cli("info", bad), "does not match the weights")


def test_layers_disagree_with_config(cli, tmp_path, tiny_transformer):
    bad = _copy(tiny_transformer, tmp_path / "bad")
    config = json.loads((bad / "config.json").read_text())
    config["num_layers"] = 12
    (bad / "config.json").write_text(json.dumps(config))
    _assert_refused(cli("info", bad), "num_layers=12")


def test_absurd_config_sizes_refused_before_reading_weights(cli, tmp_path, tiny_transformer):
    bad = _copy(tiny_transformer, tmp_path / "bad")
    (bad / "diffusion_pytorch_model.safetensors").unlink()  # proves no weight is touched
    config = json.loads((bad / "config.json").read_text())
    config["num_attention_heads"] = 10**9
    (bad / "config.json").write_text(json.dumps(config))
    _assert_refused(cli("info", bad), "sane range")


def test_init_output_exists_without_force(cli, tmp_path, tiny_pipeline):
    target = _copy(tiny_pipeline, tmp_path / "existing")
    before = _snapshot(target)
    _assert_refused(cli("init", "--preset", "tiny", "-o", target), "already exists", "--force")
    assert _snapshot(target) == before
    assert cli("init", "--preset", "tiny", "-o", target, "--force", "--seed", "9").code == 0
    assert _snapshot(target) != before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_output_equal_to_input_is_refused(tmp_path, tiny_pipeline):
    from sanatool.errors import OutputExistsError
    from sanatool.io.outputs import check_output_path

    with pytest.raises(OutputExistsError, match="overlaps the input"):
        check_output_path(tiny_pipeline, force=True, inputs=[tiny_pipeline])
    with pytest.raises(OutputExistsError, match="overlaps the input"):
        check_output_path(Path(tiny_pipeline) / "sub", force=True, inputs=[tiny_pipeline])


def test_outputs_get_the_usual_mode_under_the_umask(tmp_path):
    import os

    from sanatool.io.outputs import atomic_output_dir, atomic_output_file

    old = os.umask(0o022)
    try:
        with atomic_output_dir(tmp_path / "d") as tmp:
            (tmp / "x").write_text("x")
        with atomic_output_file(tmp_path / "f") as tmp:
            tmp.write_text("f")
    finally:
        os.umask(old)
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o644


def test_init_bad_preset_dtype_and_shard_size(cli, tmp_path):
    _assert_refused(cli("init", "--preset", "sana9b", "-o", tmp_path / "x"), "unknown preset")
    _assert_refused(cli("init", "--preset", "tiny", "-o", tmp_path / "x", "--dtype", "int3"), "unknown dtype")
    _assert_refused(
        cli("init", "--preset", "tiny", "-o", tmp_path / "x", "--max-shard-size", "huge"), "cannot parse size"
    )
    assert not (tmp_path / "x").exists()
    assert list(tmp_path.iterdir()) == []


def test_interrupted_init_leaves_nothing(tmp_path, monkeypatch):
    import sanatool.surgery.initialize as initialize

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("sanatool.io.modeldir.write_sharded", boom)
    with pytest.raises(KeyboardInterrupt):
        initialize.init_model("tiny", tmp_path / "t")
    assert list(tmp_path.iterdir()) == []


def test_unknown_builtin(cli):
    _assert_refused(cli("info", "builtin:huge-model"), "unknown built-in model")


def test_every_command_help_shows_an_example(cli):
    from typer.main import get_command

    from sanatool.cli import app

    group = get_command(app)

    def walk(command, path):
        if hasattr(command, "commands"):
            if path:  # a group (`sanatool data --help`) shows an example too
                yield path
            for name, sub in command.commands.items():
                yield from walk(sub, [*path, name])
        else:
            yield path

    paths = list(walk(group, []))
    assert ["init"] in paths and ["info"] in paths
    for path in paths:
        res = cli(*path, "--help")
        assert res.code == 0, path
        assert "Example: sanatool" in res.stdout, f"{' '.join(path)} --help has no example"


def test_startup_imports_no_torch():
    """`sanatool --help` and `info` must not pay for torch/diffusers imports (shell pipelines call us often)."""
    code = (
        "import sys; from sanatool.cli import app; import sanatool.surgery.info; "
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_info_needs_no_torch(tiny_pipeline):
    code = (
        "import sys; from sanatool.surgery.info import describe_model; "
        f"d = describe_model({str(tiny_pipeline)!r}); "
        "sys.exit(1 if 'torch' in sys.modules or d['depth'] != 8 else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_command_modules_map_names_each_commands_module():
    """`main` imports only the module of the command it runs, so the map must be exact."""
    code = (
        "from typer.main import get_command; import sanatool.cli as c\n"
        "seen = set()\n"
        "for module in c._MODULES:\n"
        "    c._register((module,))\n"
        "    names = set(get_command(c._typer_app).commands)\n"
        "    new = names - seen; seen |= names\n"
        "    mapped = {k for k, v in c._COMMAND_MODULES.items() if v == module}\n"
        "    assert new == mapped, (module, new, mapped)\n"
        "assert seen == set(c._COMMAND_MODULES), seen ^ set(c._COMMAND_MODULES)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_surgery_dry_run_imports_only_what_it_needs(tiny_pipeline, tmp_path):
    """A `prune`/`grow` process is a large part of the surgery's wall time: keep its start-up lean."""
    code = (
        "import sys\n"
        f"sys.argv = ['sanatool', 'prune', {str(tiny_pipeline)!r}, '--keep-blocks', '0-3', "
        f"'-o', {str(tmp_path / 'out')!r}, '--dry-run']\n"
        "from sanatool.cli import main\n"
        "try:\n    main()\nexcept SystemExit as ex:\n    assert not ex.code, ex.code\n"
        "heavy = ('torch', 'numpy', 'rich.console', 'importlib.metadata', 'sanatool.cli.train_cmds')\n"
        "loaded = [m for m in heavy if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_version_flag(cli):
    res = cli("--version")
    assert res.code == 0 and res.stdout.startswith("sanatool ")
