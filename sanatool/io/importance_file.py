"""The importance file (``importance`` → ``prune``): schema, validation, reader and writer.

One JSON object, format ``sanatool-importance/1``::

    {
      "format": "sanatool-importance/1",
      "fingerprint": "3f2a…",            # the scored model's fingerprint (sanatool info)
      "depth": 20,                       # its number of blocks
      "metric": "1-cos",                 # how a block was scored
      "calibration": {"prompts": "calib.jsonl", "num_prompts": 100, "steps": 20,
                      "guidance": 4.5, "seed": 0, "cfg_branches": ["cond", "uncond"]},
      "scores": [0.41, 0.02, …],          # one per block, higher = more important
      "timesteps": [999.0, 949.0, …],     # the sampler timesteps scored
      "per_timestep": [[…depth…], …],     # one row per timestep, one score per block
      "ranking": [0, 7, …]                # blocks from most to least important
    }

Files from ``importance`` also hold ``residual_change`` (one row per timestep, one value per
block: how much the block's residual changed since the previous step, relative to its output;
row 0 is 0), which cache skip plans rank on (``plan-skips --metric change``), and
``residual_curvature`` (the same, for the error of extrapolating the residual to first order in
the timestep from the two steps before; row 1 is the change), which forecast skip plans rank on
(``--metric curvature``); older files without them stay readable. A file scored under a skip plan records the plan's id (``skip_plan``).

``prune --keep K --importance FILE`` keeps ``ranking[:K]`` in their original order, after checking
the file belongs to the model being pruned. Unknown extra keys are allowed (later versions may add
some); a different ``format`` is refused.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sanatool import __version__
from sanatool.errors import InputError
from sanatool.io.jsonl import read_json_object
from sanatool.io.outputs import atomic_output_file

FORMAT = "sanatool-importance/1"
#: How ``importance`` scores blocks (``--metric``).
METRICS = ("cosine", "ablation")
CFG_BRANCHES = ("cond", "uncond")
_SCHEMA_KEYS = frozenset(
    (
        "format",
        "fingerprint",
        "depth",
        "metric",
        "calibration",
        "scores",
        "timesteps",
        "per_timestep",
        "ranking",
    )
)
_HOW_TO_MAKE = "make one with `sanatool importance MODEL -o importance.json`"


class ImportanceFileError(InputError):
    """An importance result or file that breaks the schema (exit code 2)."""


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ImportanceFileError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _integer(value: Any, what: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ImportanceFileError(f"{what} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ImportanceFileError(f"{what} must be at least {minimum}, got {value}")
    return value


def _numbers(value: Any, what: str, length: int | None = None) -> tuple[float, ...]:
    if not isinstance(value, list | tuple):
        raise ImportanceFileError(f"{what} must be a list of numbers")
    if length is not None and len(value) != length:
        raise ImportanceFileError(f"{what} has {len(value)} entries, expected {length}")
    return tuple(_number(v, f"{what}[{i}]") for i, v in enumerate(value))


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ImportanceFileError(f"{what} must be a non-empty string, got {value!r}")
    return value


@dataclass(frozen=True)
class Calibration:
    """How the scores were measured: the prompt set and the sampler settings."""

    prompts: str
    num_prompts: int
    steps: int
    guidance: float
    seed: int
    cfg_branches: tuple[str, ...] = ("cond",)

    def __post_init__(self) -> None:
        _text(self.prompts, "calibration.prompts")
        _integer(self.num_prompts, "calibration.num_prompts", 1)
        _integer(self.steps, "calibration.steps", 1)
        object.__setattr__(self, "guidance", _number(self.guidance, "calibration.guidance"))
        _integer(self.seed, "calibration.seed")
        branches = tuple(self.cfg_branches)
        if not branches or len(set(branches)) != len(branches) or not set(branches) <= set(CFG_BRANCHES):
            raise ImportanceFileError(
                f"calibration.cfg_branches must be a non-empty list of distinct {CFG_BRANCHES}, got {list(branches)}"
            )
        object.__setattr__(self, "cfg_branches", branches)

    def to_json(self) -> dict[str, Any]:
        return {
            "prompts": self.prompts,
            "num_prompts": self.num_prompts,
            "steps": self.steps,
            "guidance": self.guidance,
            "seed": self.seed,
            "cfg_branches": list(self.cfg_branches),
        }


def rank_blocks(scores: tuple[float, ...] | list[float]) -> tuple[int, ...]:
    """Blocks from most to least important; ties go to the lower block index."""
    return tuple(sorted(range(len(scores)), key=lambda b: (-scores[b], b)))


@dataclass(frozen=True)
class ImportanceResult:
    """Per-block importance of one model, validated on construction (writer and reader share it).

    ``ranking`` defaults to :func:`rank_blocks` of ``scores``; a given ranking must order the
    scores from high to low. ``extra`` holds further keys written alongside (e.g. ``model``).
    Invalid values raise :class:`ImportanceFileError`.
    """

    fingerprint: str
    metric: str
    calibration: Calibration
    scores: tuple[float, ...]
    timesteps: tuple[float, ...]
    per_timestep: tuple[tuple[float, ...], ...]
    ranking: tuple[int, ...] = field(default=())
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        _text(self.fingerprint, "fingerprint")
        _text(self.metric, "metric")
        if not isinstance(self.calibration, Calibration):
            raise ImportanceFileError("calibration must be a Calibration")
        scores = _numbers(self.scores, "scores")
        if not scores:
            raise ImportanceFileError("scores must hold one score per block; it is empty")
        timesteps = _numbers(self.timesteps, "timesteps")
        if not timesteps:
            raise ImportanceFileError("timesteps must list the scored sampler timesteps; it is empty")
        if not isinstance(self.per_timestep, list | tuple) or len(self.per_timestep) != len(timesteps):
            raise ImportanceFileError(f"per_timestep must hold one row per timestep ({len(timesteps)} rows)")
        rows = tuple(
            _numbers(row, f"per_timestep[{i}]", len(scores)) for i, row in enumerate(self.per_timestep)
        )
        ranking = tuple(self.ranking) or rank_blocks(scores)
        if any(isinstance(b, bool) or not isinstance(b, int) for b in ranking) or sorted(ranking) != list(
            range(len(scores))
        ):
            raise ImportanceFileError(f"ranking must list every block 0-{len(scores) - 1} exactly once")
        if any(scores[a] < scores[b] for a, b in zip(ranking, ranking[1:], strict=False)):
            raise ImportanceFileError(
                "ranking disagrees with scores: it must go from the highest score to the lowest"
            )
        for name, value in (("scores", scores), ("timesteps", timesteps), ("per_timestep", rows)):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "ranking", ranking)

    @property
    def depth(self) -> int:
        """Number of blocks scored."""
        return len(self.scores)

    def top(self, keep: int) -> list[int]:
        """The ``keep`` most important blocks, in their original (ascending) order."""
        if not 1 <= keep <= self.depth:
            raise InputError(f"--keep {keep} must be between 1 and the model's depth ({self.depth})")
        return sorted(self.ranking[:keep])

    def to_json(self) -> dict[str, Any]:
        """The file's JSON object (see the module docstring)."""
        return {
            **self.extra,
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "depth": self.depth,
            "metric": self.metric,
            "calibration": self.calibration.to_json(),
            "scores": list(self.scores),
            "timesteps": list(self.timesteps),
            "per_timestep": [list(row) for row in self.per_timestep],
            "ranking": list(self.ranking),
        }

    @classmethod
    def from_json(cls, data: Any) -> ImportanceResult:
        """Validate a parsed importance file; raises :class:`ImportanceFileError` naming the first problem."""
        if not isinstance(data, dict):
            raise ImportanceFileError("it is not a JSON object")
        fmt = data.get("format")
        if fmt != FORMAT:
            raise ImportanceFileError(f"format is {fmt!r}, expected {FORMAT!r}")
        missing = [
            k
            for k in ("fingerprint", "depth", "metric", "calibration", "scores", "timesteps", "per_timestep")
            if k not in data
        ]
        if missing:
            raise ImportanceFileError(f"it lacks {', '.join(missing)}")
        calibration = data["calibration"]
        if not isinstance(calibration, dict):
            raise ImportanceFileError("calibration must be an object")
        fields = ("prompts", "num_prompts", "steps", "guidance", "seed", "cfg_branches")
        absent = [k for k in fields if k not in calibration]
        if absent:
            raise ImportanceFileError(f"calibration lacks {', '.join(absent)}")
        if not isinstance(calibration["cfg_branches"], list):
            raise ImportanceFileError("calibration.cfg_branches must be a list")
        depth = _integer(data["depth"], "depth", 1)
        scores = _numbers(data["scores"], "scores", depth)
        ranking = data.get("ranking", [])
        if not isinstance(ranking, list):
            raise ImportanceFileError("ranking must be a list of block indices")
        return cls(
            fingerprint=data["fingerprint"],
            metric=data["metric"],
            calibration=Calibration(**{k: calibration[k] for k in fields}),
            scores=scores,
            timesteps=data["timesteps"],
            per_timestep=data["per_timestep"],
            ranking=tuple(ranking),
            extra={k: v for k, v in data.items() if k not in _SCHEMA_KEYS},
        )


def write_importance_file(path: str | os.PathLike, result: ImportanceResult, force: bool = False) -> Path:
    """Write ``result`` as an importance file, atomically (refuses an existing file without ``force``).

    Adds ``sanatool_version`` and ``created``. Returns the path.
    """
    data = result.to_json()
    data.setdefault("sanatool_version", __version__)
    data.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    with atomic_output_file(path, force) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def read_importance_file(path: str | os.PathLike) -> ImportanceResult:
    """Read and validate an importance file; a bad one raises :class:`InputError` naming the problem.

    Checking that the file belongs to the model at hand (fingerprint, depth) is the caller's job.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise InputError(f"importance file {path} does not exist; {_HOW_TO_MAKE}")
    data = read_json_object(file, "importance file", hint=_HOW_TO_MAKE)
    try:
        return ImportanceResult.from_json(data)
    except ImportanceFileError as err:
        raise ImportanceFileError(
            f"importance file {path} is not a valid {FORMAT} file: {err}; {_HOW_TO_MAKE}"
        ) from err
