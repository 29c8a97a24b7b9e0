"""Rerankers behind one protocol, and the residual scoring that keeps a trained reranker from ranking worse than
the first stage by construction.

A reranker scores (query, passage) pairs. The service (``app/service.py``) turns the scores into the final order
with :func:`residual_scores`: ``prior_weight * -log(first-stage rank) + score``. For xlir's own reranker
(:class:`XlirReranker`, trained by ``models/train_reranker.py``) the score is a **correction** whose head starts
at zero: an untrained model (all scores 0) keeps the first-stage order exactly (ties go to the better first-stage
rank), and training only learns where to move a candidate away from it. A plain cross-encoder
(:class:`CrossEncoderReranker`, any local sentence-transformers CrossEncoder folder) has ``prior_weight`` 0: its
scores replace the first stage's.

``scope`` says which candidates a reranker's correction is meant for when a request leaves it to the model
(``rerank_scope=auto``): ``all``, or ``same-language`` (a model trained on monolingual pairs, measured to hurt on
cross-language pairs: the other candidates keep the prior only).

:class:`XlirReranker` runs on ONNX Runtime with the ``tokenizers`` library (no torch): the folder holds
``xlir-model.json`` (``kind: reranker``), ``tokenizer.json`` and ``onnx/model.onnx`` (fp32; input ids and attention
mask of pair-encoded texts -> one score per pair). :func:`encode_pairs` is the one pair encoding, used by training
and serving alike.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from models.base import TORCH_HINT, torch_available
from models.encoders import resolve_device
from models.registry import MODEL_META
from xlir.errors import ModelInvalid, ModelNotFound

RERANKER_KIND = "reranker"
DEFAULT_RERANKER = "xlir-rerank"  # the registry's name of xlir's own reranker: served by default once built
SCOPES = ("all", "same-language")
ONNX_FILE = "onnx/model.onnx"  # fp32: dynamic int8 moved the corrections by .33 on average (RESULTS 9)


@runtime_checkable
class Reranker(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def prior_weight(self) -> float:
        """Weight of the first-stage prior ``-log(rank)`` in the final score (0: the scores replace the order)."""
        ...

    @property
    def scope(self) -> str:
        """Which candidates ``rerank_scope=auto`` rescores: ``all`` or ``same-language`` (see the module doc)."""
        ...

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        """One relevance score (or correction) per passage; higher is better."""
        ...


def prior(ranks: np.ndarray | Sequence[int]) -> np.ndarray:
    """The first-stage prior of 1-based ranks: ``-log(rank)``, strictly decreasing."""
    r = np.asarray(ranks, dtype=np.float64)
    if r.size and r.min() < 1:
        raise ValueError("ranks are 1-based")
    return -np.log(r)


def residual_scores(ranks: np.ndarray | Sequence[int], scores: np.ndarray | Sequence[float],
                    prior_weight: float) -> np.ndarray:
    """Final scores: ``prior_weight * prior(ranks) + scores`` (see the module doc)."""
    s = np.asarray(scores, dtype=np.float64)
    if prior_weight == 0:
        return s.copy()
    return prior_weight * prior(ranks) + s


def residual_order(ranks: np.ndarray | Sequence[int], final: np.ndarray | Sequence[float]) -> list[int]:
    """Positions in the final order: by final score, ties to the better first-stage rank."""
    r = np.asarray(ranks)
    f = np.asarray(final, dtype=np.float64)
    return sorted(range(len(f)), key=lambda i: (-float(f[i]), int(r[i])))


# ---- pair encoding (training and serving) ----

def load_pair_tokenizer(folder: Path, max_length: int) -> tuple[Any, int]:
    """The folder's ``tokenizer.json`` (tokenizers library) with pair truncation to ``max_length`` tokens, longest
    first (the passage is cut before a short query is), and the padding id."""
    from models.onnx_backend import load_tokenizer

    return load_tokenizer(folder, max_length)


def encode_pairs(tokenizer: Any, query: str, passages: Sequence[str], pad_id: int,
                 query_prefix: str = "", passage_prefix: str = "") -> tuple[np.ndarray, np.ndarray]:
    """``(input_ids, attention_mask)`` (int64, padded to the longest pair) of ``(prefix+query, prefix+passage)``
    pairs, with the tokenizer's pair template (XLM-R: ``<s> q </s></s> p </s>``) and its truncation."""
    return padded(pair_ids(tokenizer, query, passages, query_prefix, passage_prefix), pad_id)


def pair_ids(tokenizer: Any, query: str, passages: Sequence[str], query_prefix: str = "",
             passage_prefix: str = "") -> list[list[int]]:
    """The token ids of each ``(prefix+query, prefix+passage)`` pair, unpadded (see :func:`encode_pairs`)."""
    return [e.ids for e in tokenizer.encode_batch([(query_prefix + query, passage_prefix + p) for p in passages])]


