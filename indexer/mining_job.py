"""Bitext mining of texts and files: embed (cached, resumable), search (:mod:`indexer.mining_search`), score
(:mod:`indexer.mining`), write the pairs as TSV atomically.

``mine_texts`` mines two lists in memory (``POST /mine``). ``mine_files`` is the batch job behind ``xlir mine``:

1. read both files (one sentence per line, or JSONL with ``{"text": ...}``), skipping and counting blank and
   invalid UTF-8 lines; optional de-duplication;
2. embed each side in chunks into ``$XLIR_HOME/cache/mining/<encoder checksum>/<key>.f32``, keyed by the encoder
   checksum, the kind (with the backend) and the side's texts (:func:`models.cache.cache_key`); a finished file
   is reused by any later job, an interrupted one continues from its last finished chunk;
3. search both directions (exact, or IVF beyond ``exact_max`` rows), each chunk of queries saved in the job's
   work directory ``<out>.work/`` so that a killed job restarts where it stopped;
4. score with the margin, write ``<out>.tmp``, fsync, rename to ``<out>``, remove the work directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from indexer.mining import MinedArrays, MinedPair, MineOptions
from indexer.mining_search import ArrayRows, F32Rows, Range, SearchPlan, SearchRunner, mine_rows
from models.cache import atomic_path, cache_key, cache_kind
from models.registry import xlir_home
from xlir.errors import CorpusError

TSV_HEADER = ("score", "src", "tgt", "src_line", "tgt_line")
SKIP_KINDS = ("blank", "invalid_utf8")
EMBED_CHUNK = 2048  # sentences per embedding chunk (the unit of resumption)
CACHE_VERSION = 1


class PassageEncoder(Protocol):
    def encode_passages(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray: ...


class MineRunner(SearchRunner, Protocol):
    """Where :func:`mine_files` embeds and searches: in this process (``runner=None``) or on a cluster with the
    same results (indexer/ray_mining.py)."""

    def embed_chunks(self, texts: Sequence[str], ranges: Sequence[Range], batch_size: int,
                     side: str) -> Iterable[np.ndarray]:
        """``_embed(encoder, texts[start:stop], batch_size, side)`` for each range, in order."""
        ...


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
    embeddings: tuple[F32Rows, F32Rows]  # each side's vectors in the cache (in the removed work dir without checksum)
    src_skipped: dict[str, int] = field(default_factory=dict)  # kind -> lines, see SKIP_KINDS
    tgt_skipped: dict[str, int] = field(default_factory=dict)
    fwd_plan: SearchPlan | None = None
    bwd_plan: SearchPlan | None = None
    embed_cached: tuple[int, int] = (0, 0)  # sentences per side whose embeddings came from the cache
    resumed_chunks: int = 0  # search chunks reused from an interrupted run
    embed_seconds: float = 0.0
    index_seconds: float = 0.0
    search_seconds: float = 0.0
    score_seconds: float = 0.0
    write_seconds: float = 0.0
    threshold: float | None = None  # the threshold applied (the value a threshold rule set), None = no threshold
    ray_cpus: int = 0  # run on Ray (indexer/ray_mining.py): the cluster's CPUs and the tasks run; 0 = here
    ray_tasks: int = 0

    @property
    def mine_seconds(self) -> float:
        """Search and scoring (everything after embedding, before writing)."""
        return self.index_seconds + self.search_seconds + self.score_seconds


def _options(options: MineOptions | None, overrides: dict[str, Any]) -> MineOptions:
    base = options or MineOptions()
    return dataclasses.replace(base, **overrides) if overrides else base


# --------------------------------------------------------------------------------------------------
# Embedding
# --------------------------------------------------------------------------------------------------


def _embed(encoder: PassageEncoder, texts: Sequence[str], batch_size: int, side: str) -> np.ndarray:
    vecs = np.asarray(encoder.encode_passages(texts, batch_size=batch_size))
    if vecs.ndim != 2 or len(vecs) != len(texts):
        raise ValueError(f"encoder returned shape {vecs.shape} for {len(texts)} {side} sentences")
    if not np.isfinite(vecs).all():
        raise ValueError(f"encoder returned NaN or infinite values for {side} sentences")
    return np.ascontiguousarray(vecs, dtype=np.float32)


def embed_to_file(
    encoder: PassageEncoder, texts: Sequence[str], path: Path, *, batch_size: int = 32,
    chunk: int = EMBED_CHUNK, progress: bool = False, desc: str = "embed", runner: MineRunner | None = None,
) -> tuple[F32Rows, int]:
    """Embeddings of ``texts`` in the float32 file ``path``, written a chunk at a time.

    A finished file (with its ``.json`` beside it, same row count) is reused as is. An interrupted one
    (``path.partial`` + ``path.partial.json`` holding the rows done) continues after its last finished chunk.
    Returns the rows and how many of them were already there. ``runner`` embeds the chunks elsewhere
    (default: ``encoder`` here); they are written here, in order.
    """
    meta_path = path.with_name(path.name + ".json")
    n = len(texts)
    if path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("rows") == n and meta.get("version") == CACHE_VERSION:
            return F32Rows(path, n, int(meta["dim"])), n
    partial = path.with_name(path.name + ".partial")
    state_path = path.with_name(path.name + ".partial.json")
    done, dim = 0, 0
    if partial.is_file() and state_path.is_file():
        try:
            state = json.loads(state_path.read_text())
            if state.get("rows") == n and state.get("version") == CACHE_VERSION:
                done, dim = int(state["done"]), int(state["dim"])
        except (OSError, ValueError, KeyError):
            done, dim = 0, 0
    reused = done
    path.parent.mkdir(parents=True, exist_ok=True)
    with tqdm(desc=desc, total=n, initial=done, unit="sent", unit_scale=True, disable=not progress,
              dynamic_ncols=True, leave=False) as bar:
        fh = partial.open("r+b") if done else None
        try:
            ranges = [(start, min(start + chunk, n)) for start in range(done, n, chunk)]
            chunks = (runner.embed_chunks(texts, ranges, batch_size, desc) if runner is not None and ranges
                      else (_embed(encoder, texts[a:b], batch_size, desc) for a, b in ranges))
            for (start, stop), vecs in zip(ranges, chunks, strict=True):
                if fh is None:  # first chunk: now the dimension is known
                    dim = vecs.shape[1]
                    with partial.open("wb") as new:
                        new.truncate(n * dim * 4)
                    fh = partial.open("r+b")
                if vecs.shape[1] != dim:
                    raise ValueError(f"encoder changed dimension from {dim} to {vecs.shape[1]}")
                fh.seek(start * dim * 4)
                fh.write(vecs.astype("<f4", copy=False).tobytes())
                fh.flush()
                os.fsync(fh.fileno())
                with atomic_path(state_path) as tmp:
                    tmp.write_text(json.dumps({"rows": n, "dim": dim, "done": stop, "version": CACHE_VERSION}))
                bar.update(stop - start)
        finally:
            if fh is not None:
                fh.close()
    os.replace(partial, path)
    with atomic_path(meta_path) as tmp:
        tmp.write_text(json.dumps({"rows": n, "dim": dim, "version": CACHE_VERSION}))
    state_path.unlink(missing_ok=True)
    return F32Rows(path, n, dim), reused


def _dedup(texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Distinct texts in first-seen order, and the row of each one's first occurrence."""
    first: dict[str, int] = {}
    for i, text in enumerate(texts):
        first.setdefault(text, i)
    return list(first), np.fromiter(first.values(), dtype=np.int64, count=len(first))


