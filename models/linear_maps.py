"""The linear-map student (issue 20, student 1): e5-small's vectors through one linear map per language onto the
English space, fitted in closed form on NTREX training pairs ("Linear Cross-Lingual Mapping of Sentence
Embeddings").

**Fitting** (pure numpy, row vectors, a map ``W`` sends ``x`` to ``x @ W``): for each language, ``X`` = the base
encoder's vectors of the translations of NTREX's training lines, ``Y`` = its vectors of the same lines in English,
both with the ``passage: `` prefix (the documents are what a map has to move; one embedding per text, and the
query side gets the same map when ``apply="both"``). Methods:

- :func:`least_squares` (``lstsq``): ``argmin ||XW - Y||``;
- :func:`ridge` (``ridge``): least squares pulled toward the identity, ``argmin ||XW - Y||^2 + lam ||W - I||^2``
  (ridge toward zero shrinks every vector toward the origin, which re-normalisation undoes only in part);
- :func:`procrustes` (``procrustes``): the orthogonal ``W`` closest to the least-squares one (Schonemann);

then :func:`shrink`: ``W = (1 - a) W_fit + a I`` (``a = 1``: the identity, e5-small itself). A translation's
language has several NTREX codes for some languages (``por`` and ``por-BR``, ``zho-CN`` and ``zho-TW``): their pairs
are pooled into one map, keyed by the py3langid label the encoder detects (:data:`NTREX_LABELS`).

**Encoding** (:class:`LinearMapEncoder`): the base encoder's vectors, each text's language detected by py3langid
(restricted to the languages NTREX covers and English), that language's map applied (English, undetermined text and
languages without a map: identity) and the result re-normalised. ``apply="passages"`` maps documents only and
leaves queries as the base encodes them.

**Stored** (:func:`save_maps`): the maps minus the identity (``W - I``: small entries, so int8 rows with a scale
each lose little), packed by :func:`models.students.pack`, the settings as JSON in the file's metadata; the model
folder is that one file (``maps.safetensors``) plus the ``xlir-model.json`` that ``xlir models fetch`` writes.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.base import ProgressFn, folder_checksum
from models.registry import ResolvedModel
from models.students import TrainOptions, append_log, load_packed, save_packed
from xlir.errors import ModelInvalid

log = logging.getLogger(__name__)

METHODS = ("lstsq", "ridge", "procrustes")
APPLY = ("both", "passages")
ENGLISH = "en"
UNDETERMINED = "und"
WEIGHTS_NAME = "maps.safetensors"
MAP_PREFIX = "map."
MAX_CHARS = 500  # of a text, for language identification
# NTREX code -> the py3langid label its map is stored and detected under (codes py3langid does not know have no
# map: bem bod ckb-Arab div ewe fij fuc hmn mey mri nde nya shi smo snd-Arab ssw tah tir ton tsn ven wol)
NTREX_LABELS: dict[str, str] = {
    "afr": "af", "amh": "am", "arb": "ar", "aze-Latn": "az", "bak": "ba", "bel": "be", "ben": "bn", "bos": "bs",
    "bul": "bg", "cat": "ca", "ces": "cs", "cym": "cy", "dan": "da", "deu": "de", "dzo": "dz", "ell": "el",
    "est": "et", "fao": "fo", "fas": "fa", "prs": "fa", "fin": "fi", "fra": "fr", "fra-CA": "fr", "gle": "ga",
    "glg": "gl", "guj": "gu", "hau": "ha", "heb": "he", "hin": "hi", "hrv": "hr", "hun": "hu", "hye": "hy",
    "ibo": "ig", "ind": "id", "isl": "is", "ita": "it", "jpn": "ja", "kan": "kn", "kaz": "kk", "khm": "km",
    "kin": "rw", "kir": "ky", "kmr": "ku", "kor": "ko", "lao": "lo", "lav": "lv", "lit": "lt", "ltz": "lb",
    "mal": "ml", "mar": "mr", "mkd": "mk", "mlg": "mg", "mlt": "mt", "mon": "mn", "msa": "ms", "mya": "my",
    "nep": "ne", "nld": "nl", "nno": "nn", "nob": "no", "nso": "nso", "orm": "om", "pan": "pa", "pol": "pl",
    "por": "pt", "por-BR": "pt", "pus": "ps", "ron": "ro", "rus": "ru", "sin": "si", "slk": "sk", "slv": "sl",
    "sna-Latn": "sn", "som": "so", "spa": "es", "spa-MX": "es", "sqi": "sq", "srp-Cyrl": "sr", "srp-Latn": "sr",
    "swa": "sw", "swe": "sv", "tam": "ta", "tat": "tt", "tgk-Cyrl": "tg", "tha": "th", "tuk": "tk", "tur": "tr",
    "uig": "ug", "ukr": "uk", "urd": "ur", "uzb": "uz", "vie": "vi", "xho": "xh", "yor": "yo", "yue": "yue",
    "zho-CN": "zh", "zho-TW": "zh", "zul": "zu",
}
# py3langid labels that are read as another label's language (macrolanguage members, script variants)
LABEL_ALIASES: dict[str, str] = {"arz": "ar", "ary": "ar", "wuu": "zh", "uzs": "uz", "sdh": "ku"}
_LETTER = re.compile(r"[^\W\d_]")


# ---- fitting: pure numpy ----

def least_squares(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``W`` minimising ``||x W - y||`` (minimum-norm when ``x`` is rank-deficient)."""
    w, *_ = np.linalg.lstsq(np.asarray(x, np.float64), np.asarray(y, np.float64), rcond=None)
    return np.asarray(w, dtype=np.float64)


