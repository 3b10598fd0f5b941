"""Chats and their messages in Postgres: a chat's life (created, renamed, deleted) and the
writes of a turn (question, answer, regenerate, edit), for chats_crud and chat_stream.

Every query is scoped by the owner's id, so another user's chat is indistinguishable from
one that does not exist (the contract's 404, never 403). Reading them is elsewhere: lists
and search in ``shared.chat_list``, a chat's messages in ``shared.history``.
"""

from __future__ import annotations

import uuid
from typing import Any

from shared import deletions
from shared.db import Database, Row, Transaction
from shared.errors import Conflict, NotFound, UnprocessableEntity
from shared.schemas import DEFAULT_TITLE
from shared.text import storable

# Times leave Postgres as integer microseconds since the epoch: exact for keyset cursors, and
# pg8000 decodes an integer ~30x faster than a timestamptz (which it parses with strptime).
CHAT_COLUMNS = (
    "id::text AS id, user_id, title, title_source, "
    "(EXTRACT(EPOCH FROM created_at) * 1000000)::bigint AS created_us, "
    "(EXTRACT(EPOCH FROM updated_at) * 1000000)::bigint AS updated_us"
)


def chat_not_found() -> NotFound:
    return NotFound("Chat not found", code="chat_not_found")


def parse_chat_id(text: str | None) -> uuid.UUID:
    """A chat id from a path or body; a malformed one is a chat that does not exist."""
    try:
        return uuid.UUID(str(text))
    except ValueError:
        raise chat_not_found() from None


# --- chats -------------------------------------------------------------------------------


def create_chat(tx: Transaction, user_id: str, title: str | None) -> Row:
    """Insert a chat; a missing or blank title is the contract's "New Chat"."""
    # A user deleted since the request was let in fails the foreign key: the transaction
    # turns that into 401 user_deleted (shared.db.references_deleted_user).
    row = tx.fetch_one(
        f"INSERT INTO chats (id, user_id, title, title_source) "
        f"VALUES (:id, :user_id, :title, :title_source) RETURNING {CHAT_COLUMNS}",
        id=uuid.uuid4(),
        user_id=user_id,
        title=title or DEFAULT_TITLE,
        title_source="user" if title else "default",
    )
    assert row is not None
    return row


def rename_chat(db: Database, user_id: str, chat_id: uuid.UUID, title: str) -> Row:
    """Set a title chosen by the user; it wins over any generated one from then on."""
    with db.transaction() as tx:
        row = tx.fetch_one(
            f"UPDATE chats SET title = :title, title_source = 'user' "
            f"WHERE id = :chat_id AND user_id = :user_id RETURNING {CHAT_COLUMNS}",
            title=title,
            chat_id=chat_id,
            user_id=user_id,
        )
    if row is None:
        raise chat_not_found()
    return row


def delete_chat(db: Database, user_id: str, chat_id: uuid.UUID) -> None:
    """Delete a chat with its messages, summaries and the media no other chat uses.

    One transaction: the rows go at once (messages, summaries and media links by cascade),
    and each object only this chat referenced is queued in ``storage_deletions`` for the
    bucket worker (``shared.deletions``), so a crash between the two cannot leave an orphaned
    object unrecorded.
    """
    with db.transaction() as tx:
        owned = tx.fetch_one(
            "SELECT id FROM chats WHERE id = :chat_id AND user_id = :user_id FOR UPDATE",
            chat_id=chat_id,
            user_id=user_id,
        )
        if owned is None:
            raise chat_not_found()
        deletions.queue_unshared_uploads(tx, chat_id, deletions.EVERY_LINK_OF_THE_CHAT)
        tx.execute("DELETE FROM chats WHERE id = :chat_id", chat_id=chat_id)


# --- a chat turn -------------------------------------------------------------------------------


def start_turn(
    tx: Transaction,
    user_id: str,
    chat_id: uuid.UUID | None,
    content: str,
    parts: list[dict[str, Any]],
    token_count: int,
    *,
    answer_id: uuid.UUID | None = None,
) -> Row:
    """Store a user's message and reserve its answer's place, in the caller's transaction.

    Two positions are taken at once under the chat's row lock, the user's message and the
    assistant's answer right after it, so two sends to one chat at the same time keep a
    clean order (question, answer, question, answer) whichever answer finishes first. The
    answer is stored now as an empty ``incomplete`` placeholder and completed at the end of
    the turn: a crash mid-stream leaves it marked incomplete, as it should. ``answer_id``:
    the answer's id, chosen by the caller (so it can find the turn again if the commit's
    reply is lost), or a new one.

    Returns:
        ``chat_id``, ``created`` (a new chat), ``user_message_id``, ``user_position`` and
        ``assistant_message_id``.

    Raises:
        NotFound: the chat does not exist or is someone else's.
    """
    created = chat_id is None
    if chat_id is None:
        chat = create_chat(tx, user_id, None)
        chat_id = uuid.UUID(chat["id"])
    allocated = tx.fetch_one(
        "UPDATE chats SET message_count = message_count + 2, updated_at = now() "
        "WHERE id = :chat_id AND user_id = :user_id "
        "RETURNING message_count - 2 AS position, title_source",
        chat_id=chat_id,
        user_id=user_id,
    )
    if allocated is None:
        raise chat_not_found()
    position = allocated["position"]
    user_message_id = _insert_question(tx, chat_id, position, content, parts, token_count)
    return {
        "chat_id": chat_id,
        "created": created,
        "user_message_id": user_message_id,
        "user_position": position,
        "assistant_message_id": _insert_placeholder(tx, chat_id, position + 1, answer_id),
        "title_source": allocated["title_source"],
    }


