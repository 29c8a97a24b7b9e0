"""Metadata filters of a search: parsed and checked against an index's metadata fields, evaluated as a row mask.

A filter is a JSON object whose fields are ANDed (``SearchRequest.filter``)::

    {"source": "wiki", "year": {"gte": 2019, "lt": 2022}, "tag": {"in": ["a", "b"]},
     "published": {"gte": "2020-01-01"}, "lang": {"in": ["de", "fr"]}}

A scalar is equality, ``{"in": [...]}`` is any of the values, ``gt`` / ``gte`` / ``lt`` / ``lte`` are ranges on a
number or date field; the operators of one object are ANDed on the same value, so a field holding a list of values
matches when one of its values satisfies them all. ``lang`` is the document's language (as ``langs``); ``null``
is no filter value (a document without the field never matches).

Each field has a type, read from the values the index holds (:class:`MetadataColumns`): ``str``, ``number`` (ints
and floats), ``bool``, ``date`` (a string field whose every value is an ISO date ``YYYY-MM-DD`` or date-time; a
date without a time is midnight UTC, a date-time without a zone is UTC) or ``mixed`` (values of several types:
equality and ``in`` only, each value compared with the values of its own type). A filter that names an unknown
field, a range on a field that is not a number or a date, a string for a number or an unknown operator is a
:class:`~xlir.errors.BadQuery` naming the field and what it takes.

Columns: per field and per value type, the row of each value and the value (strings as codes into the field's
vocabulary, numbers and dates as float64), so a condition is a few vectorised comparisons over the values holding
it, whatever the number of fields. They are built once per index generation (and per live-delta snapshot for its
rows, ``indexer/delta.py``) at the first filtered query.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from indexer.readers import first_unencodable
from xlir.errors import BadQuery

RANGE_OPS = ("gt", "gte", "lt", "lte")
OPERATORS = ("in", *RANGE_OPS)
LANG_FIELD = "lang"
MAX_IN_VALUES = 1024
MAX_LISTED_FIELDS = 40  # an unknown-field error lists at most this many known fields

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:?\d{2})?)?")


def parse_date(value: object) -> float | None:
    """Seconds since the epoch (UTC) of an ISO date or date-time string; None for anything else."""
    if not isinstance(value, str) or not _DATE.fullmatch(value):
        return None
    text = value
    if "." in text:  # fromisoformat takes at most microseconds
        head, _, rest = text.partition(".")
        digits = re.match(r"\d+", rest)
        assert digits is not None
        text = head + "." + digits.group()[:6].ljust(6, "0") + rest[digits.end():]
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def value_kind(value: object) -> str | None:
    """``bool``, ``number`` or ``str`` for a scalar metadata value (None for null)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "str"
    raise TypeError(f"not a metadata scalar: {type(value).__name__}")


_KIND_OF_TYPE = {str: "str", int: "number", float: "number", bool: "bool"}  # value_kind, without a call per value


@dataclass
class KindColumn:
    """The values of one type of one field: ``rows[i]`` holds ``values[i]`` (a row may hold several)."""

    rows: np.ndarray  # int64
    values: np.ndarray  # float64 numbers, bool, or int64 codes into FieldColumn.vocab
    every_row: bool = False  # rows is 0 .. n-1: one value per row, so a value's match is its row's


@dataclass
class FieldColumn:
    kinds: dict[str, KindColumn] = field(default_factory=dict)  # "str", "number", "bool"
    vocab: dict[str, int] = field(default_factory=dict)  # the strings' codes
    dates: np.ndarray | None = None  # when every string is a date: their timestamps, aligned with kinds["str"]

    @property
    def type(self) -> str:
        if len(self.kinds) != 1:
            return "mixed"
        kind = next(iter(self.kinds))
        return "date" if kind == "str" and self.dates is not None else kind


@dataclass
class MetadataColumns:
    """A columnar view of the metadata of ``n`` rows (one segment: a generation or a live delta)."""

    n: int
    fields: dict[str, FieldColumn]

    @property
    def schema(self) -> dict[str, str]:
        return {name: col.type for name, col in self.fields.items()}

    @classmethod
    def build(cls, metadata: Sequence[Mapping[str, Any] | None]) -> MetadataColumns:
        acc: dict[str, dict[str, tuple[list[int], list[Any]]]] = {}
        kind_of = _KIND_OF_TYPE
        for row, md in enumerate(metadata):
            if not md:
                continue
            for key, value in md.items():
                kinds = acc.get(key)
                if kinds is None:
                    kinds = acc[key] = {}
                for item in value if type(value) is list else (value,):
                    kind = kind_of.get(type(item))
                    if kind is None:
                        if item is None:
                            continue
                        kind = value_kind(item)  # a subclass (never from JSON); raises for what is no scalar
                        assert kind is not None
                    pair = kinds.get(kind)
                    if pair is None:
                        pair = kinds[kind] = ([], [])
                    pair[0].append(row)
                    pair[1].append(item)
        fields: dict[str, FieldColumn] = {}
        for key, kinds in acc.items():
            col = FieldColumn()
            for kind, (rows, values) in kinds.items():
                arr: np.ndarray
                if kind == "str":
                    vocab = col.vocab
                    arr = np.fromiter((vocab.setdefault(v, len(vocab)) for v in values), dtype=np.int64,
                                      count=len(values))
                    stamps = [parse_date(v) for v in vocab]
                    if all(s is not None for s in stamps):
                        col.dates = np.asarray(stamps, dtype=np.float64)[arr]
                elif kind == "number":
                    arr = np.asarray(values, dtype=np.float64)
                else:
                    arr = np.asarray(values, dtype=bool)
                row_arr = np.asarray(rows, dtype=np.int64)
                every = len(row_arr) == len(metadata) and bool(np.all(row_arr == np.arange(len(row_arr))))
                col.kinds[kind] = KindColumn(row_arr, arr, every)
            if col.kinds:
                fields[key] = col
        return cls(len(metadata), fields)


