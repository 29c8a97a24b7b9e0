"""Mining at scale: IVF search against the exact path, chunked reading, resumption, planning (its embedding cache:
tests/test_embedding_cache.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np
import pytest

from indexer import mining_search
from indexer.centering import center_sides
from indexer.mining import MinedArrays, MineOptions, mine
from indexer.mining_job import mine_texts
from indexer.mining_search import (
    ArrayRows,
    F32Rows,
    build_index,
    default_nlist,
    mine_rows,
    plan_search,
    search_rows,
)
from tests.conftest import unit

pytestmark = pytest.mark.usefixtures("single_faiss_thread")


def parallel_sides(n: int, m: int, d: int = 16, shared: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two sides sharing ``shared`` "meanings" (noisy copies), the rest unrelated, with cluster structure."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, d))
    base = centres[rng.integers(0, 40, size=n + m)] + 0.6 * rng.normal(size=(n + m, d))
    x = base[:n].copy()
    y = base[n:].copy()
    shared = min(shared, n, m)
    y[:shared] = x[:shared] + 0.15 * rng.normal(size=(shared, d))
    return unit(x), unit(y)


def as_tuples(mined: MinedArrays) -> list[tuple[int, int]]:
    return list(zip(mined.src.tolist(), mined.tgt.tolist(), strict=True))


# ---------------------------------------------------------------- planning


def test_plan_search_picks_by_size_and_budget() -> None:
    opts = MineOptions(exact_max=1000)
    assert plan_search(1000, 384, opts).kind == "exact"
    ivf = plan_search(1001, 384, opts)
    assert (ivf.kind, ivf.nlist) == ("ivf-flat", default_nlist(1001))
    assert 1 <= ivf.nprobe <= ivf.nlist
    big = plan_search(2_000_000, 384, MineOptions())
    assert big.kind == "ivf-flat" and big.index_bytes < 4 << 30  # 2M x 384 fits the 8 GB default
    tight = plan_search(2_000_000, 384, MineOptions(memory_budget=3 << 30))
    assert tight.kind == "ivf-sq8" and tight.index_bytes < 0.6 * (3 << 30)
    with pytest.raises(ValueError, match="memory budget"):
        plan_search(2_000_000, 384, MineOptions(memory_budget=1 << 30))
    with pytest.raises(ValueError, match="memory budget"):
        plan_search(2_000_000, 384, MineOptions(search="exact", memory_budget=1 << 30))
    assert plan_search(50, 8, MineOptions(search="ivf")).kind == "exact"  # too few rows for 2 lists
    assert plan_search(5000, 8, MineOptions(search="ivf", nprobe=3)).nprobe == 3
    assert plan_search(5000, 8, MineOptions(search="exact", exact_max=10)).kind == "exact"


@pytest.mark.parametrize("bad", [{"search": "lsh"}, {"nprobe": 0}, {"chunk": 0}, {"exact_max": -1},
                                 {"memory_budget": 0}, {"batch_size": 0}, {"centering": "half"}])
def test_mine_options_reject_bad_values(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        MineOptions(**bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------- rows and search


def test_f32_rows_read_like_the_array(tmp_path: Path) -> None:
    x, _ = parallel_sides(103, 5)
    path = tmp_path / "x.f32"
    path.write_bytes(x.astype("<f4").tobytes())
    rows = F32Rows(path, 103, 16)
    assert rows.shape == (103, 16)
    np.testing.assert_array_equal(rows.read(0, 103), x)
    np.testing.assert_array_equal(rows.read(97, 200), x[97:])
    assert rows.read(103, 110).shape == (0, 16)
    doubled = rows.with_transform(lambda b: b * 2)
    np.testing.assert_array_equal(doubled.read(5, 9), x[5:9] * 2)
    with pytest.raises(ValueError, match="expected 104 x 16"):
        F32Rows(path, 104, 16)


def test_chunked_search_equals_one_search(tmp_path: Path) -> None:
    x, y = parallel_sides(211, 157)
    plan = plan_search(157, 16, MineOptions(search="exact"))
    index = build_index(ArrayRows(y), plan, chunk=13)
    whole = search_rows(index, ArrayRows(x), 5, chunk=1000)
    parts = search_rows(index, ArrayRows(x), 5, chunk=17, work=tmp_path, name="fwd")
    np.testing.assert_array_equal(whole.ids, parts.ids)
    np.testing.assert_array_equal(whole.sims, parts.sims)
    assert len(list(tmp_path.glob("fwd-*.npz"))) == -(-211 // 17)
    again = search_rows(index, ArrayRows(x), 5, chunk=17, work=tmp_path, name="fwd")  # all from the files
    np.testing.assert_array_equal(whole.ids, again.ids)


def test_ivf_short_rows_are_searched_again() -> None:
    """nprobe=1 over many small lists visits fewer than k vectors for some queries; they are re-searched."""
    x, y = parallel_sides(300, 400, seed=3)
    plan = mining_search.SearchPlan("ivf-flat", 400, 16, nlist=10, nprobe=1)
    index = build_index(ArrayRows(y), plan)
    found = search_rows(index, ArrayRows(x), 60)
    assert (found.ids >= 0).all()
    assert faiss.extract_index_ivf(index).nprobe == 1  # restored
    assert all(len(set(row)) == 60 for row in found.ids.tolist())


@pytest.mark.parametrize("retrieval", ["fwd", "bwd", "max", "intersect"])
@pytest.mark.parametrize(("n", "m"), [(1237, 1999), (1500, 611)])
def test_exhaustive_ivf_equals_exact_mining(retrieval: str, n: int, m: int) -> None:
    """IVF visiting every list finds the exact neighbours: the mined pairs equal the exact path's."""
    x, y = parallel_sides(n, m)
    exact = mine(x, y, k=4, retrieval=retrieval)
    opts = MineOptions(k=4, retrieval=retrieval, search="ivf", nprobe=10_000, chunk=333, centering="off",
                       threshold=None, margin="ratio")
    got, rep = mine_rows(ArrayRows(x), ArrayRows(y), opts)
    assert rep.fwd.kind == rep.bwd.kind == "ivf-flat"
    # same pairs; scores equal to float32 precision (so near-ties may be listed in another order)
    assert set(as_tuples(got)) == {(p.src, p.tgt) for p in exact}
    np.testing.assert_allclose(got.score, [p.score for p in exact], rtol=1e-5)


