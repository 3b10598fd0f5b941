"""Answers in progress: resumable generations, following one from any instance, stopping one.

A chat turn writes its answer into the placeholder row :mod:`shared.chats` reserved for it.
This module owns what lets that answer outlive the request that started it (see docs/api.md,
"Resumable answers"):

* **Live answers of this instance** (:func:`register`): every turn streaming here, with the
  reason it must stop early, if any: ``stopped`` (``POST .../stop``, from any instance),
  ``server_restarting`` (SIGTERM: :func:`begin_shutdown`) or ``timeout`` (the turn's lease is
  about to lapse). The turn looks at it with each model event and tick.
* **Progress** (:mod:`shared.answer_progress`): a resumable answer's text is stored as it
  grows, off the turn's thread, and each store ``NOTIFY``s its followers.
* **Following** (:func:`follow`): ``GET .../stream`` replays the stored text after an offset,
  then follows it live until it ends, from any instance. Each worker process has one
  ``LISTEN`` connection (:func:`listener`, a :class:`shared.notifications.Listener`) fanning
  notifications out to its followers and generations (a stop notice stops the generation
  at once); progress notices go on a channel of their own (:data:`PROGRESS_CHANNEL`),
  listened on only while the process has a follower. A follower also polls every
  :data:`POLL_SECONDS` in case a notification was missed (the listener reconnecting, a
  notification queue overflowing).

Offsets (``event_id``) count the stored answer's characters (Unicode code points, which
PostgreSQL's ``substr`` and ``char_length`` count too): the text a client has after the event
with id ``n`` is exactly the answer's first ``n`` characters.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from shared import chats, usage
from shared.db import Database, Row
from shared.errors import NotFound, ServiceUnavailable, UnprocessableEntity
from shared.model_events import AnswerChunk, Heartbeat
from shared.notifications import Listener
from shared.stream_events import DoneEvent, ErrorEvent, StreamEvent

# Stops and endings: every process listens (a stop must reach its generation).
CHANNEL = "raven_answers"
# Progress (several a second per growing answer): listened on only by a process with a
# follower, so the generating instance's listener does not wake for its own answers' writes.
PROGRESS_CHANNEL = "raven_answer_progress"
# How often a follower reads the row when no notification woke it.
POLL_SECONDS = 1.0
# How often a turn looks at its stop reason while the model is silent.
TICK_SECONDS = 0.25

# The largest offset a client may name (PostgreSQL's substr takes an integer).
MAX_OFFSET = 2**31 - 2

StopReason = Literal["stopped", "server_restarting", "timeout"]

# What a user reads when the model withheld (or stopped) an answer on its own checks.
BLOCKED_DETAIL = {
    "safety": "The answer was withheld by the model's safety filters. Try rephrasing.",
    "recitation": "The answer was stopped because it repeated existing material too closely.",
    "other": "The model declined to answer this message.",
    "stop": "The model declined to answer this message.",
    "max_tokens": "The model declined to answer this message.",
}

# What a follower reads when the answer it follows ended with an error (messages.error_code).
ERROR_DETAIL = {
    "model_busy": "The model is busy right now; please try again shortly.",
    "model_unavailable": "The model is unavailable right now; please try again.",
    "model_refused": "The model could not answer this request.",
    "server_restarting": "The server restarted while writing this answer; please retry.",
    "answer_timeout": "The answer took too long and was cut short.",
    "client_disconnected": "The answer was cut short when its client disconnected.",
    "answer_not_saved": "The answer could not be saved; please retry.",
    "answer_abandoned": "The server writing this answer stopped; please retry.",
}
RETRYABLE_CODES = frozenset(
    {"model_busy", "model_unavailable", "server_restarting", "answer_abandoned"}
)


def error_event(
    code: str, message_id: str | None, length: int, detail: str | None = None
) -> ErrorEvent:
    """An ``error`` event for an answer that ended (or could not go on) this way."""
    return ErrorEvent(
        detail=detail or ERROR_DETAIL.get(code, "The answer was cut short."),
        code=code,
        message_id=message_id,
        retryable=code in RETRYABLE_CODES,
        event_id=length,
    )


# --- this instance's live answers ----------------------------------------------------------


@dataclass(eq=False)
class LiveAnswer:
    """A turn streaming on this instance, and why it must stop early (None: it need not)."""

    answer_id: uuid.UUID
    deadline: float  # time.monotonic() past which the turn ends (its lease is lapsing)
    stop_reason: StopReason | None = None

    def stop(self, reason: StopReason) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason

    def check(self) -> StopReason | None:
        """Why the turn must end now, if it must."""
        if self.stop_reason is None and time.monotonic() >= self.deadline:
            self.stop_reason = "timeout"
        return self.stop_reason


_live: dict[uuid.UUID, LiveAnswer] = {}
_live_lock = threading.Lock()
_draining = threading.Event()


def register(answer_id: uuid.UUID, lifetime_seconds: float) -> LiveAnswer:
    """Note a turn streaming here (until :func:`unregister`); stopped at once if draining."""
    live = LiveAnswer(answer_id, time.monotonic() + lifetime_seconds)
    if _draining.is_set():
        live.stop("server_restarting")
    with _live_lock:
        _live[answer_id] = live
    return live


def unregister(live: LiveAnswer) -> None:
    with _live_lock:
        if _live.get(live.answer_id) is live:
            del _live[live.answer_id]


def stop_local(answer_id: uuid.UUID, reason: StopReason) -> bool:
    """Stop a turn streaming on this instance; whether one was."""
    with _live_lock:
        live = _live.get(answer_id)
    if live is None:
        return False
    live.stop(reason)
    return True


def draining() -> bool:
    """Whether this instance is shutting down (it takes no new turns)."""
    return _draining.is_set()


def begin_shutdown() -> None:
    """SIGTERM: stop every turn streaming here (each stores what it has, then ends its stream
    with ``server_restarting``), and every follower. Safe in a signal handler: no blocking."""
    _draining.set()
    for live in list(_live.values()):
        live.stop("server_restarting")
    listener = _listener
    if listener is not None:
        listener.wake_all()


def _forget_process_state() -> None:
    global _live_lock, _listener
    _live.clear()
    _live_lock = threading.Lock()
    _listener = None
    _draining.clear()


os.register_at_fork(after_in_child=_forget_process_state)


# --- storage -------------------------------------------------------------------------------


def _notice(kind: str, answer_id: uuid.UUID, length: int = 0) -> str:
    """A notification's payload (ASCII, as pg8000 reads payloads): ``<kind> <id> <length>``."""
    return f"{kind} {answer_id} {length}"


