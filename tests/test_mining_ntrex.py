"""Mining thresholds that transfer (issue 19.3): the threshold rules, the NTREX task and its scoring, the choice by
leave-languages-out, the defaults, and the rule inside the chunked file job (``xlir mine``) vs in memory."""

from __future__ import annotations

import inspect
import random
from pathlib import Path

import numpy as np
import pytest

from benchmarks.mining_ntrex import Run, leave_languages_out, make_task, script_of
from indexer.mining import MineOptions, mine
from indexer.mining_job import mine_texts
from indexer.mining_threshold import (
    RUNNER_UP_QUANTILE,
    otsu_threshold,
    parse_threshold,
    rule_threshold,
    runner_up_threshold,
    runner_ups,
)
from tests.conftest import FakeEncoder

# ---------------------------------------------------------------- the rules, pure


def test_otsu_cuts_between_the_two_groups() -> None:
    assert otsu_threshold(np.array([0.3, 0.9, 0.25, 0.85, 0.8])) == pytest.approx(0.55)
    assert otsu_threshold(np.array([1.0, 1.0, 0.0])) == pytest.approx(0.5)  # equal scores stay together
    # a lone outlier above a tight group is split off, not the middle of the group
    assert otsu_threshold(np.array([0.50, 0.51, 0.52, 0.53, 0.95])) == pytest.approx(0.74)
    assert otsu_threshold(np.array([0.7, 0.7])) is None and otsu_threshold(np.array([0.4])) is None
    assert otsu_threshold(np.array([])) is None


def test_runner_up_rule_is_a_quantile_of_the_second_best_scores() -> None:
    scores = np.array([[0.9, 0.2, 0.4], [0.1, 0.8, 0.3], [0.5, 0.6, 0.7]])
    assert runner_ups(scores).tolist() == pytest.approx([0.4, 0.3, 0.6])
    assert runner_ups(scores[:, :1]).size == 0  # k = 1: no runner-up
    assert runner_up_threshold(np.array([0.4, 0.3, 0.6]), 1.0) == pytest.approx(0.6)
    assert runner_up_threshold(np.array([0.4, 0.3, 0.6]), 0.5) == pytest.approx(0.4)
    assert runner_up_threshold(np.array([])) is None
    with pytest.raises(ValueError, match="quantile must be in"):
        runner_up_threshold(np.array([0.1]), 1.5)
    with pytest.raises(ValueError, match="unknown threshold rule 'valley'"):
        rule_threshold("valley", np.array([0.1]), np.array([0.1]))


def test_parse_threshold() -> None:
    assert parse_threshold("0.5") == 0.5 and parse_threshold("Runner-Up") == "runner-up"
    assert parse_threshold("otsu") == "otsu" and parse_threshold("none") is None
    for bad in ("high", "nan", "inf"):
        with pytest.raises(ValueError, match="threshold must be"):
            parse_threshold(bad)


# ---------------------------------------------------------------- the rule inside the mining core


