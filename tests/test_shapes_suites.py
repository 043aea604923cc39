"""The shipped prompt suites, the training captions (evaluation prompts held out), and the data writers."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from PIL import Image

from sanatool.errors import InputError, OutputExistsError
from sanatool.io.manifest import read_manifest
from sanatool.io.prompts import PromptItem, read_prompts
from sanatool.shapes import (
    CATEGORIES,
    build_calibration_prompts,
    build_evaluation_suite,
    calibration_prompts,
    evaluate_image,
    evaluation_suite,
    render_spec,
    tokens,
    training_captions,
    validate_spec,
    vocabulary,
    write_ground_truth_samples,
    write_shapes_dataset,
)
from sanatool.shapes.suites import CALIBRATION_FILE, EVAL_SUITE_FILE, shipped_path


def test_shipped_files_are_what_the_generators_produce():
    assert [i.to_json() for i in read_prompts(shipped_path(EVAL_SUITE_FILE))] == [
        i.to_json() for i in build_evaluation_suite()
    ]
    assert [i.to_json() for i in read_prompts(shipped_path(CALIBRATION_FILE))] == [
        i.to_json() for i in build_calibration_prompts()
    ]


def test_evaluation_suite_is_large_balanced_distinct_and_valid():
    suite = evaluation_suite()
    assert len(suite) >= 300
    counts = Counter(item.category for item in suite)
    assert set(counts) == set(CATEGORIES) and max(counts.values()) - min(counts.values()) <= 1
    assert len({item.prompt for item in suite}) == len(suite)
    for item in suite:
        validate_spec(item.spec)
    relations = Counter(i.spec["relation"]["kind"] for i in suite if i.category == "position")
    assert set(relations) == {"left_of", "right_of", "above", "below"} and min(relations.values()) >= 12
    numbers = Counter(i.spec["objects"][0]["count"] for i in suite if i.category == "counting")
    assert set(numbers) == {2, 3, 4}


def test_calibration_set_is_100_prompts_apart_from_the_suite():
    calibration = calibration_prompts()
    assert len(calibration) == 100
    assert set(Counter(item.category for item in calibration)) == set(CATEGORIES)
    assert not {i.prompt for i in calibration} & {i.prompt for i in evaluation_suite()}


def test_loaded_suites_are_fresh_copies():
    first = evaluation_suite()
    first[0].spec["objects"].clear()
    assert evaluation_suite()[0].spec["objects"]


def test_prompt_words_match_their_specs():
    for item in evaluation_suite():
        words = set(tokens(item.prompt))
        for obj in item.spec["objects"]:
            assert obj["color"] in words and (obj["shape"] in words or obj["shape"] + "s" in words), (
                item.prompt
            )


def test_training_captions_hold_out_every_evaluation_prompt():
    held_out = {item.prompt for item in evaluation_suite()}
    captions = training_captions(20000, seed=1)
    assert not held_out & {c.prompt for c in captions}
    kinds = Counter(c.category for c in captions)
    assert set(kinds) == set(CATEGORIES) | {"multi"}
    # The held-out prompts' combinations are still taught, in other phrasings.
    assert len({c.prompt for c in captions}) > 2000


def test_training_captions_are_seeded_and_renderable():
    one, again = training_captions(50, seed=3), training_captions(50, seed=3)
    assert [c.to_json() for c in one] == [c.to_json() for c in again]
    assert [c.prompt for c in one] != [c.prompt for c in training_captions(50, seed=4)]
    for index, caption in enumerate(one):
        assert evaluate_image(render_spec(caption.spec, 32, seed=index), caption.spec).correct, caption.prompt
    with pytest.raises(InputError):
        training_captions(0, seed=0)


def test_vocabulary_covers_every_caption():
    words = set(vocabulary())
    for caption in training_captions(2000, seed=0) + evaluation_suite() + calibration_prompts():
        assert set(tokens(caption.prompt)) <= words


def test_dataset_writer_writes_an_imagefolder(tmp_path):
    seen = []
    out = write_shapes_dataset(tmp_path / "ds", 12, size=32, seed=5, progress=lambda *a, **k: seen.append(a))
    lines = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [line["file_name"] for line in lines] == [f"{i:05d}.png" for i in range(12)]
    assert [line["text"] for line in lines] == [c.prompt for c in training_captions(12, seed=5)]
    assert all(set(line) == {"file_name", "text"} for line in lines)
    with Image.open(out / "00003.png") as image:
        assert image.size == (32, 32) and image.mode == "RGB"
    assert seen[-1] == ("render", 12, 12)
    again = write_shapes_dataset(tmp_path / "again", 12, size=32, seed=5)
    assert (out / "00007.png").read_bytes() == (again / "00007.png").read_bytes()


def test_dataset_writer_refuses_bad_input_before_writing(tmp_path):
    with pytest.raises(InputError, match="positive"):
        write_shapes_dataset(tmp_path / "none", 0)
    with pytest.raises(InputError, match="size"):
        write_shapes_dataset(tmp_path / "none", 3, size=4)
    (tmp_path / "exists").mkdir()
    with pytest.raises(OutputExistsError):
        write_shapes_dataset(tmp_path / "exists", 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]
    assert not any((tmp_path / "exists").iterdir())


def test_ground_truth_samples_dir_follows_the_manifest_format(tmp_path):
    prompts = evaluation_suite()[:3]
    out = write_ground_truth_samples(prompts, tmp_path / "gt", per_prompt=2, seed=1)
    records, problems = read_manifest(out)
    assert not problems and len(records) == 6
    first = records[1]
    assert first["prompt"] == prompts[0].prompt and first["prompt_index"] == 0 and first["candidate"] == 1
    assert first["spec"] == prompts[0].spec and first["category"] == prompts[0].category
    assert first["path"] == "images/p00000_c001.png" and (out / first["path"]).is_file()
    # The recorded seed reproduces the image.
    with Image.open(out / first["path"]) as image:
        assert image.tobytes() == render_spec(first["spec"], 32, seed=first["seed"]).tobytes()


def test_ground_truth_refuses_prompts_without_a_renderable_spec(tmp_path):
    with pytest.raises(InputError, match="has no spec"):
        write_ground_truth_samples([PromptItem("a red circle")], tmp_path / "gt")
    crowded = PromptItem("five circles", spec={"objects": [{"shape": "circle", "count": 5}]})
    with pytest.raises(InputError, match="at most 4"):
        write_ground_truth_samples([crowded], tmp_path / "gt")
    assert not list(tmp_path.iterdir())
