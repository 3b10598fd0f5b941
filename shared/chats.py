"""Chats and their messages in Postgres: the queries chats_crud and chat_stream share.

Every query is scoped by the owner's id, so another user's chat is indistinguishable from
one that does not exist (the contract's 404, never 403). Lists are keyset-paged so a page
costs the same whether the user has ten chats or ten thousand.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from typing import Any

from shared.db import Database, Row, Transaction
from shared.errors import BadRequest, Conflict, NotFound, UnprocessableEntity
from shared.schemas import DEFAULT_TITLE, MAX_POSITION, Chat, ChatSearchHit
from shared.text import storable

FOREIGN_KEY_VIOLATION = "23503"

# Times leave Postgres as integer microseconds since the epoch: exact for keyset cursors, and
# pg8000 decodes an integer ~30x faster than a timestamptz (which it parses with strptime).
CHAT_COLUMNS = (
    "id::text AS id, user_id, title, title_source, "
    "(EXTRACT(EPOCH FROM created_at) * 1000000)::bigint AS created_us, "
    "(EXTRACT(EPOCH FROM updated_at) * 1000000)::bigint AS updated_us"
)
# The inverse, for a bound parameter of integer microseconds.
FROM_MICROS = "(TIMESTAMPTZ 'epoch' + CAST(:{name} AS bigint) * INTERVAL '1 microsecond')"

# The latest time a cursor may name: 9999-12-31T23:59:59.999999Z (PostgreSQL's timestamptz
# goes further, but a bigint of microseconds times an interval overflows well before).
MAX_CURSOR_MICROS = 253_402_300_799_999_999


def chat_not_found() -> NotFound:
    return NotFound("Chat not found", code="chat_not_found")


def parse_chat_id(text: str | None) -> uuid.UUID:
    """A chat id from a path or body; a malformed one is a chat that does not exist."""
    try:
        return uuid.UUID(str(text))
    except ValueError:
        raise chat_not_found() from None


# --- chats -------------------------------------------------------------------------------


def _encode_chat_cursor(row: Row) -> str:
    position = f"{row['updated_us']}:{row['id']}"
    return base64.urlsafe_b64encode(position.encode()).decode().rstrip("=")


def _decode_chat_cursor(cursor: str) -> tuple[int, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        micros, chat_id = base64.urlsafe_b64decode(padded).decode().split(":", 1)
        position = int(micros), uuid.UUID(chat_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        position = None
    if position is None or not 0 <= position[0] <= MAX_CURSOR_MICROS:
        raise BadRequest("cursor is not one this API returned", code="invalid_cursor")
    return position


# The list is the hot path (the frontend's sidebar): Postgres builds the page's JSON, so the
# function forwards one text value instead of decoding and re-encoding every row. For 50
# chats that took one instance from ~590 to ~865 requests/s (bench/README.md). The object is
# schemas.Chat, field for field: the model names the fields (checked here at import), this
# says which column each comes from, and tests/test_wire.py checks the bytes sent.
_CHAT_JSON_FIELDS = {
    "chatId": "id",
    "userId": "user_id",
    "title": "title",
    "createdAt": "EXTRACT(EPOCH FROM created_at)::float8",
    "updatedAt": "EXTRACT(EPOCH FROM updated_at)::float8",
}
if list(_CHAT_JSON_FIELDS) != list(Chat.model_fields):
    raise RuntimeError(f"chats' JSON list does not build schemas.Chat: {list(Chat.model_fields)}")
_CHAT_JSON = (
    "json_build_object("
    + ", ".join(f"'{field}', {column}" for field, column in _CHAT_JSON_FIELDS.items())
    + ")"
)
_LIST_PAGE = """
    WITH page AS (
        SELECT id, user_id, title, created_at, updated_at,
               row_number() OVER (ORDER BY updated_at DESC, id DESC) AS n
        FROM (SELECT id, user_id, title, created_at, updated_at FROM chats
              WHERE user_id = :user_id {after}
              ORDER BY updated_at DESC, id DESC LIMIT :limit + 1) newest
    )
    SELECT COALESCE(json_agg({chat_json} ORDER BY n) FILTER (WHERE n <= :limit), '[]')::text
               AS body,
           max(CASE WHEN n = :limit
               THEN (EXTRACT(EPOCH FROM updated_at) * 1000000)::bigint END) AS last_updated_us,
           max(CASE WHEN n = :limit THEN id::text END) AS last_id,
           count(*) > :limit AS more
    FROM page
