"""Choosing a FAISS index for a vector set (``--index auto``) and tuning its search parameters to a recall target.

**Plan** (:func:`plan_index`, pure): given the number of vectors, their dimension and an optional memory budget,

1. fewer than ``flat_max`` vectors (default :data:`FLAT_MAX_VECTORS` = 200,000) whose flat index fits the budget:
   ``flat`` (exact);
2. otherwise the default ANN index :data:`DEFAULT_ANN` = ``hnsw`` with :data:`AUTO_HNSW` (M=16, efConstruction=40)
   if it fits, with ``ivfflat`` as the per-shard fallback when the graph cannot reach the recall target at any
   efSearch (IVF can always: nprobe = nlist is exhaustive); else ``ivfflat`` (nlist ~ 4 sqrt(n)) if that fits.
   Measured at 1M x 384 e5-like vectors on 2 cores (``benchmarks/speed_faiss.py``, benchmarks/RESULTS.md 5.3): both
   tuned to recall@10 >= 0.95, HNSW answered 238 single queries/s against IVF-Flat's 69 (flat: 6.6) for 4.3x
   IVF-Flat's build time (123 s vs 28.5 s, small next to the 5 hours that embedding 1M passages takes on the same
   machine); under a harsher generator (topic structure growing with n) the same graph stopped at recall 0.81,
   hence the fallback;
3. if not, compressed codes: ``ivfsq8`` (8-bit scalar quantizer, 4x smaller than float32) if it fits, else ``ivfpq``
   with the largest number of sub-quantizers ``m`` (bytes per vector) that fits; a budget too small for any of them
   is an error.

Memory is estimated by :func:`index_bytes` (codes + ids + centroids, what a loaded index holds; the raw float32
vectors stay on disk, memory-mapped). A budget of ``None`` means no limit.

**Tuning** (:func:`tune_index`): ``nprobe`` (IVF) or ``efSearch`` (HNSW) is raised until recall@10 against exact
search reaches ``target_recall`` (default 0.95) on a held-out sample: ``sample`` (512) vectors of the shard itself,
each with its own row excluded from both the exact and the approximate top 10 (leave-one-out), so each behaves like a
new point of the same distribution rather than an exact copy; optionally moved off its point by isotropic Gaussian
noise of norm ``noise`` (default 0). The target must be reached by the recall's lower confidence bound (mean minus
1.645 standard errors over the sample), not by the mean: the smallest value whose noisy estimate passes is otherwise
short of the target on new queries (measured at 1M e5-like vectors: IVF-Flat tuned on the mean of 256 queries gave
0.932 on fresh ones). Measured (``benchmarks/speed_faiss.py --calibrate``): on 25,582 real e5-small passage embeddings
the sample's IVF-Flat recall@10 curve follows that of 8,330 real e5-small *query* embeddings (0.750 vs 0.762 at nprobe
8, 0.966 vs 0.960 at nprobe 64); noise made no difference on real embeddings and made the estimate optimistic for SQ8
on tight clusters, hence 0. The search doubles the value until the target is reached, then bisects between the last
failing and the first passing value (to within 1/8). The chosen value, the measured recall, its lower bound and the
sweep are returned for the manifest; the store applies the value when it loads the index.

HNSW is the exception: a sampled point that is still in the graph leads the search straight to its own neighbours
(measured at 200k: leave-one-out chose efSearch 64 for M=32 where fresh queries got recall 0.80). So an HNSW shard
is built without its last ``sample`` rows, tuned with those rows as queries, and they are added afterwards (ids are
unchanged). Those rows are the last documents of the shard in corpus order: a corpus sorted by topic or language
makes them a less representative sample.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Final

import faiss
import numpy as np

from indexer.topk import Transform, read_rows, top_k_dot

FLAT_MAX_VECTORS: Final = 200_000
IVF_MIN_VECTORS: Final = 10_000  # a shard smaller than this gets a flat index whatever the plan (IVF needs training)
DEFAULT_ANN: Final = "hnsw"
AUTO_HNSW: Final = {"M": 16, "efConstruction": 40}  # the graph --index auto builds (explicit hnsw: M=32, efC=200)
ANN_FALLBACK: Final = "ivfflat"
TARGET_RECALL: Final = 0.95
HNSW_M: Final = 32  # the graph an explicit --index hnsw builds
PQ_NBITS: Final = 8


def ivf_nlist(n: int) -> int:
    """Inverted lists for ``n`` vectors: ~4 sqrt(n), and at least 39 training points per list."""
    return int(max(1, min(4 * math.sqrt(n), n // 39)))


def pq_sizes(dim: int) -> list[int]:
    """Candidate PQ sub-quantizer counts (bytes per vector at 8 bits), largest first: divisors of ``dim`` that leave
    at least 2 dimensions per sub-vector."""
    return [m for m in range(dim // 2, 0, -1) if dim % m == 0]


def index_bytes(kind: str, n: int, dim: int, *, m: int | None = None, hnsw_m: int = HNSW_M) -> int:
    """Estimated memory of a loaded index of ``kind`` over ``n`` vectors of ``dim`` float32 (codes, ids, centroids)."""
    nlist = ivf_nlist(n) if n else 0
    centroids = 4 * nlist * dim
    if kind == "flat":
        return 4 * n * dim
    if kind == "hnsw":
        return n * (4 * dim + 8 * hnsw_m + 16)  # vectors + ~2M level-0 links (int32) + level bookkeeping
    if kind == "ivfflat":
        return n * (4 * dim + 8) + centroids
    if kind == "ivfsq8":
        return n * (dim + 8) + centroids + 8 * dim
    if kind == "ivfpq":
        m = m or pq_sizes(dim)[0]
        return n * (m + 8) + centroids + 4 * dim * (1 << PQ_NBITS)
    raise ValueError(f"unknown index type {kind!r}")


_SIZE: Final = re.compile(r"(\d*\.?\d+)\s*([kmgt]?)i?b?", re.IGNORECASE)


def parse_bytes(text: str | int) -> int:
    """``"8G"``, ``"512MiB"``, ``"1.5GB"``, ``"100000"`` -> bytes, counted by pydantic's ``ByteSize``, except that K, M,
    G and T are binary with or without B (``8G`` = ``8GB`` = ``8GiB`` = 8 * 2**30), as ``--memory-budget`` has always
    read them (``ByteSize`` alone takes ``G`` and ``GB`` as 10**9)."""
    from pydantic import ByteSize, TypeAdapter

    m = _SIZE.fullmatch(str(text).strip())
    if m is None:
        raise ValueError(f"cannot read a size from {text!r}: use e.g. 8G, 512M or a number of bytes")
    value = int(TypeAdapter(ByteSize).validate_python(f"{m[1]}{m[2]}iB" if m[2] else m[1]))
    if value <= 0:
        raise ValueError("a memory budget must be positive")
    return value


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@dataclass(frozen=True)
class IndexPlan:
    kind: str
    reason: str
    estimated_bytes: int
    options: dict[str, Any] = field(default_factory=dict)  # build options of the kind, e.g. {"m": 96} for ivfpq
    memory_budget: int | None = None
    flat_max: int = FLAT_MAX_VECTORS


def plan_index(n_vectors: int, dim: int, memory_budget_bytes: int | None = None, *,
               flat_max: int = FLAT_MAX_VECTORS, ann: str = DEFAULT_ANN) -> IndexPlan:
    """The index kind for ``n_vectors`` vectors of ``dim`` under an optional memory budget (see the module doc)."""
    if n_vectors < 0 or dim < 1:
        raise ValueError("n_vectors must be >= 0 and dim >= 1")
    if ann not in ("ivfflat", "hnsw"):
        raise ValueError(f"the default ANN index must be ivfflat or hnsw, not {ann!r}")
    budget = memory_budget_bytes

    def fits(nbytes: int) -> bool:
        return budget is None or nbytes <= budget

    def plan(kind: str, reason: str, nbytes: int, options: dict[str, Any] | None = None) -> IndexPlan:
        return IndexPlan(kind, reason, nbytes, dict(options or {}), memory_budget=budget, flat_max=flat_max)

    flat = index_bytes("flat", n_vectors, dim)
    in_budget = "" if budget is None else f" within the budget of {format_bytes(budget)}"
    if n_vectors < flat_max and fits(flat):
        return plan("flat", f"{n_vectors} vectors < {flat_max}: exact search ({format_bytes(flat)}){in_budget}", flat)
    above = f"{n_vectors} vectors >= {flat_max}"
    if ann == "hnsw":
        size = index_bytes("hnsw", n_vectors, dim, hnsw_m=AUTO_HNSW["M"])
        if fits(size):
            return plan("hnsw", f"{above}: HNSW M={AUTO_HNSW['M']} ({format_bytes(size)}){in_budget}, IVF-Flat for a "
                        "shard where it cannot reach the recall target", size, {**AUTO_HNSW, "fallback": ANN_FALLBACK})
    size = index_bytes("ivfflat", n_vectors, dim)
    if fits(size):
        return plan("ivfflat", f"{above}: IVF-Flat ({format_bytes(size)}){in_budget}", size)
    over = f"flat would take {format_bytes(flat)}, over the budget of {format_bytes(budget or 0)}"
    size = index_bytes("ivfsq8", n_vectors, dim)
    if fits(size):
        return plan("ivfsq8", f"{over}: 8-bit scalar quantizer ({format_bytes(size)})", size)
    for m in pq_sizes(dim):
        size = index_bytes("ivfpq", n_vectors, dim, m=m)
        if fits(size):
            return plan("ivfpq", f"{over}: product quantizer, {m} bytes per vector ({format_bytes(size)})", size,
                        {"m": m})
    smallest = index_bytes("ivfpq", n_vectors, dim, m=pq_sizes(dim)[-1])
    raise ValueError(f"a memory budget of {format_bytes(budget or 0)} is too small for {n_vectors} vectors of "
                     f"dimension {dim}: even IVF-PQ with {pq_sizes(dim)[-1]} byte(s) per vector needs "
                     f"{format_bytes(smallest)}")


# --------------------------------------------------------------------------------------------------
# Tuning nprobe / efSearch to a recall target
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TuneOptions:
    target_recall: float = TARGET_RECALL
    sample: int = 512
    k: int = 10
    noise: float = 0.0
    seed: int = 0
    z: float = 1.645  # the recall's lower confidence bound (mean - z standard errors) must reach the target


def holdout_sample(vectors: np.ndarray, n_sample: int, *, noise: float = 0.0, seed: int = 0,
                   transform: Transform | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(queries, source rows): ``n_sample`` distinct rows of ``vectors`` (after ``transform``), moved by Gaussian noise
    of norm ~``noise`` and re-normalised when ``noise`` > 0; exclude each source row from its query's results."""
    n, dim = vectors.shape
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(n_sample, n), replace=False))
    x = read_rows(vectors, rows, transform)
    if noise > 0:
        x = x + noise * rng.standard_normal(x.shape).astype(np.float32) / np.sqrt(dim)
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x.astype(np.float32), rows.astype(np.int64)


