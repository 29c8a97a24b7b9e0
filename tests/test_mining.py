"""Margin-based bitext mining: array core against brute-force numpy references, and the file job."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer import mining_job
from indexer.mining import (
    MARGINS,
    MIN_RATIO_DENOMINATOR,
    RETRIEVALS,
    MinedPair,
    apply_margin,
    knn,
    margin_scores,
    mine,
)
from indexer.mining_job import mine_files, mine_texts, read_sentences
from tests.conftest import unit
from xlir.errors import CorpusError

pytestmark = pytest.mark.usefixtures("single_faiss_thread")


def rand_unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    return unit(rng.normal(size=(n, d)))


# ---------------------------------------------------------------- brute-force references (float64)


def ref_margin_matrix(x: np.ndarray, y: np.ndarray, k: int, margin: str) -> np.ndarray:
    """Margin score of every (src, tgt) pair: full similarity matrix, k-NN means, formula."""
    sim = x.astype(np.float64) @ y.astype(np.float64).T
    kf, kb = min(k, sim.shape[1]), min(k, sim.shape[0])
    fwd_avg = -np.sort(-sim, axis=1)[:, :kf].mean(axis=1)
    bwd_avg = -np.sort(-sim.T, axis=1)[:, :kb].mean(axis=1)
    denom = (fwd_avg[:, None] + bwd_avg[None, :]) / 2
    if margin == "ratio":  # the denominator is floored (random vectors often have a neighbourhood mean <= 0)
        return sim / np.maximum(denom, MIN_RATIO_DENOMINATOR)
    if margin == "distance":
        return sim - denom
    return sim


def ref_mine(
    x: np.ndarray,
    y: np.ndarray,
    k: int,
    margin: str,
    retrieval: str,
    threshold: float | None = None,
    one_to_one: bool = False,
) -> list[tuple[float, int, int]]:
    sim = x.astype(np.float64) @ y.astype(np.float64).T
    score = ref_margin_matrix(x, y, k, margin)
    n, m = sim.shape

    def ranked(values: np.ndarray, ids: list[int]) -> list[int]:  # by value desc, ties by id asc
        return sorted(ids, key=lambda i: (-float(values[i]), i))

    fwd_nn = [ranked(sim[i], list(range(m)))[:k] for i in range(n)]
    bwd_nn = [ranked(sim[:, j], list(range(n)))[:k] for j in range(m)]
    fwd_best = [ranked(score[i], fwd_nn[i])[0] for i in range(n)]
    bwd_best = [ranked(score[:, j], bwd_nn[j])[0] for j in range(m)]
    fwd = [(i, fwd_best[i]) for i in range(n)]
    bwd = [(bwd_best[j], j) for j in range(m)]
    if retrieval == "fwd":
        pairs = fwd
    elif retrieval == "bwd":
        pairs = bwd
    elif retrieval == "intersect":
        pairs = [(i, j) for i, j in fwd if bwd_best[j] == i]
    else:
        pairs = sorted(set(fwd) | set(bwd))
    out = [(float(score[i, j]), i, j) for i, j in pairs]
    out.sort(key=lambda p: (-p[0], p[1], p[2]))
    if retrieval == "max" or one_to_one:
        used_s: set[int] = set()
        used_t: set[int] = set()
        greedy = []
        for sc, i, j in out:
            if i not in used_s and j not in used_t:
                used_s.add(i)
                used_t.add(j)
                greedy.append((sc, i, j))
        out = greedy
    if threshold is not None:
        out = [p for p in out if p[0] >= threshold]
    return out


def assert_same_pairs(got: list[MinedPair], want: list[tuple[float, int, int]]) -> None:
    assert [(p.src, p.tgt) for p in got] == [(i, j) for _, i, j in want]
    np.testing.assert_allclose([p.score for p in got], [s for s, _, _ in want], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- knn


@pytest.mark.parametrize("nx", [1, 7, 33, 257])
@pytest.mark.parametrize("ny", [1, 7, 33, 257])
def test_knn_equals_brute_force(nx: int, ny: int) -> None:
    rng = np.random.default_rng(nx * 1000 + ny)
    x, y = rand_unit(rng, nx, 24), rand_unit(rng, ny, 24)
    full = x.astype(np.float64) @ y.astype(np.float64).T
    for k, chunk in [(1, 5), (3, 1), (5, 32), (10, 100), (400, 256)]:
        sims, ids = knn(x, y, k, chunk=chunk)
        kk = min(k, ny)
        assert sims.shape == ids.shape == (nx, kk)
        assert sims.dtype == np.float32 and ids.dtype == np.int64
        want = np.argsort(-full, axis=1, kind="stable")[:, :kk]
        np.testing.assert_array_equal(ids, want)
        np.testing.assert_allclose(sims, np.take_along_axis(full, want, axis=1), atol=1e-5)


def test_knn_ties_broken_by_lower_id() -> None:
    rng = np.random.default_rng(0)
    a, b = rand_unit(rng, 2, 8)
    y = np.stack([b, a, b, a, a])
    sims, ids = knn(a[None], y, 5)
    assert ids[0].tolist() == [1, 3, 4, 0, 2]
    assert sims[0, 0] == sims[0, 1] == sims[0, 2]
    assert knn(a[None], y, 2)[1][0].tolist() == [1, 3]


def test_knn_rejects_bad_input() -> None:
    x = np.ones((3, 4), np.float32) / 2
    with pytest.raises(ValueError, match="dimension mismatch"):
        knn(x, np.ones((3, 5), np.float32), 2)
    with pytest.raises(ValueError, match="k must be"):
        knn(x, x, 0)
    with pytest.raises(ValueError, match="chunk must be"):
        knn(x, x, 1, chunk=0)
    with pytest.raises(ValueError, match="empty"):
        knn(x, np.zeros((0, 4), np.float32), 1)


# ---------------------------------------------------------------- margins


@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("k", [1, 2, 4, 5, 50])
def test_margin_scores_match_reference(margin: str, k: int) -> None:
    rng = np.random.default_rng(k)
    x, y = rand_unit(rng, 33, 16), rand_unit(rng, 21, 16)
    src, tgt = np.meshgrid(np.arange(33), np.arange(21), indexing="ij")
    got = margin_scores(x, y, src.ravel(), tgt.ravel(), k=k, margin=margin, chunk=7)
    want = ref_margin_matrix(x, y, k, margin).ravel()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_apply_margin_formulas() -> None:
    cos, fa, ba = np.array([0.8, 0.5]), np.array([0.6, 0.4]), np.array([0.2, 0.6])
    np.testing.assert_allclose(apply_margin(cos, fa, ba, "ratio"), [0.8 / 0.4, 0.5 / 0.5])
    np.testing.assert_allclose(apply_margin(cos, fa, ba, "distance"), [0.8 - 0.4, 0.5 - 0.5])
    np.testing.assert_allclose(apply_margin(cos, fa, ba, "absolute"), cos)
    with pytest.raises(ValueError, match="unknown margin"):
        apply_margin(cos, fa, ba, "cosine")


# ---------------------------------------------------------------- mine vs brute force

SIZES = [(1, 1), (1, 7), (7, 1), (7, 33), (33, 7), (57, 40)]


@pytest.mark.parametrize("retrieval", RETRIEVALS)
@pytest.mark.parametrize(("n", "m"), SIZES)
def test_mine_matches_brute_force(retrieval: str, n: int, m: int) -> None:
    rng = np.random.default_rng(n * 100 + m)
    x, y = rand_unit(rng, n, 12), rand_unit(rng, m, 12)
    for k in range(1, 6):
        for margin in MARGINS:
            got = mine(x, y, k=k, margin=margin, retrieval=retrieval, chunk=5)
            assert_same_pairs(got, ref_mine(x, y, k, margin, retrieval))


@pytest.mark.parametrize("retrieval", ["fwd", "bwd"])
def test_mine_one_to_one_matches_brute_force(retrieval: str) -> None:
    rng = np.random.default_rng(7)
    x, y = rand_unit(rng, 45, 6), rand_unit(rng, 30, 6)  # low dim: many collisions to resolve
    for k in (1, 3, 5):
        got = mine(x, y, k=k, retrieval=retrieval, one_to_one=True)
        want = ref_mine(x, y, k, "ratio", retrieval, one_to_one=True)
        assert_same_pairs(got, want)
        assert len({p.src for p in got}) == len({p.tgt for p in got}) == len(got)
        plain = mine(x, y, k=k, retrieval=retrieval)
        side = [p.tgt for p in plain] if retrieval == "fwd" else [p.src for p in plain]
        assert len(set(side)) < len(side)  # the construction does produce collisions


def test_output_sorted_and_ties_by_index() -> None:
    v = rand_unit(np.random.default_rng(1), 3, 8)
    x = np.concatenate([v, v])  # every score appears twice
    got = mine(x, v, k=1, retrieval="fwd")
    keys = [(-p.score, p.src, p.tgt) for p in got]
    assert keys == sorted(keys)
    assert [p.src for p in got[:2]] == sorted(p.src for p in got[:2])
    assert all(isinstance(p.score, float) and isinstance(p.src, int) for p in got)


# ---------------------------------------------------------------- planted pairs, hubness


def test_planted_permutation_recovered() -> None:
    rng = np.random.default_rng(42)
    n, d = 60, 64
    x = rand_unit(rng, n, d)
    perm = rng.permutation(n)  # y[perm[i]] is the translation of x[i]
    noisy = unit(x + 0.6 * rng.normal(size=(n, d)) / np.sqrt(d))
    distractors = rand_unit(rng, 40, d)
    y = np.empty((n, d), np.float32)
    y[perm] = noisy
    y = np.concatenate([y, distractors])
    y_order = rng.permutation(len(y))  # shuffle distractors in among the translations
    y = y[y_order]
    where = np.argsort(y_order)  # old row -> new row
    planted = {(i, int(where[perm[i]])) for i in range(n)}
    for retrieval in ("max", "intersect", "fwd"):
        got = mine(x, y, margin="ratio", retrieval=retrieval)
        assert {(p.src, p.tgt) for p in got} == planted, retrieval


def hub_case(seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Anisotropic sources around a common direction; targets are noisy translations, plus one
    target that is (almost) the mean of the sources, so plain cosine finds it close to everything."""
    rng = np.random.default_rng(seed)
    n, d = 40, 256
    c = unit(rng.normal(size=d))
    r = rng.normal(size=(n, d)) / np.sqrt(d)
    x = unit(c + r)
    y = unit(c + r + 1.5 * rng.normal(size=(n, d)) / np.sqrt(d))
    hub = unit(x.mean(axis=0) + 0.01 * rng.normal(size=d) / np.sqrt(d))
    return x, np.concatenate([y, hub[None]]), n


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ratio_margin_fixes_hubness(seed: int) -> None:
    x, y, hub = hub_case(seed)
    n = len(x)
    cos = mine(x, y, margin="absolute", retrieval="fwd")
    ratio = mine(x, y, margin="ratio", retrieval="fwd")
    cos_hub = sum(p.tgt == hub for p in cos)
    cos_correct = sum(p.tgt == p.src for p in cos)
    assert cos_hub >= n // 2  # plain cosine: the hub is many sources' nearest "translation"
    assert sum(p.tgt == hub for p in ratio) == 0
    assert sum(p.tgt == p.src for p in ratio) == n >= cos_correct
    # one-to-one retrieval: cosine can spend the hub only once, margin still gets everything right
    assert {(p.src, p.tgt) for p in mine(x, y, margin="ratio")} == {(i, i) for i in range(n)}


