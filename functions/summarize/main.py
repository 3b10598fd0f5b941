"""summarize: builds a chat's next rolling summary; invoked by Cloud Tasks only.

chat_stream asks for a summary (through :mod:`shared.tasks`) when a chat's tokens not yet
covered by a summary pass ``SUMMARY_TRIGGER_TOKENS``. The task carries ids only:
``{"chat_id": ..., "cut": <position>}``. This function folds the previous summary and the
messages after it, through the cut, into a new summary of about ``SUMMARY_TARGET_TOKENS``,
and stores it as the next version. A chat still titled "New Chat" also gets a short
generated title (a title the user set always wins, also one set while this runs).

A title task, ``{"chat_id": ..., "task": "title"}``, is asked for by chat_stream after a
chat's first complete answer: one small model call titles the chat from its first exchange
(again only while the chat has its default title).

Delivery is at least once, so every outcome is idempotent and the status code tells Cloud
Tasks what to do (https://cloud.google.com/tasks/docs/creating-http-target-tasks#handler):

* 200: done, or nothing to do (already summarised through the cut, chat deleted), or a
  permanent failure (malformed task, the model refusing the input): logged, never retried;
* 429 / 503 with ``Retry-After``: a passing failure (model busy or down, database down):
  Cloud Tasks retries with the queue's backoff.

Deployed, the function is private: only the tasks invoker service account may call it.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any, Literal, TypeVar

import functions_framework
from flask import Request, Response
from pydantic import BaseModel, Field, ValidationError

from shared.db import Transaction
from shared.errors import RateLimited, ServiceUnavailable
from shared.gemini import GeminiStreamer, ModelError
from shared.runtime import database, make_api, start_function
from shared.schemas import DEFAULT_TITLE, TaskAck
from shared.telemetry import logs_task
from shared.web import json_response

logger = logging.getLogger("raven.summarize")

settings = start_function()
MODEL = GeminiStreamer(settings)
MODEL.preload()

# Read at most this many messages between two summaries (a backlog beyond it is skipped:
# the summary still covers through the cut and the newest messages stay verbatim).
MAX_MESSAGES_PER_SUMMARY = 400
TITLE_MAX_CHARS = 60
# A title task reads the chat's first exchange only (question and answer): it says what the
# chat is about, and the call stays small.
TITLE_SOURCE_MESSAGES = 2

SUMMARIZER_INSTRUCTION = """\
You maintain the running summary of a conversation between a user and Raven, an AI \
assistant. The summary replaces the older part of the conversation in Raven's memory, so it \
must keep what Raven needs to continue naturally: the user's goals, facts and preferences \
they stated, decisions made, open questions, and any names, numbers or code that matter. \
Write plain prose or terse bullet points in the conversation's language, in about \
{target} tokens and never more than {maximum}. No preamble."""

TITLE_INSTRUCTION = """\
Write a title of at most six words for this conversation, in its language. Answer with the \
title only: no quotes, no trailing punctuation."""


class SummaryTask(BaseModel):
    chat_id: uuid.UUID
    cut: int = Field(ge=0)


def done(message: str, *, version: int | None = None, title: str | None = None) -> Response:
    return json_response(TaskAck(message=message, version=version, title=title), exclude_none=True)


def transcript(messages: list[dict[str, Any]]) -> str:
    lines = []
    for message in messages:
        speaker = "User" if message["role"] == "user" else "Raven"
        media = [p for p in message["parts"] if p.get("type") != "text"]
        notes = "".join(f" [{p.get('type')} attachment: {p.get('mime_type')}]" for p in media)
        lines.append(f"{speaker}: {message['content']}{notes}")
    return "\n\n".join(lines)


class TitleTask(BaseModel):
    chat_id: uuid.UUID
    task: Literal["title"]


TaskT = TypeVar("TaskT", SummaryTask, TitleTask)


def task_outcome(response: Response) -> str:
    """``stored``, ``skipped`` (nothing to do) or ``dropped``, from the answer's message."""
    message = str((response.get_json(silent=True) or {}).get("message", ""))
    if message.startswith(("summary stored", "title stored")):
        return "stored"
    return "dropped" if message.startswith("dropped") else "skipped"


def queue_delay_seconds(request: Request, *_: Any) -> float | None:
    """How long the task waited past its schedule time (Cloud Tasks' X-CloudTasks-TaskETA)."""
    try:
        return round(max(0.0, time.time() - float(request.headers["X-CloudTasks-TaskETA"])), 3)
    except (KeyError, ValueError):
        return None


