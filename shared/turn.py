"""A turn of a chat: the rules of ``POST /chat`` between the parsed request and its stream.

A turn (see docs/api.md, "Sending a message"):

1. read the body (:mod:`shared.turn_request`: only the last message is new and must be the
   user's; the client's copy of the history is never fed to the model nor stored); check
   every media reference is one of the caller's own uploads and really in the bucket
   (:func:`shared.media.resolve_attachments`);
2. (:func:`begin`) count the message against the user's limits, resolve or create the chat
   (someone else's or unknown: 404 before any stream), store the user's message and reserve
   the answer's position; an edit or a regenerate also removes what it replaces and refuses
   a chat whose answer is still streaming (409 ``chat_busy``). A send of text does all of it
   in one statement with step 3 (one round trip, composed of the SQL of the modules owning
   each table); an edit, a regenerate or a message with media in one short transaction;
3. build the context from the store only (newest summary + recent window, one bounded query);
4. :func:`stream_answer`: ``start``, the model's chunks (and heartbeats), then ``done`` with
   usage or ``error``; the framing the request asked for only writes these events. Every
   event carries its offset into the answer (``event_id``); a turn stopped from anywhere
   (``POST .../stop``) or by the instance's shutdown ends early (:mod:`shared.answers`);
5. store the answer: complete, or, if the model failed, the client left, the user stopped it
   or the instance is shutting down, what was produced marked incomplete; add the turn's
   tokens to the user's usage (one statement: :func:`shared.answers.store_ending`). A
   resumable turn (``"resumable": true``) stores its text as it grows and is not stopped by
   the client leaving: a thread takes it over (:func:`outliving_its_client`);
6. after ``done``: a rolling summary when enough is unsummarised (:func:`summary_due`), a
   title for a chat that still has the default one (asked for by the entry point before the
   response ends: Cloud Run's CPU is there for work done while a request is open).

This module owns the rules and calls the domain modules; the model, storage and Cloud Tasks
adapters are handed in by the entry point (functions/chat_stream/main.py), so nothing here
imports an adapter.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

from shared import answer_progress, answers, chats, context, usage, users
from shared.db import (
    UNIQUE_VIOLATION,
    Database,
    DatabaseUnavailable,
    is_connection_lost,
    sqlstate,
)
from shared.model_events import (
    AnswerChunk,
    Finished,
    Heartbeat,
    ModelError,
    StreamEvent,
    TextChunk,
)
from shared.settings import Settings
from shared.stream_events import DoneEvent, ErrorEvent, StartEvent, Usage
from shared.summaries import NEWEST_SUMMARY
from shared.telemetry import TurnRecord
from shared.text import storable
from shared.token_estimate import estimate_text_tokens
from shared.turn_request import Question, TurnRequest

logger = logging.getLogger("raven.turn")

# What a user reads when the model withheld (or stopped) an answer on its own checks.
BLOCKED_DETAIL = answers.BLOCKED_DETAIL

# A turn ends itself this long before its lease (chats.TURN_LEASE_SECONDS) lapses, so the
# chat is never busy past the lease and its answer is stored by the instance writing it.
LEASE_MARGIN_SECONDS = 30

# A turn's events: the contract's events, and the model's text chunks (with their offsets)
# and heartbeats as they come (each framing writes those itself: a chunk is the hot path).
TurnEvent = StartEvent | AnswerChunk | Heartbeat | DoneEvent | ErrorEvent


@dataclass(frozen=True)
class BegunTurn:
    """A turn stored and ready for the model: where it lives and what the model gets."""

    chat_id: uuid.UUID
    user_message_id: uuid.UUID
    assistant_message_id: uuid.UUID
    user_position: int
    default_title: bool  # the chat still has its default title: ask for a generated one
    user_name: str | None
    released_media: int  # objects an edit queued for deletion from the bucket
    resumable: bool  # stored as it grows, and run to its end if its client leaves
    model_context: context.ModelContext


def sends_text_only(request: TurnRequest) -> bool:
    """A new message of text alone: :func:`begin` stores it in one statement whose rows name
    the user, so for a deleted user it fails (401 ``user_deleted``) or finds no chat (the
    caller then checks the user: ``shared.web.checks_user_itself``)."""
    return (
        request.message is not None
        and not request.message.media_refs
        and not request.regenerate
        and request.edited_id is None
    )


def begin(
    db: Database,
    settings: Settings,
    user_id: str,
    plan: str | None,
    request: TurnRequest,
    asked: Question | None,
    system_tokens: int,
) -> BegunTurn:
    """Store the turn's start (a send, an edit or a regenerate) and build the model's context.

    One short transaction counts the message against the user's limits and changes the
    chat; an edit or a regenerate also removes what it replaces (messages, summaries,
    media links) and refuses a chat whose answer is still streaming (409 ``chat_busy``).
    """
    if asked is not None and sends_text_only(request):
        return _begin_send(db, settings, user_id, plan, request, asked, system_tokens)
    # Chosen before the transaction: if the reply to its COMMIT is lost, the turn it may have
    # stored is found by this id (see _begin_send).
    answer_id = uuid.uuid4()
    try:
        turn, released, user_name = _start_in_transaction(
            db, settings, user_id, plan, request, asked, answer_id
        )
    except DatabaseUnavailable as error:
        if not _reply_lost(error):
            raise
        stored = db.fetch_one(_STARTED_BEFORE, answer_id=answer_id, user_id=user_id)
        if stored is None:
            raise  # it did not commit: nothing to carry on with
        logger.info("turn stored before its reply was lost", extra={"chat": str(stored["chat_id"])})
        turn = {**stored, "assistant_message_id": answer_id}
        # An edit's released uploads stay queued for deletion: the storage sweep takes them.
        released = 0
        user_name = users.display_name(stored["first_name"], stored["last_name"])

    summary, recent = context.load_recent(
        db, turn["chat_id"], turn["user_position"], settings.chat_window_size
    )
    return BegunTurn(
        chat_id=turn["chat_id"],
        user_message_id=turn["user_message_id"],
        assistant_message_id=turn["assistant_message_id"],
        user_position=turn["user_position"],
        default_title=turn["title_source"] == "default",
        user_name=user_name,
        released_media=released,
        resumable=request.resumable,
        model_context=context.build_context(summary, recent, settings, system_tokens),
    )


def _start_in_transaction(
    db: Database,
    settings: Settings,
    user_id: str,
    plan: str | None,
    request: TurnRequest,
    asked: Question | None,
    answer_id: uuid.UUID,
) -> tuple[dict[str, Any], int, str | None]:
    """An edit's, a regenerate's or a send with media's start, in one transaction: the turn
    (as :func:`shared.chats.start_turn` returns it), the uploads an edit released, the
    user's name."""
    released = 0
    with db.transaction() as tx:
        usage.check_and_count_message(tx, user_id, usage.plan_for(settings, plan))
        if request.regenerate:
            assert request.chat_id is not None
            turn = chats.start_regenerate(tx, user_id, request.chat_id, answer_id=answer_id)
        else:
            assert asked is not None
            if request.edited_id is not None and request.chat_id is not None:
                turn = chats.start_edit(
                    tx,
                    user_id,
                    request.chat_id,
                    request.edited_id,
                    asked.text,
                    asked.parts,
                    asked.tokens,
                    answer_id=answer_id,
                )
            else:
                turn = chats.start_turn(
                    tx,
                    user_id,
                    request.chat_id,
                    asked.text,
                    asked.parts,
                    asked.tokens,
                    answer_id=answer_id,
                )
            media_ids = [uuid.UUID(p["upload_id"]) for p in asked.parts if "upload_id" in p]
            if media_ids:
                from shared import media

                media.link_media_to_chat(tx, turn["chat_id"], media_ids)
            if request.edited_id is not None:
                released = chats.release_unused_media(tx, turn["chat_id"])
        user_name = users.user_display_name(tx, user_id)
    return turn, released, user_name


