"""``xlir index --overwrite`` replaces only an xlir index (or an empty directory), and atomically.

Refusals leave every byte in place; a replaced index is never seen missing or half-written by a reader opening
it at the same time (real threads); a build that fails midway leaves the old index as it was.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from indexer import build as build_mod
from indexer.build import BuildOptions, build_index, overwrite_target
from indexer.live import LiveStore, current_name
from indexer.store import open_index
from tests.conftest import FakeEncoder, write_jsonl
from xlir.errors import OverwriteRefused, XlirError

pytestmark = pytest.mark.usefixtures("single_faiss_thread")

XLIR = Path(sys.executable).with_name("xlir")

DOCS_A = [{"id": f"a{i}", "title": f"A {i}", "text": f"the cat number {i} sleeps on the mat", "lang": "en"}
          for i in range(7)]
DOCS_B = [{"id": f"b{i}", "title": f"B {i}", "text": f"die Katze Nummer {i} schläft auf der Matte", "lang": "de"}
          for i in range(12)]
IDS = {7: {d["id"] for d in DOCS_A}, 12: {d["id"] for d in DOCS_B}}


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every entry under ``root`` (and ``root`` itself): file bytes, link targets, directories."""
    def entry(p: Path) -> bytes | str:
        if p.is_symlink():
            return "link:" + os.readlink(p)
        return p.read_bytes() if p.is_file() else "dir"

    out: dict[str, bytes | str] = {".": entry(root)}
    if root.is_dir() and not root.is_symlink():
        for p in sorted(root.rglob("*")):
            out[str(p.relative_to(root))] = entry(p)
    return out


def build(corpus: Path, out: Path, enc: FakeEncoder | None = None, **opts: object) -> object:
    return build_index([corpus], out, enc or FakeEncoder(dim=8),
                       BuildOptions(progress=False, **opts))  # type: ignore[arg-type]


@pytest.fixture
def corpora(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "corpora"
    src.mkdir()
    return write_jsonl(src / "a.jsonl", DOCS_A), write_jsonl(src / "b.jsonl", DOCS_B)


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".building-" in p.name or ".replaced-" in p.name)


def user_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("\\section{Results}\n")
    (path / "photos").mkdir()
    (path / "photos" / "cat.jpg").write_bytes(bytes(range(256)))
    return path


# ------------------------------------------------------------------------------------------- refusals


def test_a_folder_of_someone_s_files_is_refused_and_untouched(tmp_path: Path, corpora: tuple[Path, Path]) -> None:
    folder = user_folder(tmp_path / "work")
    before = snapshot(folder)
    with pytest.raises(OverwriteRefused, match=r"--overwrite refused: .*work is not empty and is not an xlir index"):
        build(corpora[0], folder, overwrite=True)
    assert snapshot(folder) == before
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("case", ["file", "symlink-to-index", "symlink-to-folder", "foreign-manifest",
                                  "index-with-extra-file", "bad-current"])
def test_what_is_not_an_index_or_empty_is_refused(tmp_path: Path, corpora: tuple[Path, Path], case: str) -> None:
    out = tmp_path / "out"
    others: list[Path] = []
    if case == "file":
        out.write_bytes(b"precious\x00data")
        why = "is a file"
    elif case.startswith("symlink"):
        target = tmp_path / "real"
        if case == "symlink-to-index":
            build(corpora[0], target)
        else:
            user_folder(target)
        out.symlink_to(target)
        others.append(target)
        why = "is a symbolic link"
    elif case == "foreign-manifest":
        out.mkdir()
        (out / "manifest.json").write_text('{"name": "my web app", "icons": []}')
        why = "is not an xlir index"
    elif case == "index-with-extra-file":
        build(corpora[0], out)
        (out / "notes.txt").write_text("do not lose me")
        why = "also holds notes.txt"
    else:
        out.mkdir()
        (out / "CURRENT").write_text("generations/g000007\n")
        (out / "todo.txt").write_text("x")
        why = "CURRENT file that names no xlir index generation"
    before = {p: snapshot(p) for p in (out, *others)}
    with pytest.raises(OverwriteRefused, match=why):
        overwrite_target(out)
    with pytest.raises(OverwriteRefused, match=why):
        build(corpora[1], out, overwrite=True)
    assert {p: snapshot(p) for p in (out, *others)} == before
    assert leftovers(tmp_path) == []


def test_root_home_and_current_directory_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     corpora: tuple[Path, Path]) -> None:
    with pytest.raises(OverwriteRefused, match="home directory"):  # / contains the home directory
        overwrite_target(Path("/"))
    home = user_folder(tmp_path / "home")
    monkeypatch.setenv("HOME", str(home))
    before = snapshot(home)
    with pytest.raises(OverwriteRefused, match="is the home directory"):
        build(corpora[0], home, overwrite=True)
    with pytest.raises(OverwriteRefused, match="is the home directory"):
        overwrite_target(tmp_path)  # a parent of the home directory
    assert snapshot(home) == before
    cwd = tmp_path / "cwd"
    build(corpora[0], cwd)  # even a real index: a process working inside it
    monkeypatch.chdir(cwd)
    before = snapshot(cwd)
    with pytest.raises(OverwriteRefused, match="is the current directory"):
        build(corpora[1], Path("."), overwrite=True)
    assert snapshot(cwd) == before