def test_default_ivf_finds_the_shared_pairs() -> None:
    x, y = parallel_sides(3000, 2500, shared=500, seed=5)
    got, rep = mine_rows(ArrayRows(x), ArrayRows(y), MineOptions(exact_max=100, retrieval="intersect"))
    assert rep.fwd.kind == "ivf-flat" and rep.fwd.nprobe < rep.fwd.nlist
    found = {(s, t) for s, t in as_tuples(got) if s == t and s < 500}
    assert len(found) >= 0.95 * 500


def test_streamed_centring_equals_in_memory_centring() -> None:
    x, y = parallel_sides(700, 650, seed=2)
    y = unit(y + 0.5 * np.eye(16, dtype=np.float32)[0])  # a language offset on one side
    for mode in ("full", "offset"):
        cx, cy = center_sides(x, y, mode)
        want = mine(cx, cy)
        got, _ = mine_rows(ArrayRows(x), ArrayRows(y), MineOptions(centering=mode, chunk=128, threshold=None,
                                                                   margin="ratio"))
        assert as_tuples(got) == [(p.src, p.tgt) for p in want]
        ivf, _ = mine_rows(ArrayRows(x), ArrayRows(y), MineOptions(centering=mode, search="ivf", nprobe=999,
                                                                   threshold=None, margin="ratio"))
        assert set(as_tuples(ivf)) == {(p.src, p.tgt) for p in want}


# ---------------------------------------------------------------- resumption


def test_killed_search_resumes_from_finished_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = parallel_sides(900, 800, seed=7)
    opts = MineOptions(search="ivf", nprobe=8, chunk=100)
    want, _ = mine_rows(ArrayRows(x), ArrayRows(y), opts)
    work = tmp_path / "work"
    real = mining_search._search
    calls = {"n": 0}

    def dying(*args: object, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
        calls["n"] += 1
        if calls["n"] == 12:  # 9 forward chunks done, 2 backward chunks done
            raise KeyboardInterrupt
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(mining_search, "_search", dying)
    with pytest.raises(KeyboardInterrupt):
        mine_rows(ArrayRows(x), ArrayRows(y), opts, work=work, job_key={"job": 1})
    assert len(list(work.glob("*.npz"))) == 11
    assert (work / "fwd.faiss").is_file() and (work / "bwd.faiss").is_file()
    calls["n"] = -1000
    got, rep = mine_rows(ArrayRows(x), ArrayRows(y), opts, work=work, job_key={"job": 1})
    assert rep.resumed_chunks == 11
    assert calls["n"] == -1000 + 6  # only the 6 missing backward chunks were searched
    assert as_tuples(got) == as_tuples(want)
    np.testing.assert_array_equal(got.score, want.score)
    # another job in the same work directory starts from scratch
    _, rep2 = mine_rows(ArrayRows(x), ArrayRows(y), opts, work=work, job_key={"job": 2})
    assert rep2.resumed_chunks == 0


class CountingEncoder:
    """Deterministic pseudo-embeddings of texts; counts what it embeds; can fail on a given call."""

    def __init__(self, dim: int = 8, fail_on: int | None = None) -> None:
        self.dim = dim
        self.checksum = "c0ffee" * 8
        self.name = "counting"
        self.embedded = 0
        self.calls = 0
        self.fail_on = fail_on

    def encode_passages(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        self.calls += 1
        if self.fail_on == self.calls:
            raise KeyboardInterrupt
        self.embedded += len(texts)
        out = np.stack([np.random.default_rng(abs(hash(t)) % 2**32).normal(size=self.dim) for t in texts])
        return unit(out)


def test_mine_texts_ivf_path_maps_dedup_rows() -> None:
    enc = CountingEncoder()
    src = [f"x{i % 400}" for i in range(600)]
    pairs = mine_texts(enc, src, src, dedup=True, search="ivf", nprobe=100, retrieval="fwd", threshold=None)
    assert len(pairs) == 400 and all(p.src == p.tgt and p.src < 400 for p in pairs)
