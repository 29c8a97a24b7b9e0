import json
from pathlib import Path

import numpy as np
import pytest

from models.base import length_sorted_batches
from models.encoders import SentenceTransformerEncoder, load_encoder, resolve_device
from models.registry import MODEL_META, REGISTRY, ModelSpec, ResolvedModel, resolve_model, weights_checksum
from models.rerankers import CrossEncoderReranker
from xlir.errors import ModelNotFound


@pytest.fixture(scope="module")
def minilm() -> SentenceTransformerEncoder:
    return load_encoder("minilm-en", device="cpu")


def test_length_sorted_batches_cover_every_index_once_longest_first() -> None:
    batches = length_sorted_batches([3, 10, 1, 7, 7], 2)
    assert [b.tolist() for b in batches] == [[1, 3], [4, 0], [2]]
    with pytest.raises(ValueError):
        length_sorted_batches([1], 0)


def test_auto_device_is_cpu_without_cuda() -> None:
    import torch

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"


def test_registry_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="xlir models fetch e5-small"):
        resolve_model("e5-small", home=tmp_path)
    with pytest.raises(ModelNotFound, match="unknown model 'nope'.*e5-small, e5-small-aligned.*minilm-en"):
        resolve_model("nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFound, match="not a sentence-transformers folder"):
        resolve_model(str(tmp_path / "empty"))


def test_prefixes_come_from_the_registry_entry(minilm: SentenceTransformerEncoder) -> None:
    assert REGISTRY["e5-small"].query_prefix == "query: " and REGISTRY["e5-small"].passage_prefix == "passage: "
    spec = ModelSpec(name="prefixed", description="", languages="en", query_prefix="query: ",
                     passage_prefix="passage: ")
    prefixed = SentenceTransformerEncoder(ResolvedModel("prefixed", minilm.path, spec), device="cpu")
    text = "a cat on a mat"
    np.testing.assert_allclose(prefixed.encode_queries([text]), minilm.encode_queries(["query: " + text]), atol=1e-5)
    np.testing.assert_allclose(prefixed.encode_passages([text]), minilm.encode_queries(["passage: " + text]), atol=1e-5)
    assert not np.allclose(prefixed.encode_queries([text]), prefixed.encode_passages([text]))


def test_passages_keep_input_order_and_unit_norm(minilm: SentenceTransformerEncoder) -> None:
    texts = ["short", "a much longer sentence about the weather in spring", "mid length text here", "x"]
    seen: list[int] = []
    batched = minilm.encode_passages(texts, batch_size=3, progress=seen.append)
    one_by_one = np.concatenate([minilm.encode_passages([t]) for t in texts])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    assert seen == [3, 1] and minilm.dim == 384
    assert minilm.checksum == weights_checksum(minilm.path)
    assert minilm.encode_queries([]).shape == (0, 384)


def test_local_folder_by_path(minilm: SentenceTransformerEncoder) -> None:
    enc = load_encoder(str(minilm.path), device="cpu")
    assert enc.name == str(minilm.path.resolve()) and enc.checksum == minilm.checksum
    assert not (minilm.path / MODEL_META).exists()


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory: pytest.TempPathFactory, minilm: SentenceTransformerEncoder) -> Path:
    """A randomly initialised 1-layer BERT cross-encoder with MiniLM's tokenizer, saved as a local folder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("ce") / "tiny-ce"
    tok = AutoTokenizer.from_pretrained(str(minilm.path))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, num_labels=1)
    BertForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_cross_encoder_reranker_scores_each_passage(tiny_cross_encoder: Path) -> None:
    from sentence_transformers import CrossEncoder

    rr = CrossEncoderReranker(tiny_cross_encoder, device="cpu")
    passages = ["cats sleep a lot", "stock markets fell", "the cat is asleep"]
    scores = rr.score("do cats sleep?", passages)
    assert scores.shape == (3,) and scores.dtype == np.float32
    ref = CrossEncoder(str(tiny_cross_encoder), device="cpu").predict([("do cats sleep?", p) for p in passages])
    np.testing.assert_allclose(scores, np.asarray(ref).reshape(-1), atol=1e-5)
    assert rr.score("q", []).shape == (0,)


def test_cross_encoder_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="no cross-encoder folder"):
        CrossEncoderReranker(tmp_path / "nothing")


def test_built_model_meta_is_json(tmp_path: Path) -> None:
    # a built model is recognised by its meta file; the checksum then comes from it, not from hashing
    folder = tmp_path / "models" / "e5-small"
    folder.mkdir(parents=True)
    (folder / MODEL_META).write_text(json.dumps({"sha256": "abc"}))
    assert resolve_model("e5-small", home=tmp_path).path == folder
