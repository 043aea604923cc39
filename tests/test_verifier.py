"""The learned shapes verifier: its training data, its model files, ``train-verifier``, and judging with it."""

from __future__ import annotations

import json
import random

import pytest

from sanatool.errors import InputError, ModelDirError


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small models train faster on one thread than on two contended ones."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_perturbed_captions_are_false_for_the_render():
    from sanatool.judges.verifier_data import PERTURBATIONS, _locate, perturb
    from sanatool.shapes import evaluate_image, render_spec, training_captions, validate_spec, vocabulary

    words = set(vocabulary())
    rng = random.Random(0)
    made = {kind: 0 for kind in PERTURBATIONS}
    for index, item in enumerate(training_captions(150, seed=3)):
        image = render_spec(item.spec, size=32, seed=index)
        assert evaluate_image(image, item.spec).correct
        for kind in PERTURBATIONS:
            caption = perturb(item.prompt, item.spec, kind, rng)
            if caption is None:
                continue
            made[kind] += 1
            assert caption.text != item.prompt and not caption.label and caption.kind == kind
            assert set(caption.text.replace(",", " ,").split()) <= words
            assert len(caption.text.split()) == len(item.prompt.split())  # same template, one word edited
            validate_spec(caption.spec)
            assert _locate(caption.text.replace(",", " , ").split(), caption.spec) is not None
            assert not evaluate_image(image, caption.spec).correct, (item.prompt, caption.text)
    assert all(count >= 10 for count in made.values()), made


