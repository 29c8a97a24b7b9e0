"""Language centring: remove each language's mean embedding so cross-lingual search stops preferring the
query's own language (Libovický, Rosa & Fraser 2020, "On the Language Neutrality of Pre-trained Multilingual
Representations").

Multilingual encoders add a language-specific offset to every embedding. With per-language means ``mu_l`` of
the (unit-norm) passage embeddings and the global mean ``mu_all``, a vector ``x`` of language ``l`` becomes

- ``off``:    ``x`` (unchanged)
- ``offset``: ``normalize(x - (mu_l - mu_all))``: removes only the language's offset from the global mean, so a
  single-language index is unchanged by construction
- ``full``:   ``normalize(P (x - mu_l))``: removes the whole language mean, then (LSAR) projects out the top
  ``r = min(8, L - 1)`` right singular vectors of the matrix of the L reliable language means (``P``;
  :meth:`Centroids.basis`). Centroids saved before LSAR carry no rank: their indexes are searched as built.

This module alone decides what is subtracted (:meth:`Centroids.lookup`), for documents (build, live delta,
exact re-scoring) and queries (server, ``xlir search``, benchmarks, ``/embed``) alike. **The rule**: a vector of
language ``l`` is shifted by ``l``'s mean in the index's centroids when ``l`` has at least ``MIN_CENTROID_DOCS``
documents there; otherwise (a rare language, or one the generation's centroids do not hold) by the fallback: the
global mean under ``full``, nothing under ``offset``. So a document and a query of the same language always take
the same shift. The encoder's centroid table (:mod:`indexer.centroid_table`) only serves a query in a language
the index holds no document of (none can be shifted differently): its mean there, else the fallback.
Everything here is pure numpy over embeddings; the indexer streams ``CentroidStats`` per shard and merges them
exactly.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xlir.errors import IndexInvalid, ModelInvalid

MODES = ("off", "offset", "full")
AUTO = "auto"
# an index is "multilingual" for `auto` when at least two languages each hold this share of its documents
AUTO_MIN_SHARE = 0.01
# a language with fewer documents has no reliable mean (with one document, `full` would erase it): the rule's
# fallback applies to it
MIN_CENTROID_DOCS = 10
# LSAR (Xie et al. 2022, "Discovering Low-rank Subspaces for Language-agnostic Multilingual Representations"):
# under ``full``, after the mean is removed, the top r right singular vectors of the matrix of language means are
# projected out of every vector too, r = min(LSAR_MAX_RANK, L - 1) for the L languages with a reliable mean
# (benchmarks/RESULTS.md 7.4: r = L - 1 gained on the dev split of every XQuAD-R pool measured, r = L lost once)
LSAR_MAX_RANK = 8


def lsar_rank(n_langs: int) -> int:
    """The number of language directions projected out of an index of ``n_langs`` reliable languages."""
    return max(0, min(LSAR_MAX_RANK, n_langs - 1))


def normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


@dataclass
class CentroidStats:
    """Running per-language sums and counts (float64), mergeable exactly across shards and workers."""

    dim: int
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, langs: Sequence[str], vecs: np.ndarray) -> None:
        if len(langs) != len(vecs):
            raise ValueError("one language per vector")
        codes = np.asarray(langs)
        for lang in np.unique(codes):
            rows = vecs[codes == lang]
            key = str(lang)
            if key not in self.sums:
                self.sums[key] = np.zeros(self.dim, dtype=np.float64)
                self.counts[key] = 0
            self.sums[key] += rows.sum(axis=0, dtype=np.float64)
            self.counts[key] += len(rows)

    def merge(self, other: CentroidStats) -> CentroidStats:
        if other.dim != self.dim:
            raise ValueError(f"cannot merge centroid stats of dim {other.dim} into dim {self.dim}")
        out = CentroidStats(self.dim, {k: v.copy() for k, v in self.sums.items()}, dict(self.counts))
        for lang, s in other.sums.items():
            out.sums[lang] = out.sums.get(lang, np.zeros(self.dim, dtype=np.float64)) + s
            out.counts[lang] = out.counts.get(lang, 0) + other.counts[lang]
        return out

    def save(self, path: Path) -> None:
        langs = sorted(self.sums)
        sums = np.stack([self.sums[k] for k in langs]) if langs else np.zeros((0, self.dim))
        np.savez(path, langs=np.asarray(langs, dtype=str), sums=sums,
                 counts=np.asarray([self.counts[k] for k in langs], dtype=np.int64))

    @classmethod
    def load(cls, path: Path) -> CentroidStats:
        with np.load(path, allow_pickle=False) as z:
            langs = [str(x) for x in z["langs"]]
            return cls(int(z["sums"].shape[1]), {k: z["sums"][i].astype(np.float64) for i, k in enumerate(langs)},
                       {k: int(z["counts"][i]) for i, k in enumerate(langs)})

    def centroids(self) -> Centroids:
        langs = sorted(self.sums)
        if not langs:
            raise ValueError("no vectors were added")
        counts = np.asarray([self.counts[lang] for lang in langs], dtype=np.int64)
        sums = np.stack([self.sums[lang] for lang in langs])
        return Centroids(langs=langs, means=(sums / counts[:, None]).astype(np.float32), counts=counts,
                         global_mean=(sums.sum(axis=0) / counts.sum()).astype(np.float32),
                         lsar_rank=lsar_rank(int((counts >= MIN_CENTROID_DOCS).sum())))


@dataclass(frozen=True)
class Centroids:
    langs: list[str]
    means: np.ndarray  # L x d, float32
    counts: np.ndarray  # L, int64
    global_mean: np.ndarray  # d, float32
    lsar_rank: int = 0  # 0: centroids saved before LSAR (their index is searched as it was built)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_row", {lang: i for i, lang in enumerate(self.langs)})
        object.__setattr__(self, "_basis", None)

    def basis(self, mode: str) -> np.ndarray | None:
        """d x r: the language directions projected out under ``mode`` (LSAR; ``full`` only), or None."""
        if mode != "full" or self.lsar_rank < 1:
            return None
        if self._basis is None:  # type: ignore[attr-defined]
            object.__setattr__(self, "_basis", self.directions(self.lsar_rank))
        basis: np.ndarray = self._basis  # type: ignore[attr-defined]
        return basis if basis.shape[1] else None

    def directions(self, r: int) -> np.ndarray:
        """d x (at most r): the top ``r`` right singular vectors of the reliable languages' means (orthonormal)."""
        reliable = self.means[self.counts >= MIN_CENTROID_DOCS].astype(np.float64)
        vt = np.linalg.svd(reliable, full_matrices=False)[2] if len(reliable) else np.zeros((0, reliable.shape[1]))
        return np.ascontiguousarray(vt[:r].T, dtype=np.float32)

    def _own(self, mode: str, lang: str) -> np.ndarray | None:
        row = self._row.get(lang)  # type: ignore[attr-defined]
        if row is None or int(self.counts[row]) < MIN_CENTROID_DOCS:
            return None
        return self.means[row] if mode == "full" else self.means[row] - self.global_mean

    def lookup(self, mode: str, langs: Sequence[str],
               table: Centroids | None = None) -> tuple[np.ndarray, list[str | None]]:
        """What is subtracted under ``mode`` from vectors of ``langs`` (n x d, the module's rule), and where each
        shift came from: ``index`` (a reliable mean here), ``table`` (one in ``table``) or None (the fallback)."""
        check_mode(mode)
        fallback = self.global_mean if mode == "full" else np.zeros_like(self.global_mean)
        found: dict[str, tuple[np.ndarray, str | None]] = {}
        for lang in dict.fromkeys(langs):
            found[lang] = (np.zeros_like(fallback), None) if mode == "off" else next(
                ((s, name) for name, tab in (("index", self), ("table", table))
                 if tab is not None and (s := tab._own(mode, lang)) is not None), (fallback, None))
        shifts = np.stack([found[x][0] for x in langs]) if len(langs) else np.zeros((0, len(fallback)))
        return shifts.astype(np.float32), [found[x][1] for x in langs]

    def shifts(self, mode: str) -> np.ndarray:
        """L x d: :meth:`lookup` for this table's own languages, in ``langs`` order."""
        return self.lookup(mode, self.langs)[0]

    def query_shift(self, mode: str, lang: str | None, table: Centroids | None,
                    held: Collection[str]) -> tuple[np.ndarray, str | None]:
        """The shift of a query (or an ``/embed`` text) of ``lang`` and its source; ``held``: the languages the
        index holds documents of (the table serves only the others)."""
        shifts, sources = self.lookup(mode, [lang or ""], None if lang in held else table)
        return shifts[0], sources[0]

    def mixture_shift(self, mode: str, weights: Mapping[str, float]) -> np.ndarray:
        """The shift of a query whose language is uncertain: :func:`mixture` of the shifts (:meth:`lookup`, the
        rule of this module) of the candidate languages in ``weights`` (their posteriors)."""
        langs = list(weights)
        return mixture(self.lookup(mode, langs)[0], np.asarray([weights[x] for x in langs], dtype=np.float64))

    def save(self, path: Path, encoder_checksum: str) -> None:
        tmp = path.with_name(path.name + ".tmp.npz")
        meta = {"encoder_checksum": encoder_checksum}
        if self.lsar_rank:  # centroids without LSAR keep the bytes they had before it existed
            meta["lsar_rank"] = self.lsar_rank  # type: ignore[assignment]
        np.savez(tmp, means=self.means, counts=self.counts, global_mean=self.global_mean,
                 langs=np.asarray(self.langs), meta=np.asarray(json.dumps(meta)))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path, encoder_checksum: str | None = None) -> Centroids:
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                table = cls(langs=[str(x) for x in z["langs"]], means=z["means"].astype(np.float32),
                            counts=z["counts"], global_mean=z["global_mean"].astype(np.float32),
                            lsar_rank=int(meta.get("lsar_rank", 0)))
        except (OSError, KeyError, ValueError) as exc:
            raise IndexInvalid(f"cannot read centroid table {path}: {exc}") from exc
        if encoder_checksum is not None and meta.get("encoder_checksum") != encoder_checksum:
            raise ModelInvalid(
                f"centroid table {path} was built with encoder weights {str(meta.get('encoder_checksum'))[:12]}, "
                f"not {encoder_checksum[:12]}: rebuild it with `xlir models centroids`")
        return table


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown centering mode {mode!r}; choose from {', '.join((*MODES, AUTO))}")


