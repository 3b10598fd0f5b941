"""chat_stream: ``POST /chat`` streams Gemini's answer as Server-Sent Events or NDJSON.

It also serves an answer's stream again (``GET /api/chats/{chat_id}/messages/{message_id}/stream``,
from any instance, see :mod:`shared.answers`) and stops one
(``POST /api/chats/{chat_id}/messages/{message_id}/stop``). On SIGTERM the instance takes no
new turns and ends its open streams with ``server_restarting`` once their answers are stored.

The entry point parses and authenticates, then hands the turn to :mod:`shared.turn` (the
rules: what is stored when, what the model sees, how a stream ends) with the adapters it
needs: the model, the bucket for media checks, Cloud Tasks for summaries and titles. The
framing the request asked for (:mod:`shared.stream_framing`: SSE or NDJSON) writes the
turn's events. See docs/api.md, "Sending a message".
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import functions_framework
from flask import Request, Response, stream_with_context

from shared import answers, chats, context, serving, turn
from shared.answers import AnswerChunk
from shared.auth import AuthenticatedUser, request_authenticator
from shared.db import connection_factory
from shared.errors import ServiceUnavailable
from shared.gemini import GeminiStreamer
from shared.model_events import Finished, Heartbeat
from shared.runtime import database, make_api, start_function
from shared.schemas import AnswerStopped, ChatRequest, ResumeQuery
from shared.stream_framing import Framing, choose_framing
from shared.system_instruction import SystemInstruction, personalise
from shared.telemetry import TurnRecord, received_at
from shared.web import json_response, parse_json, query_args, validate

logger = logging.getLogger("raven.chat_stream")

settings = start_function()
SYSTEM_INSTRUCTION = SystemInstruction(
    settings.system_instruction_url, settings.system_instruction_ttl_seconds
)
SYSTEM_INSTRUCTION.start()
MODEL = GeminiStreamer(settings)
MODEL.preload()
# The answers listener's own connection (one per process, opened on first use).
LISTEN_CONNECT = connection_factory(settings)

# Proxies must pass events through as they come (nginx honours X-Accel-Buffering); the
# framing depends on Accept, so caches must key on it.
STREAM_HEADERS = {
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
    "Vary": "Accept",
}


def send_message(request: Request, user: AuthenticatedUser) -> Response:
    """One turn, recorded as one ``chat_turn`` log line however it ends (shared.telemetry)."""
    record = TurnRecord(received_at(request.environ), settings.raven_model)
    try:
        return open_turn(request, user, record)
    except BaseException as error:
        record.refused(error)
        raise


def restarting() -> ServiceUnavailable:
    return ServiceUnavailable(
        "The server is restarting; please retry.", retry_after=1, code="server_restarting"
    )


def open_turn(request: Request, user: AuthenticatedUser, record: TurnRecord) -> Response:
    received = time.perf_counter()
    if answers.draining():
        raise restarting()
    body = parse_json(request, ChatRequest)
    asked = turn.read_request(body, settings)
    template = SYSTEM_INSTRUCTION.text()
    system_tokens = turn.instruction_tokens(template)
    question = None
    if asked.message is not None:
        media_parts = resolve_attachments(user, asked.message.media_refs)
        question = turn.question(asked.message, media_parts, system_tokens, settings)
    begun = turn.begin(database(), settings, user.id, user.plan, asked, question, system_tokens)
    if begun.released_media:
        from shared.storage import schedule_storage_cleanup

        schedule_storage_cleanup()  # off the request path; the queue rows survive any failure

    model_context = begun.model_context
    system = context.system_text(
        personalise(template, begun.user_name or user.display_name), model_context.summary
    )
    logger.info(
        "turn context",
        extra={
            "chat": str(begun.chat_id),
            "window_messages": len(model_context.window_positions),
            "window_tokens": model_context.window_tokens,
            "summary": model_context.summary is not None,
            "media_sent": len(model_context.media_sent),
            "prepare_ms": round((time.perf_counter() - received) * 1000, 2),
        },
    )
    record.chat = str(begun.chat_id)
    record.window_messages = len(model_context.window_positions)
    answers.listener(LISTEN_CONNECT)  # a stop from another instance reaches this turn
    model_events = MODEL.stream(
        model=settings.raven_model,
        system_instruction=system,
        contents=model_context.contents,
        # Ticks, so the turn can stop while the model is silent; it sends heartbeats itself.
        heartbeat_seconds=min(settings.sse_heartbeat_seconds, answers.TICK_SECONDS),
    )
    events = turn.stream_answer(
        database(),
        settings,
        user.id,
        begun,
        model_events,
        record,
        after_done=request_tasks,
        resumable=body.resumable,
    )
    if body.resumable:
        events = turn.outliving_its_client(events, name=f"answer-{begun.assistant_message_id}")
    framing = choose_framing(request.headers.get("Accept"), settings.chat_stream_format)
    wire = framing_of(framing, record.observe(events, AnswerChunk))
    return Response(stream_with_context(wire), mimetype=framing.media_type, headers=STREAM_HEADERS)


def answer_ids(chat_id: str, message_id: str) -> tuple[uuid.UUID, uuid.UUID]:
    """The path's ids; one that is not an id is a 404 like a missing one."""
    chat = chats.parse_chat_id(chat_id)
    try:
        return chat, uuid.UUID(message_id)
    except ValueError:
        raise answers.message_not_found() from None