"""
_AFTER_CURSOR = f"AND (updated_at, id) < ({FROM_MICROS.format(name='updated_us')}, :chat_id)"


def list_chats_json(
    db: Database, user_id: str, limit: int, cursor: str | None
) -> tuple[str, str | None]:
    """A page of the user's chats as a JSON array, most recently active first, and the next
    page's cursor (None on the last page)."""
    if cursor is None:
        row = db.fetch_one(
            _LIST_PAGE.format(after="", chat_json=_CHAT_JSON), user_id=user_id, limit=limit
        )
    else:
        updated_us, chat_id = _decode_chat_cursor(cursor)
        row = db.fetch_one(
            _LIST_PAGE.format(after=_AFTER_CURSOR, chat_json=_CHAT_JSON),
            user_id=user_id,
            limit=limit,
            updated_us=updated_us,
            chat_id=chat_id,
        )
    assert row is not None  # an aggregate always returns one row
    if not row["more"]:
        return row["body"], None
    return row["body"], _encode_chat_cursor(
        {"updated_us": row["last_updated_us"], "id": row["last_id"]}
    )


# --- search ----------------------------------------------------------------------------------

# Full-text search over the generated tsvector columns of migration 0002 (``simple``
# configuration: no stemming, every language alike), in one of two modes:
#
# * ranked (the usual case): a chat's score is its best message's ts_rank; a title hit counts
#   double, as a title names what the whole chat is about;
# * recent: when a word is so common that more than SEARCH_RANKED_HITS of the user's messages
#   contain it (like "the"), ranking them all would cost ~150 ms for a user with 20,000
#   messages (bench/README.md) and say little. Matching chats then come most recently active
#   first, each with its newest matching message, found through the (chat_id, position) index
#   a few rows per chat.
#
# Paged by offset: a rank is not a stable keyset across writes, and search pages are read a
# few at a time. Snippets are cut in Python from the page's messages (ts_headline re-parses
# each text and cost half of a ranked page's time).
SEARCH_RANKED_HITS = 1000

