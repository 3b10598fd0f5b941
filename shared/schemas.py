"""The wire contract as pydantic models: request bodies and response objects.

``docs/api.md`` (the wire contract the frontend depends on) fixes the field names; these
models (and :mod:`shared.stream_events` for ``POST /chat``'s stream) are the one place the
code spells them, and ``dev/openapi.py`` builds the OpenAPI
description from them. Every body a function sends is one of these models serialised
(:func:`shared.web.json_response`); domain modules hand over rows, and the ``from_row``
constructors here turn them into wire objects. ``tests/test_wire.py`` checks what the
running stack sends against the OpenAPI description.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    RootModel,
    StringConstraints,
    model_validator,
)

MAX_TITLE_CHARS = 200
DEFAULT_TITLE = "New Chat"
MAX_POSITION = 2**31 - 1  # messages.position is a PostgreSQL integer

# Why an answer ended (Gemini's many reasons folded into these by shared/gemini.py), or
# ``stopped``: the user stopped it (POST .../stop).
FinishReason = Literal["stop", "max_tokens", "safety", "recitation", "other", "stopped"]


def _strip(value: object) -> object:
    """Surrounding whitespace off, as Python's str.strip() sees whitespace (which is what the
    OpenAPI's patterns mean by \\s)."""
    return value.strip() if isinstance(value, str) else value


