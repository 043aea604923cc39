"""--train-text-encoder: the encoder trains with the transformer, ships in the output, resumes exactly."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from sanatool.errors import InputError, Interrupted

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    from sanatool.shapes.dataset import write_shapes_dataset

    return write_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", 8, seed=5)


_TEXT_ENCODER = "text_encoder/model.safetensors"
_TRANSFORMER = "transformer/diffusion_pytorch_model.safetensors"


def _weights(model_dir: Path, file: str = _TEXT_ENCODER) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / file))


def test_token_ids_feed_the_encoder_exactly_as_diffusers_encodes(tiny_pipeline):
    import torch

    from sanatool.inference.pipeline import load_pipeline
    from sanatool.inference.text import encode_prompts, tokenize_prompts

    pipe = load_pipeline(tiny_pipeline, "cpu", "fp32")
    prompts = ["a red circle left of a blue square", "two green triangles", ""]
    embeds, mask = encode_prompts(pipe.tokenizer, pipe.text_encoder, prompts, "cpu")
    ids, ids_mask = tokenize_prompts(pipe.tokenizer, prompts)
    with torch.no_grad():
        direct = pipe.text_encoder(input_ids=ids, attention_mask=ids_mask).last_hidden_state
    assert ids_mask.equal(mask.cpu())
    assert direct.equal(embeds)


def test_train_text_encoder_writes_both_and_samples(cli, tiny_pipeline, shapes_data, tmp_path):
    from diffusers import SanaPipeline

    before = {p: p.read_bytes() for p in (tiny_pipeline / "text_encoder").iterdir()}
    out = tmp_path / "joint"
    res = cli(
        "train", "--preset", "tiny", "--components", tiny_pipeline, "--data", shapes_data, "-o", out,
        "--steps", "3", "--batch-size", "2", "--optimizer", "adamw", "--lr", "1e-2", "--dtype", "fp16",
        "--ema", "0.5", "--train-text-encoder", "--json",
    )  # fmt: skip
    assert res.code == 0, res.stderr
    trained, init = _weights(out), _weights(tiny_pipeline)
    assert trained.keys() == init.keys()
    assert all(t.dtype.is_floating_point and t.element_size() == 2 for t in trained.values())
    assert any(not trained[k].float().equal(init[k].float()) for k in init)
    # The parent's encoder (the carried files were hard links) is untouched.
    assert {p: p.read_bytes() for p in (tiny_pipeline / "text_encoder").iterdir()} == before
    assert json.loads((out / "text_encoder" / "config.json").read_text())["dtype"] == "float16"
    chain = json.loads((out / "sanatool.json").read_text())["chain"]
    assert "text encoder trained" in chain[-1]["summary"] and chain[-1]["args"]["train_text_encoder"]
    pipe = SanaPipeline.from_pretrained(out)  # diffusers loads the trained encoder as it is
    image = pipe(
        "a red circle",
        height=32,
        width=32,
        num_inference_steps=2,
        complex_human_instruction=None,
        use_resolution_binning=False,
        output_type="np",
    ).images
    assert image.shape == (1, 32, 32, 3)


def test_train_text_encoder_resumes_bit_exact(tiny_pipeline, shapes_data, tmp_path):
    from sanatool.training import TrainOptions, run_training

    common = {
        "data": shapes_data, "steps": 6, "source": str(tiny_pipeline), "batch_size": 2, "lr": 1e-3,
        "ema_decay": 0.9, "caption_dropout": 0.5, "optimizer": "adamw", "train_text_encoder": True,
    }  # fmt: skip
    run_training(TrainOptions(out=tmp_path / "straight", **common))

    def ctrl_c_at_3(task: str, done: int, total: int | None = None, **info: object) -> None:
        if task == "train" and done == 3 and info:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted) as stopped:
        run_training(TrainOptions(out=tmp_path / "split", **common), progress=ctrl_c_at_3)
    assert stopped.value.exit_code == 130 and "step-00000003" in stopped.value.kept
    with pytest.raises(InputError, match="was trained with --train-text-encoder"):
        run_training(
            TrainOptions(out=tmp_path / "split", resume=True, **{**common, "train_text_encoder": False})
        )
    run_training(TrainOptions(out=tmp_path / "split", resume=True, **common))
    for file in (_TEXT_ENCODER, _TRANSFORMER):
        straight, split = _weights(tmp_path / "straight", file), _weights(tmp_path / "split", file)
        assert all(straight[k].equal(split[k]) for k in straight)


def test_train_text_encoder_bad_input(cli, tiny_pipeline, shapes_data, tmp_path):
    out = tmp_path / "never"
    res = cli(
        "finetune", tiny_pipeline, "--data", shapes_data, "-o", out, "--steps", "2",
        "--train-text-encoder", "--fsdp",
    )  # fmt: skip
    assert res.code == 2 and "--train-text-encoder with --fsdp" in res.stderr
    assert not out.exists()