def _pools(seed: int = 0, dim: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """6 sources, 6 targets: rows 0-3 translate each other (cos ~0.95), rows 4-5 of each side have none."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((10, dim))
    x = np.vstack([base[:4], base[4:6]])
    y = np.vstack([base[:4] + 0.3 * rng.standard_normal((4, dim)), base[6:8]])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return x.astype(np.float32), y.astype(np.float32)


@pytest.mark.parametrize("margin", ["absolute", "ratio"])
def test_a_rule_keeps_the_translations_and_drops_the_rest(margin: str) -> None:
    x, y = _pools()
    for rule in ("runner-up", "otsu"):
        got = mine(x, y, k=3, margin=margin, retrieval="fwd", threshold=rule)
        assert sorted((p.src, p.tgt) for p in got) == [(0, 0), (1, 1), (2, 2), (3, 3)], rule
        every = mine(x, y, k=3, margin=margin, retrieval="fwd")  # no threshold: sources 4 and 5 paired last
        assert [(p.src, p.tgt) for p in every[:4]] == [(p.src, p.tgt) for p in got] and len(every) == 6


def test_the_rule_is_the_pure_function_of_the_runs_own_scores() -> None:
    from indexer.mining_search import ArrayRows, mine_rows

    x, y = _pools(seed=3)
    plain, _ = mine_rows(ArrayRows(x), ArrayRows(y), MineOptions(k=3, margin="ratio", threshold=None))
    ruled, _ = mine_rows(ArrayRows(x), ArrayRows(y), MineOptions(k=3, margin="ratio", threshold="runner-up"))
    assert plain.threshold is None and plain.runner_up is not None and len(plain.runner_up) == 12  # 6 + 6 rows
    assert ruled.threshold == pytest.approx(runner_up_threshold(plain.runner_up))
    keep = plain.score >= ruled.threshold
    assert ruled.src.tolist() == plain.src[keep].tolist() and ruled.tgt.tolist() == plain.tgt[keep].tolist()
    fixed, _ = mine_rows(ArrayRows(x), ArrayRows(y), MineOptions(k=3, margin="ratio", threshold=1.0))
    assert fixed.threshold == 1.0
    with pytest.raises(ValueError, match="unknown threshold rule 'high'"):
        MineOptions(threshold="high")


# ---------------------------------------------------------------- the defaults


def test_the_defaults_agree_everywhere() -> None:
    from app.schemas import MineRequest
    from cli.main import mine_cmd

    opts = MineOptions()
    req = MineRequest(src=["a"], tgt=["b"])
    cli = inspect.signature(mine_cmd).parameters
    assert (opts.margin, opts.centering, opts.threshold) == ("absolute", "full", "runner-up")
    assert RUNNER_UP_QUANTILE == 0.875
    assert (req.margin, req.centering.value, req.threshold) == (opts.margin, opts.centering, opts.threshold)
    assert (cli["margin"].default, cli["centering"].default) == (opts.margin, opts.centering)
    assert parse_threshold(cli["threshold"].default) == opts.threshold


# ---------------------------------------------------------------- `xlir mine` (chunked job) == in-memory mine


def _sentences(n: int, rng: random.Random) -> list[str]:
    return [" ".join(f"w{rng.randrange(300)}" for _ in range(rng.randint(6, 10))) for _ in range(n)]


def test_xlir_mine_with_the_rule_gives_the_in_memory_pairs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import models.encoders
    from cli.main import app

    rng = random.Random(5)
    shared = _sentences(40, rng)
    src = shared + _sentences(20, rng)
    tgt = [s + f" w{rng.randrange(300)}" for s in shared] + _sentences(20, rng)  # one extra word per translation
    rng.shuffle(src)
    rng.shuffle(tgt)
    (tmp_path / "src.txt").write_text("\n".join(src) + "\n")
    (tmp_path / "tgt.txt").write_text("\n".join(tgt) + "\n")
    enc = FakeEncoder(dim=64)
    monkeypatch.setattr(models.encoders, "load_encoder", lambda *a, **k: enc)
    monkeypatch.setenv("XLIR_HOME", str(tmp_path / "home"))
    want = {(p.src, p.tgt) for p in mine_texts(enc, src, tgt, MineOptions())}
    every = {(p.src, p.tgt) for p in mine_texts(enc, src, tgt, MineOptions(threshold=None))}
    truth = {(i, j) for i, s in enumerate(src) for j, t in enumerate(tgt) if t.startswith(s + " ")}
    assert len(truth) == 40 and truth <= want < every  # the default rule keeps the translations, drops some others
    for extra in ([], ["--search", "ivf", "--chunk", "16"]):  # exact, and the chunked IVF job
        out = tmp_path / "pairs.tsv"
        res = CliRunner().invoke(app, ["mine", str(tmp_path / "src.txt"), str(tmp_path / "tgt.txt"), "--out", str(out),
                                       "--no-progress", *extra])
        assert res.exit_code == 0, res.output
        rows = [line.split("\t") for line in out.read_text().splitlines()[1:]]
        assert {(int(r[3]) - 1, int(r[4]) - 1) for r in rows} == want, extra


# ---------------------------------------------------------------- the NTREX task and its scoring


def test_the_task_is_seeded_and_hides_one_sided_lines() -> None:
    task = make_task("deu", 458)
    again = make_task("deu", 458)
    assert np.array_equal(task.src_lines, again.src_lines) and np.array_equal(task.tgt_lines, again.tgt_lines)
    gold = set(task.src_lines.tolist()) & set(task.tgt_lines.tolist())
    assert len(gold) == task.gold == round(task.gold_share * 458) and task.gold_share in (0.2, 0.4, 0.6)
    assert len(task.src_lines) + len(task.tgt_lines) == 458 + task.gold  # every line once per side at most
    assert len(set(task.src_lines.tolist())) == len(task.src_lines)
    shares = {make_task(c, 458).gold_share for c in ("deu", "fra", "jpn", "swa", "zul", "tha", "yor", "kor")}
    assert len(shares) > 1  # the gold share varies with the language
    s_row = {line: i for i, line in enumerate(task.src_lines.tolist())}
    t_row = {line: i for i, line in enumerate(task.tgt_lines.tolist())}
    some = sorted(gold)[:3]
    pairs = [(s_row[g], t_row[g]) for g in some] + [(s_row[some[0]], t_row[some[1]])]
    assert task.hits(np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])).tolist() == [
        True, True, True, False]


def test_run_f1_at_thresholds_and_best() -> None:
    run = Run(score=np.array([0.9, 0.8, 0.7, 0.6]), hit=np.array([True, True, False, True]),
              runner_up=np.array([0.5]), gold=4)
    # keep 2: P 1, R .5 -> 2/3; keep 4: P .75, R .75 -> .75; keep 0 -> 0
    assert run.f1(np.array([0.8, 0.6, 0.95])).tolist() == pytest.approx([2 / 3, 0.75, 0.0])
    assert run.best() == pytest.approx((0.75, 0.6))


def test_leave_languages_out_picks_without_the_language() -> None:
    table = np.array([[0.9, 0.9, 0.0],   # best on a and b, fails on c
                      [0.5, 0.5, 0.9],   # mediocre everywhere
                      [0.8, 0.8, 0.8]])  # good everywhere
    chosen, f1 = leave_languages_out(table)
    # without a: mean over (b, c) is .45 / .7 / .8 -> row 2; without c: .9 / .5 / .8 -> row 0
    assert chosen.tolist() == [2, 2, 0] and f1.tolist() == pytest.approx([0.8, 0.8, 0.0])


def test_script_groups() -> None:
    assert script_of(["Die Glocken schweigen"]) == "Latin" and script_of(["Колокола молчат"]) == "Cyrillic"
    assert script_of(["钟声沉寂"]) == "CJK" and script_of(["घंटियाँ"]) == "Indic" and script_of(["Καμπάνες"]) == "other"
