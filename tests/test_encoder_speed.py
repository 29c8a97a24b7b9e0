"""The encoder backend benchmark's decision logic (``benchmarks.encoder_speed``) on made-up figures."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks import encoder_speed
from models import encoders


def _quality(tatoeba: float, xquad: float) -> dict[str, Any]:
    return {"tatoeba_acc": {m: {"mean": tatoeba} for m in ("off", "full")},
            "xquad_map20": {m: {"mean": xquad} for m in ("off", "full")}}


def _backend(passages: float, sentences: float, queries: float, tatoeba: float, xquad: float) -> dict[str, Any]:
    return {"load_seconds": 1.0, "quality": _quality(tatoeba, xquad),
            "speed": {"passages_per_s": passages, "sentences_per_s": sentences, "queries_per_s": queries,
                      "query_ms_p50": 1000 / queries, "query_ms_p95": 1200 / queries}}


def _results() -> dict[str, Any]:
    return {"backends": {
        "torch": _backend(55.0, 300.0, 66.7, 0.8857, 0.3184),
        "onnx": _backend(50.7, 450.0, 131.9, 0.8857, 0.3184),
        "onnx-int8": _backend(103.6, 900.0, 325.0, 0.8748, 0.3013),  # fastest everywhere, but loses quality
    }}


def test_auto_choice_picks_the_fastest_lossless_backend_per_workload(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoders, "CPU_AUTO_BACKEND", {"queries": "onnx", "passages": "onnx", "sentences": "onnx"})
    choice = encoder_speed.auto_choice(_results())
    assert {w: c["measured_best"] for w, c in choice.items()} == {
        "queries": "onnx", "passages": "torch", "sentences": "onnx"}
    assert choice["passages"]["ratio_to_torch"] == 1.0
    assert choice["queries"]["ratio_to_torch"] == pytest.approx(131.9 / 66.7)
    assert [w for w, c in choice.items() if not c["agrees"]] == ["passages"]


def test_a_small_quality_loss_disqualifies(monkeypatch: pytest.MonkeyPatch) -> None:
    res = _results()
    res["backends"]["onnx"]["quality"]["xquad_map20"]["full"]["mean"] -= 0.001  # 0.1 points
    choice = encoder_speed.auto_choice(res)
    assert {c["measured_best"] for c in choice.values()} == {"torch"}


def test_render_reports_the_sentences_column_and_a_disagreement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoders, "CPU_AUTO_BACKEND", {"queries": "onnx", "passages": "onnx", "sentences": "onnx"})
    res = _results() | {"model": "e5-small", "machine": "2 cores", "commit": "abc1234", "threads": 2, "rounds": 3,
                        "passages": 1024, "passage_tokens_mean": 104.0, "token_budget": 8192, "queries": 300,
                        "sentences": 2048, "sentence_tokens_mean": 14.2, "tatoeba_lines": 1000,
                        "pool_candidates": 8504, "pool_queries": 8330}
    res["auto_choice"] = encoder_speed.auto_choice(res)
    md = encoder_speed.render(res)
    assert "| short sentences/s |" in md and "| onnx | 50.7 | 0.92 | 450.0 | 1.50 |" in md
    assert "passages: measured best torch (x1.00 torch), auto loads onnx **(disagrees" in md
    assert "queries: measured best onnx (x1.98 torch), auto loads onnx;" in md