def _integral(value: object) -> object:
    """A JSON number with no fraction as an int: JSON Schema's integer includes 5.0."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Title = Annotated[str, StringConstraints(max_length=MAX_TITLE_CHARS), BeforeValidator(_strip)]


class RequestModel(BaseModel):
    """A request body: unknown fields (such as the frontend's ``user_id``) are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    def storable_part(self) -> dict[str, Any]:
        """What of the body a handler may store: its text must be text PostgreSQL can hold
        (checked by :func:`shared.web.validate`). Fields never stored may hold anything."""
        return self.model_dump()


# --- errors ------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    """Every error response's body (sent without the fields that are ``None``)."""

    detail: str = Field(description="Human-readable; the frontend shows it.")
    code: str = Field(description="Machine-readable, e.g. chat_not_found.")
    retry_after: int | None = Field(
        default=None, description="429 only: seconds to wait, as in the Retry-After header."
    )


# --- chats -------------------------------------------------------------------------------


class CreateChatRequest(RequestModel):
    title: Title | None = Field(
        None, description=f'Optional; a missing, null or blank title becomes "{DEFAULT_TITLE}".'
    )


class RenameChatRequest(RequestModel):
    title: Annotated[
        str,
        StringConstraints(min_length=1, max_length=MAX_TITLE_CHARS),
        BeforeValidator(_strip),
    ]


MAX_SEARCH_CHARS = 200


LIST_PAGE_SIZE = 100
SEARCH_PAGE_SIZE = 20


class ChatListQuery(RequestModel):
    limit: int | None = Field(
        None,
        ge=1,
        le=200,
        description=f"Chats per page (default {LIST_PAGE_SIZE}; {SEARCH_PAGE_SIZE} with `q`).",
    )
    cursor: str | None = Field(None, description="X-Next-Cursor of the previous page.")
    q: Annotated[str, StringConstraints(strip_whitespace=True, max_length=MAX_SEARCH_CHARS)] = (
        Field(
            "",
            description=(
                "Search: only chats whose title or messages contain these words, best match "
                'first (web-search syntax: "a phrase", -excluded, or). Blank: the plain list.'
            ),
        )
    )


class MessageListQuery(RequestModel):
    limit: int = Field(500, ge=1, le=1000, description="Messages per page (the newest ones).")
    before: int | None = Field(
        None,
        ge=0,
        le=MAX_POSITION,
        description="Only messages before this position: X-Next-Cursor of the page.",
    )


class Chat(BaseModel):
    chatId: str
    userId: str
    title: str
    createdAt: float = Field(description="Unix epoch seconds.")
    updatedAt: float = Field(description="Last activity, Unix epoch seconds.")

    @staticmethod
    def fields_of(row: Mapping[str, Any]) -> dict[str, Any]:
        """A chat row's wire fields (:data:`shared.chats.CHAT_COLUMNS`: times in microseconds)."""
        return {
            "chatId": str(row["id"]),
            "userId": row["user_id"],
            "title": row["title"],
            "createdAt": row["created_us"] / 1_000_000,
            "updatedAt": row["updated_us"] / 1_000_000,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Chat:
        return cls(**cls.fields_of(row))


class CreatedChat(Chat):
    chat_id: str

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> CreatedChat:
        fields = Chat.fields_of(row)
        return cls(chat_id=fields["chatId"], **fields)


class ChatSearchHit(Chat):
    snippet: str = Field(description="Plain-text excerpt around the best match.")
    matchMessageId: str | None = Field(
        description="The message the snippet comes from; null when the title matched best."
    )

    @classmethod
    def from_row(cls, row: Mapping[str, Any], *, snippet: str = "") -> ChatSearchHit:
        """A search page's row: a chat row plus ``message_id`` (None for a title match)."""
        return cls(**Chat.fields_of(row), snippet=snippet, matchMessageId=row["message_id"])


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class MediaPart(BaseModel):
    type: str = Field(description='The media kind, such as "image", "video", "audio".')
    mime_type: str | None
    media_url: str | None = Field(
        description="Short-lived signed GET URL (null where none could be signed)."
    )


MessagePart = TextPart | MediaPart

# Signs a stored media part into a URL the browser can GET, or None where it cannot.
MediaUrlSigner = Callable[[dict[str, Any]], str | None]


class Message(BaseModel):
    messageId: str
    role: Literal["user", "assistant"]
    content: str
    timestamp: float
    media_type: str | None
    media_url: str | None
    parts: list[MessagePart]
    status: Literal["complete", "incomplete"] = Field(
        description="incomplete: the answer was cut short (model failure or disconnect)."
    )
    finish_reason: FinishReason | None = Field(
        description="Why an answer ended, as the model said (null for questions and for "
        "answers cut by a failure or a disconnect)."
    )

    @classmethod
    def from_row(cls, row: Mapping[str, Any], sign: MediaUrlSigner | None = None) -> Message:
        """A stored message (its ``parts`` as stored), media signed by ``sign``."""
        parts: list[TextPart | MediaPart] = []
        first_media: MediaPart | None = None
        for part in row["parts"]:
            if part.get("type") == "text":
                parts.append(TextPart(type="text", text=part.get("text", "")))
            else:
                media = MediaPart(
                    type=part.get("type"),
                    mime_type=part.get("mime_type"),
                    media_url=sign(part) if sign else None,
                )
                first_media = first_media or media
                parts.append(media)
        return cls(
            messageId=str(row["id"]),
            role=row["role"],
            content=row["content"],
            timestamp=row["created_us"] / 1_000_000,
            media_type=first_media.mime_type if first_media else None,
            media_url=first_media.media_url if first_media else None,
            parts=parts,
            status=row["status"],
            finish_reason=row.get("finish_reason"),
        )


ChatPage = RootModel[list[Chat]]
SearchPage = RootModel[list[ChatSearchHit]]
MessagePage = RootModel[list[Message]]


class DeletedChat(BaseModel):
    message: str


# --- usage -------------------------------------------------------------------------------


class UsageToday(BaseModel):
    messages: int = Field(description="Answered turns today (UTC).")
    input_tokens: int
    output_tokens: int
    total_tokens: int


class UsageLimits(BaseModel):
    messages_per_minute: int
    tokens_per_day: int


class UsageRemaining(BaseModel):
    messages_this_minute: int
    tokens_today: int


class UsageResets(BaseModel):
    minute: float = Field(description="When the per-minute count restarts, Unix epoch seconds.")
    day: float = Field(description="Next 00:00 UTC, when the daily tokens restart.")


class UsageReport(BaseModel):
    plan: str = Field(description="The caller's plan (from the token's plan claim, or default).")
    day: str = Field(description="The UTC day counted, YYYY-MM-DD.")
    today: UsageToday
    limits: UsageLimits
    remaining: UsageRemaining
    resets_at: UsageResets


# --- POST /chat (its stream's events: shared.stream_events) -----------------------------


class ChatPartIn(RequestModel):
    text: str = Field(description="The text, or for media the uploaded object's reference.")
    type: str = Field("text", min_length=1, max_length=32)
    mimeType: str | None = Field(None, max_length=255)


class ChatMessageIn(RequestModel):
    role: Literal["user", "assistant"]
    parts: list[ChatPartIn] = Field(min_length=1, max_length=32)


class ChatRequest(RequestModel):
    chatId: str | None = None
    messages: list[ChatMessageIn] = Field(
        default_factory=list,
        description="The client's copy of the chat; only the last (the user's) is new. "
        "May be left out with `regenerate`.",
    )
    regenerate: bool = Field(
        False,
        description="Replace the chat's last answer with a new one (needs `chatId`; no new "
        "message is stored, `messages` is ignored).",
    )
    editMessageId: str | None = Field(
        None,
        description="A question of the chat (`chatId`) to replace with the last message of "
        "`messages`; everything after it is removed, then the new question is answered.",
    )
    resumable: bool = Field(
        False,
        description="Keep generating when the client disconnects, storing the answer as it "
        "grows: the stream can be picked up again, from any instance, with "
        "GET /api/chats/{chat_id}/messages/{answer_id}/stream, and stopped with "
        "POST .../stop. Without it, a client that leaves stops the model (the partial "
        "answer is kept, incomplete).",
    )

    def storable_part(self) -> dict[str, Any]:
        """The controls and the last message, at its index: the client's copy of the earlier
        messages is never stored, so their text may hold anything."""
        kept = self.model_dump(exclude={"messages"})
        if self.messages:
            last = len(self.messages) - 1
            kept["messages"] = {last: self.messages[last].model_dump()}
        return kept


class ResumeQuery(RequestModel):
    after: int | None = Field(
        None,
        ge=0,
        le=MAX_POSITION - 1,
        description="Resume after this event_id (the answer's length the client has); "
        "a Last-Event-ID header wins over it. Default 0: the whole answer.",
    )


class AnswerStopped(BaseModel):
    message_id: str
    stopping: bool = Field(
        description="true: the answer was being written and stops now (it is kept, "
        "incomplete, finish_reason stopped); false: it had already ended."
    )


# --- uploads -----------------------------------------------------------------------------


# A Content-Type the signed PUT can carry as is: visible ASCII, spaces and tabs inside, no
# control characters (the URL signs the value exactly as the client sends it).
HEADER_VALUE_PATTERN = r"^[ \t]*[!-~](?:[ \t!-~]*[!-~])?[ \t]*$"


def _bind_size_requires_size(schema: dict[str, Any]) -> None:
    schema["if"] = {"properties": {"bindSize": {"const": True}}, "required": ["bindSize"]}
    schema["then"] = {"properties": {"size": {"type": "integer"}}, "required": ["size"]}


class UploadUrlRequest(RequestModel):
    model_config = ConfigDict(json_schema_extra=_bind_size_requires_size)

    filename: str = Field(min_length=1, max_length=1024)
    contentType: str = Field(
        min_length=1,
        max_length=255,
        pattern=HEADER_VALUE_PATTERN,
        description="The file's type; the PUT must send exactly this as Content-Type.",
    )
    size: Annotated[int, Field(ge=0), BeforeValidator(_integral)] | None = Field(
        None,
        description="The file's size in bytes, if known: a pre-check only (413 file_too_large "
        "when over the limit); it changes nothing the PUT must carry unless bindSize is set.",
    )
    bindSize: bool = Field(
        False,
        description="Opt-in: also bind the URL to exactly `size` bytes (requires size). The "
        "answer's headers then include x-goog-content-length-range, which the PUT must send.",
    )

    @model_validator(mode="after")
    def _size_to_bind(self) -> UploadUrlRequest:
        if self.bindSize and self.size is None:
            raise ValueError("bindSize needs size: the number of bytes the PUT will send")
        return self


class UploadUrlResponse(BaseModel):
    url: str = Field(description="Signed URL to PUT the file to.")
    gcs_url: str = Field(description="What a chat message's media part refers to.")
    gs_uri: str = Field(description="The object's gs://bucket/object URI (also a valid reference).")
    object_name: str = Field(
        description="incoming/<user>/<upload_id>/<sanitised file name>: where the file is PUT. "
        "At its first use in a message it is checked (size, type, content) and moved to "
        "uploads/<user>/<upload_id>/<name>; references to either name keep working."
    )
    method: Literal["PUT"]
    headers: dict[str, str] = Field(
        description="Every header the PUT must carry, with exactly these values (all are "
        "signed): only Content-Type, plus x-goog-content-length-range when bindSize was set."
    )
    expires_at: float = Field(description="When the URL stops working, Unix epoch seconds.")
    upload_id: str
    max_bytes: int = Field(description="Largest file the URL accepts, in bytes.")


# --- Clerk webhook and the private functions' answers ------------------------------------------


class WebhookAck(BaseModel):
    message: str


class TaskAck(BaseModel):
    """summarize's answer to Cloud Tasks, which reads only the status (sent without the
    fields that are ``None``)."""

    message: str
    version: int | None = Field(default=None, description="The summary version stored.")
    title: str | None = Field(default=None, description="The title stored.")


class SweepReport(BaseModel):
    """storage_sweep's answer to Cloud Scheduler (which reads only the status)."""

    finished: int = Field(description="Queued objects deleted (or already gone).")
    due: int = Field(description="Rows still due when the sweep stopped (out of time).")