def ridge(x: np.ndarray, y: np.ndarray, lam: float) -> np.ndarray:
    """``W`` minimising ``||x W - y||^2 + lam ||W - I||^2``: ``I + (x'x + lam I)^-1 x'(y - x)``."""
    if lam < 0:
        raise ValueError(f"ridge lam must be >= 0, got {lam}")
    x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
    eye = np.eye(x64.shape[1])
    return eye + np.linalg.solve(x64.T @ x64 + lam * eye, x64.T @ (y64 - x64))


def procrustes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The orthogonal ``W`` minimising ``||x W - y||``: ``U V'`` of the SVD ``x'y = U S V'``."""
    u, _, vt = np.linalg.svd(np.asarray(x, np.float64).T @ np.asarray(y, np.float64))
    return np.asarray(u @ vt, dtype=np.float64)


def shrink(w: np.ndarray, a: float) -> np.ndarray:
    """``(1 - a) w + a I``: ``a = 0`` the fitted map, ``a = 1`` the identity."""
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"shrinkage must be within [0, 1], got {a}")
    return (1.0 - a) * np.asarray(w, np.float64) + a * np.eye(w.shape[0])


def fit_map(x: np.ndarray, y: np.ndarray, method: str = "ridge", shrinkage: float = 0.0,
            lam: float = 10.0) -> np.ndarray:
    """One language's map (float32) from paired rows ``x`` (translations) and ``y`` (English)."""
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(f"paired vectors must have the same 2-D shape, got {x.shape} and {y.shape}")
    if method == "lstsq":
        w = least_squares(x, y)
    elif method == "ridge":
        w = ridge(x, y, lam)
    elif method == "procrustes":
        w = procrustes(x, y)
    else:
        raise ValueError(f"unknown fitting method {method!r}; choose from {', '.join(METHODS)}")
    return shrink(w, shrinkage).astype(np.float32)


