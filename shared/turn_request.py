"""The body of ``POST /chat`` read into what a turn needs: which turn, and the new question.

Step 1 of a turn (see :mod:`shared.turn` and docs/api.md, "Sending a message"): only the last
message of the body is new and must be the user's (the client's copy of the history is never
fed to the model nor stored). :func:`read_request` validates the controls (a send, an edit or
a regenerate) and the new message; :func:`question` prices the question once its media are
resolved (:func:`shared.media.resolve_attachments`) and refuses one that cannot fit the
model's context. Every refusal is a 4xx before anything is stored or sent.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from typing import Any

from flask import Request
from pydantic import ValidationError

from shared import chats
from shared.errors import NotFound, PayloadTooLarge, UnprocessableEntity
from shared.schemas import ChatRequest
from shared.settings import Settings
from shared.text import unstorable_path
from shared.token_estimate import estimate_message_tokens, estimate_text_tokens
from shared.web import one_pass_validator, parse_json

# Room left in the instruction for the user's name (``{user_name}``).
SYSTEM_NAME_TOKENS = 16


@dataclass(frozen=True)
class NewMessage:
    """The one new message of a request: its text and its media references."""

    text: str
    media_refs: list[tuple[str, str | None]]  # (reference, declared MIME type)


@dataclass(frozen=True)
class TurnRequest:
    """What a ``POST /chat`` body asks for, validated: a send, an edit or a regenerate."""

    chat_id: uuid.UUID | None
    edited_id: uuid.UUID | None  # the question an edit replaces
    regenerate: bool
    message: NewMessage | None  # None for a regenerate
    resumable: bool  # the answer outlives its client and can be followed (shared.answers)


@dataclass(frozen=True)
class Question:
    """The new question, ready to store: its text, stored parts and estimated tokens."""

    text: str
    parts: list[dict[str, Any]]
    tokens: int


def parse_body(request: Request) -> ChatRequest:
    """The body, with only its last message kept: the same bodies accepted, and refused with
    the same errors, as :func:`shared.web.parse_json` would.

    The frontend sends its copy of the whole chat each turn (4 MB at 10,000 messages). Every
    message is still checked against the schema, but in one pass of pydantic's Rust parser
    that builds no model for the earlier ones: 160 ms -> ~20 ms of CPU at 10,000 messages
    (bench/README.md, "The chat body"). A body that pass does not accept as it stands
    (refused, or with unknown fields below its top level) is read by ``parse_json``, which
    names the problem.
    """
    body = _read_in_one_pass(request.get_data(cache=True))
    if body is not None:
        return body  # it built the last message only
    body = parse_json(request, ChatRequest)
    return body.model_copy(update={"messages": body.messages[-1:]})


def _read_in_one_pass(raw: bytes) -> ChatRequest | None:
    """The body with its last message, or None when ``parse_json`` must read it."""
    try:
        checked = one_pass_validator(ChatRequest).validate_json(raw, strict=True)
    except ValidationError:
        return None
    known = ChatRequest.model_fields
    # Unknown fields reach here only from the top level, where the frontend's are text. Any
    # other value there is left to parse_json, which bounds its depth and its numbers.
    if any(
        not isinstance(value, str | bool | None)
        for name, value in checked.items()
        if name not in known
    ):
        return None
    kept = {name: value for name, value in checked.items() if name in known}
    kept["messages"] = kept.get("messages", [])[-1:]
    body = ChatRequest.model_validate(kept, strict=True)  # already checked; builds one message
    if unstorable_path(body.storable_part()) is not None:
        return None  # parse_json names it, at the message's index in the body
    return body


def read_request(body: ChatRequest, settings: Settings) -> TurnRequest:
    """The body's controls and new message; a 4xx for a contradictory or unusable body."""
    if body.regenerate and body.editMessageId is not None:
        raise UnprocessableEntity(
            "regenerate and editMessageId cannot be combined", code="conflicting_controls"
        )
    if (body.regenerate or body.editMessageId is not None) and not body.chatId:
        raise UnprocessableEntity(
            "chatId is required to regenerate or edit", code="chat_id_required"
        )
    chat_id = chats.parse_chat_id(body.chatId) if body.chatId else None
    edited_id = None
    if body.editMessageId is not None:
        try:
            edited_id = uuid.UUID(body.editMessageId)
        except ValueError:
            raise NotFound("Message not found in this chat", code="message_not_found") from None
    message = None if body.regenerate else read_new_message(body, settings)
    return TurnRequest(chat_id, edited_id, body.regenerate, message, body.resumable)


def read_new_message(body: ChatRequest, settings: Settings) -> NewMessage:
    """The last message of the body (:func:`parse_body` keeps no other: the earlier ones are
    the client's copy)."""
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


@functools.lru_cache(maxsize=4)
def instruction_tokens(template: str) -> int:
    """The instruction's size with room for the user's name; counted once per loaded text."""
    return estimate_text_tokens(template) + SYSTEM_NAME_TOKENS


def question(
    message: NewMessage, media_parts: list[dict[str, Any]], system_tokens: int, settings: Settings
) -> Question:
    """The new question as stored; 413 when it cannot fit the model's context at all."""
    parts = ([{"type": "text", "text": message.text}] if message.text else []) + media_parts
    tokens = estimate_message_tokens(
        message.text, [(part["mime_type"], part.get("size")) for part in media_parts]
    )
    # The message must fit the context with the instruction and the largest summary.
    room = settings.max_context_tokens - system_tokens - settings.summary_max_tokens
    if tokens > room:
        raise PayloadTooLarge(
            f"The message is too long for the model's context: about {tokens} tokens, "
            f"at most {max(room, 0)}",
            code="message_exceeds_context",
        )
    return Question(message.text, parts, tokens)
