"""Contact sheets: every prompt shown, labelled, paged, at a size a person can see; picks and verdicts marked."""

from __future__ import annotations

import json

from PIL import Image

from sanatool.samples.sheet import (
    FAIL_COLOUR,
    GRID_CELL_MIN,
    LINE_HEIGHT,
    PASS_COLOUR,
    PICK_COLOUR,
    PICK_WIDTH,
    Verdict,
    _fit,
    _font,
    prompt_lines,
    write_contact_sheet,
)

MARGIN, GAP = 12, 2 * PICK_WIDTH + 2  # between groups (and the margin); between candidates


def _records(root, prompts: int, candidates: int, text=lambda p: f"prompt {p}") -> list[dict]:
    (root / "images").mkdir()
    records = []
    for p in range(prompts):
        for c in range(candidates):
            path = f"images/p{p:05d}_c{c:03d}.png"
            # Each image one flat colour that encodes its prompt and candidate.
            Image.new("RGB", (32, 32), (p, 10 * c, 200)).save(root / path)
            records.append(
                {
                    "prompt_index": p,
                    "candidate": c,
                    "path": path,
                    "height": 32,
                    "width": 32,
                    "prompt": text(p),
                }
            )
    return records


def _width(candidates: int, cell: int = GRID_CELL_MIN) -> int:
    return candidates * cell + (candidates - 1) * GAP


def _header(group_w: int) -> int:
    return prompt_lines(group_w) * LINE_HEIGHT + 2


def _group_h(caption_lines: int, group_w: int, cell: int = GRID_CELL_MIN) -> int:
    return _header(group_w) + 2 * PICK_WIDTH + cell + caption_lines * LINE_HEIGHT + 2


def _cell_origin(
    slot_x: int, slot_y: int, col: int, candidates: int, caption_lines: int = 1
) -> tuple[int, int]:
    """Top-left pixel of a cell's image: group slot (x, y) on the sheet, candidate column."""
    group_w = _width(candidates)
    x = MARGIN + slot_x * (group_w + MARGIN) + col * (GRID_CELL_MIN + GAP)
    y = MARGIN + slot_y * (_group_h(caption_lines, group_w) + MARGIN) + _header(group_w) + PICK_WIDTH
    return x, y


def test_every_prompt_is_on_a_sheet_enlarged_and_paged(tmp_path):
    records = _records(tmp_path, prompts=70, candidates=4)
    (tmp_path / "grid-3.png").write_bytes(b"stale")  # a page of an earlier, longer run
    pages = write_contact_sheet(tmp_path, records, tmp_path / "grid.png")
    # 4 candidates: 4 prompts per 16-cell row, 16 rows: 64 prompts on the first sheet, 6 on the second.
    assert [p.name for p in pages] == ["grid.png", "grid-2.png"]
    assert not (tmp_path / "grid-3.png").exists() and not list(tmp_path.glob(".*"))
    first, second = (Image.open(p).convert("RGB") for p in pages)
    group = _width(4)
    assert prompt_lines(group) == 2  # wide groups: two lines of prompt
    assert first.size == (MARGIN + 4 * (group + MARGIN), MARGIN + 16 * (_group_h(1, group) + MARGIN))
    assert second.size == (MARGIN + 4 * (group + MARGIN), MARGIN + 2 * (_group_h(1, group) + MARGIN))
    # Prompt 63 is the last group of the first sheet; prompt 69 the second group of the second's row 2.
    x, y = _cell_origin(3, 15, 3, 4)
    assert first.getpixel((x + 5, y + 5)) == (63, 30, 200)
    x, y = _cell_origin(1, 1, 0, 4)
    assert (
        second.getpixel((x, y))
        == second.getpixel((x + GRID_CELL_MIN - 1, y + GRID_CELL_MIN - 1))
        == (69, 0, 200)
    )
    assert second.getpixel((x - 1, y)) == (255, 255, 255)  # no frame: nothing was picked


def test_one_candidate_per_prompt_fills_rows(tmp_path):
    records = _records(tmp_path, prompts=180, candidates=1)
    pages = write_contact_sheet(tmp_path, records, tmp_path / "grid.png")
    assert len(pages) == 1
    sheet = Image.open(pages[0]).convert("RGB")
    assert sheet.size == (
        MARGIN + 16 * (GRID_CELL_MIN + MARGIN),
        MARGIN + 12 * (_group_h(1, GRID_CELL_MIN) + MARGIN),
    )  # 11 rows + 4
    x, y = _cell_origin(3, 11, 0, 1)
    assert sheet.getpixel((x + 1, y + 1)) == (179, 0, 200)


