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
    # Square runs keep their fingerprint (and so their latent caches); buckets change it.
    assert load_dataset(mixed_data, 32).fingerprint() != data.fingerprint()


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