# A turn's start read back by its answer's id, with the user's name (see begin).
_STARTED_BEFORE = f"""
    SELECT s.*, u.first_name, u.last_name
    FROM ({chats.STARTED_TURN}) s LEFT JOIN ({users.USER_NAME}) u ON true
"""


def _begin_send(
    db: Database,
    settings: Settings,
    user_id: str,
    plan: str | None,
    request: TurnRequest,
    asked: Question,
    system_tokens: int,
) -> BegunTurn:
    """A send of text (the common turn) in one statement, one round trip: the message
    counted against the user's limits (:mod:`shared.usage`), the chat's two positions taken
    (a new chat created with them), the question stored and its answer's place reserved
    (:mod:`shared.chats`), the user's name (:mod:`shared.users`), and the newest summary and
    the window before the question (:mod:`shared.context`), all in one snapshot. A refused
    send changes nothing; an unknown chat (or someone else's) is a 404 and counts nothing.

    The window is read from the statement's snapshot: a send to the same chat committed
    while this one waited for the chat's row lock is not in it (the old path read the window
    after its commit); its answer would not have been either.
    """
    limits = usage.plan_for(settings, plan)
    new_chat = request.chat_id is None
    params = chats.send_params(request.chat_id, asked.text, asked.parts, asked.tokens)
    if new_chat:
        sql = f"""
            WITH counted AS ({usage.count_message_sql()}),
                 allocated AS ({chats.ALLOCATE_NEW_CHAT}),
                 question AS ({chats.STORE_QUESTION}),
                 answer AS ({chats.RESERVE_ANSWER})
            SELECT a.position, a.title_source, (SELECT messages FROM counted) AS counted,
                   u.first_name, u.last_name,
                   {usage.MINUTE_MESSAGES} AS minute_messages,
                   {usage.TOKENS_TODAY} AS tokens_today,
                   NULL::json AS summary, '[]'::json AS recent
            FROM (SELECT 1) one LEFT JOIN allocated a ON true
                 LEFT JOIN ({users.USER_NAME}) u ON true
        """
    else:
        sql = f"""
            WITH counted AS ({usage.count_message_sql(chats.CHAT_IS_THE_USERS)}),
                 allocated AS ({chats.ALLOCATE_IN_CHAT}),
                 question AS ({chats.STORE_QUESTION}),
                 answer AS ({chats.RESERVE_ANSWER}),
                 summary AS ({NEWEST_SUMMARY})
            SELECT a.position, a.title_source, (SELECT messages FROM counted) AS counted,
                   u.first_name, u.last_name,
                   {usage.MINUTE_MESSAGES} AS minute_messages,
                   {usage.TOKENS_TODAY} AS tokens_today,
                   {context.SUMMARY_JSON} AS summary,
                   {context.WINDOW_BEFORE.format(before="a.position")} AS recent,
                   {chats.CHAT_IS_THE_USERS} AS chat_found
            FROM (SELECT 1) one LEFT JOIN allocated a ON true
                 LEFT JOIN ({users.USER_NAME}) u ON true
        """
        params["window_rows"] = max(0, settings.chat_window_size - 1)
    try:
        [row] = db.write(sql, **params, **usage.count_params(user_id, limits))
    except Exception as error:
        # The reply was lost: the statement may have committed. Database.write repeats it
        # on a fresh connection when the pooled one broke, and the repeat then meets the ids
        # its first run stored (a unique violation); a fresh connection that broke is not
        # repeated (DatabaseUnavailable). Either way the turn the first run stored, if it
        # did, is the one to carry on with: answering 503 over it would leave its chat busy
        # until the turn's lease lapsed.
        if sqlstate(error) != UNIQUE_VIOLATION and not _reply_lost(error):
            raise
        stored = db.fetch_one(
            _SENT_BEFORE, **_sent_before_params(params, user_id, settings, new_chat)
        )
        if stored is None:
            raise DatabaseUnavailable() from error
        logger.info("send stored before its reply was lost", extra={"chat": str(params["chat_id"])})
        row = stored
    if row["position"] is None:
        if not new_chat and not row["chat_found"]:
            raise chats.chat_not_found()
        raise usage.refusal(limits, row["minute_messages"], int(row["tokens_today"]))
    usage.maybe_prune_windows(db, user_id)
    position = row["position"]
    current = context.StoredMessage(
        position, "user", asked.text, asked.parts, asked.tokens, "complete"
    )
    summary, recent = context.window_from_json(row["summary"], row["recent"], current)
    return BegunTurn(
        chat_id=params["chat_id"],
        user_message_id=params["question_id"],
        assistant_message_id=params["answer_id"],
        user_position=position,
        default_title=row["title_source"] == "default",
        user_name=users.display_name(row["first_name"], row["last_name"]),
        released_media=0,
        resumable=request.resumable,
        model_context=context.build_context(summary, recent, settings, system_tokens),
    )


