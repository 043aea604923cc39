"""The ``shapes`` judge: the shapes world's rule-based evaluator, used as a judge.

It is the same function ``sanatool eval`` measures with, so its picks are an *oracle* upper
bound for best-of-N, not a fair judge; every output labels it so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sanatool.errors import InputError
from sanatool.judges.base import Judge, Judgement


class ShapesOracleJudge(Judge):
    """Judge by the evaluator's graded score: yes when every clause holds, ``p_yes`` = fraction met."""

    kind = "shapes"
    oracle = True
    needs_spec = True

    def _judge(
        self, images: Sequence[Any], prompts: Sequence[str], specs: Sequence[dict[str, Any] | None]
    ) -> list[Judgement]:
        from sanatool.shapes.evaluator import evaluate_image

        out: list[Judgement] = []
        for image, prompt, spec in zip(images, prompts, specs, strict=True):
            if spec is None:
                raise InputError(
                    f"the shapes judge needs a spec for prompt {prompt!r}; sample from a prompts .jsonl"
                )
            verdict = evaluate_image(image, spec)
            out.append(
                Judgement(
                    score=verdict.score,
                    answer=verdict.correct,
                    p_yes=verdict.score,
                    p_no=1.0 - verdict.score,
                    detail={"failed": verdict.failed} if verdict.failed else {},
                )
            )
        return out
