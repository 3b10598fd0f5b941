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
from shared.errors import NotFound, PayloadTooLarge, UnprocessableEntity
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

# What a user reads when the model withheld (or stopped) an answer on its own checks.
BLOCKED_DETAIL = {
    "safety": "The answer was withheld by the model's safety filters. Try rephrasing.",
    "recitation": "The answer was stopped because it repeated existing material too closely.",
    "other": "The model declined to answer this message.",
    "stop": "The model declined to answer this message.",
    "max_tokens": "The model declined to answer this message.",
}

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
    if not body.messages:
        raise UnprocessableEntity("messages: at least one message is required", code="no_message")
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


def read_controls(body: ChatRequest) -> tuple[uuid.UUID | None, uuid.UUID | None]:
    """The chat and, for an edit, the question to replace; 4xx for a contradictory body."""
    if body.regenerate and body.editMessageId is not None:
        raise UnprocessableEntity(
            "regenerate and editMessageId cannot be combined", code="conflicting_controls"
        )
    if (body.regenerate or body.editMessageId is not None) and not body.chatId:
        raise UnprocessableEntity(
            "chatId is required to regenerate or edit", code="chat_id_required"
        )
    chat_id = chats.parse_chat_id(body.chatId) if body.chatId else None
    if body.editMessageId is None:
        return chat_id, None
    try:
        return chat_id, uuid.UUID(body.editMessageId)
    except ValueError:
        raise NotFound("Message not found in this chat", code="message_not_found") from None


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
    chat_id, edited_id = read_controls(body)
    if body.regenerate:
        assert chat_id is not None
        return answer_turn(request, user, received, record, regenerate_chat=chat_id)
    message = read_new_message(body)
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

    return answer_turn(
        request,
        user,
        received,
        record,
        chat_id=chat_id,
        edited_id=edited_id,
        new_message=(message.text, parts, tokens),
        instruction=(template, system_tokens),
    )


def answer_turn(
    request: Request,
    user: AuthenticatedUser,
    received: float,
    record: TurnRecord,
    *,
    chat_id: uuid.UUID | None = None,
    edited_id: uuid.UUID | None = None,
    regenerate_chat: uuid.UUID | None = None,
    new_message: tuple[str, list[dict[str, Any]], int] | None = None,
    instruction: tuple[str, int] | None = None,
) -> Response:
    """Store the turn's start (a send, an edit or a regenerate), then stream its answer.

    One short transaction counts the message against the user's limits and changes the
    chat; an edit or a regenerate also removes what it replaces (messages, summaries,
    media links) and refuses a chat whose answer is still streaming (409 ``chat_busy``).
    """
    if instruction is None:
        template = SYSTEM_INSTRUCTION.text()
        instruction = (template, instruction_tokens(template))
    template, system_tokens = instruction
    released = 0
    db = database()
    with db.transaction() as tx:
        usage.check_and_count_message(tx, user.id, usage.plan_for(settings, user.plan))
        if regenerate_chat is not None:
            turn = chats.start_regenerate(tx, user.id, regenerate_chat)
        else:
            assert new_message is not None
            text, parts, tokens = new_message
            if edited_id is not None and chat_id is not None:
                turn = chats.start_edit(tx, user.id, chat_id, edited_id, text, parts, tokens)
            else:
                turn = chats.start_turn(tx, user.id, chat_id, text, parts, tokens)
            media_ids = [uuid.UUID(part["upload_id"]) for part in parts if "upload_id" in part]
            if media_ids:
                from shared import media

                media.link_media_to_chat(tx, turn["chat_id"], media_ids)
            if edited_id is not None:
                released = chats.release_unused_media(tx, turn["chat_id"])
        user_name = chats.user_display_name(tx, user.id) or user.display_name
    if released:
        from shared.storage import schedule_storage_cleanup

        schedule_storage_cleanup()  # off the request path; the queue rows survive any failure

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
                record.retries = event.retries
                record.model = event.model or record.model
                continue
            if isinstance(event, TextChunk):
                answer.append(event.text)
            yield event
    except ModelError as error:
        failure = error
        record.retries = error.retries
        logger.warning("model failed", extra={"chat": chat_id, "cause": error.cause})
    except GeneratorExit:
        client_left = True  # the client went away: stop reading from the model (done above)
        logger.info("client disconnected", extra={"chat": chat_id, "chunks": len(answer)})
        raise
    finally:
        saved = save_answer(user, turn, model_context, "".join(answer), finished)
    if finished is not None and finished.blocked and not client_left:
        yield ErrorEvent(
            detail=BLOCKED_DETAIL[finished.finish_reason],
            code="blocked",
            message_id=str(turn["assistant_message_id"]) if answer and saved else None,
        )
    elif finished is not None and saved:
        yield DoneEvent(
            message_id=str(turn["assistant_message_id"]),
            usage=Usage(
                input_tokens=finished.input_tokens,
                output_tokens=finished.output_tokens,
                total_tokens=finished.input_tokens + finished.output_tokens,
            ),
            finish_reason=finished.finish_reason,
        )
        # After done has been written: neither adds to the turn's latency.
        request_summary_if_due(turn, model_context, finished.output_tokens)
        if finished.finish_reason == "stop" and turn["title_source"] == "default":
            request_title(turn["chat_id"])
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
    output_tokens = finished.output_tokens if finished else estimate_text_tokens(text)
    input_tokens = finished.input_tokens if finished else model_context.window_tokens
    # A blocked answer with no text is not kept (there is nothing to show); any other ending
    # of the model's own is, even empty.
    keep = bool(text) or (finished is not None and not finished.blocked)
    try:
        with database().transaction() as tx:
            if keep:
                chats.finish_answer(
                    tx,
                    turn["assistant_message_id"],
                    text,
                    finish_reason=finished.finish_reason if finished else None,
                    token_count=output_tokens,
                    reported=finished is not None and finished.output_tokens > 0,
                    model=finished.model if finished else settings.raven_model,
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


def request_title(chat_id: uuid.UUID) -> None:
    """Ask for a generated title (once per chat: the task's name is the chat's)."""
    try:
        from shared import tasks

        tasks.request_title(chat_id)
    except Exception:
        logger.exception("could not ask for a title", extra={"chat": str(chat_id)})


API = make_api(
    [Route("POST", "/chat", send_message)],
    authenticate=request_authenticator(),
    max_body_bytes=settings.chat_max_request_bytes,
    flask_context=True,  # the stream is written with Flask's stream_with_context
)


@functions_framework.http
def chat_stream(request: Request) -> Response:
    """Entry point: every request goes through the shared HTTP pipeline to send_message."""
    return API.handle(request)
