"""The model's context for a turn, built from the server's store only.

A turn sends Gemini: the system instruction (with the newest rolling summary folded in), then
the most recent messages that fit ``TARGET_WINDOW_TOKENS`` and ``CHAT_WINDOW_SIZE``, oldest
first, in Gemini's roles (``user``/``model``) with consecutive turns of one role merged, as
the API requires alternating turns.

Reading the window costs one indexed query bounded by ``CHAT_WINDOW_SIZE`` rows (the
``(chat_id, position)`` index walked backwards), whatever the chat's length.

Media follows the "intelligent inclusion" rules: the current message's media is always
sent; earlier media only when the new text refers to it ("the picture above", "that video")
and ``MEDIA_INCLUDE_ONLY_CURRENT`` is off and ``MEDIA_ALLOW_HISTORY_IF_REFERENCED`` is on,
newest first, within ``MEDIA_MAX_PARTS``, ``MEDIA_MAX_IMAGES`` and ``MEDIA_MAX_VIDEOS``.
Earlier media that is left out is replaced by a short text note, so the model knows
something was there without paying for it.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.db import Database
from shared.settings import Settings
from shared.summaries import NEWEST_SUMMARY, StoredSummary

SUMMARY_HEADING = "Summary of the earlier conversation"

GEMINI_ROLES = {"user": "user", "assistant": "model"}

# Words by which a message refers back to earlier media, by kind of media.
_REFERENCE_WORDS: dict[str, tuple[str, ...]] = {
    "image": (
        "image",
        "images",
        "picture",
        "pictures",
        "photo",
        "photos",
        "pic",
        "pics",
        "screenshot",
        "screenshots",
        "drawing",
        "diagram",
        "chart",
    ),
    "video": ("video", "videos", "clip", "clips", "footage", "recording"),
    "audio": ("audio", "recording", "song", "voice", "sound", "podcast", "track"),
    "document": ("document", "documents", "pdf", "file", "files", "doc", "paper", "report"),
}
# Words that point back without naming a kind: any kind of earlier media qualifies.
_GENERIC_REFERENCES = (
    "attachment",
    "attachments",
    "attached",
    "above",
    "earlier",
    "previous",
    "before",
    "uploaded",
    "sent you",
    "shared",
)


def media_kind(mime_type: str) -> str:
    """``image``, ``video``, ``audio`` or ``document`` (everything else: PDFs, text files)."""
    major = mime_type.split("/", 1)[0]
    return major if major in ("image", "video", "audio") else "document"


def referenced_media_kinds(text: str) -> set[str]:
    """The kinds of earlier media a message refers to; empty when it refers to none."""
    lowered = text.lower()
    words = set(re.findall(r"[a-z]+", lowered))
    kinds = {kind for kind, names in _REFERENCE_WORDS.items() if words & set(names)}
    generic = any(
        (phrase in lowered) if " " in phrase else (phrase in words)
        for phrase in _GENERIC_REFERENCES
    )
    if kinds:
        return kinds
    return set(_REFERENCE_WORDS) if generic else set()


@dataclass(frozen=True)
class StoredMessage:
    position: int
    role: str
    content: str
    parts: list[dict[str, Any]]
    token_count: int
    status: str


@dataclass
class ModelContext:
    """What one turn sends the model, and how it was chosen (for logs, tests and triggers)."""

    contents: list[dict[str, Any]]
    summary: StoredSummary | None
    window_positions: list[int]
    window_tokens: int
    media_sent: list[dict[str, Any]] = field(default_factory=list)
    # tokens and messages newer than the summary that the window query saw
    uncovered_tokens: int = 0
    uncovered_messages: int = 0


def load_recent(
    db: Database, chat_id: uuid.UUID, through_position: int, window_size: int
) -> tuple[StoredSummary | None, list[StoredMessage]]:
    """The newest summary, and up to ``window_size`` newest messages after it, newest first.

    One round trip, bounded by ``window_size`` rows however long the chat is.
    """
    rows = db.fetch_all(
        f"""
        WITH summary AS ({NEWEST_SUMMARY})
        SELECT 'summary' AS kind, covers_through_position AS position, NULL AS role,
               content, NULL::jsonb AS parts, token_count, NULL AS status
        FROM summary
        UNION ALL
        (SELECT 'message', position, role, content, parts, token_count, status
         FROM messages
         WHERE chat_id = :chat_id
           AND position <= :through
           AND position > COALESCE((SELECT covers_through_position FROM summary), -1)
         ORDER BY position DESC
         LIMIT :window_size)
        """,
        chat_id=chat_id,
        through=through_position,
        window_size=window_size,
    )
    summary = None
    messages = []
    for row in rows:
        if row["kind"] == "summary":
            summary = StoredSummary(row["content"], row["position"], row["token_count"])
        else:
            messages.append(_stored_message(row))
    return summary, messages


def _stored_message(row: Mapping[str, Any]) -> StoredMessage:
    """A message row (or its JSON) as the window holds it."""
    return StoredMessage(
        row["position"],
        row["role"],
        row["content"],
        row["parts"],
        row["token_count"],
        row["status"],
    )


# The window before the turn's new message, as a scalar subquery giving a JSON array, newest
# first: up to ``:window_rows`` messages before position ``{before}`` (an SQL expression),
# newer than the newest summary (a ``WITH`` clause named ``summary``: NEWEST_SUMMARY).
WINDOW_BEFORE = """
    (SELECT COALESCE(json_agg(w), '[]'::json) FROM (
        SELECT position, role, content, parts, token_count, status FROM messages
        WHERE chat_id = :chat_id AND position < {before}
          AND position > COALESCE((SELECT covers_through_position FROM summary), -1)
        ORDER BY position DESC
        LIMIT :window_rows) w)
