"""train-vae: the tiny pipeline's AutoencoderDC, trained and wrapped in a loadable pipeline dir."""

from __future__ import annotations

import json

import pytest

from sanatool.io.modeldir import open_model_dir
from sanatool.io.safetensors import read_header


@pytest.fixture(scope="module")
def renders(tmp_path_factory):
    from sanatool.shapes.dataset import write_shapes_dataset

    return write_shapes_dataset(tmp_path_factory.mktemp("vae-data") / "shapes", 12, seed=2)


def test_train_vae_writes_a_tiny_pipeline(cli, renders, tmp_path):
    out = tmp_path / "vae-pipe"
    res = cli("train-vae", "--data", renders, "-o", out, "--steps", "3", "--batch-size", "4", "--json")
    assert res.code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["steps"] == 3 and summary["images"] == 12 and 0 < summary["holdout_l1"] < 1
    model = open_model_dir(out)
    model.require_pipeline("train")
    assert model.provenance["chain"][-1]["command"] == "train-vae"
    config = json.loads((out / "vae" / "config.json").read_text())
    assert (
        config["scaling_factor"] == pytest.approx(summary["scaling_factor"]) and config["scaling_factor"] > 0
    )
    tensors, _ = read_header(out / "vae" / "diffusion_pytorch_model.safetensors")
    assert {info.dtype for info in tensors.values()} == {"F16"}
    # Same data, seed and steps: the same VAE bytes.
    again = tmp_path / "again"
    assert cli("train-vae", "--data", renders, "-o", again, "--steps", "3", "--batch-size", "4").code == 0
    weights = "vae/diffusion_pytorch_model.safetensors"
    assert (out / weights).read_bytes() == (again / weights).read_bytes()


def test_train_vae_refuses_other_sizes_and_bad_steps(cli, tmp_path):
    from sanatool.shapes.dataset import write_shapes_dataset

    big = write_shapes_dataset(tmp_path / "big", 2, size=64)
    res = cli("train-vae", "--data", big, "-o", tmp_path / "out")
    assert res.code == 2 and "trained on 32x32 images" in res.stderr
    res = cli("train-vae", "--data", big, "-o", tmp_path / "out", "--steps", "0")
    assert res.code == 2 and "--steps must be a positive integer" in res.stderr
    assert not (tmp_path / "out").exists()
