"""The sentence-transformers encoder (torch), and ``load_encoder``, which picks the backend (the ``Encoder``
protocol they implement is in ``models/base.py``)."""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from models.base import (
    DEFAULT_TOKEN_BUDGET,
    TORCH_HINT,
    LocalEncoder,
    ProgressFn,
    folder_checksum,
    offline_transformers,
    torch_available,
)
from models.registry import RERANKER, ResolvedModel, resolve_model
from xlir.errors import ModelInvalid, ModelNotFound

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx", "onnx-int8", "onnx-f16w")
# The workloads ``backend="auto"`` is chosen for: one query at a time (the server), batches of ~100-token
# passages (``xlir index``, centroid tables) and batches of short sentences (``xlir mine``).
WORKLOADS = ("queries", "passages", "sentences")
# What ``backend="auto"`` runs on a CPU, per workload, as measured by ``python -m benchmarks.encoder_speed`` on a
# quiet machine (benchmarks/RESULTS.md section 5.1): ONNX fp32 gives torch's vectors (cos >= 0.9999, same Tatoeba
# and XQuAD-R scores) and answers single queries 2x faster, but batches of 100-token passages run 8% slower than
# torch, so indexing stays on torch; int8 is faster still but costs 0.5-1.7 points, so it is opt-in. On a GPU
# ``auto`` is always torch in fp16.
CPU_AUTO_BACKEND: dict[str, str] = {"queries": "onnx", "passages": "torch", "sentences": "onnx"}


# device files without which no CUDA (or ROCm, or WSL GPU) device can exist on Linux
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")


def gpu_possible() -> bool:
    """False when this Linux machine has no GPU device file: ``auto`` is the CPU without importing torch (which
    would cost a serving process ~190 MB and seconds of start-up for nothing). Elsewhere: ask torch."""
    return not sys.platform.startswith("linux") or any(os.path.exists(f) for f in GPU_DEVICE_FILES)


