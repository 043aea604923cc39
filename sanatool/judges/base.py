"""What every judge shares: the judgement of one image, the preference order, the judge interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Judgement:
    """A judge's verdict on one image for its prompt.

    ``score`` is the judge's scalar (higher = better; what ``--mode score`` ranks by). Yes/no
    judges also give ``answer`` (True = yes) and the probabilities of the first answer token,
    ``p_yes`` and ``p_no``; score-only judges (CLIP) leave them ``None``.
    """

    score: float
    answer: bool | None = None
    p_yes: float | None = None
    p_no: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (absent fields omitted)."""
        row: dict[str, Any] = {"score": round(self.score, 6)}
        if self.answer is not None:
            row["answer"] = "yes" if self.answer else "no"
        if self.p_yes is not None:
            row["p_yes"] = round(self.p_yes, 6)
        if self.p_no is not None:
            row["p_no"] = round(self.p_no, 6)
        row.update(self.detail)
        return row


def preference_key(judgement: Judgement) -> tuple[float, ...]:
    """The order a tournament match uses: a larger key wins.

    As in SANA 1.5's picker: a yes beats a no; between two yeses the higher yes-probability
    wins; between two noes the lower no-probability wins. A score-only judge compares scores.
    Equal keys are a tie, which the caller breaks by candidate index.
    """
    if judgement.answer is None:
        return (judgement.score,)
    if judgement.answer:
        return (1.0, judgement.p_yes if judgement.p_yes is not None else judgement.score)
    return (0.0, -(judgement.p_no if judgement.p_no is not None else 1.0 - judgement.score))


class Judge(ABC):
    """A judge scores images against their prompts. Subclasses load their model in ``__init__``."""

    #: The ``--judge`` kind: shapes, clip, vlm, verifier.
    kind: str = ""
    #: True when the judge is the evaluation metric itself (its picks measure an upper bound).
    oracle: bool = False
    #: True when the judge needs each prompt's machine-readable ``spec`` (not only its text).
    needs_spec: bool = False

    def __init__(self) -> None:
        #: How many images this judge has scored (the compute a benchmark counts).
        self.calls = 0

    @property
    def label(self) -> str:
        """The name written into outputs; an oracle says so."""
        return f"{self.kind} (oracle)" if self.oracle else self.kind

    def describe(self) -> dict[str, Any]:
        """What the outputs record about the judge."""
        return {"kind": self.kind, "label": self.label, "oracle": self.oracle}

    def judge(
        self, images: Sequence[Any], prompts: Sequence[str], specs: Sequence[dict[str, Any] | None]
    ) -> list[Judgement]:
        """Judge a batch: ``images[i]`` (PIL RGB) against ``prompts[i]`` (and ``specs[i]`` when known)."""
        if not len(images) == len(prompts) == len(specs):
            raise ValueError("images, prompts and specs must have the same length")
        if not images:
            return []
        out = self._judge(images, prompts, specs)
        self.calls += len(images)
        return out

    @abstractmethod
    def _judge(
        self, images: Sequence[Any], prompts: Sequence[str], specs: Sequence[dict[str, Any] | None]
    ) -> list[Judgement]:
        """Judge one non-empty batch."""
