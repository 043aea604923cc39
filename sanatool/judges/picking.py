"""``judge``: read a samples dir, judge every candidate, pick the best K per prompt, write the picks.

The output is itself a samples dir (the picked images, their manifest lines with ``score``,
``rank`` and ``judge`` added) plus ``scores.jsonl`` (every candidate's judgement and fate),
``judge.json`` (the judge, the mode, and the compute spent) and ``candidates.png`` (every
candidate with its score, the picks framed), so ``sanatool eval OUT`` measures
the picks. Everything is validated before the judge is loaded; bad input writes nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sanatool.errors import InputError
from sanatool.io.manifest import MANIFEST_NAME, read_manifest, write_manifest
from sanatool.io.outputs import atomic_output_dir, check_output_path, link_or_copy
from sanatool.judges.base import Judge, Judgement
from sanatool.judges.registry import JudgeSpec, load_judge, parse_judge_spec
from sanatool.judges.tournament import MODES, Selection, select
from sanatool.progress import ProgressFn, no_progress
from sanatool.samples.geneval import metadata_files
from sanatool.samples.sheet import GRID_NAME, write_contact_sheet

SCORES_NAME = "scores.jsonl"
SUMMARY_NAME = "judge.json"
#: Every candidate of the source with the judge's score, the picks framed (beside the picks' grid.png).
CANDIDATES_SHEET_NAME = "candidates.png"
ORACLE_NOTE = (
    "oracle: the shapes judge is the rule-based evaluator that `sanatool eval` measures with, "
    "so its picks are an upper bound for best-of-N, not a fair judge"
)


@dataclass
class PromptGroup:
    """One prompt's candidates (manifest records), in candidate order."""

    key: int | str
    records: list[dict[str, Any]]


