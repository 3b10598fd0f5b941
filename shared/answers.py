"""Answers in progress: resumable generations, following one from any instance, stopping one.

A chat turn writes its answer into the placeholder row :mod:`shared.chats` reserved for it.
This module owns what lets that answer outlive the request that started it (see docs/api.md,
"Resumable answers"):

* **Live answers of this instance** (:func:`register`): every turn streaming here, with the
  reason it must stop early, if any: ``stopped`` (``POST .../stop``, from any instance),
  ``server_restarting`` (SIGTERM: :func:`begin_shutdown`) or ``timeout`` (the turn's lease is
  about to lapse). The turn looks at it with each model event and tick.
* **Progress** (:class:`ProgressWriter`): a resumable answer's text is stored as it grows,
  at most every :data:`PROGRESS_INTERVAL_SECONDS`, off the turn's thread: one ``UPDATE`` per
  process and interval (each answer's row once) that also ``NOTIFY``s followers and reads
  the rows' stop flags.
* **Following** (:func:`follow`): ``GET .../stream`` replays the stored text after an offset,
  then follows it live until it ends, from any instance. Each worker process has one
  ``LISTEN`` connection (:class:`Listener`) fanning notifications out to its followers and
  generations; a follower also polls every :data:`POLL_SECONDS` in case a notification was
  missed (the listener reconnecting, a notification queue overflowing).

Offsets (``event_id``) count the stored answer's characters (Unicode code points, which
PostgreSQL's ``substr`` and ``char_length`` count too): the text a client has after the event
with id ``n`` is exactly the answer's first ``n`` characters.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import select
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from shared.db import Database, Row, Transaction
from shared.errors import NotFound, UnprocessableEntity
from shared.model_events import Heartbeat
from shared.schemas import DoneEvent, ErrorEvent, StreamEvent

logger = logging.getLogger("raven.answers")

CHANNEL = "raven_answers"
# A resumable answer is stored at most this often while it grows (a follower on another
# instance sees new text within about this long, plus a notification's round trip).
PROGRESS_INTERVAL_SECONDS = 0.2
# How often a follower reads the row when no notification woke it.
POLL_SECONDS = 1.0
# How often a turn looks at its stop reason while the model is silent.
TICK_SECONDS = 0.25
# The listener's connection is checked (and late notifications read) at least this often.
LISTEN_CHECK_SECONDS = 1.0

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
    global _live_lock, _listener, _writer
    _live.clear()
    _live_lock = threading.Lock()
    _listener = None
    _writer = None
    _draining.clear()


os.register_at_fork(after_in_child=_forget_process_state)


# --- storage -------------------------------------------------------------------------------


def _notice(kind: str, answer_id: uuid.UUID, length: int = 0) -> str:
    """A notification's payload (ASCII, as pg8000 reads payloads): ``<kind> <id> <length>``."""
    return f"{kind} {answer_id} {length}"


def record_progress(db: Database, answers: list[dict[str, Any]]) -> dict[uuid.UUID, bool]:
    """Store resumable answers' text so far and tell their followers, in one statement.

    ``answers``: ``{"id", "content", "length"}`` each. The whole text is written (a retry on
    a fresh connection is harmless), only while the answer is still streaming (a late write
    never undoes the final one), and followers are notified when it commits.

    Returns:
        Each updated answer's stop flag; an answer missing from it has ended or is gone.
    """
    rows = db.fetch_all(
        """
        WITH updated AS (
            UPDATE messages m SET content = u.content
            FROM jsonb_to_recordset(CAST(:answers AS jsonb)) AS u(id uuid, content text,
                                                                  length integer)
            WHERE m.id = u.id AND m.streaming_until IS NOT NULL
            RETURNING m.id, m.stop_requested, u.length
        )
        SELECT id, stop_requested,
               pg_notify(:channel, 'p ' || id::text || ' ' || length::text) AS notified
        FROM updated
        """,
        answers=answers,
        channel=CHANNEL,
    )
    return {uuid.UUID(str(row["id"])): bool(row["stop_requested"]) for row in rows}


