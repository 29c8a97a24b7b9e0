"""Your topics against your index: ``xlir search --topics topics.tsv (--index DIR | --target URL) --output run.trec``.

A **topics file** is a TSV, one topic a line: ``qid<TAB>query``, optionally ``<TAB>lang`` (the query's language,
ISO 639-1: the search's ``lang``, else it is detected); blank lines and lines starting with ``#`` are skipped; a
malformed line is a :class:`~benchmarks.datasets.DatasetError` naming ``file:line`` (:func:`read_topics`).

Each topic becomes one :class:`app.schemas.SearchRequest` (the command's options, the topic's query and language).
They run ``batch`` at a time through :meth:`app.service.SearchService.search_batch`, in-process
(:func:`search_inprocess`) or over ``POST /search/batch`` (:func:`search_remote`); either way the query batcher
encodes a batch's queries together. An error of one search names its topic's line (:func:`locate`).

The **run** (:class:`benchmarks.retrieval.Run`) is written by :func:`benchmarks.retrieval.write_trec` with the
searches' own scores (``qid Q0 docid rank score tag``). With **qrels** (TREC ``qid Q0 docid rel``, read by the
benchmarks' reader) :func:`evaluate_run` scores it with ranx, like every benchmark
(:func:`benchmarks.retrieval.per_query_metrics`): nDCG@10, R@100 and MRR@10, means over the topics that have a
relevant document in the qrels.

Every user error (a missing or malformed file, an unreachable ``--target``, an HTTP error) is an
:class:`~xlir.errors.XlirError` with a clear message, which the command prints without a traceback (exit 2).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from app.schemas import BatchSearchRequest, SearchRequest, SearchResponse
from app.service import SearchService
from benchmarks.datasets import DatasetError, Query, RetrievalDataset, Topic, _read_qrels
from benchmarks.retrieval import Run, per_query_metrics, write_trec
from xlir.errors import XlirError

METRICS: dict[str, str] = {"nDCG@10": "ndcg@10", "R@100": "recall@100", "MRR@10": "mrr@10"}
"""What ``--qrels`` prints: label -> ranx metric."""
DEFAULT_BATCH = 32
DEFAULT_TIMEOUT = 120.0


class RemoteError(XlirError):
    """The server named by ``--target`` cannot be reached, or answered an error (its status and body kept)."""

    code = "remote_error"

    def __init__(self, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.status = status


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """TREC qrels ``qid Q0 docid rel`` (the benchmarks' reader, :mod:`benchmarks.datasets`), any qid and docid;
    checks that ranx, which scores the run, is installed (before any search runs)."""
    qrels = _read_qrels(Path(path), None, None)
    if importlib.util.find_spec("ranx") is None:
        raise DatasetError("--qrels needs ranx, the evaluation library of the benchmarks: pip install "
                           "'ranx>=0.3.20,<0.4' (it is in the dev extra)")
    return qrels


def requests_for(topics: Sequence[Topic], fields: Mapping[str, Any]) -> list[SearchRequest]:
    """One request per topic: ``fields`` (the command's options) with its query, and its language when given."""
    out = []
    for t in topics:
        body = {**fields, "query": t.query, **({"lang": t.lang} if t.lang else {})}
        try:
            out.append(SearchRequest(**body))
        except ValidationError as exc:
            msg = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise DatasetError(f"{t.where}: topic {t.qid}: {msg}") from None
    return out


# --------------------------------------------------------------------------------------------------
# Searching
# --------------------------------------------------------------------------------------------------

_NAMED = re.compile(r"searches(?:\[(\d+)\]|\.(\d+))[.:]?\s*")


def locate(detail: str, topics: Sequence[Topic], offset: int) -> str:
    """A batch error's detail with each ``searches[i]`` (or ``searches.i.field``) replaced by the topic's
    ``file:line`` and id (``offset``: the batch's first topic)."""
    def repl(m: re.Match[str]) -> str:
        i = offset + int(m.group(1) or m.group(2))
        return f"{topics[i].where}: topic {topics[i].qid}: " if 0 <= i < len(topics) else m.group(0)

    return _NAMED.sub(repl, detail)


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)


def progress_bar(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="topic", desc="searching", file=sys.stderr, disable=not enabled, leave=False)


def search_inprocess(service: SearchService, requests: Sequence[SearchRequest], topics: Sequence[Topic],
                     batch: int = DEFAULT_BATCH, progress: bool = True) -> list[SearchResponse]:
    """Every request through ``service.search_batch``, ``batch`` at a time (at most the service's
    ``max_batch_searches``; its batcher is started and closed here)."""
    batch = min(batch, service.limits.max_batch_searches)

    async def run() -> list[SearchResponse]:
        out: list[SearchResponse] = []
        await service.batcher.start()
        try:
            with progress_bar(len(requests), progress) as bar:
                for start, end in _chunks(len(requests), batch):
                    try:
                        res = await service.search_batch(BatchSearchRequest(searches=list(requests[start:end])))
                    except XlirError as exc:
                        exc.detail = locate(exc.detail, topics, start)
                        exc.args = (exc.detail,)
                        raise
                    out.extend(res.results)
                    bar.update(end - start)
        finally:
            await service.batcher.close()
        return out

    return asyncio.run(run())


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def post_json(client: httpx.Client, url: str, body: Mapping[str, Any]) -> Any:
    """``POST url`` with a JSON body -> the JSON answer; any failure is a :class:`RemoteError` saying what to do."""
    try:
        r = client.post(url, json=body)
    except httpx.TimeoutException:
        raise RemoteError(f"{url}: no answer within {client.timeout.read} s (is the server overloaded?)") from None
    except httpx.UnsupportedProtocol:
        raise RemoteError(f"{url}: not an http:// or https:// URL (e.g. --target http://127.0.0.1:8000)") from None
    except httpx.TransportError as exc:
        raise RemoteError(f"cannot reach {url} ({type(exc).__name__}: {exc}): is `xlir serve` running there?"
                          ) from None
    except httpx.InvalidURL as exc:
        raise RemoteError(f"{url}: invalid URL ({exc})") from None
    if r.status_code != 200:
        try:
            err = r.json()
            detail = f"{err['error']}: {err['detail']}" if isinstance(err, dict) and "detail" in err else r.text
        except (json.JSONDecodeError, ValueError):
            detail = r.text[:500] or r.reason_phrase
        hint = {401: " (give the server's API key with --api-key, or set XLIR_API_KEY)",
                403: " (this API key lacks the scope: a read key is needed)",
                404: " (is --target the server's base URL, e.g. http://127.0.0.1:8000?)"}.get(r.status_code, "")
        raise RemoteError(f"{url}: HTTP {r.status_code}: {detail}{hint}", r.status_code)
    try:
        return r.json()
    except (json.JSONDecodeError, ValueError):
        raise RemoteError(f"{url}: the answer is not JSON: {r.text[:200]!r}") from None


def remote_client(api_key: str | None, timeout: float = DEFAULT_TIMEOUT) -> httpx.Client:
    return httpx.Client(headers=auth_headers(api_key), timeout=timeout)


def search_remote(target: str, requests: Sequence[SearchRequest], topics: Sequence[Topic],
                  batch: int = DEFAULT_BATCH, api_key: str | None = None, progress: bool = True,
                  timeout: float = DEFAULT_TIMEOUT) -> list[SearchResponse]:
    """Every request over ``POST target/search/batch``, ``batch`` at a time."""
    url = target.rstrip("/") + "/search/batch"
    out: list[SearchResponse] = []
    with remote_client(api_key, timeout) as client, progress_bar(len(requests), progress) as bar:
        for start, end in _chunks(len(requests), batch):
            body = {"searches": [r.model_dump(mode="json", exclude_none=True) for r in requests[start:end]]}
            try:
                answer = post_json(client, url, body)
            except RemoteError as exc:
                exc.detail = locate(exc.detail, topics, start)
                exc.args = (exc.detail,)
                raise
            try:
                results = [SearchResponse.model_validate(r) for r in answer["results"]]
            except (KeyError, TypeError, ValidationError) as exc:
                raise RemoteError(f"{url}: the answer is not a /search/batch response ({exc})") from None
            if len(results) != end - start:
                raise RemoteError(f"{url}: {len(results)} results for {end - start} searches")
            out.extend(results)
            bar.update(end - start)
    return out


# --------------------------------------------------------------------------------------------------
# Runs and metrics
# --------------------------------------------------------------------------------------------------


def to_run(topics: Sequence[Topic], responses: Sequence[SearchResponse]) -> Run:
    """Per topic id, the hits' ids and scores in rank order."""
    return Run({t.qid: [(h.id, h.score) for h in r.results] for t, r in zip(topics, responses, strict=True)})


def write_run(run: Run, path: Path, tag: str) -> int:
    """The TREC run with the searches' scores; the number of lines written."""
    try:
        write_trec(run, Path(path), tag, raw_scores=True)
    except ValueError as exc:
        raise DatasetError(f"{path}: {exc}") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot write the run ({exc.strerror or exc})") from None
    return sum(len(h) for h in run.hits.values())


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]  # label (METRICS) -> mean over the judged topics
    judged: int  # topics with a relevant document in the qrels
    topics: int
    unknown_qids: int  # qrels topics not in the topics file (ignored)


def evaluate_run(topics: Sequence[Topic], run: Run, qrels: Mapping[str, Mapping[str, int]]) -> Evaluation:
    """nDCG@10, R@100, MRR@10 (ranx, as in every benchmark) over the topics with a relevant document."""
    queries = [Query(t.qid, t.query, t.lang or "und", "test") for t in topics]
    dataset = RetrievalDataset("topics", [], queries, {t.qid: dict(qrels.get(t.qid, {})) for t in topics})
    per_query = per_query_metrics(dataset, run, list(METRICS.values()))
    means = {label: (sum(v[m] for v in per_query.values()) / len(per_query) if per_query else 0.0)
             for label, m in METRICS.items()}
    known = {t.qid for t in topics}
    return Evaluation(means, len(per_query), len(topics), sum(1 for q in qrels if q not in known))


def report(ev: Evaluation, echo: Callable[[str], None]) -> None:
    for label, value in ev.metrics.items():
        echo(f"{label:8s} {value:.4f}")
    note = f"over {ev.judged} of {ev.topics} topics (those with a relevant document in the qrels)"
    if ev.unknown_qids:
        note += f"; {ev.unknown_qids} qrels topic(s) not in the topics file ignored"
    echo(note)
