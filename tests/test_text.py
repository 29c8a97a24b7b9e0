"""The script-aware BM25 analyzer (indexer/text.py): exact token lists per script."""

from __future__ import annotations

import pytest
import regex

from indexer import text as text_mod
from indexer.text import ANALYZER_NAME, tokenize, tokenize_many


def test_analyzer_name() -> None:
    assert ANALYZER_NAME == "xlir-script-v1"


# --- CJK: overlapping character bigrams --------------------------------------------------------------


def test_chinese_bigrams() -> None:
    assert tokenize("我爱北京天安门") == ["我爱", "爱北", "北京", "京天", "天安", "安门"]


def test_chinese_punctuation_splits_runs() -> None:
    # "，" (fullwidth comma) and "。" separate runs; a one-character run stays a unigram.
    assert tokenize("北京，上海。广") == ["北京", "上海", "广"]


def test_japanese_kana_kanji_mix() -> None:
    # Kanji, hiragana and katakana form one run, bigrammed across script changes (like Lucene's
    # CJKBigramFilter); the prolonged sound mark ー (script Common) stays inside the run.
    assert tokenize("カタカナと漢字") == ["カタ", "タカ", "カナ", "ナと", "と漢", "漢字"]
    assert tokenize("東京に住んでいます") == ["東京", "京に", "に住", "住ん", "んで", "でい", "いま", "ます"]
    assert tokenize("コーヒー") == ["コー", "ーヒ", "ヒー"]


def test_japanese_halfwidth_katakana_is_normalised() -> None:
    # NFKC: halfwidth ｶﾞ (base + separate voiced mark) becomes the precomposed ガ.
    assert tokenize("ｶﾞｲﾄﾞ") == tokenize("ガイド") == ["ガイ", "イド"]


def test_korean_hangul_bigrams() -> None:
    assert tokenize("한국어 검색") == ["한국", "국어", "검색"]
    # An agglutinated word still yields the stem's bigram, so the query "서울" matches.
    assert tokenize("서울에서") == ["서울", "울에", "에서"]
    assert tokenize("집") == ["집"]


def test_mixed_run_splits_at_script_boundary() -> None:
    assert tokenize("Python编程 2024") == ["python", "编程", "2024"]
    assert tokenize("第3章") == ["第", "3", "章"]
    assert tokenize("iPhone手机ケース") == ["iphone", "手机", "机ケ", "ケー", "ース"]


# --- Thai and other Southeast Asian scripts: grapheme-cluster bigrams -----------------------------------


def test_thai_bigrams() -> None:
    # "ภาษาไทย" is 7 code points: ภ า ษ า ไ ท ย.  Each is a base character (consonant, or a
    # spacing vowel such as า U+0E32 and the leading vowel ไ U+0E44, all category Lo), none is a
    # combining mark, so there are 7 grapheme clusters and 6 overlapping bigrams.
    assert tokenize("ภาษาไทย") == ["ภา", "าษ", "ษา", "าไ", "ไท", "ทย"]


def test_thai_marks_stay_on_their_base() -> None:
    # "ที่นี่" ("here") is ท + ี (vowel, Mn) + ่ (tone, Mn), then น + ี + ่: two clusters, one bigram.
    # Code-point bigrams would have produced "ที", "ี่", "่น", ... with marks cut from their base.
    assert tokenize("ที่นี่") == ["ที่นี่"]
    # "น้ำ" ("water"): NFKC decomposes SARA AM U+0E33 into NIKHAHIT U+0E4D (Mn) + SARA AA U+0E32
    # (Lo); clusters are น+้+ํ and า, so one bigram.  Queries go through NFKC too, so they match.
    assert tokenize("น้ำ") == ["น\u0e49\u0e4d\u0e32"]
    assert tokenize("น้ำตก") == ["น\u0e49\u0e4d\u0e32", "\u0e32ต", "ตก"]


def test_thai_no_token_starts_with_a_mark() -> None:
    tokens = tokenize("ภาษาไทยเป็นภาษาราชการของประเทศไทย ที่นี่มีน้ำตกสวยงามมาก")
    assert tokens
    assert not [t for t in tokens if regex.match(r"\p{M}", t)]


def test_lao_khmer_myanmar_are_bigrammed() -> None:
    assert tokenize("ພາສາລາວ") == ["ພາ", "າສ", "ສາ", "າລ", "ລາ", "າວ"]
    khmer = tokenize("ភាសាខ្មែរ")
    assert khmer == ["ភាសា", "សាខ្មែ", "ខ្មែរ"]
    myanmar = tokenize("မြန်မာ")
    assert myanmar == ["မြန်", "န်မ", "မာ"]
    assert not [t for t in khmer + myanmar if regex.match(r"\p{M}", t)]


def test_thai_next_to_latin_and_han() -> None:
    assert tokenize("ภาษาThai日本") == ["ภา", "าษ", "ษา", "thai", "日本"]


# --- Arabic normalisation -----------------------------------------------------------------------------


def test_arabic_diacritics_removed() -> None:
    assert tokenize("أَحْمَد") == tokenize("احمد") == ["احمد"]


def test_arabic_alef_variants_unified() -> None:
    assert tokenize("إسلام أحمد آخر ٱلكتاب") == ["اسلام", "احمد", "اخر", "الكتاب"]


def test_arabic_alef_maksura_ta_marbuta_tatweel() -> None:
    assert tokenize("مستشفى") == ["مستشفي"]
    assert tokenize("مدرسة") == tokenize("مدرسه") == ["مدرسه"]
    assert tokenize("كتـــاب") == ["كتاب"]


