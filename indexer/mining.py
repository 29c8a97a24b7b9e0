"""Margin-based bitext mining over multilingual sentence embeddings.

Follows Artetxe & Schwenk (2019), "Margin-based Parallel Corpus Mining with Multilingual Sentence
Embeddings", as implemented in LASER's ``mine_bitexts.py`` (BUCC). Embeddings are L2-normalised float32
rows, so cosine similarity is the inner product.

For a source sentence ``x`` and a target sentence ``y``::

    NN_k(x)  = the k targets nearest to x (forward),   avg_fwd(x) = sum_{z in NN_k(x)} cos(x, z) / k
    NN_k(y)  = the k sources nearest to y (backward),  avg_bwd(y) = sum_{z in NN_k(y)} cos(y, z) / k

    ratio     margin(x, y) = cos(x, y) / ((avg_fwd(x) + avg_bwd(y)) / 2)
    distance  margin(x, y) = cos(x, y) - (avg_fwd(x) + avg_bwd(y)) / 2
    absolute  margin(x, y) = cos(x, y)

``k`` is clipped to the size of the searched side. The margin discounts "hubs" (vectors close to many
others): a hub's high neighbourhood average shrinks all of its scores, so a sentence's true
translation wins over a hub that plain cosine would prefer.

Candidates are each source's k nearest targets and each target's k nearest sources. Retrieval:

* ``fwd``: each source with the best-scoring target among its k nearest targets;
* ``bwd``: each target with the best-scoring source among its k nearest sources;
* ``intersect``: the pairs that are both the forward best of their source and the backward best of
  their target;
* ``max``: the union of the ``fwd`` and ``bwd`` pairs, taken greedily by descending score, keeping a
  pair only if neither its source nor its target has been used (LASER's ``max`` strategy; the result
  is one-to-one).

``threshold`` keeps pairs with score >= threshold; ``one_to_one`` applies the same greedy rule to ``fwd``
and ``bwd`` (``max`` and ``intersect`` are one-to-one already). Results are sorted by score desc, ties
by (src, tgt) asc; ties between equal-scoring candidates of one sentence go to the lower index.

The ratio margin assumes positive neighbourhood averages, which holds for real sentence embeddings
(for random vectors a negative average flips the ranking; a zero one gives inf/nan).

Layers: :func:`knn`, :func:`apply_margin`, :func:`margin_scores` and :func:`mine` work on arrays;
:func:`mine_texts` embeds two lists of sentences with an encoder first; :func:`mine_files` reads two
files (one sentence per line, or JSONL with ``{"text": ...}``) and writes the pairs as TSV atomically.
"""

from __future__ import annotations

import json
import numbers
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import faiss
import numpy as np

from indexer.centering import center_sides, check_mode
from xlir.errors import CorpusError

MARGINS = ("ratio", "distance", "absolute")
RETRIEVALS = ("fwd", "bwd", "max", "intersect")
DEFAULT_CHUNK = 8192  # query rows per FAISS search call in knn()
PAIR_CHUNK = 4096  # candidate pairs per cosine batch
TSV_HEADER = ("score", "src", "tgt", "src_line", "tgt_line")
SKIP_KINDS = ("blank", "invalid_utf8")


class PassageEncoder(Protocol):
    def encode_passages(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class MinedPair:
    score: float
    src: int  # row of the source sentence
    tgt: int  # row of the target sentence


@dataclass
class MineReport:
    src_path: Path
    tgt_path: Path
    out_path: Path
    src: int  # sentences read from the source file (after skipping)
    tgt: int
    pairs: int  # rows written
    src_unique: int  # sentences embedded (== src unless dedup)
    tgt_unique: int
    src_skipped: dict[str, int] = field(default_factory=dict)  # kind -> lines, see SKIP_KINDS
    tgt_skipped: dict[str, int] = field(default_factory=dict)
    embed_seconds: float = 0.0
    mine_seconds: float = 0.0
    write_seconds: float = 0.0


# --------------------------------------------------------------------------------------------------
# Array core
# --------------------------------------------------------------------------------------------------


def _check_options(k: int, margin: str, retrieval: str, threshold: float | None) -> None:
    if margin not in MARGINS:
        raise ValueError(f"unknown margin {margin!r}; choose from {', '.join(MARGINS)}")
    if retrieval not in RETRIEVALS:
        raise ValueError(f"unknown retrieval {retrieval!r}; choose from {', '.join(RETRIEVALS)}")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or np.isnan(threshold)
    ):
        raise ValueError(f"threshold must be a number or None, got {threshold!r}")


