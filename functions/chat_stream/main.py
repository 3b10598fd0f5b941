"""chat_stream: ``POST /chat`` streams Gemini's answer as Server-Sent Events or NDJSON.

A turn (see docs/api.md, "Sending a message"):

1. authenticate; validate the body (only the last message is new and must be the user's:
   the client's copy of the history is never fed to the model nor stored); check every media
   reference is one of the caller's own uploads and really in the bucket;
2. in one short transaction: count the message against the user's rate limits, resolve or
   create the chat (someone else's or unknown: 404 before any stream), store the user's
   message and reserve the answer's position;
3. build the context from the store only (newest summary + recent window, one bounded query);
4. stream: ``start``, ``chunk``..., then ``done`` (with usage) or ``error``; a heartbeat
   while the model is silent. The turn produces events; the framing the request asked for
   (:mod:`shared.stream_framing`: SSE or NDJSON) only writes them;
5. store the answer: complete, or, if the model failed or the client left, what was produced
   marked incomplete; add the turn's tokens to the user's usage;
6. ask for a rolling summary when the chat's unsummarised tokens pass the trigger.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import functions_framework
from flask import Request, Response, stream_with_context

from shared import chats, context, usage
from shared.auth import AuthenticatedUser, request_authenticator
from shared.errors import PayloadTooLarge, UnprocessableEntity
from shared.gemini import Finished, GeminiStreamer, Heartbeat, ModelError, TextChunk
from shared.runtime import database, make_api, start_function
from shared.schemas import ChatRequest, DoneEvent, ErrorEvent, StartEvent, Usage
from shared.stream_framing import Framing, choose_framing
from shared.system_instruction import SystemInstruction, personalise
from shared.telemetry import TurnRecord, received_at
from shared.token_estimate import estimate_message_tokens, estimate_text_tokens
from shared.web import Route, parse_json

logger = logging.getLogger("raven.chat_stream")

settings = start_function()
SYSTEM_INSTRUCTION = SystemInstruction(
    settings.system_instruction_url, settings.system_instruction_ttl_seconds
)
SYSTEM_INSTRUCTION.start()
MODEL = GeminiStreamer(settings)
MODEL.preload()

# Room left in the instruction for the user's name (``{user_name}``).
SYSTEM_NAME_TOKENS = 16

# Proxies must pass events through as they come (nginx honours X-Accel-Buffering); the
# framing depends on Accept, so caches must key on it.
STREAM_HEADERS = {
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
    "Vary": "Accept",
}


@dataclass(frozen=True)
class NewMessage:
    """The one new message of a request: its text and its media references."""

    text: str
    media_refs: list[tuple[str, str | None]]  # (reference, declared MIME type)


def read_new_message(body: ChatRequest) -> NewMessage:
    """The last message of the body, validated; the earlier ones are the client's copy."""
    last = body.messages[-1]
    if last.role != "user":
        raise UnprocessableEntity("The last message must be the user's", code="last_not_user")
    texts = [part.text for part in last.parts if part.type == "text"]
    media = [(part.text.strip(), part.mimeType) for part in last.parts if part.type != "text"]
    text = "\n".join(t for t in texts if t.strip()).strip()
    if not text and not media:
        raise UnprocessableEntity("The message is empty", code="empty_message")
    if len(text) > settings.max_message_chars:
        raise UnprocessableEntity(
            f"The message is too long: at most {settings.max_message_chars} characters",
            code="message_too_long",
        )
    if len(media) > settings.media_max_parts:
        raise UnprocessableEntity(
            f"Too many attachments: at most {settings.media_max_parts} per message",
            code="too_many_media",
        )
    return NewMessage(text, media)


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
    images = sum(1 for r in records if r.mime_type.startswith("image/"))
    videos = sum(1 for r in records if r.mime_type.startswith("video/"))
    if images > settings.media_max_images or videos > settings.media_max_videos:
        raise UnprocessableEntity(
            f"Too many attachments: at most {settings.media_max_images} images and "
            f"{settings.media_max_videos} videos per message",
            code="too_many_media",
        )
    return [{**record.part(), "size": record.size} for record in records]


