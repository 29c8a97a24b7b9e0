"""Token-budget batching (models.encoders.token_budget_batches): a pure function, tested on its own."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.base import token_budget_batches


def _check_invariants(lengths: list[int], budget: int, max_rows: int, batches: list[np.ndarray]) -> None:
    flat = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
    assert sorted(flat.tolist()) == list(range(len(lengths)))  # every index exactly once
    for b in batches:
        lens = [lengths[i] for i in b]
        assert 1 <= len(b) <= max_rows
        assert lens == sorted(lens, reverse=True)  # longest first inside a batch
        assert len(b) == 1 or len(b) * max(lens) <= budget  # only a lone row may exceed the budget
    # batches follow each other longest first
    firsts = [lengths[b[0]] for b in batches]
    assert firsts == sorted(firsts, reverse=True)


def test_budget_and_row_limit_shape_the_batches() -> None:
    lengths = [10, 50, 20, 50, 5, 30, 20]
    batches = token_budget_batches(lengths, max_tokens=100, max_batch_size=3)
    # sorted longest first, ties in input order: 1, 3 (50), 5 (30), 2, 6 (20), 0 (10), 4 (5)
    assert [b.tolist() for b in batches] == [[1, 3], [5, 2, 6], [0, 4]]
    _check_invariants(lengths, 100, 3, batches)


def test_a_text_longer_than_the_budget_is_a_batch_of_its_own() -> None:
    lengths = [3, 512, 4, 600]
    batches = token_budget_batches(lengths, max_tokens=256, max_batch_size=32)
    assert [b.tolist() for b in batches] == [[3], [1], [2, 0]]


def test_row_limit_applies_when_the_budget_would_allow_more() -> None:
    batches = token_budget_batches([1] * 10, max_tokens=10_000, max_batch_size=4)
    assert [len(b) for b in batches] == [4, 4, 2]


def test_zero_lengths_and_empty_input() -> None:
    assert token_budget_batches([], 100, 8) == []
    batches = token_budget_batches([0, 0, 0], max_tokens=2, max_batch_size=8)
    assert [len(b) for b in batches] == [2, 1]  # an empty text still costs a row of one token


def test_results_written_back_by_index_restore_the_input_order() -> None:
    lengths = [7, 1, 9, 3, 9, 2, 8]
    out = np.full(len(lengths), -1)
    for b in token_budget_batches(lengths, max_tokens=20, max_batch_size=3):
        out[b] = [lengths[i] * 10 for i in b]  # what an encoder would compute for each row
    assert out.tolist() == [x * 10 for x in lengths]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        token_budget_batches([1], 0, 4)
    with pytest.raises(ValueError):
        token_budget_batches([1], 10, 0)


@given(st.lists(st.integers(0, 700), max_size=80), st.integers(1, 2000), st.integers(1, 40))
def test_invariants_at_awkward_sizes(lengths: list[int], budget: int, max_rows: int) -> None:
    batches = token_budget_batches(lengths, budget, max_rows)
    _check_invariants(lengths, budget, max_rows, batches)
    # greedy: a batch stops early only at the row limit, the end, or when the next row would break the budget
    for b, nxt in zip(batches, batches[1:], strict=False):
        longest = max(lengths[b[0]], 1)
        assert len(b) == max_rows or (len(b) + 1) * longest > budget
        assert nxt.size
