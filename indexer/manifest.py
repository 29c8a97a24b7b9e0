"""``manifest.json``: what an index holds and how it was built; written last, so its presence marks a finished build."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from models.registry import file_sha256
from xlir.errors import IndexInvalid

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
_VERSIONED = ("xlir", "numpy", "faiss-cpu", "bm25s", "torch", "transformers", "sentence-transformers", "onnxruntime",
              "tokenizers", "py3langid")  # those installed (a serving install has no torch)


class FileInfo(BaseModel):
    size: int
    sha256: str


class ShardInfo(BaseModel):
    name: str
    offset: int
    count: int
    index: dict[str, dict[str, Any]] = Field(description="FAISS parameters per vector set")


class VectorSetInfo(BaseModel):
    encoder: str
    encoder_checksum: str
    dim: int
    metric: str = "cosine"
    index_type: str
    centering: str = Field("off", description="language centring the FAISS indexes were built with")
    centering_requested: str = "off"
    centroids: str | None = Field(None, description="per-language centroid table (npz), if the index has one")
    index_plan: dict[str, Any] | None = Field(
        None, description="how index_type was chosen: requested (auto or a kind), reason, estimated bytes, memory "
                          "budget, recall target (per-shard nprobe/efSearch and measured recall are in shards)")


class BM25Info(BaseModel):
    analyzer: str
    k1: float
    b: float
    method: str
    vocab_size: int


class Manifest(BaseModel):
    format_version: int = FORMAT_VERSION
    created_at: str = Field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    doc_count: int
    shard_size: int
    languages: dict[str, int] = Field(description="documents per language code")
    lang_codes: list[str] = Field(description="the order of the codes stored per document in langs.npy")
    shards: list[ShardInfo]
    vector_sets: dict[str, VectorSetInfo]
    bm25: BM25Info
    sources: list[str]
    versions: dict[str, str]
    files: dict[str, FileInfo]
    build: dict[str, Any] = Field(default_factory=dict, description="timings and counts of the build")

    def write(self, directory: Path) -> None:
        tmp = directory / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(self.model_dump(), indent=2, ensure_ascii=False))
        tmp.replace(directory / MANIFEST)

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        if not directory.is_dir():
            raise IndexInvalid(
                f"index directory {directory} does not exist: build it with `xlir index CORPUS --out {directory}`")
        path = directory / MANIFEST
        if not path.is_file():
            raise IndexInvalid(
                f"{directory} has no {MANIFEST}: it is not an xlir index or its build did not finish; "
                f"rebuild it with `xlir index CORPUS --out {directory}`"
            )
        try:
            manifest = cls.model_validate_json(path.read_bytes())
        except ValidationError as exc:
            raise IndexInvalid(f"{path} is not a valid xlir manifest: {exc.error_count()} problems, first: "
                               f"{exc.errors()[0]['loc']} {exc.errors()[0]['msg']}") from exc
        if manifest.format_version != FORMAT_VERSION:
            raise IndexInvalid(f"{path}: index format {manifest.format_version}, this xlir reads {FORMAT_VERSION}")
        return manifest

    def check_files(self, directory: Path, checksums: bool = False) -> None:
        """Every recorded file exists with its recorded size (cheap, a stat per file) and, with ``checksums``,
        its recorded sha256 (reads every byte). The first difference raises, naming the file."""
        for rel, info in self.files.items():
            path = directory / rel
            if not path.is_file():
                raise IndexInvalid(f"index {directory} is incomplete: {rel} is missing")
            if path.stat().st_size != info.size:
                raise IndexInvalid(f"index {directory} is damaged: {rel} has {path.stat().st_size} bytes, "
                                   f"the manifest says {info.size}")
        if checksums:
            for rel, info in self.files.items():
                actual = file_sha256(directory / rel)
                if actual != info.sha256:
                    raise IndexInvalid(f"index {directory} is damaged: {rel} has sha256 {actual}, "
                                       f"the manifest says {info.sha256}")


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in _VERSIONED:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out
