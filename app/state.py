"""What the lifespan loads once per process: the collections (named indexes, each with its search and document
services), and the encoder, query batcher and reranker they share."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

from app.batching import QueryBatcher, VectorBatcher
from app.mining import MiningService
from app.schemas import CollectionInfo, CollectionList, RayServing, Ready
from app.service import DocumentService, Limits, SearchService
from app.settings import DEFAULT_COLLECTION, Settings
from indexer.centering import Centroids
from indexer.centroid_table import default_table_path
from indexer.langid import LanguageDetector
from indexer.live import LiveStore
from indexer.store import Index, encoder_mismatch
from models.base import Encoder
from models.encoders import load_encoder
from models.registry import MODEL_META, model_dir
from models.rerankers import DEFAULT_RERANKER, Reranker, load_reranker
from xlir.errors import CollectionNotFound, IndexInvalid, IndexNotReady, ModelNotFound, XlirError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Collection:
    """One served index: its directory, live store, search service and document service (the encoder, query
    batcher and reranker are shared by every collection of the server)."""

    name: str
    dir: Path
    service: SearchService | None = None
    live: LiveStore | None = None
    documents: DocumentService | None = None
    error: str | None = field(default=None, metadata={"doc": "why the collection is not ready"})

    @property
    def not_ready(self) -> str | None:
        """Why this collection's ``/ready`` answers 503 (nothing loaded, or the query batcher's worker is down)."""
        if self.service is None:
            return self.error or "the index is not loaded yet"
        return self.service.batcher.down

    def loaded(self, part: T | None) -> T:
        """``part`` (a service of this collection), or ``IndexNotReady`` with the reason nothing was loaded."""
        if part is None:
            raise IndexNotReady(self.error or "the index is not loaded yet")
        return part

    def info(self, default: bool) -> CollectionInfo:
        index = self.service.index if self.service is not None else None
        return CollectionInfo(name=self.name, default=default, ready=self.not_ready is None, detail=self.not_ready,
                              docs=index.size if index is not None else None,
                              languages=dict(index.languages) if index is not None else None)

    def readiness(self) -> Ready:
        """``/ready`` of this collection (``ready=False`` with the reason when it is not)."""
        why = self.not_ready
        if self.service is None or why is not None:
            return Ready(ready=False, detail=why)
        svc = self.service
        index = svc.index
        live = self.live.stats() if self.live is not None else {}
        ray = None
        if self.live is not None and self.live.shard_host is not None:
            ray = RayServing(**self.live.shard_host.describe(self.live.main),
                             encoder_replicas=getattr(svc.encoder, "replica_count", None))
        return Ready(ready=True, docs=index.size, languages=index.languages,
                     encoder=svc.encoder.name, reranker=svc.reranker.name if svc.reranker else None,
                     centering=index.centering, centroid_table_langs=svc.table.langs if svc.table else None,
                     generation=live.get("generation"), delta_docs=live.get("delta_docs"),
                     tombstones=live.get("tombstones"), reload_error=live.get("reload_error"), ray=ray)


@dataclass
class AppState:
    """Every collection (the default first: the unnamed routes serve it) and the services they share.
    ``service``, ``live``, ``documents`` and ``error`` are the default collection's."""

    settings: Settings
    collections: dict[str, Collection] = field(default_factory=dict)
    mining: MiningService | None = None

    @property
    def default(self) -> Collection:
        if not self.collections:  # load_state always adds them; a bare state serves nothing
            return Collection(DEFAULT_COLLECTION, self.settings.index, error="no collection is configured")
        return next(iter(self.collections.values()))

    @property
    def service(self) -> SearchService | None:
        return self.default.service

    @property
    def live(self) -> LiveStore | None:
        return self.default.live

    @property
    def documents(self) -> DocumentService | None:
        return self.default.documents

    @property
    def error(self) -> str | None:
        return self.default.error

    def collection(self, name: str | None) -> Collection:
        """The collection called ``name`` (None: the default), or ``CollectionNotFound`` listing the names."""
        if name is None:
            return self.default
        found = self.collections.get(name)
        if found is None:
            raise CollectionNotFound(f"no collection {name!r}; this server has "
                                     f"{', '.join(map(repr, self.collections)) or 'none'}")
        return found

    @property
    def ready(self) -> bool:
        return self.not_ready is None

    @property
    def not_ready(self) -> str | None:
        """Why ``/ready`` answers 503: the first collection that is not ready (named when there are several)."""
        many = len(self.collections) > 1
        for c in self.collections.values() or [self.default]:
            why = c.not_ready
            if why is not None:
                return f"collection {c.name!r}: {why}" if many else why
        return None

    def loaded(self, part: T | None) -> T:
        """``part`` (a service of this state), or ``IndexNotReady`` with the reason nothing was loaded."""
        return self.default.loaded(part)

    def listing(self) -> CollectionList:
        default = self.default.name
        return CollectionList(default=default, collections=[c.info(c.name == default)
                                                            for c in self.collections.values()])

    def readiness(self) -> Ready:
        """Unnamed ``/ready``: the default collection's, not ready while any collection is not, listing all."""
        why = self.not_ready
        body = self.default.readiness() if why is None else Ready(ready=False, detail=why)
        body.collections = self.listing().collections
        return body


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
    that is missing or holds something else raises the domain error naming the path (the server does not start).
    The default one's folder is checked now and its ONNX session made at the first ``rerank: true`` (start-up time
    and memory stay those of a server without a reranker until a request asks for one)."""
    spec = settings.reranker
    if spec is not None and spec.strip().lower() in NO_RERANKER:
        return None
    if spec is not None:
        return load_reranker(Path(spec.strip()), device=settings.device)
    folder = model_dir(DEFAULT_RERANKER, settings.home)
    if not (folder / MODEL_META).is_file():
        return None
    log.info("reranker: %s (the default, loaded at the first rerank; XLIR_RERANKER=none turns it off)", folder)
    return load_reranker(folder, device=settings.device, eager=False)


def load_state(
    settings: Settings, encoder: Encoder | None = None, reranker: Reranker | None = None
) -> AppState:
    """Load every collection of ``settings`` (:attr:`Settings.collection_dirs`) with one encoder, one query
    batcher and one reranker shared; an expected failure leaves that collection not ready with the reason instead
    of raising, but a misconfigured reranker raises (:func:`configured_reranker`): a typo in ``XLIR_RERANKER``
    stops the start-up."""
    from indexer.text import ANALYZER_NAME, tokenize

    state = AppState(settings=settings)
    if reranker is None:
        reranker = configured_reranker(settings)
    host = remote = None
    if settings.ray is not None:  # shards as Ray actors, the encoder as Ray replicas
        from indexer.ray_shards import RayShardHost
        from models.ray_encoder import RemoteEncoder, given

        host = RayShardHost.connect(settings.ray)  # "local": $RAY_ADDRESS or a new local cluster
        remote = partial(RemoteEncoder, replicas=settings.ray_encoder_replicas)  # an encoder factory -> replicas
        if encoder is not None and not isinstance(encoder, RemoteEncoder):
            encoder = remote(given(encoder))
    opened: dict[str, LiveStore] = {}
    table: Centroids | None = None
    for name, folder in settings.collection_dirs.items():
        coll = state.collections[name] = Collection(name, folder)
        try:
            # the generation CURRENT names, its log replayed
            live = LiveStore(folder, verify=settings.verify, shard_host=host)
            try:
                index = live.main
                if index.manifest.bm25.analyzer != ANALYZER_NAME:
                    raise IndexInvalid(f"index {folder} uses the BM25 analyzer {index.manifest.bm25.analyzer!r}; "
                                       f"this xlir has {ANALYZER_NAME!r}: rebuild the index")
                if encoder is None:  # the first collection's encoder (or XLIR_MODEL) serves them all
                    load = partial(load_encoder, settings.model or index.vector_set.encoder, device=settings.device,
                                   home=settings.home, backend=settings.backend, spin=settings.onnx_spin)
                    encoder = load() if remote is None else remote(load)
                check_encoder(index, encoder)
                live.encoder_checksum = encoder.checksum  # generations published later must match it too
                if table is None:
                    table_path = settings.centroid_table or default_table_path(settings.home, encoder.checksum)
                    if settings.centroid_table is not None or table_path.is_file():
                        if not table_path.is_file():
                            raise ModelNotFound(f"centroid table {table_path} does not exist (XLIR_CENTROID_TABLE)")
                        table = Centroids.load(table_path, encoder.checksum)
            except XlirError:
                live.close()
                raise
        except XlirError as exc:
            prefix = f"collection {name!r}: " if len(settings.collection_dirs) > 1 else ""
            log.error("not ready: %s%s", prefix, exc.detail)
            coll.error = exc.detail
            continue
        opened[name] = live
    if encoder is None or not opened:
        return state
    batcher = QueryBatcher(encoder.encode_queries, max_batch=settings.batch_max_size if settings.batching else 1,
                           max_wait_ms=settings.batch_max_wait_ms if settings.batching else 0.0,
                           max_queue=settings.queue_max, max_tokens=settings.batch_max_tokens,
                           token_lengths=getattr(encoder, "token_lengths", None))
    limits = Limits(max_query_chars=settings.max_query_chars, max_k=settings.max_k,
                    max_rerank_depth=settings.max_rerank_depth,
                    fusion_depth=settings.fusion_depth, snippet_chars=settings.snippet_chars,
                    embed_max_texts=settings.embed_max_texts, rerank_budget_ms=settings.rerank_budget_ms,
                    max_batch_searches=settings.max_batch_searches)
    # one FAISS worker for all collections: its groups are keyed by the index snapshot
    dense_batcher = VectorBatcher(max_batch=settings.batch_max_size) if settings.batching else None
    detector = LanguageDetector()
    for name, live in opened.items():
        coll = state.collections[name]
        service = SearchService(live.snapshot, encoder, batcher, tokenize, reranker, limits, detector=detector,
                                centroid_table=table, dense_batcher=dense_batcher)
        live.on_publish = partial(setattr, service, "index")  # each write or reload swaps it
        coll.service, coll.live = service, live
        coll.documents = DocumentService(live, encoder, max_docs=settings.max_upsert_docs,
                                         compact_threshold=settings.compact_threshold, detector=detector)
    state.mining = MiningService(encoder, max_sentences=settings.mine_max_sentences,
                                 max_chars=settings.max_query_chars, max_jobs=settings.mine_max_jobs)
    return state


def shared_services(state: AppState) -> tuple[QueryBatcher | None, VectorBatcher | None]:
    """The query batcher and the FAISS batcher every collection shares (None when nothing loaded)."""
    for c in state.collections.values():
        if c.service is not None:
            return c.service.batcher, c.service.dense_batcher
    return None, None
