"""The mining benchmark's own logic: F1 at the best threshold, the BUCC-style task, the brute-force baseline."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.mining import best_f1, brute_force_knn, bucc_task, f1_at, render
from indexer.mining import knn


def test_best_f1_hand_made() -> None:
    # 6 mined pairs by score desc; gold = 4 pairs, 3 of them mined (rows 0, 1, 3)
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    src = np.array([0, 1, 2, 3, 4, 5])
    tgt = np.array([0, 1, 9, 3, 8, 7])
    gold = {(0, 0), (1, 1), (3, 3), (6, 6)}
    got = best_f1(score, src, tgt, gold)
    # cut after 2: P 1, R .5, F1 .667; after 4: P .75, R .75, F1 .75 (best)
    assert got == pytest.approx({"f1": 0.75, "precision": 0.75, "recall": 0.75, "threshold": 0.6, "pairs_kept": 4})
    assert f1_at(score, src, tgt, gold, 0.6) == pytest.approx(0.75)
    assert f1_at(score, src, tgt, gold, 0.85) == pytest.approx(2 * 1 * 0.25 / 1.25)
    assert f1_at(score, src, tgt, gold, 1.0) == 0.0


def test_best_f1_never_cuts_inside_a_tie() -> None:
    score = np.array([0.9, 0.7, 0.7, 0.1])
    src, tgt = np.arange(4), np.array([0, 1, 5, 3])
    gold = {(0, 0), (1, 1)}
    got = best_f1(score, src, tgt, gold)
    # cutting between the two 0.7 pairs is impossible: a threshold of 0.7 keeps both
    assert got["pairs_kept"] in (1, 3)
    assert got["pairs_kept"] == 3 and got["threshold"] == 0.7


def test_bucc_task_hides_gold_without_parallel_noise() -> None:
    tatoeba = {p: ([f"{p}-xx-{i}" for i in range(5)], [f"{p}-en-{i}" for i in range(5)])
               for p in ("ara", "cmn", "deu", "fra", "hin")}
    sources = {"qa/en": ["en noise a", "en noise b", "deu-en-0"], "qa/de": ["de noise"], "xquad/de": ["de x"]}
    for p, (xx, en) in tatoeba.items():
        sources[f"tatoeba/{p}/xx"], sources[f"tatoeba/{p}/en"] = xx, en
    task = bucc_task("deu", sources, tatoeba, noise=100)
    src, tgt = task["src"], task["tgt"]
    assert {(src[s], tgt[t]) for s, t in task["gold"]} == {(f"deu-xx-{i}", f"deu-en-{i}") for i in range(5)}
    assert tgt.count("deu-en-0") == 1  # a noise copy of a gold sentence is dropped
    # other pairs give only their English side (their xx sides translate English sentences shared across pairs)
    assert not any("-xx-" in s for s in src if not s.startswith("deu"))
    assert sum(t.startswith(("ara-en", "cmn-en", "fra-en", "hin-en")) for t in tgt) == 20
    assert set(src) == {f"deu-xx-{i}" for i in range(5)} | {"de noise", "de x"}
    small = bucc_task("deu", sources, tatoeba, noise=3)
    assert small["noise"] == {"xx": 2, "en": 3}


def test_brute_force_baseline_equals_exact_knn() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(301, 12)).astype(np.float32)
    y = rng.normal(size=(257, 12)).astype(np.float32)
    s, i = brute_force_knn(x, y, 4, block=64)
    s2, i2 = knn(x, y, 4)
    np.testing.assert_array_equal(i, i2)
    np.testing.assert_allclose(s, s2, rtol=1e-5, atol=1e-5)


def test_render_names_machine_and_figures() -> None:
    res = {"machine": "x86_64, 2 cores", "commit": "abc1234", "model": "e5-small",
           "tatoeba": {"deu": {"absolute/off": 0.9, "ratio/off": 0.95}, "mean": {"absolute/off": 0.9,
                                                                             "ratio/off": 0.95}}}
    md = render(res)
    assert "abc1234" in md and "| deu | 0.900 | 0.950 |" in md