# A send's start as its statement stored it, read back by the ids the send chose before
# its first run (shared.chats.send_params): the question, its answer's place right after it,
# in the user's chat; with what the send's statement returns (the name, the newest summary
# and the window before the question).
_SENT_BEFORE = f"""
    WITH allocated AS (
             SELECT q.position, c.title_source FROM messages q
             JOIN chats c ON c.id = q.chat_id AND c.user_id = :user_id
             JOIN messages answer ON answer.id = :answer_id AND answer.chat_id = q.chat_id
                                 AND answer.position = q.position + 1
             WHERE q.id = :question_id AND q.chat_id = :chat_id),
         summary AS ({NEWEST_SUMMARY})
    SELECT a.position, a.title_source, u.first_name, u.last_name,
           {context.SUMMARY_JSON} AS summary,
           {context.WINDOW_BEFORE.format(before="a.position")} AS recent
    FROM allocated a LEFT JOIN ({users.USER_NAME}) u ON true
"""


def _sent_before_params(
    params: dict[str, Any], user_id: str, settings: Settings, new_chat: bool
) -> dict[str, Any]:
    return {
        "chat_id": params["chat_id"],
        "question_id": params["question_id"],
        "answer_id": params["answer_id"],
        "user_id": user_id,
        # A new chat has nothing before its question (the send's own statement reads none).
        "window_rows": 0 if new_chat else max(0, settings.chat_window_size - 1),
    }


