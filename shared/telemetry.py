"""One structured event per chat turn, per task, per upload check and per storage sweep.

The operator's numbers (time to first token, token spend, outcomes by cause, task failures,
the deletion backlog) come from these JSON log lines alone: Terraform turns them into
log-based metrics, a dashboard and alerts (``terraform/monitoring.tf``), so the functions
import no metrics SDK and pay nothing for it at cold start. Locally, ``make dev`` prints the
same events as one readable line each and counts them at ``/dev/metrics`` (``dev/logs.py``).

Every event is one line from the ``raven.telemetry`` logger with an ``event`` field naming
its kind; the field names below are what ``terraform/monitoring.tf``'s filters and
extractors read (``tests/test_monitoring.py`` runs those filters against lines the local
stack really wrote, so renaming a field here fails there). Ids, counts and durations only:
never a message's text, a token or a secret.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar

from shared.errors import ApiError

logger = logging.getLogger("raven.telemetry")

# The ``event`` field of each kind of line.
CHAT_TURN = "chat_turn"
TASK = "task"
MEDIA_CHECK = "media_check"
STORAGE_SWEEP = "storage_sweep"

# Gemini's finish reasons that mean the answer was cut by a safety or policy filter
# (https://ai.google.dev/api/generate-content#FinishReason).
BLOCKED_FINISH_REASONS = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"}
)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def received_at(environ: dict[str, Any]) -> float:
    """When the request reached the function (``perf_counter``), as :mod:`shared.web` noted it."""
    started = environ.get("raven.received")
    return started if isinstance(started, float) else time.perf_counter()


class TurnRecord:
    """What one ``POST /chat`` turn did, filled as it goes and logged once when it ends.

    ``chat_stream`` creates it when the request arrives, passes the turn's events through
    :meth:`observe` (which times the first chunk and classifies how the stream ended) and
    reports what only it knows (the model's finish, the window, retries, when the answer was
    stored). The line is written exactly once: when the stream's events are over however
    they end (before the server writes the body's end: on Cloud Run nothing after a response
    can count on CPU, a log line included), or when the request is refused before a stream
    starts (:meth:`refused`).

    Fields of the line: ``outcome`` (``ok``, ``truncated``, ``blocked``, ``empty``,
    ``client_left``, ``model_error:<busy|unavailable|refused>``, ``not_saved``,
    ``rate_limited``, ``rejected``, ``unavailable``, ``error``), ``model``, ``ttft_ms``
    (request received -> first chunk written to the client), ``to_model_ms`` (request
    received -> the model call starting: all of the backend's own work before the model,
    authentication included), ``model_ttft_ms`` (model call ->
    first chunk from the model), ``turn_ms``, ``input_tokens``, ``output_tokens``,
    ``finish_reason``, ``retries``, ``window_messages``, ``chunks``, ``chat``, and ``code``
    (the error code) when the turn failed. The turn's end, from the model's end of the
    answer (its stream read to the end): ``stored_ms`` (-> the answer and usage stored, their
    commit confirmed), ``done_ms`` (-> the ending event written to the client) and
    ``end_ms`` (-> the stream's events over, the after-turn tasks included: taken as the
    line is written, just before the server writes the body's end).
    """

    __slots__ = (
        "_logged",
        "chat",
        "chunks",
        "code",
        "ending_sent",
        "finish_reason",
        "first_chunk_sent",
        "first_model_chunk",
        "input_tokens",
        "model",
        "model_called",
        "model_ended",
        "outcome",
        "output_tokens",
        "received",
        "retries",
        "stored",
        "window_messages",
    )

    def __init__(self, received: float, model: str) -> None:
        self.received = received
        self.model = model
        self.chat: str | None = None
        self.window_messages: int | None = None
        self.retries = 0
        self.finish_reason: str | None = None
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.model_called: float | None = None
        self.first_model_chunk: float | None = None
        self.first_chunk_sent: float | None = None
        self.model_ended: float | None = None
        self.stored: float | None = None
        self.ending_sent: float | None = None
        self.chunks = 0
        self.outcome = "error"
        self.code: str | None = None
        self._logged = False

    def model_finished(
        self, input_tokens: int, output_tokens: int, finish_reason: str | None
    ) -> None:
        """The model's own end of the answer: its usage and finish reason."""
        self.model_ended = time.perf_counter()
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.finish_reason = finish_reason

    def answer_stored(self) -> None:
        """The turn's ending is stored (its commit confirmed)."""
        self.stored = time.perf_counter()

    def observe(self, events: Iterator[Any], text_chunk: type) -> Iterator[Any]:
        """Pass the turn's events through, timing them; log the turn when the stream ends.

        The first event is ``start``: the model is called as soon as the client has it.
        Each ``text_chunk`` is the model's text; a ``done`` or ``error`` event (by its
        ``type``) tells how the turn ended; the client leaving shows as GeneratorExit.
        """
        clock = time.perf_counter
        try:
            for event in events:
                if type(event) is text_chunk:
                    if self.first_model_chunk is None:
                        self.first_model_chunk = clock()
                    self.chunks += 1
                    yield event
                    if self.first_chunk_sent is None:
                        self.first_chunk_sent = clock()  # the framework wrote it: it is sent
                    continue
                kind = getattr(event, "type", None)
                if kind == "done":
                    self.outcome = self._finished_outcome()
                elif kind == "error":
                    self.code = getattr(event, "code", None)
                    self.outcome = _error_outcome(self.code)
                yield event
                if kind == "start":
                    self.model_called = clock()
                elif kind in ("done", "error"):
                    self.ending_sent = clock()
        except GeneratorExit:
            self.outcome = "client_left"
            close = getattr(events, "close", None)
            if close is not None:
                close()  # the turn stores what it has now, before its line is written
            raise
        finally:
            self.log()

    def _finished_outcome(self) -> str:
        if self.finish_reason in BLOCKED_FINISH_REASONS:
            return "blocked"
        if self.finish_reason == "MAX_TOKENS":
            return "truncated"
        if self.chunks == 0:
            return "empty"
        return "ok"

    def refused(self, error: BaseException) -> None:
        """The request ended before any stream (bad input, rate limit, database down...)."""
        if isinstance(error, ApiError):
            self.code = error.code
            if error.status == 429:
                self.outcome = "rate_limited"
            elif error.status == 503:
                self.outcome = "unavailable"
            else:
                self.outcome = "rejected"
        else:
            self.outcome = "error"
        self.log()

    def fields(self) -> dict[str, Any]:
        """The event's fields (unknown values left out, so no metric sees a false zero)."""
        now = time.perf_counter()
        entry: dict[str, Any] = {
            "event": CHAT_TURN,
            "outcome": self.outcome,
            "model": self.model,
            "turn_ms": _ms(now - self.received),
            "retries": self.retries,
            "chunks": self.chunks,
        }
        if self.first_chunk_sent is not None:
            entry["ttft_ms"] = _ms(self.first_chunk_sent - self.received)
        if self.model_called is not None:
            # The backend's whole share before the model: authentication, the body, the turn.
            entry["to_model_ms"] = _ms(self.model_called - self.received)
        if self.first_model_chunk is not None and self.model_called is not None:
            entry["model_ttft_ms"] = _ms(self.first_model_chunk - self.model_called)
        ended = self.model_ended
        if ended is not None:
            if self.stored is not None:
                entry["stored_ms"] = _ms(self.stored - ended)
            if self.ending_sent is not None:
                entry["done_ms"] = _ms(self.ending_sent - ended)
            entry["end_ms"] = _ms(now - ended)
        if self.input_tokens is not None:
            entry["input_tokens"] = self.input_tokens
        if self.output_tokens is not None:
            entry["output_tokens"] = self.output_tokens
        if self.finish_reason is not None:
            entry["finish_reason"] = self.finish_reason
        if self.window_messages is not None:
            entry["window_messages"] = self.window_messages
        if self.chat is not None:
            entry["chat"] = self.chat
        if self.code is not None:
            entry["code"] = self.code
        return entry

    def log(self) -> None:
        """Write the turn's line; only the first call writes."""
        if self._logged:
            return
        self._logged = True
        severity = logging.WARNING if self.outcome in ("error", "not_saved") else logging.INFO
        logger.log(severity, "chat turn", extra=self.fields())


def _error_outcome(code: str | None) -> str:
    if code and code.startswith("model_"):
        return "model_error:" + code[len("model_") :]
    if code == "answer_not_saved":
        return "not_saved"
    return "error"


# --- tasks, upload checks, the storage sweep -------------------------------------------------

P = ParamSpec("P")
R = TypeVar("R")


def log_task(task: str, outcome: str, duration_ms: float, **fields: Any) -> None:
    """One background task's line: which task, how it ended, how long it took."""
    severity = logging.WARNING if outcome in ("error", "retry") else logging.INFO
    logger.log(
        severity,
        f"{task} task {outcome}",
        extra={
            "event": TASK,
            "task": task,
            "outcome": outcome,
            "duration_ms": duration_ms,
            **fields,
        },
    )


def logs_task(
    task: str, outcome_of: Callable[[Any], str], **context: Callable[..., Any]
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a task handler so each call writes one task line.

    Args:
        task: the task's name (``summary``...).
        outcome_of: the outcome of a handler's return value (its Response).
        context: extra fields, each computed from the handler's arguments before it runs
            (e.g. how long the task waited in its queue).

    A handler that raises logs ``retry`` for a 429/503 (the queue will deliver it again)
    and ``error`` for anything else, then re-raises.
    """

    def decorate(handler: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(handler)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            started = time.perf_counter()
            fields: dict[str, Any] = {}
            for name, compute in context.items():
                value = compute(*args, **kwargs)
                if value is not None:
                    fields[name] = value
            try:
                result = handler(*args, **kwargs)
            except ApiError as error:
                outcome = "retry" if error.status in (429, 503) else "error"
                log_task(
                    task, outcome, _ms(time.perf_counter() - started), code=error.code, **fields
                )
                raise
            except Exception:
                log_task(task, "error", _ms(time.perf_counter() - started), **fields)
                raise
            log_task(task, outcome_of(result), _ms(time.perf_counter() - started), **fields)
            return result

        return run

    return decorate


def logs_media_check(check: Callable[P, R]) -> Callable[P, R]:
    """Decorate the upload check: one line per media reference checked, ``ok`` or its error code."""

    @functools.wraps(check)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            result = check(*args, **kwargs)
        except ApiError as error:
            logger.info("media check", extra={"event": MEDIA_CHECK, "outcome": error.code})
            raise
        logger.info("media check", extra={"event": MEDIA_CHECK, "outcome": "ok"})
        return result

    return run


def log_storage_sweep(
    finished: int, due: int, pending: int, oldest_pending_seconds: float | None, duration_ms: float
) -> None:
    """What a storage sweep deleted and what is left (``oldest_pending_s``: oldest row's age)."""
    fields: dict[str, Any] = {
        "event": STORAGE_SWEEP,
        "finished": finished,
        "due": due,
        "pending": pending,
        "duration_ms": duration_ms,
    }
    if oldest_pending_seconds is not None:
        fields["oldest_pending_s"] = round(oldest_pending_seconds, 1)
    logger.info("storage sweep", extra=fields)


# --- a Cloud Tasks delivery's fields, for logs_task ----------------------------------------------


def task_queue_delay(request: Any, *_: Any) -> float | None:
    """How long the task waited past its schedule time (Cloud Tasks' X-CloudTasks-TaskETA)."""
    try:
        return round(max(0.0, time.time() - float(request.headers["X-CloudTasks-TaskETA"])), 3)
    except (KeyError, ValueError):
        return None


def task_attempt(request: Any, *_: Any) -> int | None:
    """Which delivery of the task this is, from Cloud Tasks' X-CloudTasks-TaskRetryCount."""
    retries = request.headers.get("X-CloudTasks-TaskRetryCount", "")
    return int(retries) + 1 if retries.isdigit() else None