def _unique(texts: Sequence[str], dedup: bool) -> tuple[list[str], np.ndarray]:
    return _dedup(texts) if dedup else (list(texts), np.arange(len(texts), dtype=np.int64))


# --------------------------------------------------------------------------------------------------
# Texts in memory
# --------------------------------------------------------------------------------------------------


@dataclass
class TextsResult:
    mined: MinedArrays  # rows of the caller's lists
    src_unique: int
    tgt_unique: int
    fwd_plan: SearchPlan
    bwd_plan: SearchPlan
    embed_seconds: float
    mine_seconds: float


def mine_texts_result(
    encoder: PassageEncoder, src_texts: Sequence[str], tgt_texts: Sequence[str], options: MineOptions | None = None,
    **overrides: Any,
) -> TextsResult:
    """:func:`mine_texts` with the plans and timings."""
    opts = _options(options, overrides)
    if not src_texts or not tgt_texts:
        raise ValueError(f"nothing to mine: {len(src_texts)} source and {len(tgt_texts)} target sentences")
    src_u, src_map = _unique(src_texts, opts.dedup)
    tgt_u, tgt_map = _unique(tgt_texts, opts.dedup)
    t0 = time.perf_counter()
    x = _embed(encoder, src_u, opts.batch_size, "source")
    y = _embed(encoder, tgt_u, opts.batch_size, "target")
    t1 = time.perf_counter()
    mined, rep = mine_rows(ArrayRows(x), ArrayRows(y), opts)
    # back to rows of the caller's lists (first occurrence); the order is unchanged
    mined = dataclasses.replace(mined, src=src_map[mined.src], tgt=tgt_map[mined.tgt])
    return TextsResult(mined=mined, src_unique=len(src_u), tgt_unique=len(tgt_u), fwd_plan=rep.fwd,
                       bwd_plan=rep.bwd, embed_seconds=t1 - t0, mine_seconds=time.perf_counter() - t1)


def mine_texts(
    encoder: PassageEncoder, src_texts: Sequence[str], tgt_texts: Sequence[str], options: MineOptions | None = None,
    **overrides: Any,
) -> list[MinedPair]:
    """Embed both sides with ``encoder.encode_passages`` and mine them (options: :class:`MineOptions`, or its
    fields as keywords).

    ``src``/``tgt`` of the result are indices into ``src_texts``/``tgt_texts``. With ``dedup=True``
    identical sentences on a side are embedded and mined once, and reported at their first index.
    """
    return mine_texts_result(encoder, src_texts, tgt_texts, options, **overrides).mined.pairs()


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