_RANKED_PAGE = """
    WITH query AS (SELECT websearch_to_tsquery('simple', :q) AS tsq),
    message_hits AS MATERIALIZED (
        SELECT m.chat_id, m.id AS message_id, ts_rank(m.content_search, query.tsq) AS score
        FROM query, messages m JOIN chats c ON c.id = m.chat_id
        WHERE c.user_id = :user_id AND m.content_search @@ query.tsq
        LIMIT :cap
    ),
    capped AS (SELECT count(*) >= :cap AS capped FROM message_hits),
    hits AS (
        SELECT * FROM message_hits
        UNION ALL
        SELECT c.id, NULL, 2 * ts_rank(c.title_search, query.tsq)
        FROM query, chats c
        WHERE c.user_id = :user_id AND c.title_search @@ query.tsq
    ),
    best AS (
        SELECT DISTINCT ON (chat_id) chat_id, message_id, score
        FROM hits ORDER BY chat_id, score DESC, message_id IS NULL DESC
    ),
    page AS (
        SELECT c.id, c.user_id, c.title, c.created_at, c.updated_at, best.message_id,
               row_number() OVER (ORDER BY best.score DESC, c.updated_at DESC, c.id DESC) AS n
        FROM best JOIN chats c ON c.id = best.chat_id
        WHERE NOT (SELECT capped FROM capped)  -- too common to rank: skip the work
        ORDER BY n LIMIT :limit + 1 OFFSET :offset
    )
    SELECT page.id::text AS id, page.user_id, page.title, page.message_id::text AS message_id,
           (EXTRACT(EPOCH FROM page.created_at) * 1000000)::bigint AS created_us,
           (EXTRACT(EPOCH FROM page.updated_at) * 1000000)::bigint AS updated_us,
           m.content, false AS capped, page.n
    FROM page LEFT JOIN messages m ON m.id = page.message_id
    UNION ALL
    SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, true, 0 FROM capped WHERE capped
    ORDER BY n
"""
_RECENT_PAGE = """
    WITH query AS (SELECT websearch_to_tsquery('simple', :q) AS tsq)
    SELECT c.id::text AS id, c.user_id, c.title, newest.id::text AS message_id,
           (EXTRACT(EPOCH FROM c.created_at) * 1000000)::bigint AS created_us,
           (EXTRACT(EPOCH FROM c.updated_at) * 1000000)::bigint AS updated_us,
           newest.content
    FROM query CROSS JOIN chats c
    LEFT JOIN LATERAL (
        SELECT m.id, m.content FROM messages m
        WHERE m.chat_id = c.id AND m.content_search @@ query.tsq
        ORDER BY m.position DESC LIMIT 1
    ) newest ON true
    WHERE c.user_id = :user_id AND (newest.id IS NOT NULL OR c.title_search @@ query.tsq)
    ORDER BY c.updated_at DESC, c.id DESC
    LIMIT :limit + 1 OFFSET :offset
"""
_TERMS = "SELECT COALESCE(array_agg(lexeme), '{}') AS terms FROM unnest(to_tsvector('simple', :q))"
_SEARCH_CURSOR_PREFIX = "search:"
_WORD = re.compile(r"\w+")
SNIPPET_WORDS_BEFORE = 8
SNIPPET_WORDS = 24


def _decode_search_cursor(cursor: str) -> int:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        text = base64.urlsafe_b64decode(padded).decode()
        if text.startswith(_SEARCH_CURSOR_PREFIX):
            offset = int(text.removeprefix(_SEARCH_CURSOR_PREFIX))
            if offset >= 0:
                return offset
    except (ValueError, binascii.Error, UnicodeDecodeError):
        pass
    raise BadRequest("cursor is not one this API returned", code="invalid_cursor")


def _encode_search_cursor(offset: int) -> str:
    text = f"{_SEARCH_CURSOR_PREFIX}{offset}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def snippet(text: str, terms: set[str]) -> str:
    """A plain-text excerpt of ``text`` around its first word in ``terms`` (lower-case)."""
    words = list(_WORD.finditer(text))
    hit = next((n for n, word in enumerate(words) if word.group().lower() in terms), 0)
    first = max(0, hit - SNIPPET_WORDS_BEFORE)
    last = min(len(words), first + SNIPPET_WORDS) - 1
    if not words:
        return " ".join(text.split())[:200]
    excerpt = " ".join(text[words[first].start() : words[last].end()].split())
    prefix = "…" if first > 0 else ""
    suffix = "…" if last < len(words) - 1 else ""
    return prefix + excerpt + suffix