# ---------------------------------------------------------------- threshold, one_to_one, errors


def test_threshold_filters_scores() -> None:
    rng = np.random.default_rng(3)
    x, y = rand_unit(rng, 50, 8), rand_unit(rng, 40, 8)
    for retrieval in RETRIEVALS:
        full = mine(x, y, retrieval=retrieval)
        cut = sorted(p.score for p in full)[len(full) // 2]
        got = mine(x, y, retrieval=retrieval, threshold=cut)
        assert got == [p for p in full if p.score >= cut]
        assert got and min(p.score for p in got) >= cut
    assert mine(x, y, threshold=1e9) == []


def test_one_to_one_greedy_keeps_best_claim() -> None:
    t0, t1 = np.eye(4, dtype=np.float32)[:2]
    x = unit(np.stack([t0 + 0.1 * t1, t0 + 0.3 * t1, t1 + 0.05 * t0]))
    y = np.stack([t0, t1])
    plain = mine(x, y, k=1, margin="absolute", retrieval="fwd")
    assert [(p.src, p.tgt) for p in plain] == [(2, 1), (0, 0), (1, 0)]
    strict = mine(x, y, k=1, margin="absolute", retrieval="fwd", one_to_one=True)
    assert [(p.src, p.tgt) for p in strict] == [(2, 1), (0, 0)]
    assert mine(x, y, k=1, margin="absolute", retrieval="max") == strict


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"margin": "cosine"}, "unknown margin"),
        ({"retrieval": "both"}, "unknown retrieval"),
        ({"k": 0}, "k must be"),
        ({"k": -3}, "k must be"),
        ({"k": 2.5}, "k must be"),
        ({"threshold": "high"}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"chunk": 0}, "chunk"),
    ],
)
def test_mine_rejects_bad_options(kwargs: dict[str, object], message: str) -> None:
    x = rand_unit(np.random.default_rng(0), 4, 8)
    with pytest.raises(ValueError, match=message):
        mine(x, x, **kwargs)  # type: ignore[arg-type]


