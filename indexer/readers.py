"""Corpus readers: JSONL, TSV, BEIR and MIRACL layouts, streamed one document at a time.

Every reader yields :class:`Document` and raises :class:`CorpusError` naming the file and line of
the first bad record, so a user can fix the input instead of reading a traceback.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from xlir.errors import CorpusError

ID_KEYS = ("id", "_id", "docid", "doc_id")
TEXT_KEYS = ("text", "contents", "passage")


@dataclass(slots=True)
class Document:
    id: str
    text: str
    title: str = ""
    lang: str | None = None


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="strict")
    return path.open("r", encoding="utf-8", errors="strict")


def _first(record: dict[str, object], keys: Sequence[str]) -> object | None:
    for key in keys:
        if key in record:
            return record[key]
    return None


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        with _open_text(path) as fh:
            yield from enumerate(fh, start=1)
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
    except (OSError, EOFError) as exc:
        raise CorpusError(f"{path}: cannot read ({exc})") from exc


def read_jsonl(path: Path, default_lang: str | None = None) -> Iterator[Document]:
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
        if not isinstance(rec, dict):
            raise CorpusError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
        doc_id, text = _first(rec, ID_KEYS), _first(rec, TEXT_KEYS)
        if doc_id is None or (isinstance(doc_id, str) and not doc_id.strip()):
            raise CorpusError(f"{path}:{lineno}: missing document id (one of {', '.join(ID_KEYS)})")
        if not isinstance(text, str):
            raise CorpusError(f"{path}:{lineno}: missing or non-string text (one of {', '.join(TEXT_KEYS)})")
        title = rec.get("title") or ""
        lang = rec.get("lang") or rec.get("language") or default_lang
        yield Document(str(doc_id), text, str(title), str(lang) if lang else None)


def read_tsv(path: Path, default_lang: str | None = None) -> Iterator[Document]:
    """``id<TAB>text[<TAB>title[<TAB>lang]]``, or any column order given by a header row naming id and text."""
    columns: dict[str, int] = {"id": 0, "text": 1, "title": 2, "lang": 3}
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        row = next(csv.reader([line.rstrip("\n")], delimiter="\t", quoting=csv.QUOTE_NONE))
        if lineno == 1:
            header = [c.strip().lower() for c in row]
            id_col = next((header.index(k) for k in ID_KEYS if k in header), None)
            text_col = next((header.index(k) for k in TEXT_KEYS if k in header), None)
            if id_col is not None and text_col is not None:
                columns = {"id": id_col, "text": text_col}
                for extra in ("title", "lang"):
                    if extra in header:
                        columns[extra] = header.index(extra)
                continue
        if len(row) < 2:
            raise CorpusError(f"{path}:{lineno}: expected at least 2 tab-separated columns (id, text), got {len(row)}")

        def col(name: str, row: list[str] = row, columns: dict[str, int] = columns) -> str:
            idx = columns.get(name)
            return row[idx].strip() if idx is not None and idx < len(row) else ""

        if not col("id"):
            raise CorpusError(f"{path}:{lineno}: empty document id")
        yield Document(col("id"), col("text"), col("title"), col("lang") or default_lang)


def _corpus_files(directory: Path) -> list[Path]:
    """BEIR (``corpus.jsonl``) or MIRACL (``docs-*.jsonl[.gz]``) directory -> its corpus files."""
    for name in ("corpus.jsonl", "corpus.jsonl.gz"):
        if (directory / name).is_file():
            return [directory / name]
    files = sorted(directory.glob("docs-*.jsonl")) + sorted(directory.glob("docs-*.jsonl.gz"))
    if files:
        return files
    raise CorpusError(
        f"{directory}: not a BEIR (corpus.jsonl) or MIRACL (docs-*.jsonl[.gz]) corpus directory"
    )


def detect_format(path: Path) -> str:
    if path.is_dir():
        return "dir"
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if name.endswith((".tsv", ".tab", ".txt")):
        return "tsv"
    raise CorpusError(f"{path}: unknown corpus format (expected .jsonl, .tsv, optionally .gz, or a BEIR/MIRACL dir)")


def read_corpus(paths: Sequence[Path], default_lang: str | None = None) -> Iterator[Document]:
    """Stream the documents of every path in order."""
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise CorpusError(f"{path}: no such file or directory")
        fmt = detect_format(path)
        if fmt == "dir":
            for f in _corpus_files(path):
                yield from read_jsonl(f, default_lang)
        elif fmt == "jsonl":
            yield from read_jsonl(path, default_lang)
        else:
            yield from read_tsv(path, default_lang)
