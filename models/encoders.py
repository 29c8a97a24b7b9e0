"""Encoders behind one small protocol, and the sentence-transformers implementation.

``Encoder`` is what the indexer, the server and the benchmarks depend on; a second encoder family
(USE-m3, static distilled encoders) only has to implement it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from models.registry import MODEL_META, ResolvedModel, resolve_model, weights_checksum
from xlir.errors import ModelInvalid

log = logging.getLogger(__name__)

ProgressFn = Callable[[int], None]


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


def resolve_device(device: str = "auto") -> str:
    """``auto`` = CUDA when torch sees a GPU, else CPU; anything else is passed through."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Indices grouped into batches of similar length (longest first), so padding stays small."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


class SentenceTransformerEncoder:
    """A local sentence-transformers folder with the registry's prefixes applied."""

    def __init__(self, resolved: ResolvedModel, device: str = "auto") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import transformers
        from sentence_transformers import SentenceTransformer

        # the e5 folder has no BERT pooler weights (mean pooling does not use them): keep the load quiet
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()

        self._resolved = resolved
        self._spec = resolved.spec
        self.device = resolve_device(device)
        try:
            self._model = SentenceTransformer(str(resolved.path), device=self.device, local_files_only=True)
        except Exception as exc:  # a broken folder must read as a model problem, not a traceback
            raise ModelInvalid(f"cannot load the sentence-transformers folder {resolved.path}: {exc}") from exc
        self._model.max_seq_length = min(self._spec.max_seq_length, self._model.max_seq_length or 512)
        if self.device.startswith("cuda"):
            self._model.half()
        dim = self._model.get_embedding_dimension() if hasattr(self._model, "get_embedding_dimension") \
            else self._model.get_sentence_embedding_dimension()
        if not dim:
            raise ModelInvalid(f"{resolved.path} does not declare an embedding dimension")
        self._dim = int(dim)
        self._checksum: str | None = None

    @property
    def name(self) -> str:
        return self._resolved.name

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def path(self) -> Path:
        return self._resolved.path

    @property
    def checksum(self) -> str:
        if self._checksum is None:
            meta = self._resolved.path / MODEL_META
            if meta.is_file():
                self._checksum = str(json.loads(meta.read_text())["sha256"])
            else:
                self._checksum = weights_checksum(self._resolved.path)
        return self._checksum

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        out = self._model.encode(
            list(texts), batch_size=max(1, len(texts)), convert_to_numpy=True,
            normalize_embeddings=True, show_progress_bar=False,
        )
        return np.ascontiguousarray(out, dtype=np.float32)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        prefix = self._spec.query_prefix
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        return self._encode([prefix + t for t in texts])

    def encode_passages(
        self, texts: Sequence[str], *, batch_size: int = 32, progress: ProgressFn | None = None
    ) -> np.ndarray:
        prefix = self._spec.passage_prefix
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for batch in length_sorted_batches([len(t) for t in texts], batch_size):
            out[batch] = self._encode([prefix + texts[i] for i in batch])
            if progress is not None:
                progress(len(batch))
        return out


def load_encoder(name_or_path: str, *, device: str = "auto", home: Path | None = None) -> SentenceTransformerEncoder:
    """Registry name or local folder -> ready encoder. Raises ``ModelNotFound`` with the fix to apply."""
    return SentenceTransformerEncoder(resolve_model(name_or_path, home), device=device)
