"""Running real-layout pipelines: SANA-Sprint, a flow-matching Euler scheduler, a bf16 text encoder, variants.

The stand-ins are built with diffusers and transformers directly (tests/standins.py,
tests/standins_sprint.py); every image is compared with what the stand-in's own diffusers pipeline
draws, loaded as the README's "regenerate any image" snippet loads it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import pixels
from PIL import Image
from standins import IMAGE_SIZE, make_pipeline, save_pipeline
from standins_sprint import make_sprint_pipeline

from sanatool.io.manifest import read_manifest

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PROMPTS = ["a red circle", "two blue squares above a tree"]


@pytest.fixture(scope="module")
def sprint_dir(tmp_path_factory):
    return save_pipeline(make_sprint_pipeline(), tmp_path_factory.mktemp("sprint") / "sprint")


@pytest.fixture(scope="module")
def euler_dir(tmp_path_factory):
    return save_pipeline(make_pipeline(scheduler="euler"), tmp_path_factory.mktemp("euler") / "euler")


@pytest.fixture(scope="module")
def bf16_text_dir(tmp_path_factory):
    """A fp32 pipeline whose Gemma is stored in bf16, as the real SANA repos store it."""
    pipe = make_pipeline()
    pipe.text_encoder.to(torch.bfloat16)
    return save_pipeline(pipe, tmp_path_factory.mktemp("bf16te") / "pipe")


@pytest.fixture(scope="module")
def variant_dir(tmp_path_factory):
    """Every model in bf16 files only (``*.bf16.safetensors``), as a ``variant="bf16"`` snapshot holds."""
    return save_pipeline(make_pipeline(dtype=torch.bfloat16), tmp_path_factory.mktemp("var") / "pipe", "bf16")


@pytest.fixture(scope="module")
def shapes16(tmp_path_factory):
    from sanatool.shapes.dataset import write_shapes_dataset

    return write_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", 4, seed=1)


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _regenerate_as_documented(model: Path, record: dict):
    """The README's snippet: diffusers alone, the manifest's dtypes and call arguments."""
    from diffusers import DiffusionPipeline

    from sanatool.inference.sampler import diffusers_kwargs, diffusers_load_kwargs

    pipe = DiffusionPipeline.from_pretrained(model, **diffusers_load_kwargs(record))
    return pipe(**diffusers_kwargs(record)).images[0]


def _sample_and_compare(model: Path, out: Path, **settings) -> list[dict]:
    from sanatool.samples.writer import sample_to_dir

    sample_to_dir(model, PROMPTS, out, candidates=2, batch_size=4, device="cpu", **settings)
    records, problems = read_manifest(out)
    assert not problems and len(records) == 4
    for record in records:
        expected = _regenerate_as_documented(model, record)
        diff = np.abs(pixels(Image.open(out / record["path"])) - pixels(expected)).max()
        assert diff <= 1, (record["path"], diff)  # ≤ 1/255
    return records


def test_sprint_samples_as_sana_sprint_pipeline_does(sprint_dir, tmp_path):
    from sanatool.inference.pipeline import pipeline_kind
    from sanatool.io.modeldir import open_model_dir

    assert pipeline_kind(open_model_dir(sprint_dir)) == "SANA-Sprint"
    # One batch of four images: each draws its SCM step noise from its own generator.
    records = _sample_and_compare(sprint_dir, tmp_path / "s")
    assert {(r["sampler"], r["steps"]) for r in records} == {("scm", 2)}
    # Other step counts take SCM's even trigflow schedule.
    _sample_and_compare(sprint_dir, tmp_path / "s3", steps=3, guidance=3.0)


def test_info_names_sana_sprint(cli, sprint_dir):
    assert json.loads(cli("info", sprint_dir, "--json").stdout)["family"] == "SANA-Sprint"
    assert "SANA-Sprint pipeline" in cli("info", sprint_dir).stdout


def test_sprint_importance_runs_one_branch(cli, sprint_dir, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    result = cli("importance", sprint_dir, "-o", tmp_path / "i.json", "--prompts", prompts, "--device", "cpu")
    assert result.code == 0, result.stderr
    data = json.loads((tmp_path / "i.json").read_text())
    assert data["calibration"]["steps"] == 2 and data["calibration"]["cfg_branches"] == ["cond"]
    assert len(data["scores"]) == 6 and all(score > 0 for score in data["scores"])
    assert data["sampler"] == "scm" and data["timesteps"] == pytest.approx([1.5708, 1.3])


def test_sprint_refuses_flow_samplers_and_flow_matching_before_writing(cli, sprint_dir, shapes16, tmp_path):
    result = cli("sample", sprint_dir, "--prompt", "a cat", "-o", tmp_path / "s", "--sampler", "flow-euler")
    assert result.code == 2 and "SANA-Sprint" in result.stderr and not (tmp_path / "s").exists()
    before = _snapshot(shapes16)
    for args in (
        ("finetune", sprint_dir),
        ("train", "--preset", "tiny", "--components", sprint_dir),
        ("finetune", sprint_dir, "--dry-run"),
    ):
        result = cli(*args, "--data", shapes16, "-o", tmp_path / "ft", "--steps", "1", "--device", "cpu")
        assert result.code == 2, (args, result.stderr)
        assert "sCM/LADD" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "ft").exists() and not list(tmp_path.glob("ft*"))
    assert _snapshot(shapes16) == before  # no latent cache either


def test_sprint_prune_and_grow_are_exact(cli, sprint_dir, tmp_path):
    from diffusers import SanaSprintPipeline

    original = SanaSprintPipeline.from_pretrained(sprint_dir).transformer
    assert cli("prune", sprint_dir, "--drop-blocks", "1,4", "-o", tmp_path / "p").code == 0
    pruned = SanaSprintPipeline.from_pretrained(tmp_path / "p").transformer
    assert pruned.config.guidance_embeds and len(pruned.transformer_blocks) == 4
    kept = [0, 2, 3, 5]
    reference = original.state_dict()
    for name, tensor in pruned.state_dict().items():
        source = name
        if name.startswith("transformer_blocks."):
            index = int(name.split(".")[1])
            source = name.replace(f"transformer_blocks.{index}.", f"transformer_blocks.{kept[index]}.", 1)
        assert torch.equal(tensor, reference[source]), name

    assert cli("grow", sprint_dir, "--to", "9", "-o", tmp_path / "g").code == 0
    grown = SanaSprintPipeline.from_pretrained(tmp_path / "g").transformer
    assert len(grown.transformer_blocks) == 9
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "hidden_states": torch.randn(2, 4, 8, 8, generator=generator),
        "encoder_hidden_states": torch.randn(2, 5, 32, generator=generator),
        "timestep": torch.tensor([0.3, 0.8]),
        "guidance": torch.tensor([0.45, 0.45]),
        "return_dict": False,
    }
    with torch.no_grad():
        assert torch.equal(original(**inputs)[0], grown(**inputs)[0])


def test_euler_scheduler_picks_its_sampler_and_equals_sana_pipeline(euler_dir, tmp_path):
    from sanatool.inference.importance import compute_importance

    records = _sample_and_compare(euler_dir, tmp_path / "s", steps=3)
    assert {r["sampler"] for r in records} == {"flow-euler"}
    result = compute_importance(euler_dir, PROMPTS[:1], steps=2, device="cpu")
    assert result.extra["sampler"] == "flow-euler" and len(result.timesteps) == 2


def test_bf16_text_encoder_regenerates_with_the_documented_snippet(bf16_text_dir, tmp_path):
    from diffusers import DiffusionPipeline

    from sanatool.inference.sampler import diffusers_kwargs

    # A strong guidance makes the bf16 rounding of the caption embeddings visible in pixels.
    records = _sample_and_compare(bf16_text_dir, tmp_path / "s", steps=3, guidance=20.0)
    # sample ran Gemma in --dtype (fp32 on a CPU); the manifest says so, and the snippet passes it on.
    assert records[0]["dtypes"] == {"transformer": "fp32", "text_encoder": "fp32", "vae": "fp32"}
    # Without it, transformers keeps the stored bf16 and the images drift: the dtypes are needed.
    plain = DiffusionPipeline.from_pretrained(bf16_text_dir)
    assert plain.text_encoder.dtype == torch.bfloat16
    drift = max(
        np.abs(
            pixels(Image.open(tmp_path / "s" / r["path"])) - pixels(plain(**diffusers_kwargs(r)).images[0])
        ).max()
        for r in records
    )
    assert drift > 1


def test_variant_only_pipeline_samples_scores_and_finetunes(cli, variant_dir, shapes16, tmp_path):
    from diffusers import SanaPipeline

    sample = cli(
        "sample", variant_dir, "--prompt", "a red circle", "-n", "1", "--steps", "2", "-o", tmp_path / "s"
    )
    assert sample.code == 0, sample.stderr
    records, _ = read_manifest(tmp_path / "s")
    assert records[0]["dtypes"]["text_encoder"] == "fp32"
    scored = cli(
        "importance",
        variant_dir,
        "--prompts",
        _prompt_file(tmp_path),
        "--steps",
        "2",
        "-o",
        tmp_path / "i.json",
    )
    assert scored.code == 0, scored.stderr
    tuned = cli(
        "finetune", variant_dir, "--data", shapes16, "-o", tmp_path / "ft", "--steps", "2", "--batch-size", "2",
        "--resolution", str(IMAGE_SIZE), "--device", "cpu", "--cache-dir", tmp_path / "cache",
    )  # fmt: skip
    assert tuned.code == 0, tuned.stderr
    assert (tmp_path / "ft" / "transformer" / "diffusion_pytorch_model.bf16.safetensors").is_file()
    SanaPipeline.from_pretrained(tmp_path / "ft", variant="bf16")


def _prompt_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("a red circle\n")
    return path


def test_offload_needs_cuda_and_big_images_decode_in_tiles(cli, euler_dir, tmp_path, monkeypatch):
    from sanatool.inference.pipeline import configure_vae

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for command in ("sample", "importance"):
        args = ("--prompt", "a cat") if command == "sample" else ()
        result = cli(command, euler_dir, *args, "-o", tmp_path / command, "--offload")
        assert result.code == 2 and "needs CUDA" in result.stderr, result.stderr
        assert not list(tmp_path.iterdir())
    pipe = make_pipeline()
    assert configure_vae(pipe, 4096, 1024) and pipe.vae.use_tiling
    assert not configure_vae(pipe, 2048, 2048) and not pipe.vae.use_tiling