@dataclass
class JudgeResult:
    """What ``judge`` did: where the picks are, and the compute it spent."""

    out: Path
    judge: dict[str, Any]
    mode: str
    pick: int
    prompts: int
    candidates: int
    judge_calls: int
    matches: int
    mean_picked_score: float

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` result (also written to ``judge.json``)."""
        row = {
            "out": str(self.out),
            "judge": self.judge,
            "mode": self.mode,
            "pick": self.pick,
            "prompts": self.prompts,
            "candidates": self.candidates,
            "judge_calls": self.judge_calls,
            "matches": self.matches,
            "mean_picked_score": round(self.mean_picked_score, 6),
        }
        if self.judge.get("oracle"):
            row["note"] = ORACLE_NOTE
        return row


def group_by_prompt(records: Sequence[dict[str, Any]]) -> list[PromptGroup]:
    """Group manifest records by ``prompt_index`` (by prompt text where it is missing), candidates in order."""
    groups: dict[int | str, list[dict[str, Any]]] = {}
    for record in records:
        index = record.get("prompt_index")
        key: int | str = index if isinstance(index, int) and not isinstance(index, bool) else record["prompt"]
        groups.setdefault(key, []).append(record)
    out = []
    for key, rows in groups.items():
        rows.sort(
            key=lambda r: (r.get("candidate") if isinstance(r.get("candidate"), int) else 0, r["_line"])
        )
        out.append(PromptGroup(key, rows))
    return out


def _check_images(root: Path, records: Sequence[dict[str, Any]]) -> None:
    from sanatool.io.images import UnreadableImage, open_image

    bad: list[str] = []
    for record in records:
        path = root / record["path"]
        if not path.is_file():
            bad.append(f"{MANIFEST_NAME}:{record['_line']}: {record['path']} is missing")
            continue
        try:
            with open_image(path) as image:
                image.verify()
        except UnreadableImage as err:
            bad.append(f"{MANIFEST_NAME}:{record['_line']}: {record['path']} {err.reason}")
        except (OSError, SyntaxError) as err:
            bad.append(f"{MANIFEST_NAME}:{record['_line']}: {record['path']} is not a readable image ({err})")
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise InputError(f"{root}: {bad[0]}{more}; regenerate the samples dir with `sanatool sample`")


def load_samples(samples_dir: str | os.PathLike, needs_spec: bool = False) -> list[PromptGroup]:
    """Read and validate a samples dir for judging: every line usable, every image readable.

    With ``needs_spec``, every line must carry a valid shapes ``spec``. Raises
    :class:`InputError` naming the first bad line.
    """
    from sanatool.shapes import validate_spec

    root = Path(samples_dir)
    records, problems = read_manifest(root)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise InputError(f"{root}: {problems[0]}{more}; fix or remove the line")
    if not records:
        raise InputError(f"{root}: {MANIFEST_NAME} lists no images")
    if needs_spec:
        for record in records:
            if record.get("spec") is None:
                raise InputError(
                    f"{root}: {MANIFEST_NAME}:{record['_line']} has no spec, which the shapes judge needs; "
                    "sample from a prompts .jsonl with specs (e.g. `sanatool eval --export-suite`)"
                )
            validate_spec(record["spec"], where=f"{root}: {MANIFEST_NAME}:{record['_line']}: spec")
    _check_images(root, records)
    return group_by_prompt(records)


def judge_records(
    judge: Judge,
    root: str | os.PathLike,
    records: Sequence[dict[str, Any]],
    batch_size: int = 16,
    progress: ProgressFn = no_progress,
) -> list[Judgement]:
    """Judge each record's image against its prompt (and spec), in batches."""
    from sanatool.io.images import load_image

    out: list[Judgement] = []
    progress("judge", 0, len(records))
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        images = []
        for record in batch:
            images.append(load_image(Path(root) / record["path"]))
        out += judge.judge(images, [r["prompt"] for r in batch], [r.get("spec") for r in batch])
        progress("judge", len(out), len(records))
    return out


def _score_rows(
    group: PromptGroup, judgements: Sequence[Judgement], selection: Selection, label: str
) -> list[dict[str, Any]]:
    ranks = {position: rank for rank, position in enumerate(selection.picked, start=1)}
    rows = []
    for position, (record, judgement) in enumerate(zip(group.records, judgements, strict=True)):
        row: dict[str, Any] = {
            "prompt_index": record.get("prompt_index"),
            "prompt": record["prompt"],
            "candidate": record.get("candidate", position),
            "path": record["path"],
            "judge": label,
            **judgement.to_json(),
            "picked": position in ranks,
            "rank": ranks.get(position),
        }
        if position in selection.eliminated:
            round_number, winner = selection.eliminated[position]
            row["lost_in_round"] = round_number
            row["lost_to"] = group.records[winner].get("candidate", winner)
        rows.append(row)
    return rows


def judge_samples_dir(
    samples_dir: str | os.PathLike,
    out: str | os.PathLike,
    judge: str | JudgeSpec | Judge,
    pick: int = 1,
    mode: str = "score",
    batch_size: int = 16,
    device: str = "cpu",
    template: str | None = None,
    force: bool = False,
    progress: ProgressFn = no_progress,
) -> JudgeResult:
    """Pick the best ``pick`` candidates per prompt of a samples dir with a judge; write them to ``out``.

    ``mode`` ``score`` (the default) keeps the ``pick`` highest-scored candidates; ``tournament``
    plays SANA 1.5's knockout. Both judge each candidate once; for a judge whose preference
    follows its score (the shapes oracle, the verifier, CLIP) they pick the same one at
    ``pick`` = 1, and at ``pick`` > 1 the tournament keeps bracket winners, not the top ``pick``.

    ``judge`` is a ``--judge`` spec (``shapes``, ``clip:PATH``, ``vlm:PATH``, ``verifier:PATH``)
    or a loaded :class:`Judge`. Validates everything (mode, K, batch size, the judge spec, the
    manifest, every image, the output path) before loading the judge (or torch: ``device`` may be
    ``auto``, resolved only then).
    """
    from sanatool.judges.vlm import check_template

    if mode not in MODES:
        raise InputError(f"unknown --mode {mode!r}; choose one of {', '.join(MODES)}")
    if isinstance(pick, bool) or not isinstance(pick, int) or pick < 1:
        raise InputError(f"--pick must be a positive integer, got {pick!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"--batch-size must be a positive integer, got {batch_size!r}")
    if template is not None:
        check_template(template)
    spec = judge if isinstance(judge, (JudgeSpec, Judge)) else parse_judge_spec(judge)
    root = Path(samples_dir)
    groups = load_samples(root, needs_spec=spec.needs_spec)
    smallest = min(groups, key=lambda g: len(g.records))
    if pick > len(smallest.records):
        raise InputError(
            f"--pick {pick} exceeds the {len(smallest.records)} candidate(s) of prompt "
            f"{smallest.records[0]['prompt']!r}; pick at most {len(smallest.records)}"
        )
    check_output_path(out, force, inputs=[root])

    if not isinstance(spec, Judge):
        from sanatool.distributed import resolve_device

        device = str(resolve_device(device))  # `auto` is resolved only now: it imports torch
    loaded = spec if isinstance(spec, Judge) else load_judge(spec, device=device, template=template)
    label = loaded.label
    records = [record for group in groups for record in group.records]
    calls_before = loaded.calls
    judgements = judge_records(loaded, root, records, batch_size, progress)

    picked_records: list[dict[str, Any]] = []
    score_rows: list[dict[str, Any]] = []
    matches = 0
    offset = 0
    for group in groups:
        mine = judgements[offset : offset + len(group.records)]
        offset += len(group.records)
        selection = select(mine, pick, mode)
        matches += selection.matches
        for rank, position in enumerate(selection.picked, start=1):
            record = dict(group.records[position])
            record.update(score=round(mine[position].score, 6), rank=rank, judge=label)
            picked_records.append(record)
        score_rows += _score_rows(group, mine, selection, label)

    result = JudgeResult(
        out=Path(out).expanduser().resolve(),
        judge=loaded.describe(),
        mode=mode,
        pick=pick,
        prompts=len(groups),
        candidates=len(records),
        judge_calls=loaded.calls - calls_before,
        matches=matches,
        mean_picked_score=sum(r["score"] for r in picked_records) / len(picked_records),
    )
    with atomic_output_dir(out, force=force, inputs=[root]) as tmp:
        for record in picked_records:
            link_or_copy(root / record["path"], tmp / record["path"])
        # Picks from a GenEval layout stay one: GenEval's reader needs each prompt folder's metadata.
        for relpath in metadata_files(root, [record["path"] for record in picked_records]):
            link_or_copy(root / relpath, tmp / relpath)
        write_manifest(tmp / MANIFEST_NAME, picked_records)
        write_contact_sheet(tmp, picked_records, tmp / GRID_NAME)
        # score_rows follow `records`, one per candidate: what the judge chose among, drawn from the source.
        judged = [{**record, **row} for record, row in zip(records, score_rows, strict=True)]
        write_contact_sheet(root, judged, tmp / CANDIDATES_SHEET_NAME)
        with open(tmp / SCORES_NAME, "w", encoding="utf-8") as handle:
            for row in score_rows:
                handle.write(json.dumps(row) + "\n")
        summary = {**result.to_json(), "source": str(root.resolve())}
        summary.pop("out")
        (tmp / SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return result
