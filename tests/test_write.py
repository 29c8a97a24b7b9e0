"""The write stage: the same documents and vectors give the same index, whichever caller writes them.

``tests/golden/write_stage.json`` was recorded at 872e4a0, before ``build_index`` was split into
read -> language -> embed -> write: the manifest of an index built from :data:`DOCS` with the fake encoder, less
what differs between runs (timings, paths, library versions). Its ``files`` hold the size and sha256 of every
file, so a match means byte-identical shard vectors, FAISS indexes, docstores, BM25 files and centroids.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from indexer.build import BuildOptions, build_index, passage_text
from indexer.compact import compact
from indexer.live import LiveStore
from indexer.manifest import Manifest
from tests.conftest import FakeEncoder, write_jsonl

GOLDEN = Path(__file__).parent / "golden" / "write_stage.json"
WORDS = ["apple river", "markt stein", "pomme vert", "苹果 河流", "stone music", "fluss grün", "winter market"]
LANGS = ["en", "de", "fr", "zh", "en", "de", "en"]
DOCS: list[dict[str, str]] = [
    {"id": f"d{i:02d}", "title": "title" if i % 3 == 0 else "", "text": f"{WORDS[i % 7]} w{i} {WORDS[(i * 3) % 7]}",
     "lang": LANGS[i % 7]} for i in range(23)
] + [{"id": "empty", "text": "  ", "lang": "en"}, {"id": "unlabelled", "text": "the quick brown fox jumps over the "
                                                     "lazy dog and runs into the forest"}]
OPTIONS = {"shard_size": 6, "chunk_docs": 4, "progress": False, "resume": False}
RUN_FIELDS = ("created_at", "sources", "versions")
TIMINGS = ("seconds", "docs_per_second", "stage_seconds")


def fingerprint(m: Manifest) -> dict[str, Any]:
    """The manifest less what differs between runs of the same build (timings, paths, library versions)."""
    data = json.loads(m.model_dump_json())
    for key in RUN_FIELDS:
        data.pop(key)
    for key in TIMINGS:
        data["build"].pop(key)
    return data


def test_a_build_writes_the_same_bytes_as_before_the_write_stage(tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", DOCS)
    m = build_index([corpus], tmp_path / "idx", FakeEncoder(), BuildOptions(**OPTIONS))  # type: ignore[arg-type]
    assert fingerprint(m) == json.loads(GOLDEN.read_text())
    assert fingerprint(Manifest.read(tmp_path / "idx")) == fingerprint(m)


def test_a_compaction_writes_what_a_fresh_build_of_its_documents_writes(tmp_path: Path) -> None:
    enc = FakeEncoder()
    labelled = [d for d in DOCS if d.get("lang") and d["text"].strip()]
    build_index([write_jsonl(tmp_path / "a.jsonl", labelled[:15])], tmp_path / "idx", enc,
                BuildOptions(**OPTIONS))  # type: ignore[arg-type]
    store = LiveStore(tmp_path / "idx", encoder_checksum=enc.checksum)
    rest = [{"title": "", **d} for d in labelled[15:]]
    store.upsert(rest, enc.encode_passages([passage_text(d["title"], d["text"]) for d in rest]))
    store.delete("d03")
    store.close()
    compact(tmp_path / "idx")
    final = [d for d in labelled if d["id"] != "d03"]
    fresh = build_index([write_jsonl(tmp_path / "b.jsonl", final)], tmp_path / "fresh", enc,
                        BuildOptions(**OPTIONS))  # type: ignore[arg-type]
    got = fingerprint(Manifest.read(tmp_path / "idx" / "generations" / "g000001"))
    want = fingerprint(fresh)
    assert want.pop("build") == {"languages_detected": 0, "skipped_empty": 0, "resumed_docs": 0}
    assert set(got.pop("build")) <= {"languages_detected", "skipped_empty", "resumed_docs"}  # nothing read: no counts
    assert got == want
