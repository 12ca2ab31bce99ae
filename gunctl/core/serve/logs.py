"""Log lines of the service (uvicorn's and gunctl's): plain text, or one JSON object a line.

The configuration is a ``logging.config.dictConfig`` dict handed to uvicorn, which applies it
in each worker process too (``--workers N``).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

# Fields the access log passes as ``extra``; they become keys of the JSON object.
ACCESS_FIELDS = ("client", "method", "path", "status", "duration_ms")


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", ...}``; json.dumps escapes control characters,
    so a request path cannot split a line."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ACCESS_FIELDS:
            if hasattr(record, key):
                payload[key] = getattr(record, key)
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload)


def log_config(json_logs: bool) -> dict[str, Any]:
    """uvicorn's and gunctl's serve loggers to stderr; uvicorn's own access log is off (gunctl
    writes one line per request, with its duration)."""
    formatter = (
        {"()": "gunctl.core.serve.logs.JsonFormatter"}
        if json_logs
        else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    handler = {"class": "logging.StreamHandler", "formatter": "main", "stream": "ext://sys.stderr"}
    logger = {"handlers": ["stderr"], "level": "INFO", "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": formatter},
        "handlers": {"stderr": handler},
        "loggers": {
            "uvicorn": logger,
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "gunctl.serve": logger,
        },
    }