def _reply_lost(error: BaseException) -> bool:
    """Whether the database failed after the statement may have reached it: a connection
    that broke (not a pool with no free connection, which sent nothing)."""
    cause = error.__cause__
    lost = cause is not None and is_connection_lost(cause)
    return isinstance(error, DatabaseUnavailable) and lost


def note_context(turn: BegunTurn, record: TurnRecord, prepare_started: float) -> None:
    """What the model gets, in the turn's record and its ``turn context`` log line, with how
    long preparing it took since ``prepare_started`` (a ``time.perf_counter()`` taken once the
    request was authenticated: ``prepare_ms``) and since the request arrived
    (``since_received_ms``, authentication and the body included); the ``chat turn`` line's
    ``to_model_ms`` goes on to the model call itself (bench/chat_stream.py reads all three)."""
    record.chat = str(turn.chat_id)
    record.window_messages = len(turn.model_context.window_positions)
    model_context = turn.model_context
    logger.info(
        "turn context",
        extra={
            "chat": str(turn.chat_id),
            "window_messages": len(model_context.window_positions),
            "window_tokens": model_context.window_tokens,
            "summary": model_context.summary is not None,
            "media_sent": len(model_context.media_sent),
            "prepare_ms": round((time.perf_counter() - prepare_started) * 1000, 2),
            "since_received_ms": round((time.perf_counter() - record.received) * 1000, 2),
        },
    )