def mark_ended(tx: Transaction, answer_id: uuid.UUID, error_code: str | None, length: int) -> None:
    """In the transaction that stores the answer: how it ended, and tell its followers."""
    if error_code is not None:
        tx.execute(
            "UPDATE messages SET error_code = :code WHERE id = :id", id=answer_id, code=error_code
        )
    tx.execute(
        "SELECT pg_notify(:channel, :payload)",
        channel=CHANNEL,
        payload=_notice("p", answer_id, length),
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


# --- progress of one resumable answer -------------------------------------------------------


class ProgressWriter:
    """Stores every resumable answer of this process as it grows, off the turns' threads.

    A turn only notes its text (:meth:`note`: a dict entry, no I/O); one thread writes what
    changed at most every :data:`PROGRESS_INTERVAL_SECONDS`, every answer in one statement,
    so a slow database never delays a chunk and many streams cost one round trip. A turn
    told by the row to stop (``POST .../stop`` from an instance that missed the NOTIFY) or
    whose row is gone is stopped.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._lock = threading.Lock()
        self._pending: dict[uuid.UUID, tuple[LiveAnswer, list[str], int, int]] = {}
        self._changed = threading.Event()
        self._thread: threading.Thread | None = None

    def note(self, live: LiveAnswer, pieces: list[str], length: int) -> None:
        """The answer is ``pieces`` (a list the turn appends to), ``length`` characters."""
        with self._lock:
            self._pending[live.answer_id] = (live, pieces, len(pieces), length)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="answers-progress")
                self._thread.daemon = True
                self._thread.start()
        self._changed.set()

    def forget(self, live: LiveAnswer) -> None:
        """The turn is storing its answer itself: nothing more to write for it."""
        with self._lock:
            self._pending.pop(live.answer_id, None)

    def _run(self) -> None:
        while True:
            self._changed.wait()
            self._changed.clear()
            with self._lock:
                batch, self._pending = self._pending, {}
            if batch:
                self._write(batch)
            time.sleep(PROGRESS_INTERVAL_SECONDS)

    def _write(self, batch: dict[uuid.UUID, tuple[LiveAnswer, list[str], int, int]]) -> None:
        answers = [
            {"id": str(answer_id), "content": "".join(pieces[:count]), "length": length}
            for answer_id, (_, pieces, count, length) in batch.items()
        ]
        try:
            flags = record_progress(self._db, answers)
        except Exception:  # the next write, or the turn's own final one, stores it
            logger.warning("could not store progress", exc_info=True)
            return
        for answer_id, (live, _, _, _) in batch.items():
            if flags.get(answer_id, True):
                live.stop("stopped")


_writer: ProgressWriter | None = None


def progress_writer(db: Database) -> ProgressWriter:
    """This process's progress writer."""
    global _writer
    with _listener_lock:
        if _writer is None:
            _writer = ProgressWriter(db)
        return _writer


# --- the listener: one LISTEN connection per process ----------------------------------------


class Listener:
    """One ``LISTEN`` connection for this process; wakes followers and stops generations."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        self._lock = threading.Lock()
        self._waiters: dict[uuid.UUID, set[threading.Event]] = collections.defaultdict(set)
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()  # set while the connection listens

    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="answers-listener")
                self._thread.daemon = True
                self._thread.start()

    def subscribe(self, answer_id: uuid.UUID) -> threading.Event:
        """An event set whenever the answer changes (or the process drains)."""
        self.start()
        wake = threading.Event()
        with self._lock:
            self._waiters[answer_id].add(wake)
        return wake

    def unsubscribe(self, answer_id: uuid.UUID, wake: threading.Event) -> None:
        with self._lock:
            waiters = self._waiters.get(answer_id)
            if waiters is not None:
                waiters.discard(wake)
                if not waiters:
                    del self._waiters[answer_id]

    def wake_all(self) -> None:
        for waiters in list(self._waiters.values()):
            for wake in list(waiters):
                wake.set()

    def dispatch(self, payload: str) -> None:
        kind, _, rest = payload.partition(" ")
        try:
            answer_id = uuid.UUID(rest.split(" ", 1)[0])
        except ValueError:
            return
        if kind == "s":
            stop_local(answer_id, "stopped")
        with self._lock:
            waiters = list(self._waiters.get(answer_id, ()))
        for wake in waiters:
            wake.set()

    def _run(self) -> None:
        while True:
            connection = None
            try:
                connection = self._connect()
                connection.autocommit = True
                # pg8000 keeps the last 100 by default; a burst must not push any out.
                connection.notifications = collections.deque(maxlen=100_000)
                connection.execute_simple(f"LISTEN {CHANNEL}")
                self.listening.set()
                self._listen(connection)
            except Exception:  # followers poll meanwhile; reconnect shortly
                logger.warning("answers listener lost its connection", exc_info=True)
            finally:
                self.listening.clear()
                if connection is not None:
                    with contextlib.suppress(Exception):
                        connection.close()
            self.wake_all()  # what was missed meanwhile: followers read the rows again
            time.sleep(1.0)

    def _listen(self, connection: Any) -> None:
        sock = connection._usock  # pg8000 reads notifications only while running a statement
        last_check = time.monotonic()
        while True:
            readable, _, _ = select.select([sock], [], [], LISTEN_CHECK_SECONDS)
            if readable or time.monotonic() - last_check >= LISTEN_CHECK_SECONDS:
                connection.execute_simple("SELECT 1")  # reads what arrived, checks the link
                last_check = time.monotonic()
            notifications = connection.notifications
            while notifications:
                _, channel, payload = notifications.popleft()
                if channel == CHANNEL:
                    self.dispatch(payload)


_listener: Listener | None = None
_listener_lock = threading.Lock()


def listener(connect: Callable[[], Any]) -> Listener:
    """This process's listener, started on first use."""
    global _listener
    with _listener_lock:
        if _listener is None:
            _listener = Listener(connect)
        _listener.start()
        return _listener


# --- following an answer --------------------------------------------------------------------


@dataclass(frozen=True)
class AnswerChunk:
    """A piece of the answer, and the answer's length once it is added (its event id)."""

    text: str
    end: int


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
