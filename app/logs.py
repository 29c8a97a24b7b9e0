"""Request ids and the server's log format (``xlir serve --log-format text|json``, ``XLIR_LOG_FORMAT``).

Every request gets an id: the caller's ``X-Request-ID`` header when it is a sane token (letters, digits and
``._:-``, at most 128 characters), else a new one. asgi-correlation-id's middleware keeps it in a contextvar for the
request's lifetime and returns it in the response's ``X-Request-ID`` header; its logging filter puts it on every
log record emitted meanwhile (``correlation_id``, written as ``request_id``; ``-`` outside a request), uvicorn's
access lines included.
``--log-format json`` writes one JSON object per line (python-json-logger): ``time``, ``level``, ``logger``,
``message``, ``request_id``, and for access lines ``client``, ``method``, ``path``, ``status``.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Literal

from asgi_correlation_id import CorrelationIdMiddleware
from fastapi import FastAPI

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(correlation_id)s] %(message)s"
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s %(correlation_id)s"


def valid_request_id(value: str) -> bool:
    """An incoming ``X-Request-ID`` is kept when it is a token (no spaces, quotes or control characters: it ends
    up in log lines and a response header); else the server makes its own."""
    return REQUEST_ID.fullmatch(value) is not None


def install(app: FastAPI) -> None:
    app.add_middleware(CorrelationIdMiddleware, header_name=REQUEST_ID_HEADER, validator=valid_request_id)


class RecordFields(logging.Filter):
    """uvicorn's access records carry ``(client, method, path, http_version, status)`` as message arguments:
    copy them to fields of their own, so a JSON line can be filtered on ``status`` or ``path``; and drop the
    terminal-coloured copy of the message some uvicorn records carry (``color_message``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.pop("color_message", None)
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            record.client, record.method, record.path, _, record.status = args
        return True


def log_config(fmt: LogFormat = "text", level: str = "info") -> dict[str, Any]:
    """The ``logging.config.dictConfig`` of ``xlir serve`` (passed to uvicorn as its ``log_config``): the server's
    own loggers and uvicorn's (error and access) in one format, each record with the request id."""
    if fmt == "json":
        formatter: dict[str, Any] = {
            "()": "pythonjsonlogger.json.JsonFormatter", "fmt": JSON_FIELDS,
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger",
                              "correlation_id": "request_id"},
        }
    else:
        formatter = {"format": TEXT_FORMAT}
    lvl = level.upper()
    filters = ["request_id", "fields"]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "request_id": {"()": "asgi_correlation_id.CorrelationIdFilter", "default_value": "-"},
            "fields": {"()": "app.logs.RecordFields"},
        },
        "formatters": {"main": formatter},
        "handlers": {
            "default": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "main",
                        "filters": filters},
            "access": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout", "formatter": "main",
                       "filters": filters},
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": lvl, "propagate": False},
            "uvicorn.error": {"level": lvl},
            "uvicorn.access": {"handlers": ["access"], "level": lvl, "propagate": False},
        },
        "root": {"handlers": ["default"], "level": lvl},
    }