def stream_answer(
    db: Database,
    settings: Settings,
    user_id: str,
    turn: BegunTurn,
    model_events: Generator[StreamEvent, None, None],
    record: TurnRecord,
    after_done: Callable[[uuid.UUID, int | None, bool], None],
) -> Iterator[TurnEvent]:
    """The events of one turn, heartbeats included; stores the answer however it ends.

    ``model_events`` is the model's stream for this turn (not started yet), asked for with
    heartbeats every :data:`shared.answers.TICK_SECONDS` at most, so a turn told to stop
    (:mod:`shared.answers`) stops within a tick even while the model is silent; heartbeats
    are passed on every ``SSE_HEARTBEAT_SECONDS`` of silence. ``after_done`` is called once
    ``done`` is written (the answer stored), before the stream ends, with the chat, where a
    rolling summary is due to end (None: not yet, :func:`summary_due`) and whether the chat
    wants a generated title (it still has the default one and the answer is complete):
    chat_stream asks Cloud Tasks for them there, inside the response, where Cloud Run's CPU
    is (only the turns that ask for a task wait for it). A ``resumable`` turn
    stores its text as it grows (:class:`shared.answer_progress.ProgressWriter`).
    """
    chat_id = str(turn.chat_id)
    answer_id = turn.assistant_message_id
    live = answers.register(answer_id, chats.TURN_LEASE_SECONDS - LEASE_MARGIN_SECONDS)
    progress = answer_progress.progress_writer(db) if turn.resumable else None
    answer: list[str] = []
    length = 0
    finished: Finished | None = None
    failure: ModelError | None = None
    stopped: answers.StopReason | None = None
    client_left = False
    saved = False
    try:
        yield StartEvent(
            chat_id=chat_id,
            message_id=str(turn.user_message_id),
            answer_id=str(answer_id),
            event_id=0,
        )
        last_sent = time.monotonic()
        for event in model_events:
            if isinstance(event, Finished):
                finished = event
                record.model_finished(event.input_tokens, event.output_tokens, event.finish_reason)
                record.retries = event.retries
                record.model = event.model or record.model
            elif isinstance(event, TextChunk):
                text = storable(event.text)  # offsets count what is stored
                if text:
                    answer.append(text)
                    length += len(text)
                    if progress is not None:
                        progress.note(live, answer, length)
                    yield AnswerChunk(text, length)
                    last_sent = time.monotonic()
            elif time.monotonic() - last_sent >= settings.sse_heartbeat_seconds:
                yield event
                last_sent = time.monotonic()
            stopped = live.check()
            if stopped is not None and finished is None:
                model_events.close()  # stop reading from (and paying for) the model now
                logger.info(
                    "answer stopped", extra={"chat": chat_id, "reason": stopped, "chars": length}
                )
                break
            stopped = None
    except ModelError as error:
        failure = error
        record.retries = error.retries
        logger.warning("model failed", extra={"chat": chat_id, "cause": error.cause})
    except GeneratorExit:
        client_left = True
        model_events.close()  # stop reading from (and paying for) the model now
        logger.info("client disconnected", extra={"chat": chat_id, "chunks": len(answer)})
        raise
    finally:
        if stopped == "stopped":
            ending: str | None = "stopped"
        elif stopped is not None:
            ending = "answer_timeout" if stopped == "timeout" else stopped
        elif failure is not None:
            ending = f"model_{failure.kind}"
        elif client_left:
            ending = "client_disconnected"
        else:
            ending = None
        if progress is not None:
            progress.forget(live)
        try:
            saved = save_answer(db, settings, user_id, turn, answer, length, finished, ending)
            if saved:
                record.answer_stored()
        finally:
            answers.unregister(live)
    kept = str(answer_id) if answer and saved else None
    if stopped == "stopped" and saved:
        output_tokens = estimate_text_tokens("".join(answer))
        input_tokens = turn.model_context.window_tokens
        yield DoneEvent(
            message_id=str(answer_id),
            usage=Usage(
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                total_tokens=input_tokens + output_tokens,
            ),
            finish_reason="stopped",
            event_id=length,
        )
    elif stopped is not None:
        yield answers.error_event(
            "answer_timeout" if stopped == "timeout" else stopped, kept, length
        )
    elif finished is not None and finished.blocked:
        yield ErrorEvent(
            detail=BLOCKED_DETAIL[finished.finish_reason],
            code="blocked",
            message_id=kept,
            event_id=length,
        )
    elif finished is not None and saved:
        yield DoneEvent(
            message_id=str(answer_id),
            usage=Usage(
                input_tokens=finished.input_tokens,
                output_tokens=finished.output_tokens,
                total_tokens=finished.input_tokens + finished.output_tokens,
            ),
            finish_reason=finished.finish_reason,
            event_id=length,
        )
        after_done(
            turn.chat_id,
            summary_due(turn, finished.output_tokens, settings),
            finished.finish_reason == "stop" and turn.default_title,
        )
    else:
        yield ErrorEvent(
            detail=failure.detail if failure else "The answer could not be saved; please retry.",
            code=f"model_{failure.kind}" if failure else "answer_not_saved",
            message_id=kept,
            retryable=failure.retryable if failure else True,
            event_id=length,
        )


