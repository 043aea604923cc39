"""Provenance: ``sanatool.json`` in every output, the chain of commands that made a model."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sanatool import __version__
from sanatool.arch import TRANSFORMER_CLASS

if TYPE_CHECKING:
    from sanatool.io.modeldir import ModelDir

PROVENANCE_NAME = "sanatool.json"


def chain_summary(provenance: dict[str, Any], fallback_origin: str = "") -> str:
    """One line for a model's history, e.g. ``sana1.5-1.6b → grow(24, partial) → prune(keep 20)``."""
    parts = [str(provenance.get("origin") or fallback_origin or "unknown")]
    parts += [
        str(step.get("summary", step.get("command", "?")))
        for step in provenance.get("chain", [])
        if step.get("command") != "init"
    ]
    return " → ".join(parts)


def write_provenance(
    out_root: Path,
    parent: ModelDir | None,
    command: str,
    args: dict[str, Any],
    summary: str,
    fingerprint: str,
    origin: str | None = None,
) -> dict[str, Any]:
    """Write ``sanatool.json`` into an output: the parent's chain plus this step, and a model card."""
    previous = parent.provenance if parent else {}
    chain = list(previous.get("chain", []))
    chain.append(
        {
            "command": command,
            "args": args,
            "summary": summary,
            "parent_fingerprint": parent.fingerprint() if parent else None,
            "fingerprint": fingerprint,
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "sanatool_version": __version__,
        }
    )
    record = {
        "format": "sanatool-provenance/1",
        "origin": previous.get("origin") or origin or (parent.name if parent else command),
        "chain": chain,
    }
    record["model_card"] = f"A {TRANSFORMER_CLASS} made with sanatool: {chain_summary(record)}."
    (out_root / PROVENANCE_NAME).write_text(json.dumps(record, indent=2) + "\n")
    return record