def _dark(sheet, box) -> int:
    """How many pixels in ``box`` are text-dark."""
    region = sheet.crop(box).convert("L")
    return sum(1 for value in region.getdata() if value < 128)


def _coloured(sheet, box, colour) -> int:
    region = sheet.crop(box).convert("RGB")
    return sum(
        1 for pixel in region.getdata() if max(abs(a - b) for a, b in zip(pixel, colour, strict=True)) < 60
    )


def test_labels_picks_and_verdicts_are_drawn_where_they_belong(tmp_path):
    texts = ["[bold]x[/] a red circle", "", "a " + "verylongword" * 8 + " and more words " * 20]
    records = _records(tmp_path, prompts=3, candidates=3, text=lambda p: texts[p])
    for record in records:
        record.update(seed=7, score=0.5, picked=record["candidate"] == record["prompt_index"])
    verdicts = {r["path"]: Verdict(r["candidate"] != 2, 0.5) for r in records if r["prompt_index"] == 0}
    (page,) = write_contact_sheet(tmp_path, records, tmp_path / "candidates.png", verdicts)
    sheet = Image.open(page).convert("RGB")
    captions = 3  # the candidate, the judge's score, the verdict
    group = _width(3)
    assert sheet.size == (MARGIN + 3 * (group + MARGIN), MARGIN + _group_h(captions, group) + MARGIN)

    for prompt in range(3):
        left = MARGIN + prompt * (group + MARGIN)
        # Drawn as text: the markup-like prompt as it is, the empty one as "1: ", the long one cut.
        assert _dark(sheet, (left, MARGIN, left + group, MARGIN + _header(group))) > 5
        for candidate in range(3):
            x, y = _cell_origin(prompt, 0, candidate, 3, captions)
            assert sheet.getpixel((x + 5, y + 5)) == (
                prompt,
                10 * candidate,
                200,
            )  # the frame is outside the image
            frame = sheet.getpixel((x - 2, y + GRID_CELL_MIN // 2))
            assert (frame == PICK_COLOUR) == (candidate == prompt), (prompt, candidate, frame)
            assert (sheet.getpixel((x + GRID_CELL_MIN // 2, y + GRID_CELL_MIN + 1)) == PICK_COLOUR) == (
                candidate == prompt
            )
            below = y + GRID_CELL_MIN + PICK_WIDTH + 1
            verdict_line = (x, below + 2 * LINE_HEIGHT, x + GRID_CELL_MIN, below + 3 * LINE_HEIGHT)
            greens, reds = (
                _coloured(sheet, verdict_line, PASS_COLOUR),
                _coloured(sheet, verdict_line, FAIL_COLOUR),
            )
            if prompt != 0:
                assert greens == reds == 0  # no verdict known
            elif candidate == 2:
                assert reds > 10 and greens == 0
            else:
                assert greens > 10 and reds == 0  # fmt: skip


def test_text_is_wrapped_to_the_width_and_cut_with_an_ellipsis():
    font = _font()
    # The longest shapes prompt with its index fits a one-candidate group.
    longest = "299: a photo of a yellow triangle to the left of a yellow square"  # eval_suite_v1
    assert not _fit(longest, GRID_CELL_MIN, prompt_lines(GRID_CELL_MIN))[-1].endswith("…")
    lines = _fit("a photo of three yellow squares above a " + "x" * 60, 96, 3)
    assert len(lines) == 3 and lines[-1].endswith("…")
    assert all(font.getlength(line) <= 96 for line in lines)
    assert _fit("a cat", 96, 3) == ["a cat"] and _fit("", 96, 3) == []
    assert _fit("[bold]x[/]", 96, 1) == ["[bold]x[/]"]


def test_sheet_of_a_foreign_manifest_and_unreadable_images(tmp_path):
    """No prompt_index, candidate or size in the manifest; one image broken: drawn, not a crash."""
    (tmp_path / "a.png").write_bytes(b"not a png")
    Image.new("RGB", (48, 64), (1, 2, 3)).save(tmp_path / "b.png")
    records = [
        {"prompt": "p", "path": "a.png"},
        {"prompt": "p", "path": "b.png"},
        {"prompt": "q", "path": "b.png"},
    ]
    (page,) = write_contact_sheet(tmp_path, records, tmp_path / "grid.png")
    sheet = Image.open(page).convert("RGB")
    cell_w, cell_h = 72, 96  # 48 x 64 enlarged to 96 px on its longer side
    group = _width(2, cell_w)
    assert sheet.size == (MARGIN + 2 * (group + MARGIN), MARGIN + _group_h(1, group, cell_h) + MARGIN)
    y = MARGIN + _header(group) + PICK_WIDTH
    assert sheet.getpixel((MARGIN + cell_w + GAP + 5, y + 5)) == (1, 2, 3)  # prompt p, candidate 1
    assert sheet.getpixel((MARGIN + group + MARGIN + 5, y + 5)) == (1, 2, 3)  # prompt q
    assert sheet.getpixel((MARGIN + cell_w - 2, y + cell_h - 2)) == (225, 225, 225)  # the unreadable one


def test_eval_redraws_the_grid_with_its_verdicts(tmp_path):
    """`eval` marks each scored image: a green check where every clause holds, a red cross where not."""
    from sanatool.samples.evaluate import evaluate_samples_dir, write_verdict_sheet
    from sanatool.shapes import render_spec

    spec = {"objects": [{"shape": "circle", "color": "red", "count": 1}]}
    (tmp_path / "images").mkdir()
    rows = []
    for candidate, image in enumerate([render_spec(spec, 32, seed=0), Image.new("RGB", (32, 32), "white")]):
        path = f"images/p00000_c{candidate:03d}.png"
        image.save(tmp_path / path)
        rows.append(
            {"prompt": "a red circle", "prompt_index": 0, "candidate": candidate, "path": path, "spec": spec}
        )
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = evaluate_samples_dir(tmp_path)
    assert [image.correct for image in report.images] == [True, False]
    (page,) = write_verdict_sheet(report)
    sheet = Image.open(page).convert("RGB")
    for candidate, colour in ((0, PASS_COLOUR), (1, FAIL_COLOUR)):
        x, y = _cell_origin(0, 0, candidate, 2, 2)
        line = (
            x,
            y + GRID_CELL_MIN + PICK_WIDTH + 1 + LINE_HEIGHT,
            x + GRID_CELL_MIN,
            y + GRID_CELL_MIN + 40,
        )
        assert _coloured(sheet, line, colour) > 10


def test_judge_draws_every_candidate_with_its_pick_framed(tmp_path):
    """`judge` writes candidates.png: all candidates of the source, the judge's score under each, picks framed."""
    from sanatool.io.manifest import write_manifest
    from sanatool.judges.picking import CANDIDATES_SHEET_NAME, judge_samples_dir
    from sanatool.shapes import render_spec

    spec = {"objects": [{"shape": "circle", "color": "red", "count": 1}]}
    wrong = {"objects": [{"shape": "square", "color": "blue", "count": 1}]}
    samples = tmp_path / "samples"
    (samples / "images").mkdir(parents=True)
    correct = {0: 2, 1: 0}
    rows = []
    for p in range(2):
        for c in range(3):
            path = f"images/p{p:05d}_c{c:03d}.png"
            render_spec(spec if c == correct[p] else wrong, 32, seed=c).save(samples / path)
            rows.append(
                {"prompt": "a red circle", "prompt_index": p, "candidate": c, "path": path, "spec": spec}
            )
    write_manifest(samples / "manifest.jsonl", rows)
    judge_samples_dir(samples, tmp_path / "picks", judge="shapes", pick=1)

    sheet = Image.open(tmp_path / "picks" / CANDIDATES_SHEET_NAME).convert("RGB")
    for p in range(2):
        for c in range(3):
            x, y = _cell_origin(p, 0, c, 3, caption_lines=2)
            framed = sheet.getpixel((x - 2, y + GRID_CELL_MIN // 2)) == PICK_COLOUR
            assert framed == (c == correct[p]), (p, c)
    # The picks' own grid shows the picks alone, each framed: the judge ranked them.
    grid = Image.open(tmp_path / "picks" / "grid.png").convert("RGB")
    x, y = _cell_origin(1, 0, 0, 1, caption_lines=2)
    assert grid.getpixel((x - 2, y + 5)) == PICK_COLOUR
