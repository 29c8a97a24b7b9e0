"""The fan-out measurement of ``benchmarks/ray_scaling.py`` and its Ray halves (Ray is imported only inside the
functions that use it: the module loads without it).

- :func:`measure_fanout`: one query at a time through any shard searchers (local ``DenseShard`` s or remote
  ones), the timed body of ``indexer/dense.py: search_shards``: mismatches against a brute-force answer, latency,
  the merge's share.
- :func:`simulate_ray`: N flat shards written as FAISS files and served by the product's shard actors
  (``indexer/ray_shards.py: ShardServer``, one per shard, searched through ``RemoteShard`` handles); above
  ``max_actors`` shards, a :class:`ShardGroup` actor serves several shards (the same FAISS search per shard, their
  hits returned side by side, the merge still in the driver), and the row says so.
- :func:`build_ray`: :func:`indexer.ray_build.build_index_ray` over a corpus, timed, with Ray's overhead.
- :func:`serve_compare`: ``xlir serve`` single-process vs ``--ray`` under the load of benchmarks/load.py.
"""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.retrieval import latency_summary
from indexer.dense import ShardHits, load_shard_index
from indexer.ray_cluster import connect


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ----------------------------------------------------------------------------------------------- merge (pure)

def exact_top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top ``k`` of a brute-force answer of more than ``k`` hits, ordered as the product orders them (score
    descending, ties by lower global row: indexer/topk.py), so that ties cut at the same place."""
    keep = ids >= 0
    scores, ids = scores[keep], ids[keep]
    order = np.lexsort((ids, -scores))[:k]
    return scores[order], ids[order]


def mismatches(found: Sequence[np.ndarray], exact: np.ndarray) -> dict[str, int]:
    """Queries whose merged top-k ``found[q]`` differs from the brute-force ``exact[q]`` (ids in the same order,
    ties resolved by the same rule)."""
    wrong = sum(0 if np.array_equal(np.asarray(ids), exact[q]) else 1 for q, ids in enumerate(found))
    return {"queries": len(found), "mismatches": wrong}


def split_offsets(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous (start, stop) ranges covering ``range(n)``, sizes differing by at most one."""
    bounds = np.linspace(0, n, parts + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def flat_index(x: np.ndarray) -> Any:
    import faiss

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index


def time_calls(fn: Callable[[np.ndarray], Any], queries: np.ndarray) -> tuple[list[Any], list[float]]:
    """``fn`` on each query (1 x dim) in turn: results and wall milliseconds."""
    out, ms = [], []
    for q in queries:
        t0 = time.perf_counter()
        out.append(fn(q[None, :]))
        ms.append((time.perf_counter() - t0) * 1000.0)
    return out, ms


def fan_out(shards: Sequence[Any], queries: np.ndarray, k: int) -> tuple[list[tuple[np.ndarray, np.ndarray]],
                                                                          float, float]:
    """The body of :func:`indexer.dense.search_shards` (submit to every shard, gather, merge with
    :func:`indexer.dense.merge_shard_hits`) timed in two parts: (results, milliseconds before the merge, milliseconds
    of the merge)."""
    from indexer.dense import merge_shard_hits

    t0 = time.perf_counter()
    pending = [s.submit(queries, min(k, s.size), None) for s in shards]
    parts = [gather() for gather in pending]
    t1 = time.perf_counter()
    merged = merge_shard_hits(parts, len(queries), k)
    t2 = time.perf_counter()
    return merged, (t1 - t0) * 1000.0, (t2 - t1) * 1000.0


def measure_fanout(label: str, shards: Sequence[Any], queries: np.ndarray,
                   exact: dict[int, tuple[np.ndarray, np.ndarray]], ks: Sequence[int],
                   extra: dict[str, Any] | None = None, n_shards: int | None = None) -> list[dict[str, Any]]:
    """One query at a time through ``shards`` for each k: mismatches with ``exact``, latency, the merge's share;
    the product's :func:`indexer.dense.search_shards` must give the same answers as the timed decomposition."""
    from indexer.dense import search_shards

    rows = []
    for k in ks:
        for q in queries[:3]:
            fan_out(shards, q[None, :], k)  # warm-up
        found, found_s, total, merge = [], [], [], []
        for q in queries:
            t0 = time.perf_counter()
            merged, _, m = fan_out(shards, q[None, :], k)
            total.append((time.perf_counter() - t0) * 1000.0)
            merge.append(m)
            found_s.append(merged[0][0])
            found.append(merged[0][1])
        same_as_product = sum(np.array_equal(search_shards(shards, q[None, :], k)[0][1], f)
                              for q, f in zip(queries[:20], found[:20], strict=False))
        mm = mismatches(found, exact[k][1])
        lat, mlat = latency_summary(total), latency_summary(merge)
        row: dict[str, Any] = {"shards": n_shards or len(shards), "k": k, **mm, "latency_ms": lat, "merge_ms": mlat,
               "merge_share": float(np.sum(merge) / np.sum(total)), "search_shards_same": int(same_as_product),
               "loadavg": loadavg()}
        row.update(extra or {})
        print(f"{label} N={row['shards']:>2} k={k:>3}: p50 {lat['p50']:.2f} p99 {lat['p99']:.2f} ms, merge p50 "
              f"{mlat['p50']:.3f} ms ({100 * row['merge_share']:.1f}% of the time), mismatches {mm['mismatches']}",
              flush=True)
        rows.append(row)
    return rows


def _actor_pid(actor: Any) -> int:
    return os.getpid()


def process_memory(pids: Sequence[int]) -> dict[str, int]:
    """Summed RSS and PSS (shared pages divided among their users) of ``pids``, in bytes (/proc)."""
    total = {"rss": 0, "pss": 0}
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("Rss", "Pss"):
                    total[key.lower()] += int(value.split()[0]) * 1024
        except OSError:
            continue
    return total


class ShardGroup:
    """An actor serving several shard files: each searched as ``ShardServer`` searches one, hits side by side."""

    def __init__(self, shards: list[tuple[str, int]]) -> None:
        self.shards = [load_shard_index(Path(p), off) for p, off in shards]

    def size(self) -> int:
        return sum(s.size for s in self.shards)

    def search(self, queries: np.ndarray, k: int, mask: np.ndarray | None) -> ShardHits:
        parts = [s.submit(queries, min(k, s.size), None)() for s in self.shards]
        return np.concatenate([p[0] for p in parts], axis=1), np.concatenate([p[1] for p in parts], axis=1)


class GroupHandle:
    """A :class:`ShardGroup` actor as one searcher of the fan-out (``submit`` like ``RemoteShard``)."""

    def __init__(self, actor: Any, offset: int, size: int, k_cap: int) -> None:
        self.actor, self.offset, self.size, self.k_cap = actor, offset, size, k_cap

    def submit(self, queries: np.ndarray, k: int, mask: np.ndarray | None) -> Callable[[], ShardHits]:
        import ray

        ref = self.actor.search.remote(queries, min(k, self.k_cap), mask)
        return lambda: ray.get(ref)


def simulate_ray(x: np.ndarray, queries: np.ndarray, exact: dict[int, tuple[np.ndarray, np.ndarray]],
                 counts: Sequence[int], ks: Sequence[int], *, address: str | None, max_actors: int
                 ) -> list[dict[str, Any]]:
    """The fan-out through Ray actors over N flat shards of ``x`` (see the module docstring)."""
    import faiss
    import ray

    from indexer.ray_shards import SHARD_CPUS, RemoteShard, ShardServer

    t0 = time.perf_counter()
    connect(address, num_cpus=2)
    start = time.perf_counter() - t0
    print(f"ray: connected in {start:.1f} s", flush=True)
    server: Any = ray.remote(num_cpus=SHARD_CPUS, max_restarts=-1, max_task_retries=0)(ShardServer)
    group: Any = ray.remote(num_cpus=SHARD_CPUS)(ShardGroup)
    rows: list[dict[str, Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="xlir-sim-"))
    try:
        for n in counts:
            ranges = split_offsets(len(x), n)
            paths = []
            for i, (a, b) in enumerate(ranges):
                path = tmp / f"n{n}-s{i}.faiss"
                faiss.write_index(flat_index(x[a:b]), str(path))
                paths.append(str(path))
            gc.collect()
            t1 = time.perf_counter()
            actors: list[Any]
            if n <= max_actors:
                actors = [server.remote(p, a, None) for p, (a, _) in zip(paths, ranges, strict=True)]
                sizes = ray.get([h.size.remote() for h in actors])
                searchers: list[Any] = [RemoteShard(h, a, int(sz), f"shard {i}")
                                        for i, (h, (a, _), sz) in enumerate(zip(actors, ranges, sizes, strict=True))]
                per_actor = 1
            else:
                per_actor = -(-n // max_actors)
                groups = [list(range(i, min(i + per_actor, n))) for i in range(0, n, per_actor)]
                actors = [group.remote([(paths[i], ranges[i][0]) for i in g]) for g in groups]
                sizes = ray.get([h.size.remote() for h in actors])
                min_shard = min(b - a for a, b in ranges)
                searchers = [GroupHandle(h, ranges[g[0]][0], int(sz), min_shard)
                             for h, g, sz in zip(actors, groups, sizes, strict=True)]
            ready = time.perf_counter() - t1
            mem = process_memory(ray.get([h.__ray_call__.remote(_actor_pid) for h in actors]))
            extra = {"actors": len(actors), "shards_per_actor": per_actor, "actors_ready_s": ready,
                     "actors_rss_mib": mem["rss"] / 2**20, "actors_pss_mib": mem["pss"] / 2**20,
                     "ray_connect_s": start}
            print(f"ray N={n}: {len(actors)} actors ({per_actor} shard(s) each) ready in {ready:.1f} s, RSS "
                  f"{mem['rss'] / 2**20:.0f} MiB, PSS {mem['pss'] / 2**20:.0f} MiB", flush=True)
            rows += measure_fanout("ray", searchers, queries, exact, ks, extra, n_shards=n)
            for h in actors:
                ray.kill(h, no_restart=True)
            del actors, searchers
            time.sleep(2.0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def build_ray(corpus: Path, out: Path, factory: Callable[[], Any], *, address: str | None, cpus: int,
              shard_size: int | None = None) -> dict[str, Any]:
    """:func:`indexer.ray_build.build_index_ray` over ``corpus`` (ranges of ``shard_size`` documents, default the
    size ``xlir index --ray`` picks: ``auto_shard``), timed: the wall time from joining the cluster (``address``;
    None: a new local one with ``cpus`` CPUs) to the published manifest, and how much of it the workers spent
    detecting languages, embedding and writing (the rest: Ray's start-up and scheduling, each task's encoder load,
    the driver's finish stages)."""
    from indexer.build import BuildOptions
    from indexer.ray_build import build_index_ray

    t0 = time.perf_counter()
    ray = connect(address, num_cpus=cpus)
    joined = time.perf_counter() - t0
    workers = int(ray.cluster_resources().get("CPU", 0))
    shutil.rmtree(out, ignore_errors=True)
    t1 = time.perf_counter()
    opts = BuildOptions(overwrite=True, progress=True, resume=False)
    if shard_size:
        opts.shard_size = shard_size
    manifest = build_index_ray([corpus], out, factory, opts, auto_shard=not shard_size)
    wall = time.perf_counter() - t1
    b = manifest.build
    ws = b.get("worker_stage_seconds", {})
    busy = sum(float(v) for k, v in ws.items() if k != "load_encoder")  # the local build's work, done by the tasks
    res: dict[str, Any] = {
        "docs": manifest.doc_count, "seconds": wall, "connect_seconds": joined,
        "seconds_with_connect": wall + joined, "docs_per_second": manifest.doc_count / wall,
        "docs_per_second_with_connect": manifest.doc_count / (wall + joined), "cluster_cpus": workers,
        "shards": len(manifest.shards), "build": b,
        "worker_busy_seconds": busy,  # summed over tasks: language ID, embedding, BM25 tokenization, shard writes
        "worker_encoder_load_seconds": float(ws.get("load_encoder", 0.0)),  # each task loads its own encoder
        "ideal_seconds": busy / max(1, workers),  # the same work spread perfectly over the CPUs
        "loadavg_end": loadavg(),
    }
    res["overhead_seconds"] = wall + joined - res["ideal_seconds"]
    res["overhead_share"] = res["overhead_seconds"] / (wall + joined)
    return res


def _cluster_address(address: str | None) -> str:
    """A cluster address a server (another process) can join: ``address``, or the one this process started."""
    ray = connect(address, num_cpus=2)
    return address or str(ray.get_runtime_context().gcs_address)


def serve_compare(index: Path, *, levels: Sequence[int], duration: float, warmup: float, mode: str | None,
                  address: str | None, replicas: int, extra_env: Sequence[str]) -> dict[str, Any]:
    """``xlir serve`` on ``index`` single-process, then with ``XLIR_RAY`` (shard actors, ``replicas`` query-encoder
    replicas), each under closed-loop load at every concurrency of ``levels`` (benchmarks/load.py)."""
    from benchmarks.demo_bench import wait_ready
    from benchmarks.load import Plan, Server, default_queries, local_server, run_levels

    qname, queries = default_queries()
    plan = Plan(queries=queries, mix={"search": 1.0}, mode=mode or None, k=10, passages=[],
                run_id=f"{os.getpid() % 100000:05d}")
    env = dict(e.split("=", 1) for e in extra_env)
    out: dict[str, Any] = {"setup": {"index": str(index), "levels": list(levels), "duration": duration,
                                     "warmup": warmup, "mode": mode, "queries": f"{qname}, {len(queries)}",
                                     "replicas": replicas, "env": env}}
    configs = {"single": {}, "ray": {"XLIR_RAY": _cluster_address(address),
                                     "XLIR_RAY_ENCODER_REPLICAS": str(replicas)}}
    for name, cfg in configs.items():
        settings = {"XLIR_VERIFY": "size", **env, **cfg}
        print(f"== {name}: xlir serve {index} {settings}", flush=True)
        t0 = time.perf_counter()
        with local_server(index, settings, log=Path(tempfile.gettempdir()) / f"xlir-ray-serve-{name}.log") as srv:
            ready = time.perf_counter() - t0
            info = wait_ready(srv.base, srv.proc) if srv.proc is not None else {}
            res = run_levels(Server(srv.base, srv.pid), levels, duration, warmup, plan)
        res["ready_seconds"] = ready
        res["ready"] = info
        res["loadavg_end"] = loadavg()
        out[name] = res
    ratios = []
    for a, b in zip(out["single"]["levels"], out["ray"]["levels"], strict=True):
        sa, sb = a.get("search", {}), b.get("search", {})
        ratios.append({"concurrency": a["concurrency"], "qps_ray_over_single": sb.get("qps", 0) / max(sa.get("qps", 0),
                                                                                                   1e-9),
                       "p50_ray_over_single": sb["latency_ms"]["p50"] / sa["latency_ms"]["p50"]})
    out["ratios"] = ratios
    return out
