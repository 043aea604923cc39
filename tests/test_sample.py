"""`sample`: parity with diffusers' SanaPipeline, seeds, samples dirs, resume, rank splitting, bad input."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from helpers import pixels
from PIL import Image

from sanatool.io.manifest import MANIFEST_NAME, read_manifest
from sanatool.io.prompts import PromptItem, write_prompts

STEPS = 2


@pytest.fixture(scope="module")
def pipe(tiny_pipeline):
    from sanatool.inference.pipeline import load_pipeline

    return load_pipeline(tiny_pipeline, "cpu", "fp32")


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_sample_matches_diffusers_and_each_seed_regenerates_its_image_alone(
    tiny_pipeline, reference, tmp_path
):
    import torch

    from sanatool.inference.sampler import diffusers_kwargs
    from sanatool.samples.writer import sample_to_dir

    out = sample_to_dir(
        tiny_pipeline,
        ["a red circle", "two blue squares"],
        tmp_path / "s",
        candidates=2,
        steps=STEPS,
        batch_size=3,  # batches mix prompts and candidates
        device="cpu",
    )
    records, problems = read_manifest(out)
    assert not problems and len(records) == 4
    assert len({r["seed"] for r in records}) == 4
    # diffusers, the whole set in one call with one generator per image...
    batch = reference(
        prompt=[r["prompt"] for r in records],
        num_inference_steps=STEPS,
        height=32,
        width=32,
        complex_human_instruction=None,
        use_resolution_binning=False,
        generator=[torch.Generator().manual_seed(r["seed"]) for r in records],
    ).images
    for record, expected in zip(records, batch, strict=True):
        diff = np.abs(pixels(Image.open(out / record["path"])) - pixels(expected)).max()
        assert diff <= 1, (record["path"], diff)  # ≤ 1/255
    # ...and one image alone from its manifest seed, as a user would.
    alone = reference(**diffusers_kwargs(records[3])).images[0]
    assert np.abs(pixels(Image.open(out / records[3]["path"])) - pixels(alone)).max() <= 1


def test_flow_euler_with_instruction_matches_diffusers(pipe, reference):
    import torch

    from sanatool.inference.sampler import euler_sigmas, generate, make_scheduler
    from sanatool.inference.text import diffusers_default_instruction

    instruction = diffusers_default_instruction()
    ours = generate(
        pipe, ["a green triangle"], [7], steps=STEPS, sampler="flow-euler", instruction=instruction
    ).images[0]
    original = reference.scheduler
    reference.scheduler = make_scheduler(reference, "flow-euler", STEPS)
    try:
        theirs = reference(
            "a green triangle",
            num_inference_steps=STEPS,
            sigmas=euler_sigmas(STEPS),
            height=32,
            width=32,
            use_resolution_binning=False,  # and diffusers' default complex human instruction
            generator=torch.Generator().manual_seed(7),
        ).images[0]
    finally:
        reference.scheduler = original
    assert np.abs(pixels(ours) - pixels(theirs)).max() <= 1


def test_image_seed_rule_is_the_documented_hash():
    from sanatool.inference.sampler import image_seed

    digest = hashlib.sha256(b"sanatool/5/3/2").digest()
    assert image_seed(5, 3, 2) == int.from_bytes(digest[:8], "big") % 2**53
    seeds = {image_seed(0, p, c) for p in range(50) for c in range(50)}
    assert len(seeds) == 2500


def test_encode_prompts_is_diffusers_and_warns_on_truncation(pipe, reference, caplog):
    import torch

    from sanatool.inference.text import encode_prompts

    long_prompt = " ".join(["red circle"] * 200)  # 400 words, one token each
    with caplog.at_level(logging.WARNING, logger="sanatool.inference.text"):
        embeds, mask = encode_prompts(pipe.tokenizer, pipe.text_encoder, ["a red circle", long_prompt], "cpu")
    warnings = [r.getMessage() for r in caplog.records if r.name == "sanatool.inference.text"]
    assert len(warnings) == 1 and "prompt 1" in warnings[0] and "first 299 tokens" in warnings[0]
    theirs, their_mask, _, _ = reference.encode_prompt(
        ["a red circle", long_prompt], do_classifier_free_guidance=False, complex_human_instruction=None
    )
    assert embeds.shape == (2, 300, 64) and torch.equal(embeds, theirs) and torch.equal(mask, their_mask)
    assert int(mask[0].sum()) == 4  # BOS + three words


def test_worlds_and_their_defaults(tiny_pipeline):
    from sanatool.arch import preset_config
    from sanatool.inference.pipeline import (
        default_calibration_prompts,
        default_instruction,
        general_calibration_prompts,
        model_world,
    )
    from sanatool.io.modeldir import open_model_dir

    tiny = open_model_dir(tiny_pipeline)
    assert model_world(tiny) == "shapes" and default_instruction(tiny) is None
    assert all(item.spec for item in default_calibration_prompts(tiny))
    real = preset_config("sana1.5-4.8b")
    assert model_world(real) == "general"
    assert default_instruction(real)[-1] == "User Prompt: "
    general = general_calibration_prompts()
    assert len(general) == 100 and len({p.prompt for p in general}) == 100
    assert default_calibration_prompts(real) == general


def test_cli_sample_writes_samples_dir_with_spec_and_grid(cli, tiny_pipeline, tmp_path):
    prompts = tmp_path / "p.jsonl"
    spec = {"objects": [{"shape": "circle", "color": "red", "count": 1}]}
    write_prompts(prompts, [PromptItem("a red circle", "single_object", spec), PromptItem("a blue square")])
    out = tmp_path / "samples"
    res = cli("sample", tiny_pipeline, "--prompts", prompts, "-n", "3", "--steps", "2", "-o", out, "--json")
    assert res.code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary == {"path": str(out), "images": 6, "prompts": 2, "candidates": 3}
    records, _ = read_manifest(out)
    assert [(r["prompt_index"], r["candidate"]) for r in records] == [
        (p, c) for p in range(2) for c in range(3)
    ]
    assert records[0]["spec"] == spec and records[0]["category"] == "single_object"
    assert "spec" not in records[3]
    assert {r["steps"] for r in records} == {2} and records[0]["sampler"] == "flow-dpm"
    assert records[0]["height"] == records[0]["width"] == 32 and records[0]["instruction"] is False
    from sanatool.io.modeldir import open_model_dir

    assert records[0]["model"] == open_model_dir(tiny_pipeline).fingerprint()
    grid = Image.open(out / "grid.png")
    # 2 prompts of 3 candidates side by side, 32 px images drawn at 96 px (8 px gaps, 12 px between
    # prompts and around), under 2 lines of prompt text (30 px), above a caption line (16 px)
    assert grid.size == (12 + 2 * (3 * 96 + 2 * 8 + 12), 12 + 30 + 3 + 96 + 3 + 16 + 12)
    assert not any(p.name.startswith(".") for p in out.rglob("*"))
    assert not list(tmp_path.glob(".samples*"))


def test_resume_keeps_matching_images_and_finishes_an_interrupted_run(
    cli, tiny_pipeline, tmp_path, monkeypatch
):
    from sanatool.io.outputs import partial_dir

    out = tmp_path / "s"
    assert (
        cli("sample", tiny_pipeline, "--prompt", "a red circle", "-n", "1", "--steps", "2", "-o", out).code
        == 0
    )
    first = out / "images" / "p00000_c000.png"
    inode, data = first.stat().st_ino, first.read_bytes()
    res = cli(
        "sample", tiny_pipeline, "--prompt", "a red circle", "-n", "2", "--steps", "2", "-o", out, "--resume"
    )
    assert res.code == 0, res.stderr
    assert first.stat().st_ino == inode and first.read_bytes() == data  # reused, not redrawn
    assert "sample: 1/1" in res.stderr  # only the new candidate was sampled
    assert "keeping 1 of 2 images" in res.stderr
    assert len(read_manifest(out)[0]) == 2

    # Other settings would redraw every image: refused, naming what differs; nothing touched.
    manifest = (out / MANIFEST_NAME).read_bytes()
    res = cli(
        "sample", tiny_pipeline, "--prompt", "a red circle", "-n", "2", "--steps", "3", "-o", out, "--resume"
    )
    assert res.code == 2 and "steps 2 → 3 (2 images)" in res.stderr, res.stderr
    assert "--force" in res.stderr and (out / MANIFEST_NAME).read_bytes() == manifest
    assert first.stat().st_ino == inode

    # A run that dies midway keeps its finished images in .t.partial: refused without a flag,
    # continued with --resume (a torn last journal line is ignored).
    import sanatool.inference.sampler as sampling

    fresh = tmp_path / "t"
    args = ("sample", tiny_pipeline, "--prompt", "a red circle", "-n", "2", "--steps", "2", "-o", fresh)
    real_decode, calls = sampling.decode, []

    def crash_on_second_batch(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real_decode(*a, **k)

    monkeypatch.setattr(sampling, "decode", crash_on_second_batch)
    res = cli(*args, "--batch-size", "1")
    monkeypatch.setattr(sampling, "decode", real_decode)
    partial = partial_dir(fresh)
    assert res.code == 1 and "--resume" in res.stderr and not fresh.exists()
    with open(partial / ".journal-00000.jsonl", "a") as journal:
        journal.write('{"torn')
    res = cli(*args)
    assert res.code == 2 and "--resume" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = cli(*args, "--resume")
    assert res.code == 0, res.stderr
    assert "sample: 1/1" in res.stderr and not partial.exists()
    assert (fresh / MANIFEST_NAME).read_bytes() == (out / MANIFEST_NAME).read_bytes()
    for name in ("p00000_c000.png", "p00000_c001.png"):
        assert (
            np.abs(
                pixels(Image.open(fresh / "images" / name)) - pixels(Image.open(out / "images" / name))
            ).max()
            <= 1
        )

    # --force starts over and replaces the output only once the new one is complete.
    res = cli(
        "sample", tiny_pipeline, "--prompt", "a blue square", "-n", "1", "--steps", "2", "-o", out, "--force"
    )
    assert res.code == 0 and [r["prompt"] for r in read_manifest(out)[0]] == ["a blue square"]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["p00000_c000.png"]


def test_ranks_split_prompts_and_rank_zero_merges_one_manifest(pipe, tiny_pipeline, tmp_path):
    """The torchrun path, rank by rank: prepare (rank 0), each rank's share, merge (rank 0)."""
    from sanatool.distributed import DistContext
    from sanatool.io.modeldir import open_model_dir
    from sanatool.samples.writer import (
        SampleSettings,
        finalize_samples,
        prepare_partial,
        sample_jobs,
        sample_share,
    )

    def rank_share(count: int, rank: int, world: int) -> list[int]:
        return DistContext(rank, world, "cpu").share(count)

    assert rank_share(5, 0, 2) == [0, 2, 4] and rank_share(5, 1, 2) == [1, 3]
    assert sorted(sum((rank_share(7, r, 3) for r in range(3)), [])) == list(range(7))
    prompts = [PromptItem(text) for text in ("a red circle", "a blue square", "a green triangle")]
    jobs = sample_jobs(prompts, 1, seed=0)
    settings = SampleSettings(
        1, 4.5, "flow-dpm", open_model_dir(tiny_pipeline).fingerprint(), 32, 32, "fp32", False
    )
    out = tmp_path / "s"
    partial = prepare_partial(out, {}, resume=False)
    for rank in (1, 0):
        mine = set(rank_share(len(prompts), rank, 2))
        share = [job for job in jobs if job.prompt_index in mine]
        assert sample_share(pipe, share, partial, settings, None, batch_size=4, rank=rank) == len(share)
    finalize_samples(out, jobs)
    records, problems = read_manifest(out)
    assert not problems and [r["prompt_index"] for r in records] == [0, 1, 2]
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "images", MANIFEST_NAME]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-n", "0"], "--candidates"),
        (["--steps", "0"], "--steps"),
        (["--batch-size", "0"], "--batch-size"),
        (["--sampler", "ddim"], "sampler"),
        (["--size", "30", "30"], "multiples of 4"),
        (["--device", "cuda:99"], "no such CUDA device"),
    ],
)
def test_sample_bad_settings(cli, tiny_pipeline, tmp_path, args, message):
    res = cli("sample", tiny_pipeline, "--prompt", "a red circle", "-o", tmp_path / "s", *args)
    assert res.code == 2 and message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_sample_bad_inputs(cli, tiny_pipeline, tiny_transformer, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    out = tmp_path / "s"
    cases = [
        (["--prompts", empty], "holds no prompts"),
        ([], "no prompts given"),
        (["--prompts", empty, "--prompt", "x"], "not both"),
    ]
    for extra, message in cases:
        res = cli("sample", tiny_pipeline, "-o", out, *extra)
        assert res.code == 2 and message in res.stderr, res.stderr
    res = cli("sample", tiny_transformer, "--prompt", "a red circle", "-o", out)
    assert res.code == 2 and "needs a pipeline dir" in res.stderr
    assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = cli("sample", tiny_pipeline, "--prompt", "a red circle", "-o", out)
    assert res.code == 2 and "already exists" in res.stderr
    res = cli("sample", tiny_pipeline, "--prompt", "a red circle", "-o", out, "--resume")
    assert res.code == 2 and "no manifest.jsonl" in res.stderr
    assert (out / "keep.txt").read_text() == "mine" and len(list(out.iterdir())) == 1


def test_cli_seed_chooses_the_images(cli, tiny_pipeline, tmp_path):
    from sanatool.inference.sampler import image_seed

    def run(seed: str, name: str):
        out = tmp_path / name
        res = cli(
            "sample",
            tiny_pipeline,
            "--prompt",
            "a red circle",
            "-n",
            "2",
            "--steps",
            "2",
            "--seed",
            seed,
            "-o",
            out,
        )
        assert res.code == 0, res.stderr
        records, _ = read_manifest(out)
        return [r["seed"] for r in records], [(out / r["path"]).read_bytes() for r in records]

    seeds, images = run("5", "five")
    assert seeds == [image_seed(5, 0, 0), image_seed(5, 0, 1)]
    assert run("5", "again") == (seeds, images)
    other_seeds, other_images = run("6", "six")
    assert other_seeds == [image_seed(6, 0, 0), image_seed(6, 0, 1)]
    assert not set(other_images) & set(images)


def test_prompts_come_from_a_pipe_and_not_from_a_directory(tmp_path):
    """`--prompts <(grep red prompts.txt)` hands over a pipe, not a regular file."""
    import os
    import threading

    from sanatool.errors import InputError
    from sanatool.io.prompts import read_prompts

    fifo = tmp_path / "prompts.txt"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text("a red circle\n\na blue square\n"))
    writer.start()
    assert [item.prompt for item in read_prompts(fifo)] == ["a red circle", "a blue square"]
    writer.join()
    with pytest.raises(InputError, match="is a directory"):
        read_prompts(tmp_path)