def search_chats(
    db: Database, user_id: str, text: str, limit: int, cursor: str | None
) -> tuple[list[ChatSearchHit], str | None]:
    """The user's chats whose title or messages match ``text``, best first.

    Each chat object also carries ``snippet`` (a short excerpt around the best hit) and
    ``matchMessageId`` (the message it comes from, or None when the title matched best).

    Returns:
        The page, and the next page's cursor (None on the last page).
    """
    offset = _decode_search_cursor(cursor) if cursor is not None else 0
    params = {"q": text, "user_id": user_id, "limit": limit, "offset": offset}
    with db.transaction() as tx:
        # Plan for this query's words: a prepared statement's generic plan cannot know how
        # common they are, and picks the GIN index where a few index rows per chat are far
        # cheaper (or the other way round): ~100 ms instead of ~3 ms.
        tx.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        rows = tx.fetch_all(_RANKED_PAGE, cap=SEARCH_RANKED_HITS, **params)
        if any(row["capped"] for row in rows):
            rows = tx.fetch_all(_RECENT_PAGE, **params)
        terms: set[str] = set()
        if rows:
            found = tx.fetch_one(_TERMS, q=text)
            terms = set(found["terms"]) if found else set()
    page = [
        ChatSearchHit.from_row(
            row, snippet=snippet(row["content"] if row["message_id"] else row["title"], terms)
        )
        for row in rows[:limit]
    ]
    return page, (_encode_search_cursor(offset + limit) if len(rows) > limit else None)


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
    bucket worker, so a crash between the two cannot leave an orphaned object unrecorded.
    """
    with db.transaction() as tx:
        owned = tx.fetch_one(
            "SELECT id FROM chats WHERE id = :chat_id AND user_id = :user_id FOR UPDATE",
            chat_id=chat_id,
            user_id=user_id,
        )
        if owned is None:
            raise chat_not_found()
        tx.execute(
            """
            WITH doomed AS (
                DELETE FROM uploads u
                USING chat_uploads link
                WHERE link.chat_id = :chat_id AND u.id = link.upload_id
                  AND NOT EXISTS (
                      SELECT 1 FROM chat_uploads other
                      WHERE other.upload_id = link.upload_id AND other.chat_id <> :chat_id)
                RETURNING u.bucket, coalesce(u.permanent_name, u.object_name) AS object_name
            )
            INSERT INTO storage_deletions (bucket, object_name)
            SELECT bucket, object_name FROM doomed
            """,
            chat_id=chat_id,
        )
        tx.execute("DELETE FROM chats WHERE id = :chat_id", chat_id=chat_id)


# --- messages ----------------------------------------------------------------------------


def list_messages(
    db: Database, user_id: str, chat_id: uuid.UUID, limit: int, before: int | None
) -> tuple[list[Row], int | None]:
    """The newest ``limit`` messages before position ``before``, oldest first.

    One round trip: the ownership check and the page come from one statement, so a chat
    that is not the caller's is a 404 exactly like one that does not exist.

    Returns:
        The messages, and the ``before`` value of the next (older) page, if there is one.
    """
    rows = db.fetch_all(
        """
        SELECT c.id AS owned_chat, m.id::text AS id, m.position, m.role, m.content, m.parts,
               m.status, m.finish_reason, m.token_count,
               (EXTRACT(EPOCH FROM m.created_at) * 1000000)::bigint AS created_us
        FROM chats c
        LEFT JOIN LATERAL (
            SELECT id, position, role, content, parts, status, finish_reason, token_count,
                   created_at
            FROM messages
            WHERE chat_id = c.id AND position < :before
            ORDER BY position DESC
            LIMIT :limit
        ) m ON true
        WHERE c.id = :chat_id AND c.user_id = :user_id
        """,
        chat_id=chat_id,
        user_id=user_id,
        before=before if before is not None else MAX_POSITION,
        limit=limit,
    )
    if not rows:
        raise chat_not_found()
    messages = sorted((row for row in rows if row["id"] is not None), key=lambda r: r["position"])
    oldest = messages[0]["position"] if messages else 0
    has_older = len(messages) == limit and oldest > 0
    return messages, (oldest if has_older else None)


# --- a chat turn -------------------------------------------------------------------------------


def start_turn(
    tx: Transaction,
    user_id: str,
    chat_id: uuid.UUID | None,
    content: str,
    parts: list[dict[str, Any]],
    token_count: int,
) -> Row:
    """Store a user's message and reserve its answer's place, in the caller's transaction.

    Two positions are taken at once under the chat's row lock, the user's message and the
    assistant's answer right after it, so two sends to one chat at the same time keep a
    clean order (question, answer, question, answer) whichever answer finishes first. The
    answer is stored now as an empty ``incomplete`` placeholder and completed at the end of
    the turn: a crash mid-stream leaves it marked incomplete, as it should.

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
        "assistant_message_id": _insert_placeholder(tx, chat_id, position + 1),
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


