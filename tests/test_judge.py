"""``judge``: the tournament and score pickers, ``--judge`` parsing, the shapes oracle end to end, bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from helpers import tree_digest

from sanatool.errors import InputError, ModelDirError
from sanatool.judges.base import Judgement, preference_key
from sanatool.judges.registry import parse_judge_spec
from sanatool.judges.tournament import knockout, rank_by_score, select


def yes(p: float) -> Judgement:
    return Judgement(score=p, answer=True, p_yes=p, p_no=1 - p)


def no(p_no: float) -> Judgement:
    return Judgement(score=1 - p_no, answer=False, p_yes=1 - p_no, p_no=p_no)


# --- the picking rules ---------------------------------------------------------------------------


def test_match_rules_follow_sana_picker():
    assert preference_key(yes(0.55)) > preference_key(no(0.01))  # a yes beats any no
    assert preference_key(yes(0.9)) > preference_key(yes(0.6))  # both yes: higher yes-probability
    assert preference_key(no(0.6)) > preference_key(no(0.9))  # both no: lower no-probability
    clip = [Judgement(score=31.0), Judgement(score=29.5)]
    assert knockout(clip, 1).picked == [0]


@pytest.mark.parametrize("n", range(1, 12))
def test_knockout_any_count_with_byes(n):
    rng = random.Random(n)
    judgements = [yes(rng.random()) if rng.random() < 0.5 else no(rng.random()) for _ in range(n)]
    best = max(range(n), key=lambda i: (preference_key(judgements[i]), -i))
    for k in range(1, n + 1):
        sel = knockout(judgements, k)
        assert len(sel.picked) == k and len(set(sel.picked)) == k
        assert sel.matches == n - k  # each match removes exactly one candidate
        assert set(sel.eliminated) == set(range(n)) - set(sel.picked)
        assert best in sel.picked  # the best candidate never loses a match
        assert sel.picked == sorted(
            sel.picked, key=lambda i: (tuple(-v for v in preference_key(judgements[i])), i)
        )
    assert knockout(judgements, 1).picked == [best]


def test_knockout_bracket_and_byes_are_deterministic():
    # Five candidates, K = 1: (0,1) and (2,3) play, 4 has a bye; then (w01, w23), 4 a bye; then the final.
    judgements = [no(0.5), yes(0.6), yes(0.7), no(0.2), yes(0.65)]
    sel = knockout(judgements, 1)
    assert sel.picked == [2]
    assert sel.eliminated == {0: (1, 1), 3: (1, 2), 1: (2, 2), 4: (3, 2)}
    # A knockout keeps K survivors of the bracket, not the global top K: 0 and 1 meet in round one.
    judgements = [yes(0.9), yes(0.8), no(0.9), no(0.8)]
    assert knockout(judgements, 2).picked == [0, 3]
    assert rank_by_score(judgements, 2).picked == [0, 1]


def test_ties_go_to_the_earlier_candidate():
    same = [yes(0.7)] * 6
    assert knockout(same, 1).picked == [0]
    assert knockout(same, 3).picked == [0, 2, 4]
    assert rank_by_score(same, 2).picked == [0, 1]
    scores = [Judgement(score=s) for s in (0.5, 1.0, 0.5, 1.0)]
    assert select(scores, 3, "score").picked == [1, 3, 0]


@pytest.mark.parametrize("pick", [0, 4, -1, True])
def test_pick_out_of_range_is_refused(pick):
    with pytest.raises(InputError, match="--pick"):
        knockout([yes(0.5)] * 3, pick)
    with pytest.raises(InputError, match="--pick"):
        rank_by_score([yes(0.5)] * 3, pick)


# --- --judge parsing -----------------------------------------------------------------------------


def test_parse_judge_specs(tmp_path):
    from sanatool.judges.registry import load_judge

    assert parse_judge_spec("shapes").kind == "shapes"
    assert parse_judge_spec("shapes").needs_spec and load_judge("shapes").needs_spec
    for bad, message in [
        ("", "empty"),
        ("gpt4", "unknown judge kind"),
        ("shapes:x", "takes no path"),
        ("clip:", "needs a model dir"),
        ("vlm", "needs a model dir"),
    ]:
        with pytest.raises(InputError, match=message):
            parse_judge_spec(bad)
    with pytest.raises(ModelDirError, match="no such directory"):
        parse_judge_spec(f"clip:{tmp_path / 'nope'}")
    with pytest.raises(ModelDirError, match="no config.json"):
        parse_judge_spec(f"vlm:{tmp_path}")
    with pytest.raises(ModelDirError, match="no verifier.json"):
        parse_judge_spec(f"verifier:{tmp_path}")
    fake = tmp_path / "bert"
    fake.mkdir()
    (fake / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (fake / "preprocessor_config.json").write_text("{}")
    with pytest.raises(ModelDirError, match="not CLIP"):
        parse_judge_spec(f"clip:{fake}")
    with pytest.raises(ModelDirError, match="image-text-to-text"):
        parse_judge_spec(f"vlm:{fake}")


# --- the shapes oracle end to end ----------------------------------------------------------------


def write_candidates(root: Path, candidates: int = 5, prompts: int = 6) -> dict[int, int]:
    """A samples dir of renders: per prompt one correct candidate among mismatched ones.

    Returns, per prompt index, the candidate that matches its prompt.
    """
    from PIL import Image  # noqa: F401  (renders are PIL images)

    from sanatool.io.manifest import image_relpath, write_manifest
    from sanatool.shapes import evaluation_suite, mismatched_spec, render_spec

    suite = evaluation_suite()
    items = [suite[i * 50] for i in range(prompts)]  # one prompt of each category
    rng = random.Random(0)
    (root / "images").mkdir(parents=True)
    rows, correct = [], {}
    for p, item in enumerate(items):
        correct[p] = rng.randrange(candidates)
        for c in range(candidates):
            spec = item.spec if c == correct[p] else mismatched_spec(item.spec, item.category, rng)
            path = image_relpath(p, c)
            render_spec(spec, size=32, seed=100 * p + c).save(root / path)
            rows.append(
                {"prompt": item.prompt, "prompt_index": p, "candidate": c, "seed": 100 * p + c,
                 "path": path, "spec": item.spec, "category": item.category}
            )  # fmt: skip
    write_manifest(root / "manifest.jsonl", rows)
    return correct


@pytest.fixture(scope="module")
def candidates_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("judge") / "samples"
    return root, write_candidates(root)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_judge_shapes_picks_the_correct_candidates(cli, candidates_dir, tmp_path):
    samples, correct = candidates_dir
    before = tree_digest(samples)
    out = tmp_path / "picks"
    res = cli("judge", samples, "-o", out, "--judge", "shapes", "--mode", "tournament", "--json")
    assert res.code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["judge"] == {"kind": "shapes", "label": "shapes (oracle)", "oracle": True}
    assert "oracle" in summary["note"] and "oracle" in res.stderr
    assert summary["prompts"] == 6 and summary["candidates"] == 30
    assert summary["judge_calls"] == 30 and summary["matches"] == 6 * 4
    picks = read_jsonl(out / "manifest.jsonl")
    assert {(r["prompt_index"], r["candidate"]) for r in picks} == set(correct.items())
    assert all(r["rank"] == 1 and r["score"] == 1.0 and r["judge"] == "shapes (oracle)" for r in picks)
    assert all((out / r["path"]).is_file() and "spec" in r for r in picks)
    scores = read_jsonl(out / "scores.jsonl")
    assert len(scores) == 30 and sum(r["picked"] for r in scores) == 6
    losers = [r for r in scores if not r["picked"]]
    assert all(r["answer"] == "no" and r["failed"] and "lost_in_round" in r for r in losers)
    assert json.loads((out / "judge.json").read_text())["judge"]["oracle"] is True
    assert tree_digest(samples) == before  # the input is never modified
    # The picks are a samples dir that `eval` measures: every pick is correct.
    from sanatool.samples.evaluate import evaluate_samples_dir

    assert evaluate_samples_dir(out).overall == 1.0


def test_judge_score_mode_keeps_k_ranked(cli, candidates_dir, tmp_path):
    samples, correct = candidates_dir
    out = tmp_path / "top3"
    res = cli("judge", samples, "-o", out, "--judge", "shapes", "--pick", "3")  # score is the default
    assert res.code == 0, res.stderr
    assert Path(res.stdout.strip()) == out.resolve()
    picks = read_jsonl(out / "manifest.jsonl")
    assert len(picks) == 18
    for p, c in correct.items():
        mine = sorted((r for r in picks if r["prompt_index"] == p), key=lambda r: r["rank"])
        assert [r["rank"] for r in mine] == [1, 2, 3] and mine[0]["candidate"] == c
        assert mine[0]["score"] >= mine[1]["score"] >= mine[2]["score"]
    assert json.loads((out / "judge.json").read_text())["matches"] == 0
    assert json.loads((out / "judge.json").read_text())["mode"] == "score"


def test_judge_bad_input_exits_2_and_writes_nothing(cli, candidates_dir, tmp_path):
    samples, _ = candidates_dir
    before = tree_digest(samples)
    no_spec = tmp_path / "nospec"
    (no_spec / "images").mkdir(parents=True)
    (no_spec / "images" / "a.png").write_bytes((samples / "images" / "p00000_c000.png").read_bytes())
    (no_spec / "manifest.jsonl").write_text(
        json.dumps({"prompt": "a red circle", "path": "images/a.png"}) + "\n"
    )
    missing = tmp_path / "missing"
    (missing / "images").mkdir(parents=True)
    (missing / "manifest.jsonl").write_text((samples / "manifest.jsonl").read_text())
    no_manifest = tmp_path / "nomanifest"
    no_manifest.mkdir()
    existing = tmp_path / "exists"
    existing.mkdir()
    out = tmp_path / "out"
    cases = [
        ([no_manifest, "-o", out, "--judge", "shapes"], "no manifest.jsonl"),
        ([missing, "-o", out, "--judge", "shapes"], "is missing"),
        ([no_spec, "-o", out, "--judge", "shapes"], "no spec"),
        ([samples, "-o", out, "--judge", "shapes", "--pick", "0"], "--pick"),
        ([samples, "-o", out, "--judge", "shapes", "--pick", "6"], "exceeds the 5 candidate"),
        ([samples, "-o", out, "--judge", "oracle"], "unknown judge kind"),
        ([samples, "-o", out, "--judge", f"clip:{tmp_path}"], "no config.json"),
        ([samples, "-o", out, "--judge", f"verifier:{tmp_path / 'none'}"], "no such directory"),
        ([samples, "-o", out, "--judge", "shapes", "--mode", "vote"], "unknown --mode"),
        ([samples, "-o", out, "--judge", "shapes", "--batch-size", "0"], "--batch-size"),
        ([samples, "-o", out, "--judge", "shapes", "--template", "{prompt}?"], "vlm judges only"),
        ([samples, "-o", out, "--judge", "shapes", "--template", "no field"], "{prompt}"),
        ([samples, "-o", existing, "--judge", "shapes"], "already exists"),
        ([samples, "-o", samples / "inside", "--judge", "shapes"], "overlaps the input"),
    ]
    for args, message in cases:
        res = cli("judge", *args)
        assert res.code == 2, (args, res.stderr)
        assert message in res.stderr, (args, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert not out.exists() and list(existing.iterdir()) == []
    assert tree_digest(samples) == before
