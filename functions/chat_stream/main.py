"""chat_stream: ``POST /chat`` streams Gemini's answer as Server-Sent Events or NDJSON.

The entry point parses and authenticates, then hands the turn to :mod:`shared.turn` (the
rules: what is stored when, what the model sees, how a stream ends) with the adapters it
needs: the model, the bucket for media checks, Cloud Tasks for summaries and titles. The
framing the request asked for (:mod:`shared.stream_framing`: SSE or NDJSON) writes the
turn's events. See docs/api.md, "Sending a message".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import functions_framework
from flask import Request, Response, stream_with_context

from shared import context, turn
from shared.auth import AuthenticatedUser, request_authenticator
from shared.gemini import GeminiStreamer
from shared.model_events import Finished, Heartbeat, TextChunk
from shared.runtime import database, make_api, start_function
from shared.schemas import ChatRequest
from shared.stream_framing import Framing, choose_framing
from shared.system_instruction import SystemInstruction, personalise
from shared.telemetry import TurnRecord, received_at
from shared.web import parse_json

logger = logging.getLogger("raven.chat_stream")

settings = start_function()
SYSTEM_INSTRUCTION = SystemInstruction(
    settings.system_instruction_url, settings.system_instruction_ttl_seconds
)
SYSTEM_INSTRUCTION.start()
MODEL = GeminiStreamer(settings)
MODEL.preload()

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


def open_turn(request: Request, user: AuthenticatedUser, record: TurnRecord) -> Response:
    received = time.perf_counter()
    asked = turn.read_request(parse_json(request, ChatRequest), settings)
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
    model_events = MODEL.stream(
        model=settings.raven_model,
        system_instruction=system,
        contents=model_context.contents,
        heartbeat_seconds=settings.sse_heartbeat_seconds,
    )
    events = turn.stream_answer(
        database(), settings, user.id, begun, model_events, record, after_done=request_tasks
    )
    framing = choose_framing(request.headers.get("Accept"), settings.chat_stream_format)
    wire = framing_of(framing, record.observe(events, TextChunk))
    return Response(stream_with_context(wire), mimetype=framing.media_type, headers=STREAM_HEADERS)


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


def framing_of(framing: Framing, events: Iterator[turn.TurnEvent]) -> Iterator[str]:
    """The turn's events written in one framing."""
    for event in events:
        if isinstance(event, TextChunk):
            yield framing.chunk(event.text)
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
    {"sendMessage": send_message},
    authenticate=request_authenticator(),
    max_body_bytes=settings.chat_max_request_bytes,
    flask_context=True,  # the stream is written with Flask's stream_with_context
)


@functions_framework.http
def chat_stream(request: Request) -> Response:
    """Entry point: every request goes through the shared HTTP pipeline to send_message."""
    return API.handle(request)
