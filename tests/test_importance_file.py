"""The importance file schema: writer, reader, validation."""

from __future__ import annotations

import json
import math

import pytest

from sanatool.errors import InputError
from sanatool.io.importance_file import (
    FORMAT,
    Calibration,
    ImportanceFileError,
    ImportanceResult,
    rank_blocks,
    read_importance_file,
    write_importance_file,
)

CALIBRATION = Calibration("shapes-calibration", 100, 20, 4.5, 0, ("cond", "uncond"))


def _result(**overrides) -> ImportanceResult:
    values = {
        "fingerprint": "abc123",
        "metric": "1-cos",
        "calibration": CALIBRATION,
        "scores": [0.3, 0.9, 0.3, 0.1],
        "timesteps": [999.0, 500.0, 1.0],
        "per_timestep": [[0.2, 0.8, 0.3, 0.1], [0.3, 0.9, 0.3, 0.1], [0.4, 1.0, 0.3, 0.1]],
    }
    values.update(overrides)
    return ImportanceResult(**values)


def _valid_json() -> dict:
    return _result().to_json()


def test_write_then_read_round_trips_with_the_documented_keys(tmp_path):
    path = write_importance_file(tmp_path / "imp.json", _result(extra={"model": "runs/base"}))
    data = json.loads(path.read_text())
    assert data["format"] == FORMAT and data["depth"] == 4 and data["model"] == "runs/base"
    assert data["calibration"] == {
        "prompts": "shapes-calibration",
        "num_prompts": 100,
        "steps": 20,
        "guidance": 4.5,
        "seed": 0,
        "cfg_branches": ["cond", "uncond"],
    }
    assert data["ranking"] == [1, 0, 2, 3]  # ties go to the lower block
    assert {"sanatool_version", "created", "per_timestep", "timesteps", "scores", "metric"} <= set(data)
    loaded = read_importance_file(path)
    assert loaded == _result()
    assert loaded.extra["model"] == "runs/base"
    assert loaded.top(2) == [0, 1] and loaded.top(4) == [0, 1, 2, 3]


def test_writer_is_atomic_and_refuses_existing_files(tmp_path):
    path = tmp_path / "imp.json"
    write_importance_file(path, _result())
    with pytest.raises(InputError, match="--force"):
        write_importance_file(path, _result(metric="other"))
    assert read_importance_file(path).metric == "1-cos"
    write_importance_file(path, _result(metric="other"), force=True)
    assert read_importance_file(path).metric == "other"
    assert [p.name for p in tmp_path.iterdir()] == ["imp.json"]


def test_rank_blocks_and_top():
    assert rank_blocks([0.1, 0.5, 0.5, 0.9]) == (3, 1, 2, 0)
    result = _result(ranking=[1, 2, 0, 3])  # an explicit tie order is honoured
    assert result.top(2) == [1, 2]
    with pytest.raises(InputError, match="between 1 and"):
        result.top(5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(format="sanatool-importance/2"), "format is"),
        (lambda d: d.pop("scores"), "lacks scores"),
        (lambda d: d.update(depth=5), "has 4 entries, expected 5"),
        (lambda d: d["scores"].__setitem__(1, math.nan), "finite number"),
        (lambda d: d["scores"].__setitem__(1, "high"), "finite number"),
        (lambda d: d.update(ranking=[1, 0, 2, 2]), "every block 0-3 exactly once"),
        (lambda d: d.update(ranking=[0, 1, 2, 3]), "disagrees with scores"),
        (lambda d: d["per_timestep"][0].pop(), "per_timestep[0] has 3 entries"),
        (lambda d: d.update(timesteps=[1.0]), "one row per timestep"),
        (lambda d: d["calibration"].update(cfg_branches=["both"]), "cfg_branches"),
        (lambda d: d["calibration"].pop("seed"), "calibration lacks seed"),
        (lambda d: d["calibration"].update(steps=0), "calibration.steps must be at least 1"),
        (lambda d: d.update(metric=""), "metric must be a non-empty string"),
        (lambda d: d.update(fingerprint=None), "fingerprint must be"),
    ],
)
def test_reader_refuses_invalid_files_with_one_clear_message(tmp_path, change, message):
    data = _valid_json()
    change(data)
    path = tmp_path / "imp.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ImportanceFileError) as caught:
        read_importance_file(path)
    text = str(caught.value)
    assert message in text and str(path) in text and "sanatool importance" in text
    assert caught.value.exit_code == 2


def test_reader_refuses_missing_and_non_json_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_importance_file(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    with pytest.raises(InputError, match="not valid JSON"):
        read_importance_file(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(InputError, match="not a JSON object"):
        read_importance_file(bad)


def test_writer_refuses_an_invalid_result(tmp_path):
    with pytest.raises(ImportanceFileError, match="per_timestep"):
        _result(per_timestep=[[1.0, 2.0]])
    with pytest.raises(ImportanceFileError, match="finite"):
        _result(scores=[1.0, math.inf, 0.0, 0.0])
    with pytest.raises(ImportanceFileError, match="cfg_branches"):
        Calibration("p", 1, 1, 1.0, 0, ())
