"""Domain errors shared by the indexer, the models and the server.

Each error carries a short machine-readable ``code`` and a human ``detail``. The HTTP status of each
class is decided in one place (``app/errors.py``); the CLI prints ``error: detail`` and exits non-zero.
"""

from __future__ import annotations


class XlirError(Exception):
    """Base class: an expected failure with a clear message (never shown as a traceback)."""

    code = "xlir_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ModelNotFound(XlirError):
    code = "model_not_found"


class ModelInvalid(XlirError):
    code = "model_invalid"


class CorpusError(XlirError):
    code = "corpus_error"


class IndexInvalid(XlirError):
    """Index directory missing, half-written, corrupted or built with another encoder."""

    code = "index_invalid"


class IndexNotReady(XlirError):
    code = "index_not_ready"


class BadQuery(XlirError):
    code = "bad_query"


class QueryTooLong(XlirError):
    code = "query_too_long"


class RerankerNotConfigured(XlirError):
    code = "reranker_not_configured"


class CenteringUnavailable(XlirError):
    code = "centering_unavailable"


class Overloaded(XlirError):
    code = "overloaded"


class Unauthorized(XlirError):
    """No API key, or one the server does not know (HTTP 401)."""

    code = "unauthorized"


class Forbidden(XlirError):
    """A known API key without the scope the endpoint needs (HTTP 403)."""

    code = "forbidden"


class PayloadTooLarge(XlirError):
    code = "payload_too_large"


class PathNotAllowed(XlirError):
    """A path given by a client or the command line that leaves the configured data directory."""

    code = "path_not_allowed"


class OverwriteRefused(XlirError):
    """``--overwrite`` pointed at something that is not an xlir index or an empty directory (CLI exit 2)."""

    code = "overwrite_refused"


class DocumentNotFound(XlirError):
    """No live document has the given id (HTTP 404)."""

    code = "document_not_found"


class CollectionNotFound(XlirError):
    """No served collection has the given name (HTTP 404); the detail lists the names there are."""

    code = "collection_not_found"


class Conflict(XlirError):
    """The operation cannot run now, e.g. a compaction is already running (HTTP 409)."""

    code = "conflict"


class TextNotEncodable(BadQuery):
    """A text the encoder fails on while it encodes others (e.g. a lone surrogate): the request's fault (HTTP 422)."""

    code = "text_not_encodable"


class EncoderUnavailable(XlirError):
    """The query encoder's worker failed and is restarting; retry shortly (HTTP 503)."""

    code = "encoder_unavailable"


class ShardUnavailable(XlirError):
    """A shard served by a Ray actor did not answer (the actor died and Ray is replacing it, or it timed out): the
    query is refused rather than answered from the other shards; retry shortly (HTTP 503 with Retry-After)."""

    code = "shard_unavailable"


class ReplicaUnavailable(ShardUnavailable):
    """No replica of the query encoder served on Ray answered (they died and are being replaced); retry shortly
    (HTTP 503 with Retry-After)."""

    code = "replica_unavailable"


class RayTaskFailed(XlirError):
    """A Ray task of a distributed job failed for good (its worker died more often than it is retried): the work
    finished so far is kept, and running the same command again resumes it."""

    code = "ray_task_failed"
