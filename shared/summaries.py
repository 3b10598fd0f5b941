"""Rolling summaries and generated titles: what the summarize function writes, and the one
spelling of "a chat's newest summary" that the turn's context reads (``shared.context``).

A summary folds the previous one and the messages after it, through a cut, into about
``SUMMARY_TARGET_TOKENS``; each is stored as the chat's next version, covering through its
cut. A chat still titled "New Chat" gets a short generated title, with a summary or from its
first exchange; a title the user set always wins, also one set while the model ran.

The model is passed in (``generate``, ``shared.gemini.GeminiStreamer.generate`` deployed), so
this module never imports the Gemini adapter. Whatever makes a task moot raises
:class:`NothingToDo`; a result not worth storing raises :class:`Dropped`.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, Field, ValidationError

from shared.db import Database, Row, Transaction
from shared.schemas import DEFAULT_TITLE

logger = logging.getLogger(__name__)

# The chat's newest summary, as a CTE body: ``WITH summary AS (NEWEST_SUMMARY)``.
NEWEST_SUMMARY = """
    SELECT content, covers_through_position, token_count
    FROM summaries WHERE chat_id = :chat_id
    ORDER BY version DESC LIMIT 1
"""

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


@dataclass(frozen=True)
class StoredSummary:
    content: str
    covers_through_position: int
    token_count: int


class NothingToDo(Exception):
    """The task has nothing (left) to do; the message says why."""


class Dropped(Exception):
    """The model's result is not worth storing; retrying would not help."""


class Generate(Protocol):
    def __call__(
        self,
        *,
        model: str,
        system_instruction: str,
        contents: list[dict[str, Any]],
        max_output_tokens: int,
        temperature: float,
    ) -> tuple[str, Any]:
        """The model's text, and its usage (``output_tokens``)."""


# --- the tasks (shared.tasks sends them: ids only) -------------------------------------------


class SummaryTask(BaseModel):
    chat_id: uuid.UUID
    cut: int = Field(ge=0)


class TitleTask(BaseModel):
    chat_id: uuid.UUID
    task: Literal["title"]


TaskT = TypeVar("TaskT", SummaryTask, TitleTask)


def read_task(raw: Any, model: type[TaskT], task_name: str | None) -> TaskT | None:
    """The task's payload, or None when it is malformed: retrying cannot fix that, so the
    caller drops it, and it is logged loudly here."""
    try:
        return model.model_validate(raw)
    except ValidationError:
        logger.error(f"malformed {model.__name__} dropped", extra={"task": task_name})
        return None


def transcript(messages: list[dict[str, Any]]) -> str:
    lines = []
    for message in messages:
        speaker = "User" if message["role"] == "user" else "Raven"
        media = [p for p in message["parts"] if p.get("type") != "text"]
        notes = "".join(f" [{p.get('type')} attachment: {p.get('mime_type')}]" for p in media)
        lines.append(f"{speaker}: {message['content']}{notes}")
    return "\n\n".join(lines)


def clean_title(text: str) -> str:
    title = " ".join(text.strip().strip("\"'“”").split())
    if len(title) > TITLE_MAX_CHARS:
        title = title[: TITLE_MAX_CHARS - 1].rstrip() + "…"
    return title or DEFAULT_TITLE


# --- summaries -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SummaryWork:
    """What folding a chat through a cut starts from."""

    chat_id: uuid.UUID
    cut: int
    previous: str | None  # the newest summary's text
    rewrites: int  # the chat's rewrite count when read (see store_summary)
    untitled: bool  # the chat still has its default title
    messages: list[Row]  # after the newest summary, through the cut, oldest first


def summary_work(db: Database, chat_id: uuid.UUID, cut: int) -> SummaryWork:
    """The previous summary and the messages after it through ``cut``.

    Raises:
        NothingToDo: the chat was deleted, is already summarised through the cut, or has no
            messages through it.
    """
    state = db.fetch_one(
        f"""
        WITH summary AS ({NEWEST_SUMMARY})
        SELECT c.title_source, c.rewrites,
               (SELECT covers_through_position FROM summary) AS covered,
               (SELECT content FROM summary) AS previous
        FROM chats c WHERE c.id = :chat_id
        """,
        chat_id=chat_id,
    )
    if state is None:
        raise NothingToDo("the chat was deleted")
    covered = state["covered"] if state["covered"] is not None else -1
    if cut <= covered:
        raise NothingToDo("already summarised through this point")
    messages = list(
        reversed(
            db.fetch_all(
                """
                SELECT role, content, parts FROM messages
                WHERE chat_id = :chat_id AND position > :covered AND position <= :cut
                  AND NOT (role = 'assistant' AND content = '')
                ORDER BY position DESC LIMIT :limit
                """,
                chat_id=chat_id,
                covered=covered,
                cut=cut,
                limit=MAX_MESSAGES_PER_SUMMARY,
            )
        )
    )
    if not messages:
        raise NothingToDo("no messages through this point")
    return SummaryWork(
        chat_id,
        cut,
        state["previous"],
        state["rewrites"],
        state["title_source"] == "default",
        messages,
    )


