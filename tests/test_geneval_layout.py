"""`sample --layout geneval`: the folders GenEval's own reader scores, resume, and bad metadata files."""

from __future__ import annotations

import json
import os
import re

from PIL import Image

from sanatool.io.manifest import read_manifest

# Four lines of GenEval's prompts/evaluation_metadata.jsonl (djghosh13/geneval @ af4902f), one per
# shape of line: a plain include, color, position (which refers to clause 0), and an exclude.
METADATA = [
    {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
    {
        "tag": "color_attr",
        "include": [{"class": "bus", "count": 1, "color": "green"}, {"class": "microwave", "count": 1, "color": "purple"}],
        "prompt": "a photo of a green bus and a purple microwave",
    },
    {
        "tag": "position",
        "include": [{"class": "teddy bear", "count": 1}, {"class": "dog", "count": 1, "position": ["right of", 0]}],
        "prompt": "a photo of a dog right of a teddy bear",
    },
    {
        "tag": "counting",
        "include": [{"class": "clock", "count": 2}],
        "exclude": [{"class": "clock", "count": 3}],
        "prompt": "a photo of two clocks",
    },
]  # fmt: skip


def _metadata_file(path, rows=METADATA):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def geneval_reader(imagedir: str) -> list[tuple[str, dict]]:
    """The listing of GenEval's evaluation/evaluate_images.py ``main`` (@ af4902f, lines 263-274),
    with ``evaluate_image(imagepath, metadata)`` replaced by collecting its arguments."""
    full_results = []
    for subfolder in os.listdir(imagedir):
        folderpath = os.path.join(imagedir, subfolder)
        if not os.path.isdir(folderpath) or not subfolder.isdigit():
            continue
        with open(os.path.join(folderpath, "metadata.jsonl")) as fp:
            metadata = json.load(fp)
        for imagename in os.listdir(os.path.join(folderpath, "samples")):
            imagepath = os.path.join(folderpath, "samples", imagename)
            if not os.path.isfile(imagepath) or not re.match(r"\d+\.png", imagename):
                continue
            full_results.append((imagepath, metadata))
    return full_results


def test_geneval_layout_is_what_the_toolkit_reads_and_resumes(cli, tiny_pipeline, tmp_path):
    metadata = _metadata_file(tmp_path / "evaluation_metadata.jsonl")
    out = tmp_path / "outputs"
    args = ("sample", tiny_pipeline, "--layout", "geneval", "--prompts", metadata, "--steps", "2", "-o", out)
    res = cli(*args, "-n", "2")
    assert res.code == 0, res.stderr

    seen = geneval_reader(str(out))
    assert sorted(os.path.relpath(path, out) for path, _ in seen) == [
        f"{p:05d}/samples/{c:05d}.png" for p in range(4) for c in range(2)
    ]
    for path, line in seen:
        prompt_index = int(os.path.relpath(path, out)[:5])
        assert line == METADATA[prompt_index]  # the prompt's own line, every key kept
        assert line["tag"]  # the reader indexes metadata['tag'] for every image
        with Image.open(path) as image:
            assert image.size == (32, 32)
    # sanatool's own files sit beside the prompt folders, where the reader does not look; judge and
    # eval read the manifest, whose paths point into the prompt folders.
    assert sorted(p.name for p in out.iterdir() if not p.name.isdigit()) == ["grid.png", "manifest.jsonl"]
    records, problems = read_manifest(out)
    assert not problems and [r["path"] for r in records] == [
        f"{p:05d}/samples/{c:05d}.png" for p in range(4) for c in range(2)
    ]
    assert records[6]["category"] == "counting" and records[6]["exclude"] == METADATA[3]["exclude"]
    assert not any(p.name.startswith(".") for p in out.rglob("*"))

    # A judge's picks of it are a GenEval layout too: each picked prompt folder keeps its metadata.
    from sanatool.judges.base import Judge, Judgement
    from sanatool.judges.picking import judge_samples_dir

    class SecondCandidate(Judge):
        """Prefers every second image in manifest order: candidate 1 of each prompt."""

        kind = "stub"

        def _judge(self, images, prompts, specs):
            return [Judgement(score=float((self.calls + i) % 2)) for i in range(len(images))]

    judge_samples_dir(out, tmp_path / "picks", judge=SecondCandidate(), batch_size=3)
    picked = geneval_reader(str(tmp_path / "picks"))
    assert sorted(os.path.relpath(path, tmp_path / "picks") for path, _ in picked) == [
        f"{p:05d}/samples/00001.png" for p in range(4)
    ]
    assert all(line == METADATA[int(os.path.relpath(path, tmp_path / "picks")[:5])] for path, line in picked)

    # --resume keeps the images and adds a third candidate per prompt; fewer prompts drop folders.
    first = out / "00000" / "samples" / "00000.png"
    inode = first.stat().st_ino
    res = cli(*args, "-n", "3", "--resume")
    assert res.code == 0, res.stderr
    assert "keeping 8 of 12 images" in res.stderr and first.stat().st_ino == inode
    assert len(geneval_reader(str(out))) == 12
    _metadata_file(metadata, METADATA[:2])
    assert cli(*args, "-n", "3", "--resume").code == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000", "00001", "grid.png", "manifest.jsonl"]
    assert len(geneval_reader(str(out))) == 6

    # The default layout resumed from it keeps no GenEval folder behind.
    res = cli(*args[:2], *args[4:], "-n", "1", "--resume")
    assert res.code == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "images", "manifest.jsonl"]


