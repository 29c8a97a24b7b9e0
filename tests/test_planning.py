"""FAISS planning (`--index auto`), tuning nprobe / efSearch to a recall target, and their manifest round trip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from indexer.build import BuildOptions, build_index
from indexer.dense import apply_search_params, build_faiss_index, load_shard_index
from indexer.manifest import MANIFEST, Manifest
from indexer.planning import (
    AUTO_HNSW,
    FLAT_MAX_VECTORS,
    TuneOptions,
    holdout_sample,
    index_bytes,
    parse_bytes,
    plan_index,
    pq_sizes,
    recall_at_k,
    tune_index,
    tune_search_params,
)
from indexer.store import open_index
from indexer.topk import top_k_dot
from tests.conftest import FakeEncoder, write_jsonl
from xlir.errors import XlirError

GiB, MiB = 2**30, 2**20


def clustered(n: int, dim: int, centers: int, seed: int, spread: float = 0.35) -> np.ndarray:
    """Unit vectors around ``centers`` random directions (a Gaussian mixture on the sphere)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, dim))
    x = c[rng.integers(centers, size=n)] / np.sqrt(dim) * 3 + spread * rng.standard_normal((n, dim)) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# plan_index
# --------------------------------------------------------------------------------------------------


def test_flat_below_the_threshold_hnsw_from_it() -> None:
    assert plan_index(0, 384).kind == "flat"
    assert plan_index(FLAT_MAX_VECTORS - 1, 384).kind == "flat"
    p = plan_index(FLAT_MAX_VECTORS, 384)
    assert (p.kind, p.options) == ("hnsw", {**AUTO_HNSW, "fallback": "ivfflat"})
    assert plan_index(10_000_000, 384).kind == "hnsw"
    assert plan_index(999, 8, flat_max=1000).kind == "flat"
    assert plan_index(1000, 8, flat_max=1000).kind == "hnsw"
    assert plan_index(1000, 8, flat_max=1000, ann="ivfflat").kind == "ivfflat"


def test_budgets_at_1m_x_384() -> None:
    n, d = 1_000_000, 384
    flat = 4 * n * d
    assert plan_index(n, d, 2 * GiB).kind == "hnsw"
    hnsw, ivf = index_bytes("hnsw", n, d, hnsw_m=AUTO_HNSW["M"]), index_bytes("ivfflat", n, d)
    assert ivf < hnsw and plan_index(n, d, hnsw - 1).kind == "ivfflat" and plan_index(n, d, ivf).kind == "ivfflat"
    # flat itself would fit, but the graph and IVF-Flat's 8-byte ids do not: the next kind down is chosen
    assert plan_index(n, d, flat).kind == "ivfsq8"
    assert plan_index(n, d, 512 * MiB).kind == "ivfsq8"
    p = plan_index(n, d, 256 * MiB)
    assert (p.kind, p.options) == ("ivfpq", {"m": 192}) and p.estimated_bytes <= 256 * MiB
    p = plan_index(n, d, 64 * MiB)
    assert (p.kind, p.options) == ("ivfpq", {"m": 48})
    assert "over the budget" in p.reason and p.memory_budget == 64 * MiB
    with pytest.raises(ValueError, match="too small"):
        plan_index(n, d, 8 * MiB)


def test_a_small_set_over_budget_gets_compressed_and_one_at_the_budget_stays_flat() -> None:
    n, d = 100_000, 384
    assert plan_index(n, d, index_bytes("flat", n, d)).kind == "flat"
    assert plan_index(n, d, index_bytes("flat", n, d) - 1).kind == "ivfsq8"


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 5_000_000), dim=st.sampled_from([8, 64, 100, 384, 768]),
       budget=st.one_of(st.none(), st.integers(1, 20 * GiB)), flat_max=st.integers(1, 1_000_000))
