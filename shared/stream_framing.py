"""The two framings of ``POST /chat``'s event stream: Server-Sent Events and NDJSON.

A turn produces one sequence of events (:data:`shared.schemas.StreamEvent`); a framing only
turns each into bytes on the wire:

* **SSE** (``text/event-stream``): ``data: <event JSON>`` and a blank line per event; a
  heartbeat is a comment line (``: keep-alive``), which EventSource and SSE parsers skip.
* **NDJSON** (``application/x-ndjson``): one event JSON object per line. The existing Raven
  frontend reads this framing: it splits the body on ``\\n``, ``JSON.parse``s each non-empty
  line, appends the line's ``response`` and stops at a line that has ``error``. So a chunk
  also carries ``response`` (its ``content``), an error also ``error`` (its ``detail``), and a
  heartbeat is ``{"type":"heartbeat"}``, which that reader ignores.

Which one: an ``Accept`` header that names ``text/event-stream`` or ``application/x-ndjson``
(the higher quality wins when it names both) chooses; anything else, including no header at
all as the existing frontend sends, gets the deployment's ``CHAT_STREAM_FORMAT``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header

from shared.schemas import (
    ChunkEvent,
    ErrorEvent,
    HeartbeatEvent,
    NdjsonChunkEvent,
    NdjsonErrorEvent,
    StreamEvent,
)

SSE_MEDIA_TYPE = "text/event-stream"
NDJSON_MEDIA_TYPE = "application/x-ndjson"
FramingName = Literal["sse", "ndjson"]

SSE_HEARTBEAT = ": keep-alive\n\n"

# A JSON string as pydantic writes one (UTF-8 as is; only ", \ and controls escaped).
_json_string = json.JSONEncoder(ensure_ascii=False).encode


def _chunk_pieces(model: type[ChunkEvent]) -> list[str]:
    """The model's serialisation of a chunk, cut where the text goes (``content`` and, in
    NDJSON, ``response``): read off the model itself, so no field name is written here."""
    marker = "\x00text"
    texts: dict[str, Any] = {
        name: marker for name in ("content", "response") if name in model.model_fields
    }
    return model(**texts).model_dump_json().split(_json_string(marker))


# ['{"type":"chunk","content":', '}'] and ['{"type":"chunk","content":', ',"response":', '}']
_SSE_CHUNK = _chunk_pieces(ChunkEvent)
_NDJSON_CHUNK = _chunk_pieces(NdjsonChunkEvent)
NDJSON_HEARTBEAT = HeartbeatEvent().model_dump_json() + "\n"


@dataclass(frozen=True)
class Framing:
    """How events are written to the response body."""

    name: FramingName
    media_type: str

    def encode(self, event: StreamEvent) -> str:
        """One event as it goes on the wire (``None`` fields are left out)."""
        if isinstance(event, ChunkEvent):
            return self.chunk(event.content)
        if self.name == "ndjson" and isinstance(event, ErrorEvent):
            event = NdjsonErrorEvent(**event.model_dump(), error=event.detail)
        return self._frame(event.model_dump_json(exclude_none=True))

    def chunk(self, text: str) -> str:
        """A chunk event carrying ``text``, written without building a model.

        The hot path (every streamed piece of every answer): this is exactly
        ``ChunkEvent(content=text).model_dump_json()`` (``NdjsonChunkEvent`` in NDJSON) at a
        quarter of its cost or less (bench/README.md); tests/test_stream_framing.py holds the
        two equal for every kind of text, and the pieces around the text come from the
        models themselves.
        """
        quoted = _json_string(text)
        if self.name == "sse":
            return f"data: {quoted.join(_SSE_CHUNK)}\n\n"
        return quoted.join(_NDJSON_CHUNK) + "\n"

    def _frame(self, event_json: str) -> str:
        return f"data: {event_json}\n\n" if self.name == "sse" else event_json + "\n"

    def heartbeat(self) -> str:
        """What keeps the connection alive while the model is silent."""
        return SSE_HEARTBEAT if self.name == "sse" else NDJSON_HEARTBEAT


SSE = Framing("sse", SSE_MEDIA_TYPE)
NDJSON = Framing("ndjson", NDJSON_MEDIA_TYPE)
FRAMINGS: dict[str, Framing] = {SSE.media_type: SSE, NDJSON.media_type: NDJSON}


def choose_framing(accept: str | None, default: FramingName) -> Framing:
    """The framing a request asked for in ``Accept``, else the deployment's default."""
    if accept:
        # Sorted by quality, highest first; wildcards (*/*, text/*) name neither framing.
        for media_type, quality in parse_accept_header(accept, MIMEAccept):
            framing = FRAMINGS.get(media_type.lower())
            if framing is not None and quality > 0:
                return framing
    return SSE if default == "sse" else NDJSON