def xlir(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(XLIR), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_cli_refuses_with_one_line_exit_2_and_touches_nothing(tmp_path: Path, corpora: tuple[Path, Path]) -> None:
    folder = user_folder(tmp_path / "docs")
    afile = tmp_path / "results.csv"
    afile.write_text("a,b\n1,2\n")
    link = tmp_path / "link"
    link.symlink_to(folder)
    # no such model: the refusal comes before any model is loaded (and would come after it otherwise)
    for out, fragment in ((folder, "is not an xlir index"), (afile, "is a file"), (link, "is a symbolic link")):
        before = {p: snapshot(p) for p in (folder, afile, link)}
        res = xlir("index", str(corpora[0]), "--out", str(out), "--overwrite", "--model", "no-such-model",
                   "--quiet")
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: --overwrite refused: ") and fragment in lines[0]
        assert "Traceback" not in res.stdout + res.stderr
        assert {p: snapshot(p) for p in (folder, afile, link)} == before
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------- replacing


def test_overwrite_replaces_an_index_or_an_empty_folder(tmp_path: Path, corpora: tuple[Path, Path]) -> None:
    out = tmp_path / "idx"
    out.mkdir()
    assert overwrite_target(out) == "empty"
    build(corpora[0], out, overwrite=True)
    assert overwrite_target(out) == "index"
    (out / "LOCK").touch()  # left by a server that served it: part of the layout
    build(corpora[1], out, overwrite=True)
    index = open_index(out)
    assert index.size == 12 and {index.doc(r)["id"] for r in range(12)} == IDS[12]
    index.close()
    assert leftovers(tmp_path) == []
    assert overwrite_target(tmp_path / "nothing-here") == "absent"


def test_overwrite_without_an_atomic_exchange_also_works(tmp_path: Path, corpora: tuple[Path, Path],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build_mod, "_rename_exchange", lambda a, b: False)  # a C library without renameat2
    out = tmp_path / "idx"
    build(corpora[0], out)
    build(corpora[1], out, overwrite=True)
    assert open_index(out).size == 12 and leftovers(tmp_path) == []


def test_an_index_a_killed_swap_left_aside_is_put_back(tmp_path: Path, corpora: tuple[Path, Path]) -> None:
    out = tmp_path / "idx"
    build(corpora[0], out)
    before = snapshot(out)
    aside = tmp_path / ".idx.replaced-999999999"  # killed between the two renames of the fallback swap
    out.rename(aside)
    with pytest.raises(XlirError, match="already exists"):
        build(corpora[1], out)  # without --overwrite: the old index is back, so it is not replaced
    assert snapshot(out) == before and not aside.exists()


def test_a_build_that_fails_midway_leaves_the_old_index_intact(tmp_path: Path, corpora: tuple[Path, Path]) -> None:
    class Failing(FakeEncoder):
        calls = 0

        def encode_passages(self, texts: Sequence[str], **kw: object) -> np.ndarray:  # type: ignore[override]
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("GPU fell off the bus")
            return super().encode_passages(texts)

    out = tmp_path / "idx"
    build(corpora[0], out)
    before = snapshot(out)
    with pytest.raises(RuntimeError, match="GPU fell off"):
        build(corpora[1], out, enc=Failing(dim=8), overwrite=True, chunk_docs=2)
    assert snapshot(out) == before
    assert leftovers(tmp_path) == []
    assert open_index(out).size == 7


def test_readers_never_see_a_missing_or_mixed_index_while_it_is_overwritten(
        tmp_path: Path, corpora: tuple[Path, Path]) -> None:
    out = tmp_path / "idx"
    build(corpora[0], out)
    query = FakeEncoder(dim=8).encode_queries(["cat mat"])
    stop = threading.Event()
    errors: list[BaseException] = []
    opened: list[int] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                index = open_index(out)
                try:
                    n = index.size
                    assert {index.doc(r)["id"] for r in range(n)} == IDS[n]
                    assert len(index.dense(query, 3)[0].rows) == 3
                    assert len(index.bm25_search(["the"], 3).rows) <= 3
                    assert len(index.dense(query, 3, mode="off")[0].rows) == 3  # reads the raw vectors
                finally:
                    index.close()
                opened.append(n)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(10):
            build(corpora[(i + 1) % 2], out, overwrite=True)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, f"{len(errors)} failed opens, first: {errors[0]!r}"
    assert set(opened) == {7, 12}, "the readers should have seen both indexes"
    assert leftovers(tmp_path) == []


def test_a_plain_index_that_takes_an_update_during_the_build_gets_a_generation(
        tmp_path: Path, corpora: tuple[Path, Path]) -> None:
    out = tmp_path / "idx"
    build(corpora[0], out)
    store = LiveStore(out, encoder_checksum="fake-checksum")  # a server serving the plain index

    class Serving(FakeEncoder):
        def encode_passages(self, texts: Sequence[str], **kw: object) -> np.ndarray:  # type: ignore[override]
            if not (out / "wal").exists():  # the server's first write arrives while the new index is built
                doc = {"id": "late", "title": "", "text": "a late cat", "lang": "en"}
                store.upsert([doc], FakeEncoder(dim=8).encode_passages([doc["text"]]))
            return super().encode_passages(texts)

    build(corpora[1], out, enc=Serving(dim=8), overwrite=True)
    assert current_name(out) == "generations/g000001"  # published like a rebuild, not swapped under the server
    assert store.refresh() and store.snapshot.size == 12
    assert open_index(out).size == 12 and leftovers(tmp_path) == []


def test_open_retries_a_transient_systemerror_of_the_npy_header_parser(
        tmp_path: Path, corpora: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """CPython 3.11's ast can fail under threads while numpy parses a .npy header; the open is tried again."""
    import numpy as np

    from indexer import store

    out = tmp_path / "idx"
    build(corpora[0], out)
    real, calls = np.load, []

    def flaky(*args: object, **kwargs: object) -> object:
        calls.append(args[0])
        if len(calls) == 1:
            raise SystemError("AST constructor recursion depth mismatch (before=48, after=36)")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store.np, "load", flaky)
    index = store.open_index(out)
    assert index.size > 0 and len(calls) > 1
    index.close()