def padded(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token id rows -> ``(input_ids, attention_mask)`` padded to the longest row."""
    width = max((len(r) for r in rows), default=0)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask


# ---- xlir's reranker folder ----

def read_meta(folder: Path) -> dict[str, Any]:
    """The ``xlir-model.json`` of a reranker folder; a missing or foreign folder is an error naming the path."""
    folder = Path(folder).expanduser()
    meta_file = folder / MODEL_META
    if not folder.is_dir():
        raise ModelNotFound(f"no reranker folder at {folder}")
    if not meta_file.is_file():
        raise ModelNotFound(f"{folder} is not an xlir reranker folder (no {MODEL_META})")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelInvalid(f"{meta_file}: unreadable ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("kind") != RERANKER_KIND:
        kind = meta.get("kind") if isinstance(meta, dict) else None
        raise ModelInvalid(f"{folder} holds a model of kind {kind!r}, not a reranker")
    if meta.get("scope", "all") not in SCOPES:
        raise ModelInvalid(f"{meta_file}: scope {meta.get('scope')!r}; known: {', '.join(SCOPES)}")
    return meta


class XlirReranker:
    """A reranker folder written by ``models/train_reranker.py: build_folder`` on ONNX Runtime (CPU)."""

    def __init__(self, path: Path, threads: int | None = None, batch_size: int = 8, eager: bool = True) -> None:
        """``eager=False`` checks the folder now and loads the ONNX session at the first :meth:`score`."""
        from models.onnx_backend import cpu_cores, session_options

        path = Path(path).expanduser()
        meta = read_meta(path)
        model_file = path / str(meta.get("onnx", ONNX_FILE))
        if not model_file.is_file():
            raise ModelNotFound(f"the reranker folder {path} has no {model_file.relative_to(path)}: rebuild it with "
                                "`xlir models fetch` (or `make setup`)")
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ModelInvalid(f"the reranker {path} runs on ONNX Runtime: pip install onnxruntime") from exc
        self._tok, self._pad = load_pair_tokenizer(path, int(meta.get("max_length", 128)))
        # the ONNX session (~400 MB of fp32 weights in memory) is made at the first score(), so a server that
        # loads the default reranker keeps its start-up time and memory until a request asks for rerank
        self._session: Any = None
        self._session_lock = threading.Lock()
        self._open = lambda: ort.InferenceSession(str(model_file), session_options(threads or cpu_cores(), False),
                                                  providers=["CPUExecutionProvider"])
        self._model_file = model_file
        self._name = str(meta.get("name") or path.resolve())
        self._prior_weight = float(meta.get("prior_weight", 0.0))
        self._weight = float(meta.get("weight", 1.0))
        self._scope = str(meta.get("scope", "all"))
        self._qp, self._pp = str(meta.get("query_prefix", "")), str(meta.get("passage_prefix", ""))
        self.batch_size = batch_size
        self.meta = meta
        if eager:
            self.session()

    def session(self) -> Any:
        """The ONNX Runtime session, made once (thread-safe); an unloadable file is ModelInvalid naming it."""
        if self._session is None:
            with self._session_lock:
                if self._session is None:
                    try:
                        self._session = self._open()
                    except Exception as exc:
                        raise ModelInvalid(f"onnxruntime cannot load {self._model_file}: {exc}") from exc
        return self._session

    @property
    def name(self) -> str:
        return self._name

    @property
    def prior_weight(self) -> float:
        return self._prior_weight

    @property
    def scope(self) -> str:
        return self._scope

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        """``weight`` times the model's correction for each passage (``weight`` tuned on validation). The pairs
        run in batches of similar length (sorted, at most ``batch_size`` rows): little padding."""
        out = np.zeros(len(passages), dtype=np.float32)
        if not passages or self._weight == 0:
            return out
        rows_ids = pair_ids(self._tok, query, passages, self._qp, self._pp)
        order = sorted(range(len(rows_ids)), key=lambda i: len(rows_ids[i]))
        for start in range(0, len(order), self.batch_size):
            rows = order[start: start + self.batch_size]
            ids, mask = padded([rows_ids[i] for i in rows], self._pad)
            got = self.session().run(None, {"input_ids": ids, "attention_mask": mask})[0]
            out[rows] = np.asarray(got, dtype=np.float32).reshape(len(rows))
        return out * self._weight


class CrossEncoderReranker:
    """Any local sentence-transformers CrossEncoder folder (torch): its scores replace the first stage's."""

    prior_weight = 0.0
    scope = "all"

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


def load_reranker(path: Path, device: str = "auto", eager: bool = True) -> Reranker:
    """The reranker in folder ``path``: xlir's own (``xlir-model.json`` says ``kind: reranker``) or a
    sentence-transformers CrossEncoder. A missing or unusable folder is an error naming the path. ``eager=False``:
    xlir's own loads its ONNX session at the first score (the server's default reranker)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ModelNotFound(f"no reranker folder at {path}")
    if (path / MODEL_META).is_file():
        return XlirReranker(path, eager=eager)
    return CrossEncoderReranker(path, device=device)
