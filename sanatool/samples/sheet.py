"""The contact sheets of a samples dir: every prompt's candidates side by side, paged when many.

Each prompt is a group of its candidates in a row; groups fill a sheet row left to right
(``GRID_ROW_CELLS`` cells wide), ``GRID_PAGE_ROWS`` rows per sheet. The first sheet is
``grid.png``, the next ``grid-2.png``, ``grid-3.png`` …; small images (the shapes world's 32 px)
are enlarged without smoothing to at least ``GRID_CELL_MIN`` px so that a person can see them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

GRID_NAME = "grid.png"
#: Cells are between GRID_CELL_MIN and GRID_CELL_MAX px on their longer side.
GRID_CELL_MIN = 96
GRID_CELL_MAX = 256
#: A sheet row holds this many cells (whole prompts: at least one); a sheet this many rows.
GRID_ROW_CELLS = 16
GRID_PAGE_ROWS = 16
#: Candidates shown per prompt (a sheet row's width).
GRID_MAX_CANDIDATES = GRID_ROW_CELLS
_GAP = 2  # between the candidates of one prompt
_GROUP_GAP = 8  # between prompts, and the margin
_LABEL_H = 14  # the band under a group that holds its label
_PAGE = re.compile(r"grid-(\d+)\.png")


def grid_page_name(page: int) -> str:
    """``grid.png`` for the first sheet (page 0), ``grid-2.png`` for the second, …"""
    return GRID_NAME if page == 0 else f"grid-{page + 1}.png"


def write_contact_sheet(
    root: Path, records: Sequence[dict[str, Any]], path: Path, labels: Mapping[int, str] | None = None
) -> list[Path]:
    """Draw the sheets of every prompt × candidate in ``records`` (images under ``root``); return them.

    ``path`` is the first sheet; later ones are its ``grid-N.png`` siblings, and sheets of an
    earlier, longer run beside it are removed. ``labels`` (by prompt index): a line of text under
    each prompt's group, cut to its width.
    """
    from PIL import Image, ImageDraw

    prompts = sorted({int(r["prompt_index"]) for r in records})
    candidates = sorted({int(r["candidate"]) for r in records})[:GRID_MAX_CANDIDATES]
    for stale in path.parent.glob("grid-*.png"):
        if _PAGE.fullmatch(stale.name):
            stale.unlink()
    if not prompts:
        return []
    first = records[0]
    if "height" in first and "width" in first:
        height, width = int(first["height"]), int(first["width"])
    else:  # a samples dir made elsewhere: its manifest need not say; the image does
        with Image.open(root / first["path"]) as image:
            width, height = image.size
    scale = min(GRID_CELL_MAX, max(GRID_CELL_MIN, height, width)) / max(height, width)
    cell_h, cell_w = max(1, round(height * scale)), max(1, round(width * scale))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
    group_w = len(candidates) * cell_w + (len(candidates) - 1) * _GAP
    per_row = max(1, GRID_ROW_CELLS // len(candidates))
    per_page = per_row * GRID_PAGE_ROWS
    by_key = {(int(r["prompt_index"]), int(r["candidate"])): r for r in records}
    col_of = {c: i for i, c in enumerate(candidates)}
    row_h = cell_h + (_LABEL_H if labels else 0)

    written = []
    for page, start in enumerate(range(0, len(prompts), per_page)):
        chunk = prompts[start : start + per_page]
        cols, rows = min(per_row, len(chunk)), -(-len(chunk) // per_row)
        sheet = Image.new(
            "RGB",
            (_GROUP_GAP + cols * (group_w + _GROUP_GAP), _GROUP_GAP + rows * (row_h + _GROUP_GAP)),
            (255, 255, 255),
        )
        draw = ImageDraw.Draw(sheet)
        for slot, prompt in enumerate(chunk):
            x0 = _GROUP_GAP + (slot % per_row) * (group_w + _GROUP_GAP)
            y0 = _GROUP_GAP + (slot // per_row) * (row_h + _GROUP_GAP)
            if labels and prompt in labels:
                draw.text((x0, y0 + cell_h + 1), _fit(draw, labels[prompt], group_w), fill=(0, 0, 0))
            for candidate, col in col_of.items():
                record = by_key.get((prompt, candidate))
                if record is None:
                    continue
                with Image.open(root / record["path"]) as image:
                    cell = image.convert("RGB")
                    if cell.size != (cell_w, cell_h):
                        cell = cell.resize((cell_w, cell_h), resample)
                    sheet.paste(cell, (x0 + col * (cell_w + _GAP), y0))
        target = path if page == 0 else path.with_name(grid_page_name(page))
        sheet.save(target, format="PNG")
        written.append(target)
    return written


def _fit(draw: Any, text: str, width: int) -> str:
    """``text`` on one line, cut with an ellipsis to fit ``width`` pixels in the default font."""
    text = " ".join(text.split())
    if draw.textlength(text) <= width:
        return text
    while text and draw.textlength(text + "…") > width:
        text = text[:-1]
    return text + "…"
