"""chat_stream: ``POST /chat`` streams Gemini's answer as Server-Sent Events or NDJSON.

It also serves an answer's stream again (``GET /api/chats/{chat_id}/messages/{message_id}/stream``,
from any instance, see :mod:`shared.answers`) and stops one
(``POST /api/chats/{chat_id}/messages/{message_id}/stop``). On SIGTERM the instance takes no
new turns and ends its open streams with ``server_restarting`` once their answers are stored.

The entry point parses and authenticates, then hands the turn to :mod:`shared.turn_request`
and :mod:`shared.turn` (the rules) with the adapters they need: the model, the bucket for
media checks, Cloud Tasks for summaries and titles; the framing the request asked for
(:mod:`shared.stream_framing`: SSE or NDJSON) writes its events. See docs/api.md.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import functions_framework
from flask import Request, Response

from shared import answers, context, serving, tasks, turn, turn_request
from shared.auth import AuthenticatedUser, check_user, request_authenticator, user_row_missing
from shared.db import connection_factory
from shared.errors import ApiError, Unauthorized
from shared.gemini import GeminiStreamer
from shared.model_events import AnswerChunk
from shared.runtime import database, make_api, start_function
from shared.schemas import AnswerStopped, ResumeQuery
from shared.stream_framing import choose_framing
from shared.system_instruction import SystemInstruction, personalise
from shared.telemetry import TurnRecord, received_at
from shared.web import checks_user_itself, json_response, query_args, validate

settings = start_function()
SYSTEM_INSTRUCTION = SystemInstruction(
    settings.system_instruction_url, settings.system_instruction_ttl_seconds
)
SYSTEM_INSTRUCTION.start()
MODEL = GeminiStreamer(settings)
MODEL.preload()
# The answers listener's own connection (one per process, opened on first use).
LISTEN_CONNECT = connection_factory(settings)


@checks_user_itself  # a text send's statement is the check: one round trip, not two
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
    answers.refuse_when_draining()
    try:
        try:
            begun, template = begin_turn(request, user)
        except Unauthorized:
            # The send's rows named a user whose row is gone: 401 user_deleted while the
            # deletion is queued, else the row is created again, as on a first request.
            user_row_missing(user)
            begun, template = begin_turn(request, user)
    except ApiError as error:
        if error.status < 500 and not isinstance(error, Unauthorized):
            check_user(user)  # a deleted user hears 401 user_deleted first, as on every route
        raise
    system = context.system_text(
        personalise(template, begun.user_name or user.display_name), begun.model_context.summary
    )
    turn.note_context(begun, record, received)
    answers.listener(LISTEN_CONNECT)  # a stop from another instance reaches this turn
    model_events = MODEL.stream(
        model=settings.raven_model,
        system_instruction=system,
        contents=begun.model_context.contents,
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
        request_tasks,
    )
    if begun.resumable:
        events = turn.outliving_its_client(events, name=f"answer-{begun.assistant_message_id}")
    events = record.observe(events, AnswerChunk)
    if begun.default_title:
        events = tasks_client_ready_by_the_end(events)
    framing = choose_framing(request.headers.get("Accept"), settings.chat_stream_format)
    return framing.response(events)


def tasks_client_ready_by_the_end(events: Iterator[Any]) -> Iterator[Any]:
    """The events, and once the first chunk is out, the Cloud Tasks client created in the
    background (``tasks.warm_client``): this turn asks for a title after ``done``, and on a
    worker that has not enqueued yet the client's import (~0.7 s) would otherwise hold the
    response open after ``done``. Not before the first chunk: the import would delay it."""
    try:
        for event in events:
            yield event
            if isinstance(event, AnswerChunk):
                tasks.warm_client()
                break
        yield from events
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()  # a client gone mid-stream: the turn ends as it would unwrapped


def begin_turn(request: Request, user: AuthenticatedUser) -> tuple[turn.BegunTurn, str]:
    """The turn stored (:func:`shared.turn.begin`) and the instruction's template it was
    priced with; every refusal of the request is raised from here, before anything streams."""
    body = turn_request.parse_body(request)
    asked = turn_request.read_request(body, settings)
    if not turn.sends_text_only(asked):
        check_user(user)  # only a text send's statement reads the user's row
    template = SYSTEM_INSTRUCTION.text()
    system_tokens = turn_request.instruction_tokens(template)
    question = None
    if asked.message is not None:
        media_parts: list[dict[str, Any]] = []
        if asked.message.media_refs:
            # Storage work (and google-cloud-storage's import) only for messages with media.
            from shared import media
            from shared.storage import media_storage

            media_parts = media.resolve_attachments(
                database(),
                media_storage(),
                user.id,
                asked.message.media_refs,
                max_images=settings.media_max_images,
                max_videos=settings.media_max_videos,
            )
        question = turn_request.question(asked.message, media_parts, system_tokens, settings)
    begun = turn.begin(database(), settings, user.id, user.plan, asked, question, system_tokens)
    if begun.released_media:
        from shared.storage import schedule_storage_cleanup

        schedule_storage_cleanup()  # off the request path; the queue rows survive any failure
    return begun, template


def request_tasks(chat_id: uuid.UUID, summary_cut: int | None, title: bool) -> None:
    """After ``done``, before the response ends: Cloud Tasks for a due summary and a wanted
    title (failures logged). Not after the response: with request-based billing Cloud Run
    gives an instance CPU only while it serves a request, so work left for later could wait
    for the instance's next request (a new chat's title with it). Only the turns that ask
    for a task wait for it (~4 ms): a chat's first answer, then each summary's. A new chat's
    turn had the client created while the model answered (:func:`tasks_client_ready_by_the_end`)."""
    if summary_cut is None and not title:
        return
    tasks.request_after_turn(chat_id, summary_cut, title)


def follow_answer(
    request: Request, user: AuthenticatedUser, chat_id: str, message_id: str
) -> Response:
    """``GET .../stream``: the answer after ``Last-Event-ID`` (or ``?after=``), then live."""
    chat, answer = answers.answer_ids(chat_id, message_id)
    query = validate(ResumeQuery, query_args(request, ResumeQuery), "query.")
    after = answers.parse_offset(request.headers.get("Last-Event-ID"), query.after)
    answers.refuse_when_draining()
    events = answers.follow(
        database(), LISTEN_CONNECT, user.id, chat, answer, after, settings.sse_heartbeat_seconds
    )
    framing = choose_framing(request.headers.get("Accept"), settings.chat_stream_format)
    return framing.response(events)


def stop_answer(
    request: Request, user: AuthenticatedUser, chat_id: str, message_id: str
) -> Response:
    """``POST .../stop``: stop the answer wherever it is being written; it is kept."""
    chat, answer = answers.answer_ids(chat_id, message_id)
    writing = answers.request_stop(database(), user.id, chat, answer)
    if writing:
        answers.stop_local(answer, "stopped")  # at once if it is written here
    return json_response(AnswerStopped(message_id=str(answer), stopping=writing))


API = make_api(
    "chat_stream",
    {"sendMessage": send_message, "resumeAnswer": follow_answer, "stopAnswer": stop_answer},
    authenticate=request_authenticator(),
    max_body_bytes=settings.chat_max_request_bytes,
)
# SIGTERM (Cloud Run's scale-in or redeploy): take no new turns, stop the open ones.
serving.on_shutdown(answers.begin_shutdown)


@functions_framework.http
def chat_stream(request: Request) -> Response:
    """Entry point: every request goes through the shared HTTP pipeline to its handler."""
    return API.handle(request)