def task_attempt(request: Request, *_: Any) -> int | None:
    retries = request.headers.get("X-CloudTasks-TaskRetryCount", "")
    return int(retries) + 1 if retries.isdigit() else None


def read_task(request: Request, raw: Any, model: type[TaskT]) -> TaskT | None:
    """The task's payload, or None when it is malformed: retrying cannot fix that, so the
    caller drops it, and it is logged loudly here."""
    try:
        return model.model_validate(raw)
    except ValidationError:
        logger.error(
            f"malformed {model.__name__} dropped",
            extra={"task": request.headers.get("X-CloudTasks-TaskName")},
        )
        return None


def handle_task(request: Request) -> Response:
    """Handle one summary or title task (see the module docstring for the status codes)."""
    raw = request.get_json(silent=True)
    if isinstance(raw, dict) and raw.get("task") == "title":
        return title_chat(request, raw)
    return summarize_chat(request, raw)


@logs_task("summary", task_outcome, queue_delay_s=queue_delay_seconds, attempt=task_attempt)
def summarize_chat(request: Request, raw: Any) -> Response:
    """Fold the chat's messages through the task's cut into its next summary."""
    task = read_task(request, raw, SummaryTask)
    if task is None:
        return done("dropped: malformed task")

    db = database()
    state = db.fetch_one(
        """
        SELECT c.title_source, c.rewrites,
               (SELECT covers_through_position FROM summaries
                WHERE chat_id = c.id ORDER BY version DESC LIMIT 1) AS covered,
               (SELECT content FROM summaries
                WHERE chat_id = c.id ORDER BY version DESC LIMIT 1) AS previous
        FROM chats c WHERE c.id = :chat_id
        """,
        chat_id=task.chat_id,
    )
    if state is None:
        return done("nothing to do: the chat was deleted")
    covered = state["covered"] if state["covered"] is not None else -1
    if task.cut <= covered:
        return done("nothing to do: already summarised through this point")
    messages = list(
        reversed(
            db.fetch_all(
                """
                SELECT role, content, parts FROM messages
                WHERE chat_id = :chat_id AND position > :covered AND position <= :cut
                  AND NOT (role = 'assistant' AND content = '')
                ORDER BY position DESC LIMIT :limit
                """,
                chat_id=task.chat_id,
                covered=covered,
                cut=task.cut,
                limit=MAX_MESSAGES_PER_SUMMARY,
            )
        )
    )
    if not messages:
        return done("nothing to do: no messages through this point")

    prompt = transcript(messages)
    if state["previous"]:
        prompt = f"Current summary:\n{state['previous']}\n\nConversation since then:\n{prompt}"
    try:
        summary, usage = MODEL.generate(
            model=settings.summary_model,
            system_instruction=SUMMARIZER_INSTRUCTION.format(
                target=settings.summary_target_tokens, maximum=settings.summary_max_tokens
            ),
            contents=[{"role": "user", "parts": [{"text": prompt}]}],
            max_output_tokens=settings.summary_max_tokens,
            temperature=0.2,
        )
        title = None
        if state["title_source"] == "default":
            title, _ = MODEL.generate(
                model=settings.summary_model,
                system_instruction=TITLE_INSTRUCTION,
                contents=[{"role": "user", "parts": [{"text": transcript(messages[:6])}]}],
                max_output_tokens=32,
                temperature=0.2,
            )
    except ModelError as error:
        return model_failure(task, error)
    summary = summary.strip()
    if not summary:
        logger.error("empty summary dropped", extra={"chat": str(task.chat_id)})
        return done("dropped: the model returned an empty summary")

    with db.transaction() as tx:
        # The chat's row lock serialises summary writers: at most one summary per cut, and
        # an older cut delivered late never becomes the newest version.
        chat = tx.fetch_one(
            "SELECT rewrites FROM chats WHERE id = :chat_id FOR UPDATE", chat_id=task.chat_id
        )
        if chat is None:
            return done("nothing to do: the chat was deleted")
        if chat["rewrites"] != state["rewrites"]:
            # Regenerate or edit removed messages since we read them: this summary may
            # hold what the user took back. The next trigger builds one from what remains.
            return done("nothing to do: the history changed meanwhile")
        stored = tx.fetch_one(
            """
            INSERT INTO summaries (id, chat_id, version, covers_through_position, content,
                                   token_count, model)
            SELECT :id, :chat_id, COALESCE(MAX(version), 0) + 1, :cut, :content, :tokens, :model
            FROM summaries WHERE chat_id = :chat_id
            HAVING COALESCE(MAX(covers_through_position), -1) < :cut
            RETURNING version
            """,
            id=uuid.uuid4(),
            chat_id=task.chat_id,
            cut=task.cut,
            content=summary,
            tokens=usage.output_tokens,
            model=settings.summary_model,
        )
        if title:
            store_generated_title(tx, task.chat_id, title)
    if stored is None:
        return done("nothing to do: summarised concurrently")
    logger.info(
        "summary stored",
        extra={"chat": str(task.chat_id), "version": stored["version"], "cut": task.cut},
    )
    return done("summary stored", version=stored["version"])


