"""Server settings: one pydantic-settings model, environment prefix ``XLIR_`` (e.g. ``XLIR_INDEX``)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from models.base import DEFAULT_TOKEN_BUDGET
from models.registry import xlir_home

SCOPES = ("read", "write")
IMPLIED = {"read": frozenset({"read"}), "write": frozenset({"read", "write"})}


def _scopes(entry: int, value: object) -> frozenset[str]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"XLIR_API_KEYS entry {entry}: the scope must be 'read' or 'write' (or a list of them)")
    out: set[str] = set()
    for name in names:
        if name.strip() not in IMPLIED:
            raise ValueError(f"XLIR_API_KEYS entry {entry}: unknown scope {name!r}; scopes are read, write")
        out |= IMPLIED[name.strip()]
    return frozenset(out)


def parse_api_keys(spec: str) -> dict[str, frozenset[str]]:
    """``"k1:read,k2:write"`` or ``'{"k1": "read", "k2": ["write"]}'`` -> key -> scopes (write implies read)."""
    spec = spec.strip()
    if not spec:
        return {}
    if spec.startswith("{"):
        try:
            raw = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise ValueError(f"XLIR_API_KEYS is not valid JSON: {exc.msg} at char {exc.pos}") from None
        if not isinstance(raw, dict):
            raise ValueError("XLIR_API_KEYS as JSON must be an object {\"KEY\": \"read\" | \"write\"}")
        pairs = list(raw.items())
    else:
        pairs = []
        for i, entry in enumerate(spec.split(",")):
            key, sep, scope = entry.strip().rpartition(":")
            if not sep or not key:
                raise ValueError(f"XLIR_API_KEYS entry {i + 1} is not KEY:SCOPE (scope read or write)")
            pairs.append((key, scope))
    keys: dict[str, frozenset[str]] = {}
    for i, (key, scope) in enumerate(pairs, start=1):
        if not key or key != key.strip():
            raise ValueError(f"XLIR_API_KEYS entry {i}: the key is empty or has surrounding spaces")
        if key in keys:
            raise ValueError(f"XLIR_API_KEYS entry {i}: the same key is listed twice")
        keys[key] = _scopes(i, scope)
    return keys


DEFAULT_COLLECTION = "default"  # the name of the collection `--index DIR` (XLIR_INDEX) serves
COLLECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
COLLECTION_RULE = "1-64 letters, digits, '_' or '-', starting with a letter or digit"


def parse_collection(spec: str) -> tuple[str | None, Path]:
    """``"news=DIR"`` -> ``("news", DIR)``; ``"DIR"`` (no ``NAME=`` before it) -> ``(None, DIR)``. A path holding
    ``=`` is taken as a path when what stands before the ``=`` is no collection name (write ``./a=b``)."""
    spec = spec.strip()
    name, sep, path = spec.partition("=")
    if not sep or not COLLECTION_NAME.fullmatch(name):
        if sep and not name:
            raise ValueError(f"{spec!r}: the collection name before '=' is empty (NAME=DIR; a name is "
                             f"{COLLECTION_RULE})")
        if not spec:
            raise ValueError("an index directory is empty")
        return None, Path(spec)
    if not path.strip():
        raise ValueError(f"{spec!r}: no index directory after '{name}=' (NAME=DIR)")
    return name, Path(path.strip())


def parse_collections(specs: str | list[str] | dict[str, object]) -> dict[str, Path]:
    """Named index directories from ``--index NAME=DIR`` (repeated) or ``XLIR_COLLECTIONS``
    (``news=DIR1,wiki=DIR2`` or a JSON object ``{"news": "DIR1"}``), in the order given (the first is the
    default). Every entry must be named, and each name given once."""
    if isinstance(specs, str):
        text = specs.strip()
        if text.startswith("{"):
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"XLIR_COLLECTIONS is not valid JSON: {exc.msg} at char {exc.pos}") from None
            if not isinstance(raw, dict):
                raise ValueError('XLIR_COLLECTIONS as JSON must be an object {"NAME": "DIR"}')
            specs = raw
        else:
            specs = [p for p in text.split(",") if p.strip()]
    pairs: list[tuple[str | None, Path]] = []
    if isinstance(specs, dict):
        for key, path in specs.items():
            if not isinstance(path, str | Path) or not str(path).strip():
                raise ValueError(f"collection {key!r}: the index directory must be a non-empty string")
            pairs.append((str(key), Path(str(path).strip())))
    else:
        pairs = [parse_collection(str(s)) for s in specs]
    out: dict[str, Path] = {}
    for name, path in pairs:
        if name is None:
            raise ValueError(f"{str(path)!r}: several indexes need a name each (NAME=DIR)")
        if not COLLECTION_NAME.fullmatch(name):
            raise ValueError(f"collection name {name!r} is not valid: {COLLECTION_RULE}")
        if name in out:
            raise ValueError(f"collection {name!r} is given twice")
        out[name] = path
    return out


def parse_origins(spec: str) -> list[str]:
    """CORS origins from ``XLIR_CORS_ORIGINS``: a JSON list or comma-separated."""
    spec = spec.strip()
    if spec.startswith("["):
        value = json.loads(spec)
        if not isinstance(value, list) or not all(isinstance(o, str) for o in value):
            raise ValueError("XLIR_CORS_ORIGINS as JSON must be a list of strings")
        return [o.strip() for o in value if o.strip()]
    return [o.strip() for o in spec.split(",") if o.strip()]


class Settings(BaseSettings):
    # errors never echo the input: it may be an API key
    model_config = SettingsConfigDict(env_prefix="XLIR_", extra="ignore", hide_input_in_errors=True)

    index: Path = Field(Path("index"), description="index directory built by `xlir index` (served as the "
                        "collection 'default' when XLIR_COLLECTIONS is unset)")
    collections: Annotated[dict[str, Path], NoDecode] = Field(
        default_factory=dict, description="named indexes served by one server, `news=DIR1,wiki=DIR2` or JSON "
        "{\"news\": \"DIR1\"}: each at /collections/NAME/..., the first also at the unnamed routes; set, it "
        "replaces XLIR_INDEX")
    log_format: Literal["text", "json"] = Field(
        "text", description="server log lines: text, or json (one JSON object per line, with the request id)")
    model: str | None = Field(
        None, description="encoder name or folder; default: the encoder recorded in the index manifest")
    home: Path = Field(default_factory=xlir_home, description="cache of built models (XLIR_HOME)")
    device: str = Field("auto", description="auto = CUDA when torch sees a GPU, else CPU")
    backend: Literal["auto", "torch", "onnx", "onnx-int8", "onnx-f16w"] = Field(
        "auto", description="encoder runtime of the serving model: auto = torch (fp16) on a GPU, on a CPU the "
        "backend measured fastest at equal quality for single queries (README, Encoder backends); onnx-int8 trades "
        "some quality for speed; onnx-f16w is onnx from a file of half the size (weights stored in fp16, fp32 "
        "compute: the same results; the serving image's)")
    onnx_spin: bool = Field(
        False, description="let ONNX Runtime's threads busy-wait between encoder calls: about 2.5 ms less per single "
        "query encoding on 2 cores, but a core burnt while BM25 and FAISS run (more CPU per request under load)")
    reranker: str | None = Field(
        None, description="reranker folder for rerank=true: xlir's own (xlir-model.json, kind reranker) or a local "
        "sentence-transformers CrossEncoder; unset: xlir-rerank under XLIR_HOME/models when it is built (make "
        "setup); 'none' or empty: no reranker. A configured folder that is missing or wrong stops the start-up")
    rerank_budget_ms: float = Field(
        500.0, ge=0, description="default time budget of the rerank stage per request (rerank_budget_ms); past it "
        "the first-stage order is returned and the response says so; 0 = no budget")
    centroid_table: Path | None = Field(
        None, description="centroids for query languages missing from the index; default: the table that "
        "`xlir models centroids` wrote for the encoder under XLIR_HOME/centroids, if any")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_query_chars: int = Field(2048, ge=1, description="longer queries answer 422 query_too_long")
    max_k: int = Field(1000, ge=10, le=1000, description="largest k a search may ask for (at least the default, 10)")
    max_rerank_depth: int = Field(200, ge=1, le=1000)
    fusion_depth: int = Field(100, ge=1, le=1000, description="candidates taken from each retriever for fusion")
    snippet_chars: int = Field(300, ge=20)
    embed_max_texts: int = Field(64, ge=1)
    max_batch_searches: int = Field(100, ge=1, description="POST /search/batch: searches per request (more: 413)")
    mine_max_sentences: int = Field(5000, ge=1, description="POST /mine: sentences per side (larger: 413)")
    mine_max_jobs: int = Field(1, ge=1, description="POST /mine jobs at once (more: 429)")
    batch_max_size: int = Field(32, ge=1, description="queries per encoder call of the query batcher")
    batch_max_wait_ms: float = Field(2.0, ge=0, description="how long a query waits for others to share its call")
    batch_max_tokens: int = Field(
        DEFAULT_TOKEN_BUDGET, ge=1, description="token budget of one query encoder call: rows x the longest "
        "query's tokens; a larger gathered batch is split into several calls")
    batching: bool = Field(True, description="false = no batching: one encoder call per query (max batch 1, no "
                           "wait) and one FAISS search per query, the baseline of `xlir bench load "
                           "--compare-batching`; true also searches the queries that wait for the same index, k and "
                           "centring together (up to XLIR_BATCH_MAX_SIZE)")
    queue_max: int = Field(1024, ge=1)
    warmup: bool = Field(True, description="encode a few queries at start-up so first requests are not slow")
    verify: Literal["full", "size", "off"] = Field(
        "full", description="index check at load: full = size and sha256 of every file in the manifest, "
        "size = sizes only, off = none")
    api_keys: SecretStr | None = Field(
        None, description="API keys with scopes, `KEY:read,KEY2:write` or JSON {\"KEY\": \"read\"}; write implies "
        "read; unset = every endpoint open")
    metrics_auth: bool = Field(False, description="GET /metrics needs a read key too (default: open)")
    public_docs: bool | None = Field(
        None, description="/docs, /redoc and /openapi.json without a key: unset = open only when no API keys are "
        "configured (with keys they need a read key); true = always open; false = a read key whenever keys are set")
    max_body_bytes: int = Field(1 << 20, ge=1, description="larger request bodies answer 413")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="origins allowed by CORS (comma-separated or JSON list); empty = CORS off")
    max_upsert_docs: int = Field(256, ge=1, description="POST /documents: documents per request (more: 413)")
    compact_threshold: int = Field(
        10_000, ge=0, description="compact in the background once the delta (upserted documents plus deletions) "
        "reaches this size; 0 = never (use `xlir compact`)")
    reload_interval: float = Field(
        2.0, ge=0, description="seconds between checks for a newly published generation and for writes of other "
        "processes (xlir index --append); 0 = only on POST /reload")
    data_dir: Path | None = Field(
        None, description="paths named by clients must stay inside it; default: the index's parent directory")
    ray: str | None = Field(
        None, description="serve on a Ray cluster (pip install 'xlir[ray]'): each dense shard in a Ray actor, the "
        "query encoder in XLIR_RAY_ENCODER_REPLICAS replica actors, this app fanning out and merging exactly; "
        "'local' = $RAY_ADDRESS or a new local cluster, else host:port of `ray start --head`; unset = one process")
    ray_encoder_replicas: int = Field(2, ge=1, description="with XLIR_RAY: replica actors of the query encoder")

    @field_validator("api_keys")
    @classmethod
    def _api_keys(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            parse_api_keys(v.get_secret_value())  # a malformed spec fails at start-up, not at the first request
        return v

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _origins(cls, v: object) -> object:
        return parse_origins(v) if isinstance(v, str) else v

    @field_validator("collections", mode="before")
    @classmethod
    def _collections(cls, v: object) -> object:
        return parse_collections(v) if isinstance(v, str | list | dict) else v

    @property
    def collection_dirs(self) -> dict[str, Path]:
        """The served collections, name -> index directory, the default first."""
        return dict(self.collections) if self.collections else {DEFAULT_COLLECTION: self.index}

    @property
    def data_root(self) -> Path:
        first = next(iter(self.collection_dirs.values()))
        return self.data_dir if self.data_dir is not None else first.resolve().parent