@dataclass(frozen=True)
class Summary:
    content: str
    token_count: int
    title: str | None  # a generated title, for a chat that still has its default one


def write_summary(
    generate: Generate, work: SummaryWork, *, model: str, target_tokens: int, max_tokens: int
) -> Summary:
    """The model's summary (and title, for an untitled chat) of ``work``: about
    ``target_tokens`` (SUMMARY_TARGET_TOKENS), never more than ``max_tokens``, by ``model``.

    Raises:
        Dropped: the model returned an empty summary.
        whatever ``generate`` raises (``shared.gemini.ModelError``).
    """
    prompt = transcript(work.messages)
    if work.previous:
        prompt = f"Current summary:\n{work.previous}\n\nConversation since then:\n{prompt}"
    summary, usage = generate(
        model=model,
        system_instruction=SUMMARIZER_INSTRUCTION.format(target=target_tokens, maximum=max_tokens),
        contents=[{"role": "user", "parts": [{"text": prompt}]}],
        max_output_tokens=max_tokens,
        temperature=0.2,
    )
    title = None
    if work.untitled:
        title, _ = generate(
            model=model,
            system_instruction=TITLE_INSTRUCTION,
            contents=[{"role": "user", "parts": [{"text": transcript(work.messages[:6])}]}],
            max_output_tokens=32,
            temperature=0.2,
        )
    summary = summary.strip()
    if not summary:
        logger.error("empty summary dropped", extra={"chat": str(work.chat_id)})
        raise Dropped("the model returned an empty summary")
    return Summary(summary, usage.output_tokens, title)


def store_summary(db: Database, work: SummaryWork, summary: Summary, model: str) -> int:
    """Store the summary as the chat's next version (and its title); returns the version.

    Raises:
        NothingToDo: the chat was deleted, its history changed since ``work`` was read, or
            another delivery stored a summary through this cut meanwhile.
    """
    with db.transaction() as tx:
        # The chat's row lock serialises summary writers: at most one summary per cut, and
        # an older cut delivered late never becomes the newest version.
        chat = tx.fetch_one(
            "SELECT rewrites FROM chats WHERE id = :chat_id FOR UPDATE", chat_id=work.chat_id
        )
        if chat is None:
            raise NothingToDo("the chat was deleted")
        if chat["rewrites"] != work.rewrites:
            # Regenerate or edit removed messages since we read them: this summary may
            # hold what the user took back. The next trigger builds one from what remains.
            raise NothingToDo("the history changed meanwhile")
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
            chat_id=work.chat_id,
            cut=work.cut,
            content=summary.content,
            tokens=summary.token_count,
            model=model,
        )
        if summary.title:
            store_generated_title(tx, work.chat_id, summary.title)
    if stored is None:
        raise NothingToDo("summarised concurrently")
    logger.info(
        "summary stored",
        extra={"chat": str(work.chat_id), "version": stored["version"], "cut": work.cut},
    )
    return int(stored["version"])


# --- titles ----------------------------------------------------------------------------------


def first_exchange(db: Database, chat_id: uuid.UUID) -> list[Row]:
    """The messages a title is made from: the chat's first question and answer.

    Raises:
        NothingToDo: the chat was deleted, already has a title, or has no messages yet.
    """
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
        chat_id=chat_id,
        limit=TITLE_SOURCE_MESSAGES,
    )
    if not messages:
        raise NothingToDo("the chat was deleted")
    if messages[0]["title_source"] != "default":
        raise NothingToDo("the chat already has a title")
    if messages[0]["role"] is None:
        raise NothingToDo("no messages yet")
    return messages


def write_title(generate: Generate, messages: list[Row], *, model: str) -> str:
    """The model's title for a chat's first exchange, by ``model``.

    Raises:
        Dropped: the model returned an empty title.
        whatever ``generate`` raises (``shared.gemini.ModelError``).
    """
    title, _ = generate(
        model=model,
        system_instruction=TITLE_INSTRUCTION,
        contents=[{"role": "user", "parts": [{"text": transcript(messages)}]}],
        max_output_tokens=32,
        temperature=0.2,
    )
    if not title.strip():
        raise Dropped("the model returned an empty title")
    return title


def store_title(db: Database, chat_id: uuid.UUID, title: str) -> str:
    """Store a generated title; returns it as stored.

    Raises:
        NothingToDo: the user renamed the chat meanwhile.
    """
    with db.transaction() as tx:
        stored_title = store_generated_title(tx, chat_id, title)
    if stored_title is None:
        raise NothingToDo("renamed meanwhile")
    logger.info("title stored", extra={"chat": str(chat_id)})
    return stored_title


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
