"""The CI subset of the benchmark matrix (benchmarks/matrix_ci.yaml) on the real model: a retrieval regression
fails the test suite. The sample corpus, the first 4 XQuAD-R articles (50 test questions per language, dense with
centring full and off) and 200 Tatoeba lines of 2 pairs; about a minute on 2 cores with cold caches."""

from __future__ import annotations

import pytest

from benchmarks.datasets import default_data_dir
from benchmarks.matrix import MATRIX, check, load_matrix, measure, render

CI = MATRIX.with_name("matrix_ci.yaml")


@pytest.mark.model
@pytest.mark.slow  # about a minute with cold caches (it builds its indexes), 20 s warm
def test_ci_subset_of_the_matrix_holds_and_catches_a_regression() -> None:
    before = CI.read_bytes()
    m = load_matrix(CI)
    measured = measure(m.cells, default_data_dir(), "e5-small", m.slice)
    results = check(m.cells, measured)
    assert all(r.ok for r in results), render(results)
    assert CI.read_bytes() == before
    assert {c.dataset for c in m.cells} == {"sample", "xquad-r-sentence", "tatoeba"}
    # the same measurement with one cell below its expectation by more than its tolerance fails that cell, and only
    # that one
    cell = next(c for c in m.cells if c.condition == "dense" and c.lang == "zh")
    worse = {**measured, cell.key: cell.expected - cell.tolerance - 0.001}
    assert [r.cell for r in check(m.cells, worse) if not r.ok] == [cell]