# A turn holds a lease on its chat while it streams: regenerate and edit refuse a chat with a
# live one (409). It is chat_stream's request timeout (terraform/functions.tf), which no turn
# outlives, so a lease left by a crashed instance lapses on its own.
TURN_LEASE_SECONDS = 900


def chat_busy() -> Conflict:
    return Conflict(
        "An answer in this chat is still being written; wait for it to finish, then retry.",
        code="chat_busy",
    )


# --- a send in one statement (shared.turn composes it) ----------------------------------------
#
# What start_turn does, as data-modifying ``WITH`` clauses of the one statement that also
# counts the message (a clause named ``counted``: no row when refused) and reads the window:
# ``allocated`` takes the chat's two positions (an existing chat's under its row lock; a new
# chat starts with them), ``question`` stores the user's message and ``answer`` reserves its
# answer's place with the turn's lease. Parameters: ``:chat_id``, ``:user_id``,
# ``:question_id``, ``:answer_id``, ``:content``, ``:parts``, ``:token_count`` (and
# ``:default_title`` for a new chat).

ALLOCATE_IN_CHAT = """
    UPDATE chats SET message_count = message_count + 2, updated_at = now()
    WHERE id = :chat_id AND user_id = :user_id AND EXISTS (SELECT 1 FROM counted)
    RETURNING id, message_count - 2 AS position, title_source
"""

ALLOCATE_NEW_CHAT = """
    INSERT INTO chats (id, user_id, title, title_source, message_count)
    SELECT :chat_id, :user_id, :default_title, 'default', 2 WHERE EXISTS (SELECT 1 FROM counted)
    RETURNING id, 0 AS position, title_source
"""

# A turn's start read back by its answer's id (the question just before it, the chat's
# title source), when the reply to the statement or COMMIT that stored it was lost
# (shared.turn). Parameters: ``:answer_id``, ``:user_id``.
STARTED_TURN = """
    SELECT answer.chat_id, q.id AS user_message_id, q.position AS user_position,
           c.title_source
    FROM messages answer
    JOIN chats c ON c.id = answer.chat_id AND c.user_id = :user_id
    JOIN messages q ON q.chat_id = answer.chat_id AND q.position = answer.position - 1
    WHERE answer.id = :answer_id AND answer.role = 'assistant'
"""

# An existing chat of the user's: the condition under which its send is counted.
CHAT_IS_THE_USERS = "EXISTS (SELECT 1 FROM chats WHERE id = :chat_id AND user_id = :user_id)"

STORE_QUESTION = """
    INSERT INTO messages (id, chat_id, position, role, content, parts, token_count, status)
    SELECT :question_id, id, position, 'user', :content, CAST(:parts AS jsonb), :token_count,
           'complete'
    FROM allocated
    RETURNING id
"""

RESERVE_ANSWER = f"""
    INSERT INTO messages (id, chat_id, position, role, content, parts, token_count, status,
                          streaming_until)
    SELECT :answer_id, id, position + 1, 'assistant', '', '[]'::jsonb, 0, 'incomplete',
           now() + interval '{TURN_LEASE_SECONDS} seconds'
    FROM allocated
    RETURNING id
"""


def send_params(
    chat_id: uuid.UUID | None, content: str, parts: list[dict[str, Any]], token_count: int
) -> dict[str, Any]:
    """The send's parameters (but ``:user_id``): new ids for the chat (when new), the
    question and its answer."""
    params: dict[str, Any] = {
        "chat_id": chat_id or uuid.uuid4(),
        "question_id": uuid.uuid4(),
        "answer_id": uuid.uuid4(),
        "content": content,
        "parts": parts,
        "token_count": token_count,
    }
    if chat_id is None:
        params["default_title"] = DEFAULT_TITLE
    return params


