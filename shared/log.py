"""Structured JSON logs, one object per line on stdout, in the shape Cloud Logging reads.

Cloud Run forwards stdout to Cloud Logging, which lifts ``severity``, ``message``,
``httpRequest`` and ``logging.googleapis.com/trace`` out of a JSON line
(https://cloud.google.com/logging/docs/structured-logging#special-payload-fields).
The request's trace id is kept in a context variable so every line of a request carries it.

Never pass a token, a secret or a message's text to a logger: log ids and sizes instead.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any

_trace: ContextVar[str | None] = ContextVar("trace", default=None)

# Attributes every LogRecord has; anything else passed through ``extra=`` is logged as a field.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def trace_from_headers(traceparent: str | None, cloud_trace: str | None) -> str | None:
    """The trace id of a request, from W3C ``traceparent`` or ``X-Cloud-Trace-Context``.

    ``traceparent`` is ``00-<32 hex trace id>-<16 hex span id>-<flags>``;
    ``X-Cloud-Trace-Context`` is ``<32 hex trace id>/<span id>;o=<flag>``.
    """
    if traceparent:
        parts = traceparent.split("-")
        if len(parts) == 4 and len(parts[1]) == 32:
            return parts[1]
    if cloud_trace:
        trace_id = cloud_trace.split("/", 1)[0]
        if trace_id and len(trace_id) <= 64 and trace_id.isalnum():
            return trace_id
    return None


def bind_trace(trace_id: str | None) -> None:
    """Attach a trace id to every log line written by this request's context."""
    _trace.set(trace_id)


class CloudLoggingFormatter(logging.Formatter):
    """Formats a record as one JSON object with Cloud Logging's special fields."""

    def __init__(self, project_id: str | None, function: str | None = None) -> None:
        super().__init__()
        self._project_id = project_id
        self._function = function

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "logger": record.name,
            "time": f"{_utc_second(int(record.created))}.{int(record.msecs):03d}Z",
        }
        if self._function:
            entry["function"] = self._function
        trace_id = _trace.get()
        if trace_id:
            entry["logging.googleapis.com/trace"] = (
                f"projects/{self._project_id}/traces/{trace_id}" if self._project_id else trace_id
            )
        fields = vars(record)
        # The extra= fields: a set difference in C rather than a test per record attribute.
        for key in fields.keys() - _RECORD_ATTRIBUTES:
            if not key.startswith("_"):
                entry[key] = fields[key]
        if record.exc_info:
            entry["stack_trace"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


@functools.lru_cache(maxsize=4)
def _utc_second(epoch_second: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` of a second: formatted once per second, not once per line."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch_second))


def lean_records() -> None:
    """Skip what logging records by default that no line of ours writes.

    The formatter above never writes the caller's file, line or function, nor thread and
    process names, so logging need not find them: no stack walk per line
    (https://docs.python.org/3/howto/logging.html#optimization).
    """
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def configure_logging(
    project_id: str | None, debug: bool = False, function: str | None = None
) -> None:
    """Send every logger's output to stdout as Cloud Logging JSON; idempotent.

    ``function`` (the entry point's name) is written on every line, so a line names the
    function that wrote it wherever it is read.
    """
    lean_records()
    root = logging.getLogger()
    if any(isinstance(h.formatter, CloudLoggingFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(CloudLoggingFormatter(project_id, function))
    root.handlers = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
