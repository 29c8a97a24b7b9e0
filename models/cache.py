"""The one embedding cache: vectors keyed by :func:`cache_key` (model checksum + kind + the texts), saved so that a
reader never sees a partial file (:func:`atomic_path`).

Three callers, one key; only the folder differs:

- the build's resume cache (``indexer/build.py``): one ``.npy`` per chunk in ``.<out>.resume/``, deleted when the
  build succeeds, so a killed build skips the chunks it finished (:func:`load_or_compute`);
- the benchmarks (``benchmarks/embeddings.py``): ``.npy`` files in ``$XLIR_HOME/cache/embeddings``
  (:func:`load_or_compute`);
- the mining job (``indexer/mining_job.py: embed_to_file``): ``<key>.f32`` in ``$XLIR_HOME/cache/mining/<checksum>``.
  Its inputs can be larger than memory, so it streams the vectors into a raw float32 file a chunk at a time and
  resumes a killed job after its last finished chunk; a half-written file must survive the kill, which is why
  that path shares the key and :func:`atomic_path` (for its metadata) but not :func:`load_or_compute`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from models.base import Encoder


def cache_kind(encoder: object, kind: str) -> str:
    """``kind`` (``query`` or ``passage``) with the encoder's backend unless it is torch, for the caches whose
    vectors must be exactly the encoder's (build, mining): ONNX and int8 vectors differ slightly from torch ones,
    which share the weights checksum. The benchmarks key by the plain kind, as their caches always have (torch
    and ONNX fp32 vectors agree to cos >= 0.9999; ``benchmarks/encoder_speed.py`` keys its backends apart)."""
    backend = str(getattr(encoder, "backend", "torch"))
    return kind if backend == "torch" else f"{kind}/{backend}"


def cache_key(checksum: str, kind: str, texts: Sequence[str]) -> str:
    """sha256 over the model checksum, the kind and the texts, each length-prefixed (no two inputs collide)."""
    h = hashlib.sha256()
    for part in (checksum, kind, str(len(texts)), *texts):
        data = part.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; it replaces ``path`` only when the block ends without an error
    and is removed otherwise. A process killed while writing leaves at most a ``.tmp`` file that nothing reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_or_compute(folder: Path | None, encoder: Encoder, kind: str, texts: Sequence[str],
                    compute: Callable[[], np.ndarray]) -> tuple[np.ndarray, bool]:
    """The vectors of ``texts`` saved in ``folder`` under ``kind`` (when they have ``len(texts)`` rows of
    ``encoder.dim``), else ``compute()``'s, saved atomically; and whether they came from the cache. ``folder``
    None caches nothing."""
    if folder is None:
        return compute(), False
    path = folder / f"{cache_key(encoder.checksum, kind, texts)}.npy"
    try:
        vecs = np.load(path)
        if vecs.shape == (len(texts), encoder.dim):
            return vecs, True
    except (OSError, ValueError):  # absent or unreadable: computed again
        pass
    vecs = compute()
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        np.save(fh, np.ascontiguousarray(vecs, dtype=np.float32))
    return vecs, False