def test_mine_rejects_bad_embeddings() -> None:
    x = rand_unit(np.random.default_rng(0), 4, 8)
    with pytest.raises(ValueError, match="dimension mismatch"):
        mine(x, rand_unit(np.random.default_rng(1), 4, 9))
    with pytest.raises(ValueError, match="nothing to mine"):
        mine(x[:0], x)
    with pytest.raises(ValueError, match="nothing to mine"):
        mine(x, x[:0])
    with pytest.raises(ValueError, match="2-D"):
        mine(x[0], x)
    bad = x.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mine(x, bad)


# ---------------------------------------------------------------- texts and files


class FakeEncoder:
    """Maps each sentence to a fixed one-hot "meaning" vector; records what it was asked to embed."""

    def __init__(self, meanings: dict[str, int], dim: int = 8) -> None:
        self.meanings = meanings
        self.dim = dim
        self.calls: list[list[str]] = []

    def encode_passages(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        self.calls.append(list(texts))
        out = np.zeros((len(texts), self.dim), np.float32)
        for row, text in enumerate(texts):
            out[row, self.meanings[text]] = 1.0
        return out


MEANINGS = {
    "Guten Morgen": 0, "good morning": 0,
    "Danke": 1, "thank you": 1,
    "Hallo Welt": 2, "hello world": 2,
    "Tschüss": 3, "bye\tnow": 3,
    "Nur hier": 4,
}  # fmt: skip


def test_mine_texts_dedup_maps_to_first_occurrence() -> None:
    enc = FakeEncoder(MEANINGS)
    src = ["Danke", "Hallo Welt", "Danke", "Guten Morgen", "Hallo Welt"]
    tgt = ["hello world", "good morning", "hello world", "thank you"]
    got = mine_texts(enc, src, tgt, dedup=True, threshold=1.0)
    assert enc.calls == [["Danke", "Hallo Welt", "Guten Morgen"], ["hello world", "good morning", "thank you"]]
    assert {(p.src, p.tgt) for p in got} == {(0, 3), (1, 0), (3, 1)}
    enc2 = FakeEncoder(MEANINGS)
    plain = mine_texts(enc2, src, tgt, threshold=1.0, k=1)
    assert enc2.calls == [src, tgt]
    assert {(p.src, p.tgt) for p in plain} == {(0, 3), (1, 0), (3, 1)}  # max retrieval is one-to-one
    with pytest.raises(ValueError, match="nothing to mine"):
        mine_texts(enc, [], tgt)


def write_corpus(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "de.txt"
    src.write_bytes(
        b"Guten Morgen\n"  # 1
        b"\n"  # 2 blank
        b"Danke\r\n"  # 3
        + b"\xff\xfe bad\n"  # 4 invalid UTF-8
        + "   \n"  # 5 blank
        "Hallo Welt\n"  # 6
        "Tschüss\n"  # 7
        "Nur hier".encode()  # 8, no final newline
    )
    tgt = tmp_path / "en.jsonl"
    lines = [
        json.dumps({"text": "thank you"}).encode(),  # 1
        b"",  # 2 blank
        json.dumps({"text": "  hello world "}).encode(),  # 3
        json.dumps({"text": ""}).encode(),  # 4 blank text
        b'{"text": "\xff\xfe bad"}',  # 5 invalid UTF-8
        json.dumps({"text": "bye\tnow"}).encode(),  # 6
        json.dumps({"text": "good morning", "id": 7}, ensure_ascii=False).encode(),  # 7
    ]
    tgt.write_bytes(b"\n".join(lines) + b"\n")
    return src, tgt


def test_read_sentences(tmp_path: Path) -> None:
    src, tgt = write_corpus(tmp_path)
    assert read_sentences(src) == (
        ["Guten Morgen", "Danke", "Hallo Welt", "Tschüss", "Nur hier"],
        [1, 3, 6, 7, 8],
        {"blank": 2, "invalid_utf8": 1},
    )
    assert read_sentences(tgt) == (
        ["thank you", "hello world", "bye\tnow", "good morning"],
        [1, 3, 6, 7],
        {"blank": 2, "invalid_utf8": 1},
    )
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbfHallo\n")
    assert read_sentences(bom)[0] == ["Hallo"]
    surrogate = tmp_path / "s.jsonl"
    surrogate.write_text('{"text": "\\ud800"}\n{"text": "ok"}\n')
    assert read_sentences(surrogate) == (["ok"], [2], {"blank": 0, "invalid_utf8": 1})


def test_read_sentences_errors(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="missing.txt: no such file"):
        read_sentences(tmp_path / "missing.txt")
    empty = tmp_path / "blank.txt"
    empty.write_bytes(b"\n  \n\xff\n")
    with pytest.raises(CorpusError, match=r"blank.txt: no sentences .*2 blank, 1 invalid_utf8"):
        read_sentences(empty)
    (tmp_path / "zero.txt").write_bytes(b"")
    with pytest.raises(CorpusError, match="zero.txt: no sentences"):
        read_sentences(tmp_path / "zero.txt")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\nnot json\n')
    with pytest.raises(CorpusError, match=r"bad.jsonl:2: invalid JSON"):
        read_sentences(bad)
    bad.write_text('{"body": "a"}\n')
    with pytest.raises(CorpusError, match=r"bad.jsonl:1: .*\"text\""):
        read_sentences(bad)
    with pytest.raises(CorpusError, match="not a regular file"):
        read_sentences(tmp_path)


def test_mine_files_writes_tsv(tmp_path: Path) -> None:
    src, tgt = write_corpus(tmp_path)
    out = tmp_path / "pairs.tsv"
    report = mine_files(FakeEncoder(MEANINGS), src, tgt, out, k=2, threshold=1.5, margin="ratio", centering="off")
    # 4 matched meanings, each cos 1 with k=2 neighbours (1 and 0): ratio = 1 / ((0.5 + 0.5) / 2) = 2
    assert out.read_text(encoding="utf-8").splitlines() == [
        "score\tsrc\ttgt\tsrc_line\ttgt_line",
        "2.000000\tGuten Morgen\tgood morning\t1\t7",
        "2.000000\tDanke\tthank you\t3\t1",
        "2.000000\tHallo Welt\thello world\t6\t3",
        "2.000000\tTschüss\tbye now\t7\t6",
    ]
    assert (report.src, report.tgt, report.pairs) == (5, 4, 4)
    assert (report.src_unique, report.tgt_unique) == (5, 4)
    assert report.src_skipped == {"blank": 2, "invalid_utf8": 1}
    assert report.tgt_skipped == {"blank": 2, "invalid_utf8": 1}
    assert report.embed_seconds >= 0 and report.mine_seconds >= 0
    assert not out.with_name("pairs.tsv.tmp").exists()


def test_mine_files_dedup_reports_first_line(tmp_path: Path) -> None:
    src = tmp_path / "src.txt"
    src.write_text("Hallo Welt\nDanke\nHallo Welt\n")
    tgt = tmp_path / "tgt.txt"
    tgt.write_text("\nthank you\nthank you\nhello world\n")
    out = tmp_path / "out.tsv"
    report = mine_files(FakeEncoder(MEANINGS), src, tgt, out, dedup=True, threshold=1.0)
    rows = [line.split("\t") for line in out.read_text().splitlines()[1:]]
    assert sorted((r[1], r[3], r[4]) for r in rows) == [("Danke", "2", "2"), ("Hallo Welt", "1", "4")]
    assert (report.src, report.src_unique, report.tgt, report.tgt_unique) == (3, 2, 3, 2)


def _on_tmp_tsv(fn: Callable[..., Any], target: str) -> Callable[..., Any]:
    """Wrap os.fsync / os.replace so that only calls on the output's temp file raise."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        first = args[0]
        name = os.readlink(f"/proc/self/fd/{first}") if isinstance(first, int) else str(first)
        if name.endswith(target):
            raise OSError("disk full")
        return fn(*args, **kwargs)

    return wrapped


@pytest.mark.parametrize("where", ["row", "fsync", "replace"])
def test_mine_files_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    src, tgt = write_corpus(tmp_path)
    out = tmp_path / "pairs.tsv"
    calls = {"n": 0}
    real_row = mining_job._tsv_row

    def boom_row(*args: object) -> str:
        calls["n"] += 1
        if calls["n"] == 2:  # after a row has been written
            raise OSError("disk full")
        return real_row(*args)  # type: ignore[arg-type]

    if where == "row":
        monkeypatch.setattr(mining_job, "_tsv_row", boom_row)
    else:
        monkeypatch.setattr(os, where, _on_tmp_tsv(getattr(os, where), "pairs.tsv.tmp"))
    with pytest.raises(OSError, match="disk full"):
        mine_files(FakeEncoder(MEANINGS), src, tgt, out)
    assert not out.exists()
    assert not out.with_name("pairs.tsv.tmp").exists()


def test_mine_files_failure_keeps_previous_output_then_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, tgt = write_corpus(tmp_path)
    out = tmp_path / "pairs.tsv"
    out.write_text("previous run\n")
    with monkeypatch.context() as mp:
        mp.setattr(os, "fsync", _on_tmp_tsv(os.fsync, "pairs.tsv.tmp"))
        with pytest.raises(OSError):
            mine_files(FakeEncoder(MEANINGS), src, tgt, out)
    assert out.read_text() == "previous run\n"
    # the job's state stays for the next run (embeddings of both sides, finished)
    assert sorted(os.listdir(tmp_path)) == ["de.txt", "en.jsonl", "pairs.tsv", "pairs.tsv.work"]
    enc = FakeEncoder(MEANINGS)
    report = mine_files(enc, src, tgt, out)
    assert enc.calls == []  # nothing embedded again
    assert report.embed_cached == (5, 4)
    assert out.read_text().startswith("score\tsrc")
    assert sorted(os.listdir(tmp_path)) == ["de.txt", "en.jsonl", "pairs.tsv"]


def test_mine_files_validates_before_embedding(tmp_path: Path) -> None:
    src, tgt = write_corpus(tmp_path)
    enc = FakeEncoder(MEANINGS)
    with pytest.raises(ValueError, match="unknown margin"):
        mine_files(enc, src, tgt, tmp_path / "o.tsv", margin="cos")
    with pytest.raises(CorpusError, match="nope.txt"):
        mine_files(enc, src, tmp_path / "nope.txt", tmp_path / "o.tsv")
    with pytest.raises(FileNotFoundError):
        mine_files(enc, src, tgt, tmp_path / "no_dir" / "o.tsv")
    assert enc.calls == []
    assert not (tmp_path / "o.tsv").exists()
