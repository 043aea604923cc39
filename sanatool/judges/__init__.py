"""Judges and inference-time scaling: score N candidates per prompt, keep the best K.

- :mod:`~sanatool.judges.base`: :class:`Judgement` (score, yes/no, probabilities) and the
  :class:`Judge` interface.
- :mod:`~sanatool.judges.tournament`: the knockout tournament (SANA 1.5's picker, with byes)
  and ranking by score; deterministic tie-breaks.
- :mod:`~sanatool.judges.registry`: ``--judge shapes|verifier|verifier:PATH|clip:PATH|vlm:PATH``.
- Judges: :mod:`~sanatool.judges.oracle` (the shapes evaluator, an oracle),
  :mod:`~sanatool.judges.clip`, :mod:`~sanatool.judges.vlm`, :mod:`~sanatool.judges.verifier`
  (the learned shapes verifier; trained by :mod:`~sanatool.judges.verifier_train`; one ships in
  the package, :func:`shipped_verifier_path`, for ``--judge verifier``).
- :mod:`~sanatool.judges.picking`: what ``sanatool judge`` runs on a samples dir.
"""

from __future__ import annotations

from sanatool.judges.base import Judge, Judgement, preference_key
from sanatool.judges.picking import JudgeResult, judge_samples_dir
from sanatool.judges.registry import JUDGE_KINDS, JudgeSpec, load_judge, parse_judge_spec
from sanatool.judges.tournament import MODES, Selection, knockout, rank_by_score, select
from sanatool.judges.verifier import shipped_verifier_path

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
    "shipped_verifier_path",
]
