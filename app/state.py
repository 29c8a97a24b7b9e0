"""What the lifespan loads once per process: index, encoder, batcher, reranker and the services over them."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from app.batching import QueryBatcher, VectorBatcher
from app.mining import MiningService
from app.service import DocumentService, Limits, SearchService
from app.settings import Settings
from indexer.centering import Centroids
from indexer.centroid_table import default_table_path
from indexer.live import LiveStore
from indexer.store import Index, encoder_mismatch
from models.base import Encoder
from models.encoders import load_encoder
from models.registry import MODEL_META, model_dir
from models.rerankers import DEFAULT_RERANKER, Reranker, load_reranker
from xlir.errors import IndexInvalid, IndexNotReady, ModelNotFound, XlirError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class AppState:
    settings: Settings
    service: SearchService | None = None
    mining: MiningService | None = None
    live: LiveStore | None = None
    documents: DocumentService | None = None
    error: str | None = field(default=None, metadata={"doc": "why the server is not ready"})

    @property
    def ready(self) -> bool:
        return self.not_ready is None

    @property
    def not_ready(self) -> str | None:
        """Why ``/ready`` answers 503 (nothing loaded, or the query batcher's worker is down), or None."""
        if self.service is None:
            return self.error or "the index is not loaded yet"
        return self.service.batcher.down

    def loaded(self, part: T | None) -> T:
        """``part`` (a service of this state), or ``IndexNotReady`` with the reason nothing was loaded."""
        if part is None:
            raise IndexNotReady(self.error or "the index is not loaded yet")
        return part


def check_encoder(index: Index, encoder: Encoder) -> None:
    """The index's vectors only make sense with the encoder that produced them."""
    why = encoder_mismatch(index.dir, index.manifest, encoder.checksum, encoder.name)
    if why:
        raise IndexInvalid(why)
    vs = index.vector_set
    if encoder.dim != vs.dim:
        raise IndexInvalid(f"index {index.dir} holds {vs.dim}-dim vectors of {vs.encoder!r}, but the encoder "
                           f"{encoder.name!r} makes {encoder.dim}-dim ones")


def warm_up(encoder: Encoder) -> None:
    """Encode queries of a few lengths once, so the first user queries do not pay the kernels' set-up."""
    for words in (1, 4, 12, 24, 48):
        encoder.encode_queries([" ".join(["warm"] * words)])


NO_RERANKER = ("", "none")  # XLIR_RERANKER values that turn reranking off


def configured_reranker(settings: Settings) -> Reranker | None:
    """The reranker of ``settings``: the folder ``XLIR_RERANKER`` names, else xlir's own (``xlir-rerank`` under
    ``XLIR_HOME/models``) when it is built, else none; ``none`` or an empty value turns it off. A configured folder
    that is missing or holds something else raises the domain error naming the path (the server does not start)."""
    spec = settings.reranker
    if spec is not None and spec.strip().lower() in NO_RERANKER:
        return None
    if spec is not None:
        return load_reranker(Path(spec.strip()), device=settings.device)
    folder = model_dir(DEFAULT_RERANKER, settings.home)
    if not (folder / MODEL_META).is_file():
        return None
    log.info("reranker: %s (the default; XLIR_RERANKER=none turns it off)", folder)
    return load_reranker(folder, device=settings.device)


def load_state(
    settings: Settings, encoder: Encoder | None = None, reranker: Reranker | None = None
) -> AppState:
    """Load everything; an expected failure leaves a not-ready state with the reason instead of raising, but a
    misconfigured reranker raises (:func:`configured_reranker`): a typo in ``XLIR_RERANKER`` stops the start-up."""
    from indexer.text import ANALYZER_NAME, tokenize

    state = AppState(settings=settings)
    if reranker is None:
        reranker = configured_reranker(settings)
    try:
        live = LiveStore(settings.index, verify=settings.verify)  # the generation CURRENT names, its log replayed
        index = live.main
        if index.manifest.bm25.analyzer != ANALYZER_NAME:
            raise IndexInvalid(f"index {settings.index} uses the BM25 analyzer {index.manifest.bm25.analyzer!r}; "
                               f"this xlir has {ANALYZER_NAME!r}: rebuild the index")
        if encoder is None:
            encoder = load_encoder(settings.model or index.vector_set.encoder, device=settings.device,
                                   home=settings.home, backend=settings.backend, spin=settings.onnx_spin)
        check_encoder(index, encoder)
        live.encoder_checksum = encoder.checksum  # generations published later must match it too
        table = None
        table_path = settings.centroid_table or default_table_path(settings.home, encoder.checksum)
        if settings.centroid_table is not None or table_path.is_file():
            if not table_path.is_file():
                raise ModelNotFound(f"centroid table {table_path} does not exist (XLIR_CENTROID_TABLE)")
            table = Centroids.load(table_path, encoder.checksum)
    except XlirError as exc:
        log.error("not ready: %s", exc.detail)
        state.error = exc.detail
        return state
    batcher = QueryBatcher(encoder.encode_queries, max_batch=settings.batch_max_size if settings.batching else 1,
                           max_wait_ms=settings.batch_max_wait_ms if settings.batching else 0.0,
                           max_queue=settings.queue_max, max_tokens=settings.batch_max_tokens,
                           token_lengths=getattr(encoder, "token_lengths", None))
    limits = Limits(max_query_chars=settings.max_query_chars, max_k=settings.max_k,
                    max_rerank_depth=settings.max_rerank_depth,
                    fusion_depth=settings.fusion_depth, snippet_chars=settings.snippet_chars,
                    embed_max_texts=settings.embed_max_texts, rerank_budget_ms=settings.rerank_budget_ms)
    dense_batcher = VectorBatcher(max_batch=settings.batch_max_size) if settings.batching else None
    service = SearchService(live.snapshot, encoder, batcher, tokenize, reranker, limits, centroid_table=table,
                            dense_batcher=dense_batcher)
    live.on_publish = lambda snapshot: setattr(service, "index", snapshot)  # each write or reload swaps it
    state.service = service
    state.live = live
    state.documents = DocumentService(live, encoder, max_docs=settings.max_upsert_docs,
                                      compact_threshold=settings.compact_threshold, detector=service.detector)
    state.mining = MiningService(encoder, max_sentences=settings.mine_max_sentences,
                                 max_chars=settings.max_query_chars, max_jobs=settings.mine_max_jobs)
    return state