def store_ending(
    db: Database,
    user_id: str,
    answer_id: uuid.UUID,
    answer: dict[str, Any] | None,
    input_tokens: int,
    output_tokens: int,
    length: int,
) -> None:
    """Store how a turn ended, in one statement (one round trip, one transaction): the
    answer's row (``answer``: :func:`shared.chats.finished_answer`'s parameters; None: the
    empty placeholder is removed), the turn's tokens added to the user's usage, and a notice
    to the answer's followers, sent when it commits.

    Safe to repeat (:meth:`shared.db.Database.write` retries on a broken connection): the
    usage is added only while the answer's row still holds its lease (or is gone with its
    chat), which the statement itself ends.
    """
    kept = answer is not None
    db.write(
        f"""
        WITH answer AS ({chats.FINISH_ANSWER if kept else chats.DISCARD_ANSWER}),
             counted AS ({usage.record_usage_sql(chats.ANSWER_NOT_STORED)})
        SELECT pg_notify(:channel, :payload) AS notified
        """,
        answer_id=answer_id,
        user_id=user_id,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        channel=CHANNEL,
        payload=_notice("p", answer_id, length),
        **(answer or {}),
    )


def _owned_answer(
    db: Database, user_id: str, chat_id: uuid.UUID, message_id: uuid.UUID, after: int
) -> Row | None:
    return db.fetch_one(
        """
        SELECT m.role, substr(m.content, :start) AS text, char_length(m.content) AS length,
               m.streaming_until IS NOT NULL AS streaming,
               coalesce(m.streaming_until > now(), false) AS lease_live,
               m.finish_reason, m.error_code, m.token_count
        FROM messages m JOIN chats c ON c.id = m.chat_id
        WHERE m.id = :id AND m.chat_id = :chat_id AND c.user_id = :user_id
        """,
        id=message_id,
        chat_id=chat_id,
        user_id=user_id,
        start=after + 1,
    )


def message_not_found() -> NotFound:
    return NotFound("Message not found in this chat", code="message_not_found")


def answer_ids(chat_id: str, message_id: str) -> tuple[uuid.UUID, uuid.UUID]:
    """An answer's path ids; one that is not an id is a 404 like a missing one."""
    chat = chats.parse_chat_id(chat_id)
    try:
        return chat, uuid.UUID(message_id)
    except ValueError:
        raise message_not_found() from None


def refuse_when_draining() -> None:
    """A request that would start or follow an answer, while this instance drains: 503.

    Raises:
        ServiceUnavailable: ``server_restarting``, retry in a second (on another instance).
    """
    if _draining.is_set():
        raise ServiceUnavailable(
            "The server is restarting; please retry.", retry_after=1, code="server_restarting"
        )


def request_stop(db: Database, user_id: str, chat_id: uuid.UUID, message_id: uuid.UUID) -> bool:
    """Ask the instance generating an answer to stop it; whether it was still being written.

    The flag is stored in the row (the generation reads it with its next progress write)
    and announced with ``NOTIFY`` (its instance's listener stops it at once).

    Raises:
        NotFound: no such answer in the caller's chat (someone else's is the same 404).
    """
    with db.transaction() as tx:
        row = tx.fetch_one(
            """
            UPDATE messages m SET stop_requested = (m.streaming_until IS NOT NULL)
            FROM chats c
            WHERE m.id = :id AND m.chat_id = :chat_id AND m.role = 'assistant'
              AND c.id = m.chat_id AND c.user_id = :user_id
            RETURNING m.streaming_until IS NOT NULL AS streaming
            """,
            id=message_id,
            chat_id=chat_id,
            user_id=user_id,
        )
        if row is None:
            raise message_not_found()
        if row["streaming"]:
            tx.execute(
                "SELECT pg_notify(:channel, :payload)",
                channel=CHANNEL,
                payload=_notice("s", message_id),
            )
    return bool(row["streaming"])