def resolve_auto(counts: Mapping[str, int]) -> str:
    """``full`` for a multilingual collection, ``offset`` (a no-op on one language) otherwise."""
    total = sum(counts.values())
    big = [lang for lang, n in counts.items() if total and n / total >= AUTO_MIN_SHARE]
    return "full" if len(big) >= 2 else "offset"


def mixture(shifts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``sum_i w_i shifts_i / sum_i w_i``: one shift from the L x d ``shifts`` of candidate languages and their
    non-negative weights (at least one positive)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) != len(shifts):
        raise ValueError(f"{len(w)} weights for {len(shifts)} shifts")
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError("mixture weights must be non-negative with a positive sum")
    return ((w / w.sum()) @ np.asarray(shifts, dtype=np.float64)).astype(np.float32)


def center(vecs: np.ndarray, shifts: np.ndarray, basis: np.ndarray | None = None) -> np.ndarray:
    """``normalize(P (vecs - shifts))``; ``shifts`` is one row per vector or one row for all; ``P`` projects out
    the columns of ``basis`` (orthonormal, :meth:`Centroids.basis`), or is the identity without one."""
    x = np.asarray(vecs, dtype=np.float32) - shifts
    if basis is not None:
        x = x - (x @ basis) @ basis.T
    return normalize(x)