def normalize(vecs: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(vecs / norms, dtype=np.float32)


def apply_maps(vecs: np.ndarray, langs: Sequence[str], maps: Mapping[str, np.ndarray]) -> np.ndarray:
    """Row ``i`` through ``maps[langs[i]]`` (identity when there is none), re-normalised."""
    out = np.array(vecs, dtype=np.float32, copy=True)
    codes = np.asarray(langs, dtype=object)
    for lang in set(langs):
        w = maps.get(lang)
        if w is not None:
            rows = np.flatnonzero(codes == lang)
            out[rows] = out[rows] @ w
    return normalize(out)


# ---- language identification ----

class LanguageGuesser:
    """py3langid over a fixed set of labels (aliases folded), loaded on first use; thread-safe (the identifier is
    restricted once, then only read)."""

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = sorted(set(labels) | {ENGLISH})
        self._identifier: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        if self._identifier is None:
            with self._lock:
                if self._identifier is None:
                    from py3langid.langid import MODEL_FILE, LanguageIdentifier

                    load = getattr(LanguageIdentifier, "from_model_file", None) or \
                        LanguageIdentifier.from_pickled_model
                    ident = load(MODEL_FILE, norm_probs=False)
                    known = set(ident.nb_classes)
                    wanted = {lab for lab in self.labels if lab in known}
                    wanted |= {alias for alias, lab in LABEL_ALIASES.items() if lab in wanted and alias in known}
                    ident.set_languages(sorted(wanted))
                    self._identifier = ident
        return self._identifier

    def detect(self, texts: Sequence[str]) -> list[str]:
        """Each text's label (``und`` for text without letters)."""
        if not texts:
            return []
        ident = self._load()
        out: list[str] = []
        for text in texts:
            cut = text[:MAX_CHARS]
            if not _LETTER.search(cut):
                out.append(UNDETERMINED)
                continue
            label = str(ident.classify(cut)[0])
            out.append(LABEL_ALIASES.get(label, label))
        return out


def detection_labels() -> list[str]:
    """What the encoder tells apart: every language NTREX has a map label for, and English."""
    return sorted({*NTREX_LABELS.values(), ENGLISH})


# ---- the stored maps ----

@dataclass
class MapConfig:
    """How the maps were fitted and how they are applied (the weights file's metadata)."""

    method: str = "ridge"  # chosen on XQuAD-R dev (benchmarks/RESULTS.md 8.2)
    shrinkage: float = 0.0
    lam: float = 10.0
    apply: str = "both"
    dtype: str = "int8"
    base: str = "e5-small"
    # training lines per NTREX code (0: all 1,539), spread over the training part: 500 cost AP@20 <= .006 on dev
    # against all lines and make the teacher embed 48k sentences instead of 143k (benchmarks/RESULTS.md 8.2)
    max_lines: int = 500
    detect: list[str] = field(default_factory=detection_labels)
    pairs: dict[str, int] = field(default_factory=dict)  # label -> training pairs

    def check(self) -> MapConfig:
        if self.method not in METHODS:
            raise ModelInvalid(f"unknown fitting method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.apply not in APPLY:
            raise ModelInvalid(f"unknown apply {self.apply!r}; choose from {', '.join(APPLY)}")
        if not 0.0 <= self.shrinkage <= 1.0:
            raise ModelInvalid(f"shrinkage must be within [0, 1], got {self.shrinkage}")
        return self


def save_maps(path: Path, maps: Mapping[str, np.ndarray], config: MapConfig) -> Path:
    """The maps as ``W - I`` packed (``config.dtype``), the config as JSON metadata."""
    if not maps:
        raise ModelInvalid("no maps to save")
    deltas = {f"{MAP_PREFIX}{lang}": np.asarray(w, np.float32) - np.eye(w.shape[0], dtype=np.float32)
              for lang, w in sorted(maps.items())}
    return save_packed(path, deltas, {"config": json.dumps(asdict(config)), "format": "xlir-linear-maps-1"},
                       config.dtype)


def load_maps(path: Path) -> tuple[dict[str, np.ndarray], MapConfig]:
    tensors, meta = load_packed(path)
    try:
        raw = json.loads(meta["config"])
        config = MapConfig(**raw).check()
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelInvalid(f"{path} is not a linear-maps file (metadata 'config' missing or invalid: {exc})") from exc
    maps: dict[str, np.ndarray] = {}
    for key, delta in tensors.items():
        if key.startswith(MAP_PREFIX):
            if delta.ndim != 2 or delta.shape[0] != delta.shape[1]:
                raise ModelInvalid(f"{path}: {key} is not a square map ({delta.shape})")
            maps[key.removeprefix(MAP_PREFIX)] = delta + np.eye(delta.shape[0], dtype=np.float32)
    return maps, config


# ---- the encoder ----

class LinearMapEncoder:
    """The :class:`models.base.Encoder` of a linear-maps folder over its ``base`` encoder (see the module doc)."""

    def __init__(self, resolved: ResolvedModel, base: Any) -> None:
        self._resolved = resolved
        self.base = base
        self.maps, self.config = load_maps(resolved.path / WEIGHTS_NAME)
        bad = [lang for lang, w in self.maps.items() if w.shape[0] != base.dim]
        if bad:
            raise ModelInvalid(f"{resolved.path}: maps of {', '.join(bad)} do not match {base.name}'s dimension "
                               f"{base.dim}")
        self.backend = getattr(base, "backend", "torch")
        self.device = getattr(base, "device", "cpu")
        self.guesser = LanguageGuesser(self.config.detect)
        self._checksum: str | None = None

    @property
    def name(self) -> str:
        return self._resolved.name

    @property
    def path(self) -> Path:
        return self._resolved.path

    @property
    def dim(self) -> int:
        return int(self.base.dim)

    @property
    def checksum(self) -> str:
        if self._checksum is None:
            self._checksum = folder_checksum(self._resolved.path)
        return self._checksum

    def __getattr__(self, attr: str) -> Any:  # token_lengths, max_seq_length, ... of the base
        if attr.startswith("_") or attr == "base":
            raise AttributeError(attr)
        return getattr(self.base, attr)

    def map(self, texts: Sequence[str], vecs: np.ndarray) -> np.ndarray:
        """The base vectors of ``texts`` through the maps of their detected languages."""
        return apply_maps(vecs, self.guesser.detect(texts), self.maps)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        vecs = np.asarray(self.base.encode_queries(texts), dtype=np.float32)
        return self.map(texts, vecs) if self.config.apply == "both" else vecs

    def encode_passages(self, texts: Sequence[str], *, batch_size: int = 32,
                        progress: ProgressFn | None = None) -> np.ndarray:
        vecs = np.asarray(self.base.encode_passages(texts, batch_size=batch_size, progress=progress), np.float32)
        return self.map(texts, vecs)


# ---- the folder and training ----

def build_folder(weights: Path, base_dir: Path, out_dir: Path) -> None:
    """The model folder: the committed maps file as ``maps.safetensors`` (the base encoder is loaded by its registry
    name, ``base_dir`` only has to exist)."""
    if not base_dir.is_dir():
        raise ModelInvalid(f"the base model folder {base_dir} does not exist")
    load_maps(weights)  # a broken file fails here, not at the first search
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(weights, out_dir / WEIGHTS_NAME)


PARAMS = {"method", "shrinkage", "lam", "apply", "dtype", "langs", "min_pairs", "backend", "max_lines"}


def settings(options: TrainOptions) -> tuple[MapConfig, list[str] | None, int, str]:
    """(config, NTREX codes to fit or None for every mapped one, minimum pairs per map, teacher backend)."""
    options.check_params(PARAMS)
    config = MapConfig(method=options.param("method", MapConfig.method, str),
                       shrinkage=options.param("shrinkage", MapConfig.shrinkage, float),
                       lam=options.param("lam", MapConfig.lam, float),
                       apply=options.param("apply", MapConfig.apply, str),
                       dtype=options.param("dtype", MapConfig.dtype, str),
                       max_lines=options.param("max_lines", MapConfig.max_lines, int)).check()
    if config.dtype not in ("int8", "fp16"):
        raise ModelInvalid(f"--param dtype={config.dtype!r}: choose int8 or fp16")
    langs_param = options.param("langs", "", str)
    codes = [c.strip() for c in langs_param.split(",") if c.strip()] or None
    unknown = [c for c in codes or () if c not in NTREX_LABELS]
    if unknown:
        raise ModelInvalid(f"--param langs: {', '.join(unknown)} have no map label (NTREX codes py3langid knows: "
                           f"{', '.join(sorted(NTREX_LABELS))})")
    return config, codes, options.param("min_pairs", 200, int), options.param("backend", "onnx", str)


def spread(items: Sequence[Any], n: int) -> list[Any]:
    """At most ``n`` of ``items`` evenly spread over them (in order; all of them when ``n`` is 0 or enough)."""
    if n <= 0 or n >= len(items):
        return list(items)
    return [items[i] for i in np.unique(np.linspace(0, len(items) - 1, n).round().astype(np.int64))]


def training_vectors(teacher: Any, pairs: Sequence[Any], max_lines: int = 0
                     ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, int]]:
    """label -> (translation vectors, English vectors) of ``pairs`` (``distill_data.Pair``; at most ``max_lines``
    of each NTREX code, :func:`spread` over its lines), the teacher's passage vectors from the embedding cache: the
    English of every line once, then each code's translations."""
    from tqdm import tqdm

    from models.distill_data import teacher_vectors

    english = dict(sorted({p.line: p.english for p in pairs}.items()))
    row_of = {line: i for i, line in enumerate(english)}
    en_vecs = teacher_vectors(teacher, list(english.values()), "passage")
    by_code: dict[str, list[Any]] = {}
    for p in pairs:
        by_code.setdefault(p.lang, []).append(p)
    by_code = {code: spread(items, max_lines) for code, items in by_code.items()}
    xs: dict[str, list[np.ndarray]] = {}
    ys: dict[str, list[np.ndarray]] = {}
    for code, items in tqdm(sorted(by_code.items()), desc="teacher vectors", unit="lang"):
        label = NTREX_LABELS[code]
        xs.setdefault(label, []).append(teacher_vectors(teacher, [p.translation for p in items], "passage"))
        ys.setdefault(label, []).append(en_vecs[[row_of[p.line] for p in items]])
    out = {lab: (np.concatenate(xs[lab]), np.concatenate(ys[lab])) for lab in xs}
    return out, {lab: len(v[0]) for lab, v in out.items()}


def train(options: TrainOptions, *, teacher: Any = None, pairs: Sequence[Any] | None = None) -> dict[str, Any]:
    """Fit every map (one run: closed form, minutes; ``--max-minutes``/``--resume`` have nothing to bound or resume)
    and write the packed maps to ``options.weights``; ``teacher``/``pairs`` are for tests."""
    from models.distill_data import ntrex_pairs

    config, codes, min_pairs, backend = settings(options)
    t0 = time.monotonic()
    folder = options.folder
    append_log(folder, {"event": "start", "config": asdict(config), "langs": codes, "seed": options.seed})
    if pairs is None:
        pairs = ntrex_pairs(codes or sorted(NTREX_LABELS))
    pairs = [p for p in pairs if p.lang in NTREX_LABELS and (codes is None or p.lang in codes)]
    if not pairs:
        raise ModelInvalid("no NTREX training pairs for the requested languages")
    if teacher is None:
        from models.distill_data import load_teacher

        teacher = load_teacher(config.base, options.home, backend)
    data, counts = training_vectors(teacher, pairs, config.max_lines)
    t_fit = time.monotonic()
    maps: dict[str, np.ndarray] = {}
    for label, (x, y) in sorted(data.items()):
        if len(x) < min_pairs:
            log.warning("%s: %d pairs (< min_pairs %d), no map", label, len(x), min_pairs)
            continue
        maps[label] = fit_map(x, y, config.method, config.shrinkage, config.lam)
        before = float(np.mean(np.sum(x * y, axis=1)))
        after = float(np.mean(np.sum(normalize(x @ maps[label]) * y, axis=1)))
        append_log(folder, {"event": "map", "lang": label, "pairs": len(x), "cos_before": round(before, 4),
                            "cos_after": round(after, 4)})
    if not maps:
        raise ModelInvalid(f"no language has {min_pairs} training pairs: nothing to fit")
    config.pairs = {lab: counts[lab] for lab in maps}
    save_maps(options.weights, maps, config)
    summary = {"event": "end", "name": options.name, "kind": options.kind, "maps": len(maps),
               "pairs": int(sum(config.pairs.values())), "fit_seconds": round(time.monotonic() - t_fit, 1),
               "run_seconds": round(time.monotonic() - t0, 1), "config": {k: v for k, v in asdict(config).items()
                                                                         if k not in ("detect", "pairs")},
               "weights": str(options.weights), "weights_mb": round(options.weights.stat().st_size / 2**20, 2)}
    append_log(folder, summary)
    return summary
