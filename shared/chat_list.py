"""GET /api/chats: pages of the user's chats, most recently active first (the sidebar's
list, keyset-paged) or best match first (``?q=``, full-text search, offset-paged).

Every query is scoped by the owner's id. A keyset page costs the same whether the user has
ten chats or ten thousand.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from typing import NamedTuple

from shared.db import Database, Row
from shared.errors import BadRequest
from shared.schemas import Chat, ChatSearchHit
from shared.users import USER_KNOWN

# A bound parameter of integer microseconds as a timestamptz: the inverse of how times leave
# Postgres (shared.chats.CHAT_COLUMNS).
FROM_MICROS = "(TIMESTAMPTZ 'epoch' + CAST(:{name} AS bigint) * INTERVAL '1 microsecond')"

# The latest time a cursor may name: 9999-12-31T23:59:59.999999Z (PostgreSQL's timestamptz
# goes further, but a bigint of microseconds times an interval overflows well before).
MAX_CURSOR_MICROS = 253_402_300_799_999_999


# --- the list --------------------------------------------------------------------------------


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
           count(*) > :limit AS more,
           {user_known} AS user_known
    FROM page
"""
_AFTER_CURSOR = f"AND (updated_at, id) < ({FROM_MICROS.format(name='updated_us')}, :chat_id)"


_FIRST_PAGE = _LIST_PAGE.format(after="", chat_json=_CHAT_JSON, user_known=USER_KNOWN)
_NEXT_PAGE = _LIST_PAGE.format(after=_AFTER_CURSOR, chat_json=_CHAT_JSON, user_known=USER_KNOWN)


class ChatListPage(NamedTuple):
    body: str  # the page as a JSON array of schemas.Chat
    next_cursor: str | None  # None on the last page
    # Whether the user's row exists, read in the page's own statement: the deleted-user
    # check of shared.auth.KnownUsers without a round trip of its own (web.checks_user_itself).
    user_known: bool


def list_chats_json(db: Database, user_id: str, limit: int, cursor: str | None) -> ChatListPage:
    """A page of the user's chats as a JSON array, most recently active first, the next
    page's cursor, and whether the user's row exists."""
    if cursor is None:
        row = db.fetch_one(_FIRST_PAGE, user_id=user_id, limit=limit)
    else:
        updated_us, chat_id = _decode_chat_cursor(cursor)
        row = db.fetch_one(
            _NEXT_PAGE, user_id=user_id, limit=limit, updated_us=updated_us, chat_id=chat_id
        )
    assert row is not None  # an aggregate always returns one row
    next_cursor = None
    if row["more"]:
        next_cursor = _encode_chat_cursor(
            {"updated_us": row["last_updated_us"], "id": row["last_id"]}
        )
    return ChatListPage(row["body"], next_cursor, bool(row["user_known"]))


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