def test_arabic_digits_become_ascii() -> None:
    assert tokenize("عام ٢٠٢٤") == ["عام", "2024"]
    assert tokenize("२०२४") == ["2024"]


def test_persian_letters_and_zwnj() -> None:
    # Farsi yeh/keheh fold to Arabic yeh/kaf; ZWNJ separates, as a space would.
    assert tokenize("کتاب") == tokenize("كتاب")
    assert tokenize("می\u200cخواهم") == tokenize("می خواهم") == ["مي", "خواهم"]


def test_hebrew_points_removed() -> None:
    assert tokenize("שָׁלוֹם") == tokenize("שלום") == ["שלום"]


# --- Whole-word scripts ---------------------------------------------------------------------------------


def test_hindi_words_keep_matras_and_virama() -> None:
    tokens = tokenize("हिन्दी भाषा")
    assert tokens == ["हिन्दी", "भाषा"]
    assert "\u094d" in tokens[0]  # virama
    assert "\u093f" in tokens[0] and "\u0940" in tokens[0]  # matras ि and ी


def test_german_casefolding() -> None:
    assert tokenize("Straße") == ["strasse"]
    assert tokenize("STRASSE") == ["strasse"]
    assert tokenize("Über") == ["über"]


def test_turkish_dotted_capital_i() -> None:
    assert tokenize("İstanbul") == tokenize("istanbul") == tokenize("i\u0307stanbul") == ["istanbul"]


def test_cyrillic_greek_latin_words() -> None:
    assert tokenize("Привет, мир!") == ["привет", "мир"]
    assert tokenize("ΟΔΟΣ οδός") == ["οδοσ", "οδόσ"]  # casefold maps final sigma ς to σ
    assert tokenize("l'homme, don't e-mail") == ["l", "homme", "don", "t", "e", "mail"]


def test_fullwidth_and_invisible_characters() -> None:
    assert tokenize("ＰＹＴＨＯＮ３") == ["python3"]
    assert tokenize("hyphen\u00adation") == ["hyphenation"]
    assert tokenize("葛\U000e0100城") == tokenize("葛城") == ["葛城"]


@pytest.mark.parametrize("text", ["", "   ", "\n\t", "!!! ... ?", "—«»“”", "、。！？", "😀 👍"])
def test_no_tokens(text: str) -> None:
    assert tokenize(text) == []


# --- Properties -------------------------------------------------------------------------------------------

SAMPLES = [
    "The committee approved the new budget after a long debate.",
    "Die Straße war nach dem Unwetter gesperrt. Über hundert Menschen kamen.",
    "Le gouvernement a annoncé une réforme de l'éducation — « enfin » !",
    "Учёные обнаружили новый вид бабочек в горах.",
    "أَعْلَنَتِ الحكومة عن خطة جديدة لتطوير التعليم.",
    "भारत की राजधानी नई दिल्ली है। बच्चों ने हिन्दी भाषा सीखी।",
    "Η κυβέρνηση ανακοίνωσε νέα μέτρα για την οικονομία.",
    "שָׁלוֹם עֲלֵיכֶם, מה שלומך?",
    "ქართული ენა და Հայերեն լեզու",
    "İstanbul'da ﬁnans ½ x² ①",
]


@pytest.mark.parametrize("sample", SAMPLES)
def test_fast_path_matches_script_segmenting_path(sample: str) -> None:
    # Appending a Han character forces the slow path; the whole-word tokens must not change.
    assert tokenize(sample + " 中") == [*tokenize(sample), "中"]


@pytest.mark.parametrize("sample", SAMPLES)
def test_tokens_are_stable_and_clean(sample: str) -> None:
    tokens = tokenize(sample)
    assert tokens
    assert all(regex.fullmatch(r"[\p{L}\p{M}\p{N}]+", t) for t in tokens)
    assert tokenize(" ".join(tokens)) == tokens  # re-analysing the terms is a no-op


@pytest.mark.parametrize(
    ("document", "query"),
    [
        ("北京是中国的首都。", "北京"),
        ("東京都に住んでいます。", "東京"),
        ("서울에서 회의가 열렸습니다.", "서울"),
        ("ภาษาไทยเป็นภาษาราชการของประเทศไทย", "ประเทศไทย"),
        ("ذَهَبَ الطُّلَّابُ إِلَى المَدْرَسَةِ فِي الصَّبَاحِ.", "المدرسه"),
        ("Die Straße ist heute gesperrt.", "STRASSE"),
        ("बच्चों ने विद्यालय में हिन्दी भाषा सीखी।", "हिन्दी"),
        ("Учёные обнаружили новый вид бабочек.", "Бабочек"),
    ],
)
def test_query_and_document_share_tokens(document: str, query: str) -> None:
    query_tokens = tokenize(query)
    assert query_tokens
    assert set(query_tokens) <= set(tokenize(document))


def test_tokenize_many() -> None:
    expected = [["我爱", "爱北", "北京"], ["hello", "world"], []]
    assert tokenize_many(["我爱北京", "Hello World", ""]) == expected
    assert tokenize_many(iter(["a b"])) == [["a", "b"]]


# --- The fast pre-checks must never miss a character they guard ----------------------------------------


def test_special_script_prefilter_covers_all_of_unicode() -> None:
    everything = "".join(chr(cp) for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF)
    special = {m.group() for m in text_mod._SPECIAL.finditer(everything)}
    assert special
    missed = [f"U+{ord(c):04X}" for c in special if not text_mod._MAYBE_SPECIAL.match(c)]
    assert missed == []


def test_char_map_gate_covers_every_mapped_character() -> None:
    missed = [f"U+{cp:04X}" for cp in text_mod._CHAR_MAP if not text_mod._NEEDS_MAP.match(chr(cp))]
    assert missed == []