"""

# The newest summary as JSON (``content``, ``covers_through_position``, ``token_count``).
SUMMARY_JSON = "(SELECT row_to_json(s) FROM summary s)"


def window_from_json(
    summary: dict[str, Any] | None, rows: list[dict[str, Any]], current: StoredMessage
) -> tuple[StoredSummary | None, list[StoredMessage]]:
    """What :data:`SUMMARY_JSON` and :data:`WINDOW_BEFORE` read, with the turn's own new
    message first: what :func:`load_recent` returns."""
    stored = (
        StoredSummary(
            summary["content"], summary["covers_through_position"], summary["token_count"]
        )
        if summary is not None
        else None
    )
    return stored, [current, *(_stored_message(row) for row in rows)]


def _file_part(part: dict[str, Any]) -> dict[str, Any]:
    # The REST API's own JSON (camelCase): sent as it is, no SDK model per part.
    return {"fileData": {"fileUri": part["gcs_uri"], "mimeType": part["mime_type"]}}


class _MediaBudget:
    """Counts media parts against MEDIA_MAX_PARTS / MEDIA_MAX_IMAGES / MEDIA_MAX_VIDEOS."""

    def __init__(self, settings: Settings) -> None:
        self._limits = {
            "image": settings.media_max_images,
            "video": settings.media_max_videos,
        }
        self._max_parts = settings.media_max_parts
        self._used: dict[str, int] = {}
        self._parts = 0

    def take(self, mime_type: str) -> bool:
        kind = media_kind(mime_type)
        limit = self._limits.get(kind)
        if self._parts >= self._max_parts or (
            limit is not None and self._used.get(kind, 0) >= limit
        ):
            return False
        self._used[kind] = self._used.get(kind, 0) + 1
        self._parts += 1
        return True


def window_budget(settings: Settings, summary: StoredSummary | None, system_tokens: int) -> int:
    """Tokens the recent-message window may use: ``TARGET_WINDOW_TOKENS``, and never more
    than what ``MAX_CONTEXT_TOKENS`` leaves once the system instruction and summary are in."""
    summary_tokens = summary.token_count if summary is not None else 0
    room = settings.max_context_tokens - system_tokens - summary_tokens
    return max(0, min(settings.target_window_tokens, room))


def build_context(
    summary: StoredSummary | None,
    newest_first: list[StoredMessage],
    settings: Settings,
    system_tokens: int = 0,
) -> ModelContext:
    """Choose the window and media, and shape them as Gemini ``contents``.

    Args:
        summary: the newest rolling summary, if any (its text goes to the system instruction).
        newest_first: messages after the summary, newest first; the first one is the turn's
            new user message, always included (its size was checked against
            ``MAX_CONTEXT_TOKENS`` when it arrived).
        settings: window and media settings.
        system_tokens: the system instruction's size, which the window must leave room for.
    """
    assert newest_first and newest_first[0].role == "user", "the turn's message comes first"
    current = newest_first[0]
    budget = window_budget(settings, summary, system_tokens)

    window: list[StoredMessage] = []
    tokens = 0
    for message in newest_first:
        if message.role == "assistant" and not message.content:
            continue  # a placeholder of an answer still streaming, or one that failed empty
        if window and (
            len(window) >= settings.chat_window_size or tokens + message.token_count > budget
        ):
            break
        window.append(message)
        tokens += message.token_count
    window.reverse()
    while len(window) > 1 and window[0].role != "user":
        tokens -= window[0].token_count
        window.pop(0)  # Gemini's conversation must open with a user turn

    media_budget = _MediaBudget(settings)
    wanted_kinds: set[str] = set()
    if settings.media_allow_history_if_referenced and not settings.media_include_only_current:
        wanted_kinds = referenced_media_kinds(current.content)
    media_sent: list[dict[str, Any]] = []
    # Decide newest first so the caps keep the most recent media; the current message's own
    # media was validated against the caps when it arrived, so it always fits.
    include: set[tuple[int, int]] = set()
    for message in reversed(window):
        for index, part in enumerate(message.parts):
            if part.get("type") == "text":
                continue
            is_current = message.position == current.position
            if (is_current or media_kind(part["mime_type"]) in wanted_kinds) and media_budget.take(
                part["mime_type"]
            ):
                include.add((message.position, index))

    contents: list[dict[str, Any]] = []
    for message in window:
        parts: list[dict[str, Any]] = []
        for index, part in enumerate(message.parts):
            if part.get("type") == "text":
                if part.get("text"):
                    parts.append({"text": part["text"]})
            elif (message.position, index) in include:
                parts.append(_file_part(part))
                media_sent.append(part)
            else:
                parts.append(
                    {
                        "text": f"[earlier {media_kind(part['mime_type'])} attachment "
                        f"({part['mime_type']}) not shown]"
                    }
                )
        if not parts:
            parts.append({"text": message.content or "…"})
        role = GEMINI_ROLES[message.role]
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)  # merge: Gemini wants alternating turns
        else:
            contents.append({"role": role, "parts": parts})

    return ModelContext(
        contents=contents,
        summary=summary,
        window_positions=[message.position for message in window],
        window_tokens=tokens,
        media_sent=media_sent,
        uncovered_tokens=sum(message.token_count for message in newest_first),
        uncovered_messages=len(newest_first),
    )


def system_text(instruction: str, summary: StoredSummary | None) -> str:
    """The system instruction with the rolling summary, if any, folded in."""
    if summary is None:
        return instruction
    return f"{instruction}\n\n## {SUMMARY_HEADING}\n{summary.content}"