def test_save_load_roundtrip_and_refusals(tmp_path):
    import torch

    from sanatool.judges.verifier import (
        DEFAULT_ARCHITECTURE,
        FORMAT,
        FORMAT_VERSION,
        VerifierCodec,
        build_model,
        default_vocabulary,
        load_verifier,
        object_classes,
        save_verifier,
        verifier_probabilities,
    )
    from sanatool.shapes import render_spec

    vocab, classes = default_vocabulary(), object_classes()
    torch.manual_seed(0)
    model = build_model(DEFAULT_ARCHITECTURE, len(vocab), len(classes)).eval()
    config = {"format": FORMAT, "version": FORMAT_VERSION, "architecture": DEFAULT_ARCHITECTURE,
              "vocabulary": vocab, "classes": classes}  # fmt: skip
    save_verifier(model, config, tmp_path)
    loaded, _ = load_verifier(tmp_path)
    codec = VerifierCodec(vocab, 32, 32)
    spec = {"objects": [{"shape": "circle", "color": "red"}]}
    images = [render_spec(spec, 32, 0), render_spec(spec, 64, 1).convert("RGBA")]  # resized and converted
    captions = ["a red circle", "two zebras, left of a blue square"]  # unknown words map to <unk>
    assert torch.equal(
        verifier_probabilities(model, codec, images, captions),
        verifier_probabilities(loaded, codec, images, captions),
    )
    # A config that disagrees with the weights, or is not a verifier config, is refused.
    bad = dict(config, architecture=dict(DEFAULT_ARCHITECTURE, width=32))
    (tmp_path / "verifier.json").write_text(json.dumps(bad))
    with pytest.raises(ModelDirError, match="do not match"):
        load_verifier(tmp_path)
    (tmp_path / "verifier.json").write_text(json.dumps(dict(config, format="other")))
    with pytest.raises(ModelDirError, match="not a sanatool verifier"):
        load_verifier(tmp_path)
    (tmp_path / "verifier.json").write_text(
        json.dumps(dict(config, architecture=dict(DEFAULT_ARCHITECTURE, width=10**9)))
    )
    with pytest.raises(ModelDirError, match="architecture.width"):
        load_verifier(tmp_path)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A samples dir standing in for decoded samples: noisy renders, some of the wrong prompt."""
    from sanatool.io.manifest import image_relpath, write_manifest
    from sanatool.shapes import degrade, evaluation_suite, mismatched_spec, render_spec

    root = tmp_path_factory.mktemp("gen") / "samples"
    (root / "images").mkdir(parents=True)
    rng, rows = random.Random(0), []
    suite = evaluation_suite()
    for p, item in enumerate(suite[::25]):
        for c in range(2):
            spec = item.spec if c == 0 else mismatched_spec(item.spec, item.category, rng)
            degrade(render_spec(spec, 32, p * 2 + c), seed=p).save(root / image_relpath(p, c))
            rows.append({"prompt": item.prompt, "prompt_index": p, "candidate": c, "path": image_relpath(p, c),
                         "spec": item.spec, "category": item.category})  # fmt: skip
    write_manifest(root / "manifest.jsonl", rows)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory, generated):
    """A verifier trained briefly through the real command (renders and the generated samples)."""
    import sys

    from sanatool.cli import main

    out = tmp_path_factory.mktemp("ver") / "verifier"
    argv = ["sanatool", "train-verifier", "-o", str(out), "--steps", "60", "--batch-size", "8", "--renders",
            "300", "--samples", str(generated), "--heldout", "0.5", "--lr", "3e-3", "--json"]  # fmt: skip
    saved, sys.argv = sys.argv, argv
    code = 0
    try:
        main()
    except SystemExit as ended:
        code = ended.code
    finally:
        sys.argv = saved
    assert code in (0, None) and (out / "verifier.json").is_file()
    return out


def test_train_verifier_writes_a_measured_verifier(trained, generated):
    config = json.loads((trained / "verifier.json").read_text())
    assert (trained / "model.safetensors").is_file()
    training = config["training"]
    assert training["final_loss"] < training["initial_loss"]  # it learns
    assert set(training["heldout"]["renders"]) == {"match", "color", "shape", "count", "relation", "swap"}
    heldout = training["heldout"]["generated"]
    assert training["sample_images"]["heldout"] == heldout["images"] > 0
    assert training["sample_images"]["train"] + heldout["images"] == 24
    # Agreement counts images: a whole number of them, and no more than the two yes-rates allow.
    agreed = heldout["agreement"] * heldout["images"]
    assert agreed == pytest.approx(round(agreed), abs=1e-2)
    assert (
        heldout["agreement"] <= 1 - abs(heldout["verifier_yes_rate"] - heldout["evaluator_yes_rate"]) + 1e-3
    )
    assert heldout["evaluator_yes_rate"] == pytest.approx(0.5, abs=0.25)
    assert training["samples"] == [str(generated.resolve())]


def test_training_is_reproducible(tmp_path):
    from sanatool.judges.verifier_train import VerifierTraining, train_verifier

    options = VerifierTraining(steps=3, batch_size=4, renders=20, seed=5)
    train_verifier(tmp_path / "a", options)
    train_verifier(tmp_path / "b", options)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (
        tmp_path / "b" / "model.safetensors"
    ).read_bytes()


def test_judge_with_the_verifier(cli, trained, generated, tmp_path):
    out = tmp_path / "picks"
    res = cli("judge", generated, "-o", out, "--judge", f"verifier:{trained}", "--json")
    assert res.code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["judge"]["kind"] == "verifier" and summary["judge"]["oracle"] is False
    assert "heldout_agreement" in summary["judge"] and "oracle" not in res.stderr
    scores = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert len(scores) == 24 and all(
        0.0 <= r["p_yes"] <= 1.0 and r["answer"] in ("yes", "no") for r in scores
    )
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 12


def test_train_verifier_bad_input(cli, generated, tmp_path):
    existing = tmp_path / "exists"
    existing.mkdir()
    out = tmp_path / "v"
    cases = [
        (["--steps", "0"], "--steps"),
        (["--lr", "0"], "--lr"),
        (["--batch-size", "-1"], "--batch-size"),
        (["--heldout", "1.0"], "--heldout"),
        (["--renders", "0"], "nothing to train on"),
        (["--samples", str(tmp_path / "none")], "does not exist"),
        (["--device", "cuda:99"], "cuda"),
    ]
    for args, message in cases:
        res = cli("train-verifier", "-o", out, *args)
        assert res.code == 2, (args, res.stderr)
        assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1, (args, res.stderr)
        assert not out.exists()
    res = cli("train-verifier", "-o", existing, "--steps", "1")
    assert res.code == 2 and "already exists" in res.stderr
    res = cli("train-verifier", "-o", generated / "v", "--samples", generated)
    assert res.code == 2 and "overlaps the input" in res.stderr


def test_agreement_against_the_evaluator():
    from sanatool.judges.verifier_train import _agreement

    verifier = [True, True, False, False, True]
    evaluator = [True, False, False, True, True]
    assert _agreement(verifier, evaluator) == {
        "images": 5,
        "agreement": 0.6,
        "balanced_accuracy": round((2 / 3 + 1 / 2) / 2, 4),
        "evaluator_yes_rate": 0.6,
        "verifier_yes_rate": 0.6,
    }
    assert _agreement([], [])["agreement"] is None


def test_calibrate_threshold_maximises_balanced_accuracy():
    from sanatool.judges.verifier_train import _agreement, calibrate_threshold

    # Positives sit above 0.2, negatives below, so only a threshold in (0.15, 0.25) separates them all.
    probs = [0.1, 0.15, 0.25, 0.3, 0.9, 0.05]
    labels = [False, False, True, True, True, False]
    threshold = calibrate_threshold(probs, labels)
    assert 0.15 < threshold < 0.25
    assert _agreement([p > threshold for p in probs], labels)["balanced_accuracy"] == 1.0
    assert _agreement([p > 0.5 for p in probs], labels)["balanced_accuracy"] < 1.0
    # Without both classes there is nothing to calibrate against.
    assert calibrate_threshold([0.2, 0.7], [True, True]) == 0.5
    assert calibrate_threshold([], []) == 0.5


def test_sample_images_carry_detector_cell_labels(generated):
    from PIL import Image

    from sanatool.judges.verifier import object_classes
    from sanatool.judges.verifier_data import cell_labels
    from sanatool.judges.verifier_train import load_sample_images

    classes = object_classes()
    samples = load_sample_images([generated], 32, seed=0, hard=2, grid=8, classes=classes)
    assert len(samples) == 24
    for sample in samples:
        cover, centre = cell_labels(Image.fromarray(sample.pixels), 8, classes)
        assert (sample.cover == cover).all() and (sample.centre == centre).all()
        assert sample.cover.shape == (64,) and sample.centre.any()  # every image holds a detectable object
        assert sample.captions[0].text == sample.prompt and sample.captions[0].kind == "match"
    assert any(c.kind == "other" for s in samples for c in s.captions)


def test_threshold_is_read_validated_and_used(tmp_path):
    import torch

    from sanatool.judges.verifier import (
        DEFAULT_ARCHITECTURE,
        FORMAT,
        FORMAT_VERSION,
        VerifierJudge,
        build_model,
        check_verifier_dir,
        default_vocabulary,
        object_classes,
        save_verifier,
    )
    from sanatool.shapes import render_spec

    vocab, classes = default_vocabulary(), object_classes()
    torch.manual_seed(0)
    model = build_model(DEFAULT_ARCHITECTURE, len(vocab), len(classes)).eval()
    config = {"format": FORMAT, "version": FORMAT_VERSION, "architecture": DEFAULT_ARCHITECTURE,
              "vocabulary": vocab, "classes": classes}  # fmt: skip
    image = render_spec({"objects": [{"shape": "circle", "color": "red"}]}, 32, 0)
    judgements = {}
    for threshold in (0.001, 0.999):
        save_verifier(model, {**config, "threshold": threshold}, tmp_path)
        judge = VerifierJudge(tmp_path)
        assert judge.describe()["threshold"] == threshold
        judgements[threshold] = judge.judge([image], ["a red circle"], [None])[0]
    low, high = judgements[0.001], judgements[0.999]
    assert low.p_yes == high.p_yes and 0.001 < low.p_yes < 0.999
    assert low.answer is True and high.answer is False
    for bad in (0, 1, 1.5, "0.5", True):
        (tmp_path / "verifier.json").write_text(json.dumps({**config, "threshold": bad}))
        with pytest.raises(ModelDirError, match="threshold"):
            check_verifier_dir(tmp_path)


def test_shipped_verifier_is_the_default(tmp_path):
    from sanatool.judges.registry import load_judge, parse_judge_spec
    from sanatool.judges.verifier import shipped_verifier_path

    spec = parse_judge_spec("verifier")
    assert spec.kind == "verifier" and spec.path == shipped_verifier_path()
    assert (spec.path / "verifier.json").is_file() and (spec.path / "model.safetensors").is_file()
    judge = load_judge("verifier")
    info = judge.describe()
    assert not info["oracle"] and 0.0 < info["threshold"] < 1.0
    # Its recipe is recorded: trained on the shipped model's candidates, not on this machine's paths.
    training = judge.config["training"]
    assert training["samples"][0]["model"] == "builtin:tiny-shapes"
    generated = training["heldout"]["generated"]
    assert generated["threshold"] == judge.threshold and generated["images"] > 0
    assert info["heldout_balanced_accuracy"] == generated["balanced_accuracy"]
    with pytest.raises(InputError, match="needs a model dir"):
        parse_judge_spec("verifier:")


def test_shipped_verifier_reads_held_out_renders():
    """On renders of evaluation prompts (never trained on) it tells the caption from a perturbed one."""
    from sanatool.judges.registry import load_judge
    from sanatool.judges.verifier_data import hard_negatives
    from sanatool.shapes import evaluation_suite, render_spec

    judge = load_judge("verifier")
    rng = random.Random(0)
    images, captions, wanted = [], [], []
    for index, item in enumerate(evaluation_suite()[::3]):
        image = render_spec(item.spec, 32, index)
        negatives = hard_negatives(item.prompt, item.spec, 1, rng)
        for caption, want in [(item.prompt, True), *[(n.text, False) for n in negatives]]:
            images.append(image)
            captions.append(caption)
            wanted.append(want)
    p_yes = [j.p_yes for j in judge.judge(images, captions, [None] * len(images))]
    # Ranking, not the calibrated threshold (set for generated images): the matching caption of a
    # render must usually score above its perturbation (a verifier that ignores the image: 50%).
    pairs = [(p_yes[i], p_yes[i + 1]) for i in range(len(wanted) - 1) if wanted[i] and not wanted[i + 1]]
    above = sum(match > wrong for match, wrong in pairs)
    assert len(pairs) >= 60 and above >= 0.6 * len(pairs), (above, len(pairs))


def test_judge_cli_uses_the_shipped_verifier(cli, generated, tmp_path):
    res = cli("judge", generated, "-o", tmp_path / "picks", "--judge", "verifier", "--json")
    assert res.code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["judge"]["kind"] == "verifier" and summary["judge"]["path"].endswith("verifier-shapes")


def test_hard_negatives_never_spell_an_evaluation_prompt():
    """Held-out prompts met only as negatives would teach the verifier to say no to them."""
    from sanatool.judges.verifier_data import PERTURBATIONS, hard_negatives, perturb
    from sanatool.shapes import evaluation_suite, training_captions

    held_out = {item.prompt for item in evaluation_suite()}
    rng = random.Random(0)
    items = training_captions(400, seed=2)
    spelled = sum(
        (made := perturb(item.prompt, item.spec, kind, rng)) is not None and made.text in held_out
        for item in items
        for kind in PERTURBATIONS
    )
    assert spelled > 0  # a plain perturbation does hit them, so the filter matters
    for item in items:
        assert not any(c.text in held_out for c in hard_negatives(item.prompt, item.spec, 5, rng))


def test_mirrored_caption_holds_for_the_mirrored_render():
    """The evaluator is mirror-symmetric: a render's verdicts carry over to its mirror with left and right swapped."""
    import numpy as np

    from sanatool.judges.verifier_data import mirror_caption
    from sanatool.shapes import evaluate_image, evaluation_suite, render_spec, training_captions

    held_out = {item.prompt for item in evaluation_suite()}
    swapped = dropped = 0
    for index, item in enumerate(training_captions(300, seed=4)):
        made = mirror_caption(item.prompt, item.spec)
        if made is None:
            dropped += 1
            flipped = item.prompt.replace("left", "#").replace("right", "left").replace("#", "right")
            assert flipped in held_out
            continue
        text, spec = made
        assert text not in held_out
        relation = item.spec.get("relation", {}).get("kind")
        if relation in ("left_of", "right_of"):
            swapped += 1
            assert text != item.prompt and spec["relation"]["kind"] != relation
            assert ("left" in text) == ("right" in item.prompt)
        else:
            assert text == item.prompt and spec == item.spec
        pixels = np.asarray(render_spec(item.spec, 32, index))
        assert evaluate_image(pixels[:, ::-1], spec).correct
    assert swapped >= 10