_listener: Listener | None = None
_listener_lock = threading.Lock()


def _on_notice(kind: str, answer_id: uuid.UUID) -> None:
    if kind == "s":  # POST .../stop on any instance: stop the generation if it runs here
        stop_local(answer_id, "stopped")


def listener(connect: Callable[[], Any]) -> Listener:
    """This process's listener (one ``LISTEN`` connection on :data:`CHANNEL`, and on
    :data:`PROGRESS_CHANNEL` while it has followers), started on first use: it wakes
    followers and stops generations asked to stop."""
    global _listener
    with _listener_lock:
        if _listener is None:
            _listener = Listener(
                connect,
                CHANNEL,
                _on_notice,
                follow_channel=PROGRESS_CHANNEL,
                thread_name="answers-listener",
            )
        _listener.start()
        return _listener


# --- following an answer --------------------------------------------------------------------


FollowEvent = AnswerChunk | StreamEvent | Heartbeat


def ending_event(row: Row, message_id: str) -> StreamEvent:
    """The last event of a stored answer's stream, as its generating stream ended it."""
    length = row["length"]
    reason = row["finish_reason"]
    if reason in ("safety", "recitation"):
        return ErrorEvent(
            detail=BLOCKED_DETAIL[reason], code="blocked", message_id=message_id, event_id=length
        )
    if reason is not None:
        return DoneEvent(message_id=message_id, finish_reason=reason, event_id=length)
    return error_event(row["error_code"] or "answer_incomplete", message_id, length)


def follow(
    db: Database,
    connect: Callable[[], Any],
    user_id: str,
    chat_id: uuid.UUID,
    message_id: uuid.UUID,
    after: int,
    heartbeat_seconds: float,
) -> Iterator[FollowEvent]:
    """The answer's events after offset ``after``: what is stored, then live until it ends.

    The first read happens now, so a missing answer (or someone else's) is a 404 and an
    offset past the end of a finished answer a 422, before any stream starts.

    Raises:
        NotFound: not an answer of the caller's chat.
        UnprocessableEntity: ``after`` is past the end of the finished answer.
    """
    row = _owned_answer(db, user_id, chat_id, message_id, after)
    if row is None or row["role"] != "assistant":
        raise message_not_found()
    if not row["streaming"] and after > row["length"]:
        raise UnprocessableEntity(
            f"after: the answer has only {row['length']} characters", code="invalid_offset"
        )
    return _follow(db, connect, user_id, chat_id, message_id, after, heartbeat_seconds, row)


def _follow(
    db: Database,
    connect: Callable[[], Any],
    user_id: str,
    chat_id: uuid.UUID,
    message_id: uuid.UUID,
    offset: int,
    heartbeat_seconds: float,
    row: Row | None,
) -> Iterator[FollowEvent]:
    answer = str(message_id)
    subscription = listener(connect)
    wake = subscription.subscribe(message_id)
    last_sent = time.monotonic()
    try:
        while True:
            if row is None:
                wake.clear()  # before reading: a change after the read wakes the next wait
                row = _owned_answer(db, user_id, chat_id, message_id, offset)
            if row is None:
                yield error_event("answer_gone", answer, offset, "The answer no longer exists.")
                return
            # The stored text can lag the offset a client read from the generating instance's
            # own stream (it streams before it stores): wait until it catches up.
            if row["length"] > offset:
                yield AnswerChunk(row["text"], row["length"])
                offset = row["length"]
                last_sent = time.monotonic()
            if not row["streaming"]:
                yield ending_event(row, answer)
                return
            if not row["lease_live"]:
                yield error_event("answer_abandoned", answer, offset)
                return
            if _draining.is_set():
                yield error_event("server_restarting", answer, offset)
                return
            row = None
            wait = min(POLL_SECONDS, max(0.0, last_sent + heartbeat_seconds - time.monotonic()))
            if not wake.wait(wait) and time.monotonic() - last_sent >= heartbeat_seconds:
                yield Heartbeat()
                last_sent = time.monotonic()
    finally:
        subscription.unsubscribe(message_id, wake)


def parse_offset(last_event_id: str | None, after: int | None) -> int:
    """Where to resume: ``Last-Event-ID`` (what EventSource sends) wins over ``?after=``."""
    if last_event_id is not None:
        if not (last_event_id.isascii() and last_event_id.isdigit()) or (
            int(last_event_id) > MAX_OFFSET
        ):
            raise UnprocessableEntity(
                "Last-Event-ID: an event_id of this answer's stream is expected",
                code="invalid_offset",
            )
        return int(last_event_id)
    return after or 0