@logs_task("title", task_outcome, queue_delay_s=queue_delay_seconds, attempt=task_attempt)
def title_chat(request: Request, raw: dict[str, Any]) -> Response:
    """Title a chat still titled by default from its first exchange (one small model call).

    chat_stream asks for it after the first complete answer. The title is written only if
    the chat still has its default title then: a rename by the user, even one made while
    the model was answering, wins.
    """
    task = read_task(request, raw, TitleTask)
    if task is None:
        return done("dropped: malformed task")
    db = database()
    messages = db.fetch_all(
        """
        SELECT c.title_source, m.role, m.content, m.parts
        FROM chats c
        LEFT JOIN LATERAL (
            SELECT role, content, parts FROM messages
            WHERE chat_id = c.id AND content <> ''
            ORDER BY position LIMIT :limit
        ) m ON true
        WHERE c.id = :chat_id
        """,
        chat_id=task.chat_id,
        limit=TITLE_SOURCE_MESSAGES,
    )
    if not messages:
        return done("nothing to do: the chat was deleted")
    if messages[0]["title_source"] != "default":
        return done("nothing to do: the chat already has a title")
    if messages[0]["role"] is None:
        return done("nothing to do: no messages yet")
    try:
        title, _ = MODEL.generate(
            model=settings.summary_model,
            system_instruction=TITLE_INSTRUCTION,
            contents=[{"role": "user", "parts": [{"text": transcript(messages)}]}],
            max_output_tokens=32,
            temperature=0.2,
        )
    except ModelError as error:
        return model_failure(task, error)
    if not title.strip():
        return done("dropped: the model returned an empty title")
    with db.transaction() as tx:
        stored_title = store_generated_title(tx, task.chat_id, title)
    if stored_title is None:
        return done("nothing to do: renamed meanwhile")
    logger.info("title stored", extra={"chat": str(task.chat_id)})
    return done("title stored", title=stored_title)


def store_generated_title(tx: Transaction, chat_id: uuid.UUID, title: str) -> str | None:
    """Give the chat a generated title, unless it no longer has its default one.

    A rename by the user (title_source 'user') wins, even one made while the model ran.
    Returns the title stored, or None when the chat kept the user's.
    """
    row = tx.fetch_one(
        "UPDATE chats SET title = :title, title_source = 'generated' "
        "WHERE id = :chat_id AND title_source = 'default' RETURNING title",
        title=clean_title(title),
        chat_id=chat_id,
    )
    return None if row is None else str(row["title"])


def clean_title(text: str) -> str:
    title = " ".join(text.strip().strip("\"'“”").split())
    if len(title) > TITLE_MAX_CHARS:
        title = title[: TITLE_MAX_CHARS - 1].rstrip() + "…"
    return title or DEFAULT_TITLE


def model_failure(task: SummaryTask | TitleTask, error: ModelError) -> Response:
    """Passing failures are retried by Cloud Tasks (429/503); permanent ones are dropped."""
    logger.warning(
        "summary model call failed", extra={"chat": str(task.chat_id), "cause": error.cause}
    )
    if error.kind == "busy":
        raise RateLimited("The model is busy", retry_after=30, code="model_busy")
    if not error.retryable:
        return done("dropped: the model refused this input")
    raise ServiceUnavailable("The model is unavailable", retry_after=30, code="model_unavailable")


# No bearer token: deployed, Cloud Run's IAM admits only the tasks invoker's OIDC token.
API = make_api("summarize", {"runTask": handle_task})


@functions_framework.http
def summarize(request: Request) -> Response:
    """Entry point: every request goes through the shared HTTP pipeline to summarize_chat."""
    return API.handle(request)