def test_mirror_doubles_the_training_images_not_the_validation_split(generated, tmp_path):
    import numpy as np

    from sanatool.judges.verifier import object_classes
    from sanatool.judges.verifier_train import VerifierTraining, _held_out, load_sample_images, train_verifier

    classes = object_classes()
    plain = load_sample_images([generated], 32, seed=0, hard=2, grid=8, classes=classes)
    both = load_sample_images([generated], 32, seed=0, hard=2, grid=8, classes=classes, mirror=True)
    originals = [s for s in both if not s.mirrored]
    mirrored = [s for s in both if s.mirrored]
    assert len(originals) == len(plain) and 0 < len(mirrored) <= len(plain)
    for sample in originals:
        twin = next((m for m in mirrored if (m.pixels == sample.pixels[:, ::-1]).all()), None)
        if twin is None:
            continue
        assert twin.prompt == sample.prompt  # the split follows the manifest's prompt
        # The detector's centre cells mirror with the image.
        assert (twin.centre.reshape(8, 8) == np.fliplr(sample.centre.reshape(8, 8))).all()
    # Seed 1 puts the fixture's one mirrorable prompt (the others' mirrors are evaluation prompts) in training.
    options = VerifierTraining(
        steps=2, batch_size=4, renders=0, samples=[generated], heldout=0.5, mirror=True, seed=1
    )
    summary = train_verifier(tmp_path / "v", options)
    both = load_sample_images([generated], 32, seed=1, hard=2, grid=8, classes=classes, mirror=True)
    held = [_held_out(s.prompt, 0.5, 1) for s in both]
    train = sum(not h for h in held)
    assert 0 < train - sum(
        not h for h, s in zip(held, both, strict=True) if not s.mirrored
    )  # mirrored copies trained on
    # Validation measures the real images only: mirrored copies of its prompts are in neither split.
    want = sum(h for h, s in zip(held, both, strict=True) if not s.mirrored)
    assert summary["mirror"] is True and summary["sample_images"] == {"train": train, "heldout": want}
    assert summary["heldout"]["generated"]["images"] == want


