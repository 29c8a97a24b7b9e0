"""Language codes and language identification (indexer/langid.py)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from indexer import langid as langid_mod
from indexer.langid import UNDETERMINED, LanguageDetector, normalize_lang

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("en", "en"),
        ("EN", "en"),
        (" en ", "en"),
        ("eng", "en"),
        ("zh-CN", "zh"),
        ("zh_Hant_TW", "zh"),
        ("cmn", "zh"),
        ("cmn-Hans-CN", "zh"),
        ("yue", "zh"),
        ("zh-yue", "zh"),
        ("ara", "ar"),
        ("arb", "ar"),
        ("arz", "ar"),
        ("hin", "hi"),
        ("deu", "de"),
        ("ger", "de"),
        ("fra", "fr"),
        ("fre", "fr"),
        ("spa", "es"),
        ("es-419", "es"),
        ("rus", "ru"),
        ("jpn", "ja"),
        ("kor", "ko"),
        ("pt-BR", "pt"),
        ("sr-Latn", "sr"),
        ("nob", "nb"),
        ("nor", "no"),
        ("fas", "fa"),
        ("per", "fa"),
        ("pes", "fa"),
        ("zsm", "ms"),
        ("swh", "sw"),
        ("iw", "he"),
        ("in", "id"),
        # well formed, no ISO 639-1 code: unchanged, lowercased
        ("haw", "haw"),
        ("ACE", "ace"),
        ("grc", "grc"),
        ("und", "und"),
        ("zxx", "zxx"),
    ],
)
def test_normalize_lang(code: str, expected: str) -> None:
    assert normalize_lang(code) == expected


@pytest.mark.parametrize("code", ["ara", "cmn", "deu", "fra", "hin", "jpn", "kor", "rus", "spa"])
def test_tatoeba_codes_map_to_iso639_1(code: str) -> None:
    assert len(normalize_lang(code)) == 2


@pytest.mark.parametrize(
    "code", ["", "  ", "e", "english", "12", "e1", "en US", "日本", "en-", "en--us", "x-klingon",
             "en-toolongsubtag", "en-U$", "\u212aO"],
)
def test_normalize_lang_rejects_malformed(code: str) -> None:
    with pytest.raises(ValueError, match="malformed language code"):
        normalize_lang(code)


def test_normalize_lang_rejects_non_str() -> None:
    with pytest.raises(TypeError):
        normalize_lang(None)  # type: ignore[arg-type]


def test_every_iso639_code_round_trips() -> None:
    for alpha2, alpha3s in langid_mod._ISO639_1.items():
        assert normalize_lang(alpha2) == alpha2
        assert normalize_lang(alpha2.upper()) == alpha2
        for alpha3 in alpha3s:
            assert normalize_lang(alpha3) == alpha2, alpha3
    assert len(langid_mod._ISO639_1) >= 180


# --- LanguageDetector ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def detector() -> LanguageDetector:
    return LanguageDetector()


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("The weather is lovely today, so we are going for a walk in the park.", "en"),
        ("Das Wetter ist heute schön, deshalb gehen wir im Park spazieren.", "de"),
        ("今天天气很好，所以我们去公园散步。", "zh"),
        ("الطقس جميل اليوم، لذلك سنذهب للتنزه في الحديقة.", "ar"),
        ("आज मौसम बहुत अच्छा है, इसलिए हम पार्क में टहलने जा रहे हैं।", "hi"),
        ("Сегодня хорошая погода, поэтому мы идём гулять в парк.", "ru"),
        ("今日はとても良い天気なので、公園を散歩します。", "ja"),
        ("오늘은 날씨가 아주 좋아서 공원에 산책하러 갑니다.", "ko"),
        ("Il fait très beau aujourd'hui, alors nous allons nous promener au parc.", "fr"),
    ],
)
def test_detect(detector: LanguageDetector, text: str, lang: str) -> None:
    assert detector.detect(text) == lang


@pytest.mark.parametrize("text", ["", "   \n", "123 456 !!!", "😀👍", "—…"])
def test_detect_undetermined_without_letters(text: str) -> None:
    fresh = LanguageDetector()
    assert fresh.detect(text) == UNDETERMINED == "und"
    assert not fresh.loaded  # no letters: answered without loading the model


def test_detect_undetermined_without_features(detector: LanguageDetector) -> None:
    # Letters the model has no features for give a uniform distribution, not a language.
    assert detector.detect("ok") == UNDETERMINED


def test_detect_many(detector: LanguageDetector) -> None:
    texts = ["Das ist ein ganz normaler Satz über das Wetter.", "", "This is a perfectly ordinary sentence."]
    assert detector.detect_many(texts) == ["de", "und", "en"]
    assert detector.detect_many(iter([])) == []


def test_detect_returns_normalised_codes(detector: LanguageDetector) -> None:
    model = detector._get_model()
    for label, code in model.labels.items():
        assert code == UNDETERMINED if label == "zxx" else code == normalize_lang(label)
    assert model.labels["wuu"] == "zh"


def test_detect_uses_only_max_chars() -> None:
    short = LanguageDetector(max_chars=40)
    text = "Das ist ein ganz normaler deutscher Satz. " + "This is English text, and a lot of it. " * 20
    assert short.detect(text) == "de"
    with pytest.raises(ValueError):
        LanguageDetector(max_chars=0)


def test_lazy_thread_safe_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    real_load = langid_mod._load_model
    calls: list[int] = []
    gate = threading.Barrier(8)

    def counting_load() -> langid_mod._Model:
        calls.append(1)
        return real_load()

    monkeypatch.setattr(langid_mod, "_load_model", counting_load)
    fresh = LanguageDetector()
    assert not fresh.loaded
    results: list[str] = []

    def worker() -> None:
        gate.wait()
        results.append(fresh.detect("Сегодня хорошая погода, поэтому мы идём гулять в парк."))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["ru"] * 8
    assert len(calls) == 1
    assert fresh.loaded


def test_import_does_not_load_py3langid() -> None:
    code = (
        "import sys, indexer.langid; indexer.langid.LanguageDetector(); "
        "assert 'py3langid' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
