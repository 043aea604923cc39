"""train / finetune: the CLI main paths, bit-exact resume after Ctrl-C, NaN handling, bad input."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from sanatool.errors import Interrupted
from sanatool.io.modeldir import open_model_dir

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    """A dozen 32×32 shapes renders with captions (the latent cache builds inside it once)."""
    from sanatool.shapes.dataset import write_shapes_dataset

    return write_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", 12, seed=3)


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "transformer" / "diffusion_pytorch_model.safetensors"))


def _losses(model_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (model_dir / "loss.jsonl").read_text().splitlines()]


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_finetune_writes_a_pipeline_with_loss_log(cli, tiny_pipeline, shapes_data, tmp_path):
    out = tmp_path / "ft"
    res = cli(
        "finetune", tiny_pipeline, "--data", shapes_data, "-o", out, "--steps", "3", "--batch-size", "2",
        "--optimizer", "adamw", "--lr", "1e-3", "--json",
    )  # fmt: skip
    assert res.code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["out"] == str(out.resolve()) and summary["steps"] == 3 and summary["global_batch"] == 2
    model = open_model_dir(out)
    assert model.kind == "pipeline" and model.transformer.dtypes() == {"F32": model.transformer.num_params}
    chain = model.provenance["chain"]
    assert chain[-1]["command"] == "finetune" and chain[-1]["parent_fingerprint"] == model.fingerprint()
    # Frozen components are hard links to the source; only the transformer changed.
    assert (out / "vae" / "config.json").stat().st_ino == (
        tiny_pipeline / "vae" / "config.json"
    ).stat().st_ino
    before, after = _weights(tiny_pipeline), _weights(out)
    assert before.keys() == after.keys()
    assert any(not before[k].equal(after[k]) for k in before)
    records = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(r["loss"] > 0 and r["lr"] == 1e-3 for r in records)
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    # No --save-every: the run dir (live log) is gone; the latent cache stays for the next run, in the
    # user cache dir (the tests' XDG_CACHE_HOME), never in the data set.
    assert not (tmp_path / "ft.checkpoints").exists()
    assert not (shapes_data / ".sanatool-cache").exists()
    cache_root = Path(os.environ["XDG_CACHE_HOME"]) / "sanatool"
    caches = [p for p in cache_root.iterdir() if (p / "cache.json").is_file()]
    assert any(json.loads((c / "cache.json").read_text())["count"] == 12 for c in caches)
    # The result loads with diffusers and the tiny world's dtype is kept when asked for fp16.
    from diffusers import SanaPipeline

    SanaPipeline.from_pretrained(str(out))


def test_train_preset_uses_init_weights_and_components(cli, tiny_pipeline, shapes_data, tmp_path):
    out = tmp_path / "scratch"
    res = cli(
        "train", "--preset", "tiny", "--components", tiny_pipeline, "--data", shapes_data, "-o", out,
        "--steps", "1", "--batch-size", "2", "--lr", "1e-12", "--max-grad-norm", "0", "--dtype", "fp16",
        "--seed", "0",
    )  # fmt: skip
    assert res.code == 0, res.stderr
    assert res.stdout.strip() == str(out.resolve())
    model = open_model_dir(out)
    assert model.provenance["origin"] == "tiny" and model.transformer.dtypes() == {
        "F16": model.transformer.num_params
    }
    # One step at lr 1e-12 leaves the weights those of `sanatool init --preset tiny --seed 0` (fp16-rounded).
    init = _weights(tiny_pipeline)
    trained = _weights(out)
    assert all(trained[k].float().allclose(init[k].half().float(), atol=1e-3) for k in init)


def test_resume_after_ctrl_c_is_bit_exact(tiny_pipeline, shapes_data, tmp_path):
    from sanatool.training import TrainOptions, run_training

    common = {
        "data": shapes_data, "steps": 20, "source": str(tiny_pipeline), "batch_size": 2, "lr": 1e-3,
        "ema_decay": 0.9, "caption_dropout": 0.3,
    }  # fmt: skip
    run_training(TrainOptions(out=tmp_path / "straight", **common))

    def ctrl_c_at_10(task: str, done: int, total: int | None = None, **info: object) -> None:
        if task == "train" and done == 10 and info:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted) as stopped:
        run_training(TrainOptions(out=tmp_path / "split", **common), progress=ctrl_c_at_10)
    assert stopped.value.exit_code == 130 and "step-00000010" in stopped.value.kept
    run_dir = tmp_path / "split.checkpoints"
    assert [p.name for p in run_dir.glob("step-*")] == ["step-00000010"]
    assert open_model_dir(run_dir / "step-00000010").kind == "pipeline"  # a checkpoint is a usable model dir
    assert not (tmp_path / "split").exists()
    summary = run_training(TrainOptions(out=tmp_path / "split", resume=True, **common))
    assert summary["resumed_from_step"] == 10
    straight, split = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    assert all(straight[k].equal(split[k]) for k in straight)
    assert _losses(tmp_path / "straight") == _losses(tmp_path / "split")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    cli, tiny_pipeline, shapes_data, tmp_path, monkeypatch
):
    from sanatool.training import loop

    real_step = loop.Trainer.step

    def step_then_nan(self):
        result = real_step(self)
        if result.step == 3:
            result.loss = float("nan")
        return result

    monkeypatch.setattr(loop.Trainer, "step", step_then_nan)
    out = tmp_path / "nan"
    res = cli(
        "finetune", tiny_pipeline, "--data", shapes_data, "-o", out, "--steps", "5", "--batch-size", "2",
        "--optimizer", "adamw", "--save-every", "1",
    )  # fmt: skip
    assert res.code == 1
    assert "loss became nan" in res.stderr and "step 3" in res.stderr and "step-00000002" in res.stderr
    assert not out.exists()
    assert open_model_dir(tmp_path / "nan.checkpoints" / "step-00000002").kind == "pipeline"


def test_dry_run_reports_a_budget_without_data(cli, tiny_pipeline):
    res = cli(
        "train",
        "--preset",
        "sana1.5-1.6b",
        "--dry-run",
        "--json",
        "--batch-size",
        "1",
        "--optimizer",
        "adamw",
    )
    assert res.code == 0, res.stderr
    budget = json.loads(res.stdout)
    params = budget["settings"]["params"]
    assert 1.5e9 < params < 1.8e9
    assert budget["bytes"]["weights (fp32 master)"] == params * 4
    assert budget["bytes"]["activations"] > 1e9
    assert budget["fits"]["80GB"] is True and budget["fits"]["24GB"] is False
    checkpointed = json.loads(
        cli(
            "train",
            "--preset",
            "sana1.5-1.6b",
            "--dry-run",
            "--json",
            "--batch-size",
            "1",
            "--optimizer",
            "adamw",
            "--grad-checkpointing",
        ).stdout  # fmt: skip
    )
    assert checkpointed["bytes"]["activations"] < budget["bytes"]["activations"] / 4
    table = cli("finetune", tiny_pipeline, "--dry-run", "--optimizer", "came8bit")
    assert table.code == 0 and "optimizer state (came8bit)" in table.stdout and "total" in table.stdout


def _write_data(root: Path, rows: list[dict], sizes: list[int]) -> Path:
    from PIL import Image

    root.mkdir()
    for index, size in enumerate(sizes):
        Image.new("RGB", (size, size), (200, 30, 40)).save(root / f"{index}.png")
    (root / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing-data", "does not exist"),
        ("no-metadata", "has no metadata.jsonl"),
        ("empty", "lists no images"),
        ("mixed-sizes", "mixed sizes"),
        ("no-caption", "caption (text) of 1.png is missing"),
        ("steps-0", "--steps must be"),
        ("lr-0", "--lr must be positive"),
        ("optimizer", "unknown optimizer"),
        ("resume-nothing", "no checkpoint"),
        ("bare-transformer", "needs a pipeline dir"),
        ("exists", "already exists"),
        ("checkpoints-in-input", "is inside"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(
    cli, tiny_pipeline, tiny_transformer, shapes_data, tmp_path, case, expected
):
    ok_rows = [{"file_name": "0.png", "text": "a red square"}, {"file_name": "1.png", "text": "a red square"}]
    data = shapes_data
    model = tiny_pipeline
    extra: list[str] = []
    out = tmp_path / "out"
    if case == "missing-data":
        data = tmp_path / "nowhere"
    elif case == "no-metadata":
        data = tmp_path / "bare"
        data.mkdir()
    elif case == "empty":
        data = _write_data(tmp_path / "d", [], [])
    elif case == "mixed-sizes":
        data = _write_data(tmp_path / "d", ok_rows, [32, 16])
    elif case == "no-caption":
        data = _write_data(tmp_path / "d", [ok_rows[0], {"file_name": "1.png", "text": " "}], [32, 32])
    elif case == "steps-0":
        extra = ["--steps", "0"]
    elif case == "lr-0":
        extra = ["--lr", "0"]
    elif case == "optimizer":
        extra = ["--optimizer", "sgd"]
    elif case == "resume-nothing":
        extra = ["--resume"]
    elif case == "bare-transformer":
        model = tiny_transformer
    elif case == "checkpoints-in-input":
        extra = ["--checkpoint-dir", str(Path(model) / "ckpt")]
    elif case == "exists":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    before = _snapshot(tmp_path)
    model_before = _snapshot(Path(model))
    res = cli("finetune", model, "--data", data, "-o", out, "--steps", "2", *extra)
    assert res.code == 2, res.stderr
    assert expected in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert _snapshot(tmp_path) == before
    assert _snapshot(Path(model)) == model_before


def test_resume_refuses_a_checkpoint_of_another_model(cli, tiny_pipeline, shapes_data, tmp_path):
    from sanatool.surgery.initialize import init_model

    run = [
        "--data",
        shapes_data,
        "-o",
        tmp_path / "out",
        "--steps",
        "4",
        "--batch-size",
        "2",
        "--optimizer",
        "adamw",
    ]
    res = cli("finetune", tiny_pipeline, *run, "--save-every", "2", "--checkpoint-dir", tmp_path / "ckpt")
    assert res.code == 0, res.stderr
    other = init_model("tiny", tmp_path / "other", seed=7)
    res = cli(
        "finetune", other, *run, "--steps", "6", "--resume", "--checkpoint-dir", tmp_path / "ckpt", "--force"
    )
    assert res.code == 2
    assert "belongs to a run of another model" in res.stderr
    # Settings that shape the rest of the run must not change on resume (the seed was silently ignored).
    resume = [*run, "--steps", "6", "--resume", "--checkpoint-dir", tmp_path / "ckpt", "--force"]
    for extra, change in ((["--seed", "1"], "--seed 0 → 1"), (["--lr", "0.01"], "--lr 0.0001 → 0.01")):
        res = cli("finetune", tiny_pipeline, *resume, *extra)
        assert res.code == 2 and change in res.stderr and len(res.stderr.strip().splitlines()) == 1, (
            res.stderr
        )
    # A torn checkpoint record is one line, not a traceback.
    newest = max((tmp_path / "ckpt").glob("step-*"))
    (newest / "checkpoint.json").write_text("{torn")
    res = cli(
        "finetune",
        tiny_pipeline,
        *run,
        "--steps",
        "6",
        "--resume",
        "--checkpoint-dir",
        tmp_path / "ckpt",
        "--force",
    )
    assert res.code == 2 and "checkpoint record" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    # A fresh run over existing checkpoints needs --resume or --force.
    res = cli("finetune", tiny_pipeline, *run, "--checkpoint-dir", tmp_path / "ckpt", "--force")
    assert res.code == 0, res.stderr