def resolve_device(device: str = "auto") -> str:
    """``auto`` = CUDA when torch sees a GPU, else CPU (always CPU without torch, or on a Linux machine without a
    GPU device: torch is not imported for that); anything else is passed through."""
    if device != "auto":
        return device
    if not torch_available() or not gpu_possible():
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def token_lengths(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[int]:
    """Tokens per text as the encoder sees it (special tokens included, truncated at ``max_length``)."""
    if not texts:
        return []
    ids = tokenizer(list(texts), truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]
    return [len(x) for x in ids]


def locked(fn: Callable[..., Any], lock: threading.RLock) -> Callable[..., Any]:
    """``fn`` called while holding ``lock``."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with lock:
            return fn(*args, **kwargs)

    return call


class SentenceTransformerEncoder(LocalEncoder):
    """A local sentence-transformers folder with the registry's prefixes applied.

    Thread-safe: the server encodes in several threads at once (the query batcher's, ``/embed``, document
    upserts, mining). A Hugging Face fast tokenizer is not: every call sets its truncation and padding, and
    ``token_lengths`` (no padding) and ``model.encode`` (padding) ask for different ones, so a call in another
    thread fails: "Unable to create tensor" when padding was switched off under it (~5% of 300 mixed calls in 16
    threads, tests/test_batching_tokenizer_threads.py), or "Already borrowed". All tokenization of this encoder
    therefore runs under one lock, held for the tokenizer call only (0.2 ms for 8 queries, 9 ms for 32 passages of
    300 words with e5-small), not for the forward pass (0.5 to 1.6 s for the same batches on 2 cores), whereas a
    copy of the tokenizer per thread costs 1 s and ~240 MB each (``copy.deepcopy``, e5-small's 250k-piece
    vocabulary).
    """

    backend = "torch"

    def __init__(self, resolved: ResolvedModel, device: str = "auto", *,
                 token_budget: int = DEFAULT_TOKEN_BUDGET) -> None:
        if not torch_available():
            raise ModelInvalid(f"the torch encoder backend needs torch, transformers and sentence-transformers, "
                               f"which this install lacks: {TORCH_HINT}, or use --backend onnx (XLIR_BACKEND=onnx)")
        # the e5 folder has no BERT pooler weights (mean pooling does not use them): keep the load quiet
        offline_transformers()
        from sentence_transformers import SentenceTransformer

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
        self.token_budget = token_budget
        self._tokenizer_lock = threading.RLock()
        # ``encode`` tokenizes through ``preprocess`` (``tokenize`` is its older name): both run under the lock
        for method in ("preprocess", "tokenize"):
            if callable(getattr(self._model, method, None)):
                setattr(self._model, method, locked(getattr(self._model, method), self._tokenizer_lock))

    @property
    def checksum(self) -> str:
        if self._checksum is None:
            self._checksum = folder_checksum(self._resolved.path)
        return self._checksum

    @property
    def max_seq_length(self) -> int:
        return int(self._model.max_seq_length)

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        with self._tokenizer_lock:
            return token_lengths(self._model.tokenizer, texts, self.max_seq_length)

    def _encode_batched(self, texts: Sequence[str], max_rows: int, progress: ProgressFn | None) -> np.ndarray:
        if len(texts) == 1:  # a single query: nothing to batch, no need to measure it
            out1 = self._encode(texts)
            if progress is not None:
                progress(1)
            return out1
        return self._in_batches(self.token_lengths(texts), max_rows, progress,
                                lambda rows: self._encode([texts[i] for i in rows]))

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        out = self._model.encode(
            list(texts), batch_size=max(1, len(texts)), convert_to_numpy=True,
            normalize_embeddings=True, show_progress_bar=False,
        )
        return np.ascontiguousarray(out, dtype=np.float32)


def choose_backend(backend: str, device: str, workload: str = "queries") -> str:
    """``auto | torch | onnx | onnx-int8 | onnx-f16w``, the resolved device and the workload -> the backend to load.

    ``auto`` is torch on a GPU (fp16) and, on a CPU, what :data:`CPU_AUTO_BACKEND` records as measured fastest
    for the workload (``queries``, ``passages`` or ``sentences``); without torch (a serving install) it is ONNX
    fp32 for every workload.
    """
    if backend not in BACKENDS:
        raise ModelInvalid(f"unknown encoder backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if workload not in WORKLOADS:
        raise ValueError(f"unknown encoder workload {workload!r}; choose from {', '.join(WORKLOADS)}")
    if backend != "auto":
        return backend
    if not torch_available():
        return "onnx"
    return "torch" if device.startswith("cuda") else CPU_AUTO_BACKEND[workload]


def load_encoder(
    name_or_path: str, *, device: str = "auto", home: Path | None = None, backend: str = "auto",
    workload: str = "queries", spin: bool = True,
) -> Any:
    """Registry name or local folder -> ready encoder on the chosen backend (see :func:`choose_backend`; the
    ``workload`` only matters for ``backend="auto"``; ``spin=False`` stops ONNX Runtime's threads from
    busy-waiting between calls, for a process that does other work between encodings: the server).

    Raises ``ModelNotFound`` with the fix to apply, ``ModelInvalid`` for an unknown backend or an ONNX backend
    without onnxruntime installed.
    """
    if backend not in BACKENDS:  # before anything is loaded
        choose_backend(backend, "cpu", workload)
    return open_encoder(resolve_model(name_or_path, home), device=device, home=home, backend=backend,
                        workload=workload, spin=spin)


def open_encoder(
    resolved: ResolvedModel, *, device: str = "auto", home: Path | None = None, backend: str = "auto",
    workload: str = "queries", spin: bool = True,
) -> Any:
    """The encoder of a resolved registry entry or folder, by the entry's kind: a ``static`` student (numpy), a
    ``linear`` one (its base encoder, loaded with the same options, through per-language maps) or a transformer
    folder on the backend :func:`choose_backend` picks. Returns an :class:`models.base.Encoder` with ``backend``
    and ``device`` attributes."""
    if resolved.spec.kind == RERANKER:
        raise ModelNotFound(f"{resolved.name} is a reranker, not an encoder: serve it with --reranker "
                            "(XLIR_RERANKER), encode with an encoder model (e5-small)")
    if resolved.spec.kind == "static":
        from models.static import StaticEncoder

        return StaticEncoder(resolved)
    if resolved.spec.kind == "linear":
        from models.linear_maps import LinearMapEncoder

        base = load_encoder(resolved.spec.base, device=device, home=home, backend=backend, workload=workload,
                            spin=spin)
        return LinearMapEncoder(resolved, base)
    dev = resolve_device(device)
    chosen = choose_backend(backend, dev, workload)
    if chosen == "torch":
        return SentenceTransformerEncoder(resolved, device=dev)
    from models.onnx_backend import VARIANT_OF_BACKEND, OnnxEncoder, onnx_available

    if backend == "auto" and not onnx_available():
        log.warning("onnxruntime is not installed: encoding with torch (pip install 'xlir[onnx]' for %s)", chosen)
        return SentenceTransformerEncoder(resolved, device=dev)
    return OnnxEncoder(resolved, variant=VARIANT_OF_BACKEND[chosen], device=dev, home=home, spin=spin)
