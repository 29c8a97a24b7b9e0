"""``xlir index --ray``: the write stage split into per-shard parts and a driver's finish, and the Ray build
(indexer/ray_build.py) that runs the parts as tasks. The Ray build must write the local build's index: the same
files byte for byte (docstores, raw vectors, language rows, BM25, centroids, flat FAISS) and the same answers."""

from __future__ import annotations

import functools
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.schemas import SearchRequest
from indexer.bm25 import BM25Builder
from indexer.build import BuildOptions, build_index, passage_text
from indexer.manifest import Manifest
from indexer.ray_build import auto_shard_size, build_index_ray, work_dir
from indexer.store import open_index
from indexer.text import tokenize
from tests.conftest import FakeEncoder, retrieve, write_jsonl
from xlir.errors import CorpusError

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["apple river", "markt stein", "pomme vert", "苹果 河流", "stone music", "fluss grün", "winter market",
         "सूर्य तारा"]
LANGS = ["en", "de", "fr", "zh", "en", "de", "en", "hi"]


def corpus_docs(n: int = 40) -> list[dict[str, Any]]:
    """Several languages (one detected), titles, metadata on some documents and empty ones in between."""
    docs: list[dict[str, Any]] = []
    for i in range(n):
        doc: dict[str, Any] = {"id": f"d{i:03d}", "title": "title" if i % 5 == 0 else "",
                               "text": f"{WORDS[i % 8]} w{i} {WORDS[(i * 3) % 8]}", "lang": LANGS[i % 8]}
        if i % 4 == 0:
            doc["metadata"] = {"year": 2000 + i, "tag": ["a", "b"][i % 2]}
        docs.append(doc)
        if i % 13 == 6:
            docs.append({"id": f"empty{i}", "text": "   ", "lang": "en"})
    docs.append({"id": "unlabelled", "text": "the quick brown fox jumps over the lazy dog and runs into the forest"})
    return docs


OPTS = {"shard_size": 9, "chunk_docs": 4, "progress": False, "resume": False}  # 5 ranges, chunks split by ranges


def options(**kw: Any) -> BuildOptions:
    return BuildOptions(**{**OPTS, **kw})


def file_hashes(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != "manifest.json"}


def assert_same_index(local: Path, remote: Path, *, faiss_bytes: bool = True) -> None:
    a, b = Manifest.read(local), Manifest.read(remote)
    assert (a.doc_count, a.languages, a.lang_codes, a.shard_size) == (b.doc_count, b.languages, b.lang_codes,
                                                                      b.shard_size)
    assert [(s.name, s.offset, s.count) for s in a.shards] == [(s.name, s.offset, s.count) for s in b.shards]
    assert a.vector_sets == b.vector_sets and a.bm25 == b.bm25
    ha, hb = file_hashes(local), file_hashes(remote)
    if not faiss_bytes:  # an HNSW graph built on other threads may link differently; its answers are checked below
        ha = {k: v for k, v in ha.items() if not k.endswith(".faiss")}
        hb = {k: v for k, v in hb.items() if not k.endswith(".faiss")}
    assert ha == hb
    enc = FakeEncoder()
    one, two = open_index(local), open_index(remote)
    queries = ["apple river", "markt stein w3", "苹果", "सूर्य तारा", "quick fox", "winter w17 music"]
    try:
        qvecs = enc.encode_queries(queries)
        for a, b in zip(one.dense(qvecs, 8), two.dense(qvecs, 8), strict=True):  # the FAISS shards
            assert a.rows.tolist() == b.rows.tolist() and np.allclose(a.scores, b.scores, atol=1e-6) and len(a.rows)
        for query in queries:
            a, b = one.bm25_search(tokenize(query), 8), two.bm25_search(tokenize(query), 8)
            assert a.rows.tolist() == b.rows.tolist() and np.array_equal(a.scores, b.scores) and len(a.rows)
        for query in queries[:2]:  # and through the server's one retrieval path
            req = SearchRequest(query=query, k=8, mode="hybrid")
            hits = [retrieve(ix, req, enc.encode_queries([query])[0], tokenize(query)) for ix in (one, two)]
            assert [(h.row, h.score) for h in hits[0]] == [(h.row, h.score) for h in hits[1]] and hits[0]
    finally:
        one.close()
        two.close()


