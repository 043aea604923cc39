"""Training building blocks: pickle-free state, the cache key, data validation, the flow-matching draw."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from sanatool.errors import InputError


def test_state_roundtrip_keeps_structure_types_and_bytes(tmp_path):
    from sanatool.training.state import load_state, save_state

    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    generator = torch.Generator().manual_seed(5)
    state = {
        "optimizer": optimizer.state_dict(),
        "rng": generator.get_state(),
        "misc": {3: (1, 2.5, None, True), "name": "x", "bf16": torch.ones(3, dtype=torch.bfloat16)},
    }
    save_state(tmp_path, state)
    back = load_state(tmp_path)
    assert back["misc"][3] == (1, 2.5, None, True) and back["misc"]["name"] == "x"
    assert back["misc"]["bf16"].dtype == torch.bfloat16
    assert back["rng"].equal(generator.get_state())
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    for key, value in optimizer.state_dict()["state"][0].items():
        assert back["optimizer"]["state"][0][key].equal(value)
    with pytest.raises(InputError, match="no training state"):
        load_state(tmp_path / "nothing")


def test_cache_key_follows_encoders_data_and_settings(tiny_pipeline, tmp_path):
    from sanatool.shapes.dataset import write_shapes_dataset
    from sanatool.training.cache import EncodeSettings, cache_key
    from sanatool.training.data import load_dataset

    data = load_dataset(write_shapes_dataset(tmp_path / "data", 3))
    pipe = tmp_path / "pipe"
    shutil.copytree(tiny_pipeline, pipe)
    settings = EncodeSettings()
    key = cache_key(pipe, data, settings)
    assert cache_key(pipe, data, EncodeSettings(device="cuda", batch_size=7)) == key  # not what is computed
    assert cache_key(pipe, data, EncodeSettings(max_sequence_length=100)) != key
    # Retrained VAE (one weight byte changes): a new key. The transformer is not part of it.
    weights = pipe / "vae" / "diffusion_pytorch_model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 1
    weights.write_bytes(bytes(raw))
    new_key = cache_key(pipe, data, settings)
    assert new_key != key
    transformer = pipe / "transformer" / "diffusion_pytorch_model.safetensors"
    raw = bytearray(transformer.read_bytes())
    raw[-1] ^= 1
    transformer.write_bytes(bytes(raw))
    assert cache_key(pipe, data, settings) == new_key
    # A changed caption: a new key.
    meta = data.root / "metadata.jsonl"
    rows = [json.loads(line) for line in meta.read_text().splitlines()]
    rows[0]["text"] = "a blue circle"
    meta.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert cache_key(pipe, load_dataset(data.root), settings) != new_key


def test_dataset_resizes_only_when_asked(tmp_path):
    from PIL import Image

    from sanatool.training.data import load_dataset, load_pixels

    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "wide.png")
    Image.new("RGB", (16, 16), (0, 0, 255)).save(tmp_path / "small.png")
    rows = [{"file_name": "wide.png", "text": "red"}, {"file_name": "small.png", "text": "blue"}]
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(InputError, match="mixed sizes.*--resolution"):
        load_dataset(tmp_path)
    data = load_dataset(tmp_path, resolution=8)
    assert data.resized and data.resolution == 8
    pixels = load_pixels(data.items[0], 8)
    assert pixels.shape == (3, 8, 8)
    assert pixels[0].min() == 1.0 and pixels[2].max() == -1.0  # pure red in [-1, 1]
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "../x.png", "text": "t"}) + "\n")
    with pytest.raises(InputError, match="outside"):
        load_dataset(tmp_path)


def test_data_stream_visits_every_item_once_per_epoch():
    from sanatool.training.loop import DataStream

    stream = DataStream(5, torch.Generator().manual_seed(0))
    first, second = stream.take(5), stream.take(5)
    assert sorted(first) == sorted(second) == [0, 1, 2, 3, 4]
    assert len(stream.take(7)) == 7


def test_activation_budget_is_measured_and_checkpointing_shrinks_it():
    from sanatool.arch import preset_config
    from sanatool.training.budget import activation_bytes

    config = preset_config("tiny")
    full = activation_bytes(config, 4, 8, 16, torch.float32, checkpointing=False)
    double = activation_bytes(config, 8, 8, 16, torch.float32, checkpointing=False)
    light = activation_bytes(config, 4, 8, 16, torch.float32, checkpointing=True)
    assert 1.9 < double / full < 2.1  # linear in the batch
    assert light < full / 2


def test_default_lr_follows_the_command_and_optimizer():
    from sanatool.training.options import TrainOptions, validate_options

    def filled(**kwargs):
        opts = TrainOptions(data=None, out=None, steps=10, **kwargs)
        validate_options(opts, dry_run=True)
        return opts.lr

    # CAME's uncorrected confidence statistic makes its early steps ~10x AdamW's: a smaller default.
    assert filled(source="m", optimizer="came8bit") == 1e-5
    assert filled(source="m", optimizer="came") == 1e-5
    assert filled(source="m", optimizer="adamw") == 1e-4
    assert filled(preset="tiny", optimizer="came8bit") == 5e-4
    assert filled(source="m", optimizer="came8bit", lr=3e-4) == 3e-4
    with pytest.raises(InputError, match="--lr must be positive"):
        filled(source="m", lr=0.0)


def _lr(**options):
    from types import SimpleNamespace

    from sanatool.training.loop import Trainer

    opts = SimpleNamespace(
        **{"lr": 1.0, "warmup_steps": 0, "lr_schedule": "constant", "steps": 14, **options}
    )
    return [Trainer.lr_at(SimpleNamespace(opts=opts), step) for step in range(opts.steps)]


def test_warmup_reaches_the_peak_on_its_last_step():
    assert _lr(warmup_steps=4)[:6] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert _lr()[:2] == [1.0, 1.0]


def test_cosine_decays_from_the_peak_to_a_tenth():
    import math

    rates = _lr(warmup_steps=4, lr_schedule="cosine")
    assert rates[:5] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert rates[9] == pytest.approx(0.55)  # halfway through the decay
    expected_last = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 9 / 10))
    assert rates[-1] == pytest.approx(expected_last)
    assert all(a > b for a, b in zip(rates[4:], rates[5:], strict=False))


def test_accumulated_gradient_is_the_mean_over_micro_steps():
    """Three micro-steps of the same loss give that loss's gradient, not three times it."""
    from types import SimpleNamespace

    from sanatool.training.loop import Trainer

    weight = torch.nn.Parameter(torch.zeros(()))
    model = torch.nn.Module()
    model.weight = weight
    trainer = Trainer.__new__(Trainer)
    trainer.opts = SimpleNamespace(
        lr=0.5, warmup_steps=0, lr_schedule="constant", steps=1, grad_accum=3, batch_size=1, max_grad_norm=0
    )
    trainer.ctx = SimpleNamespace(world_size=1, mean=lambda value: value)
    trainer.model = trainer.wrapped = model
    trainer.optimizer = torch.optim.SGD([weight], lr=0.5)
    trainer.ema, trainer.step_count = None, 0
    trainer._draw = lambda batch: None
    trainer._micro_loss = lambda draw: ((weight - 1.0) ** 2, {})  # gradient −2 at 0; no loss parts
    result = trainer.step()
    assert result.loss == pytest.approx(1.0) and result.grad_norm == pytest.approx(2.0)
    assert float(weight.detach()) == pytest.approx(1.0)  # 0 − 0.5 × (−2)