def merge_types(a: str | None, b: str | None) -> str:
    """The type of a field over two segments (one may lack it)."""
    if a is None or b is None or a == b:
        return a or b or "mixed"
    if {a, b} == {"date", "str"}:
        return "str"
    return "mixed"


def merge_schemas(schemas: Iterable[Mapping[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for schema in schemas:
        for name, kind in schema.items():
            out[name] = merge_types(out.get(name), kind)
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class Condition:
    """What one field of a filter asks: its values are any of ``values`` (None: any value) and within every
    ``ranges`` bound. ``type`` is the field's type the filter was checked against."""

    name: str
    type: str
    values: tuple[Any, ...] | None = None  # strings, floats, bools; dates as timestamps
    ranges: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Filter:
    conditions: tuple[Condition, ...] = ()
    langs: frozenset[str] | None = None  # the document languages asked for (None: any)


def _describe(schema: Mapping[str, str]) -> str:
    names = [f"{name} ({kind})" for name, kind in schema.items()]
    listed = ", ".join(names[:MAX_LISTED_FIELDS]) + (f" and {len(names) - MAX_LISTED_FIELDS} more"
                                                      if len(names) > MAX_LISTED_FIELDS else "")
    return (f"the index's metadata fields are {listed}, and lang (the document language)" if names else
            "the index's documents have no metadata: only lang (the document language) can be filtered on")


def _number(name: str, value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:
        raise BadQuery(f"filter: {name}: the number {str(value)[:20]}... is too large") from None


def _equality_value(name: str, kind: str, value: object) -> Any:
    """A filter value for equality / ``in`` on a field of type ``kind``, as the columns hold it."""
    if value is None or isinstance(value, dict | list):
        what = "null" if value is None else type(value).__name__
        raise BadQuery(f"filter: {name}: {what} is not a value to compare with (give a string, a number or a "
                       f"boolean, or an object of operators: {', '.join(OPERATORS)})")
    got = value_kind(value)
    if kind == "mixed":
        return _number(name, value) if got == "number" else value  # type: ignore[arg-type]
    if kind == "date":
        stamp = parse_date(value)
        if stamp is None:
            raise BadQuery(f"filter: {name} is a date field: give an ISO date (YYYY-MM-DD) or date-time, not "
                           f"{value!r}")
        return stamp
    if got != kind:
        raise BadQuery(f"filter: {name} is a {kind} field: {value!r} is a {got}")
    return _number(name, value) if kind == "number" else value  # type: ignore[arg-type]


def _range_bound(name: str, kind: str, op: str, value: object) -> float:
    if kind not in ("number", "date"):
        raise BadQuery(f"filter: {name}: the range operator {op!r} needs a number or date field; {name} is a {kind} "
                       "field (use equality or 'in')")
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadQuery(f"filter: {name}.{op} must be a number ({name} is a number field), not {value!r}")
        return _number(name, value)
    stamp = parse_date(value)
    if stamp is None:
        raise BadQuery(f"filter: {name}.{op} must be an ISO date (YYYY-MM-DD) or date-time ({name} is a date "
                       f"field), not {value!r}")
    return stamp


def _in_values(name: str, value: object) -> list[object]:
    if not isinstance(value, list) or not value:
        raise BadQuery(f"filter: {name}.in must be a non-empty list of values")
    if len(value) > MAX_IN_VALUES:
        raise BadQuery(f"filter: {name}.in has {len(value)} values; the limit is {MAX_IN_VALUES}")
    return value


def _lang_condition(value: object, normalize_lang: Callable[[str], str]) -> frozenset[str]:
    if isinstance(value, dict):
        bad = [op for op in value if op != "in"]
        if bad or not value:
            raise BadQuery(f"filter: lang takes a language code or {{\"in\": [codes]}}, not the operator "
                           f"{(bad or ['(none)'])[0]!r}")
        codes = _in_values("lang", value["in"])
    else:
        codes = [value]
    out = set()
    for code in codes:
        if not isinstance(code, str):
            raise BadQuery(f"filter: lang values are language codes (strings), not {code!r}")
        try:
            out.add(normalize_lang(code))
        except ValueError as exc:
            raise BadQuery(f"filter: lang: {exc}") from exc
    return frozenset(out)


def _not_unicode(name: object, spec: object) -> bool:
    """Whether a field's name or one of its string values holds a lone surrogate (JSON escapes can carry one)."""
    values: list[object] = [name]
    if isinstance(spec, dict):
        for v in spec.values():
            values.extend(v if isinstance(v, list) else [v])
    else:
        values.append(spec)
    return any(isinstance(v, str) and first_unencodable(v) is not None for v in values)


def parse_filter(raw: Mapping[str, Any], schema: Mapping[str, str],
                 normalize_lang: Callable[[str], str] = str) -> Filter:
    """Check ``raw`` against the fields of ``schema`` (name -> type) and return it parsed; :class:`BadQuery` says
    what is wrong. ``normalize_lang`` maps a ``lang`` value to the index's language codes (ValueError: unknown)."""
    if not isinstance(raw, Mapping):
        raise BadQuery(f"filter must be a JSON object of field conditions, not {type(raw).__name__}")
    conditions = []
    langs: frozenset[str] | None = None
    for name, spec in raw.items():
        if _not_unicode(name, spec):
            raise BadQuery("filter: a field name or value is not valid Unicode text (a lone surrogate)")
        if name == LANG_FIELD:
            langs = _lang_condition(spec, normalize_lang)
            continue
        kind = schema.get(name)
        if kind is None:
            raise BadQuery(f"filter: unknown field {name!r}; {_describe(schema)}")
        if not isinstance(spec, dict):
            if isinstance(spec, list):
                raise BadQuery(f"filter: {name}: a list is not a value; for any of several values write "
                               f"{{\"in\": [...]}}")
            conditions.append(Condition(name, kind, (_equality_value(name, kind, spec),)))
            continue
        if not spec:
            raise BadQuery(f"filter: {name}: an empty object; give one of the operators {', '.join(OPERATORS)}")
        unknown = [op for op in spec if op not in OPERATORS]
        if unknown:
            raise BadQuery(f"filter: {name}: unknown operator {unknown[0]!r}; the operators are "
                           f"{', '.join(OPERATORS)}")
        values = None
        if "in" in spec:
            values = tuple(_equality_value(name, kind, v) for v in _in_values(name, spec["in"]))
        ranges = tuple((op, _range_bound(name, kind, op, spec[op])) for op in RANGE_OPS if op in spec)
        conditions.append(Condition(name, kind, values, ranges))
    return Filter(tuple(conditions), langs)


_COMPARE: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "gt": np.greater, "gte": np.greater_equal, "lt": np.less, "lte": np.less_equal}


def _kind_match(col: FieldColumn, kind: str, cond: Condition) -> tuple[KindColumn, np.ndarray] | None:
    """(the column, whether each of its values satisfies ``cond``), or None when no value can."""
    part = col.kinds.get(kind)
    if part is None:
        return None
    if cond.type == "date":
        if col.dates is None:
            return None
        values: np.ndarray = col.dates
    else:
        values = part.values
    ok: np.ndarray = np.ones(len(values), dtype=bool)
    if cond.values is not None:
        if kind == "str" and cond.type != "date":  # a lookup table over the vocabulary: one gather per value
            wanted_codes = np.zeros(len(col.vocab), dtype=bool)
            wanted_codes[[col.vocab[v] for v in cond.values if isinstance(v, str) and v in col.vocab]] = True
            ok = wanted_codes[values]
        else:
            wanted = [v for v in cond.values if value_kind(v) == ("number" if cond.type == "date" else kind)]
            ok &= np.isin(values, np.asarray(wanted, dtype=values.dtype))
    for op, bound in cond.ranges:
        ok &= _COMPARE[op](values, bound)
    return part, ok


def condition_mask(columns: MetadataColumns, cond: Condition) -> np.ndarray:
    """The rows of ``columns`` one of whose values of field ``cond.name`` satisfies ``cond``."""
    out = np.zeros(columns.n, dtype=bool)
    col = columns.fields.get(cond.name)
    if col is None:
        return out
    kinds = ("str",) if cond.type == "date" else tuple(col.kinds)
    for kind in kinds:
        got = _kind_match(col, kind, cond)
        if got is not None:
            part, ok = got
            if part.every_row and len(kinds) == 1:
                return ok
            out[part.rows[ok]] = True
    return out


def condition_rows(columns: MetadataColumns, conditions: Sequence[Condition]) -> np.ndarray:
    """The rows of ``columns`` that satisfy every one of ``conditions`` (at least one)."""
    mask = condition_mask(columns, conditions[0])
    for cond in conditions[1:]:
        mask &= condition_mask(columns, cond)
    return mask


def filter_mask(columns: MetadataColumns, flt: Filter) -> np.ndarray | None:
    """The rows of ``columns`` that satisfy every metadata condition of ``flt`` (None: it has none)."""
    return condition_rows(columns, flt.conditions) if flt.conditions else None