# -- the pure pieces, no Ray -------------------------------------------------------------------------------------


def test_bm25_parts_merged_in_order_equal_one_builder_fed_in_order() -> None:
    docs = [tokenize(d["text"]) for d in corpus_docs(30)] + [[], ["apple", "apple", "new"]]
    one = BM25Builder()
    for toks in docs:
        one.add(toks)
    parts = []
    for lo, hi in ((0, 7), (7, 8), (8, 20), (20, len(docs))):
        b = BM25Builder()
        for toks in docs[lo:hi]:
            b.add(toks)
        parts.append(b.part())
    merged = BM25Builder()
    for part in parts:
        merged.extend(part)
    assert merged.vocab == one.vocab and list(merged.vocab) == list(one.vocab)  # the same ids, the same order
    assert merged.doc_ids == one.doc_ids
    assert merged.doc_ids[-2] == [] and merged.doc_ids[-1] == [one.vocab["apple"]] * 2 + [one.vocab["new"]]


def test_a_bm25_part_round_trips_through_its_files(tmp_path: Path) -> None:
    b = BM25Builder()
    for toks in (["苹果", "x"], [], ["x", "y", "x"]):
        b.add(toks)
    part = b.part()
    part.save(tmp_path / "p")
    again = type(part).load(tmp_path / "p")
    assert again.tokens == ["苹果", "x", "y"] and again.ids.tolist() == [0, 1, 1, 2, 1]
    assert again.lengths.tolist() == [2, 0, 3]


def test_auto_shard_size_gives_each_cpu_about_four_ranges() -> None:
    assert auto_shard_size(100_000, 2) == 12_500
    assert auto_shard_size(1_000, 2) == 10_000  # bounded below
    assert auto_shard_size(10**9, 8) == 1_000_000  # and above
    assert auto_shard_size(None, 4) == 1_000_000


# -- on a real cluster -------------------------------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_a_ray_build_is_the_local_build(ray_cluster: str, tmp_path: Path, index_type: str) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", corpus_docs())
    local = build_index([corpus], tmp_path / "local", FakeEncoder(), options(index_type=index_type))
    remote = build_index_ray([corpus], tmp_path / "ray", functools.partial(FakeEncoder), options(index_type=index_type))
    assert len(local.shards) == 5 and local.build["skipped_empty"] == 3 and local.build["languages_detected"] == 1
    assert {k: remote.build[k] for k in ("ray", "ranges", "workers", "resumed_ranges", "retries", "skipped_empty",
                                         "languages_detected")} == {
        "ray": True, "ranges": 5, "workers": 2, "resumed_ranges": 0, "retries": 0, "skipped_empty": 3,
        "languages_detected": 1}
    assert_same_index(tmp_path / "local", tmp_path / "ray", faiss_bytes=index_type == "flat")
    assert not work_dir(tmp_path / "ray").exists()  # removed after success


class DyingEncoder(FakeEncoder):
    """Kills its worker process the first time it embeds the text ``trigger`` (the flag file says it did)."""

    def __init__(self, flag: str, trigger: str) -> None:
        super().__init__()
        self.flag, self.trigger = Path(flag), trigger

    def encode_passages(self, texts: Any, *, batch_size: int = 32, progress: Any = None) -> np.ndarray:
        if self.trigger in texts and not self.flag.exists():
            self.flag.touch()
            os._exit(1)
        return super().encode_passages(texts, batch_size=batch_size, progress=progress)


@pytest.mark.ray
def test_a_killed_worker_is_retried(ray_cluster: str, tmp_path: Path) -> None:
    docs = corpus_docs()
    corpus = write_jsonl(tmp_path / "c.jsonl", docs)
    victim = next(d for d in docs if d["id"] == "d021")  # in the third range
    factory = functools.partial(DyingEncoder, str(tmp_path / "died"), passage_text(victim["title"], victim["text"]))
    m = build_index_ray([corpus], tmp_path / "ray", factory, options())
    assert (tmp_path / "died").exists() and m.build["retries"] == 1
    build_index([corpus], tmp_path / "local", FakeEncoder(), options())
    assert_same_index(tmp_path / "local", tmp_path / "ray")