def test_plan_properties(n: int, dim: int, budget: int | None, flat_max: int) -> None:
    try:
        p = plan_index(n, dim, budget, flat_max=flat_max)
    except ValueError:
        assert budget is not None and budget < index_bytes("ivfpq", n, dim, m=pq_sizes(dim)[-1])
        return
    assert budget is None or p.estimated_bytes <= budget
    flat_fits = budget is None or index_bytes("flat", n, dim) <= budget
    assert (p.kind == "flat") == (n < flat_max and flat_fits)
    if budget is None:
        assert p.kind in ("flat", "hnsw")
    if p.kind == "ivfpq":  # the largest m that fits, and SQ8 did not fit
        assert budget is not None and index_bytes("ivfsq8", n, dim) > budget
        bigger = [m for m in pq_sizes(dim) if m > p.options["m"]]
        assert all(index_bytes("ivfpq", n, dim, m=m) > budget for m in bigger)


@pytest.mark.parametrize("kind,options", [("flat", {}), ("ivfflat", {}), ("ivfsq8", {}), ("ivfpq", {"m": 8}),
                                          ("hnsw", {"M": 32, "efConstruction": 40})])
def test_memory_estimates_match_the_built_indexes(kind: str, options: dict[str, Any], tmp_path: Path) -> None:
    n, d = 12_000, 32
    x = clustered(n, d, 50, seed=1)
    index, _ = build_faiss_index(kind, x, options=options)
    faiss.write_index(index, str(tmp_path / "x.faiss"))
    actual = (tmp_path / "x.faiss").stat().st_size
    est = index_bytes(kind, n, d, m=options.get("m"), hnsw_m=options.get("M", 32))
    assert abs(est - actual) / actual < 0.1, (est, actual)