def save_answer(
    db: Database,
    settings: Settings,
    user_id: str,
    turn: BegunTurn,
    answer: list[str],
    length: int,
    finished: Finished | None,
    ending: str | None = None,
) -> bool:
    """Store the answer (complete or partial) and the turn's usage; never raises.

    ``ending``: ``stopped`` (the user stopped it: kept with that finish reason), or the
    error code of an answer cut short (kept for followers, see :mod:`shared.answers`).
    """
    text = "".join(answer)
    output_tokens = finished.output_tokens if finished else estimate_text_tokens(text)
    input_tokens = finished.input_tokens if finished else turn.model_context.window_tokens
    # A blocked answer with no text is not kept (there is nothing to show); any other ending
    # of the model's own is, even empty, and so is a stopped one.
    keep = bool(text) or (finished is not None and not finished.blocked) or ending == "stopped"
    if ending == "stopped":
        finish_reason: str | None = "stopped"
    else:
        finish_reason = finished.finish_reason if finished else None
    error_code = ending if ending != "stopped" and finish_reason is None else None
    try:
        answers.store_ending(
            db,
            user_id,
            turn.assistant_message_id,
            chats.finished_answer(
                text,
                finish_reason=finish_reason,
                token_count=output_tokens,
                reported=finished is not None and finished.output_tokens > 0,
                model=finished.model if finished else settings.raven_model,
                error_code=error_code,
            )
            if keep
            else None,
            input_tokens,
            output_tokens,
            length,
        )
        return True
    except Exception:
        logger.exception("could not store the answer", extra={"chat": str(turn.chat_id)})
        return False


def outliving_its_client(events: Iterator[TurnEvent], name: str) -> Iterator[TurnEvent]:
    """A resumable turn's events: relayed by the request while its client reads them; when
    the client leaves, a thread of its own takes the turn over and runs it to its end.

    The request thread drives the turn as long as the client is there (no hand-off per
    chunk: a resumable turn costs what any turn costs). The thread is not a daemon: a
    process that exits waits for it to store the answer (on SIGTERM every turn stops within
    a tick, see :func:`shared.answers.begin_shutdown`).
    """
    try:
        # Not ``yield from``: it would close the turn (and the model call) with the relay.
        for event in events:  # noqa: UP028
            yield event
    except GeneratorExit:
        context_copy = contextvars.copy_context()  # the request's trace id, for the logs
        threading.Thread(
            target=context_copy.run, args=(_run_to_the_end, events), name=name, daemon=False
        ).start()
        raise


def _run_to_the_end(events: Iterator[TurnEvent]) -> None:
    try:
        for _ in events:
            pass  # the answer is stored as it grows, and followers read it from there
    except Exception:
        logger.exception("resumable turn failed after its client left")


def summary_due(turn: BegunTurn, answer_tokens: int, settings: Settings) -> int | None:
    """Where a rolling summary should end now (a message position), or None if not yet."""
    model_context = turn.model_context
    uncovered = model_context.uncovered_tokens + answer_tokens
    messages = model_context.uncovered_messages + 1
    if uncovered < settings.summary_trigger_tokens or messages < settings.summary_min_messages:
        return None
    cut = turn.user_position + 1 - settings.summary_keep_recent
    if model_context.summary is not None and cut <= model_context.summary.covers_through_position:
        return None
    return cut
