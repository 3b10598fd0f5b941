"""Logs on stdout, one entry per line: Cloud Logging JSON deployed, readable lines locally.

Cloud Run forwards stdout to Cloud Logging, which lifts ``severity``, ``message``,
``httpRequest`` and ``logging.googleapis.com/trace`` out of a JSON line
(https://cloud.google.com/logging/docs/structured-logging#special-payload-fields).
The request's trace id is kept in a context variable so every line of a request carries it.

``LOG_FORMAT`` chooses the format (by default ``ENVIRONMENT`` does: JSON in production and
in the tests, which read the lines; a readable line in development). The readable line
(:func:`readable_line`) carries the same entry: time, name, level, message, then the other
fields as ``key=value``. ``make dev`` runs its functions with JSON and prints each line with
:func:`readable_line` itself, as it also counts them for ``/dev/metrics`` (``dev/logs.py``).

Never pass a token, a secret or a message's text to a logger: log ids and sizes instead.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from contextvars import ContextVar
from datetime import datetime
from typing import Any

_trace: ContextVar[str | None] = ContextVar("trace", default=None)

TRACE_FIELD = "logging.googleapis.com/trace"

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


def log_entry(
    record: logging.LogRecord, project_id: str | None, function: str | None
) -> dict[str, Any]:
    """A record as the fields of one Cloud Logging entry (what either format writes)."""
    entry: dict[str, Any] = {
        "severity": record.levelname,
        "message": record.getMessage(),
        "logger": record.name,
        "time": f"{_utc_second(int(record.created))}.{int(record.msecs):03d}Z",
    }
    if function:
        entry["function"] = function
    trace_id = _trace.get()
    if trace_id:
        entry[TRACE_FIELD] = f"projects/{project_id}/traces/{trace_id}" if project_id else trace_id
    fields = vars(record)
    # The extra= fields: a set difference in C rather than a test per record attribute.
    for key in fields.keys() - _RECORD_ATTRIBUTES:
        if not key.startswith("_"):
            entry[key] = fields[key]
    return entry


@functools.lru_cache(maxsize=4)
def _utc_second(epoch_second: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` of a second: formatted once per second, not once per line."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch_second))


class CloudLoggingFormatter(logging.Formatter):
    """Formats a record as one JSON object with Cloud Logging's special fields."""

    def __init__(self, project_id: str | None = None, function: str | None = None) -> None:
        super().__init__()
        self._project_id = project_id
        self._function = function

    def format(self, record: logging.LogRecord) -> str:
        entry = log_entry(record, self._project_id, self._function)
        if record.exc_info:
            entry["stack_trace"] = self.formatException(record.exc_info)
        return self.render(entry, record)

    def render(self, entry: dict[str, Any], record: logging.LogRecord) -> str:
        """The entry as the line written: here Cloud Logging's JSON."""
        return json.dumps(entry, default=str, ensure_ascii=False)


# --- the readable format (ENVIRONMENT=development) -----------------------------------------

# How wide the name column is: the longest function name (clerk_webhook, storage_sweep).
NAME_WIDTH = 13
_LEVELS = {"WARNING": "WARN", "CRITICAL": "ERROR"}
# Fields every line has, or that only a machine reads: not repeated as key=value.
_NOT_SHOWN = frozenset(
    {"severity", "message", "logger", "time", "function", "stack_trace", "httpRequest", TRACE_FIELD}
)
MAX_FIELD_CHARS = 120


def _clock(timestamp: Any) -> str:
    """``2026-11-26T17:03:58.123Z`` as this machine's local ``17:03:58``."""
    if isinstance(timestamp, str):
        try:
            moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
        except ValueError:
            return timestamp[:8].ljust(8)
        return moment.astimezone().strftime("%H:%M:%S")
    return time.strftime("%H:%M:%S")


def _shorten(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= MAX_FIELD_CHARS else text[: MAX_FIELD_CHARS - 1] + "…"


def readable_line(entry: dict[str, Any], name: str | None = None, text: str | None = None) -> str:
    """One entry as a line a person reads: time, name, level, message, the other fields.

    ``17:03:58 chats_crud    INFO  POST /api/chats/create 200 · 12 ms  user=user_demo``

    Args:
        entry: the fields of a Cloud Logging entry (:func:`log_entry`, or a JSON line).
        name: the process the line is from (default: the entry's ``function``).
        text: what to write instead of the message and its fields (a summary of the entry).
    """
    name = name or str(entry.get("function") or entry.get("logger") or "")
    severity = str(entry.get("severity") or "INFO")
    level = _LEVELS.get(severity, severity)
    if text is None:
        text = str(entry.get("message", ""))
        request = entry.get("httpRequest")
        if isinstance(request, dict) and isinstance(request.get("latency"), str):
            text += f" · {_format_seconds(request['latency'])}"
        fields = [
            f"{key}={_shorten(value)}"
            for key, value in entry.items()
            if key not in _NOT_SHOWN and value is not None
        ]
        if fields:
            text += "  " + " ".join(fields)
    line = f"{_clock(entry.get('time'))} {name:<{NAME_WIDTH}} {level:<5} {text}"
    if entry.get("stack_trace"):
        line += "\n" + str(entry["stack_trace"]).rstrip()
    return line


def _format_seconds(latency: str) -> str:
    """Cloud Logging's ``"0.012345s"`` as ``12 ms`` (or ``1.20 s``)."""
    try:
        seconds = float(latency.removesuffix("s"))
    except ValueError:
        return latency
    return f"{seconds:.2f} s" if seconds >= 1 else f"{seconds * 1000:.0f} ms"


class ReadableFormatter(CloudLoggingFormatter):
    """Formats a record as one :func:`readable_line` (local development): the same entry."""

    def render(self, entry: dict[str, Any], record: logging.LogRecord) -> str:
        return readable_line(entry, self._function or record.name)


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


# Libraries that log every call at INFO ("HTTP Request: POST ...", "AFC is enabled ..."):
# their warnings and errors are what an operator needs.
CHATTY_LIBRARIES = ("httpx", "httpx2", "httpcore", "httpcore2", "google_genai")


def configure_logging(
    project_id: str | None,
    debug: bool = False,
    function: str | None = None,
    *,
    readable: bool = False,
) -> None:
    """Send every logger's output to stdout, one entry per line; idempotent.

    Args:
        project_id: names the trace of each line (Cloud Logging's trace field).
        debug: DEBUG-level lines too.
        function: the entry point's name, written on every line, so a line names the
            function that wrote it wherever it is read.
        readable: :class:`ReadableFormatter`'s lines instead of Cloud Logging JSON.
    """
    lean_records()
    root = logging.getLogger()
    ours = (CloudLoggingFormatter, ReadableFormatter)
    if any(isinstance(handler.formatter, ours) for handler in root.handlers):
        return
    handler = logging.StreamHandler(sys.stdout)
    formatter = ReadableFormatter if readable else CloudLoggingFormatter
    handler.setFormatter(formatter(project_id, function))
    root.handlers = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for library in CHATTY_LIBRARIES:
        logging.getLogger(library).setLevel(logging.DEBUG if debug else logging.WARNING)