def _write_atomic(out_path: Path, rows: Iterable[tuple[float, str, str, int, int]]) -> None:
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


def default_cache_dir() -> Path:
    return xlir_home() / "cache" / "mining"


def mine_files(
    encoder: PassageEncoder,
    src_path: str | os.PathLike[str],
    tgt_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    options: MineOptions | None = None,
    *,
    progress: bool = False,
    cache_dir: Path | None = None,
    work_dir: Path | None = None,
    runner: MineRunner | None = None,
    **overrides: Any,
) -> MineReport:
    """Mine two sentence files and write ``out_path`` as TSV, atomically (see the module docstring).

    Columns (after a header row): ``score`` (6 decimals), ``src`` and ``tgt`` sentences (tabs and line
    breaks inside a sentence become spaces), ``src_line`` and ``tgt_line`` (1-based line numbers in the
    input files; with ``dedup`` the first line of the sentence). Rows are sorted by score desc.

    ``cache_dir`` (default ``$XLIR_HOME/cache/mining``) keeps embeddings for encoders that have a
    ``checksum``; ``work_dir`` (default ``<out>.work``) holds the resumable state of this job and is removed
    when the output is written. ``runner`` embeds and searches elsewhere with the same results
    (indexer/ray_mining.py: ``mine_files_ray``); ``encoder`` then only names the cache (name, checksum, backend).
    """
    opts = _options(options, overrides)  # invalid options fail before anything expensive
    src_p, tgt_p, out_p = Path(src_path), Path(tgt_path), Path(out_path)
    if not out_p.parent.is_dir():
        raise FileNotFoundError(f"{out_p}: output directory {out_p.parent} does not exist")
    if out_p.is_dir():
        raise IsADirectoryError(f"{out_p}: is a directory, not an output file")
    src_texts, src_lines, src_skipped = read_sentences(src_p)
    tgt_texts, tgt_lines, tgt_skipped = read_sentences(tgt_p)
    src_u, src_map = _unique(src_texts, opts.dedup)
    tgt_u, tgt_map = _unique(tgt_texts, opts.dedup)
    work = work_dir or out_p.with_name(out_p.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    checksum = getattr(encoder, "checksum", None)
    name = getattr(encoder, "name", type(encoder).__name__)
    key = (str(checksum or name), cache_kind(encoder, "passage"))
    emb_root = (cache_dir or default_cache_dir()) / key[0][:16] if checksum else work / "embeddings"

    t0 = time.perf_counter()
    sides = [(side, texts, emb_root / f"{cache_key(*key, texts)}.f32") for side, texts in (("src", src_u),
                                                                                          ("tgt", tgt_u))]

    def embed_side(side: str, texts: list[str], path: Path) -> tuple[F32Rows, int]:
        return embed_to_file(encoder, texts, path, batch_size=opts.batch_size, progress=progress,
                             desc=f"embed {side}", runner=runner)

    if runner is not None and sides[0][2] != sides[1][2]:  # a cluster embeds both sides at once
        with ThreadPoolExecutor(2) as pool:
            (src_emb, src_cached), (tgt_emb, tgt_cached) = pool.map(lambda a: embed_side(*a), sides)
    else:
        (src_emb, src_cached), (tgt_emb, tgt_cached) = (embed_side(*a) for a in sides)
    embed_s = time.perf_counter() - t0
    job_key = {"encoder": key[0], "src": str(src_emb.path.name), "tgt": str(tgt_emb.path.name)}
    mined, rep = mine_rows(src_emb, tgt_emb, opts, work=work / "search", job_key=job_key, progress=progress,
                           runner=runner)
    t1 = time.perf_counter()
    src_rows, tgt_rows = src_map[mined.src], tgt_map[mined.tgt]
    rows = (
        (sc, src_texts[s], tgt_texts[t], src_lines[s], tgt_lines[t])
        for sc, s, t in zip(mined.score.tolist(), src_rows.tolist(), tgt_rows.tolist(), strict=True)
    )
    _write_atomic(out_p, tqdm(rows, desc="write", total=len(mined), unit="pair", unit_scale=True,
                              disable=not progress, dynamic_ncols=True, leave=False))
    shutil.rmtree(work, ignore_errors=True)
    return MineReport(
        src_path=src_p, tgt_path=tgt_p, out_path=out_p, src=len(src_texts), tgt=len(tgt_texts),
        pairs=len(mined), src_unique=len(src_u), tgt_unique=len(tgt_u), embeddings=(src_emb, tgt_emb),
        src_skipped=src_skipped, tgt_skipped=tgt_skipped, fwd_plan=rep.fwd, bwd_plan=rep.bwd,
        embed_cached=(src_cached, tgt_cached), resumed_chunks=rep.resumed_chunks, embed_seconds=embed_s,
        index_seconds=rep.index_seconds, search_seconds=rep.search_seconds, score_seconds=rep.score_seconds,
        write_seconds=time.perf_counter() - t1, threshold=mined.threshold,
    )
