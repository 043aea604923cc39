"""What fine-tuners expect from a trainer: aspect-ratio buckets, validation grids, TensorBoard scalars."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# (width, height): landscape, portrait, square.
SHAPES = [(48, 32), (32, 48), (32, 32)]


@pytest.fixture(scope="module")
def mixed_data(tmp_path_factory):
    """Twelve flat-coloured images, landscape, portrait and square, with captions."""
    from PIL import Image

    root = tmp_path_factory.mktemp("data") / "mixed"
    root.mkdir()
    rows = []
    for index in range(12):
        size = SHAPES[index % 3]
        Image.new("RGB", size, (40 * index % 256, 200, 90)).save(root / f"{index}.png")
        rows.append({"file_name": f"{index}.png", "text": ["a red square", "a blue circle"][index % 2]})
    (root / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "transformer" / "diffusion_pytorch_model.safetensors"))


def test_aspect_bins_are_sanas_own_scaled_to_the_resolution(mixed_data):
    from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import ASPECT_RATIO_1024_BIN

    from sanatool.training.data import aspect_bins, load_dataset, load_pixels

    assert aspect_bins(1024, 32) == {k: (int(h), int(w)) for k, (h, w) in ASPECT_RATIO_1024_BIN.items()}
    small = aspect_bins(512, 32)
    assert small["1.0"] == (512, 512) and small["0.5"] == (352, 704)
    assert all(h % 4 == 0 and w % 4 == 0 for h, w in aspect_bins(30, 4).values())
    data = load_dataset(mixed_data, 32, bucket_multiple=4)
    # Landscape (h/w 0.67 → SANA's 0.68 bin, 832×1216) and portrait keep their orientation.
    assert data.buckets[:3] == [(24, 40), (40, 24), (32, 32)] and data.resized
    assert tuple(load_pixels(data.items[0], *data.size_of(0)).shape) == (3, 24, 40)
    assert tuple(load_pixels(data.items[1], *data.size_of(1)).shape) == (3, 40, 24)
    # Buckets change the fingerprint (the latent cache's key), unless every image trains square.
    assert load_dataset(mixed_data, 32).fingerprint() != data.fingerprint()
    square = load_dataset(mixed_data, 32, bucket_multiple=4)
    square.buckets = [(32, 32)] * len(square)
    assert square.fingerprint() == load_dataset(mixed_data, 32).fingerprint()


def test_bucket_batches_never_mix_buckets_and_resume_exactly():
    import torch

    from sanatool.training.loop import BucketBatches, DataStream

    def batches(seed: int) -> BucketBatches:
        return BucketBatches(DataStream(10, torch.Generator().manual_seed(seed)), [0, 3, 9])

    first = batches(0)
    drawn = [first.take(2) for _ in range(20)]
    assert all({0 if i < 3 else 1 if i < 9 else 2 for i in batch} == {bucket} for bucket, batch in drawn)
    assert {bucket for bucket, _ in drawn} == {0, 1, 2}  # the one-item bucket still gets its batches
    again, other = batches(0), batches(1)
    assert [again.take(2) for _ in range(20)] == drawn != [other.take(2) for _ in range(20)]
    # Restoring the stream and the waiting items continues the same batches.
    copy = batches(5)
    copy.stream.generator.set_state(first.stream.generator.get_state())
    copy.stream.perm, copy.stream.pos = first.stream.perm.clone(), first.stream.pos
    copy.waiting = [list(items) for items in first.waiting]
    assert [first.take(2) for _ in range(10)] == [copy.take(2) for _ in range(10)]


def test_aspect_buckets_train_reuse_the_cache_and_resume_exactly(
    tiny_pipeline, mixed_data, tmp_path, monkeypatch
):
    from sanatool.training import TrainOptions, run_training
    from sanatool.training.cache import CacheReader

    shapes: list[set] = []
    gather = CacheReader.gather

    def recording(self, indices, keys=("latents", "embeds", "mask")):
        batch = gather(self, indices, keys)
        shapes.append(tuple(batch["latents"].shape[2:]))
        return batch

    monkeypatch.setattr(CacheReader, "gather", recording)
    common = {
        "data": mixed_data, "source": str(tiny_pipeline), "steps": 6, "batch_size": 2, "lr": 1e-3,
        "optimizer": "adamw", "aspect_buckets": True, "checkpoint_dir": tmp_path / "ckpt",
        "report_to": "tensorboard",
    }  # fmt: skip
    straight = run_training(TrainOptions(out=tmp_path / "straight", save_every=3, **common))
    assert len(shapes) == 6 and {(6, 10), (10, 6), (8, 8)} >= set(shapes) and len(set(shapes)) > 1
    cache = Path(straight["cache"])
    buckets = json.loads((cache / "cache.json").read_text())["buckets"]
    assert [(b["size"], b["count"]) for b in buckets] == [([24, 40], 4), ([40, 24], 4), ([32, 32], 4)]
    shards = {p.name: p.stat().st_mtime_ns for p in cache.glob("items-*.safetensors")}
    assert len(shards) == 3  # a shard per bucket

    encoded: list[int] = []
    resumed = run_training(
        TrainOptions(out=tmp_path / "resumed", resume=True, **common),
        progress=lambda task, done, total=None, **info: encoded.append(done) if task == "encode" else None,
    )
    assert resumed["resumed_from_step"] == 3 and resumed["cache"] == straight["cache"] and not encoded
    assert {p.name: p.stat().st_mtime_ns for p in cache.glob("items-*.safetensors")} == shards
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert all(a[k].equal(b[k]) for k in a)
    # TensorBoard: the resumed run replaced the steps after its checkpoint instead of adding them twice.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "ckpt" / "tensorboard"))
    events.Reload()
    assert [event.step for event in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]


def _scalars(log_dir: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {event.step: event.value for event in events.Scalars(tag)}


def _find_cell(grid, image, scale: int) -> tuple[int, int]:
    """Top-left pixel where ``image``, enlarged ``scale``× without smoothing, sits in ``grid``."""
    import numpy as np
    from numpy.lib.stride_tricks import sliding_window_view

    h, w, _ = image.shape
    for dy in range(scale):
        for dx in range(scale):
            windows = sliding_window_view(grid[dy::scale, dx::scale], (h, w, 3))[:, :, 0]
            error = np.abs(windows - image).max(axis=(2, 3, 4))
            hits = np.argwhere(error <= 2)
            if len(hits):
                return int(hits[0][0]) * scale + dy, int(hits[0][1]) * scale + dx
    raise AssertionError("the sampled image is not on the validation grid")


def test_validation_grids_and_tensorboard_scalars(cli, tiny_pipeline, mixed_data, tmp_path):
    import numpy as np
    from PIL import Image

    from sanatool.samples.sheet import GRID_CELL_MIN

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\na blue square on the left of a green triangle\n")
    out, run_dir = tmp_path / "ft", tmp_path / "run"
    res = cli(
        "finetune", tiny_pipeline, "--data", mixed_data, "-o", out, "--steps", "4", "--batch-size", "2",
        "--optimizer", "adamw", "--lr", "1e-3", "--aspect-buckets", "--checkpoint-dir", run_dir,
        "--validation-prompts", prompts, "--validation-every", "3", "--report-to", "tensorboard",
    )  # fmt: skip
    assert res.code == 0, res.stderr
    # Every 3 steps and at the end; the run dir keeps them after the checkpoints are gone.
    grids = sorted(p.name for p in (run_dir / "validation").iterdir())
    assert grids == ["step-000003.png", "step-000004.png"]
    grid = np.asarray(Image.open(run_dir / "validation" / "step-000004.png").convert("RGB")).astype(int)
    assert not np.array_equal(grid, np.asarray(Image.open(run_dir / "validation" / "step-000003.png")))
    # Each cell is what `sample --seed 0` draws from the output model (32 px cells enlarged 3×),
    # under its prompt's text.
    res = cli("sample", out, "--prompts", prompts, "--candidates", "1", "--seed", "0", "-o", tmp_path / "s")
    assert res.code == 0, res.stderr
    scale = GRID_CELL_MIN // 32
    for index in range(2):
        drawn = np.asarray(Image.open(tmp_path / "s" / "images" / f"p{index:05d}_c000.png").convert("RGB"))
        y, x = _find_cell(grid, drawn.astype(int), scale)
        assert grid[:y, x : x + GRID_CELL_MIN].min() < 100  # the prompt is written above its image
    # TensorBoard holds the loss log's numbers, and the grids.
    logged = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    board = run_dir / "tensorboard"
    assert _scalars(board, "train/loss") == pytest.approx({r["step"]: r["loss"] for r in logged})
    assert _scalars(board, "train/lr") == pytest.approx({r["step"]: 1e-3 for r in logged})
    assert set(_scalars(board, "train/step_time_s")) == {1, 2, 3, 4}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(board))
    events.Reload()
    assert [image.step for image in events.Images("validation")] == [3, 4]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing", "does not exist"),
        ("empty", "holds no prompts"),
        ("bad-jsonl", 'needs a non-empty "prompt"'),
        ("too-many", "at most 64"),
        ("every-alone", "--validation-every N needs --validation-prompts"),
        ("every-negative", "--validation-every must be"),
        ("report-to", "unknown --report-to 'wandb'"),
        ("no-tensorboard", "pip install 'sanatool[tensorboard]'"),
    ],
)
def test_bad_reporting_input_exits_2_before_any_work(
    cli, tiny_pipeline, mixed_data, tmp_path, monkeypatch, case, expected
):
    import sys

    prompts = tmp_path / "prompts.txt"
    extra = ["--validation-prompts", str(prompts)]
    if case == "empty":
        prompts.write_text("\n \n")
    elif case == "bad-jsonl":
        prompts = tmp_path / "prompts.jsonl"
        prompts.write_text('{"category": "x"}\n')
        extra = ["--validation-prompts", str(prompts)]
    elif case == "too-many":
        prompts.write_text("".join(f"prompt {i}\n" for i in range(65)))
    elif case == "every-alone":
        extra = ["--validation-every", "2"]
    elif case == "every-negative":
        prompts.write_text("a red circle\n")
        extra += ["--validation-every", "-1"]
    elif case == "report-to":
        extra = ["--report-to", "wandb"]
    elif case == "no-tensorboard":
        monkeypatch.setitem(sys.modules, "tensorboard", None)
        extra = ["--report-to", "tensorboard"]
    before = sorted(tmp_path.rglob("*"))
    res = cli("finetune", tiny_pipeline, "--data", mixed_data, "-o", tmp_path / "out", "--steps", "2", *extra)
    assert res.code == 2, res.stderr
    assert expected in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert sorted(tmp_path.rglob("*")) == before
