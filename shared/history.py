"""A chat's messages as the API shows them: pages of history, oldest first, with signed
URLs for their media.
"""

from __future__ import annotations

import uuid

from shared.chats import chat_not_found
from shared.db import Database, Row
from shared.schemas import MAX_POSITION


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
