"""Server settings: one pydantic-settings model, environment prefix ``XLIR_`` (e.g. ``XLIR_INDEX``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.registry import xlir_home


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="XLIR_", extra="ignore")

    index: Path = Field(Path("index"), description="index directory built by `xlir index`")
    model: str | None = Field(
        None, description="encoder name or folder; default: the encoder recorded in the index manifest")
    home: Path = Field(default_factory=xlir_home, description="cache of built models (XLIR_HOME)")
    device: str = Field("auto", description="auto = CUDA when torch sees a GPU, else CPU")
    reranker: Path | None = Field(None, description="local sentence-transformers CrossEncoder folder")
    centroid_table: Path | None = Field(
        None, description="centroids for query languages missing from the index; default: the table that "
        "`xlir models centroids` wrote for the encoder under XLIR_HOME/centroids, if any")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_query_chars: int = Field(2048, ge=1, description="longer queries answer 422 query_too_long")
    max_rerank_depth: int = Field(200, ge=1, le=1000)
    fusion_depth: int = Field(100, ge=1, le=1000, description="candidates taken from each retriever for fusion")
    snippet_chars: int = Field(300, ge=20)
    embed_max_texts: int = Field(64, ge=1)
    batch_max_size: int = Field(32, ge=1)
    batch_max_wait_ms: float = Field(2.0, ge=0)
    queue_max: int = Field(1024, ge=1)
    warmup: bool = Field(True, description="encode a few queries at start-up so first requests are not slow")