def _insert_question(
    tx: Transaction,
    chat_id: uuid.UUID,
    position: int,
    content: str,
    parts: list[dict[str, Any]],
    token_count: int,
) -> uuid.UUID:
    message_id = uuid.uuid4()
    tx.execute(
        "INSERT INTO messages (id, chat_id, position, role, content, parts, token_count, status) "
        "VALUES (:id, :chat_id, :position, 'user', :content, CAST(:parts AS jsonb), "
        ":token_count, 'complete')",
        id=message_id,
        chat_id=chat_id,
        position=position,
        content=content,
        parts=parts,
        token_count=token_count,
    )
    return message_id


def _insert_placeholder(
    tx: Transaction, chat_id: uuid.UUID, position: int, answer_id: uuid.UUID | None
) -> uuid.UUID:
    """The answer's row, empty and ``incomplete`` until the turn stores it, with its lease."""
    message_id = answer_id or uuid.uuid4()
    tx.execute(
        "INSERT INTO messages (id, chat_id, position, role, content, parts, token_count, "
        "status, streaming_until) "
        "VALUES (:id, :chat_id, :position, 'assistant', '', '[]'::jsonb, 0, 'incomplete', "
        f"now() + interval '{TURN_LEASE_SECONDS} seconds')",
        id=message_id,
        chat_id=chat_id,
        position=position,
    )
    return message_id


def _lock_idle_chat(tx: Transaction, user_id: str, chat_id: uuid.UUID) -> Row:
    """Lock the caller's chat for a rewrite; 404 if not theirs, 409 while a turn streams."""
    chat = tx.fetch_one(
        "SELECT title_source, EXISTS (SELECT 1 FROM messages WHERE chat_id = chats.id "
        "AND streaming_until > now()) AS busy "
        "FROM chats WHERE id = :chat_id AND user_id = :user_id FOR UPDATE",
        chat_id=chat_id,
        user_id=user_id,
    )
    if chat is None:
        raise chat_not_found()
    if chat["busy"]:
        raise chat_busy()
    return chat


def _remove_from(tx: Transaction, chat_id: uuid.UUID, position: int) -> None:
    """Remove every message from ``position`` on, and the summaries that covered any of them.

    Nothing of them stays: the next summary is rebuilt from the messages that remain.
    The chat's ``rewrites`` count moves on, so a summary being built from the removed
    messages right now is not stored (see functions/summarize).
    """
    tx.execute(
        "DELETE FROM messages WHERE chat_id = :chat_id AND position >= :position",
        chat_id=chat_id,
        position=position,
    )
    tx.execute(
        "DELETE FROM summaries WHERE chat_id = :chat_id AND covers_through_position >= :position",
        chat_id=chat_id,
        position=position,
    )
    tx.execute(
        "UPDATE chats SET rewrites = rewrites + 1, message_count = :count, updated_at = now() "
        "WHERE id = :chat_id",
        chat_id=chat_id,
        count=position,
    )


def release_unused_media(tx: Transaction, chat_id: uuid.UUID) -> int:
    """Unlink the uploads no message of the chat refers to any more, as deleting a chat does:
    an upload no other chat links is deleted, its object queued for the bucket worker.

    Returns:
        How many objects were queued for deletion.
    """
    return deletions.queue_unshared_uploads(tx, chat_id, _UNREFERENCED_LINKS)


# The chat's media links no message of it refers to any more, unlinked.
_UNREFERENCED_LINKS = """
    DELETE FROM chat_uploads link
    WHERE link.chat_id = :chat_id AND NOT EXISTS (
        SELECT 1 FROM messages m, jsonb_array_elements(m.parts) part
        WHERE m.chat_id = :chat_id AND part ->> 'upload_id' = link.upload_id::text)
    RETURNING link.upload_id
"""


def start_regenerate(
    tx: Transaction, user_id: str, chat_id: uuid.UUID, *, answer_id: uuid.UUID | None = None
) -> dict[str, Any]:
    """Replace the chat's last answer: remove it and reserve the new one's place (with the id
    ``answer_id``, as :func:`start_turn`).

    The question stays as it is (no new user message). A chat whose last question has no
    answer (the model failed before writing one) gets that answer now.

    Returns:
        The turn, as :func:`start_turn` returns it (``user_message_id`` is the question's).

    Raises:
        NotFound: the chat does not exist or is someone else's.
        Conflict: ``chat_busy``: a turn of the chat is still streaming.
        UnprocessableEntity: ``nothing_to_regenerate``: the chat has no question yet.
    """
    chat = _lock_idle_chat(tx, user_id, chat_id)
    question = tx.fetch_one(
        "SELECT id, position FROM messages WHERE chat_id = :chat_id AND role = 'user' "
        "ORDER BY position DESC LIMIT 1",
        chat_id=chat_id,
    )
    if question is None:
        raise UnprocessableEntity(
            "There is no answer to regenerate in this chat yet", code="nothing_to_regenerate"
        )
    answer_position = question["position"] + 1
    _remove_from(tx, chat_id, answer_position)  # an answer, so no media to release
    assistant_message_id = _insert_placeholder(tx, chat_id, answer_position, answer_id)
    tx.execute(
        "UPDATE chats SET message_count = :count WHERE id = :chat_id",
        chat_id=chat_id,
        count=answer_position + 1,
    )
    return {
        "chat_id": chat_id,
        "created": False,
        "user_message_id": question["id"],
        "user_position": question["position"],
        "assistant_message_id": assistant_message_id,
        "title_source": chat["title_source"],
    }


