"""Rerankers behind one protocol; the implementation loads a local sentence-transformers CrossEncoder."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from models.base import TORCH_HINT, torch_available
from models.encoders import resolve_device
from xlir.errors import ModelInvalid, ModelNotFound


@runtime_checkable
class Reranker(Protocol):
    @property
    def name(self) -> str: ...

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        """One relevance score per passage; higher is better."""
        ...


class CrossEncoderReranker:
    def __init__(self, path: Path, device: str = "auto", batch_size: int = 32) -> None:
        path = Path(path).expanduser()
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelNotFound(f"no cross-encoder folder at {path} (expected a sentence-transformers CrossEncoder)")
        if not torch_available():  # a serving install: refused at start-up, not at the first rerank=true
            raise ModelInvalid(f"the reranker {path} is a sentence-transformers CrossEncoder, which needs torch, "
                               f"transformers and sentence-transformers; this install lacks them: {TORCH_HINT}, "
                               "or serve without --reranker (XLIR_RERANKER)")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import CrossEncoder

        try:
            self._model = CrossEncoder(str(path), device=resolve_device(device), local_files_only=True)
        except Exception as exc:
            raise ModelInvalid(f"cannot load the cross-encoder at {path}: {exc}") from exc
        self._name = str(path.resolve())
        self._batch_size = batch_size

    @property
    def name(self) -> str:
        return self._name

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        if not passages:
            return np.zeros(0, dtype=np.float32)
        scores = self._model.predict(
            [(query, p) for p in passages], batch_size=self._batch_size, show_progress_bar=False,
            convert_to_numpy=True,
        )
        return np.asarray(scores, dtype=np.float32).reshape(len(passages), -1)[:, -1]
