"""The events of ``POST /chat``'s stream (and of an answer's stream followed again) as
pydantic models: part of the wire contract (docs/api.md, "Sending a message"), beside the
bodies in :mod:`shared.schemas`.

A turn yields these (plus its text chunks and heartbeats as :mod:`shared.model_events` has
them); :mod:`shared.stream_framing` writes them as SSE or NDJSON, and ``dev/openapi.py``
describes both framings from them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.schemas import FinishReason


def _type_is_required(schema: dict[str, Any]) -> None:
    required = schema.setdefault("required", [])
    if "type" not in required:
        required.insert(0, "type")


class Event(BaseModel):
    """A stream event. ``type`` has a default for the code and is always sent on the wire;
    fields that are ``None`` are left out of it."""

    model_config = ConfigDict(json_schema_extra=_type_is_required)

    type: str
    event_id: int | None = Field(
        default=None,
        ge=0,
        description="The answer's length, in characters (Unicode code points), once this "
        "event is applied: what a client resumes after (SSE also sends it as `id:`, which "
        "EventSource returns as Last-Event-ID).",
    )


class StartEvent(Event):
    type: Literal["start"] = "start"
    chat_id: str
    message_id: str = Field(description="Id of the stored user message.")
    answer_id: str | None = Field(
        default=None,
        description="Id of the assistant message being written: where the stream can be "
        "resumed (GET /api/chats/{chat_id}/messages/{answer_id}/stream) or stopped.",
    )


class ChunkEvent(Event):
    type: Literal["chunk"] = "chunk"
    content: str = Field(description="The next piece of the answer's text.")


class Usage(BaseModel):
    input_tokens: int
    output_tokens: int
    total_tokens: int


class DoneEvent(Event):
    type: Literal["done"] = "done"
    message_id: str = Field(description="Id of the stored assistant message.")
    usage: Usage | None = None
    finish_reason: FinishReason | None = Field(
        None,
        description="Why the answer ended: stop (complete), max_tokens (cut at the length "
        "limit: stored incomplete), stopped (the user stopped it: stored incomplete), "
        "other. safety and recitation end with an error event.",
    )


class ErrorEvent(Event):
    type: Literal["error"] = "error"
    detail: str = Field(description="Human-readable; safe to show the user.")
    code: str = Field(
        description="Machine-readable: model_busy, model_unavailable, model_refused, "
        "blocked (the model's safety or recitation checks withheld the answer), "
        "answer_not_saved, server_restarting (the instance is shutting down: the partial "
        "answer is kept; retry), answer_abandoned (the instance writing it stopped without "
        "a word)."
    )
    message_id: str | None = Field(None, description="The partial answer kept, if any.")
    retryable: bool | None = Field(
        default=None, description="true when sending the message again (or regenerating) may work."
    )


StreamEvent = StartEvent | ChunkEvent | DoneEvent | ErrorEvent


# The NDJSON framing (``application/x-ndjson``) sends the same events, one JSON object per
# line, plus the two fields the existing frontend's reader looks for: it appends each
# line's ``response`` to the answer and stops at a line that has ``error``.


class NdjsonChunkEvent(ChunkEvent):
    response: str = Field(description="The same text as `content`, for NDJSON readers.")


class NdjsonErrorEvent(ErrorEvent):
    error: str = Field(description="The same text as `detail`, for NDJSON readers.")


class HeartbeatEvent(Event):
    """NDJSON only: a line sent while the model is silent (SSE sends a comment line)."""

    type: Literal["heartbeat"] = "heartbeat"
