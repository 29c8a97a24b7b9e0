"""The NTREX-128 split (issue 19.3, for issue 20's training): recorded once, by document, disjoint, stable."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from models import ntrex
from xlir.errors import CorpusError

needs_data = pytest.mark.skipif(not (ntrex.data_dir() / "DOCUMENT_IDS.tsv.gz").is_file(),
                                reason="../shared/data/ntrex is not beside the checkout")


def test_the_rule_alone_is_stable_disjoint_and_80_20() -> None:
    ids = [f"site.{i}" for i in range(50) for _ in range(3)]  # three lines per document
    train, held_out = ntrex.split_documents(ids)
    assert len(held_out) == 10 and len(train) == 40 and not train & held_out
    assert ntrex.split_documents(list(reversed(ids))) == (train, held_out)


@needs_data
def test_the_recorded_split_is_the_rule_over_the_data() -> None:
    ntrex.check_split()
    ids = ntrex.document_ids()
    train, held_out = ntrex.split_documents(ids)
    assert ntrex.load_split() == held_out
    assert not train & held_out and train | held_out == set(ids)
    assert len(held_out) == round(0.2 * len(set(ids))) == 25
    assert ntrex.split_documents(ids) == (train, held_out)  # the same split on every run


@needs_data
def test_the_rule_depends_on_the_ids_not_their_order() -> None:
    ids = sorted(set(ntrex.document_ids()))
    shuffled = ids[:]
    random.Random(7).shuffle(shuffled)
    assert ntrex.split_documents(shuffled) == ntrex.split_documents(ids)


@needs_data
def test_the_parts_partition_the_lines_and_no_document_straddles() -> None:
    ids = ntrex.document_ids()
    train, held_out = ntrex.line_numbers("train"), ntrex.line_numbers("eval")
    assert sorted(train + held_out) == list(range(len(ids))) == list(range(1997))
    assert not {ids[i] for i in train} & {ids[i] for i in held_out}
    assert (len(train), len(held_out)) == (1539, 458)  # about 80/20 by lines too
    record = json.loads(ntrex.SPLIT_FILE.read_text(encoding="utf-8"))
    assert record["lines"] == {"train": 1539, "eval": 458} and record["documents"] == {"train": 98, "eval": 25}
    with pytest.raises(CorpusError, match="unknown NTREX part 'test'"):
        ntrex.line_numbers("test")


@needs_data
def test_parallel_pairs_are_aligned_line_by_line() -> None:
    pairs = ntrex.parallel("deu", "eval")
    first = ntrex.line_numbers("eval")[0]
    src = ntrex._read(ntrex.data_dir() / ntrex.SOURCE)
    assert len(pairs) == 458 and pairs[0][0] == src[first] and pairs[0][1] and pairs[0][1] != pairs[0][0]
    assert "deu" in ntrex.languages() and "zho-CN" in ntrex.languages() and len(ntrex.languages()) >= 120


@needs_data
def test_a_tampered_record_is_refused(tmp_path: Path) -> None:
    record = json.loads(ntrex.SPLIT_FILE.read_text(encoding="utf-8"))
    train, _ = ntrex.split_documents(ntrex.document_ids())
    record["eval_documents"][0] = sorted(train)[0]  # one training document moved to the evaluation part
    bad = tmp_path / "split.json"
    bad.write_text(json.dumps(record), encoding="utf-8")
    with pytest.raises(CorpusError, match="does not match the split rule"):
        ntrex.check_split(path=bad)
