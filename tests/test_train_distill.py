"""finetune --teacher: distillation's loss, its refusals before any work, and resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    from sanatool.shapes.dataset import write_shapes_dataset

    return write_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", 8, seed=5)


@pytest.fixture(scope="module")
def pruned(tiny_pipeline, tmp_path_factory):
    """The tiny pipeline pruned 8→4: the student; the unpruned pipeline is its teacher."""
    from sanatool.surgery.prune import prune_model

    return prune_model(tiny_pipeline, tmp_path_factory.mktemp("models") / "pruned", keep=4, strategy="tail")


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]


def _finetune(cli, source, data, out, *extra):
    return cli(
        "finetune", source, "--data", data, "-o", out, "--batch-size", "2", "--optimizer", "adamw", *extra
    )


def test_distilling_from_itself_costs_nothing(cli, tiny_pipeline, shapes_data, tmp_path):
    out = tmp_path / "self"
    res = _finetune(cli, tiny_pipeline, shapes_data, out, "--steps", "1", "--teacher", tiny_pipeline)
    assert res.code == 0, res.stderr
    first = _records(out)[0]
    # Same weights, same noisy latents, timesteps and captions: no distillation loss, no gradient.
    assert first["loss"] == first["distill_loss"] == 0.0 and first["grad_norm"] == 0.0
    assert first["flow_loss"] > 0.01
    chain = json.loads((out / "sanatool.json").read_text())["chain"]
    assert chain[-1]["args"]["teacher"] == str(tiny_pipeline) and chain[-1]["args"]["distill_weight"] == 1.0


def test_the_loss_mixes_flow_matching_and_distillation(cli, tiny_pipeline, pruned, shapes_data, tmp_path):
    # One step with two accumulated micro-batches; the first step's loss is computed before any update,
    # and the teacher draws no random numbers, so the three runs see identical batches.
    def first_loss(name: str, *extra: str) -> dict:
        out = tmp_path / name
        res = _finetune(cli, pruned, shapes_data, out, "--steps", "1", "--grad-accum", "2", *extra)
        assert res.code == 0, res.stderr
        return _records(out)[0]

    flow = first_loss("plain")["loss"]
    distill = first_loss("pure", "--teacher", tiny_pipeline)["loss"]
    mixed = first_loss("mixed", "--teacher", tiny_pipeline, "--distill-weight", "0.5")
    assert (
        distill > 0.01 and abs(distill - flow) > 0.01
    )  # the 8-block teacher disagrees with the 4-block student
    assert mixed["loss"] == pytest.approx(0.5 * flow + 0.5 * distill, rel=1e-5)
    assert mixed["flow_loss"] == pytest.approx(flow, rel=1e-6)
    assert mixed["distill_loss"] == pytest.approx(distill, rel=1e-6)


def _other_width(tmp_path: Path) -> Path:
    from sanatool.arch import preset_config
    from sanatool.io.modeldir import write_transformer_dir
    from sanatool.surgery.initialize import random_init_entries

    config = {**preset_config("tiny"), "num_attention_heads": 2}  # inner dim 64, not 128
    out = tmp_path / "narrow"
    write_transformer_dir(out, config, random_init_entries(config, "fp32", 0), 10**9)
    return out


def _other_vae(tiny_pipeline: Path, tmp_path: Path) -> Path:
    out = tmp_path / "other-vae"
    shutil.copytree(tiny_pipeline, out)
    config = json.loads((out / "vae" / "config.json").read_text())
    config["scaling_factor"] = 0.5
    (out / "vae" / "config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("width", "another architecture width: inner dim 64 (student 128)"),
        ("encoders", "another text encoder or VAE"),
        ("missing", "is not a model dir"),
        ("not-a-model", "is not a model dir"),
        ("text-encoder", "--train-text-encoder"),
        ("weight-without-teacher", "--distill-weight needs --teacher"),
        ("weight-out-of-range", "--distill-weight must be in (0, 1]"),
    ],
)
def test_a_teacher_that_cannot_teach_is_refused_before_any_work(
    cli, tiny_pipeline, shapes_data, tmp_path, case, expected
):
    teacher: list = ["--teacher", tiny_pipeline]
    extra: list = []
    if case == "width":
        teacher = ["--teacher", _other_width(tmp_path)]
    elif case == "encoders":
        teacher = ["--teacher", _other_vae(tiny_pipeline, tmp_path)]
    elif case == "missing":
        teacher = ["--teacher", tmp_path / "nowhere"]
    elif case == "not-a-model":
        (tmp_path / "junk").mkdir()
        (tmp_path / "junk" / "notes.txt").write_text("hello")
        teacher = ["--teacher", tmp_path / "junk"]
    elif case == "text-encoder":
        extra = ["--train-text-encoder"]
    elif case == "weight-without-teacher":
        teacher = ["--distill-weight", "0.5"]
    elif case == "weight-out-of-range":
        extra = ["--distill-weight", "1.5"]
    out = tmp_path / "out"
    cache = tmp_path / "cache"
    res = _finetune(cli, tiny_pipeline, shapes_data, out, "--cache-dir", cache, *teacher, *extra)
    assert res.code == 2, res.stderr
    assert expected in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not out.exists() and not (tmp_path / "out.checkpoints").exists() and not cache.exists()


def test_resume_keeps_the_teacher_and_its_weight(cli, tiny_pipeline, pruned, shapes_data, tmp_path):
    out = tmp_path / "healed"
    first = _finetune(
        cli, pruned, shapes_data, out, "--steps", "2", "--save-every", "1", "--teacher", tiny_pipeline,
        "--distill-weight", "0.7",
    )  # fmt: skip
    assert first.code == 0, first.stderr
    assert (tmp_path / "healed.checkpoints" / "step-00000001").is_dir()

    def resume(*extra: str):
        return _finetune(cli, pruned, shapes_data, out, "--steps", "3", "--resume", "--force", *extra)

    res = resume()
    assert res.code == 2 and "trained with --teacher" in res.stderr, res.stderr
    res = resume("--teacher", pruned)
    assert res.code == 2 and "with another --teacher" in res.stderr, res.stderr
    res = resume("--teacher", tiny_pipeline, "--distill-weight", "0.5")
    assert res.code == 2 and "--distill-weight 0.7 → 0.5" in res.stderr, res.stderr
    res = resume("--teacher", tiny_pipeline, "--distill-weight", "0.7")
    assert res.code == 0, res.stderr
    assert [r["step"] for r in _records(out)] == [1, 2, 3] and "distill_loss" in _records(out)[-1]