@functools.lru_cache(maxsize=4)
def instruction_tokens(template: str) -> int:
    """The instruction's size with room for the user's name; counted once per loaded text."""
    return estimate_text_tokens(template) + SYSTEM_NAME_TOKENS


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
    body = parse_json(request, ChatRequest)
    message = read_new_message(body)
    chat_id = chats.parse_chat_id(body.chatId) if body.chatId else None
    media_parts = resolve_attachments(user, message.media_refs)
    parts = ([{"type": "text", "text": message.text}] if message.text else []) + media_parts
    tokens = estimate_message_tokens(
        message.text, [(part["mime_type"], part.get("size")) for part in media_parts]
    )
    template = SYSTEM_INSTRUCTION.text()
    system_tokens = instruction_tokens(template)
    # The message must fit the context with the instruction and the largest summary.
    room = settings.max_context_tokens - system_tokens - settings.summary_max_tokens
    if tokens > room:
        raise PayloadTooLarge(
            f"The message is too long for the model's context: about {tokens} tokens, "
            f"at most {max(room, 0)}",
            code="message_exceeds_context",
        )

    db = database()
    with db.transaction() as tx:
        usage.check_and_count_message(
            tx,
            user.id,
            messages_per_minute=settings.rate_limit_messages_per_minute,
            tokens_per_day=settings.rate_limit_tokens_per_day,
        )
        turn = chats.start_turn(tx, user.id, chat_id, message.text, parts, tokens)
        if media_parts:
            from shared import media

            media.link_media_to_chat(
                tx, turn["chat_id"], [uuid.UUID(part["upload_id"]) for part in media_parts]
            )
        user_name = chats.user_display_name(tx, user.id) or user.display_name

    summary, recent = context.load_recent(
        db, turn["chat_id"], turn["user_position"], settings.chat_window_size
    )
    model_context = context.build_context(summary, recent, settings, system_tokens)
    system = context.system_text(personalise(template, user_name), model_context.summary)
    logger.info(
        "turn context",
        extra={
            "chat": str(turn["chat_id"]),
            "window_messages": len(model_context.window_positions),
            "window_tokens": model_context.window_tokens,
            "summary": model_context.summary is not None,
            "media_sent": len(model_context.media_sent),
            "prepare_ms": round((time.perf_counter() - received) * 1000, 2),
        },
    )
    record.chat = str(turn["chat_id"])
    record.window_messages = len(model_context.window_positions)
    framing = choose_framing(request.headers.get("Accept"), settings.chat_stream_format)
    events = record.observe(stream_turn(user, turn, model_context, system, record), TextChunk)
    wire = framing_of(framing, events)
    return Response(stream_with_context(wire), mimetype=framing.media_type, headers=STREAM_HEADERS)


# A turn's events: the contract's events, and the model's text chunks and heartbeats as they
# come (each framing writes those itself: a chunk is the hot path of a stream).
TurnEvent = StartEvent | TextChunk | Heartbeat | DoneEvent | ErrorEvent


def framing_of(framing: Framing, events: Iterator[TurnEvent]) -> Iterator[str]:
    """The turn's events written in one framing."""
    for event in events:
        if isinstance(event, TextChunk):
            yield framing.chunk(event.text)
        elif isinstance(event, Heartbeat):
            yield framing.heartbeat()
        else:
            yield framing.encode(event)


