"""The contact sheets of a samples dir: every prompt's candidates side by side, labelled, paged when many.

Each prompt is a group: its index and text (wrapped, in as many lines as a narrow group needs for
a shapes-world prompt, cut with "…" past that) above its candidates in a row, in candidate order
(a judge's picks: the few it kept, side by side); under each candidate its number and seed, the
judge's score and pick rank when the record carries them (``score``, ``rank``), and the
evaluator's verdict when known (a green check or red cross with the graded score). A judge's pick
is framed in ``PICK_COLOUR``. Text is drawn by PIL as it is: a prompt is never read as markup.

Groups fill a sheet row left to right (``GRID_ROW_CELLS`` cells wide), ``GRID_PAGE_ROWS`` rows per
sheet. The first sheet is ``grid.png`` (or the name given), the next ``grid-2.png``, ``grid-3.png``
…; small images (the shapes world's 32 px) are enlarged without smoothing to at least
``GRID_CELL_MIN`` px so that a person can see them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
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
#: Lines of prompt text above a group (the narrower the group, the more); a longer prompt is cut with "…".
GRID_PROMPT_LINES = (2, 5)
#: The prompt text a group makes room for, in px of one line (a 70-character prompt, e.g. the
#: shapes world's longest with its index).
_PROMPT_PX = 460
FONT_SIZE = 11
LINE_HEIGHT = 14
PICK_COLOUR = (30, 100, 230)
PASS_COLOUR = (0, 140, 40)
FAIL_COLOUR = (210, 30, 30)
TEXT_COLOUR = (20, 20, 20)
MUTED_COLOUR = (110, 110, 110)
PICK_WIDTH = 3
_GAP = 2 * PICK_WIDTH + 2  # between the candidates of one prompt: room for two pick frames
_GROUP_GAP = 12  # between prompts, and the margin
_BACKGROUND = (255, 255, 255)


@dataclass(frozen=True)
class Verdict:
    """The evaluator's verdict on one image: every clause met or not, and the fraction met."""

    correct: bool
    score: float


def grid_page_name(page: int, first: str = GRID_NAME) -> str:
    """``grid.png`` for the first sheet (page 0), ``grid-2.png`` for the second, … (any ``first`` name)."""
    if page == 0:
        return first
    stem, dot, suffix = first.rpartition(".")
    return f"{stem}-{page + 1}.{suffix}" if dot else f"{first}-{page + 1}"


@lru_cache(maxsize=1)
def _font() -> Any:
    from PIL import ImageFont

    return ImageFont.load_default(size=FONT_SIZE)


@lru_cache(maxsize=8192)
def _word(word: str) -> tuple[Any, int]:
    """A word's mask and advance in px. Sheets repeat a few words thousands of times (prompts of
    one grammar, "judge", scores), and FreeType takes ~15 µs a glyph; a cached word is one paste."""
    from PIL import Image, ImageDraw

    font = _font()
    advance = round(font.getlength(word))
    _, _, right, bottom = font.getbbox(word)
    if right <= 0 or bottom <= 0:
        return None, advance
    mask = Image.new("L", (right, bottom), 0)
    ImageDraw.Draw(mask).text((0, 0), word, fill=255, font=font)
    return mask, advance


def _length(text: str) -> int:
    """Width of one line of ``text`` in px, as :func:`_draw_text` draws it."""
    words = text.split(" ")
    return sum(_word(word)[1] for word in words) + (len(words) - 1) * _word(" ")[1]


def _draw_text(sheet: Any, x: int, y: int, text: str, colour: tuple[int, int, int]) -> None:
    """Draw one line of ``text`` with its top-left at (x, y), word by word from the cache."""
    space = _word(" ")[1]
    for word in text.split(" "):
        mask, advance = _word(word)
        if mask is not None:
            sheet.paste(colour, (x, y, x + mask.width, y + mask.height), mask)
        x += advance + space


def _fit(text: str, width: float, lines: int) -> list[str]:
    """``text`` wrapped at spaces into at most ``lines`` lines of ``width`` px; the last cut with "…"."""
    words = text.split()
    out: list[str] = []
    current = ""
    while words and len(out) < lines:
        word = words[0]
        trial = f"{current} {word}" if current else word
        if _length(trial) <= width:
            current = trial
            words.pop(0)
        elif current:
            out.append(current)
            current = ""
        else:  # one word wider than the line: break it where it stops fitting
            cut = 1
            while cut < len(word) and _length(word[: cut + 1]) <= width:
                cut += 1
            out.append(word[:cut])
            words[0] = word[cut:]
    if current and len(out) < lines:
        out.append(current)
    if words and out:  # more text than room: end the last line with "…"
        last = out[-1]
        while last and _length(last + "…") > width:
            last = last[:-1]
        out[-1] = last.rstrip() + "…"
    return out


