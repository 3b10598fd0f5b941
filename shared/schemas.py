"""The wire contract as pydantic models: request bodies, response objects and SSE events.

``../shared/contract.md`` fixes the field names; these models are the single place the code
spells them, and ``dev/openapi.py`` builds the OpenAPI description from them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

MAX_TITLE_CHARS = 200
DEFAULT_TITLE = "New Chat"
MAX_POSITION = 2**31 - 1  # messages.position is a PostgreSQL integer


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


# --- errors ------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    detail: str = Field(description="Human-readable; the frontend shows it.")
    code: str = Field(description="Machine-readable, e.g. chat_not_found.")


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


class ChatListQuery(RequestModel):
    limit: int = Field(100, ge=1, le=200, description="Chats per page.")
    cursor: str | None = Field(None, description="X-Next-Cursor of the previous page.")


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


class CreatedChat(Chat):
    chat_id: str


class MessagePart(BaseModel):
    type: str = Field(description='"text", or a media kind such as "image", "video", "audio".')
    text: str | None = None
    mime_type: str | None = None
    media_url: str | None = Field(None, description="Short-lived signed GET URL for media.")


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


class DeletedChat(BaseModel):
    message: str


# --- POST /chat --------------------------------------------------------------------------


class ChatPartIn(RequestModel):
    text: str = Field(description="The text, or for media the uploaded object's reference.")
    type: str = Field("text", min_length=1, max_length=32)
    mimeType: str | None = Field(None, max_length=255)


class ChatMessageIn(RequestModel):
    role: Literal["user", "assistant"]
    parts: list[ChatPartIn] = Field(min_length=1, max_length=32)


class ChatRequest(RequestModel):
    chatId: str | None = None
    messages: list[ChatMessageIn] = Field(min_length=1)


class StartEvent(BaseModel):
    type: Literal["start"]
    chat_id: str
    message_id: str = Field(description="Id of the stored user message.")


class ChunkEvent(BaseModel):
    type: Literal["chunk"]
    content: str


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int


class DoneEvent(BaseModel):
    type: Literal["done"]
    message_id: str = Field(description="Id of the stored assistant message.")
    usage: Usage | None = None


class ErrorEvent(BaseModel):
    type: Literal["error"]
    detail: str
    message_id: str | None = Field(None, description="The partial answer kept, if any.")


# --- uploads -----------------------------------------------------------------------------


class UploadUrlRequest(RequestModel):
    filename: str = Field(min_length=1, max_length=1024)
    contentType: str = Field(min_length=1, max_length=255)
    size: Annotated[int, Field(ge=0), BeforeValidator(_integral)] | None = None


class UploadUrlResponse(BaseModel):
    url: str = Field(description="Signed URL to PUT the file to.")
    gcs_url: str = Field(description="What a chat message's media part refers to.")
    gs_uri: str = Field(description="The object's gs://bucket/object URI (also a valid reference).")
    object_name: str = Field(description="uploads/<user>/<upload_id>/<sanitised file name>.")
    method: Literal["PUT"]
    headers: dict[str, str] = Field(
        description="Every header the PUT must carry, with exactly these values (all are signed)."
    )
    expires_at: float = Field(description="When the URL stops working, Unix epoch seconds.")
    upload_id: str
    max_bytes: int = Field(description="Largest file the URL accepts, in bytes.")


# --- Clerk webhook ---------------------------------------------------------------------------


class WebhookAck(BaseModel):
    message: str