def follow_answer(
    request: Request, user: AuthenticatedUser, chat_id: str, message_id: str
) -> Response:
    """``GET .../stream``: the answer after ``Last-Event-ID`` (or ``?after=``), then live."""
    chat, answer = answer_ids(chat_id, message_id)
    query = validate(ResumeQuery, query_args(request, ResumeQuery), "query.")
    after = answers.parse_offset(request.headers.get("Last-Event-ID"), query.after)
    if answers.draining():
        raise restarting()
    events = answers.follow(
        database(),
        LISTEN_CONNECT,
        user.id,
        chat,
        answer,
        after,
        settings.sse_heartbeat_seconds,
    )
    framing = choose_framing(request.headers.get("Accept"), settings.chat_stream_format)
    return Response(
        stream_with_context(framing_of(framing, events)),
        mimetype=framing.media_type,
        headers=STREAM_HEADERS,
    )


def stop_answer(
    request: Request, user: AuthenticatedUser, chat_id: str, message_id: str
) -> Response:
    """``POST .../stop``: stop the answer wherever it is being written; it is kept."""
    chat, answer = answer_ids(chat_id, message_id)
    writing = answers.request_stop(database(), user.id, chat, answer)
    if writing:
        answers.stop_local(answer, "stopped")  # at once if it is written here
    return json_response(AnswerStopped(message_id=str(answer), stopping=writing))


def resolve_attachments(
    user: AuthenticatedUser, refs: list[tuple[str, str | None]]
) -> list[dict[str, Any]]:
    """Each reference as a stored media part, or a 4xx before anything is stored or sent."""
    if not refs:
        return []
    # Storage work (and google-cloud-storage's import) only for messages that carry media.
    from shared import media
    from shared.storage import media_storage

    storage = media_storage()
    records = [media.resolve_media(database(), storage, user.id, ref, mime) for ref, mime in refs]
    parts = [{**record.part(), "size": record.size} for record in records]
    turn.check_media_counts(parts, settings)
    return parts


def framing_of(framing: Framing, events: Iterator[Any]) -> Iterator[str]:
    """The turn's (or a followed answer's) events written in one framing."""
    for event in events:
        if isinstance(event, AnswerChunk):
            yield framing.chunk(event.text, event.end)
        elif isinstance(event, Heartbeat):
            yield framing.heartbeat()
        else:
            yield framing.encode(event)


def request_tasks(begun: turn.BegunTurn, finished: Finished) -> None:
    """After ``done``: a rolling summary when due, a title for a default-titled chat.

    Never fails the turn: a task that could not be queued is logged and asked for again by
    a later turn (the summary) or left to the default (the title).
    """
    from shared import tasks

    cut = turn.summary_due(begun, finished.output_tokens, settings)
    try:
        if cut is not None:
            tasks.request_summary(begun.chat_id, cut)
    except Exception:
        logger.exception("could not ask for a summary", extra={"chat": str(begun.chat_id)})
    try:
        if finished.finish_reason == "stop" and begun.default_title:
            tasks.request_title(begun.chat_id)
    except Exception:
        logger.exception("could not ask for a title", extra={"chat": str(begun.chat_id)})


API = make_api(
    "chat_stream",
    {"sendMessage": send_message, "resumeAnswer": follow_answer, "stopAnswer": stop_answer},
    authenticate=request_authenticator(),
    max_body_bytes=settings.chat_max_request_bytes,
    flask_context=True,  # the stream is written with Flask's stream_with_context
)
# SIGTERM (Cloud Run's scale-in or redeploy): take no new turns, stop the open ones.
serving.on_shutdown(answers.begin_shutdown)


@functions_framework.http
def chat_stream(request: Request) -> Response:
    """Entry point: every request goes through the shared HTTP pipeline to its handler."""
    return API.handle(request)
