"""Picking K of N candidates: a knockout tournament (SANA 1.5's picker) or a ranking by score.

Both are pure functions of the judgements, deterministic, with ties broken by the lower
candidate position (the earlier-sampled candidate wins).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sanatool.errors import InputError
from sanatool.judges.base import Judgement, preference_key

MODES = ("tournament", "score")


@dataclass
class Selection:
    """The outcome for one prompt's candidates (positions index the candidate list).

    ``picked`` lists the winners best first. In a tournament, ``eliminated`` maps each loser to
    ``(round, winner)``: the 1-based round it lost in and the candidate that beat it.
    ``matches`` counts the pairwise comparisons made.
    """

    picked: list[int]
    matches: int = 0
    eliminated: dict[int, tuple[int, int]] = field(default_factory=dict)


def _better(a: int, b: int, judgements: Sequence[Judgement]) -> int:
    """The winner of one match; on equal preference the earlier candidate wins."""
    key_a, key_b = preference_key(judgements[a]), preference_key(judgements[b])
    if key_a != key_b:
        return a if key_a > key_b else b
    return min(a, b)


def _rank(positions: Sequence[int], judgements: Sequence[Judgement]) -> list[int]:
    """Best first by preference, ties by position."""
    return sorted(positions, key=lambda i: (tuple(-v for v in preference_key(judgements[i])), i))


def knockout(judgements: Sequence[Judgement], pick: int) -> Selection:
    """A knockout over the candidates in pairs until ``pick`` remain, ranked best first.

    Each round pairs neighbours in bracket order, playing only as many matches as needed to
    get down to ``pick`` (never below it); candidates left unpaired get a bye into the next
    round, so any candidate count works, not only powers of two. With ``pick`` = 1 this is a
    single-elimination bracket of ``N − 1`` matches.
    """
    _check_pick(pick, len(judgements))
    bracket = list(range(len(judgements)))
    matches = 0
    eliminated: dict[int, tuple[int, int]] = {}
    round_number = 0
    while len(bracket) > pick:
        round_number += 1
        games = min(len(bracket) // 2, len(bracket) - pick)
        survivors: list[int] = []
        for game in range(games):
            a, b = bracket[2 * game], bracket[2 * game + 1]
            winner = _better(a, b, judgements)
            eliminated[b if winner == a else a] = (round_number, winner)
            survivors.append(winner)
        matches += games
        # Byes keep their bracket order after the match winners, so the bracket stays sorted.
        bracket = survivors + bracket[2 * games :]
    return Selection(picked=_rank(bracket, judgements), matches=matches, eliminated=eliminated)


def rank_by_score(judgements: Sequence[Judgement], pick: int) -> Selection:
    """The ``pick`` candidates with the highest scalar ``score``, ties by position."""
    _check_pick(pick, len(judgements))
    order = sorted(range(len(judgements)), key=lambda i: (-judgements[i].score, i))
    return Selection(picked=order[:pick])


def select(judgements: Sequence[Judgement], pick: int, mode: str = "tournament") -> Selection:
    """Pick ``pick`` of the candidates with ``mode`` (``tournament`` or ``score``)."""
    if mode == "tournament":
        return knockout(judgements, pick)
    if mode == "score":
        return rank_by_score(judgements, pick)
    raise InputError(f"unknown --mode {mode!r}; choose one of {', '.join(MODES)}")


def _check_pick(pick: int, candidates: int) -> None:
    if isinstance(pick, bool) or not isinstance(pick, int) or not 1 <= pick <= candidates:
        raise InputError(f"--pick must be from 1 to the number of candidates ({candidates}), got {pick!r}")