def recall_per_query(found: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Per query, |found top k & exact top k| / |exact top k| (-1 entries ignored; queries without any exact hit are
    left out)."""
    out = []
    for f, e in zip(found, exact, strict=True):
        want = set(e[e >= 0].tolist())
        if want:
            out.append(len(want & set(f[f >= 0].tolist())) / len(want))
    return np.asarray(out, dtype=np.float64)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |found top k & exact top k| / |exact top k| (-1 entries ignored)."""
    r = recall_per_query(found, exact)
    return float(r.mean()) if len(r) else 1.0


def _knob(index: faiss.Index) -> tuple[str, Any, int, int] | None:
    """(parameter name, object holding it, smallest, largest useful value) for an approximate index."""
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexIVF):
        return "nprobe", inner, 1, int(inner.nlist)
    if isinstance(inner, faiss.IndexHNSW):
        return "efSearch", inner.hnsw, 16, 4096
    return None


def _search_excluding(index: faiss.Index, queries: np.ndarray, k: int, exclude: np.ndarray | None) -> np.ndarray:
    if exclude is None:
        return index.search(queries, k)[1]
    _, ids = index.search(queries, k + 1)
    out = np.full((len(queries), k), -1, dtype=np.int64)
    for i, row in enumerate(ids):
        kept = row[(row != exclude[i]) & (row >= 0)][:k]
        out[i, : len(kept)] = kept
    return out


