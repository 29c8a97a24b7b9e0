"""Index verification at load: every manifest file's presence, size and sha256, and the encoder checksum."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from indexer.build import BuildOptions, build_index
from indexer.manifest import MANIFEST, Manifest
from indexer.store import open_index, verify_index
from tests.conftest import FakeEncoder, write_jsonl
from xlir.errors import IndexInvalid

DOCS = [{"id": f"d{i}", "title": f"t{i}", "text": text, "lang": lang} for i, (text, lang) in enumerate([
    ("apples and pears grow on trees", "en"), ("Äpfel und Birnen wachsen an Bäumen", "de"),
    ("the stock market fell today", "en"), ("la bourse a chuté aujourd'hui", "fr"),
    ("苹果和梨长在树上", "zh"),
])]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("integrity")
    corpus = write_jsonl(tmp / "c.jsonl", DOCS)
    build_index([corpus], tmp / "idx", FakeEncoder(), BuildOptions(progress=False, shard_size=3))
    return tmp / "idx"


@pytest.fixture
def index(built: Path, tmp_path: Path) -> Path:
    """A private copy each test may damage."""
    return Path(shutil.copytree(built, tmp_path / "idx"))


def flip_byte(path: Path, at: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_clean_index_passes_every_level(index: Path) -> None:
    for level in ("full", "size", "off"):
        manifest = verify_index(index, "fake-checksum", level=level)
        assert manifest.doc_count == 5
    assert len(Manifest.read(index).files) >= 10  # shards, docstores, BM25 and centroids are all listed


@pytest.mark.parametrize("rel", ["shards/00001/main.faiss", "shards/00000/main.f32", "shards/00000/docs.jsonl",
                                 "bm25/vocab.index.json", "centroids.npz"])
def test_a_flipped_byte_is_caught_by_the_checksum_naming_the_file(index: Path, rel: str) -> None:
    expected = Manifest.read(index).files[rel].sha256
    flip_byte(index / rel, at=(index / rel).stat().st_size // 2)
    with pytest.raises(IndexInvalid) as err:
        verify_index(index, level="full")
    detail = err.value.detail
    assert f"damaged: {rel} has sha256 " in detail and f"the manifest says {expected}" in detail
    assert str(index) in detail
    verify_index(index, level="size")  # the same size: only the checksum sees it


def test_a_truncated_file_fails_with_both_sizes(index: Path) -> None:
    rel = "shards/00000/docs.jsonl"
    size = (index / rel).stat().st_size
    (index / rel).write_bytes((index / rel).read_bytes()[:-7])
    for level in ("full", "size"):
        with pytest.raises(IndexInvalid, match=f"damaged: {rel} has {size - 7} bytes, the manifest says {size}"):
            verify_index(index, level=level)
    verify_index(index, level="off")


def test_a_deleted_file_is_named(index: Path) -> None:
    (index / "shards/00001/langs.npy").unlink()
    with pytest.raises(IndexInvalid, match="incomplete: shards/00001/langs.npy is missing"):
        verify_index(index)


def test_another_encoder_checksum_names_the_manifest_and_both_checksums(index: Path) -> None:
    raw = json.loads((index / MANIFEST).read_text())
    raw["vector_sets"]["main"]["encoder_checksum"] = "b" * 64
    (index / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(IndexInvalid) as err:
        verify_index(index, "fake-checksum")
    detail = err.value.detail
    assert str(index / MANIFEST) in detail
    assert "b" * 64 in detail and "fake-checksum" in detail
    verify_index(index, "b" * 64)  # the checksum the manifest records is accepted
    verify_index(index)  # and no expectation, no check


def test_unknown_level_is_a_programming_error(index: Path) -> None:
    with pytest.raises(ValueError, match="full, size, off"):
        verify_index(index, level="paranoid")


def test_open_index_checks_sizes_by_default_and_checksums_on_request(index: Path) -> None:
    flip_byte(index / "shards/00000/docs.jsonl", at=3)
    open_index(index).close()  # sizes only, cheap: a same-size corruption is not seen
    with pytest.raises(IndexInvalid, match="shards/00000/docs.jsonl has sha256"):
        open_index(index, verify="full")


def test_the_server_verifies_checksums_by_default_and_says_which_file(index: Path) -> None:
    assert Settings().verify == "full"
    flip_byte(index / "shards/00000/main.f32", at=10)
    with TestClient(create_app(Settings(index=index, warmup=False), encoder=FakeEncoder())) as c:
        r = c.get("/ready")
        assert r.status_code == 503 and "shards/00000/main.f32 has sha256" in r.json()["detail"]
        r = c.post("/search", json={"query": "apples"})
        assert r.status_code == 503 and "shards/00000/main.f32" in r.json()["detail"]
    with TestClient(create_app(Settings(index=index, warmup=False, verify="size"), encoder=FakeEncoder())) as c:
        assert c.get("/ready").status_code == 200


def test_the_server_refuses_an_index_of_another_encoder_naming_the_manifest(index: Path) -> None:
    other = FakeEncoder(name="other", checksum="c" * 64)
    with TestClient(create_app(Settings(index=index, warmup=False), encoder=other)) as c:
        detail = c.get("/ready").json()["detail"]
    assert str(index / MANIFEST) in detail and "fake-checksum" in detail and "c" * 64 in detail


def test_serve_exits_2_before_binding_with_the_damaged_file(index: Path) -> None:
    (index / "bm25/params.index.json").write_text("{}")
    xlir = Path(sys.executable).with_name("xlir")
    res = subprocess.run([str(xlir), "serve", "--index", str(index), "--port", "1"], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 2, res.stderr
    assert "bm25/params.index.json has 2 bytes" in res.stderr
    assert "Traceback" not in res.stderr + res.stdout
