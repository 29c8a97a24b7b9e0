"""The one embedding cache (models/cache.py): its key, its atomic save, and its three users (a build's resume
cache, the mining job's streamed files, the benchmarks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.embeddings import EmbedStats, embed
from indexer.build import BuildOptions, build_index
from indexer.mining_job import embed_to_file, mine_files
from models.cache import atomic_path, cache_key, cache_kind, load_or_compute
from tests.conftest import FakeEncoder, write_jsonl
from tests.test_build import DOCS, _assert_nothing_left, _table
from tests.test_mining_scale import CountingEncoder


def test_embedding_cache_key() -> None:
    base = cache_key("sum1", "passage", ["a", "b"])
    assert base == cache_key("sum1", "passage", ["a", "b"]) and len(base) == 64
    others = [cache_key("sum2", "passage", ["a", "b"]), cache_key("sum1", "query", ["a", "b"]),
              cache_key("sum1", "passage", ["a", "c"]), cache_key("sum1", "passage", ["b", "a"]),
              cache_key("sum1", "passage", ["ab"]), cache_key("sum1", "passage", ["a", "b", ""])]
    assert len({base, *others}) == len(others) + 1


def test_the_three_users_share_the_key(tmp_path: Path) -> None:
    texts = ["the cat sleeps", "die Katze schläft"]
    enc = FakeEncoder(dim=8)
    assert cache_kind(enc, "passage") == "passage"  # no backend attribute: torch
    onnx = FakeEncoder(dim=8)
    onnx.backend = "onnx-int8"  # type: ignore[attr-defined]
    assert cache_kind(onnx, "query") == "query/onnx-int8"
    # the benchmarks: the plain kind, so the caches saved before this module stay valid
    embed(onnx, "query", texts, tmp_path / "bench")
    assert [p.name for p in (tmp_path / "bench").iterdir()] == [cache_key("fake-checksum", "query", texts) + ".npy"]
    # the build's resume cache: the kind with the backend
    load_or_compute(tmp_path / "build", onnx, cache_kind(onnx, "passage"), texts, lambda: onnx.encode_passages(texts))
    assert [p.name for p in (tmp_path / "build").iterdir()] == [
        cache_key("fake-checksum", "passage/onnx-int8", texts) + ".npy"]
    # the mining job: the same key over the sentences of each side, as a streamed .f32
    src, tgt = tmp_path / "a.txt", tmp_path / "b.txt"
    src.write_text("\n".join(texts) + "\n")
    tgt.write_text("the dog\nder Hund\n")
    rep = mine_files(enc, src, tgt, tmp_path / "out.tsv", cache_dir=tmp_path / "mining")
    assert rep.embeddings[0].path.name == cache_key("fake-checksum", "passage", texts) + ".f32"
    assert rep.embeddings[1].path.name == cache_key("fake-checksum", "passage", ["the dog", "der Hund"]) + ".f32"


def test_load_or_compute_reuses_only_what_fits(tmp_path: Path) -> None:
    enc = FakeEncoder(dim=8)
    texts = ["a b", "c d", "e"]
    calls: list[int] = []

    def compute() -> np.ndarray:
        calls.append(1)
        return enc.encode_passages(texts)

    first, cached = load_or_compute(tmp_path, enc, "passage", texts, compute)
    assert not cached and len(calls) == 1
    again, cached = load_or_compute(tmp_path, enc, "passage", texts, compute)
    assert cached and len(calls) == 1 and np.array_equal(first, again)
    assert load_or_compute(tmp_path, FakeEncoder(dim=8, checksum="other"), "passage", texts, compute)[1] is False
    assert load_or_compute(None, enc, "passage", texts, compute)[1] is False  # no folder: nothing cached
    assert len(list(tmp_path.iterdir())) == 2
    # a file of the wrong shape or an unreadable one is computed again and replaced
    path = tmp_path / f"{cache_key('fake-checksum', 'passage', texts)}.npy"
    path.write_bytes(b"not an npy file")
    assert load_or_compute(tmp_path, enc, "passage", texts, compute)[1] is False
    assert np.array_equal(np.load(path), first)


def test_a_killed_save_leaves_no_partial_file_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    enc = FakeEncoder(dim=8)
    texts = ["a b", "c d"]
    real_save = np.save

    def dying_save(fh, arr):  # type: ignore[no-untyped-def]
        fh.write(b"\x93NUMPY half")  # some bytes out, then killed
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        load_or_compute(tmp_path, enc, "passage", texts, lambda: enc.encode_passages(texts))
    assert list(tmp_path.iterdir()) == []  # neither the entry nor the temporary file
    monkeypatch.setattr(np, "save", real_save)
    # a process killed outright (SIGKILL) leaves its temporary file behind: nothing reads it
    path = tmp_path / f"{cache_key('fake-checksum', 'passage', texts)}.npy"
    stale = path.with_name(f"{path.name}.99999.tmp")
    stale.write_bytes(b"\x93NUMPY half")
    vecs, cached = load_or_compute(tmp_path, enc, "passage", texts, lambda: enc.encode_passages(texts))
    assert not cached and np.array_equal(np.load(path), vecs)
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:  # a failed write keeps the entry it would replace
        tmp.write_bytes(b"half")
        raise RuntimeError
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, stale.name])
    assert np.array_equal(np.load(path), vecs)


def test_benchmark_embeddings_count_hits_and_misses(tmp_path: Path) -> None:
    enc, stats = FakeEncoder(dim=8), EmbedStats()
    texts = ["zwei", "three words here", "один"]
    first = embed(enc, "query", texts, tmp_path, stats=stats)
    again = embed(enc, "query", texts, tmp_path, stats=stats)
    assert (stats.hits, stats.misses, stats.texts_embedded) == (1, 1, 3)
    assert np.array_equal(first, again) and sum(len(c) for c in enc.query_calls) == 3
    with pytest.raises(ValueError, match="unknown kind"):
        embed(enc, "document", texts, tmp_path)


def test_killed_build_resumes_without_embedding_finished_chunks(tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "corpus.jsonl", DOCS)

    class Dying(FakeEncoder):
        def __init__(self) -> None:
            super().__init__(dim=8, table=_table())
            self.calls = 0

        def encode_passages(self, texts, **kw):  # type: ignore[no-untyped-def]
            self.calls += 1
            if self.calls == 3:
                raise KeyboardInterrupt  # as if killed while embedding the third chunk
            return super().encode_passages(texts, **kw)

    out = tmp_path / "idx"
    with pytest.raises(KeyboardInterrupt):
        build_index([corpus], out, Dying(), BuildOptions(progress=False, chunk_docs=2))
    _assert_nothing_left(tmp_path, out)
    assert len(list((tmp_path / ".idx.resume").glob("*.npy"))) == 2
    enc = FakeEncoder(dim=8, table=_table())
    m = build_index([corpus], out, enc, BuildOptions(progress=False, chunk_docs=2))
    assert sum(len(c) for c in enc.passage_calls) == 3  # 4 of the 7 documents came from the finished chunks
    assert m.build["resumed_docs"] == 4
    assert not (tmp_path / ".idx.resume").exists()
    clean = build_index([corpus], tmp_path / "clean", FakeEncoder(dim=8, table=_table()),
                        BuildOptions(progress=False, chunk_docs=2, resume=False))
    assert not (tmp_path / ".clean.resume").exists()
    for a, b in zip(sorted(out.rglob("*.f32")), sorted((tmp_path / "clean").rglob("*.f32")), strict=True):
        assert a.read_bytes() == b.read_bytes()
    assert clean.doc_count == m.doc_count == 7



def test_embedding_file_resumes_after_a_crash(tmp_path: Path) -> None:
    texts = [f"sentence {i}" for i in range(1000)]
    path = tmp_path / "emb" / "x.f32"
    with pytest.raises(KeyboardInterrupt):
        embed_to_file(CountingEncoder(fail_on=4), texts, path, chunk=300)
    assert not path.exists()
    state = json.loads(path.with_name("x.f32.partial.json").read_text())
    assert state["done"] == 900
    enc = CountingEncoder()
    rows, reused = embed_to_file(enc, texts, path, chunk=300)
    assert (reused, enc.embedded) == (900, 100)
    np.testing.assert_allclose(rows.read(0, 1000), CountingEncoder().encode_passages(texts), atol=1e-7)
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.f32", "x.f32.json"]
    enc2 = CountingEncoder()
    _, reused2 = embed_to_file(enc2, texts, path, chunk=300)
    assert (reused2, enc2.embedded) == (1000, 0)


@pytest.mark.usefixtures("single_faiss_thread")
def test_mine_files_reuses_cached_embeddings_across_jobs(tmp_path: Path) -> None:
    src, tgt = tmp_path / "a.txt", tmp_path / "b.txt"
    src.write_text("\n".join(f"s{i}" for i in range(300)) + "\n")
    tgt.write_text("\n".join(f"t{i}" for i in range(200)) + "\n")
    cache = tmp_path / "cache"
    enc = CountingEncoder()
    r1 = mine_files(enc, src, tgt, tmp_path / "o1.tsv", cache_dir=cache, k=2)
    assert (enc.embedded, r1.embed_cached) == (500, (0, 0))
    r2 = mine_files(enc, src, tgt, tmp_path / "o2.tsv", cache_dir=cache, k=3, retrieval="fwd",
                    search="ivf", nprobe=2, threshold=None)
    assert (enc.embedded, r2.embed_cached) == (500, (300, 200))
    assert r2.fwd_plan is not None and r2.fwd_plan.kind == "ivf-flat"
    assert len((tmp_path / "o2.tsv").read_text().splitlines()) == 301
    onnx = CountingEncoder()
    onnx.backend = "onnx-int8"  # type: ignore[attr-defined]  # same weights checksum, other vectors: own entry
    mine_files(onnx, src, tgt, tmp_path / "o4.tsv", cache_dir=cache)
    assert onnx.embedded == 500
    tgt.write_text("\n".join(f"t{i}" for i in range(201)) + "\n")  # changed file: new key
    mine_files(enc, src, tgt, tmp_path / "o3.tsv", cache_dir=cache)
    assert enc.embedded == 701
    assert not any(p.name.endswith(".work") for p in tmp_path.iterdir())
