"""`import sanatool`: the lazy front door a notebook uses, and that it does what the commands do."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import sanatool


def test_import_is_lazy_and_every_public_name_resolves_with_a_docstring():
    code = (
        "import sys, sanatool\n"
        "loaded = [m for m in ('torch', 'numpy', 'diffusers', 'sanatool.surgery', 'sanatool.cli') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "names = [n for n in sanatool.__all__ if n != '__version__']\n"
        "for name in names:\n"
        "    value = getattr(sanatool, name)\n"
        "    assert callable(value) and (value.__doc__ or '').strip(), name\n"
        "assert set(names) == set(sanatool._API) and set(names) <= set(dir(sanatool))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        sanatool.nonexistent  # noqa: B018


def test_functions_write_what_the_commands_write(cli, tmp_path):
    """init → grow → prune → info through the API and through the CLI give the same models."""
    api, cmd = tmp_path / "api", tmp_path / "cmd"
    api.mkdir(), cmd.mkdir()
    sanatool.init("tiny", api / "tiny", seed=1)
    sanatool.grow(api / "tiny", api / "grown", to=10, seed=2)
    sanatool.prune(api / "grown", api / "pruned", keep_blocks="0-2,9")
    assert cli("init", "--preset", "tiny", "--seed", "1", "-o", cmd / "tiny").code == 0
    assert cli("grow", cmd / "tiny", "--to", "10", "--seed", "2", "-o", cmd / "grown").code == 0
    assert cli("prune", cmd / "grown", "--keep-blocks", "0-2,9", "-o", cmd / "pruned").code == 0
    described = sanatool.info(api / "pruned")
    assert described["depth"] == 4
    res = cli("info", cmd / "pruned", "--json")
    assert json.loads(res.stdout)["fingerprint"] == described["fingerprint"]
    for name in (
        "transformer/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ):
        assert (api / "pruned" / name).read_bytes() == (cmd / "pruned" / name).read_bytes()


def test_finetune_function_trains_and_refuses_bad_options(tiny_pipeline, tmp_path, one_torch_thread):
    from sanatool.shapes.dataset import write_shapes_dataset

    data = write_shapes_dataset(tmp_path / "data", 4, seed=0)
    summary = sanatool.finetune(tiny_pipeline, data, tmp_path / "ft", steps=2, batch_size=2, device="cpu")
    assert summary["steps"] == 2 and summary["optimizer"] == "came8bit"
    chain = json.loads((tmp_path / "ft" / "sanatool.json").read_text())["chain"]
    assert chain[-1]["command"] == "finetune"
    with pytest.raises(sanatool.InputError, match="--steps"):
        sanatool.finetune(tiny_pipeline, data, tmp_path / "bad", steps=0)
    assert not (tmp_path / "bad").exists()