def _insert_placeholder(tx: Transaction, chat_id: uuid.UUID, position: int) -> uuid.UUID:
    """The answer's row, empty and ``incomplete`` until the turn stores it, with its lease."""
    message_id = uuid.uuid4()
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
    queued = tx.fetch_all(
        """
        WITH released AS (
            DELETE FROM chat_uploads link
            WHERE link.chat_id = :chat_id AND NOT EXISTS (
                SELECT 1 FROM messages m, jsonb_array_elements(m.parts) part
                WHERE m.chat_id = :chat_id AND part ->> 'upload_id' = link.upload_id::text)
            RETURNING link.upload_id
        ), doomed AS (
            DELETE FROM uploads u
            USING released r
            WHERE u.id = r.upload_id AND NOT EXISTS (
                SELECT 1 FROM chat_uploads other
                WHERE other.upload_id = r.upload_id AND other.chat_id <> :chat_id)
            RETURNING u.bucket, coalesce(u.permanent_name, u.object_name) AS object_name
        )
        INSERT INTO storage_deletions (bucket, object_name)
        SELECT bucket, object_name FROM doomed
        RETURNING id
        """,
        chat_id=chat_id,
    )
    return len(queued)


def start_regenerate(tx: Transaction, user_id: str, chat_id: uuid.UUID) -> dict[str, Any]:
    """Replace the chat's last answer: remove it and reserve the new one's place.

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
    assistant_message_id = _insert_placeholder(tx, chat_id, answer_position)
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
) -> dict[str, Any]:
    """Replace a question with a new text and remove everything after it, then reserve the
    answer's place. The caller links the new message's media, then calls
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
    assistant_message_id = _insert_placeholder(tx, chat_id, position + 1)
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


def finish_answer(
    tx: Transaction,
    message_id: uuid.UUID,
    content: str,
    *,
    finish_reason: str | None,
    token_count: int,
    reported: bool,
    model: str,
) -> None:
    """Store the assistant's answer and end its turn's lease.

    Complete only when the model stopped of its own accord (``stop``); an answer cut short
    (``max_tokens``, ``safety``..., or no reason: the model failed or the client left) is
    kept and marked incomplete, with its reason.
    """
    tx.execute(
        """
        UPDATE messages SET content = :content, parts = CAST(:parts AS jsonb),
               status = :status, finish_reason = :finish_reason, token_count = :token_count,
               token_source = :source, model = :model, streaming_until = NULL
        WHERE id = :id
        """,
        id=message_id,
        content=storable(content),  # the model's text: whatever it produced is kept
        parts=[{"type": "text", "text": storable(content)}],
        status="complete" if finish_reason == "stop" else "incomplete",
        finish_reason=finish_reason,
        token_count=token_count,
        source="reported" if reported else "estimated",
        model=model,
    )


def discard_answer(tx: Transaction, message_id: uuid.UUID) -> None:
    """Remove an answer placeholder the model never wrote a word into (its lease with it)."""
    tx.execute(
        "DELETE FROM messages WHERE id = :id AND role = 'assistant' AND content = ''",
        id=message_id,
    )


def user_display_name(tx: Transaction, user_id: str) -> str | None:
    row = tx.fetch_one("SELECT first_name, last_name FROM users WHERE id = :id", id=user_id)
    if row is None:
        return None
    name = " ".join(part for part in (row["first_name"], row["last_name"]) if part)
    return name or None
