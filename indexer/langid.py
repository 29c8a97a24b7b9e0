"""Language codes and document language identification.

:func:`normalize_lang` maps ISO 639-1, ISO 639-2/T, ISO 639-2/B, ISO 639-3 and BCP-47-style
tags to lowercase ISO 639-1 wherever one exists, so that every language code the service
stores or compares has exactly one spelling:

==========================  ============================================================
``"EN"``, ``"eng"``         ``"en"``
``"deu"``, ``"ger"``        ``"de"`` (ISO 639-2 terminology and bibliographic codes)
``"zh-CN"``, ``"pt_BR"``    ``"zh"``, ``"pt"`` (region, script and other subtags dropped)
``"zh-yue-HK"``             ``"zh"`` (a three-letter extlang subtag names the language)
``"cmn"``, ``"yue"``        ``"zh"`` (an individual language inside an ISO 639-3
``"arb"``, ``"arz"``        ``"ar"``  macrolanguage that has an ISO 639-1 code maps to it)
``"iw"``, ``"in"``          ``"he"``, ``"id"`` (withdrawn ISO 639-1 codes)
``"haw"``, ``"und"``        unchanged: well formed, no ISO 639-1 code
``""``, ``"e"``, ``"en1"``  :class:`ValueError`
==========================  ============================================================

Folding macrolanguage members loses distinctions such as Cantonese versus Mandarin; that is
deliberate: py3langid readily labels short Mandarin or Modern Standard Arabic text ``wuu``
or ``arz``, and a per-language filter on ``zh`` or ``ar`` should still find those texts.

:class:`LanguageDetector` wraps py3langid and always returns normalised codes.

**Short queries** (issue 19). Free to choose among all ~100 of its languages, py3langid gets a query of a few words
wrong about half the time; the service knows which languages an index holds, so a query's language is chosen among
them: :meth:`LanguageDetector.posteriors` gives the model's posteriors (macrolanguage members folded into their
code) renormalised over the allowed codes, without touching the shared model (no ``set_languages``: thread-safe).
:func:`embedding_posteriors` turns the cosines of the query's raw vector to each language's mean embedding into a
second distribution, :func:`combine` multiplies the two, and :func:`best` gives the winner and its posterior, the
confidence (``benchmarks/RESULTS.md`` 7.2 has the figures and the tuned temperature and threshold).
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

__all__ = [
    "KNOWN_LANGS", "UNDETERMINED", "LangGuess", "LanguageDetector", "best", "combine", "embedding_posteriors",
    "known_lang", "normalize_lang", "restrict",
]

UNDETERMINED: Final = "und"
"""BCP-47 "undetermined": returned for text with no letters or no recognisable language."""

# ISO 639-1 -> its ISO 639-2 codes (terminology first, then bibliographic where they differ);
# the complete ISO 639-1 list, from the Debian iso-codes package (iso_639-2.json).
_ISO639_1: Final[dict[str, tuple[str, ...]]] = {
    "aa": ("aar",),  # Afar
    "ab": ("abk",),  # Abkhazian
    "ae": ("ave",),  # Avestan
    "af": ("afr",),  # Afrikaans
    "ak": ("aka",),  # Akan
    "am": ("amh",),  # Amharic
    "an": ("arg",),  # Aragonese
    "ar": ("ara",),  # Arabic
    "as": ("asm",),  # Assamese
    "av": ("ava",),  # Avaric
    "ay": ("aym",),  # Aymara
    "az": ("aze",),  # Azerbaijani
    "ba": ("bak",),  # Bashkir
    "be": ("bel",),  # Belarusian
    "bg": ("bul",),  # Bulgarian
    "bh": ("bih",),  # Bihari languages
    "bi": ("bis",),  # Bislama
    "bm": ("bam",),  # Bambara
    "bn": ("ben",),  # Bengali
    "bo": ("bod", "tib"),  # Tibetan
    "br": ("bre",),  # Breton
    "bs": ("bos",),  # Bosnian
    "ca": ("cat",),  # Catalan
    "ce": ("che",),  # Chechen
    "ch": ("cha",),  # Chamorro
    "co": ("cos",),  # Corsican
    "cr": ("cre",),  # Cree
    "cs": ("ces", "cze"),  # Czech
    "cu": ("chu",),  # Church Slavic
    "cv": ("chv",),  # Chuvash
    "cy": ("cym", "wel"),  # Welsh
    "da": ("dan",),  # Danish
    "de": ("deu", "ger"),  # German
    "dv": ("div",),  # Divehi
    "dz": ("dzo",),  # Dzongkha
    "ee": ("ewe",),  # Ewe
    "el": ("ell", "gre"),  # Greek, Modern (1453-)
    "en": ("eng",),  # English
    "eo": ("epo",),  # Esperanto
    "es": ("spa",),  # Spanish
    "et": ("est",),  # Estonian
    "eu": ("eus", "baq"),  # Basque
    "fa": ("fas", "per"),  # Persian
    "ff": ("ful",),  # Fulah
    "fi": ("fin",),  # Finnish
    "fj": ("fij",),  # Fijian
    "fo": ("fao",),  # Faroese
    "fr": ("fra", "fre"),  # French
    "fy": ("fry",),  # Western Frisian
    "ga": ("gle",),  # Irish
    "gd": ("gla",),  # Gaelic
    "gl": ("glg",),  # Galician
    "gn": ("grn",),  # Guarani
    "gu": ("guj",),  # Gujarati
    "gv": ("glv",),  # Manx
    "ha": ("hau",),  # Hausa
    "he": ("heb",),  # Hebrew
    "hi": ("hin",),  # Hindi
    "ho": ("hmo",),  # Hiri Motu
    "hr": ("hrv",),  # Croatian
    "ht": ("hat",),  # Haitian
    "hu": ("hun",),  # Hungarian
    "hy": ("hye", "arm"),  # Armenian
    "hz": ("her",),  # Herero
    "ia": ("ina",),  # Interlingua (International Auxiliary Language Association)
    "id": ("ind",),  # Indonesian
    "ie": ("ile",),  # Interlingue
    "ig": ("ibo",),  # Igbo
    "ii": ("iii",),  # Sichuan Yi
    "ik": ("ipk",),  # Inupiaq
    "io": ("ido",),  # Ido
    "is": ("isl", "ice"),  # Icelandic
    "it": ("ita",),  # Italian
    "iu": ("iku",),  # Inuktitut
    "ja": ("jpn",),  # Japanese
    "jv": ("jav",),  # Javanese
    "ka": ("kat", "geo"),  # Georgian
    "kg": ("kon",),  # Kongo
    "ki": ("kik",),  # Kikuyu
    "kj": ("kua",),  # Kuanyama
    "kk": ("kaz",),  # Kazakh
    "kl": ("kal",),  # Kalaallisut
    "km": ("khm",),  # Central Khmer
    "kn": ("kan",),  # Kannada
    "ko": ("kor",),  # Korean
    "kr": ("kau",),  # Kanuri
    "ks": ("kas",),  # Kashmiri
    "ku": ("kur",),  # Kurdish
    "kv": ("kom",),  # Komi
    "kw": ("cor",),  # Cornish
    "ky": ("kir",),  # Kirghiz
    "la": ("lat",),  # Latin
    "lb": ("ltz",),  # Luxembourgish
    "lg": ("lug",),  # Ganda
    "li": ("lim",),  # Limburgan
    "ln": ("lin",),  # Lingala
    "lo": ("lao",),  # Lao
    "lt": ("lit",),  # Lithuanian
    "lu": ("lub",),  # Luba-Katanga
    "lv": ("lav",),  # Latvian
    "mg": ("mlg",),  # Malagasy
    "mh": ("mah",),  # Marshallese
    "mi": ("mri", "mao"),  # Maori
    "mk": ("mkd", "mac"),  # Macedonian
    "ml": ("mal",),  # Malayalam
    "mn": ("mon",),  # Mongolian
    "mr": ("mar",),  # Marathi
    "ms": ("msa", "may"),  # Malay
    "mt": ("mlt",),  # Maltese
    "my": ("mya", "bur"),  # Burmese
    "na": ("nau",),  # Nauru
    "nb": ("nob",),  # Bokmål, Norwegian
    "nd": ("nde",),  # Ndebele, North
    "ne": ("nep",),  # Nepali
    "ng": ("ndo",),  # Ndonga
    "nl": ("nld", "dut"),  # Dutch
    "nn": ("nno",),  # Norwegian Nynorsk
    "no": ("nor",),  # Norwegian
    "nr": ("nbl",),  # Ndebele, South
    "nv": ("nav",),  # Navajo
    "ny": ("nya",),  # Chichewa
    "oc": ("oci",),  # Occitan (post 1500)
    "oj": ("oji",),  # Ojibwa
    "om": ("orm",),  # Oromo
    "or": ("ori",),  # Oriya
    "os": ("oss",),  # Ossetian
    "pa": ("pan",),  # Panjabi
    "pi": ("pli",),  # Pali
    "pl": ("pol",),  # Polish
    "ps": ("pus",),  # Pushto
    "pt": ("por",),  # Portuguese
    "qu": ("que",),  # Quechua
    "rm": ("roh",),  # Romansh
    "rn": ("run",),  # Rundi
    "ro": ("ron", "rum"),  # Romanian
    "ru": ("rus",),  # Russian
    "rw": ("kin",),  # Kinyarwanda
    "sa": ("san",),  # Sanskrit
    "sc": ("srd",),  # Sardinian
    "sd": ("snd",),  # Sindhi
    "se": ("sme",),  # Northern Sami
    "sg": ("sag",),  # Sango
    "si": ("sin",),  # Sinhala
    "sk": ("slk", "slo"),  # Slovak
    "sl": ("slv",),  # Slovenian
    "sm": ("smo",),  # Samoan
    "sn": ("sna",),  # Shona
    "so": ("som",),  # Somali
    "sq": ("sqi", "alb"),  # Albanian
    "sr": ("srp",),  # Serbian
    "ss": ("ssw",),  # Swati
    "st": ("sot",),  # Sotho, Southern
    "su": ("sun",),  # Sundanese
    "sv": ("swe",),  # Swedish
    "sw": ("swa",),  # Swahili
    "ta": ("tam",),  # Tamil
    "te": ("tel",),  # Telugu
    "tg": ("tgk",),  # Tajik
    "th": ("tha",),  # Thai
    "ti": ("tir",),  # Tigrinya
    "tk": ("tuk",),  # Turkmen
    "tl": ("tgl",),  # Tagalog
    "tn": ("tsn",),  # Tswana
    "to": ("ton",),  # Tonga (Tonga Islands)
    "tr": ("tur",),  # Turkish
    "ts": ("tso",),  # Tsonga
    "tt": ("tat",),  # Tatar
    "tw": ("twi",),  # Twi
    "ty": ("tah",),  # Tahitian
    "ug": ("uig",),  # Uighur
    "uk": ("ukr",),  # Ukrainian
    "ur": ("urd",),  # Urdu
    "uz": ("uzb",),  # Uzbek
    "ve": ("ven",),  # Venda
    "vi": ("vie",),  # Vietnamese
    "vo": ("vol",),  # Volapük
    "wa": ("wln",),  # Walloon
    "wo": ("wol",),  # Wolof
    "xh": ("xho",),  # Xhosa
    "yi": ("yid",),  # Yiddish
    "yo": ("yor",),  # Yoruba
    "za": ("zha",),  # Zhuang
    "zh": ("zho", "chi"),  # Chinese
    "zu": ("zul",),  # Zulu
}

# ISO 639-1 codes withdrawn in favour of another two-letter code.
_WITHDRAWN: Final[dict[str, str]] = {"iw": "he", "in": "id", "ji": "yi", "jw": "jv", "mo": "ro"}

# ISO 639-3 macrolanguages that have an ISO 639-1 code -> their main individual languages
# (SIL ISO 639-3 macrolanguage mappings; the members seen in practice, not every one).
_MACROLANGUAGE_MEMBERS: Final[dict[str, tuple[str, ...]]] = {
    "ar": (
        "aao", "abh", "abv", "acm", "acq", "acw", "acx", "acy", "adf", "aeb", "aec", "afb",
        "ajp", "apc", "apd", "arb", "arq", "ars", "ary", "arz", "auz", "avl", "ayh", "ayl",
        "ayn", "ayp", "pga", "shu", "ssh",
    ),
    "ay": ("ayc", "ayr"),
    "az": ("azb", "azj"),
    "et": ("ekk", "vro"),
    "fa": ("pes", "prs"),
    "ff": ("ffm", "fub", "fuc", "fue", "fuf", "fuh", "fui", "fuq", "fuv"),
    "gn": ("gnw", "gug", "gui", "gun", "nhd"),
    "ku": ("ckb", "kmr", "sdh"),
    "lv": ("ltg", "lvs"),
    "mg": ("bhr", "bmm", "bzc", "msh", "plt", "skg", "tdx", "tkg", "txy", "xmv", "xmw"),
    "mn": ("khk", "mvf"),
    "ms": ("zlm", "zsm"),
    "ne": ("dty", "npi"),
    "om": ("gax", "gaz", "hae", "orc"),
    "or": ("ory", "spv"),
    "ps": ("pbt", "pbu", "pst"),
    "qu": ("qub", "qud", "quf", "qug", "quh", "qul", "qup", "qus", "quy", "quz", "qvi", "qxu"),
    "sq": ("aae", "aat", "aln", "als"),
    "sw": ("swc", "swh"),
    "uz": ("uzn", "uzs"),
    "yi": ("ydd", "yih"),
    "zh": (
        "cdo", "cjy", "cmn", "cnp", "cpx", "csp", "czh", "czo", "gan", "hak", "hsn", "lzh",
        "mnp", "nan", "wuu", "yue",
    ),
}


def _build_alias_table() -> dict[str, str]:
    table = dict(_WITHDRAWN)
    for macro, members in _MACROLANGUAGE_MEMBERS.items():
        table.update(dict.fromkeys(members, macro))
    for alpha2, alpha3s in _ISO639_1.items():
        table[alpha2] = alpha2
        table.update(dict.fromkeys(alpha3s, alpha2))
    return table


_TO_ISO639_1: Final = _build_alias_table()
_PRIMARY: Final = re.compile(r"[a-z]{2,3}")
_SUBTAG: Final = re.compile(r"[a-z0-9]{1,8}")
_EXTLANG: Final = re.compile(r"[a-z]{3}")


def normalize_lang(code: str) -> str:
    """Return the lowercase ISO 639-1 code for ``code``, or ``code`` lowercased if none exists.

    ``code`` is an ISO 639 code or a BCP-47-like tag (``-`` or ``_`` separated, surrounding
    whitespace ignored).  Only the language is kept: ``"zh-Hant-TW"`` -> ``"zh"``.

    Raises:
        ValueError: ``code`` is not a well-formed tag: the language must be two or three ASCII
            letters, and every further subtag one to eight ASCII letters or digits.
    """
    if not isinstance(code, str):
        raise TypeError(f"language code must be a str, not {type(code).__name__}")
    code = code.strip()
    subtags = code.lower().replace("_", "-").split("-") if code.isascii() else [""]
    primary = subtags[0]
    if not _PRIMARY.fullmatch(primary):
        raise ValueError(
            f"malformed language code {code!r}: the language must be 2 or 3 ASCII letters "
            "(ISO 639-1 or 639-2/3), e.g. 'en', 'eng' or 'en-US'"
        )
    for subtag in subtags[1:]:
        if not _SUBTAG.fullmatch(subtag):
            raise ValueError(
                f"malformed language code {code!r}: subtag {subtag!r} must be 1-8 ASCII letters or digits"
            )
    if len(primary) == 2 and len(subtags) > 1 and _EXTLANG.fullmatch(subtags[1]):
        primary = subtags[1]  # BCP-47 extlang: "zh-yue" means the language "yue"
    return _TO_ISO639_1.get(primary, primary)


_LETTER: Final = re.compile(r"[^\W\d_]")


@dataclass(frozen=True)
class _Model:
    identifier: Any  # py3langid.langid.LanguageIdentifier (untyped)
    labels: dict[str, str]  # py3langid label -> normalised code
    featureless: float  # the top probability when the model sees no features at all


def _load_model() -> _Model:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    # py3langid 0.4 ships an npz model (from_model_file); 0.3 a pickled one (from_pickled_model).
    load = getattr(LanguageIdentifier, "from_model_file", None) or LanguageIdentifier.from_pickled_model
    identifier = load(MODEL_FILE, norm_probs=True)
    classes: list[str] = list(identifier.nb_classes)
    labels = {label: normalize_lang(label) for label in classes}
    labels["zxx"] = UNDETERMINED  # py3langid's "no linguistic content" class
    # With no features the probabilities are uniform over the model's columns, and a label
    # backed by k columns (py3langid folds script variants, e.g. two "sr" columns) gets k/n.
    featureless = max(Counter(classes).values()) / len(classes)
    return _Model(identifier, labels, featureless)


class LanguageDetector:
    """Document language identification with py3langid, returning normalised ISO 639-1 codes.

    The model (about 0.5 s to load) is loaded on the first call to :meth:`detect`, never at
    import or construction; loading is thread-safe, and one detector may be shared by many
    threads.  Only the first ``max_chars`` characters of a text are classified: that is
    plenty to identify a language, and it bounds the cost of a long document.

    :meth:`detect` returns :data:`UNDETERMINED` (``"und"``) for text without letters, for
    text in which the model finds nothing it knows, and for py3langid's ``zxx`` class.
    """

    def __init__(self, *, max_chars: int = 2000) -> None:
        if max_chars < 1:
            raise ValueError(f"max_chars must be positive, got {max_chars}")
        self.max_chars = max_chars
        self._model: _Model | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        """Whether the py3langid model has been loaded."""
        return self._model is not None

    def _get_model(self) -> _Model:
        model = self._model
        if model is None:
            with self._lock:
                model = self._model
                if model is None:
                    model = self._model = _load_model()
        return model

    def detect(self, text: str, among: Collection[str] | None = None) -> str:
        """The language of ``text`` as a normalised code, or ``"und"``; with ``among``, the most likely of those
        codes (``"und"`` when the model finds nothing, or nothing of ``among``)."""
        if among is not None:
            return best(self.posteriors(text, among)).lang
        text = text[: self.max_chars]
        if not _LETTER.search(text):
            return UNDETERMINED
        model = self._get_model()
        label, confidence = model.identifier.classify(text)
        if confidence <= model.featureless + 1e-6:
            return UNDETERMINED
        return model.labels.get(label) or normalize_lang(label)

    def posteriors(self, text: str, among: Collection[str] | None = None) -> dict[str, float]:
        """The model's posterior of each normalised code for ``text`` (the macrolanguage members and script
        variants of a code summed into it), renormalised over ``among`` when given; best first, summing to 1.
        Empty when the text has no letters or the model sees no feature in it (nothing to go on). The shared
        model is only read (``rank``), never restricted in place."""
        text = text[: self.max_chars]
        if not _LETTER.search(text):
            return {}
        model = self._get_model()
        ranked = model.identifier.rank(text)
        if not ranked or ranked[0][1] <= model.featureless + 1e-6:  # uniform: no feature seen
            return {}
        folded: dict[str, float] = {}
        for label, p in ranked:
            code = model.labels.get(label) or normalize_lang(label)
            folded[code] = folded.get(code, 0.0) + float(p)
        folded.pop(UNDETERMINED, None)
        return restrict(folded, folded if among is None else among)

    def detect_many(self, texts: Iterable[str]) -> list[str]:
        """:meth:`detect` for each text, in input order."""
        return [self.detect(text) for text in texts]


KNOWN_LANGS: Final = frozenset(_ISO639_1)
"""The ISO 639-1 codes this module knows (what a query's ``lang`` may name)."""


def known_lang(code: str) -> str:
    """``normalize_lang`` that also rejects codes without an ISO 639-1 equivalent, listing the accepted ones."""
    lang = normalize_lang(code)
    if lang not in KNOWN_LANGS:
        raise ValueError(f"unknown language code {code!r}; accepted ISO 639-1 codes: {', '.join(sorted(KNOWN_LANGS))}")
    return lang


# --------------------------------------------------------------------------------------------------
# Posteriors over a set of candidate languages (pure)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LangGuess:
    """A query's language: the most likely candidate (``"und"`` when nothing points to one), its posterior (the
    confidence, 0 for ``"und"``) and the posterior of every candidate, best first (empty for ``"und"``)."""

    lang: str
    confidence: float
    probs: Mapping[str, float] = field(default_factory=dict)


def restrict(probs: Mapping[str, float], among: Collection[str]) -> dict[str, float]:
    """``probs`` kept for the codes in ``among`` and renormalised to sum 1, best first (ties: code order); empty
    when none of them has any mass."""
    kept = {code: float(p) for code, p in probs.items() if code in among and p > 0}
    total = sum(kept.values())
    if total <= 0:
        return {}
    return {code: p / total for code, p in sorted(kept.items(), key=lambda kv: (-kv[1], kv[0]))}


def embedding_posteriors(vector: np.ndarray, means: np.ndarray, langs: Sequence[str],
                         temperature: float) -> dict[str, float]:
    """``softmax(cos(vector, means[i]) / temperature)`` over ``langs`` (one row of ``means`` each), best first:
    how close the raw query vector lies to each language's mean embedding."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if len(langs) != len(means):
        raise ValueError(f"{len(langs)} languages for {len(means)} means")
    if not len(langs):
        return {}
    m = np.asarray(means, dtype=np.float64)
    v = np.asarray(vector, dtype=np.float64)
    norms = np.linalg.norm(m, axis=1) * (np.linalg.norm(v) or 1.0)
    cos = (m @ v) / np.where(norms > 0, norms, 1.0)
    z = np.exp((cos - cos.max()) / temperature)
    return restrict(dict(zip(langs, (z / z.sum()).tolist(), strict=True)), langs)


def combine(*dists: Mapping[str, float]) -> dict[str, float]:
    """The normalised product of several posteriors over the same candidates (independent evidence); an empty
    distribution (no evidence) is left out, and a code missing from one of the others gets nothing."""
    present = [d for d in dists if d]
    if not present:
        return {}
    out = {code: float(p) for code, p in present[0].items()}
    for d in present[1:]:
        out = {code: p * float(d.get(code, 0.0)) for code, p in out.items()}
    return restrict(out, out)


def best(probs: Mapping[str, float]) -> LangGuess:
    """The :class:`LangGuess` of a posterior (``"und"`` with confidence 0 when it is empty)."""
    ranked = restrict(probs, probs)
    if not ranked:
        return LangGuess(UNDETERMINED, 0.0, {})
    lang = next(iter(ranked))
    return LangGuess(lang, ranked[lang], ranked)
