"""The contact sheet of a samples dir: prompts (rows) × candidates (columns) in one PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

GRID_NAME = "grid.png"
#: The contact sheet shows at most this many prompts × candidates, each cell at most GRID_CELL px.
GRID_MAX_ROWS = 32
GRID_MAX_COLS = 16
GRID_CELL = 256


def write_contact_sheet(root: Path, records: Sequence[dict[str, Any]], path: Path) -> None:
    """A grid of prompts (rows) × candidates (columns), at most 32 × 16 cells of at most 256 px."""
    from PIL import Image

    rows = sorted({int(r["prompt_index"]) for r in records})[:GRID_MAX_ROWS]
    cols = sorted({int(r["candidate"]) for r in records})[:GRID_MAX_COLS]
    if not rows:
        return
    first = records[0]
    scale = min(1.0, GRID_CELL / max(int(first["height"]), int(first["width"])))
    cell_h, cell_w = max(1, round(int(first["height"]) * scale)), max(1, round(int(first["width"]) * scale))
    gap = 2
    sheet = Image.new(
        "RGB", (len(cols) * (cell_w + gap) + gap, len(rows) * (cell_h + gap) + gap), (255, 255, 255)
    )
    row_of = {p: i for i, p in enumerate(rows)}
    col_of = {c: i for i, c in enumerate(cols)}
    for record in records:
        p, c = int(record["prompt_index"]), int(record["candidate"])
        if p not in row_of or c not in col_of:
            continue
        with Image.open(root / record["path"]) as image:
            cell = image.convert("RGB")
            if cell.size != (cell_w, cell_h):
                cell = cell.resize((cell_w, cell_h), Image.Resampling.LANCZOS)
            sheet.paste(cell, (gap + col_of[c] * (cell_w + gap), gap + row_of[p] * (cell_h + gap)))
    sheet.save(path, format="PNG")