@pytest.mark.parametrize("text,expected", [("8G", 8 * GiB), ("512M", 512 * MiB), ("1.5GiB", 3 * GiB // 2),
                                           ("100000", 100_000), ("64 mb", 64 * MiB), ("2t", 2 * 2**40),
                                           (" 1.5GB ", 3 * GiB // 2), (".5k", 512), (4096, 4096)])
def test_parse_bytes(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "G", "8X", "-1G", "0", "eight", "1.5.3G", "8G extra", "0.1", -5])
def test_parse_bytes_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_bytes(text)


# --------------------------------------------------------------------------------------------------
# Exact search, held-out sample, tuning
# --------------------------------------------------------------------------------------------------


def test_top_k_dot_with_exclusion_and_transform_equals_brute_force() -> None:
    x = clustered(503, 12, 5, seed=2)
    q, rows = holdout_sample(x, 20, noise=0.3, seed=3)
    assert len(set(rows.tolist())) == 20
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)

    def transform(block: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return block * (1.0 + (idx % 3)[:, None])  # row-dependent, so chunk offsets matter

    got = top_k_dot(x, q, 10, exclude=rows, transform=transform, chunk=7)
    full = q @ transform(x, np.arange(len(x))).T
    full[np.arange(20), rows] = -np.inf
    for i in range(20):
        expected = np.lexsort((np.arange(len(x)), -full[i]))[:10]
        assert got[i].tolist() == expected.tolist()
        assert rows[i] not in got[i]


def test_recall_at_k() -> None:
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    assert recall_at_k(exact, exact) == 1.0
    assert recall_at_k(np.array([[3, 2, 9], [-1, -1, -1]]), exact) == pytest.approx((2 / 3 + 0) / 2)


@pytest.mark.parametrize("kind", ["ivfflat", "ivfsq8", "hnsw"])
def test_tuning_reaches_the_target_on_clustered_data_and_holds_on_fresh_queries(kind: str) -> None:
    both = clustered(30_500, 32, 200, seed=4, spread=1.5)
    x, fresh = both[:30_000], both[30_000:]  # fresh: other points of the same mixture
    index, out = build_faiss_index(kind, x, options={"M": 16, "efConstruction": 40},
                                   tune=TuneOptions(target_recall=0.95, sample=200))
    assert index.ntotal == len(x)
    name = "efSearch" if kind == "hnsw" else "nprobe"
    t = out["tuning"]
    assert t["reached"] and t["recall_at_10"] >= 0.95 and t["param"] == name
    assert t["sample"] == ("last rows, added after tuning" if kind == "hnsw" else "leave-one-out")
    inner = faiss.downcast_index(index)
    assert (inner.hnsw.efSearch if kind == "hnsw" else inner.nprobe) == out[name]
    # minimal to within 1/8: a smaller measured value missed the target (unless the smallest was enough)
    assert t["recall_lower_bound"] >= 0.95 and t["recall_lower_bound"] < t["recall_at_10"]
    lower = {int(v): r for v, r in t["sweep_lower_bound"].items()}
    smaller = [v for v in lower if v < out[name]]
    if smaller:
        best_below = max(smaller)
        assert lower[best_below] < 0.95 and out[name] - best_below <= max(1, out[name] // 8)
    # the held-out estimate carries over to unseen queries of the same distribution
    exact = top_k_dot(x, fresh, 10)
    tuned = recall_at_k(index.search(fresh, 10)[1], exact)
    assert tuned >= 0.93
    if kind != "hnsw" and out[name] >= 4:  # much less work does not get there
        apply_search_params(index, {"nprobe": out[name] // 4})
        assert inner.nprobe == out[name] // 4
        assert recall_at_k(index.search(fresh, 10)[1], exact) < tuned


def test_a_stricter_confidence_never_picks_less() -> None:
    x = clustered(20_000, 32, 100, seed=11, spread=3.0)
    index, _ = build_faiss_index("ivfflat", x)
    q, rows = holdout_sample(x, 300, seed=2)
    exact = top_k_dot(x, q, 10, exclude=rows)
    picks = [tune_search_params(index, q, exact, exclude=rows, z=z)["nprobe"] for z in (0, 1.645, 3)]
    assert picks == sorted(picks) and picks[0] < picks[-1]


def test_unreachable_target_keeps_the_best_value() -> None:
    x = clustered(12_000, 32, 50, seed=5)
    index, _ = build_faiss_index("ivfpq", x, options={"m": 4})
    q, rows = holdout_sample(x, 100, seed=1)
    exact = top_k_dot(x, q, 10, exclude=rows)
    out = tune_search_params(index, q, exact, target_recall=1.0, exclude=rows)
    t = out["tuning"]
    assert not t["reached"] and t["recall_at_10"] < 1.0
    assert t["recall_at_10"] == max(t["sweep"].values())
    assert str(faiss.downcast_index(index).nlist) in t["sweep"]  # it tried every list


def test_exact_indexes_are_not_tuned() -> None:
    x = clustered(100, 8, 3, seed=6)
    index, params = build_faiss_index("flat", x, tune=TuneOptions())
    assert tune_index(index, x) == {} and params == {"type": "flat"}


def test_hnsw_is_tuned_on_rows_it_does_not_hold_yet_and_ids_stay_rows() -> None:
    x = clustered(3000, 16, 20, seed=10, spread=1.5)
    index, params = build_faiss_index("hnsw", x, options={"M": 8, "efConstruction": 40}, tune=TuneOptions(sample=100))
    assert params["tuning"]["queries"] == 100 and index.ntotal == 3000
    _, ids = index.search(x[2950:], 1)  # the held-out rows were added last, under their own row numbers
    assert float(np.mean(ids[:, 0] == np.arange(2950, 3000))) >= 0.95


def test_small_ivf_shard_falls_back_to_flat_with_a_reason() -> None:
    x = clustered(500, 8, 3, seed=7)
    _, params = build_faiss_index("ivfflat", x, options={"min_docs": 501})
    assert params == {"type": "flat", "fallback_from": "ivfflat", "reason": "500 < 501 docs"}
    _, params = build_faiss_index("ivfsq8", x, options={"min_docs": 500})
    assert params["type"] == "ivfsq8" and params["nlist"] == 12


# --------------------------------------------------------------------------------------------------
# Build with --index auto, manifest round trip, the store applies the recorded parameters
# --------------------------------------------------------------------------------------------------

WORDS = [f"w{i}" for i in range(60)]


@pytest.fixture(scope="module")
def auto_index(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, FakeEncoder]:
    tmp = tmp_path_factory.mktemp("auto")
    rng = np.random.default_rng(8)
    docs = [{"id": f"d{i}", "text": " ".join(rng.choice(WORDS, size=4)), "lang": "en" if i % 3 else "de"}
            for i in range(3000)]
    corpus = write_jsonl(tmp / "corpus.jsonl", docs)
    enc = FakeEncoder(dim=16)
    opts = BuildOptions(progress=False, shard_size=1200, flat_max=2000, ivf_min_docs=500, target_recall=0.9)
    build_index([corpus], tmp / "idx", enc, opts)
    return tmp / "idx", enc


def test_auto_above_the_forced_threshold_builds_tuned_graph_shards(auto_index: tuple[Path, FakeEncoder]) -> None:
    m = Manifest.read(auto_index[0])
    vs = m.vector_sets["main"]
    assert vs.index_type == "hnsw"
    assert vs.index_plan is not None
    assert vs.index_plan["requested"] == "auto" and vs.index_plan["kind"] == "hnsw"
    assert vs.index_plan["flat_max"] == 2000 and vs.index_plan["target_recall"] == 0.9
    assert [s.count for s in m.shards] == [1200, 1200, 600]
    for shard in m.shards:
        p = shard.index["main"]
        assert (p["type"], p["M"], p["efConstruction"]) == ("hnsw", 16, 40)
        t = p["tuning"]
        assert t["reached"] and t["recall_lower_bound"] >= 0.9 and t["sample"] == "last rows, added after tuning"
        assert t["sweep"][str(p["efSearch"])] == t["recall_at_10"]
        assert p["centering"] == vs.centering


def test_manifest_round_trip_keeps_plan_and_tuning(auto_index: tuple[Path, FakeEncoder], tmp_path: Path) -> None:
    m = Manifest.read(auto_index[0])
    m.write(tmp_path)
    again = Manifest.read(tmp_path)
    assert again == m
    assert json.loads((tmp_path / MANIFEST).read_text())["shards"][0]["index"]["main"]["tuning"]["param"] == "efSearch"


def test_the_store_applies_the_recorded_ef_search(auto_index: tuple[Path, FakeEncoder], tmp_path: Path) -> None:
    import shutil

    src = auto_index[0]
    idx = open_index(src)
    m = Manifest.read(src)
    for shard, info in zip(idx.shards, m.shards, strict=True):
        assert faiss.downcast_index(shard.index).hnsw.efSearch == info.index["main"]["efSearch"]
    # a different recorded value is what the loaded index uses (the manifest is the source of truth)
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    raw = json.loads((copy / MANIFEST).read_text())
    raw["shards"][1]["index"]["main"]["efSearch"] = 333
    (copy / MANIFEST).write_text(json.dumps(raw))
    idx2 = open_index(copy)
    assert faiss.downcast_index(idx2.shards[1].index).hnsw.efSearch == 333
    assert faiss.downcast_index(idx2.shards[0].index).hnsw.efSearch == m.shards[0].index["main"]["efSearch"]


def test_the_store_applies_a_recorded_nprobe(tmp_path: Path) -> None:
    x = clustered(2000, 8, 10, seed=12)
    index, _ = build_faiss_index("ivfflat", x, options={"min_docs": 0})
    faiss.write_index(index, str(tmp_path / "i.faiss"))
    shard = load_shard_index(tmp_path / "i.faiss", 0, search_params={"type": "ivfflat", "nprobe": 7})
    assert faiss.downcast_index(shard.index).nprobe == 7


def test_a_graph_that_cannot_reach_the_target_falls_back_to_ivf_flat() -> None:
    x = np.random.default_rng(13).standard_normal((6000, 64)).astype(np.float32)  # uniform: the hardest case
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index, params = build_faiss_index("hnsw", x, options={"M": 4, "efConstruction": 8, "fallback": "ivfflat",
                                                          "min_docs": 0}, tune=TuneOptions(target_recall=1.0))
    assert params["type"] == "ivfflat" and params["fallback_from"] == "hnsw"
    assert not params["hnsw_tuning"]["reached"] and "HNSW reached recall at 10" in params["reason"]
    assert params["tuning"]["reached"] and index.ntotal == 6000
    assert isinstance(faiss.downcast_index(index), faiss.IndexIVFFlat)


def test_auto_search_finds_what_exact_search_finds(auto_index: tuple[Path, FakeEncoder]) -> None:
    idx = open_index(auto_index[0])
    enc = auto_index[1]
    q = enc.encode_queries([" ".join(WORDS[i : i + 3]) for i in range(0, 60, 3)])
    assert idx.centering == "full"  # two languages: the shards index centred vectors, and tuning saw them centred
    approx = idx.dense(q, 10)
    brute = idx._dense_exact(q, 10, idx.centering, None)  # brute force over the same centred raw vectors
    found = np.asarray([h.rows for h in approx])
    truth = np.asarray([h.rows for h in brute])
    assert recall_at_k(found, truth) >= 0.85


def test_load_shard_index_applies_hnsw_ef_search(tmp_path: Path) -> None:
    x = clustered(300, 8, 3, seed=9)
    index, _ = build_faiss_index("hnsw", x, options={"M": 8})
    faiss.write_index(index, str(tmp_path / "h.faiss"))
    shard = load_shard_index(tmp_path / "h.faiss", 0, search_params={"type": "hnsw", "efSearch": 77})
    assert faiss.downcast_index(shard.index).hnsw.efSearch == 77


def test_explicit_kind_is_recorded_as_requested(tmp_path: Path) -> None:
    docs = [{"id": f"d{i}", "text": f"w{i % 7} w{i % 11}", "lang": "en"} for i in range(40)]
    corpus = write_jsonl(tmp_path / "c.jsonl", docs)
    m = build_index([corpus], tmp_path / "idx", FakeEncoder(dim=8), BuildOptions(progress=False, index_type="flat"))
    vs = m.vector_sets["main"]
    assert vs.index_type == "flat" and vs.index_plan == {
        "requested": "flat", "kind": "flat", "reason": "requested", "options": {}, "target_recall": 0.95}
    default = build_index([corpus], tmp_path / "idx2", FakeEncoder(dim=8), BuildOptions(progress=False))
    assert default.vector_sets["main"].index_type == "flat"  # auto on a small corpus: exact
    assert default.vector_sets["main"].index_plan["requested"] == "auto"  # type: ignore[index]


def test_build_options_validate() -> None:
    with pytest.raises(XlirError, match="unknown index type"):
        BuildOptions(index_type="annoy")
    with pytest.raises(XlirError, match="memory budget"):
        BuildOptions(memory_budget=0)
    with pytest.raises(XlirError, match="target recall"):
        BuildOptions(target_recall=1.5)


def test_a_budget_too_small_is_a_clear_build_error(tmp_path: Path) -> None:
    docs = [{"id": f"d{i}", "text": f"w{i}", "lang": "en"} for i in range(30)]
    corpus = write_jsonl(tmp_path / "c.jsonl", docs)
    with pytest.raises(XlirError, match="too small"):
        build_index([corpus], tmp_path / "idx", FakeEncoder(dim=8), BuildOptions(progress=False, memory_budget=10))
    assert not (tmp_path / "idx").exists()


def test_cli_rejects_a_malformed_budget(tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "x"}])
    xlir = Path(sys.executable).with_name("xlir")
    res = subprocess.run([str(xlir), "index", str(corpus), "--out", str(tmp_path / "idx"), "--memory-budget", "lots"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--memory-budget" in res.stderr and "Traceback" not in res.stderr