def _cut(text: str, width: float) -> str:
    """One line of ``text``, cut with "…" to ``width`` px."""
    return (_fit(text, width, 1) or [""])[0]


def _is_pick(record: dict[str, Any]) -> bool:
    """A judge's pick: marked ``picked`` (a candidates sheet), or ranked (a judge's output dir)."""
    picked = record.get("picked")
    return bool(picked) if picked is not None else isinstance(record.get("rank"), int)


def _draw_mark(draw: Any, x: int, y: int, correct: bool) -> None:
    """A check mark or a cross in a 9 px box (glyphs that the default font may lack)."""
    colour = PASS_COLOUR if correct else FAIL_COLOUR
    if correct:
        draw.line([(x, y + 5), (x + 3, y + 8), (x + 9, y + 1)], fill=colour, width=2)
    else:
        draw.line([(x + 1, y + 1), (x + 8, y + 8)], fill=colour, width=2)
        draw.line([(x + 1, y + 8), (x + 8, y + 1)], fill=colour, width=2)


def prompt_lines(group_width: int) -> int:
    """Lines of prompt text above a group ``group_width`` px wide."""
    fewest, most = GRID_PROMPT_LINES
    return min(most, max(fewest, -(-_PROMPT_PX // group_width)))


def _groups(records: Sequence[dict[str, Any]]) -> list[tuple[str, list[tuple[int, dict[str, Any]]]]]:
    """Each prompt's label and its (candidate number, record) pairs in candidate order; prompts in
    ``prompt_index`` order.

    A manifest made elsewhere may lack ``prompt_index`` (its prompts are grouped by text, in the
    order they come) or ``candidate`` (its images are numbered in the order they come).
    """
    groups: dict[Any, list[dict[str, Any]]] = {}
    for record in records:
        index = record.get("prompt_index")
        key = index if isinstance(index, int) and not isinstance(index, bool) else str(record.get("prompt"))
        groups.setdefault(key, []).append(record)
    ordered = sorted(groups.items(), key=lambda item: (0, item[0]) if isinstance(item[0], int) else (1, 0))
    out = []
    for key, rows in ordered:
        text = str(rows[0].get("prompt", ""))
        by_candidate: dict[int, dict[str, Any]] = {}
        for position, row in enumerate(rows):
            candidate = row.get("candidate")
            number = candidate if isinstance(candidate, int) and not isinstance(candidate, bool) else position
            by_candidate.setdefault(number, row)
        cells = sorted(by_candidate.items(), key=lambda cell: cell[0])[:GRID_MAX_CANDIDATES]
        out.append((f"{key}: {text}" if isinstance(key, int) else text, cells))
    return out


def _image_size(root: Path, records: Sequence[dict[str, Any]]) -> tuple[int, int]:
    """(height, width) of the images: the manifest's, else the first readable image's, else a cell's."""
    from sanatool.io.images import UnreadableImage, open_image

    first = records[0]
    if (
        _number(first.get("height"))
        and _number(first.get("width"))
        and min(first["height"], first["width"]) >= 1
    ):
        return int(first["height"]), int(first["width"])
    for record in records:  # a samples dir made elsewhere: its manifest need not say; the image does
        try:
            with open_image(root / record["path"]) as image:
                return image.size[1], image.size[0]
        except UnreadableImage:
            continue
    return GRID_CELL_MIN, GRID_CELL_MIN


def write_contact_sheet(
    root: Path,
    records: Sequence[dict[str, Any]],
    path: Path,
    verdicts: Mapping[str, Verdict] | None = None,
) -> list[Path]:
    """Draw the labelled sheets of every prompt × candidate in ``records`` (images under ``root``).

    ``verdicts`` maps an image's manifest ``path`` to the evaluator's verdict on it. ``path`` is
    the first sheet; later ones are its ``-N`` siblings, and sheets of an earlier, longer run
    beside it are removed. Returns the sheets written.
    """
    from PIL import Image, ImageDraw

    from sanatool.io.images import UnreadableImage, load_image

    verdicts = verdicts or {}
    stem, _, suffix = path.name.rpartition(".")
    page_pattern = re.compile(rf"{re.escape(stem)}-(\d+)\.{re.escape(suffix)}")
    for stale in path.parent.glob(f"{stem}-*.{suffix}"):
        if page_pattern.fullmatch(stale.name):
            stale.unlink()
    prompts = _groups(records)
    if not prompts:
        return []
    columns = max(len(cells) for _, cells in prompts)
    height, width = _image_size(root, records)
    scale = min(GRID_CELL_MAX, max(GRID_CELL_MIN, height, width)) / max(height, width)
    cell_h, cell_w = max(1, round(height * scale)), max(1, round(width * scale))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
    judged = any(_number(r.get("score")) for r in records)
    caption_lines = 1 + judged + any(r.get("path") in verdicts for r in records)

    group_w = columns * cell_w + (columns - 1) * _GAP
    lines = prompt_lines(group_w)
    header_h = lines * LINE_HEIGHT + 2
    caption_h = caption_lines * LINE_HEIGHT + 2
    group_h = header_h + PICK_WIDTH + cell_h + PICK_WIDTH + caption_h
    per_row = max(1, GRID_ROW_CELLS // columns)
    per_page = per_row * GRID_PAGE_ROWS

    written = []
    for page, start in enumerate(range(0, len(prompts), per_page)):
        chunk = prompts[start : start + per_page]
        cols, rows = min(per_row, len(chunk)), -(-len(chunk) // per_row)
        sheet = Image.new(
            "RGB",
            (_GROUP_GAP + cols * (group_w + _GROUP_GAP), _GROUP_GAP + rows * (group_h + _GROUP_GAP)),
            _BACKGROUND,
        )
        draw = ImageDraw.Draw(sheet)
        for slot, (label, cells) in enumerate(chunk):
            x0 = _GROUP_GAP + (slot % per_row) * (group_w + _GROUP_GAP)
            y0 = _GROUP_GAP + (slot // per_row) * (group_h + _GROUP_GAP)
            for line, text in enumerate(_fit(label, group_w, lines)):
                _draw_text(sheet, x0, y0 + line * LINE_HEIGHT, text, TEXT_COLOUR)
            cell_y = y0 + header_h + PICK_WIDTH
            for col, (candidate, record) in enumerate(cells):
                x = x0 + col * (cell_w + _GAP)
                try:
                    cell = load_image(root / record["path"])
                except UnreadableImage:  # `eval` draws its verdicts even where a line is unusable
                    draw.rectangle((x, cell_y, x + cell_w - 1, cell_y + cell_h - 1), fill=(225, 225, 225))
                    _draw_text(sheet, x + 4, cell_y + 4, "unreadable", FAIL_COLOUR)
                else:
                    if cell.size != (cell_w, cell_h):
                        cell = cell.resize((cell_w, cell_h), resample)
                    sheet.paste(cell, (x, cell_y))
                if _is_pick(record):
                    frame = (
                        x - PICK_WIDTH,
                        cell_y - PICK_WIDTH,
                        x + cell_w + PICK_WIDTH - 1,
                        cell_y + cell_h + PICK_WIDTH - 1,
                    )
                    draw.rectangle(frame, outline=PICK_COLOUR, width=PICK_WIDTH)
                caption_y = cell_y + cell_h + PICK_WIDTH + 1
                _draw_caption(
                    sheet, draw, record, candidate, verdicts.get(record["path"]), x, caption_y, cell_w
                )
        target = path if page == 0 else path.with_name(grid_page_name(page, path.name))
        tmp = target.with_name(f".{target.name}.tmp")
        # zlib level 1: a third faster than the default 6 on a sheet of 180 prompts, files ~1.5x larger
        sheet.save(tmp, format="PNG", compress_level=1)
        os.replace(tmp, target)  # a sheet redrawn in place (`eval`) is never left half-written
        written.append(target)
    return written


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _draw_caption(
    sheet: Any,
    draw: Any,
    record: dict[str, Any],
    candidate: int,
    verdict: Verdict | None,
    x: int,
    y: int,
    width: int,
) -> None:
    """Under a cell: the candidate (and its seed where it fits); the judge's score (and pick rank); the verdict."""
    head = f"#{candidate}"
    seeded = f"{head} seed {record.get('seed')}"
    # A seed cut short regenerates nothing: shown whole or not at all (the manifest has it).
    if record.get("seed") is not None and _length(seeded) <= width:
        head = seeded
    _draw_text(sheet, x, y, head, MUTED_COLOUR)
    y += LINE_HEIGHT
    score = record.get("score")
    if _number(score):
        rank = record.get("rank")
        text = f"judge {score:.3f}" + (f" pick {rank}" if _is_pick(record) and isinstance(rank, int) else "")
        _draw_text(sheet, x, y, _cut(text, width), PICK_COLOUR if _is_pick(record) else TEXT_COLOUR)
        y += LINE_HEIGHT
    if verdict is not None:
        _draw_mark(draw, x, y + 2, verdict.correct)
        colour = PASS_COLOUR if verdict.correct else FAIL_COLOUR
        _draw_text(sheet, x + 13, y, _cut(f"eval {verdict.score:.2f}", width - 13), colour)
