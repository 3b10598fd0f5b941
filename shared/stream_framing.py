"""The two framings of ``POST /chat``'s event stream: Server-Sent Events and NDJSON.

A turn produces one sequence of events (:data:`shared.stream_events.StreamEvent`, plus the
answer's chunks and heartbeats as :mod:`shared.model_events` has them); a framing only
turns each into bytes on the wire (:meth:`Framing.write`):

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

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from flask import Response
from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header

from shared.model_events import AnswerChunk, Heartbeat
from shared.stream_events import (
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

# Proxies must pass events through as they come (nginx honours X-Accel-Buffering); the
# framing depends on Accept, so caches must key on it.
STREAM_HEADERS = {
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
    "Vary": "Accept",
}

# A JSON string as pydantic writes one (UTF-8 as is; only ", \ and controls escaped).
_json_string = json.JSONEncoder(ensure_ascii=False).encode
# Stand-ins cut out of a model's serialisation: where the text and the event id go.
_TEXT_MARK = "\x00text"
_ID_MARK = 987_654_321


def _chunk_pieces(model: type[ChunkEvent], with_id: bool) -> list[str]:
    """The model's serialisation of a chunk, cut where the text goes (``content`` and, in
    NDJSON, ``response``) and, with an id, where ``event_id`` goes: read off the model
    itself, so no field name is written here."""
    fields: dict[str, Any] = {
        name: _TEXT_MARK for name in ("content", "response") if name in model.model_fields
    }
    if with_id:
        fields["event_id"] = _ID_MARK
    dumped = model(**fields).model_dump_json(exclude_none=True)
    pieces = dumped.split(_json_string(_TEXT_MARK))
    if with_id:  # the id comes before the text: the first piece holds it
        before, after = pieces[0].split(str(_ID_MARK))
        return [before, after, *pieces[1:]]
    return pieces


# ['{"type":"chunk","content":', '}'], and with an id
# ['{"type":"chunk","event_id":', ',"content":', '}'] (NDJSON adds ',"response":')
_CHUNK_PIECES = {
    ("sse", False): _chunk_pieces(ChunkEvent, False),
    ("sse", True): _chunk_pieces(ChunkEvent, True),
    ("ndjson", False): _chunk_pieces(NdjsonChunkEvent, False),
    ("ndjson", True): _chunk_pieces(NdjsonChunkEvent, True),
}
NDJSON_HEARTBEAT = HeartbeatEvent().model_dump_json(exclude_none=True) + "\n"


@dataclass(frozen=True)
class Framing:
    """How events are written to the response body."""

    name: FramingName
    media_type: str

    def response(self, events: Iterable[AnswerChunk | Heartbeat | StreamEvent]) -> Response:
        """The events as a streamed response, each written as it comes.

        Not in Flask's request context (``stream_with_context``): nothing a stream runs
        reads it (the log lines' trace id is a context variable of the request's thread),
        and popping it ran between the last event and the body's end."""
        return Response(
            self.write(events),
            mimetype=self.media_type,
            headers=STREAM_HEADERS,
        )

    def write(self, events: Iterable[AnswerChunk | Heartbeat | StreamEvent]) -> Iterator[str]:
        """A turn's (or a followed answer's) events, each as it goes on the wire."""
        for event in events:
            if isinstance(event, AnswerChunk):
                yield self.chunk(event.text, event.end)
            elif isinstance(event, Heartbeat):
                yield self.heartbeat()
            else:
                yield self.encode(event)

    def encode(self, event: StreamEvent) -> str:
        """One event as it goes on the wire (``None`` fields are left out)."""
        if isinstance(event, ChunkEvent):
            return self.chunk(event.content, event.event_id)
        if self.name == "ndjson" and isinstance(event, ErrorEvent):
            event = NdjsonErrorEvent(**event.model_dump(), error=event.detail)
        return self._frame(event.model_dump_json(exclude_none=True), event.event_id)

    def chunk(self, text: str, event_id: int | None = None) -> str:
        """A chunk event carrying ``text`` (and its ``event_id``), written without a model.

        The hot path (every streamed piece of every answer): this is exactly
        ``ChunkEvent(content=text, event_id=event_id).model_dump_json(exclude_none=True)``
        (``NdjsonChunkEvent`` in NDJSON) at a quarter of its cost or less (bench/README.md);
        tests/test_stream_framing.py holds the two equal for every kind of text, and the
        pieces around the text come from the models themselves.
        """
        quoted = _json_string(text)
        if event_id is None:
            event_json = quoted.join(_CHUNK_PIECES[self.name, False])
        else:
            head, middle, *rest = _CHUNK_PIECES[self.name, True]
            event_json = f"{head}{event_id}{middle}{quoted}" + quoted.join(rest)
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
