"""Corpus readers: JSONL, TSV, BEIR and MIRACL layouts, streamed one document at a time.

Every reader yields :class:`Document` and raises :class:`CorpusError` naming the file and line of
the first bad record, so a user can fix the input instead of reading a traceback.

Document ids follow one rule wherever they come from (corpora here, ``POST /documents`` through
``app.schemas.DocId``): :func:`doc_id_problem`. Every id it accepts can be addressed as
``/documents/{id}`` once percent-encoded (``/``, ``%``, ``?``, ``#``, spaces and any script included).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from xlir.errors import CorpusError

ID_KEYS = ("id", "_id", "docid", "doc_id")
TEXT_KEYS = ("text", "contents", "passage")

MAX_ID_CHARS = 1000
ID_RULE = (f"a document id is 1 to {MAX_ID_CHARS} characters of Unicode text without control characters or line "
           "breaks, without leading or trailing whitespace, and not '.' or '..'")
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})  # controls, lone surrogates, line/paragraph separators


def doc_id_problem(doc_id: str) -> str | None:
    """Why ``doc_id`` breaks :data:`ID_RULE` (None when it is a valid id): the one id rule of corpora and the API.

    Ids are taken as given (no normalisation), so what is stored is what a client addresses. '.' and '..' are
    refused because clients resolve them as path segments before sending.
    """
    if not doc_id:
        return "the id is empty"
    if len(doc_id) > MAX_ID_CHARS:
        return f"the id has {len(doc_id)} characters; the limit is {MAX_ID_CHARS}"
    for i, ch in enumerate(doc_id):
        if unicodedata.category(ch) in _FORBIDDEN_CATEGORIES:
            return f"the id holds the control character U+{ord(ch):04X} at position {i}"
    if doc_id != doc_id.strip():
        return "the id has leading or trailing whitespace"
    if doc_id in (".", ".."):
        return f"the id {doc_id!r} cannot be addressed in a URL"
    return None


def first_unencodable(text: str) -> int | None:
    """Position of the first character UTF-8 cannot encode (a lone surrogate, which JSON escapes can carry), or
    None. The one test of the corpora, the API's text fields and the query batcher."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def _check_id(path: Path, lineno: int, doc_id: str) -> str:
    problem = doc_id_problem(doc_id)
    if problem is not None:
        raise CorpusError(f"{path}:{lineno}: bad document id {doc_id[:60]!r}: {problem} ({ID_RULE})")
    return doc_id


MAX_METADATA_BYTES = 16_384
MAX_METADATA_KEY_CHARS = 200
MAX_METADATA_INT = 2**53  # integers are compared as float64, exact up to this
RESERVED_METADATA_KEYS = frozenset({"lang"})  # a filter's ``lang`` is the document's language
METADATA_RULE = (f"metadata is a JSON object of at most {MAX_METADATA_BYTES} bytes (as compact JSON) whose keys are "
                 f"1 to {MAX_METADATA_KEY_CHARS} characters (not 'lang': the document's language is its own "
                 "field) and whose values are strings, numbers, booleans, null or lists of those")


def _scalar_problem(value: object) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if abs(value) <= MAX_METADATA_INT else "an integer too large for a number filter"
    if isinstance(value, float):
        return None if math.isfinite(value) else "a number that is not finite"
    if isinstance(value, str):
        pos = first_unencodable(value)
        return None if pos is None else f"a lone surrogate at position {pos}"
    return f"a {type(value).__name__}"


