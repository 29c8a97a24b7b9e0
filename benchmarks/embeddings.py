"""The benchmarks' embeddings, from the one embedding cache (:mod:`models.cache`) in ``$XLIR_HOME/cache/embeddings``,
keyed by the model checksum, the kind (``query`` or ``passage``) and the texts, so a second run only scores.

Indexes built for benchmarks are cached on their own (:func:`benchmarks.retrieval.index_for`: the index holds the
pool's vectors); this cache holds query vectors and the vectors of texts that are not indexed (Tatoeba, BUCC).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.base import length_sorted_batches
from models.cache import load_or_compute
from models.registry import xlir_home

BATCH = 32


def embedding_cache_dir() -> Path:
    return xlir_home() / "cache" / "embeddings"


@dataclass
class EmbedStats:
    hits: int = 0
    misses: int = 0
    texts_embedded: int = 0
    seconds: float = 0.0


def embed(enc: Any, kind: str, texts: Sequence[str], cache_dir: Path | None = None, desc: str = "",
          stats: EmbedStats | None = None, tag: str = "") -> np.ndarray:
    """Embeddings of ``texts`` as ``kind`` (``query`` or ``passage``), from the cache or computed and cached;
    queries in length-sorted batches (as the server's batcher sees them). A ``tag`` keys apart the vectors of
    other encoders with the same weights checksum (:func:`benchmarks.encoder_speed.cache_tag`: ONNX backends)."""
    from tqdm import tqdm

    if kind not in ("query", "passage"):
        raise ValueError(f"unknown kind {kind!r}")
    stats = stats if stats is not None else EmbedStats()

    def compute() -> np.ndarray:
        t0 = time.perf_counter()
        with tqdm(total=len(texts), desc=desc, unit="text", file=sys.stderr, leave=False) as bar:
            if kind == "passage":
                vecs = enc.encode_passages(texts, batch_size=BATCH, progress=bar.update)
            else:
                vecs = np.zeros((len(texts), enc.dim), dtype=np.float32)
                for batch in length_sorted_batches([len(t) for t in texts], BATCH):
                    vecs[batch] = enc.encode_queries([texts[i] for i in batch.tolist()])
                    bar.update(len(batch))
        stats.seconds += time.perf_counter() - t0
        stats.misses += 1
        stats.texts_embedded += len(texts)
        return vecs

    vecs, cached = load_or_compute(cache_dir if cache_dir is not None else embedding_cache_dir(), enc,
                                   f"{kind}/{tag}" if tag else kind, texts, compute)
    stats.hits += cached
    return vecs


def embed_by_group(enc: Any, kind: str, texts: Sequence[str], groups: Sequence[str], what: str,
                   stats: EmbedStats | None = None, tag: str = "") -> np.ndarray:
    """Embed ``texts`` one group (language) at a time, so each group is a cache entry of its own."""
    out = np.zeros((len(texts), enc.dim), dtype=np.float32)
    codes = np.asarray(groups)
    for g in sorted(set(groups)):
        rows = np.flatnonzero(codes == g)
        out[rows] = embed(enc, kind, [texts[i] for i in rows.tolist()], None, f"{what} {g}", stats, tag)
    return out