def test_stem_layers_and_verifiers_saved_before_the_option(tmp_path):
    """A deeper full-resolution stem round-trips; a config without ``stem_layers`` loads as the one-layer stem."""
    import torch

    from sanatool.judges.verifier import (
        DEFAULT_ARCHITECTURE,
        FORMAT,
        FORMAT_VERSION,
        VerifierCodec,
        build_model,
        default_vocabulary,
        load_verifier,
        object_classes,
        save_verifier,
        verifier_probabilities,
    )
    from sanatool.shapes import render_spec

    vocab, classes = default_vocabulary(), object_classes()
    codec = VerifierCodec(vocab, 32, 32)
    image = [render_spec({"objects": [{"shape": "square", "color": "blue"}]}, 32, 0)]
    base = {"format": FORMAT, "version": FORMAT_VERSION, "vocabulary": vocab, "classes": classes}
    deep = dict(DEFAULT_ARCHITECTURE, stem_layers=3)
    torch.manual_seed(0)
    model = build_model(deep, len(vocab), len(classes)).eval()
    (tmp_path / "deep").mkdir()
    (tmp_path / "old").mkdir()
    assert sum(p.numel() for p in model.parameters()) > sum(
        p.numel() for p in build_model(DEFAULT_ARCHITECTURE, len(vocab), len(classes)).parameters()
    )
    save_verifier(model, {**base, "architecture": deep}, tmp_path / "deep")
    loaded, config = load_verifier(tmp_path / "deep")
    assert config["architecture"]["stem_layers"] == 3
    assert torch.equal(
        verifier_probabilities(model, codec, image, ["a blue square"]),
        verifier_probabilities(loaded, codec, image, ["a blue square"]),
    )
    # Written before stem_layers existed: no such key, the one-layer stem's weights.
    old = {k: v for k, v in DEFAULT_ARCHITECTURE.items() if k != "stem_layers"}
    model = build_model(DEFAULT_ARCHITECTURE, len(vocab), len(classes)).eval()
    save_verifier(model, {**base, "architecture": old}, tmp_path / "old")
    loaded, config = load_verifier(tmp_path / "old")
    assert config["architecture"] == DEFAULT_ARCHITECTURE and DEFAULT_ARCHITECTURE["stem_layers"] == 1
    # A deep config over one-layer weights, or a stem_layers out of bounds, is refused.
    (tmp_path / "old" / "verifier.json").write_text(json.dumps({**base, "architecture": deep}))
    with pytest.raises(ModelDirError, match="do not match"):
        load_verifier(tmp_path / "old")
    (tmp_path / "old" / "verifier.json").write_text(
        json.dumps({**base, "architecture": dict(deep, stem_layers=0)})
    )
    with pytest.raises(ModelDirError, match="architecture.stem_layers"):
        load_verifier(tmp_path / "old")