def metadata_problem(metadata: object) -> str | None:
    """Why ``metadata`` breaks :data:`METADATA_RULE` (None when it is valid): the one metadata rule of corpora and
    the API (``app.schemas.DocumentIn``)."""
    if not isinstance(metadata, dict):
        return f"metadata must be a JSON object, got {type(metadata).__name__}"
    for key, value in metadata.items():
        if not isinstance(key, str) or not key:
            return "a metadata key is empty"
        if len(key) > MAX_METADATA_KEY_CHARS:
            return f"the metadata key {key[:40]!r}... has {len(key)} characters; the limit is {MAX_METADATA_KEY_CHARS}"
        if first_unencodable(key) is not None:
            return f"the metadata key {key!r} holds a lone surrogate"
        if key in RESERVED_METADATA_KEYS:
            return f"the metadata key {key!r} is reserved (give the document's language as its own field 'lang')"
        items = value if isinstance(value, list) else [value]
        for item in items:
            why = _scalar_problem(item)
            if why is not None:
                where = "a list item of " if isinstance(value, list) else ""
                return (f"{where}metadata[{key!r}] is {why}; values are strings, numbers, booleans, null or lists "
                        "of those")
    size = len(json.dumps(metadata, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        return f"metadata takes {size} bytes as JSON; the limit is {MAX_METADATA_BYTES}"
    return None


@dataclass(slots=True)
class Document:
    id: str
    text: str
    title: str = ""
    lang: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # METADATA_RULE; filtered on at search time


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
    """The lines of ``path`` that are not blank, with their numbers."""
    try:
        with _open_text(path) as fh:
            yield from ((lineno, line) for lineno, line in enumerate(fh, start=1) if line.strip())
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
    except (OSError, EOFError) as exc:
        raise CorpusError(f"{path}: cannot read ({exc})") from exc


def read_jsonl(path: Path, default_lang: str | None = None) -> Iterator[Document]:
    for lineno, line in _lines(path):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from exc
        if not isinstance(rec, dict):
            raise CorpusError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
        doc_id, text = _first(rec, ID_KEYS), _first(rec, TEXT_KEYS)
        if doc_id is None:
            raise CorpusError(f"{path}:{lineno}: missing document id (one of {', '.join(ID_KEYS)})")
        if isinstance(doc_id, bool) or not isinstance(doc_id, str | int):
            raise CorpusError(f"{path}:{lineno}: the document id must be a string or an integer, "
                              f"got {type(doc_id).__name__}")
        if not isinstance(text, str):
            raise CorpusError(f"{path}:{lineno}: missing or non-string text (one of {', '.join(TEXT_KEYS)})")
        title = rec.get("title") or ""
        lang = rec.get("lang") or rec.get("language") or default_lang
        for name, value in (("text", text), ("title", title), ("lang", lang)):
            if isinstance(value, str) and first_unencodable(value) is not None:
                raise CorpusError(f"{path}:{lineno}: the {name} holds a lone surrogate (a \\ud800-style escape), "
                                  "which is not Unicode text")
        metadata = rec.get("metadata")
        if metadata is not None:
            problem = metadata_problem(metadata)
            if problem is not None:
                raise CorpusError(f"{path}:{lineno}: {problem} ({METADATA_RULE})")
        yield Document(_check_id(path, lineno, str(doc_id)), text, str(title), str(lang) if lang else None,
                       dict(metadata or {}))


def read_tsv(path: Path, default_lang: str | None = None) -> Iterator[Document]:
    """``id<TAB>text[<TAB>title[<TAB>lang]]``, or any column order given by a header row naming id and text."""
    columns: dict[str, int] = {"id": 0, "text": 1, "title": 2, "lang": 3}
    for lineno, line in _lines(path):
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

        yield Document(_check_id(path, lineno, col("id")), col("text"), col("title"), col("lang") or default_lang)


def _corpus_files(directory: Path) -> list[Path]:
    """BEIR (``corpus.jsonl``) or MIRACL (``docs-*.jsonl[.gz]``) directory -> its corpus files."""
    for name in ("corpus.jsonl", "corpus.jsonl.gz"):
        if (directory / name).is_file():
            return [directory / name]
    files = sorted(directory.glob("docs-*.jsonl")) + sorted(directory.glob("docs-*.jsonl.gz"))
    if files:
        return files
    raise CorpusError(f"{directory}: not a BEIR (corpus.jsonl) or MIRACL (docs-*.jsonl[.gz]) corpus directory")


def read_corpus(paths: Sequence[Path], default_lang: str | None = None) -> Iterator[Document]:
    """Stream the documents of every path in order; the format of a file is told by its name."""
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise CorpusError(f"{path}: no such file or directory")
        name = path.name.lower().removesuffix(".gz")
        if path.is_dir():
            for f in _corpus_files(path):
                yield from read_jsonl(f, default_lang)
        elif name.endswith((".jsonl", ".json", ".ndjson")):
            yield from read_jsonl(path, default_lang)
        elif name.endswith((".tsv", ".tab", ".txt")):
            yield from read_tsv(path, default_lang)
        else:
            raise CorpusError(f"{path}: unknown corpus format (expected .jsonl, .tsv, optionally .gz, "
                              "or a BEIR/MIRACL dir)")
