"""The two framings of ``POST /chat``'s event stream: Server-Sent Events and NDJSON.

A turn produces one sequence of events (:data:`shared.schemas.StreamEvent`); a framing only
turns each into bytes on the wire:

* **SSE** (``text/event-stream``): ``id: <event_id>``, ``data: <event JSON>`` and a blank
  line per event; a heartbeat is a comment line (``: keep-alive``), which EventSource and
  SSE parsers skip.
* **NDJSON** (``application/x-ndjson``): one event JSON object per line. The existing Raven
  frontend reads this framing: it splits the body on ``\\n``, ``JSON.parse``s each non-empty
  line, appends the line's ``response`` and stops at a line that has ``error``. So a chunk
  also carries ``response`` (its ``content``), an error also ``error`` (its ``detail``), and a
  heartbeat is ``{"type":"heartbeat"}``, which that reader ignores.

Every event but a heartbeat carries ``event_id``, the answer's length (in code points) once
the event is applied: a client that lost the stream resumes after the last one it read
(``Last-Event-ID`` or ``?after=``, see :mod:`shared.answers`).

Which one: an ``Accept`` header that names ``text/event-stream`` or ``application/x-ndjson``
(the higher quality wins when it names both) chooses; anything else, including no header at
all as the existing frontend sends, gets the deployment's ``CHAT_STREAM_FORMAT``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
NDJSON_HEARTBEAT = HeartbeatEvent().model_dump_json(exclude_none=True) + "\n"


@dataclass(frozen=True)
class Framing:
    """How events are written to the response body."""

    name: FramingName
    media_type: str

    def encode(self, event: StreamEvent) -> str:
        """One event as it goes on the wire (``None`` fields are left out)."""
        if isinstance(event, ChunkEvent):
            return self.chunk(event.content, event.event_id)
        if self.name == "ndjson" and isinstance(event, ErrorEvent):
            event = NdjsonErrorEvent(**event.model_dump(), error=event.detail)
        return self._frame(event.model_dump_json(exclude_none=True), event.event_id)

    def chunk(self, text: str, event_id: int | None = None) -> str:
        """A chunk event carrying ``text``: the hot path, one model built per chunk."""
        if self.name == "sse":
            event_json = ChunkEvent(content=text, event_id=event_id).model_dump_json(
                exclude_none=True
            )
        else:
            event_json = NdjsonChunkEvent(
                content=text, response=text, event_id=event_id
            ).model_dump_json(exclude_none=True)
        return self._frame(event_json, event_id)

    def _frame(self, event_json: str, event_id: int | None = None) -> str:
        if self.name == "ndjson":
            return event_json + "\n"
        if event_id is None:
            return f"data: {event_json}\n\n"
        return f"id: {event_id}\ndata: {event_json}\n\n"

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
