"""benchmarks/ray_scaling.py: the pure helpers of the scaling benchmark and its in-process fan-out check (the
product's shards and merge against one flat index), and the same through Ray shard actors (marked ray)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.ray_fanout import exact_top_k, mismatches, split_offsets
from benchmarks.ray_scaling import reference, simulate_inprocess, tie_at_cut


def test_split_offsets_cover_the_range_in_near_equal_parts() -> None:
    assert split_offsets(10, 3) == [(0, 3), (3, 7), (7, 10)]
    parts = split_offsets(131_072, 64)
    assert parts[0] == (0, 2048) and parts[-1] == (129_024, 131_072)
    assert {b - a for a, b in parts} == {2048}


def test_exact_top_k_orders_equal_scores_by_lower_row_and_drops_missing() -> None:
    scores = np.asarray([0.5, 0.9, 0.5, 0.7, 0.5], dtype=np.float32)
    ids = np.asarray([7, 3, 2, -1, 4])
    s, r = exact_top_k(scores, ids, 3)
    assert r.tolist() == [3, 2, 4]
    assert s.tolist() == [np.float32(0.9), np.float32(0.5), np.float32(0.5)]


def test_mismatches_counts_any_difference_in_ids_or_order() -> None:
    exact = np.asarray([[1, 2], [3, 4]])
    assert mismatches([np.asarray([1, 2]), np.asarray([4, 3])], exact) == {"queries": 2, "mismatches": 1}


def test_tie_at_cut_allows_only_a_different_choice_among_the_last_equal_scores() -> None:
    assert tie_at_cut(["a", "b", "c"], ["a", "c", "b"], np.asarray([0.9, 0.5, 0.5]))
    assert not tie_at_cut(["a", "b", "c"], ["a", "c", "b"], np.asarray([0.9, 0.8, 0.5]))
    assert not tie_at_cut(["a", "b"], ["b", "a"], np.asarray([0.9, 0.5]))


def test_the_in_process_fan_out_merges_exactly_for_any_shard_count() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1500, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    queries = rng.standard_normal((12, 16)).astype(np.float32)
    exact, ties = reference(x, queries, [5, 40])
    assert ties == {5: 0, 40: 0}
    rows = simulate_inprocess(x, queries, exact, [1, 3, 7], [5, 40])
    assert [(r["shards"], r["k"]) for r in rows] == [(1, 5), (1, 40), (3, 5), (3, 40), (7, 5), (7, 40)]
    assert all(r["mismatches"] == 0 and r["queries"] == 12 for r in rows)
    assert all(r["search_shards_same"] == 12 for r in rows)  # the timed decomposition is search_shards
    assert all(0 < r["merge_share"] < 1 for r in rows)
    # a wrong reference is caught: the fan-out is compared, not trusted
    wrong = {k: (s, np.roll(r, 1, axis=1)) for k, (s, r) in exact.items()}
    assert all(r["mismatches"] == 12 for r in simulate_inprocess(x, queries, wrong, [3], [5]))


@pytest.mark.ray
def test_the_fan_out_through_ray_shard_actors_merges_exactly(ray_cluster: str) -> None:
    from benchmarks.ray_fanout import simulate_ray

    rng = np.random.default_rng(1)
    x = rng.standard_normal((600, 16)).astype(np.float32)
    queries = rng.standard_normal((6, 16)).astype(np.float32)
    exact, _ = reference(x, queries, [5])
    # 1 shard: the product's ShardServer actor; 3 shards over at most 2 actors: grouped (2 + 1 shards)
    rows = simulate_ray(x, queries, exact, [1, 3], [5], address=ray_cluster, max_actors=2)
    assert [(r["shards"], r["actors"], r["shards_per_actor"]) for r in rows] == [(1, 1, 1), (3, 2, 2)]
    assert all(r["mismatches"] == 0 and r["queries"] == 6 for r in rows)
    assert all(r["actors_rss_mib"] > 0 for r in rows)