def tune_search_params(index: faiss.Index, queries: np.ndarray, exact: np.ndarray, *,
                       target_recall: float = TARGET_RECALL, exclude: np.ndarray | None = None,
                       z: float = 1.645) -> dict[str, Any]:
    """Smallest ``nprobe`` / ``efSearch`` (to within 1/8) whose recall@k against ``exact`` reaches ``target_recall``
    with confidence: the mean over the queries minus ``z`` standard errors (one-sided 95% by default) must reach it,
    since the smallest value that passes a noisy estimate is otherwise below target on new queries more often than
    not. Sets it on ``index`` and returns ``{param: value, "tuning": {...}}``; ``{}`` for an exact index. When the
    target is out of reach (compressed codes), the value with the best mean recall is kept, ``reached`` False."""
    knob = _knob(index)
    if knob is None:
        return {}
    name, holder, lo_bound, hi_bound = knob
    k = exact.shape[1]
    t0 = time.perf_counter()
    sweep: dict[int, float] = {}
    lower: dict[int, float] = {}

    def measure(value: int) -> float:
        if value not in sweep:
            setattr(holder, name, value)
            r = recall_per_query(_search_excluding(index, queries, k, exclude), exact)
            sweep[value] = float(r.mean()) if len(r) else 1.0
            lower[value] = sweep[value] - z * float(r.std(ddof=1)) / np.sqrt(len(r)) if len(r) > 1 else sweep[value]
        return lower[value]

    value = max(lo_bound, k) if name == "efSearch" else lo_bound
    failing: int | None = None
    passing: int | None = None
    while True:
        if measure(value) >= target_recall:
            passing = value
            break
        failing = value
        if value >= hi_bound:
            break
        value = min(hi_bound, value * 2)
    if passing is not None and failing is not None:
        while passing - failing > max(1, passing // 8):
            mid = (failing + passing) // 2
            if measure(mid) >= target_recall:
                passing = mid
            else:
                failing = mid
    chosen = passing if passing is not None else max(sweep, key=lambda v: (sweep[v], -v))
    setattr(holder, name, chosen)
    return {name: chosen, "tuning": {
        "param": name, "target_recall": target_recall, f"recall_at_{k}": round(sweep[chosen], 4),
        "recall_lower_bound": round(lower[chosen], 4), "z": z, "reached": passing is not None,
        "queries": len(queries), "sweep": {str(v): round(r, 4) for v, r in sorted(sweep.items())},
        "sweep_lower_bound": {str(v): round(r, 4) for v, r in sorted(lower.items())},
        "seconds": round(time.perf_counter() - t0, 3),
    }}


def tune_index(index: faiss.Index, vectors: np.ndarray, *, transform: Transform | None = None,
               options: TuneOptions | None = None, held_out: int = 0) -> dict[str, Any]:
    """Tune an index built over ``vectors`` (after ``transform``) on a held-out sample (see the module doc).

    ``held_out`` > 0: the index holds only the first ``len(vectors) - held_out`` rows and the last ``held_out`` rows
    are the queries (a graph index is tuned this way: a leave-one-out point still in the graph leads the search to its
    own neighbours, which makes the estimate optimistic). Otherwise a random leave-one-out sample of all rows.
    """
    opts = options or TuneOptions()
    n = len(vectors) - held_out
    if _knob(index) is None or n <= opts.k + 1:
        return {}
    t0 = time.perf_counter()
    exclude: np.ndarray | None = None
    if held_out:
        queries = read_rows(vectors, np.arange(n, len(vectors)), transform)
    else:
        queries, exclude = holdout_sample(vectors, opts.sample, noise=opts.noise, seed=opts.seed, transform=transform)
    exact = top_k_dot(vectors[:n], queries, opts.k, exclude=exclude, transform=transform)
    t_exact = time.perf_counter() - t0
    out = tune_search_params(index, queries, exact, target_recall=opts.target_recall, exclude=exclude, z=opts.z)
    sample = "last rows, added after tuning" if held_out else "leave-one-out"
    out["tuning"].update(sample=sample, noise=0.0 if held_out else opts.noise, seed=opts.seed,
                         exact_seconds=round(t_exact, 3))
    return out