def stream_turn(
    user: AuthenticatedUser,
    turn: dict[str, Any],
    model_context: context.ModelContext,
    system: str,
    record: TurnRecord,
) -> Iterator[TurnEvent]:
    """The events of one turn, heartbeats included; stores the answer however it ends."""
    chat_id = str(turn["chat_id"])
    yield StartEvent(chat_id=chat_id, message_id=str(turn["user_message_id"]))
    answer: list[str] = []
    finished: Finished | None = None
    failure: ModelError | None = None
    client_left = False
    try:
        for event in MODEL.stream(
            model=settings.raven_model,
            system_instruction=system,
            contents=model_context.contents,
            heartbeat_seconds=settings.sse_heartbeat_seconds,
        ):
            if isinstance(event, Finished):
                finished = event
                record.model_finished(event.input_tokens, event.output_tokens, event.finish_reason)
                continue
            if isinstance(event, TextChunk):
                answer.append(event.text)
            yield event
    except ModelError as error:
        failure = error
        logger.warning("model failed", extra={"chat": chat_id, "cause": error.cause})
    except GeneratorExit:
        client_left = True  # the client went away: stop reading from the model (done above)
        logger.info("client disconnected", extra={"chat": chat_id, "chunks": len(answer)})
        raise
    finally:
        saved = save_answer(user, turn, model_context, "".join(answer), finished)
    if finished is not None and saved:
        yield DoneEvent(
            message_id=str(turn["assistant_message_id"]),
            usage=Usage(
                input_tokens=finished.input_tokens,
                output_tokens=finished.output_tokens,
                total_tokens=finished.input_tokens + finished.output_tokens,
            ),
        )
        request_summary_if_due(turn, model_context, finished.output_tokens)
    elif not client_left:
        yield ErrorEvent(
            detail=failure.detail if failure else "The answer could not be saved; please retry.",
            code=f"model_{failure.kind}" if failure else "answer_not_saved",
            message_id=str(turn["assistant_message_id"]) if answer and saved else None,
        )


def save_answer(
    user: AuthenticatedUser,
    turn: dict[str, Any],
    model_context: context.ModelContext,
    text: str,
    finished: Finished | None,
) -> bool:
    """Store the answer (complete or partial) and the turn's usage; never raises."""
    complete = finished is not None
    output_tokens = finished.output_tokens if finished else estimate_text_tokens(text)
    input_tokens = finished.input_tokens if finished else model_context.window_tokens
    try:
        with database().transaction() as tx:
            if text or complete:
                chats.finish_answer(
                    tx,
                    turn["assistant_message_id"],
                    text,
                    complete=complete,
                    token_count=output_tokens,
                    reported=complete and finished is not None and finished.output_tokens > 0,
                    model=settings.raven_model,
                )
            else:
                chats.discard_answer(tx, turn["assistant_message_id"])
            usage.record_usage(tx, user.id, input_tokens, output_tokens)
        return True
    except Exception:
        logger.exception("could not store the answer", extra={"chat": str(turn["chat_id"])})
        return False


def request_summary_if_due(
    turn: dict[str, Any], model_context: context.ModelContext, answer_tokens: int
) -> None:
    """Ask for a rolling summary when enough is unsummarised; never delays or fails the reply."""
    uncovered = model_context.uncovered_tokens + answer_tokens
    messages = model_context.uncovered_messages + 1
    if uncovered < settings.summary_trigger_tokens or messages < settings.summary_min_messages:
        return
    cut = turn["user_position"] + 1 - settings.summary_keep_recent
    if model_context.summary is not None and cut <= model_context.summary.covers_through_position:
        return
    try:
        from shared import tasks

        tasks.request_summary(turn["chat_id"], cut)
    except Exception:
        logger.exception("could not ask for a summary", extra={"chat": str(turn["chat_id"])})


API = make_api(
    [Route("POST", "/chat", send_message)],
    authenticate=request_authenticator(),
    max_body_bytes=settings.chat_max_request_bytes,
)


@functions_framework.http
def chat_stream(request: Request) -> Response:
    """Entry point: every request goes through the shared HTTP pipeline to send_message."""
    return API.handle(request)