class SlowEncoder(FakeEncoder):
    def encode_passages(self, texts: Any, *, batch_size: int = 32, progress: Any = None) -> np.ndarray:
        time.sleep(0.4)
        return super().encode_passages(texts, batch_size=batch_size, progress=progress)


DRIVER = """
import sys
from pathlib import Path
from indexer.build import BuildOptions
from indexer.ray_build import build_index_ray
from indexer.ray_cluster import connect
from test_ray_build import SlowEncoder
connect(sys.argv[1])
build_index_ray([Path(sys.argv[2])], Path(sys.argv[3]), SlowEncoder,
                BuildOptions(shard_size=4, chunk_docs=4, progress=False))
"""


@pytest.mark.ray
@pytest.mark.slow
def test_a_killed_driver_resumes_from_the_finished_ranges(ray_cluster: str, tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", corpus_docs())
    out = tmp_path / "ray"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, ray_cluster, str(corpus), str(out)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    parts = work_dir(out) / "parts"
    while len(list(parts.glob("*/DONE.json"))) < 2:  # some ranges are done, the others are not
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline, "no range finished within 60 s"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    m = build_index_ray([corpus], out, SlowEncoder, BuildOptions(shard_size=4, chunk_docs=4, progress=False))
    assert m.build["ranges"] == 11 and 2 <= m.build["resumed_ranges"] < 11
    assert m.build["resumed_docs"] >= 8
    build_index([corpus], tmp_path / "local", FakeEncoder(), BuildOptions(shard_size=4, chunk_docs=4, progress=False))
    assert_same_index(tmp_path / "local", out)
    assert not work_dir(out).exists() and not list(tmp_path.glob(".ray.building-*"))


@pytest.mark.ray
def test_a_duplicate_id_is_refused_and_nothing_is_kept(ray_cluster: str, tmp_path: Path) -> None:
    docs = corpus_docs()
    docs.insert(30, {"id": "d002", "text": "again", "lang": "en"})
    corpus = write_jsonl(tmp_path / "c.jsonl", docs)
    with pytest.raises(CorpusError, match="duplicate document id 'd002'"):
        build_index_ray([corpus], tmp_path / "ray", FakeEncoder, options())
    assert not (tmp_path / "ray").exists() and not work_dir(tmp_path / "ray").exists()
    assert not list(tmp_path.glob(".ray.*"))


@pytest.mark.ray
@pytest.mark.model
@pytest.mark.slow
def test_the_cli_builds_on_ray_as_it_builds_here_and_refuses_append(ray_address: str, tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", corpus_docs(12))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    cli = [sys.executable, "-m", "cli.main", "index", str(corpus), "--model", "e5-small-static", "--quiet",
           "--shard-size", "5"]
    res = subprocess.run([*cli, "--out", str(tmp_path / "ray"), "--ray", ray_address], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "indexed 13 documents in 3 shard(s)" in res.stdout
    assert "on Ray (2 CPUs, 3 ranges, resumed 0)" in res.stdout
    assert "shard size 5 (--shard-size)" in res.stderr
    res = subprocess.run([*cli, "--out", str(tmp_path / "local")], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert file_hashes(tmp_path / "local") == file_hashes(tmp_path / "ray")
    res = subprocess.run([*cli, "--out", str(tmp_path / "ray"), "--append", "--ray", ray_address], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--ray builds a new index" in res.stderr, res.stderr


def test_an_unreachable_cluster_or_missing_ray_is_a_clear_error(tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", corpus_docs(4))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    run = ("import sys\nif sys.argv[1] == 'missing':\n    sys.modules['ray'] = None\n"
           "sys.argv = ['xlir', *sys.argv[2:]]\nfrom cli.main import main\nmain()\n")
    args = ["index", str(corpus), "--out", str(tmp_path / "idx"), "--quiet"]
    res = subprocess.run([sys.executable, "-c", run, "unreachable", *args, "--ray", "127.0.0.1:1"], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "cannot connect to the Ray cluster at 127.0.0.1:1" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    res = subprocess.run([sys.executable, "-c", run, "missing", *args, "--ray"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--ray needs Ray, which is not installed" in res.stderr, res.stderr
    assert not (tmp_path / "idx").exists()
