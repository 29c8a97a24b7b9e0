"""Benchmark dataset loaders: XQuAD-R (LAReQA-style sentences or paragraphs), MIRACL, Tatoeba.

Every loader returns plain data (:class:`RetrievalDataset`, or aligned line lists for Tatoeba) and raises
:class:`DatasetError` naming the file (and the line, when there is one) of the first bad input.

**XQuAD-R** (``xquad-r/{lang}.json``, SQuAD v1 layout, the 7 files parallel: same articles, paragraphs and
question ids). ``level="sentence"`` is the pool of LAReQA (Roy et al. 2020): every paragraph of every loaded
language is cut into sentences by :func:`split_sentences`; a question's relevant candidates are, in every loaded
language, the sentence(s) overlapping the answer span ``[answer_start, answer_start + len(text))`` of the same
question id. ``level="paragraph"``: the candidates are whole paragraphs, a question's relevant ones its paragraph
in every loaded language. Articles ``data[i]`` with ``i`` even are **dev**, odd **test** (the question's split;
the article index is the second part of a doc id, see :func:`doc_article`); ``articles=N`` keeps the first N
articles (small pools for quick runs). An answer whose ``answer_start`` does not point at its text in the context
is skipped and counted in ``notes["skipped_answers"]`` (and ``notes["skipped_answers:{lang}"]``).

**MIRACL**: a corpus directory (``docs-*.jsonl[.gz]``) or one JSONL file (``docid``, ``title``, ``text``), a
topics TSV (``qid<TAB>query``, no header) and TREC qrels (``qid Q0 docid rel``). Topics without any qrels line are
dropped (counted in ``notes["topics_without_qrels"]``).

**Tatoeba** (``tatoeba.{xx}-eng.{xx}`` and ``tatoeba.{xx}-eng.eng``): aligned lines, split on ``\\n`` only.

**Sample** (``data/sample``): the shipped corpus and its 10 cross-lingual probes (``probes.jsonl``: ``query``,
``query_lang``, ``relevant`` = the one relevant passage id, in another language), all in the test split.

``data_dir`` may be the data root (holding ``xquad-r/`` and ``tatoeba/``) or the dataset's own folder.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from indexer.langid import known_lang, normalize_lang
from indexer.readers import Document, read_corpus
from xlir.errors import CorpusError

__all__ = [
    "SPLITS", "TATOEBA_PAIRS", "XQUAD_LANGS", "XQUAD_LEVELS", "DatasetError", "Query", "RetrievalDataset",
    "answer_sentences", "default_data_dir", "doc_article", "load_miracl", "load_qa_train", "load_sample",
    "load_tatoeba", "load_xquad_r", "qa_held_out", "split_sentences", "xquad_nonparallel", "xquad_parallel_subset",
    "xquad_r_pools",
]

TATOEBA_PAIRS: Final = ("ara", "cmn", "deu", "fra", "hin", "jpn", "kor", "rus", "spa")
XQUAD_LANGS: Final = ("ar", "de", "en", "es", "hi", "ru", "zh")
XQUAD_LEVELS: Final = ("sentence", "paragraph")
SPLITS: Final = ("dev", "test")
QA_VAL_SHARE: Final = 0.05  # qa-train questions held back for validation

Span = tuple[int, int]


class DatasetError(CorpusError):
    """A benchmark dataset file is missing or malformed; the message names the file (and line when known)."""

    code = "dataset_error"


@dataclass(frozen=True)
class Query:
    qid: str
    text: str
    lang: str
    split: str  # "dev" | "test"


@dataclass(frozen=True)
class RetrievalDataset:
    name: str
    docs: list[Document]
    queries: list[Query]
    qrels: dict[str, dict[str, int]]  # qid -> {docid: relevance}
    notes: dict[str, int] = field(default_factory=dict)  # counts of skipped or dropped input

    def langs(self) -> list[str]:
        """The query languages, sorted."""
        return sorted({q.lang for q in self.queries})

    def subset(self, *, langs: Iterable[str] | None = None, split: str | None = None,
               max_per_lang: int | None = None) -> RetrievalDataset:
        """The same docs with the queries of ``langs`` and ``split`` only, at most the first ``max_per_lang`` of
        each language (in dataset order); the qrels of the kept queries."""
        if split is not None and split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; accepted: {', '.join(SPLITS)}")
        if max_per_lang is not None and max_per_lang < 0:
            raise ValueError(f"max_per_lang must be >= 0, got {max_per_lang}")
        wanted: set[str] | None = None
        if langs is not None:
            wanted = set()
            have = self.langs()
            for code in [langs] if isinstance(langs, str) else langs:
                lang = _normalized(code)
                if lang not in have:
                    raise ValueError(f"{self.name} has no queries in language {code!r}; it has: {', '.join(have)}")
                wanted.add(lang)
        seen: Counter[str] = Counter()
        kept: list[Query] = []
        for q in self.queries:
            if (wanted is not None and q.lang not in wanted) or (split is not None and q.split != split):
                continue
            if max_per_lang is not None and seen[q.lang] >= max_per_lang:
                continue
            seen[q.lang] += 1
            kept.append(q)
        return RetrievalDataset(self.name, self.docs, kept, {q.qid: dict(self.qrels[q.qid]) for q in kept},
                                dict(self.notes))


def _normalized(code: str) -> str:
    try:
        return normalize_lang(code)
    except (ValueError, TypeError):
        return str(code)


def default_data_dir() -> Path:
    """``$XLIR_BENCH_DATA``, else ``shared/data`` next to the repository (``../shared/data`` from its root)."""
    env = os.environ.get("XLIR_BENCH_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def _dataset_dir(data_dir: Path, sub: str) -> Path:
    """``data_dir/sub`` when it is a folder (``data_dir`` is the data root), else ``data_dir`` itself."""
    data_dir = Path(data_dir)
    return data_dir / sub if (data_dir / sub).is_dir() else data_dir


def _read_text(path: Path) -> str:
    """The file's text (gunzipped when its name ends in ``.gz``)."""
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    try:
        if path.suffix == ".gz":
            return gzip.decompress(path.read_bytes()).decode("utf-8")
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from exc


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered lines of ``path`` without their line ending, split on ``\\n`` only."""
    text = _read_text(path)
    if not text:
        return
    for lineno, line in enumerate(text.removesuffix("\n").split("\n"), start=1):
        yield lineno, line.removesuffix("\r")


# --------------------------------------------------------------------------------------------------
# Sentence splitting
# --------------------------------------------------------------------------------------------------

# A run of terminators, then any closing quotes or brackets.
_TERMINATOR: Final = re.compile(r"[.!?؟।॥。！？]+[\"'”’»)\]」』）》]*")
_ALWAYS: Final = frozenset("।॥。！？")  # end a sentence even without a following space
_ONE_LETTER: Final = re.compile(r"(?:^|[^\w])[^\W\d_]$")
_ORDINAL: Final = re.compile(r"(?:^|[^\w.,])\d{1,2}$")


def split_sentences(text: str, lang: str | None = None) -> list[Span]:
    """Sentence spans ``(start, end)`` of ``text``, surrounding whitespace excluded.

    A sentence ends after a run of terminators (plus closing quotes or brackets): always after the Devanagari
    danda ``।`` / ``॥`` and Chinese ``。！？``; after ``. ! ?`` and Arabic ``؟`` only when whitespace follows and
    the next character is not lowercase (or at the end of the text), and never after a ``.`` that follows a
    one-letter word (initials, ``z.B.``) or, with ``lang="de"``, a one- or two-digit number (``am 31. August``).
    No abbreviation list; the text after the last terminator is a sentence.
    """
    spans: list[Span] = []
    start = 0
    for m in _TERMINATOR.finditer(text):
        end = m.end()
        if not _ALWAYS.intersection(m.group()):
            rest = text[end:]
            stripped = rest.lstrip()
            if stripped and (len(stripped) == len(rest) or stripped[0].islower()):
                continue
            if m.group().startswith(".") and _not_an_end(text[: m.start()], lang):
                continue
        _add_span(spans, text, start, end)
        start = end
    _add_span(spans, text, start, len(text))
    return spans


def _not_an_end(before: str, lang: str | None) -> bool:
    tail = before[-4:]
    return bool(_ONE_LETTER.search(tail) or (lang == "de" and _ORDINAL.search(tail)))


def _add_span(spans: list[Span], text: str, start: int, end: int) -> None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if end > start:
        spans.append((start, end))


def answer_sentences(spans: Sequence[Span], start: int, length: int) -> list[int]:
    """Indices of the spans overlapping ``[start, start + length)`` (an empty answer counts as one character);
    if the answer falls between sentences, the next sentence (else the last)."""
    end = start + max(length, 1)
    hits = [i for i, (s, e) in enumerate(spans) if s < end and start < e]
    if hits or not spans:
        return hits
    return [next((i for i, (s, _) in enumerate(spans) if s >= start), len(spans) - 1)]


# --------------------------------------------------------------------------------------------------
# XQuAD-R
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Answer:
    start: int
    text: str


@dataclass(frozen=True)
class _Question:
    id: str
    text: str
    answers: tuple[_Answer, ...]


@dataclass(frozen=True)
class _Paragraph:
    context: str
    questions: tuple[_Question, ...]


@dataclass(frozen=True)
class _Article:
    title: str
    paragraphs: tuple[_Paragraph, ...]


def doc_article(doc_id: str) -> int:
    """The article index of an XQuAD-R doc id (``lang/article/para[/sent]``); even = dev, odd = test."""
    return int(doc_id.split("/")[1])


def _xquad_langs(langs: Sequence[str] | None, where: Path) -> list[str]:
    if langs is None:
        return list(XQUAD_LANGS)
    if isinstance(langs, str):
        langs = [langs]
    chosen: set[str] = set()
    for code in langs:
        lang = _normalized(code)
        if lang not in XQUAD_LANGS:
            raise DatasetError(f"{where}: unknown XQuAD-R language {code!r}; accepted: {', '.join(XQUAD_LANGS)}")
        chosen.add(lang)
    if not chosen:
        raise DatasetError(f"{where}: no XQuAD-R language requested; accepted: {', '.join(XQUAD_LANGS)}")
    return [lang for lang in XQUAD_LANGS if lang in chosen]


def _field(obj: Any, key: str, kind: type | tuple[type, ...], path: Path, where: str) -> Any:
    """``obj[key]``, checked to be a ``kind``; ``where`` is the JSON location of ``obj`` (``data[0].paragraphs[2]``)."""
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: {where or 'top level'}: expected a JSON object, got {type(obj).__name__}")
    if key not in obj:
        raise DatasetError(f"{path}: {where or 'top level'}: missing {key!r}")
    value = obj[key]
    # bool is an int subclass; an answer_start of true is not an offset.
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _types(kind)):
        names = "/".join(t.__name__ for t in _types(kind))
        loc = f"{where}.{key}" if where else key
        raise DatasetError(f"{path}: {loc}: expected {names}, got {type(value).__name__}")
    return value


def _types(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _read_squad(path: Path) -> list[_Article]:
    """The articles of a SQuAD v1 file, structure checked, with the location of the first problem."""
    text = _read_text(path)
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON ({exc.msg})") from exc
    articles: list[_Article] = []
    seen_ids: set[str] = set()
    for a, article in enumerate(_field(raw, "data", list, path, "")):
        aw = f"data[{a}]"
        title = article.get("title", "") if isinstance(article, dict) else ""
        paragraphs: list[_Paragraph] = []
        for p, para in enumerate(_field(article, "paragraphs", list, path, aw)):
            pw = f"{aw}.paragraphs[{p}]"
            context = _field(para, "context", str, path, pw)
            questions: list[_Question] = []
            for q, qa in enumerate(_field(para, "qas", list, path, pw)):
                qw = f"{pw}.qas[{q}]"
                qid = str(_field(qa, "id", (str, int), path, qw))
                if qid in seen_ids:
                    raise DatasetError(f"{path}: {qw}: duplicate question id {qid!r}")
                seen_ids.add(qid)
                answers = tuple(
                    _Answer(_field(ans, "answer_start", int, path, f"{qw}.answers[{i}]"),
                            _field(ans, "text", str, path, f"{qw}.answers[{i}]"))
                    for i, ans in enumerate(_field(qa, "answers", list, path, qw)))
                questions.append(_Question(qid, _field(qa, "question", str, path, qw), answers))
            paragraphs.append(_Paragraph(context, tuple(questions)))
        articles.append(_Article(str(title or ""), tuple(paragraphs)))
    return articles


def _answer_matches(context: str, ans: _Answer) -> bool:
    return ans.start >= 0 and context[ans.start: ans.start + len(ans.text)] == ans.text


def load_xquad_r(data_dir: Path, level: str = "sentence", langs: Sequence[str] | None = None,
                 articles: int | None = None) -> RetrievalDataset:
    """XQuAD-R as a multilingual pool of sentences (LAReQA) or paragraphs; see the module docstring.

    Doc ids ``{lang}/{article}/{para}/{sent}`` (sentences) or ``{lang}/{article}/{para}`` (paragraphs), title the
    article title; query ids ``{lang}/{squad id}``; relevance 1. Docs and queries are in :data:`XQUAD_LANGS`
    order, then file order, whatever the order of ``langs``.
    """
    folder = _dataset_dir(data_dir, "xquad-r")
    if level not in XQUAD_LEVELS:
        raise DatasetError(f"{folder}: unknown XQuAD-R level {level!r}; accepted: {', '.join(XQUAD_LEVELS)}")
    chosen = _xquad_langs(langs, folder)
    docs: list[Document] = []
    questions: list[Query] = []
    relevant: dict[str, list[str]] = {}  # squad id -> doc ids over all loaded languages
    skipped: Counter[str] = Counter()
    for lang in chosen:
        path = folder / f"{lang}.json"
        for a, article in enumerate(_read_squad(path)[:articles]):
            split = SPLITS[a % 2]
            for p, para in enumerate(article.paragraphs):
                prefix = f"{lang}/{a}/{p}"
                spans = split_sentences(para.context, lang) if level == "sentence" else []
                if level == "sentence":
                    docs.extend(Document(f"{prefix}/{i}", para.context[s:e], article.title, lang)
                                for i, (s, e) in enumerate(spans))
                else:
                    docs.append(Document(prefix, para.context, article.title, lang))
                for qa in para.questions:
                    questions.append(Query(f"{lang}/{qa.id}", qa.text, lang, split))
                    hits = relevant.setdefault(qa.id, [])
                    answers = [ans for ans in qa.answers if _answer_matches(para.context, ans)]
                    skipped[lang] += len(qa.answers) - len(answers)
                    if level == "paragraph":
                        hits.append(prefix)
                        continue
                    for ans in answers:
                        for i in answer_sentences(spans, ans.start, len(ans.text)):
                            did = f"{prefix}/{i}"
                            if did not in hits:
                                hits.append(did)
    qrels: dict[str, dict[str, int]] = {}
    queries: list[Query] = []
    unanswerable = 0
    for q in questions:
        hits = relevant[q.qid.split("/", 1)[1]]
        if not hits:
            unanswerable += 1
            continue
        queries.append(q)
        qrels[q.qid] = dict.fromkeys(hits, 1)
    notes = {"skipped_answers": sum(skipped.values()), "queries_without_relevant": unanswerable}
    notes.update({f"skipped_answers:{lang}": n for lang, n in sorted(skipped.items())})
    return RetrievalDataset(f"xquad-r-{level}", docs, queries, qrels, notes)


# --------------------------------------------------------------------------------------------------
# qa-train: the reranker's training data (issue 21)
# --------------------------------------------------------------------------------------------------


def qa_held_out(qid: str, share: float = QA_VAL_SHARE) -> bool:
    """Whether qa-train question ``qid`` is held back for validation (a hash of the id: stable across runs)."""
    return int(hashlib.sha256(f"xlir-rerank-val:{qid}".encode()).hexdigest()[:8], 16) < share * 0xFFFFFFFF


def load_qa_train(data_dir: Path, langs: Sequence[str] | None = None, max_questions: int | None = 6000,
                  seed: int = 0) -> RetrievalDataset:
    """qa-train (``qa-train/*.json.gz``, SQuAD layout, one file per language: ``models.distill_data.QA_FILES``) as a
    sentence pool per language, like XQuAD-R's (:func:`load_xquad_r`): docs ``{lang}/{article}/{para}/{sent}``
    (title the article's), queries ``{lang}/{id}``, relevant the sentence(s) holding an answer. A language with more
    than ``max_questions`` questions keeps whole paragraphs, drawn in a seeded order, until it has that many (its
    pool is then the sentences of those paragraphs). Query split: ``dev`` for the 5% held back for validation
    (:func:`qa_held_out`), ``train`` for the rest. Answers that are not exact spans of their context are skipped
    (``notes``)."""
    from models.distill_data import QA_FILES

    folder = _dataset_dir(data_dir, "qa-train")
    chosen = sorted(QA_FILES) if langs is None else [_normalized(x) for x in langs]
    unknown = [x for x in chosen if x not in QA_FILES]
    if unknown:
        raise DatasetError(f"{folder}: no qa-train file for {', '.join(unknown)}; known: {', '.join(sorted(QA_FILES))}")
    docs: list[Document] = []
    queries: list[Query] = []
    qrels: dict[str, dict[str, int]] = {}
    skipped: Counter[str] = Counter()
    for lang in chosen:
        articles = _read_squad(folder / QA_FILES[lang])
        paras = [(a, p) for a, art in enumerate(articles) for p in range(len(art.paragraphs))]
        random.Random(f"{seed}:{lang}").shuffle(paras)
        asked = 0
        keep: list[tuple[int, int]] = []
        for a, p in paras:
            if max_questions is not None and asked >= max_questions:
                break
            keep.append((a, p))
            asked += len(articles[a].paragraphs[p].questions)
        for a, p in sorted(keep):
            article, para = articles[a], articles[a].paragraphs[p]
            prefix = f"{lang}/{a}/{p}"
            spans = split_sentences(para.context, lang)
            docs.extend(Document(f"{prefix}/{i}", para.context[s:e], article.title, lang)
                        for i, (s, e) in enumerate(spans))
            for qa in para.questions:
                answers = [ans for ans in qa.answers if _answer_matches(para.context, ans)]
                skipped[lang] += len(qa.answers) - len(answers)
                hits = sorted({i for ans in answers for i in answer_sentences(spans, ans.start, len(ans.text))})
                if not hits or not qa.text.strip():
                    skipped[f"questions:{lang}"] += 1
                    continue
                qid = f"{lang}/{qa.id}"
                queries.append(Query(qid, qa.text, lang, "dev" if qa_held_out(qid) else "train"))
                qrels[qid] = {f"{prefix}/{i}": 1 for i in hits}
    notes = {f"skipped_answers:{k}" if ":" not in k else f"skipped_{k}": n for k, n in sorted(skipped.items())}
    return RetrievalDataset("qa-train-sentence", docs, queries, qrels, notes)


# --------------------------------------------------------------------------------------------------
# XQuAD-R variants (issue 19): a non-parallel pool and a parallel pool of the same size
# --------------------------------------------------------------------------------------------------


def doc_paragraph(doc_id: str) -> tuple[int, int]:
    """``(article, paragraph)`` of an XQuAD-R doc id (``lang/article/para[/sent]``): the same in every language."""
    parts = doc_id.split("/")
    return int(parts[1]), int(parts[2])


def _shuffled_paragraphs(full: RetrievalDataset, seed: int) -> list[tuple[int, int]]:
    paras = sorted({doc_paragraph(d.id) for d in full.docs})
    random.Random(seed).shuffle(paras)
    return paras


def _restricted(full: RetrievalDataset, docs: list[Document], name: str, notes: Mapping[str, int]) -> RetrievalDataset:
    """``full`` with only ``docs`` as candidates: each query's qrels cut to them, queries left without any dropped
    (dataset order kept)."""
    ids = {d.id for d in docs}
    qrels = {q.qid: {d: v for d, v in full.qrels[q.qid].items() if d in ids} for q in full.queries}
    queries = [q for q in full.queries if any(v > 0 for v in qrels[q.qid].values())]
    out_notes = {**full.notes, **notes, "queries_without_kept_relevant": len(full.queries) - len(queries)}
    return RetrievalDataset(name, docs, queries, {q.qid: qrels[q.qid] for q in queries}, out_notes)


def xquad_nonparallel(full: RetrievalDataset, seed: int = 0) -> RetrievalDataset:
    """The **non-parallel** variant of an XQuAD-R pool (:func:`load_xquad_r`, sentences or paragraphs): each
    paragraph kept in one language only, the languages assigned round-robin (:data:`XQUAD_LANGS` order) over the
    paragraphs after a shuffle seeded by ``seed``; queries in every language, each judged against the sentences of
    the one kept copy (a query whose kept copy holds no answer sentence is dropped). The article-based dev/test
    split of the full pool is kept (queries keep their split)."""
    langs = [lang for lang in XQUAD_LANGS if any(d.lang == lang for d in full.docs)]
    if not langs:
        raise DatasetError(f"{full.name}: no documents in the XQuAD-R languages")
    kept = {para: langs[i % len(langs)] for i, para in enumerate(_shuffled_paragraphs(full, seed))}
    docs = [d for d in full.docs if kept[doc_paragraph(d.id)] == d.lang]
    return _restricted(full, docs, f"{full.name}-nonparallel-s{seed}", {"paragraphs": len(kept), "seed": seed})


def xquad_parallel_subset(full: RetrievalDataset, n_docs: int, seed: int = 0) -> RetrievalDataset:
    """A **parallel** pool of about ``n_docs`` documents: whole paragraphs of ``full`` kept in all their languages,
    taken in the order of the same seeded shuffle as :func:`xquad_nonparallel` until at least ``n_docs`` documents
    are in; the queries of those paragraphs (in every language), the dev/test split kept."""
    if n_docs < 1:
        raise DatasetError(f"n_docs must be >= 1, not {n_docs}")
    per_para = Counter(doc_paragraph(d.id) for d in full.docs)
    chosen: set[tuple[int, int]] = set()
    total = 0
    for para in _shuffled_paragraphs(full, seed):
        if total >= n_docs:
            break
        chosen.add(para)
        total += per_para[para]
    docs = [d for d in full.docs if doc_paragraph(d.id) in chosen]
    return _restricted(full, docs, f"{full.name}-parallel{n_docs}-s{seed}", {"paragraphs": len(chosen), "seed": seed})


def xquad_r_pools(data_dir: Path, seed: int = 0, level: str = "sentence") -> dict[str, RetrievalDataset]:
    """The three XQuAD-R pools of issue 19: ``full`` (fully parallel), ``nonparallel`` and ``parallel`` (same size
    as ``nonparallel``, in documents)."""
    full = load_xquad_r(data_dir, level=level)
    nonpar = xquad_nonparallel(full, seed)
    return {"nonparallel": nonpar, "parallel": xquad_parallel_subset(full, len(nonpar.docs), seed), "full": full}


# --------------------------------------------------------------------------------------------------
# MIRACL
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Topic:
    qid: str
    query: str
    lang: str | None
    where: str  # "file:line", for messages


def read_topics(path: Path) -> list[Topic]:
    """The topics of a TSV ``qid<TAB>query[<TAB>lang]`` in file order: ``#`` comments and blank lines skipped; a
    malformed line, an empty or spaced id, a duplicate id or an unknown language is a :class:`DatasetError` naming
    ``file:line`` (``xlir search --topics`` and the MIRACL loader)."""
    path = Path(path)
    topics: list[Topic] = []
    seen: dict[str, str] = {}
    for lineno, line in _lines(path):
        where = f"{path}:{lineno}"
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) not in (2, 3):
            raise DatasetError(f"{where}: malformed topics line, expected 'qid<TAB>query' or 'qid<TAB>query<TAB>lang' "
                               f"(tab-separated), got {len(parts)} column{'s' if len(parts) != 1 else ''}: "
                               f"{line[:80]!r}")
        qid, query = parts[0].strip(), parts[1].strip()
        if not qid or any(c.isspace() for c in qid):
            raise DatasetError(f"{where}: the topic id {qid!r} is empty or has whitespace (a TREC run cannot hold it)")
        if not query:
            raise DatasetError(f"{where}: topic {qid} has an empty query")
        if qid in seen:
            raise DatasetError(f"{where}: duplicate topic id {qid!r} (first at {seen[qid]})")
        lang = None
        if len(parts) == 3 and parts[2].strip():
            try:
                lang = known_lang(parts[2].strip())
            except (ValueError, TypeError) as exc:
                raise DatasetError(f"{where}: third column (the query's language): {exc}") from None
        seen[qid] = where
        topics.append(Topic(qid, query, lang, where))
    if not topics:
        raise DatasetError(f"{path}: no topics (expected lines 'qid<TAB>query')")
    return topics


def _read_qrels(path: Path, topics: Mapping[str, object] | None, docids: set[str] | None
                ) -> dict[str, dict[str, int]]:
    """TREC qrels ``qid Q0 docid rel`` -> ``{qid: {docid: rel}}``; a qid not in ``topics`` or a docid not in
    ``docids`` is an error (None: any is taken)."""
    qrels: dict[str, dict[str, int]] = {}
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 4:
            raise DatasetError(
                f"{path}:{lineno}: malformed qrels line, expected 4 fields 'qid Q0 docid rel', got {len(parts)}")
        qid, _, docid, rel_text = parts
        try:
            rel = int(rel_text)
        except ValueError:
            raise DatasetError(f"{path}:{lineno}: relevance {rel_text!r} is not an integer") from None
        if topics is not None and qid not in topics:
            raise DatasetError(f"qrels names unknown qid {qid} at {path}:{lineno} (not in the topics)")
        if docids is not None and docid not in docids:
            raise DatasetError(f"qrels names unknown docid {docid} at {path}:{lineno}")
        judged = qrels.setdefault(qid, {})
        if docid in judged and judged[docid] != rel:
            raise DatasetError(
                f"{path}:{lineno}: conflicting relevance for {qid} {docid}: {rel} after {judged[docid]}")
        judged[docid] = rel
    return qrels


def load_miracl(corpus: Path, topics: Path, qrels: Path, lang: str, split: str = "test") -> RetrievalDataset:
    """A MIRACL language: its corpus (every doc gets ``lang``), the topics that have qrels, the qrels."""
    corpus, topics, qrels = Path(corpus), Path(topics), Path(qrels)
    try:
        code = known_lang(lang)
    except (ValueError, TypeError) as exc:
        raise DatasetError(f"{topics}: {exc}") from exc
    if split not in SPLITS:
        raise DatasetError(f"{topics}: unknown split {split!r}; accepted: {', '.join(SPLITS)}")
    if not corpus.exists():
        raise DatasetError(f"{corpus}: no such file or directory")
    docs: list[Document] = []
    docids: set[str] = set()
    try:
        for doc in read_corpus([corpus], default_lang=code):
            if doc.id in docids:
                raise DatasetError(f"{corpus}: duplicate docid {doc.id!r}")
            docids.add(doc.id)
            docs.append(Document(doc.id, doc.text, doc.title, code))
    except DatasetError:
        raise
    except CorpusError as exc:
        raise DatasetError(str(exc)) from exc
    if not docs:
        raise DatasetError(f"{corpus}: no documents")
    topic_map = {t.qid: t.query for t in read_topics(topics)}
    judged = _read_qrels(qrels, topic_map, docids)
    queries = [Query(qid, text, code, split) for qid, text in topic_map.items() if qid in judged]
    if not queries:
        raise DatasetError(f"{qrels}: no qrels for any topic of {topics}")
    notes = {"topics_without_qrels": len(topic_map) - len(queries)}
    return RetrievalDataset(f"miracl-{code}", docs, queries, {q.qid: judged[q.qid] for q in queries}, notes)


def load_sample(folder: Path) -> RetrievalDataset:
    """The shipped sample corpus with its cross-lingual probes as test queries (see the module docstring)."""
    docs = list(read_corpus([Path(folder) / "corpus.jsonl"]))
    queries: list[Query] = []
    qrels: dict[str, dict[str, int]] = {}
    path = Path(folder) / "probes.jsonl"
    for lineno, line in _lines(path):
        try:
            probe = json.loads(line)
            queries.append(Query(f"probe-{lineno}", probe["query"], normalize_lang(probe["query_lang"]), "test"))
        except (ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"{path}:{lineno}: expected a JSON object with query, query_lang, relevant ({exc})"
                               ) from exc
        qrels[queries[-1].qid] = {str(probe["relevant"]): 1}
    return RetrievalDataset("sample", docs, queries, qrels)


# --------------------------------------------------------------------------------------------------
# Tatoeba
# --------------------------------------------------------------------------------------------------

_PAIR: Final = re.compile(r"[a-z]{3}")


def load_tatoeba(data_dir: Path, pairs: Sequence[str] | None = None) -> dict[str, tuple[list[str], list[str]]]:
    """``{xx: (xx lines, eng lines)}`` for each pair (default :data:`TATOEBA_PAIRS`), in the order given."""
    folder = _dataset_dir(data_dir, "tatoeba")
    codes = list(TATOEBA_PAIRS if pairs is None else [pairs] if isinstance(pairs, str) else pairs)
    out: dict[str, tuple[list[str], list[str]]] = {}
    for code in codes:
        if not isinstance(code, str) or not _PAIR.fullmatch(code):
            raise DatasetError(f"{folder}: malformed Tatoeba pair {code!r}; expected a 3-letter code such as "
                               f"{', '.join(TATOEBA_PAIRS)}")
        xx_path, en_path = folder / f"tatoeba.{code}-eng.{code}", folder / f"tatoeba.{code}-eng.eng"
        for path in (xx_path, en_path):
            if not path.is_file():
                known = "" if code in TATOEBA_PAIRS else f" (the XTREME pairs are {', '.join(TATOEBA_PAIRS)})"
                raise DatasetError(f"{path}: no such file{known}")
        xx = [line for _, line in _lines(xx_path)]
        en = [line for _, line in _lines(en_path)]
        if len(xx) != len(en):
            raise DatasetError(f"{xx_path} has {len(xx)} lines but {en_path} has {len(en)}; they must be aligned")
        out[code] = (xx, en)
    return out
