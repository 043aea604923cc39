"""Judges and inference-time scaling: score N candidates per prompt, keep the best K.

- :mod:`~sanatool.judge.base`: :class:`Judgement` (score, yes/no, probabilities) and the
  :class:`Judge` interface.
- :mod:`~sanatool.judge.tournament`: the knockout tournament (SANA 1.5's picker, with byes)
  and ranking by score; deterministic tie-breaks.
- :mod:`~sanatool.judge.registry`: ``--judge shapes|clip:PATH|vlm:PATH|verifier:PATH``.
- Judges: :mod:`~sanatool.judge.oracle` (the shapes evaluator, an oracle),
  :mod:`~sanatool.judge.clip`, :mod:`~sanatool.judge.vlm`, :mod:`~sanatool.judge.verifier`
  (the learned shapes verifier; trained by :mod:`~sanatool.judge.verifier_train`).
- :mod:`~sanatool.judge.picking`: what ``sanatool judge`` runs on a samples dir.
"""

from __future__ import annotations

from sanatool.judge.base import Judge, Judgement, preference_key
from sanatool.judge.picking import JudgeResult, judge_samples_dir
from sanatool.judge.registry import JUDGE_KINDS, JudgeSpec, load_judge, parse_judge_spec
from sanatool.judge.tournament import MODES, Selection, knockout, rank_by_score, select

__all__ = [
    "JUDGE_KINDS",
    "MODES",
    "Judge",
    "JudgeResult",
    "JudgeSpec",
    "Judgement",
    "Selection",
    "judge_samples_dir",
    "knockout",
    "load_judge",
    "parse_judge_spec",
    "preference_key",
    "rank_by_score",
    "select",
]
