"""Benchmark dataset loaders: real XQuAD-R and Tatoeba from ../shared/data, the MIRACL fixture, broken inputs."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from benchmarks.datasets import (
    TATOEBA_PAIRS,
    XQUAD_LANGS,
    DatasetError,
    Query,
    RetrievalDataset,
    answer_sentences,
    default_data_dir,
    doc_article,
    load_miracl,
    load_sample,
    load_tatoeba,
    load_xquad_r,
    split_sentences,
)
from indexer.readers import Document
from xlir.errors import CorpusError

DATA = default_data_dir()
MIRACL = Path(__file__).parent / "fixtures" / "miracl-tiny"
KNOWN_QID = "56e0fc3f7aa994140058e878"  # "Who first sent radio waves across the Atlantic?"


@pytest.fixture(scope="module")
def de_hi_sentences() -> RetrievalDataset:
    return load_xquad_r(DATA, "sentence", ["hi", "de"])


# --------------------------------------------------------------------------------------------------
# Sentence splitter (the LAReQA candidates of XQuAD-R)
# --------------------------------------------------------------------------------------------------


def sentences(text: str, lang: str | None = None) -> list[str]:
    return [text[s:e] for s, e in split_sentences(text, lang)]


def test_split_latin() -> None:
    text = "The cat sat. Did it? Yes! It cost 3.5 dollars, e.g. a lot.  Then it left."
    assert sentences(text) == ["The cat sat.", "Did it?", "Yes!", "It cost 3.5 dollars, e.g. a lot.", "Then it left."]


def test_split_cyrillic() -> None:
    assert sentences("Кошка сидела. Собака лаяла! Почему?") == ["Кошка сидела.", "Собака лаяла!", "Почему?"]


def test_split_devanagari_danda() -> None:
    # the danda ends a sentence with or without a following space
    text = "बिल्ली बैठी थी। कुत्ता भौंका।फिर क्या हुआ?"
    assert sentences(text) == ["बिल्ली बैठी थी।", "कुत्ता भौंका।", "फिर क्या हुआ?"]


def test_split_arabic() -> None:
    text = "جلست القطة. لماذا نبح الكلب؟ لا أعرف."
    assert sentences(text) == ["جلست القطة.", "لماذا نبح الكلب؟", "لا أعرف."]


def test_split_chinese() -> None:
    text = "猫坐着。狗叫了！为什么？“好的。”结束"
    assert sentences(text) == ["猫坐着。", "狗叫了！", "为什么？", "“好的。”", "结束"]


def test_split_closing_quotes_and_initials() -> None:
    assert sentences('He said "stop." She left. J. R. R. Tolkien wrote.') == [
        'He said "stop."', "She left.", "J. R. R. Tolkien wrote."]


def test_split_german_ordinals_only_for_german() -> None:
    text = "Er kam am 31. August. Sie blieb."
    assert sentences(text, "de") == ["Er kam am 31. August.", "Sie blieb."]
    assert sentences(text) == ["Er kam am 31.", "August.", "Sie blieb."]


def test_split_spans_are_offsets_without_whitespace() -> None:
    text = "  One.   Two.  "
    assert split_sentences(text) == [(2, 6), (9, 13)]
    assert split_sentences("") == [] and split_sentences("   ") == []
    assert sentences("no terminator") == ["no terminator"]


def test_answer_sentences() -> None:
    spans = [(0, 10), (11, 20), (22, 30)]
    assert answer_sentences(spans, 12, 3) == [1]
    assert answer_sentences(spans, 8, 5) == [0, 1]  # crosses a boundary
    assert answer_sentences(spans, 20, 1) == [2]  # between sentences: the next one
    assert answer_sentences(spans, 0, 0) == [0]


def squad(contexts: list[tuple[str, list[tuple[str, str, str]]]]) -> dict[str, Any]:
    """One article per context; qas are (id, question, answer), answer_start found in the context."""
    return {"data": [{"title": f"t{i}", "paragraphs": [{"context": ctx, "qas": [
        {"id": qid, "question": q, "answers": [{"text": a, "answer_start": ctx.index(a)}]} for qid, q, a in qas]}]}
        for i, (ctx, qas) in enumerate(contexts)]}


FIXTURE = {
    "en": squad([("Paris is big. The tower is 330 metres tall. It is old.",
                  [("q1", "How tall is the tower?", "330 metres")]),
                 ("Rome is old. It has a forum.", [("q2", "What does Rome have?", "a forum")])]),
    "zh": squad([("巴黎很大。铁塔高330米。它很古老。", [("q1", "铁塔有多高？", "330米")]),
                 ("罗马很古老。它有一个广场。", [("q2", "罗马有什么？", "一个广场")])]),
}


@pytest.fixture()
def fixture_pool(tmp_path: Path) -> RetrievalDataset:
    for lang, data in FIXTURE.items():
        (tmp_path / f"{lang}.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return load_xquad_r(tmp_path, langs=["en", "zh"])


def test_qrels_answer_sentence_relevant_in_both_languages(fixture_pool: RetrievalDataset) -> None:
    pool = fixture_pool
    assert [d.id for d in pool.docs] == ["en/0/0/0", "en/0/0/1", "en/0/0/2", "en/1/0/0", "en/1/0/1",
                                         "zh/0/0/0", "zh/0/0/1", "zh/0/0/2", "zh/1/0/0", "zh/1/0/1"]
    assert pool.docs[1].text == "The tower is 330 metres tall." and pool.docs[6].text == "铁塔高330米。"
    assert [q.qid for q in pool.queries] == ["en/q1", "en/q2", "zh/q1", "zh/q2"]
    # the answer is in the 2nd sentence: that sentence is relevant in both languages, for the question in either
    assert pool.qrels["en/q1"] == pool.qrels["zh/q1"] == {"en/0/0/1": 1, "zh/0/0/1": 1}
    assert pool.qrels["en/q2"] == pool.qrels["zh/q2"] == {"en/1/0/1": 1, "zh/1/0/1": 1}
    assert [d.lang for d in pool.docs].count("zh") == 5 and [q.lang for q in pool.queries] == ["en", "en", "zh", "zh"]
    assert [doc_article(d.id) for d in pool.docs] == [0, 0, 0, 1, 1] * 2


def test_splits_by_article_parity(fixture_pool: RetrievalDataset) -> None:
    pool = fixture_pool
    assert [q.qid for q in pool.subset(split="dev").queries] == ["en/q1", "zh/q1"]
    assert [q.qid for q in pool.subset(split="test").queries] == ["en/q2", "zh/q2"]
    assert len(pool.subset().queries) == 4
    assert [q.qid for q in pool.subset(max_per_lang=1).queries] == ["en/q1", "zh/q1"]


# --------------------------------------------------------------------------------------------------
# XQuAD-R, real data
# --------------------------------------------------------------------------------------------------


def test_default_data_dir_and_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("XLIR_BENCH_DATA", raising=False)
    assert default_data_dir() == Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    monkeypatch.setenv("XLIR_BENCH_DATA", str(tmp_path))
    assert default_data_dir() == tmp_path


def test_xquad_sentence_counts_two_languages(de_hi_sentences: RetrievalDataset) -> None:
    ds = de_hi_sentences
    assert ds.name == "xquad-r-sentence"
    assert ds.langs() == ["de", "hi"]
    assert Counter(d.lang for d in ds.docs) == {"de": 1285, "hi": 1242}
    assert Counter(q.lang for q in ds.queries) == {"de": 1190, "hi": 1190}
    assert set(ds.qrels) == {q.qid for q in ds.queries}
    sizes = Counter(len(rel) for rel in ds.qrels.values())
    assert sizes == {2: 2358, 3: 18, 4: 4}  # one sentence per language, a few answers split across two
    assert all(doc.id.count("/") == 3 and doc.title and doc.text == doc.text.strip() for doc in ds.docs)
    assert ds.notes["skipped_answers"] == 0 and ds.notes["queries_without_relevant"] == 0


def test_xquad_paragraph_counts_two_languages() -> None:
    ds = load_xquad_r(DATA, "paragraph", ["de", "hi"])
    assert ds.name == "xquad-r-paragraph"
    assert Counter(d.lang for d in ds.docs) == {"de": 240, "hi": 240}
    assert Counter(q.lang for q in ds.queries) == {"de": 1190, "hi": 1190}
    for q in ds.queries:
        rel = ds.qrels[q.qid]
        assert len(rel) == 2 and {d.split("/", 1)[1] for d in rel} == {next(iter(rel)).split("/", 1)[1]}


def test_xquad_all_languages_match_the_lareqa_pool() -> None:
    ds = load_xquad_r(DATA)  # the figures of benchmarks/centering.py
    assert ds.langs() == list(XQUAD_LANGS)
    assert len(ds.docs) == 8504 and len(ds.queries) == 8330
    sizes = [len(rel) for rel in ds.qrels.values()]
    assert round(sum(sizes) / len(sizes), 2) == 7.02 and max(sizes) == 14


def test_xquad_docs_are_the_splitter_sentences_and_qrels_the_answer_sentences() -> None:
    squads = {lang: json.loads((DATA / "xquad-r" / f"{lang}.json").read_text(encoding="utf-8"))
              for lang in ("en", "zh")}
    ids, texts, relevant = [], [], {}
    for lang, squad in squads.items():
        for a, article in enumerate(squad["data"]):
            for p, para in enumerate(article["paragraphs"]):
                spans = split_sentences(para["context"], lang)
                ids += [f"{lang}/{a}/{p}/{i}" for i in range(len(spans))]
                texts += [para["context"][s:e] for s, e in spans]
                for qa in para["qas"]:
                    rel = relevant.setdefault(qa["id"], {})
                    for ans in qa["answers"]:
                        rel.update({f"{lang}/{a}/{p}/{i}": 1 for i in answer_sentences(
                            spans, ans["answer_start"], len(ans["text"]))})
    ds = load_xquad_r(DATA, langs=["zh", "en"])
    assert [d.id for d in ds.docs] == ids and [d.text for d in ds.docs] == texts
    assert ds.qrels == {f"{lang}/{qid}": rel for lang in ("en", "zh") for qid, rel in relevant.items()}


def test_xquad_first_articles_only() -> None:
    ds = load_xquad_r(DATA, langs=["en", "de"], articles=2)
    assert {doc_article(d.id) for d in ds.docs} == {0, 1}
    assert {q.split for q in ds.queries} == {"dev", "test"}
    assert all(doc_article(d) < 2 for rel in ds.qrels.values() for d in rel)
    small = ds.subset(split="test", max_per_lang=5)
    assert Counter(q.lang for q in small.queries) == {"en": 5, "de": 5}


def test_sample_probes() -> None:
    ds = load_sample(Path(__file__).resolve().parent.parent / "data" / "sample")
    assert ds.name == "sample" and len(ds.docs) == 300 and len(ds.queries) == 10
    ids = {d.id for d in ds.docs}
    for q in ds.queries:
        (rel,) = ds.qrels[q.qid]
        assert rel in ids and not rel.endswith(f"-{q.lang}") and q.split == "test"


def _raw_answers(lang: str, squad_id: str) -> list[str]:
    raw = json.loads((DATA / "xquad-r" / f"{lang}.json").read_text(encoding="utf-8"))
    for article in raw["data"]:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                if qa["id"] == squad_id:
                    return [a["text"] for a in qa["answers"]]
    raise AssertionError(f"{squad_id} not in {lang}")


def test_xquad_known_question_is_relevant_to_the_answer_sentence_in_every_language() -> None:
    langs = ["en", "de", "zh", "ar"]
    ds = load_xquad_r(DATA, langs=langs)
    docs = {d.id: d for d in ds.docs}
    for qlang in langs:
        qid = f"{qlang}/{KNOWN_QID}"
        query = next(q for q in ds.queries if q.qid == qid)
        assert query.lang == qlang and query.split == "test"
        rel = ds.qrels[qid]
        assert sorted(d.split("/", 1)[0] for d in rel) == sorted(langs)  # one sentence per language
        for doc_id in rel:
            doc = docs[doc_id]
            assert doc.lang == doc_id.split("/", 1)[0]
            assert any(answer in doc.text for answer in _raw_answers(doc.lang, KNOWN_QID)), (doc_id, doc.text)
    assert "Marconi" in docs[next(d for d in ds.qrels[f"zh/{KNOWN_QID}"] if d.startswith("en/"))].text


def test_xquad_dev_test_partition(de_hi_sentences: RetrievalDataset) -> None:
    ds = de_hi_sentences
    dev, test = ds.subset(split="dev"), ds.subset(split="test")
    assert len(dev.queries) + len(test.queries) == len(ds.queries)
    assert {q.qid for q in dev.queries}.isdisjoint(q.qid for q in test.queries)
    assert Counter(q.split for q in ds.queries) == {"dev": 1224, "test": 1156}
    for part, parity in ((dev, 0), (test, 1)):
        for q in part.queries:  # a question's relevant sentences are in its own article, whose index sets the split
            assert {doc_article(d) % 2 for d in part.qrels[q.qid]} == {parity}


def test_subset(de_hi_sentences: RetrievalDataset) -> None:
    ds = de_hi_sentences
    sub = ds.subset(langs=["hin"], split="test", max_per_lang=5)
    assert sub.docs is ds.docs and sub.name == ds.name
    expected = [q for q in ds.queries if q.lang == "hi" and q.split == "test"][:5]
    assert sub.queries == expected and sub.langs() == ["hi"]
    assert sub.qrels == {q.qid: ds.qrels[q.qid] for q in expected}
    assert ds.subset(langs=["hi"], split="test", max_per_lang=5) == sub  # deterministic
    both = ds.subset(max_per_lang=3)
    assert [q.lang for q in both.queries] == ["de"] * 3 + ["hi"] * 3
    assert ds.subset() == ds and len(ds.queries) == 2380  # the original is untouched
    assert ds.subset(max_per_lang=0).queries == []
    with pytest.raises(ValueError, match="'en'.*de, hi"):
        ds.subset(langs=["en"])
    with pytest.raises(ValueError, match="unknown split 'train'"):
        ds.subset(split="train")


def test_sentence_splitter_rules() -> None:
    text = "Am 31. August kam er an. Es war z.B. kalt! Dann?"
    assert [text[s:e] for s, e in split_sentences(text, "de")] == ["Am 31. August kam er an.", "Es war z.B. kalt!",
                                                                     "Dann?"]
    zh = "它很大。我很小！"
    assert [zh[s:e] for s, e in split_sentences(zh, "zh")] == ["它很大。", "我很小！"]
    assert len(split_sentences("यह बड़ा है। वह छोटा है।", "hi")) == 2
    assert split_sentences("Version 3.5 is out.", "en") == [(0, 19)]


# --------------------------------------------------------------------------------------------------
# XQuAD-R, broken inputs
# --------------------------------------------------------------------------------------------------


def _squad(context: str, answer: str, start: int | None = None, qid: str = "q1") -> dict[str, Any]:
    return {"version": "1.1", "data": [{"title": "T", "paragraphs": [{"context": context, "qas": [
        {"id": qid, "question": "Which?", "answers": [
            {"answer_start": context.index(answer) if start is None else start, "text": answer}]}]}]}]}


def _write_xquad(root: Path, files: dict[str, dict[str, Any] | str]) -> Path:
    folder = root / "xquad-r"
    folder.mkdir(parents=True, exist_ok=True)
    for lang, content in files.items():
        text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False, indent=1)
        (folder / f"{lang}.json").write_text(text, encoding="utf-8")
    return folder


def test_xquad_tiny_parallel_files_and_the_data_dir_forms(tmp_path: Path) -> None:
    folder = _write_xquad(tmp_path, {"en": _squad("One. Two is here. Three.", "Two"),
                                     "de": _squad("Eins. Zwei. Hier ist drei.", "drei")})
    for where in (tmp_path, folder):  # the data root or the xquad-r folder itself
        ds = load_xquad_r(where, langs=["de", "en"])
        assert [d.id for d in ds.docs] == ["de/0/0/0", "de/0/0/1", "de/0/0/2", "en/0/0/0", "en/0/0/1", "en/0/0/2"]
        assert [q.qid for q in ds.queries] == ["de/q1", "en/q1"]
        assert ds.qrels == {"de/q1": {"de/0/0/2": 1, "en/0/0/1": 1}, "en/q1": {"de/0/0/2": 1, "en/0/0/1": 1}}
        assert ds.queries[0] == Query("de/q1", "Which?", "de", "dev")
        assert ds.docs[0] == Document("de/0/0/0", "Eins.", "T", "de")


def test_xquad_answer_not_at_its_offset_is_skipped_and_counted(tmp_path: Path) -> None:
    _write_xquad(tmp_path, {"en": _squad("One. Two is here. Three.", "Two", start=0),
                            "de": _squad("Eins. Zwei. Hier ist drei.", "drei")})
    ds = load_xquad_r(tmp_path, langs=["en", "de"])
    assert ds.notes["skipped_answers"] == 1 and ds.notes["skipped_answers:en"] == 1
    assert ds.qrels["en/q1"] == {"de/0/0/2": 1}  # only the German sentence is left
    para = load_xquad_r(tmp_path, "paragraph", ["en", "de"])
    assert para.qrels["en/q1"] == {"de/0/0": 1, "en/0/0": 1} and para.notes["skipped_answers"] == 1


def test_xquad_malformed_json_names_file_line_and_column(tmp_path: Path) -> None:
    folder = _write_xquad(tmp_path, {"en": '{"data": [\n  {"title": "T",\n   "paragraphs": [}\n]}'})
    with pytest.raises(DatasetError, match=re.escape(f"{folder / 'en.json'}:3:") + r"\d+: invalid JSON"):
        load_xquad_r(tmp_path, langs=["en"])


def test_xquad_bad_structure_names_file_and_location(tmp_path: Path) -> None:
    bad = _squad("One. Two.", "Two")
    del bad["data"][0]["paragraphs"][0]["qas"][0]["question"]
    folder = _write_xquad(tmp_path, {"en": bad})
    with pytest.raises(DatasetError, match=re.escape(f"{folder / 'en.json'}: data[0].paragraphs[0].qas[0]: missing")):
        load_xquad_r(tmp_path, langs=["en"])
    bad = _squad("One. Two.", "Two")
    bad["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = "5"
    _write_xquad(tmp_path, {"en": bad})
    where = re.escape("en.json: data[0].paragraphs[0].qas[0].answers[0].answer_start: expected int, got str")
    with pytest.raises(DatasetError, match=where):
        load_xquad_r(tmp_path, langs=["en"])
    _write_xquad(tmp_path, {"en": "[1, 2]"})
    with pytest.raises(DatasetError, match=r"en\.json: top level: expected a JSON object"):
        load_xquad_r(tmp_path, langs=["en"])


def test_xquad_unknown_language_missing_file_and_level(tmp_path: Path) -> None:
    _write_xquad(tmp_path, {"en": _squad("One. Two.", "Two")})
    with pytest.raises(DatasetError, match="unknown XQuAD-R language 'fr'; accepted: ar, de, en, es, hi, ru, zh"):
        load_xquad_r(tmp_path, langs=["en", "fr"])
    with pytest.raises(DatasetError, match=re.escape(f"{tmp_path / 'xquad-r' / 'de.json'}: no such file")):
        load_xquad_r(tmp_path, langs=["en", "de"])
    with pytest.raises(DatasetError, match="unknown XQuAD-R level 'document'; accepted: sentence, paragraph"):
        load_xquad_r(tmp_path, "document")
    assert issubclass(DatasetError, CorpusError)


# --------------------------------------------------------------------------------------------------
# MIRACL
# --------------------------------------------------------------------------------------------------


def _miracl(root: Path) -> tuple[Path, Path, Path]:
    shutil.copytree(MIRACL, root / "m")
    return root / "m", root / "m" / "topics.tsv", root / "m" / "qrels.tsv"


def test_miracl_fixture_loads() -> None:
    ds = load_miracl(MIRACL, MIRACL / "topics.tsv", MIRACL / "qrels.tsv", "swa", split="dev")
    assert ds.name == "miracl-sw" and ds.langs() == ["sw"]
    assert len(ds.docs) == 8 and all(d.lang == "sw" and d.title for d in ds.docs)
    assert ds.docs[3] == Document("1002#1", "Mto Nile unaanzia katika Ziwa Viktoria karibu na mji wa Jinja nchini "
                                            "Uganda.", "Ziwa Viktoria", "sw")
    assert [(q.qid, q.lang, q.split) for q in ds.queries] == [("q1", "sw", "dev"), ("q2", "sw", "dev"),
                                                               ("q3", "sw", "dev")]
    assert ds.queries[1].text == "Mto Nile unaanzia wapi?"
    assert ds.qrels == {"q1": {"1001#0": 1, "1002#0": 0}, "q2": {"1002#1": 1, "1002#0": 0},
                        "q3": {"1004#1": 1, "1004#0": 1}}
    assert ds.subset(max_per_lang=1).queries == ds.queries[:1]


def test_miracl_single_jsonl_gz_dir_and_unjudged_topics(tmp_path: Path) -> None:
    corpus, topics, qrels = _miracl(tmp_path)
    single = tmp_path / "corpus.jsonl"
    shutil.copy(corpus / "docs-0.jsonl", single)
    topics.write_text(topics.read_text(encoding="utf-8") + "q4\tChai hulimwa wapi?\n", encoding="utf-8")
    ds = load_miracl(single, topics, qrels, "sw")
    assert [q.qid for q in ds.queries] == ["q1", "q2", "q3"] and ds.notes["topics_without_qrels"] == 1
    gz_dir = tmp_path / "gz"
    gz_dir.mkdir()
    with gzip.open(gz_dir / "docs-0.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write((corpus / "docs-0.jsonl").read_text(encoding="utf-8"))
    assert load_miracl(gz_dir, topics, qrels, "sw").docs == ds.docs


@pytest.mark.parametrize(("which", "content", "line", "message"), [
    ("topics", "q1\tMlima mrefu?\nq2 no tab here\n", 2, "malformed topics line"),
    ("topics", "q1\tMlima mrefu?\nq2\t  \n", 2, "has an empty query"),
    ("topics", "q1\tA?\nq1\tB?\n", 2, "duplicate topic id 'q1'"),
    ("qrels", "q1 Q0 1001#0 1\nq2 Q0 1002#1\n", 2, "malformed qrels line, expected 4 fields"),
    ("qrels", "q1 Q0 1001#0 1\nq1 Q0 1002#0 1 extra\n", 2, "malformed qrels line, expected 4 fields"),
    ("qrels", "q1 Q0 1001#0 yes\n", 1, "relevance 'yes' is not an integer"),
    ("qrels", "q1 Q0 1001#0 1\n\nq9 Q0 1001#0 1\n", 3, "qrels names unknown qid q9"),
    ("qrels", "q1 Q0 1001#0 1\nq2 Q0 9999#0 1\n", 2, "qrels names unknown docid 9999#0"),
    ("qrels", "q1 Q0 1001#0 1\nq1 Q0 1001#0 0\n", 2, "conflicting relevance"),
    ("corpus", '{"docid": "1", "text": "a"}\n{"docid": "2", "text": \n', 2, "invalid JSON"),
    ("corpus", '{"docid": "1", "text": "a"}\n{"docid": "2"}\n', 2, "missing or non-string text"),
])
def test_miracl_bad_lines_name_file_and_line(tmp_path: Path, which: str, content: str, line: int,
                                              message: str) -> None:
    corpus, topics, qrels = _miracl(tmp_path)
    target = {"topics": topics, "qrels": qrels, "corpus": corpus / "docs-0.jsonl"}[which]
    target.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError, match=re.escape(message)) as info:
        load_miracl(corpus, topics, qrels, "sw")
    assert f"{target}:{line}" in str(info.value)


def test_miracl_missing_files_unknown_lang_and_duplicates(tmp_path: Path) -> None:
    corpus, topics, qrels = _miracl(tmp_path)
    nope = tmp_path / "nope.tsv"
    for args in ((nope, topics, qrels), (corpus, nope, qrels), (corpus, topics, nope)):
        with pytest.raises(DatasetError, match=re.escape(f"{nope}: no such file")):
            load_miracl(*args, "sw")
    with pytest.raises(DatasetError, match=r"topics\.tsv: unknown language code 'xx'; accepted ISO 639-1 codes"):
        load_miracl(corpus, topics, qrels, "xx")
    with pytest.raises(DatasetError, match="unknown split 'train'"):
        load_miracl(corpus, topics, qrels, "sw", split="train")
    docs = corpus / "docs-0.jsonl"
    docs.write_text(docs.read_text(encoding="utf-8") + '{"docid": "1001#0", "text": "tena"}\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=re.escape(f"{corpus}: duplicate docid '1001#0'")):
        load_miracl(corpus, topics, qrels, "sw")


# --------------------------------------------------------------------------------------------------
# Tatoeba
# --------------------------------------------------------------------------------------------------


def test_tatoeba_nine_pairs_of_1000_lines() -> None:
    sides = load_tatoeba(DATA)
    assert list(sides) == list(TATOEBA_PAIRS)
    for xx, en in sides.values():
        assert len(xx) == len(en) == 1000 and all(line == line.rstrip("\n") for line in xx + en)
    assert load_tatoeba(DATA / "tatoeba", ["deu"])["deu"] == sides["deu"]  # the data root or the tatoeba folder
    assert sides["ara"][0][0] == "كان سامي يربح الكثير من المال."


def test_tatoeba_line_count_mismatch_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "tatoeba.deu-eng.deu").write_text("Hallo.\nWelt.\n", encoding="utf-8")
    (tmp_path / "tatoeba.deu-eng.eng").write_text("Hello.\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"tatoeba\.deu-eng\.deu has 2 lines but .*tatoeba\.deu-eng\.eng has 1"):
        load_tatoeba(tmp_path, ["deu"])
    with pytest.raises(DatasetError, match=re.escape(f"{tmp_path / 'tatoeba.fra-eng.fra'}: no such file")):
        load_tatoeba(tmp_path, ["fra"])
    with pytest.raises(DatasetError, match="malformed Tatoeba pair 'de'"):
        load_tatoeba(tmp_path, ["de"])
    (tmp_path / "tatoeba.deu-eng.eng").write_text("Hello.\nWorld.\n", encoding="utf-8")
    assert load_tatoeba(tmp_path, ["deu"]) == {"deu": (["Hallo.", "Welt."], ["Hello.", "World."])}
