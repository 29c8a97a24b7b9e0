"""``xlir mine --ray`` (indexer/ray_mining.py): the same TSV as the local job, byte for byte, on a real 2-CPU Ray
cluster; and the exact top-k merge over shards, without Ray."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer import mining_search
from indexer.mining import MineOptions, _knn
from indexer.mining_job import mine_files
from indexer.ray_mining import merge_topk, query_ranges, shard_knn, shard_ranges

DIM = 24


# ---------------------------------------------------------------- the pure merge (no Ray)


def test_shard_and_query_ranges_round_to_their_units() -> None:
    assert shard_ranges(2600, 1500) == [(0, 2048), (2048, 2600)]
    assert shard_ranges(2600, 1) == [(0, 1024), (1024, 2048), (2048, 2600)]
    assert shard_ranges(517, 4000) == [(0, 517)]
    assert query_ranges(1003, 128, 300) == [(0, 384), (384, 768), (768, 1003)]
    assert query_ranges(100, 128, 1) == [(0, 100)]


@pytest.mark.parametrize("k", [1, 4, 9])
def test_merged_shard_top_k_equals_the_whole_search_with_ties(k: int) -> None:
    """Small-integer vectors (inner products exact in float32) with many duplicate rows: ties everywhere,
    shards of awkward sizes; the merge keeps the lowest ids among equal scores, as the whole search does."""
    rng = np.random.default_rng(3)
    x = rng.integers(-2, 3, size=(1003, 8)).astype(np.float32)
    y = rng.integers(-2, 3, size=(517, 8)).astype(np.float32)
    y[100:140] = y[7]  # 41 copies of one row
    want = _knn(x, y, k, 128)
    cuts = [0, 5, 6, 137, 300, 511, 517]  # shards of 5, 1, 131, 163, 211, 6 rows
    parts = [shard_knn(x, y[a:b], a, k, 128) for a, b in zip(cuts, cuts[1:], strict=False)]
    got = merge_topk(parts, k)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])
    assert (np.diff(got[0], axis=1) <= 0).all()


def test_merged_shard_top_k_equals_the_whole_search_float() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1003, 32)).astype(np.float32)
    y = rng.standard_normal((2600, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    want = _knn(x, y, 4, 128)
    for qa, qb in query_ranges(len(x), 128, 300):
        got = merge_topk([shard_knn(x[qa:qb], y[a:b], a, 4, 128) for a, b in shard_ranges(len(y), 1)], 4)
        np.testing.assert_array_equal(got[1], want[1][qa:qb])
        np.testing.assert_array_equal(got[0], want[0][qa:qb])


# ---------------------------------------------------------------- Ray vs local


def _sentences(tmp: Path, n_src: int = 2600, n_tgt: int = 1003, dup: bool = False) -> tuple[Path, Path]:
    """Word-bag sentences; the first 700 targets share most words with a source (their "translation")."""
    rng = np.random.default_rng(11)
    vocab = [f"w{i}" for i in range(400)]
    src = [" ".join(rng.choice(vocab, 6)) for _ in range(n_src)]
    tgt = []
    for j in range(n_tgt):
        if j < 700:
            words = src[(j * 3) % n_src].split()
            words[int(rng.integers(6))] = str(rng.choice(vocab))
            tgt.append(" ".join(rng.permutation(words)))
        else:
            tgt.append(" ".join(rng.choice(vocab, 5)))
    if dup:
        src[50:60] = [src[3]] * 10
        tgt[20:25] = [tgt[2]] * 5
    src.insert(17, "")  # a blank line: skipped, line numbers still count it
    (s, t) = (tmp / "src.txt", tmp / "tgt.txt")
    s.write_text("\n".join(src) + "\n")
    t.write_text("\n".join(tgt) + "\n")
    return s, t


def _both(tmp: Path, opts: MineOptions, factory: Any = None, **ray_kw: Any) -> tuple[Any, Any, bytes]:
    from conftest import FakeEncoder

    from indexer.ray_mining import mine_files_ray

    src, tgt = _sentences(tmp, dup=opts.dedup)
    local = mine_files(FakeEncoder(dim=DIM), src, tgt, tmp / "local.tsv", opts, cache_dir=tmp / "cache-local")
    ray_rep = mine_files_ray(factory or functools.partial(FakeEncoder, dim=DIM), src, tgt, tmp / "ray.tsv", opts,
                             cache_dir=tmp / "cache-ray", **ray_kw)
    want = (tmp / "local.tsv").read_bytes()
    assert (tmp / "ray.tsv").read_bytes() == want
    assert local.pairs == ray_rep.pairs > 300
    return local, ray_rep, want


@pytest.mark.ray
def test_exact_plan_same_output_and_shared_cache(ray_cluster: str, tmp_path: Path) -> None:
    opts = MineOptions(chunk=128)
    local, rep, want = _both(tmp_path, opts, shard_rows=1024, query_rows=256)
    assert rep.fwd_plan.kind == rep.bwd_plan.kind == "exact"
    assert rep.ray_cpus == 2
    # 1 encoder + 2 + 1 embedding chunks + fwd 11 query blocks x 1 shard + bwd 4 blocks x 3 shards
    assert rep.ray_tasks == 1 + 3 + 11 + 12
    assert rep.embed_cached == (0, 0)
    # the Ray job's embeddings are the local job's cache entries: a local run reuses them
    from conftest import FakeEncoder

    again = mine_files(FakeEncoder(dim=DIM), tmp_path / "src.txt", tmp_path / "tgt.txt", tmp_path / "again.tsv",
                       opts, cache_dir=tmp_path / "cache-ray")
    assert again.embed_cached == (2600, 1003)
    assert (tmp_path / "again.tsv").read_bytes() == want


@pytest.mark.ray
def test_ivf_plan_same_output_and_resumes_a_local_job(ray_cluster: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import FakeEncoder

    from indexer.ray_mining import mine_files_ray

    opts = MineOptions(chunk=128, exact_max=300, threshold=None)
    _, rep, want = _both(tmp_path, opts)
    assert rep.fwd_plan.kind == rep.bwd_plan.kind == "ivf-flat"
    assert rep.ray_tasks == 1 + 3 + 21 + 8  # encoder, embedding chunks, one task per search chunk
    # a local job killed in its search: the Ray job continues from its work folder
    real, calls = mining_search._search, {"n": 0}

    def dying(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 25:  # 21 forward chunks and 3 backward chunks done
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(mining_search, "_search", dying)
    work = tmp_path / "resume.work"
    with pytest.raises(KeyboardInterrupt):
        mine_files(FakeEncoder(dim=DIM), tmp_path / "src.txt", tmp_path / "tgt.txt", tmp_path / "resumed.tsv", opts,
                   cache_dir=tmp_path / "cache-local", work_dir=work)
    resumed = mine_files_ray(functools.partial(FakeEncoder, dim=DIM), tmp_path / "src.txt", tmp_path / "tgt.txt",
                             tmp_path / "resumed.tsv", opts, cache_dir=tmp_path / "cache-local", work_dir=work)
    assert resumed.resumed_chunks == 24 and resumed.ray_tasks == 1 + 5  # no embedding, 5 backward chunks
    assert (tmp_path / "resumed.tsv").read_bytes() == want
    assert not work.exists()


@pytest.mark.ray
def test_dedup_threshold_one_to_one_same_output(ray_cluster: str, tmp_path: Path) -> None:
    opts = MineOptions(chunk=128, dedup=True, threshold=0.5, one_to_one=True, retrieval="fwd", margin="ratio", k=5)
    local, rep, _ = _both(tmp_path, opts, query_rows=512)
    distinct = [len({line for line in (tmp_path / f).read_text().splitlines() if line}) for f in ("src.txt", "tgt.txt")]
    assert [rep.src_unique, rep.tgt_unique] == distinct and distinct[0] <= 2600 - 9 and distinct[1] <= 1003 - 4
    assert rep.threshold == local.threshold == 0.5


class DyingEncoder:
    """The fake encoder, but the first embedding call on the cluster kills its worker process (flag file)."""

    def __init__(self, flag: str) -> None:
        from conftest import FakeEncoder

        self.flag = flag
        self.inner = FakeEncoder(dim=DIM)
        self.name, self.checksum = self.inner.name, self.inner.checksum

    def encode_passages(self, texts: Any, *, batch_size: int = 32) -> np.ndarray:
        if not os.path.exists(self.flag):
            Path(self.flag).touch()
            os._exit(1)
        return self.inner.encode_passages(texts, batch_size=batch_size)


@pytest.mark.ray
def test_killed_task_is_retried_same_output(ray_cluster: str, tmp_path: Path) -> None:
    flag = tmp_path / "died"
    _, rep, _ = _both(tmp_path, MineOptions(chunk=256), factory=functools.partial(DyingEncoder, str(flag)))
    assert flag.exists()
    assert rep.embed_cached == (0, 0)


@pytest.mark.ray
@pytest.mark.model  # the real e5-small in a worker and in a local run: about 7 s
def test_cli_mine_ray_same_output_as_local(ray_address: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    xlir = Path(sys.executable).with_name("xlir")
    tag = tmp_path.name  # new sentences each run: the --ray job embeds them (the local one reuses its cache)
    (tmp_path / "en.txt").write_text(f"The weather is nice today ({tag}).\nI like green apples.\nWhere is the "
                                     "station?\nThank you very much.\n")
    (tmp_path / "fr.txt").write_text(f"Merci beaucoup.\nJ'aime les pommes vertes.\nIl fait beau aujourd'hui "
                                     f"({tag}).\nOù est la gare ?\n")
    runs = {}
    for name, extra in (("ray", ["--ray", ray_address]), ("local", [])):
        res = subprocess.run([str(xlir), "mine", "en.txt", "fr.txt", "--out", f"{name}.tsv", "-q", "--threshold",
                              "none", *extra], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        runs[name] = res
    assert "4 pairs from 4 x 4 sentences" in runs["ray"].stdout and "on Ray (2 CPUs, " in runs["ray"].stdout
    assert "reused: 4 + 4 cached embeddings" in runs["local"].stderr
    assert (tmp_path / "ray.tsv").read_bytes() == (tmp_path / "local.tsv").read_bytes()
    rows = [line.split("\t") for line in (tmp_path / "local.tsv").read_text().splitlines()[1:]]
    assert {(r[3], r[4]) for r in rows} == {("1", "3"), ("2", "2"), ("3", "4"), ("4", "1")}