def center_by_lang(vecs: np.ndarray, lang_rows: np.ndarray, table_shifts: np.ndarray,
                   basis: np.ndarray | None = None) -> np.ndarray:
    """Centre each vector with the shift of its language (``lang_rows`` index ``table_shifts``)."""
    return center(vecs, table_shifts[lang_rows], basis)


def centered_scores(raw: np.ndarray, lang_rows: np.ndarray, query: np.ndarray, table_shifts: np.ndarray,
                    norms: np.ndarray | None = None, basis: np.ndarray | None = None) -> np.ndarray:
    """Cosine of each raw document vector, centred with its language's shift, with an already centred query.

    Equals ``center_by_lang(raw, lang_rows, table_shifts, basis) @ query`` without materialising the centred
    matrix: ``((raw @ Pq) - (shifts @ Pq)[lang]) / |P (raw - shift[lang])|`` (``P`` symmetric: the projection moves
    to the query, a no-op for one centred by :func:`center` with the same basis). ``norms`` can be passed when
    precomputed.
    """
    q = np.asarray(query, dtype=np.float32)
    if basis is not None:
        q = (q - basis @ (basis.T @ q)).astype(np.float32)
    if norms is None:
        norms = centered_norms(raw, lang_rows, table_shifts, basis)
    return ((raw @ q) - (table_shifts @ q)[lang_rows]) / norms


def centered_norms(raw: np.ndarray, lang_rows: np.ndarray, table_shifts: np.ndarray,
                   basis: np.ndarray | None = None) -> np.ndarray:
    """``|P (raw_i - shift[lang_i])|`` via ``|x|^2 - 2 x.s + |s|^2 - |B^T (x - s)|^2`` (one pass over ``raw``)."""
    dots = np.einsum("ij,ij->i", raw, table_shifts[lang_rows], dtype=np.float64) if len(raw) else np.zeros(0)
    sq = (np.einsum("ij,ij->i", raw, raw, dtype=np.float64) - 2 * dots
          + np.einsum("ij,ij->i", table_shifts, table_shifts, dtype=np.float64)[lang_rows])
    if basis is not None and len(raw):
        inside = (raw @ basis).astype(np.float64) - (table_shifts @ basis).astype(np.float64)[lang_rows]
        sq -= np.einsum("ij,ij->i", inside, inside)
    return np.sqrt(np.maximum(sq, 1e-12)).astype(np.float32)


def side_shifts(mode: str, src: Iterable[np.ndarray], tgt: Iterable[np.ndarray],
                dim: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Bitext mining: each side (given as blocks of rows) is one language, centred on its own mean (``full``)
    or on its offset from the mean of both sides (``offset``). A side with fewer than ``MIN_CENTROID_DOCS``
    sentences has no reliable mean: then None, and neither side is changed."""
    check_mode(mode)
    if mode == "off":
        return None
    stats = CentroidStats(dim)
    for label, blocks in (("src", src), ("tgt", tgt)):
        for block in blocks:
            stats.add([label] * len(block), block)
        if stats.counts.get(label, 0) < MIN_CENTROID_DOCS:
            return None
    s, t = stats.centroids().lookup(mode, ["src", "tgt"])[0]
    return s, t


def center_sides(x: np.ndarray, y: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """:func:`side_shifts` applied to two in-memory sides."""
    shifts = side_shifts(mode, [x], [y], x.shape[1])
    return (x, y) if shifts is None else (center(x, shifts[0]), center(y, shifts[1]))
