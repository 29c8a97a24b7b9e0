from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.base import ProgressFn


def _word_vec(word: str, dim: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


class FakeEncoder:
    """Deterministic encoder for tests.

    A text listed in ``table`` gets exactly that vector (normalised); any other text gets the normalised
    sum of per-word random vectors, so texts sharing words are close. Records every call.
    """

    def __init__(self, dim: int = 16, table: dict[str, Sequence[float]] | None = None,
                 name: str = "fake", checksum: str = "fake-checksum") -> None:
        self._dim = dim
        self._name = name
        self._checksum = checksum
        self.table = {k: np.asarray(v, dtype=np.float32) for k, v in (table or {}).items()}
        self.query_calls: list[list[str]] = []
        self.passage_calls: list[list[str]] = []

    @property
    def name(self) -> str:
        return self._name

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def checksum(self) -> str:
        return self._checksum

    def vec(self, text: str) -> np.ndarray:
        if text in self.table:
            v = self.table[text]
        else:
            words = text.lower().split() or [""]
            v = np.sum([_word_vec(w, self._dim) for w in words], axis=0)
        n = np.linalg.norm(v)
        return (v / n if n else v).astype(np.float32)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        self.query_calls.append(list(texts))
        return np.stack([self.vec(t) for t in texts]) if texts else np.zeros((0, self._dim), np.float32)

    def encode_passages(self, texts: Sequence[str], *, batch_size: int = 32,
                        progress: ProgressFn | None = None) -> np.ndarray:
        self.passage_calls.append(list(texts))
        if progress:
            progress(len(texts))
        return np.stack([self.vec(t) for t in texts]) if texts else np.zeros((0, self._dim), np.float32)


@pytest.fixture(autouse=True)
def no_default_reranker(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test serves the reranker built under ~/.cache/xlir by accident (XLIR_RERANKER unset loads it): tests
    that need the default delete this variable and point ``Settings.home`` to a temporary folder."""
    monkeypatch.setenv("XLIR_RERANKER", "none")


@pytest.fixture
def fake_encoder() -> FakeEncoder:
    return FakeEncoder()


def retrieve(index: Any, req: Any, qvec: np.ndarray | None = None, tokens: Sequence[str] | None = None) -> list[Any]:
    """The hits of the server's one retrieval path (``SearchService.retrieve``) over ``index``, with the query
    vector ``qvec`` (what the encoder would give) and the BM25 tokens ``tokens`` given."""
    from app.batching import QueryBatcher
    from app.service import SearchService

    batcher = QueryBatcher(lambda texts: np.stack([np.asarray(qvec, dtype=np.float32)] * len(texts)), max_batch=1,
                           max_wait_ms=0.0)
    service = SearchService(index, FakeEncoder(), batcher, lambda _query: list(tokens or []))

    async def run() -> list[Any]:
        await batcher.start()
        try:
            return (await service.retrieve(req)).hits
        finally:
            await batcher.close()

    return asyncio.run(run())


def fake_index(folder: Path, docs: Sequence[dict[str, object]]) -> Path:
    """An index of ``docs`` built with the fake encoder in ``folder/idx`` (the corpus beside it)."""
    from indexer.build import BuildOptions, build_index

    build_index([write_jsonl(folder / "c.jsonl", docs)], folder / "idx", FakeEncoder(), BuildOptions(progress=False))
    return folder / "idx"


def write_jsonl(path: Path, records: Sequence[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def jsonl_writer(tmp_path: Path) -> Callable[[str, Sequence[dict[str, object]]], Path]:
    return lambda name, records: write_jsonl(tmp_path / name, records)


REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample"


def unit(a: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32."""
    return (a / np.linalg.norm(a, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture
def single_faiss_thread() -> Iterator[None]:
    """Hundreds of tiny searches: OpenMP start-up per call costs more than the search, and much more on
    a busy machine, so run them on one thread (restored afterwards)."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@contextmanager
def serve_app(app: Any, timeout: float = 30) -> Iterator[str]:
    """Run an ASGI app with uvicorn in a thread on a free loopback port; yields its base URL once the
    lifespan has finished starting, and stops the server afterwards."""
    import uvicorn

    from benchmarks.demo_bench import free_port

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while not srv.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                pytest.fail("the test server did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=30)


def tiny_st_folder(out: Path, normalize: bool = True) -> Path:
    """A randomly initialised 2-layer BERT (seed 0) with MiniLM's tokenizer, written to ``out`` as a
    sentence-transformers folder: Transformer + mean Pooling (+ Normalize)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from models.registry import resolve_model

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(resolve_model("minilm-en").path))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64)
    BertModel(cfg, add_pooling_layer=False).save_pretrained(out)
    tok.save_pretrained(out)
    (out / "1_Pooling").mkdir()
    (out / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}))
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        (out / "2_Normalize").mkdir()
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
    (out / "modules.json").write_text(json.dumps(modules))
    return out


# a 4-layer BERT of 16 dimensions over a word-level vocabulary (students, reranker)
WORDS = ["the", "cat", "dog", "sits", "runs", "die", "katze", "hund", "sitzt", "le", "chat", "chien", "query:",
         "passage:", "mat", "house", "haus", "maison"]


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]").save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """A real local Ray cluster (2 CPUs) for the session: its address, for ``--ray ADDRESS`` and subprocesses."""
    from ray_support import ray_head

    with ray_head(num_cpus=2) as address:
        yield address


@pytest.fixture(scope="session")
def ray_cluster(ray_address: str) -> Iterator[str]:
    """This test process connected (``ray.init``) to the session's cluster; yields the address."""
    from indexer.ray_cluster import connect

    ray = connect(ray_address)
    yield ray_address
    ray.shutdown()