def test_train_verifier_cli_mirror(cli, generated, tmp_path):
    res = cli("train-verifier", "-o", tmp_path / "v", "--steps", "2", "--batch-size", "4", "--renders", "0",
              "--samples", generated, "--heldout", "0.5", "--seed", "1", "--mirror", "--json")  # fmt: skip
    assert res.code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["mirror"] is True and summary["sample_images"]["train"] > 12


def test_refer_targets_point_each_object_word_at_its_class():
    """The referred-class labels line up with the caption's words; colourless groups spread over colours."""
    import numpy as np

    from sanatool.judges.verifier import object_classes
    from sanatool.judges.verifier_data import Caption, refer_targets
    from sanatool.shapes import COLORS

    classes = object_classes()
    two = {"objects": [{"shape": "circle", "color": "red", "count": 2}, {"shape": "square", "color": "blue",
           "count": 1}], "relation": {"kind": "left_of", "a": 0, "b": 1}}  # fmt: skip
    plain = {"objects": [{"shape": "triangle", "color": None, "count": 1}]}
    captions = [
        Caption("two red circles left of a blue square", two, True),
        Caption("a photo of a triangle", plain, True),
        Caption("a red circle", two, False),  # two groups in the spec, one named: no labels
    ]
    targets, mask = refer_targets(captions, 9, classes)
    assert targets.shape == (3, 9, len(classes)) and mask.shape == (3, 9)
    np.testing.assert_allclose(targets.sum(-1), 1.0)
    picked = [classes[k] for k in targets[0].argmax(-1)]
    assert picked[:8] == ["background", "red circle", "red circle", "background", "background", "background",
                          "blue square", "blue square"]  # fmt: skip
    assert mask[0].tolist() == [1.0] * 8 + [0.0]
    triangle = targets[1, 4]
    assert triangle[0] == 0 and np.count_nonzero(triangle) == len(COLORS)
    assert all(targets[1, i, 0] == 1 for i in range(4))
    assert not mask[2].any()