def test_geneval_layout_refuses_what_the_toolkit_could_not_score(cli, tiny_pipeline, tmp_path):
    out = tmp_path / "outputs"
    base = ("sample", tiny_pipeline, "--layout", "geneval", "--steps", "2", "-o", out)
    bench = METADATA[0]
    cases = [
        (["--prompt", "a cat"], "pass --prompts evaluation_metadata.jsonl"),
        (["--prompt", "a cat", "--layout", "coco"], "unknown --layout 'coco'"),
        (["--prompts", tmp_path / "absent.jsonl"], "does not exist"),
        (["--prompts", _metadata_file(tmp_path / "plain.jsonl", [{"prompt": "a red circle"}])], ':1: a GenEval metadata line needs a "tag"'),
        (["--prompts", _metadata_file(tmp_path / "noinc.jsonl", [bench, {"tag": "x", "prompt": "y"}])], ':2: "include" must be a list'),
        (["--prompts", _metadata_file(tmp_path / "count.jsonl", [{**bench, "include": [{"class": "cow", "count": "1"}]}])], '"include"[0] needs a positive integer "count"'),
        (["--prompts", _metadata_file(tmp_path / "excl.jsonl", [{**bench, "exclude": [{"count": 3}]}])], '"exclude"[0] needs a "class"'),
        (["--prompts", _metadata_file(tmp_path / "noprompt.jsonl", [{"tag": "x", "include": []}])], 'non-empty "prompt"'),
    ]  # fmt: skip
    (tmp_path / "torn.jsonl").write_text(json.dumps(bench) + "\n{not json\n", encoding="utf-8")
    cases.append((["--prompts", tmp_path / "torn.jsonl"], "torn.jsonl:2: not valid JSON"))
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    cases.append((["--prompts", tmp_path / "empty.jsonl"], "holds no prompts"))
    for extra, message in cases:
        res = cli(*base, *extra)
        assert res.code == 2 and message in res.stderr, (extra, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1
        assert not out.exists() and not list(tmp_path.glob(".outputs*"))


def test_library_geneval_layout_needs_geneval_prompts(tiny_pipeline, tmp_path):
    import pytest

    from sanatool.errors import InputError
    from sanatool.io.prompts import PromptItem
    from sanatool.samples.writer import sample_to_dir

    with pytest.raises(InputError, match=r"prompt 0 \('a red circle'\).*needs a \"tag\""):
        sample_to_dir(tiny_pipeline, [PromptItem("a red circle")], tmp_path / "o", layout="geneval", steps=2)
    assert not (tmp_path / "o").exists()
