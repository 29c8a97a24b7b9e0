"""Script-aware, language-independent text analysis for the BM25 index.

The index holds many languages and queries arrive without a language tag, so
the analyzer never asks which language a text is in: every decision is made
from the Unicode script of the characters.  An index and the queries run
against it must use the same analyzer; the index manifest records
:data:`ANALYZER_NAME`, and any change to the rules below needs a new name.

Pipeline (applied identically to documents and queries):

1. Unicode NFKC, then ``str.casefold`` (full case folding: "Straße" -> "strasse",
   final sigma -> sigma), then ``"i\\u0307"`` -> ``"i"`` (the casefold of
   Turkish "İ" would otherwise never match a typed "i"), then NFKC again if
   that changed anything, so it cannot leave unnormalised sequences behind.
   NFKC also folds fullwidth/halfwidth forms ("ＰＹＴＨＯＮ" -> "python",
   "ｶﾀｶﾅ" -> "カタカナ"), ligatures and presentation forms; note that it
   decomposes Thai SARA AM "ำ" into "ํ" + "า" (documents and queries alike).
2. Character mapping (one ``str.translate`` pass, skipped when the text holds
   none of the characters involved):

   =====================================  ==========================================
   Arabic harakat U+064B-U+065F, dagger   deleted (queries are typed without them)
   alef U+0670, tatweel U+0640, Quranic
   marks U+0610-U+061A, U+06D6-U+06ED
   أ إ آ ٱ                                 ا
   ى (alef maksura)                       ي
   ة (ta marbuta)                         ه (see below)
   ی (Farsi yeh), ک (keheh)               ي, ك  (Persian/Urdu keyboards vs Arabic)
   Hebrew points/cantillation (Mn in      deleted (same reason as Arabic harakat)
   U+0591-U+05C7)
   any non-ASCII decimal digit (\\p{Nd})   ASCII digit: "٢٠٢٤", "२०२४" -> "2024", so
                                          numbers match across scripts
   soft hyphen, ZWJ, word joiner, BOM,    deleted (invisible; they must not split or
   variation selectors                    alter a word).  ZWNJ is *not* deleted: it
                                          separates words, as in Lucene's Persian
                                          analysis ("می‌خواهم" == "می خواهم")
   =====================================  ==========================================

   Ta marbuta is folded into heh, as in Lucene's ArabicNormalizer and Larkey
   et al.'s light normalisation: informal text writes word-final ة as ه, and
   without stemming recall matters more than the few pairs it conflates
   (كتابة "writing" / كتابه "his book").
3. Tokens are maximal runs of ``[\\p{L}\\p{M}\\p{N}]`` (letters, combining
   marks, digits), so Devanagari matras/virama, Arabic and Thai marks stay
   inside their words; punctuation, symbols and spaces only separate.  A run
   is split wherever the script class changes ("python编程" -> "python" + CJK):

   =====================================  ==========================================
   Han, Hiragana, Katakana, Bopomofo,     overlapping bigrams over the whole run (one
   Hangul (incl. ー 々 〆 〇)              run may mix kanji and kana, as in Lucene's
                                          CJKBigramFilter); a one-character run is
                                          kept as a unigram
   Thai, Lao, Khmer, Myanmar              overlapping bigrams of grapheme clusters
                                          (``\\X``), so a vowel or tone mark is never
                                          separated from its base consonant
   everything else (Latin, Cyrillic,      the whole run is one token
   Greek, Arabic, Hebrew, Devanagari and
   other Indic scripts, Georgian, ...)
   =====================================  ==========================================

   Hangul is bigrammed although Korean separates words with spaces: Korean
   words carry agglutinated particles and endings ("서울에서" = "Seoul" + "in"),
   so whole-word tokens would rarely match a query; bigrams ("서울", "울에",
   "에서") match the stem without a morphological analyser, which is what
   Lucene's CJKAnalyzer does.

No stemming and no stopword list: both are language-specific, and BM25's IDF
already gives very frequent words a weight close to zero.  Accents are not
removed ("café" != "cafe").  Numbers split at punctuation ("3.14" -> "3", "14").

Speed: ASCII text takes a single ``re.findall``; other text without CJK/SEA
characters one NFKC/casefold pass plus one ``regex.findall``; only text with
such characters goes through script segmentation (about 1.3 s for 20,000 mixed
300-character passages on one core).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import Final

import regex

__all__ = ["ANALYZER_NAME", "tokenize", "tokenize_many"]

ANALYZER_NAME: Final = "xlir-script-v1"


def _build_char_map() -> dict[int, str | None]:
    table: dict[int, str | None] = {}

    def delete(first: int, last: int, *, only_marks: bool = False) -> None:
        for cp in range(first, last + 1):
            if not only_marks or unicodedata.category(chr(cp)) == "Mn":
                table[cp] = None

    # Arabic: harakat and other combining marks, dagger alef, tatweel, Quranic annotation.
    delete(0x064B, 0x065F)
    delete(0x0670, 0x0670)
    delete(0x0640, 0x0640)
    delete(0x0610, 0x061A)
    delete(0x06D6, 0x06ED, only_marks=True)
    for alef in "\u0623\u0625\u0622\u0671":  # أ إ آ ٱ
        table[ord(alef)] = "\u0627"  # ا
    table[0x0649] = "\u064a"  # ى -> ي
    table[0x0629] = "\u0647"  # ة -> ه
    table[0x06CC] = "\u064a"  # ی (Farsi yeh) -> ي
    table[0x06A9] = "\u0643"  # ک (keheh) -> ك
    # Hebrew points and cantillation marks.
    delete(0x0591, 0x05C7, only_marks=True)
    # Invisible characters that must not split or change a word.
    for cp in (0x00AD, 0x200D, 0x2060, 0xFEFF):
        table[cp] = None
    delete(0xFE00, 0xFE0F)  # variation selectors
    delete(0xE0100, 0xE01EF)  # ideographic variation selectors
    # Every non-ASCII decimal digit -> ASCII (all Nd characters live in planes 0-1).
    for cp in range(0x80, 0x20000):
        value = unicodedata.decimal(chr(cp), -1)
        if value >= 0:
            table[cp] = str(value)
    return table


def _gate_class(codepoints: Iterable[int]) -> str:
    """A stdlib ``re`` character class matching (at least) ``codepoints``, for fast pre-checks.

    ``re`` compiles the BMP part of a class into a bitmap but tests every non-BMP range one by
    one, so non-BMP members are coalesced into a few wider ranges: the class may match a few
    extra rare characters, never fewer.  It is only ever used to skip work that would be a
    no-op on text it does not match.
    """
    ranges: list[tuple[int, int]] = []
    for cp in sorted(set(codepoints)):
        gap = 0x1000 if cp > 0xFFFF else 1
        if ranges and cp - ranges[-1][1] <= gap and (cp > 0xFFFF) == (ranges[-1][1] > 0xFFFF):
            ranges[-1] = (ranges[-1][0], cp)
        else:
            ranges.append((cp, cp))
    parts = [f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges]
    return "[" + "".join(parts) + "]"


_CHAR_MAP: Final = _build_char_map()
_NEEDS_MAP: Final = re.compile(_gate_class(_CHAR_MAP))

# Scripts written without spaces.  CJK_BASE takes Script_Extensions so that ー (U+30FC,
# script Common) and 々 stay inside Japanese runs; punctuation is excluded by \p{L}\p{N}.
_CJK_BASE: Final = (
    r"[[\p{L}\p{N}]&&[\p{scx=Han}\p{scx=Hiragana}\p{scx=Katakana}\p{scx=Bopomofo}\p{scx=Hangul}]]"
)
_SEA_BASE: Final = r"[[\p{L}\p{N}]&&[\p{sc=Thai}\p{sc=Lao}\p{sc=Khmer}\p{sc=Myanmar}]]"
_WORD_BASE: Final = rf"[[\p{{L}}\p{{N}}]--{_CJK_BASE}--{_SEA_BASE}]"

# The characters that need script segmentation, and a fast stdlib superset of them (the
# blocks they live in; tests/test_text.py checks the superset over all of Unicode).  Text
# that the superset does not match takes the fast path, which gives identical tokens there.
_SPECIAL: Final = regex.compile(rf"(?V1)[{_CJK_BASE}{_SEA_BASE}]")
_MAYBE_SPECIAL: Final = re.compile(
    "[\u02c7-\u02cb"  # Bopomofo tone letters (Script_Extensions=Bopomofo)
    "\u0e00-\u0eff"  # Thai, Lao
    "\u1000-\u11ff"  # Myanmar, Hangul Jamo
    "\u1780-\u17ff\u19e0-\u19ff"  # Khmer, Khmer Symbols
    "\u2e80-\u2fdf\u3000-\u9fff"  # CJK radicals and symbols, kana, Bopomofo, jamo, ideographs
    "\ua960-\ua97f\ua9e0-\ua9ff\uaa60-\uaa7f"  # Hangul Jamo Ext-A, Myanmar Ext-B/A
    "\uac00-\ud7ff\uf900-\ufaff\uff00-\uffef"  # Hangul, CJK compat ideographs, half/fullwidth
    "\U000116d0-\U000116ff"  # Myanmar Ext-C
    "\U00016fe0-\U00016fff\U0001aff0-\U0001b2ff"  # ideographic symbols, kana supplements
    "\U0001d360-\U0001d37f"  # counting rod numerals
    "\U00020000-\U0003ffff]"  # CJK Ext B-H, compatibility supplement
)
# Common case: no CJK/SEA letters, a token is simply a run of letters, marks and digits.
_RUN: Final = regex.compile(r"[\p{L}\p{M}\p{N}]+")
_ASCII_RUN: Final = re.compile(r"[a-z0-9]+")
# General case: the same runs, split where the script class changes.  Combining marks
# attach to the preceding base character; a run of marks with no base is a word.  A CJK
# run without combining marks or conjoining jamo (nearly all of them, after NFKC) is
# "cjk" and bigrammed by code point; other CJK runs are "clustered" like the SEA scripts.
_JAMO: Final = r"[\u1100-\u11ff\ua960-\ua97f\ud7b0-\ud7ff]"
_SEGMENT: Final = regex.compile(
    rf"(?V1)(?P<cjk>(?>[{_CJK_BASE}--{_JAMO}]+)(?![\p{{M}}{_JAMO}]))"
    rf"|(?P<clustered>(?:{_CJK_BASE}\p{{M}}*)+|(?:{_SEA_BASE}\p{{M}}*)+)"
    rf"|(?P<word>\p{{M}}*(?:{_WORD_BASE}\p{{M}}*)+|\p{{M}}+)"
)
_GRAPHEME: Final = regex.compile(r"\X")


def _normalize(text: str) -> str:
    normalized = unicodedata.normalize("NFKC", text)
    text = normalized.casefold()
    if "\u0307" in text:
        text = text.replace("i\u0307", "i")
    if text != normalized:  # caseless scripts skip the second (sometimes costly) NFKC pass
        text = unicodedata.normalize("NFKC", text)
    if _NEEDS_MAP.search(text):
        text = text.translate(_CHAR_MAP)
    return text


def _bigrams(units: list[str]) -> list[str]:
    """Overlapping pairs of ``units``; a single unit is kept as it is."""
    if len(units) < 2:
        return units
    return list(map(str.__add__, units, units[1:]))


def tokenize(text: str) -> list[str]:
    """Split ``text`` into BM25 index terms (see the module docstring for the rules).

    >>> tokenize("Python编程 2024")
    ['python', '编程', '2024']
    """
    if text.isascii():
        return _ASCII_RUN.findall(text.lower())
    text = _normalize(text)
    if not _MAYBE_SPECIAL.search(text):
        return _RUN.findall(text)
    tokens: list[str] = []
    for cjk, clustered, word in _SEGMENT.findall(text):
        if word:
            tokens.append(word)
        elif len(cjk) > 1:
            tokens.extend(map(str.__add__, cjk, cjk[1:]))
        elif cjk:
            tokens.append(cjk)
        else:
            tokens.extend(_bigrams(_GRAPHEME.findall(clustered)))
    return tokens


def tokenize_many(texts: Iterable[str]) -> list[list[str]]:
    """Tokenize each text in ``texts``; the result is in input order."""
    return [tokenize(text) for text in texts]