def start_edit(
    tx: Transaction,
    user_id: str,
    chat_id: uuid.UUID,
    message_id: uuid.UUID,
    content: str,
    parts: list[dict[str, Any]],
    token_count: int,
    *,
    answer_id: uuid.UUID | None = None,
) -> dict[str, Any]:
    """Replace a question with a new text and remove everything after it, then reserve the
    answer's place (with the id ``answer_id``, as :func:`start_turn`). The caller links the
    new message's media, then calls
    :func:`release_unused_media` in the same transaction.

    Returns:
        The turn, as :func:`start_turn` returns it.

    Raises:
        NotFound: the chat, or the message in it, does not exist or is someone else's.
        UnprocessableEntity: ``not_a_user_message``: the message is an answer.
        Conflict: ``chat_busy``: a turn of the chat is still streaming.
    """
    chat = _lock_idle_chat(tx, user_id, chat_id)
    target = tx.fetch_one(
        "SELECT position, role FROM messages WHERE id = :id AND chat_id = :chat_id",
        id=message_id,
        chat_id=chat_id,
    )
    if target is None:
        raise NotFound("Message not found in this chat", code="message_not_found")
    if target["role"] != "user":
        raise UnprocessableEntity(
            "Only a question can be edited; regenerate an answer instead",
            code="not_a_user_message",
        )
    position = target["position"]
    _remove_from(tx, chat_id, position)
    user_message_id = _insert_question(tx, chat_id, position, content, parts, token_count)
    assistant_message_id = _insert_placeholder(tx, chat_id, position + 1, answer_id)
    tx.execute(
        "UPDATE chats SET message_count = :count WHERE id = :chat_id",
        chat_id=chat_id,
        count=position + 2,
    )
    return {
        "chat_id": chat_id,
        "created": False,
        "user_message_id": user_message_id,
        "user_position": position,
        "assistant_message_id": assistant_message_id,
        "title_source": chat["title_source"],
    }


# --- the end of a turn: fragments of the one statement that stores it (shared.answers) ---------

# The answer's row, stored as it ended; ends its turn's lease. Complete only when the model
# stopped of its own accord (``stop``); an answer cut short (``max_tokens``, ``safety``..., or
# no reason: the model failed or the client left) is kept and marked incomplete, with its
# reason, and ``error_code`` says how it was cut short (for followers). A data-modifying
# ``WITH`` clause: its parameters are :func:`finished_answer`'s.
FINISH_ANSWER = """
    UPDATE messages SET content = :content, parts = CAST(:parts AS jsonb),
           status = :status, finish_reason = :finish_reason, token_count = :token_count,
           token_source = :source, model = :model, error_code = :error_code,
           streaming_until = NULL
    WHERE id = :answer_id
    RETURNING id
"""

# An answer placeholder the model never wrote a word into, removed (its lease with it).
DISCARD_ANSWER = """
    DELETE FROM messages WHERE id = :answer_id AND role = 'assistant' AND content = ''
    RETURNING id
"""

# True while the answer's row still holds its lease, or is gone (a deleted chat): false once
# its turn was stored. What makes storing a turn safe to repeat (shared.answers.store_ending).
ANSWER_NOT_STORED = """
    NOT EXISTS (SELECT 1 FROM messages WHERE id = :answer_id AND streaming_until IS NULL)
"""


def finished_answer(
    content: str,
    *,
    finish_reason: str | None,
    token_count: int,
    reported: bool,
    model: str,
    error_code: str | None,
) -> dict[str, Any]:
    """:data:`FINISH_ANSWER`'s parameters (but ``answer_id``)."""
    text = storable(content)  # the model's text: whatever it produced is kept
    return {
        "content": text,
        "parts": [{"type": "text", "text": text}],
        "status": "complete" if finish_reason == "stop" else "incomplete",
        "finish_reason": finish_reason,
        "token_count": token_count,
        "source": "reported" if reported else "estimated",
        "model": model,
        "error_code": error_code,
    }
