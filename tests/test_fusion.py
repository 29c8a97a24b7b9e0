import json
from pathlib import Path

import numpy as np
import pytest

from app import fusion
from app.fusion import Run

GOLDEN = json.loads((Path(__file__).parent / "golden" / "fusion.json").read_text())


def _runs() -> dict[str, Run]:
    return {name: Run(np.array(r["rows"]), np.array(r["scores"])) for name, r in GOLDEN["runs"].items()}


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=lambda c: f"{c['method']}-{c['params']}")
def test_fusion_matches_golden_file(case: dict) -> None:
    runs = _runs()
    if case["method"] == "rrf":
        got = fusion.rrf(runs, rrf_k=case["params"]["rrf_k"])
    else:
        got = fusion.weighted(runs, case["params"]["weights"])
    expected = sorted(case["expected"], key=lambda e: (-e["score"], e["row"]))
    assert [h.row for h in got] == [e["row"] for e in expected]
    for hit, exp in zip(got, expected, strict=True):
        assert hit.score == pytest.approx(exp["score"], abs=1e-12)
        assert hit.ranks == exp["ranks"]


def test_provenance_keeps_raw_scores_of_each_run() -> None:
    got = {h.row: h for h in fusion.rrf(_runs())}
    assert got[3].scores == {"dense": 0.9, "bm25": 3.0}
    assert got[5].scores == {"dense": None, "bm25": 6.0}


def test_k_truncates_after_sorting() -> None:
    assert [h.row for h in fusion.rrf(_runs(), k=2)] == [1, 3]


def test_ties_break_by_lower_row() -> None:
    runs = {"a": Run(np.array([9, 2]), np.array([1.0, 0.5])), "b": Run(np.array([2, 9]), np.array([1.0, 0.5]))}
    assert [h.row for h in fusion.rrf(runs)] == [2, 9]


def test_minmax_constant_and_empty_lists() -> None:
    assert fusion.minmax(np.array([3.0, 3.0])).tolist() == [1.0, 1.0]
    assert fusion.minmax(np.array([])).tolist() == []
    assert fusion.minmax(np.array([1.0, 3.0, 2.0])).tolist() == [0.0, 1.0, 0.5]


def test_weighted_min_fill_for_missing_documents() -> None:
    runs = {"dense": Run(np.array([1, 2]), np.array([0.9, 0.1])), "bm25": Run(np.array([3]), np.array([5.0]))}
    got = {h.row: h.score for h in fusion.weighted(runs, {"dense": 0.3, "bm25": 0.7})}
    # row 3 is missing from dense (min-fill -> 0); a one-element bm25 list normalises to 1
    assert got == pytest.approx({1: 0.3, 2: 0.0, 3: 0.7})


def test_single_run_keeps_its_scores_and_order() -> None:
    run = Run(np.array([4, 2, 8]), np.array([3.0, 2.0, 2.0]))
    got = fusion.single("bm25", run)
    assert [(h.row, h.score, h.ranks["bm25"]) for h in got] == [(4, 3.0, 1), (2, 2.0, 2), (8, 2.0, 3)]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="rrf_k"):
        fusion.rrf(_runs(), rrf_k=-1)
    with pytest.raises(ValueError, match="no weight"):
        fusion.weighted(_runs(), {"dense": 1.0})
    with pytest.raises(ValueError):
        Run(np.array([1, 2]), np.array([1.0]))