def _as_embeddings(a: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (rows x dim), got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has dimension 0")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _check_pair(x: np.ndarray, y: np.ndarray, xname: str, yname: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_embeddings(x, xname), _as_embeddings(y, yname)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"dimension mismatch: {xname} has dim {x.shape[1]}, {yname} has dim {y.shape[1]}")
    return x, y


def _check_chunk(chunk: int) -> None:
    if isinstance(chunk, bool) or not isinstance(chunk, int | np.integer) or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")


def _knn(x: np.ndarray, y: np.ndarray, k: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """knn() on already validated float32 arrays."""
    kk = min(k, len(y))
    index = faiss.IndexFlatIP(y.shape[1])
    index.add(y)
    sims = np.empty((len(x), kk), dtype=np.float32)
    ids = np.empty((len(x), kk), dtype=np.int64)
    for start in range(0, len(x), chunk):
        stop = min(start + chunk, len(x))
        s, i = index.search(x[start:stop], kk)
        order = np.lexsort((i, -s), axis=1)  # faiss leaves the order of equal scores open
        sims[start:stop] = np.take_along_axis(s, order, axis=1)
        ids[start:stop] = np.take_along_axis(i, order, axis=1)
    return sims, ids


def knn(x: np.ndarray, y: np.ndarray, k: int, chunk: int = DEFAULT_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` rows of ``y`` by inner product for every row of ``x``.

    Returns ``(sims, ids)``, both ``len(x) x min(k, len(y))`` (float32, int64), each row sorted by
    similarity desc, ties by id asc (which of several rows tied at the k-th place is returned is up to
    FAISS). ``x`` is searched ``chunk`` rows at a time (FAISS ``IndexFlatIP``),
    so memory beyond the two inputs stays bounded.
    """
    x, y = _check_pair(x, y, "x", "y")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    _check_chunk(chunk)
    if len(y) == 0:
        raise ValueError("y is empty: nothing to search")
    return _knn(x, y, int(k), int(chunk))


def apply_margin(
    cos: np.ndarray, fwd_avg: np.ndarray, bwd_avg: np.ndarray, margin: str = "ratio"
) -> np.ndarray:
    """The margin formula, elementwise (broadcasting) in float64; see the module docstring."""
    if margin not in MARGINS:
        raise ValueError(f"unknown margin {margin!r}; choose from {', '.join(MARGINS)}")
    c = np.asarray(cos, dtype=np.float64)
    avg = (np.asarray(fwd_avg, dtype=np.float64) + np.asarray(bwd_avg, dtype=np.float64)) / 2.0
    if margin == "absolute":
        return c + np.zeros_like(avg)  # same broadcast shape as the other margins
    if margin == "distance":
        return c - avg
    with np.errstate(divide="ignore", invalid="ignore"):
        return c / avg


def _pair_cos(x: np.ndarray, y: np.ndarray, src: np.ndarray, tgt: np.ndarray) -> np.ndarray:
    """cos(x[src[i]], y[tgt[i]]) in float64, a bounded number of pairs at a time."""
    out = np.empty(len(src), dtype=np.float64)
    for start in range(0, len(src), PAIR_CHUNK):
        stop = min(start + PAIR_CHUNK, len(src))
        a = x[src[start:stop]].astype(np.float64)
        b = y[tgt[start:stop]].astype(np.float64)
        out[start:stop] = np.einsum("ij,ij->i", a, b)
    return out


@dataclass
class _Candidates:
    """The k-NN candidate pairs of both directions, each distinct pair's cosine computed once."""

    fwd_ids: np.ndarray  # n x kf: each source's nearest targets
    bwd_ids: np.ndarray  # m x kb: each target's nearest sources
    src: np.ndarray  # distinct candidate pairs (src[i], tgt[i]) ...
    tgt: np.ndarray
    cos: np.ndarray  # ... and their float64 cosine
    fwd_pos: np.ndarray  # n x kf: position of (i, fwd_ids[i, j]) among the distinct pairs
    bwd_pos: np.ndarray  # m x kb: position of (bwd_ids[j, i], j)
    fwd_avg: np.ndarray  # n: mean cosine of each source's k nearest targets
    bwd_avg: np.ndarray  # m: mean cosine of each target's k nearest sources


def _candidates(x: np.ndarray, y: np.ndarray, k: int, chunk: int) -> _Candidates:
    # FAISS (float32) picks the neighbours; their cosines are recomputed once per distinct pair in
    # float64, so a pair found in both directions has one score, and the averages use the same values.
    _, fwd_ids = _knn(x, y, k, chunk)
    _, bwd_ids = _knn(y, x, k, chunk)
    n, m = len(x), len(y)
    f_src = np.repeat(np.arange(n, dtype=np.int64), fwd_ids.shape[1])
    b_tgt = np.repeat(np.arange(m, dtype=np.int64), bwd_ids.shape[1])
    keys = np.concatenate((f_src * m + fwd_ids.ravel(), bwd_ids.ravel() * m + b_tgt))
    uniq, inverse = np.unique(keys, return_inverse=True)
    inverse = inverse.ravel()
    src, tgt = uniq // m, uniq % m
    cos = _pair_cos(x, y, src, tgt)
    fwd_pos = inverse[: fwd_ids.size].reshape(fwd_ids.shape)
    bwd_pos = inverse[fwd_ids.size :].reshape(bwd_ids.shape)
    return _Candidates(
        fwd_ids=fwd_ids, bwd_ids=bwd_ids, src=src, tgt=tgt, cos=cos, fwd_pos=fwd_pos, bwd_pos=bwd_pos,
        fwd_avg=cos[fwd_pos].mean(axis=1), bwd_avg=cos[bwd_pos].mean(axis=1),
    )


def margin_scores(
    src_emb: np.ndarray,
    tgt_emb: np.ndarray,
    src: Sequence[int] | np.ndarray,
    tgt: Sequence[int] | np.ndarray,
    *,
    k: int = 4,
    margin: str = "ratio",
    chunk: int = DEFAULT_CHUNK,
) -> np.ndarray:
    """Margin score (float64) of each pair ``(src[i], tgt[i])`` of rows of ``src_emb`` x ``tgt_emb``."""
    _check_options(k, margin, "max", None)
    _check_chunk(chunk)
    x, y = _check_pair(src_emb, tgt_emb, "src_emb", "tgt_emb")
    if len(x) == 0 or len(y) == 0:
        raise ValueError("src_emb and tgt_emb must both have at least one row")
    s, t = np.asarray(src, dtype=np.int64).ravel(), np.asarray(tgt, dtype=np.int64).ravel()
    if s.shape != t.shape:
        raise ValueError(f"src and tgt must have the same length, got {len(s)} and {len(t)}")
    if len(s) and (s.min() < 0 or s.max() >= len(x) or t.min() < 0 or t.max() >= len(y)):
        raise ValueError("src/tgt row out of range")
    cand = _candidates(x, y, int(k), int(chunk))
    return apply_margin(_pair_cos(x, y, s, t), cand.fwd_avg[s], cand.bwd_avg[t], margin)


def _best(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the id with the highest score (ties: lower id; NaN never beats a number)."""
    col = np.lexsort((ids, -scores), axis=1)[:, 0]
    rows = np.arange(len(ids))
    return ids[rows, col], scores[rows, col]


def _greedy_one_to_one(src: np.ndarray, tgt: np.ndarray) -> np.ndarray:
    """Indices of the pairs kept when walking them in order and skipping any with a used side."""
    used_src: set[int] = set()
    used_tgt: set[int] = set()
    keep: list[int] = []
    for i, (s, t) in enumerate(zip(src.tolist(), tgt.tolist(), strict=True)):
        if s in used_src or t in used_tgt:
            continue
        used_src.add(s)
        used_tgt.add(t)
        keep.append(i)
    return np.asarray(keep, dtype=np.int64)


def mine(
    src_emb: np.ndarray,
    tgt_emb: np.ndarray,
    *,
    k: int = 4,
    margin: str = "ratio",
    retrieval: str = "max",
    threshold: float | None = None,
    one_to_one: bool = False,
    chunk: int = DEFAULT_CHUNK,
) -> list[MinedPair]:
    """Mine parallel pairs between the rows of ``src_emb`` and ``tgt_emb`` (see the module docstring).

    Raises ``ValueError`` for an unknown margin or retrieval, ``k < 1``, empty inputs or mismatched
    dimensions.
    """
    _check_options(k, margin, retrieval, threshold)
    _check_chunk(chunk)
    x, y = _check_pair(src_emb, tgt_emb, "src_emb", "tgt_emb")
    if len(x) == 0 or len(y) == 0:
        raise ValueError(f"nothing to mine: {len(x)} source and {len(y)} target embeddings")
    n, m = len(x), len(y)
    cand = _candidates(x, y, int(k), int(chunk))
    u_score = apply_margin(cand.cos, cand.fwd_avg[cand.src], cand.bwd_avg[cand.tgt], margin)
    fwd_ids, bwd_ids = cand.fwd_ids, cand.bwd_ids
    fwd_scores = u_score[cand.fwd_pos]
    bwd_scores = u_score[cand.bwd_pos]

    fwd_best, fwd_best_score = _best(fwd_scores, fwd_ids)  # target per source
    bwd_best, bwd_best_score = _best(bwd_scores, bwd_ids)  # source per target
    src_rows, tgt_rows = np.arange(n, dtype=np.int64), np.arange(m, dtype=np.int64)
    if retrieval == "fwd":
        src, tgt, score = src_rows, fwd_best, fwd_best_score
    elif retrieval == "bwd":
        src, tgt, score = bwd_best, tgt_rows, bwd_best_score
    elif retrieval == "intersect":
        mutual = bwd_best[fwd_best] == src_rows
        src, tgt, score = src_rows[mutual], fwd_best[mutual], fwd_best_score[mutual]
    else:  # max
        src = np.concatenate((src_rows, bwd_best))
        tgt = np.concatenate((fwd_best, tgt_rows))
        score = np.concatenate((fwd_best_score, bwd_best_score))

    if threshold is not None:
        ok = score >= threshold
        src, tgt, score = src[ok], tgt[ok], score[ok]
    order = np.lexsort((tgt, src, -score))
    src, tgt, score = src[order], tgt[order], score[order]
    if retrieval == "max" or (one_to_one and retrieval in ("fwd", "bwd")):
        # Greedy by descending score. Filtering by threshold first gives the same result: every pair
        # below the threshold comes after every pair above it.
        keep = _greedy_one_to_one(src, tgt)
        src, tgt, score = src[keep], tgt[keep], score[keep]
    return [
        MinedPair(score=sc, src=s, tgt=t)
        for sc, s, t in zip(score.tolist(), src.tolist(), tgt.tolist(), strict=True)
    ]


# --------------------------------------------------------------------------------------------------
# Texts
# --------------------------------------------------------------------------------------------------


def _dedup(texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Distinct texts in first-seen order, and the row of each one's first occurrence."""
    first: dict[str, int] = {}
    for i, text in enumerate(texts):
        first.setdefault(text, i)
    return list(first), np.fromiter(first.values(), dtype=np.int64, count=len(first))


def _embed(encoder: PassageEncoder, texts: Sequence[str], batch_size: int, side: str) -> np.ndarray:
    vecs = np.asarray(encoder.encode_passages(texts, batch_size=batch_size))
    if vecs.ndim != 2 or len(vecs) != len(texts):
        raise ValueError(f"encoder returned shape {vecs.shape} for {len(texts)} {side} sentences")
    return vecs


def _mine_texts_timed(
    encoder: PassageEncoder,
    src_texts: Sequence[str],
    tgt_texts: Sequence[str],
    *,
    dedup: bool,
    batch_size: int,
    k: int,
    margin: str,
    retrieval: str,
    threshold: float | None,
    one_to_one: bool,
    centering: str = "off",
) -> tuple[list[MinedPair], int, int, float, float]:
    """mine_texts() plus (distinct src, distinct tgt, embed seconds, mine seconds)."""
    _check_options(k, margin, retrieval, threshold)
    check_mode(centering)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not src_texts or not tgt_texts:
        raise ValueError(f"nothing to mine: {len(src_texts)} source and {len(tgt_texts)} target sentences")
    if dedup:
        src_u, src_map = _dedup(src_texts)
        tgt_u, tgt_map = _dedup(tgt_texts)
    else:
        src_u, src_map = list(src_texts), np.arange(len(src_texts), dtype=np.int64)
        tgt_u, tgt_map = list(tgt_texts), np.arange(len(tgt_texts), dtype=np.int64)
    t0 = time.perf_counter()
    x = _embed(encoder, src_u, batch_size, "source")
    y = _embed(encoder, tgt_u, batch_size, "target")
    x, y = center_sides(x, y, centering)
    t1 = time.perf_counter()
    pairs = mine(x, y, k=k, margin=margin, retrieval=retrieval, threshold=threshold, one_to_one=one_to_one)
    if dedup:  # back to rows of the caller's lists (first occurrence); order is unchanged
        pairs = [MinedPair(p.score, int(src_map[p.src]), int(tgt_map[p.tgt])) for p in pairs]
    t2 = time.perf_counter()
    return pairs, len(src_u), len(tgt_u), t1 - t0, t2 - t1


def mine_texts(
    encoder: PassageEncoder,
    src_texts: Sequence[str],
    tgt_texts: Sequence[str],
    *,
    k: int = 4,
    margin: str = "ratio",
    retrieval: str = "max",
    threshold: float | None = None,
    one_to_one: bool = False,
    dedup: bool = False,
    batch_size: int = 32,
    centering: str = "off",
) -> list[MinedPair]:
    """Embed both sides with ``encoder.encode_passages`` and :func:`mine` them.

    ``src``/``tgt`` of the result are indices into ``src_texts``/``tgt_texts``. With ``dedup=True``
    identical sentences on a side are embedded and mined once, and reported at their first index.
    """
    pairs, *_ = _mine_texts_timed(
        encoder, src_texts, tgt_texts, dedup=dedup, batch_size=batch_size, k=k, margin=margin,
        retrieval=retrieval, threshold=threshold, one_to_one=one_to_one, centering=centering,
    )
    return pairs


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def read_sentences(path: str | os.PathLike[str]) -> tuple[list[str], list[int], dict[str, int]]:
    """Sentences of a file, their 1-based line numbers, and how many lines were skipped per kind.

    Plain text: one sentence per line. ``.jsonl``: one ``{"text": ...}`` object per line. Leading and
    trailing whitespace is stripped (and a UTF-8 BOM). Blank lines (or empty ``text``) count as
    ``blank``; lines that are not valid UTF-8 count as ``invalid_utf8`` -- both are skipped. A missing
    or unreadable file, a malformed JSONL record, or a file without any sentence raises ``CorpusError``.
    """
    p = Path(path)
    jsonl = p.suffix.lower() == ".jsonl"
    sentences: list[str] = []
    line_numbers: list[int] = []
    skipped = dict.fromkeys(SKIP_KINDS, 0)
    if not p.is_file():
        raise CorpusError(f"{p}: no such file" if not p.exists() else f"{p}: not a regular file")
    try:
        with p.open("rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                try:
                    line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                except UnicodeDecodeError:
                    skipped["invalid_utf8"] += 1
                    continue
                if jsonl:
                    if not line.strip():
                        skipped["blank"] += 1
                        continue
                    text = _jsonl_text(p, lineno, line)
                    try:
                        text.encode("utf-8")  # a JSON escape can produce a lone surrogate
                    except UnicodeEncodeError:
                        skipped["invalid_utf8"] += 1
                        continue
                else:
                    text = line
                text = text.strip()
                if not text:
                    skipped["blank"] += 1
                    continue
                sentences.append(text)
                line_numbers.append(lineno)
    except OSError as exc:
        raise CorpusError(f"{p}: cannot read ({exc})") from exc
    if not sentences:
        detail = ", ".join(f"{v} {k_}" for k_, v in skipped.items() if v) or "empty file"
        raise CorpusError(f"{p}: no sentences to mine ({detail})")
    return sentences, line_numbers, skipped


def _jsonl_text(path: Path, lineno: int, line: str) -> str:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as exc:
        raise CorpusError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
    if not isinstance(rec, dict) or "text" not in rec:
        raise CorpusError(f'{path}:{lineno}: expected an object with a "text" field')
    text = rec["text"]
    if not isinstance(text, str):
        raise CorpusError(f'{path}:{lineno}: "text" must be a string, got {type(text).__name__}')
    return text


_TSV_CLEAN = str.maketrans({"\t": " ", "\n": " ", "\r": " "})


def _tsv_row(score: float, src: str, tgt: str, src_line: int, tgt_line: int) -> str:
    return f"{score:.6f}\t{src.translate(_TSV_CLEAN)}\t{tgt.translate(_TSV_CLEAN)}\t{src_line}\t{tgt_line}\n"


def _write_atomic(out_path: Path, rows: Sequence[tuple[float, str, str, int, int]]) -> None:
    """Write the TSV to ``<out>.tmp``, fsync, then rename over ``out``; on error remove the tmp file."""
    tmp = out_path.with_name(out_path.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8", newline="\n") as fh:
            fh.write("\t".join(TSV_HEADER) + "\n")
            for row in rows:
                fh.write(_tsv_row(*row))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable; not every platform/filesystem allows fsync on a directory
        dir_fd = os.open(out_path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def mine_files(
    encoder: PassageEncoder,
    src_path: str | os.PathLike[str],
    tgt_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    k: int = 4,
    margin: str = "ratio",
    retrieval: str = "max",
    threshold: float | None = None,
    one_to_one: bool = False,
    dedup: bool = False,
    batch_size: int = 32,
    centering: str = "off",
) -> MineReport:
    """Mine two sentence files and write ``out_path`` as TSV, atomically.

    Columns (after a header row): ``score`` (6 decimals), ``src`` and ``tgt`` sentences (tabs and line
    breaks inside a sentence become spaces), ``src_line`` and ``tgt_line`` (1-based line numbers in the
    input files; with ``dedup`` the first line of the sentence). Rows are sorted by score desc.
    """
    src_p, tgt_p, out_p = Path(src_path), Path(tgt_path), Path(out_path)
    _check_options(k, margin, retrieval, threshold)  # fail before the expensive part
    check_mode(centering)
    if not out_p.parent.is_dir():
        raise FileNotFoundError(f"{out_p}: output directory {out_p.parent} does not exist")
    src_texts, src_lines, src_skipped = read_sentences(src_p)
    tgt_texts, tgt_lines, tgt_skipped = read_sentences(tgt_p)
    pairs, src_unique, tgt_unique, embed_s, mine_s = _mine_texts_timed(
        encoder, src_texts, tgt_texts, dedup=dedup, batch_size=batch_size, k=k, margin=margin,
        retrieval=retrieval, threshold=threshold, one_to_one=one_to_one, centering=centering,
    )
    t0 = time.perf_counter()
    rows = [(p.score, src_texts[p.src], tgt_texts[p.tgt], src_lines[p.src], tgt_lines[p.tgt]) for p in pairs]
    _write_atomic(out_p, rows)
    return MineReport(
        src_path=src_p, tgt_path=tgt_p, out_path=out_p, src=len(src_texts), tgt=len(tgt_texts),
        pairs=len(pairs), src_unique=src_unique, tgt_unique=tgt_unique, src_skipped=src_skipped,
        tgt_skipped=tgt_skipped, embed_seconds=embed_s, mine_seconds=mine_s,
        write_seconds=time.perf_counter() - t0,
    )