def test_a_caption_and_its_mirror_share_the_split():
    """A mirrored training sample must never spell a validation caption: both sides follow one key."""
    from sanatool.judges.verifier_data import mirror_caption, split_key
    from sanatool.judges.verifier_train import _held_out
    from sanatool.shapes import training_captions

    pairs = [
        (item.prompt, made[0])
        for item in training_captions(400, seed=3)
        if (made := mirror_caption(item.prompt, item.spec)) is not None and made[0] != item.prompt
    ]
    assert len(pairs) >= 20
    for prompt, mirrored in pairs:
        assert split_key(prompt) == split_key(mirrored)
        assert _held_out(prompt, 0.5, 0) == _held_out(mirrored, 0.5, 0)
    assert split_key("A red circle, a blue square") == "a red circle, a blue square"


def test_score_reuses_a_given_reading_of_the_words():
    import torch

    from sanatool.judges.verifier import (
        DEFAULT_ARCHITECTURE,
        VerifierCodec,
        build_model,
        default_vocabulary,
        object_classes,
    )
    from sanatool.shapes import render_spec

    vocab, classes = default_vocabulary(), object_classes()
    codec = VerifierCodec(vocab, 32, 32)
    torch.manual_seed(0)
    model = build_model(DEFAULT_ARCHITECTURE, len(vocab), len(classes)).eval()
    pixels = codec.encode_images([render_spec({"objects": [{"shape": "circle", "color": "red"}]}, 32, 0)] * 2)
    ids = codec.encode_words(["a red circle", "two blue squares above a green triangle"])
    with torch.no_grad():
        maps = model.encode_image(pixels)
        words, refer = model.read_words(ids)
        assert refer.shape == (2, ids.shape[1], len(classes))
        assert torch.equal(model.score(maps, ids, (words, refer)), model.score(maps, ids))
        assert not torch.equal(model.score(maps, ids, (words, refer.flip(-1))), model.score(maps, ids))
