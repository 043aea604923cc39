"""Contact sheets: every prompt shown, paged, at a size a person can see."""

from __future__ import annotations

from PIL import Image

from sanatool.samples.sheet import GRID_CELL_MIN, write_contact_sheet


def _records(root, prompts: int, candidates: int) -> list[dict]:
    (root / "images").mkdir()
    records = []
    for p in range(prompts):
        for c in range(candidates):
            path = f"images/p{p:05d}_c{c:03d}.png"
            # Each image one flat colour that encodes its prompt and candidate.
            Image.new("RGB", (32, 32), (p, 10 * c, 200)).save(root / path)
            records.append({"prompt_index": p, "candidate": c, "path": path, "height": 32, "width": 32})
    return records


def test_every_prompt_is_on_a_sheet_enlarged_and_paged(tmp_path):
    records = _records(tmp_path, prompts=70, candidates=4)
    (tmp_path / "grid-3.png").write_bytes(b"stale")  # a page of an earlier, longer run
    pages = write_contact_sheet(tmp_path, records, tmp_path / "grid.png")
    # 4 candidates: 4 prompts per 16-cell row, 16 rows: 64 prompts on the first sheet, 6 on the second.
    assert [p.name for p in pages] == ["grid.png", "grid-2.png"]
    assert not (tmp_path / "grid-3.png").exists()
    first, second = (Image.open(p).convert("RGB") for p in pages)
    cell, group = GRID_CELL_MIN, 4 * GRID_CELL_MIN + 3 * 2
    assert first.size == (8 + 4 * (group + 8), 8 + 16 * (cell + 8))
    assert second.size == (8 + 4 * (group + 8), 8 + 2 * (cell + 8))
    # Prompt 63 is the last group of the first sheet; prompt 69 the second group of the second's row 2.
    assert first.getpixel((8 + 3 * (group + 8) + 3 * (cell + 2) + 5, 8 + 15 * (cell + 8) + 5)) == (
        63,
        30,
        200,
    )
    assert second.getpixel((8 + 1 * (group + 8) + 5, 8 + 1 * (cell + 8) + cell - 1)) == (69, 0, 200)


def test_one_candidate_per_prompt_fills_rows(tmp_path):
    records = _records(tmp_path, prompts=180, candidates=1)
    pages = write_contact_sheet(tmp_path, records, tmp_path / "grid.png")
    assert len(pages) == 1
    sheet = Image.open(pages[0]).convert("RGB")
    assert sheet.size == (8 + 16 * (GRID_CELL_MIN + 8), 8 + 12 * (GRID_CELL_MIN + 8))  # 180 = 11 rows + 4
    assert sheet.getpixel((8 + 3 * (GRID_CELL_MIN + 8) + 1, 8 + 11 * (GRID_CELL_MIN + 8) + 1)) == (
        179,
        0,
        200,
    )
