"""A local stand-in for the Gemini REST API, driven by the real google-genai SDK.

The stand-in is a small threaded HTTP server that speaks the wire protocol the google-genai
SDK (3.4.0) uses, so the local stack and the tests exercise the real SDK end to end: request
building, SSE parsing, response models and error classes. Point a client at it with
``HttpOptions(base_url=...)``.

Protocol served
---------------
Both URL families, any API version (``v1``, ``v1beta``, ``v1beta1``, ...)::

    API-key mode:  POST /{version}/models/{model}:{method}
    Vertex mode:   POST /{version}/projects/{p}/locations/{l}/publishers/google/models/
                        {model}:{method}

with ``method`` one of:

* ``streamGenerateContent?alt=sse`` -- a ``text/event-stream`` response sent with HTTP/1.1
  chunked transfer encoding, one ``data: <GenerateContentResponse JSON>\\r\\n\\r\\n`` event per
  chunk, written and flushed as it is produced. Only the last event carries
  ``finishReason: "STOP"`` and ``usageMetadata``. Without ``alt=sse`` the same responses
  come back as one JSON array, as the real API does.
* ``generateContent`` -- one GenerateContentResponse with the whole reply and its usage.
* ``countTokens`` -- ``{"totalTokens": n}``.

Errors use Google's JSON shape ``{"error": {"code": 429, "message": "...", "status":
"RESOURCE_EXHAUSTED"}}``; the SDK turns it into ``google.genai.errors.ClientError`` (4xx) or
``ServerError`` (5xx), both ``APIError`` subclasses with ``.code``, ``.status`` and
``.message``.

Refused as Google's front refuses them (before any script or record): a request without
``Host`` (400), without ``Content-Length`` (411), whose ``Content-Type`` is not
``application/json`` (400); in API-key mode one without a key (``x-goog-api-key`` or
``?key=``: 403 PERMISSION_DENIED) or, when the stand-in was given its key (``api_key=``,
``--api-key``), with another one (400 "API key not valid"); in Vertex mode one without an
``Authorization: Bearer`` token (401 UNAUTHENTICATED).

Facts about google-genai 3.4.0 worth knowing (checked against the installed SDK):

* API-key mode defaults to API version ``v1`` (``/v1/models/...``), not ``v1beta``; Vertex
  mode to ``v1beta1``. ``HttpOptions(api_version=...)`` changes it; the stand-in takes any.
* ``Part.from_uri`` sends ``fileData`` with *snake_case* inner keys (``{"file_uri": ...,
  "mime_type": ...}``), and ``inlineData`` likewise (``mime_type``) with ``data`` in
  *URL-safe* base64; the stand-in, like the real API, accepts both spellings.
* The SDK never retries unless ``HttpOptions(retry_options=...)`` is set, so a scripted
  ``http_error`` surfaces on the first call.
* ``HttpOptions(timeout=...)`` is in milliseconds; the SDK also sends it to the server as
  ``X-Server-Timeout`` (whole seconds). A timeout surfaces as the transport's own exception
  (``httpx2.ReadTimeout`` for the sync client, ``TimeoutError`` for ``client.aio`` over
  aiohttp) -- not as an ``APIError``.
* A stream cut off mid-way raises the transport's exception from the SDK's chunk iterator
  after the chunks already received (``httpx2.RemoteProtocolError`` for the sync client,
  ``aiohttp.ClientPayloadError`` for ``client.aio``), again not an ``APIError``.
* An ``{"error": ...}`` event *inside* an SSE stream is raised by the SDK as an ``APIError``
  (see the ``stream_error`` behaviour).
* ``generate_content_stream`` has "automatic continuation" (resuming a broken stream from a
  ``continuationToken``); the stand-in never sends one, so a broken stream is never resumed
  and each SDK call is exactly one recorded request.
* ``Client.__del__`` closes its HTTP client, and the stream generator only sends on first
  iteration: ``genai.Client(...).models.generate_content_stream(...)`` on a temporary client
  fails with ``RuntimeError: Cannot send a request, as the client has been closed``. Keep a
  reference to the client for as long as its streams are iterated.

Vertex mode without real credentials
------------------------------------
The SDK sends ``Authorization: Bearer <credentials.token>`` and only calls
``credentials.refresh()`` when the token is missing or expired, so credentials that already
hold a token and never expire need no network::

    import google.oauth2.credentials
    from google import genai
    from google.genai import types

    client = genai.Client(
        vertexai=True,
        project="raven-test",
        location="us-central1",
        credentials=google.oauth2.credentials.Credentials(token="standin-token"),
        http_options=types.HttpOptions(base_url=base_url),
    )

``google.auth.credentials.AnonymousCredentials()`` does *not* work: its token is ``None``,
so the SDK tries to refresh it and google-auth raises ``InvalidOperation``.

Default answers
---------------
Unless scripted, generation calls answer deterministically with what the model received::

    Stand-in reply: 3 turns (user, model, user); summary: yes; media: image/png gs://b/o;
    system: "You are Raven, a helpful ..."; last: "<first 40 chars of the last user text>"

``summary`` is ``yes`` when the system instruction contains ``Summary of the earlier
conversation``; ``media`` lists every ``fileData`` part (mime type and URI) and every
``inlineData`` part (mime type and decoded size). The stream splits the reply by words into
4 to 8 chunks. ``promptTokenCount`` is the request's text length (contents and system
instruction) divided by 4, rounded up; ``candidatesTokenCount`` likewise for the reply.

Scripting API (control endpoints under ``/__standin/``)
-------------------------------------------------------
* ``POST /__standin/script`` queues one behaviour (JSON object; all keys optional):

  - ``reply`` (str): the exact reply text (streamed split by words).
  - ``chunks`` (list[str]): the exact chunk texts of the stream.
  - ``delay_per_chunk`` (float s): sleep before each chunk (``generateContent`` sleeps the
    sum once before answering).
  - ``fail_after_chunks`` (int): send N chunks, then close the connection without
    finishing the chunked HTTP body (for ``generateContent`` and ``countTokens``: close
    without any response).
  - ``http_error`` ({"status": 503, "message": "...", "status_name"?, "details"?}): answer
    with that HTTP error in Google's JSON shape before any chunk.
  - ``stream_error`` ({"after_chunks": N, "status": 500, "message": "..."}): after N chunks
    send an ``{"error": ...}`` SSE event and end the stream cleanly.
  - ``hang`` (float s): sleep before sending anything (then behave as scripted).
  - ``usage`` (dict): usageMetadata fields overriding the computed ones (``totalTokenCount``
    is recomputed unless given); ``countTokens`` answers ``totalTokens`` from it.
  - ``times`` (int, default 1): how many requests the script serves.
  - ``match`` (str): apply only to a request whose last user text contains it.
  - ``finish_reason`` (str): the last chunk's ``finishReason`` (default ``STOP``), e.g.
    ``MAX_TOKENS``, ``SAFETY``, ``RECITATION``.
  - ``block_reason`` (str): refuse the prompt as Gemini does: one response with
    ``promptFeedback.blockReason`` (e.g. ``SAFETY``) and no candidate.
  - ``responses`` (list of objects): raw GenerateContentResponse JSON objects streamed as
    they are, one SSE event each (several parts, ``thought`` parts, no candidates, a
    usage-only last chunk...); streams only, and not with ``reply``, ``chunks`` or
    ``block_reason``.
  - ``method`` (str): restrict to one RPC. Scripts without ``method`` apply to
    ``streamGenerateContent`` and ``generateContent`` only, never to ``countTokens``, so a
    token count cannot consume a script meant for the model call.

  To fail N times then succeed, queue ``{"http_error": {"status": 503}, "times": N}`` (with
  a ``match``): the N requests after it fail, the next gets the default answer (or the next
  script queued for it).

  A request takes the oldest matching keyed script first and otherwise the oldest script
  without a ``match`` key, so concurrent tests that key their scripts never steal each
  other's. Answers ``{"id": n, "pending": k}``.
* ``GET /__standin/scripts`` lists the pending scripts.
* ``GET /__standin/requests[?match=substr]`` lists the recorded model requests, oldest
  first (the last 1000): ``path``, ``query``, ``method`` (the RPC), ``model``, ``mode``
  (``api-key`` or ``vertex``), ``api_version``, ``project``, ``location``, ``body`` (parsed
  JSON), ``headers`` (the ``x-goog-api-key`` value and the ``Authorization`` credential
  redacted, e.g. ``Bearer <redacted>``), ``last_user_text``, ``script_id`` and ``outcome``
  (``pending``, ``ok``, ``http_error``, ``stream_error``, ``aborted`` or ``client_gone``).
  The outcome is recorded before the answer's last byte leaves, so a client that has seen
  the end of its answer finds it settled; ``client_gone`` (a hang-up noticed while
  sleeping or writing) is recorded shortly after the hang-up.
* ``POST /__standin/reset`` drops the scripts and the records.
* ``GET /__standin/healthz`` answers 200 ``{"ok": true, ...}`` with stream counters.

:class:`StandinControl` wraps these for Python tests.

Running
-------
``python -m dev.gemini_standin --port 8090 [--host 127.0.0.1]`` runs it in the foreground;
``start_standin(port=0)`` starts it on a background thread and returns the server and its
base URL (the real port) for tests.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import itertools
import json
import logging
import math
import re
import select
import socket
import socketserver
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

logger = logging.getLogger("gemini_standin")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8090
CONTROL_PREFIX = "/__standin"
MAX_RECORDS = 1000
SUMMARY_MARKER = "Summary of the earlier conversation"

GENERATION_METHODS = frozenset({"streamGenerateContent", "generateContent"})
MODEL_METHODS = GENERATION_METHODS | {"countTokens"}

_API_KEY_PATH = re.compile(
    r"^/(?P<version>v\d[a-z0-9]*)/(?:models|tunedModels)/(?P<model>[^/:]+):(?P<method>\w+)$"
)
_VERTEX_PATH = re.compile(
    r"^/(?P<version>v\d[a-z0-9]*)/"
    r"(?:projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/)?"
    r"publishers/[^/]+/models/(?P<model>[^/:]+):(?P<method>\w+)$"
)

# google.rpc.Code names for the HTTP statuses Google's APIs answer with.
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    411: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

_REDACTED_HEADERS = frozenset({"x-goog-api-key", "authorization"})

_SCRIPT_KEYS = frozenset(
    {
        "reply",
        "chunks",
        "delay_per_chunk",
        "fail_after_chunks",
        "http_error",
        "stream_error",
        "hang",
        "usage",
        "times",
        "match",
        "method",
        "stamp_chunks",
        "finish_reason",
        "block_reason",
        "responses",
    }
)

# Gemini's FinishReason and BlockedReason values a script may name.
FINISH_REASONS = frozenset(
    {
        "STOP",
        "MAX_TOKENS",
        "SAFETY",
        "RECITATION",
        "LANGUAGE",
        "OTHER",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "MALFORMED_FUNCTION_CALL",
        "IMAGE_SAFETY",
    }
)
BLOCK_REASONS = frozenset({"SAFETY", "OTHER", "BLOCKLIST", "PROHIBITED_CONTENT", "IMAGE_SAFETY"})


class ScriptError(ValueError):
    """A scripted behaviour is malformed."""


class _ClientGone(Exception):
    """The client closed its connection, or the server is stopping."""


@dataclass(eq=False)
class Script:
    """One scripted behaviour waiting in the queue.

    Attributes:
        id: Sequence number assigned by the server.
        reply: Exact reply text, streamed split by words.
        chunks: Exact chunk texts of the stream.
        delay_per_chunk: Seconds to sleep before each chunk.
        fail_after_chunks: Send this many chunks, then abort the connection.
        http_error: ``{"status", "message", "status_name"?, "details"?}`` to answer with.
        stream_error: ``{"after_chunks", "status", "message"}`` sent as an SSE error event.
        hang: Seconds to sleep before sending anything.
        usage: usageMetadata fields overriding the computed ones.
        times: Requests the script still serves.
        match: Substring the last user text must contain, or None for any request.
        method: RPC the script is restricted to, or None for both generation RPCs.
        stamp_chunks: Replace each streamed chunk's text with the time it is sent
            (``time.time()``, 6 decimals, then a space): benchmarks measure the latency
            each chunk gains on its way through the backend.
        finish_reason: The last chunk's ``finishReason`` (default ``STOP``).
        block_reason: Refuse the prompt: one response with ``promptFeedback.blockReason``
            and no candidate, as Gemini answers a blocked input.
        responses: Raw GenerateContentResponse objects to send as they are, one per
            chunk (shapes the other keys cannot make: several parts, thought parts, no
            candidates, a usage-only chunk).
    """

    id: int
    reply: str | None = None
    chunks: list[str] | None = None
    delay_per_chunk: float = 0.0
    fail_after_chunks: int | None = None
    http_error: dict[str, Any] | None = None
    stream_error: dict[str, Any] | None = None
    hang: float = 0.0
    usage: dict[str, int] | None = None
    times: int = 1
    match: str | None = None
    method: str | None = None
    stamp_chunks: bool = False
    finish_reason: str = "STOP"
    block_reason: str | None = None
    responses: list[dict[str, Any]] | None = None

    def applies_to(self, method: str) -> bool:
        """Whether the script may serve a call of ``method``."""
        if self.method is not None:
            return self.method == method
        return method in GENERATION_METHODS


def _number(value: Any, name: str) -> float:
    """Validates a non-negative number from a script."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ScriptError(f"{name} must be a non-negative number")
    return float(value)


def _count(value: Any, name: str) -> int:
    """Validates a non-negative integer from a script."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ScriptError(f"{name} must be a non-negative integer")
    return value


def _error_spec(value: Any, name: str, *, with_after: bool = False) -> dict[str, Any]:
    """Validates an ``http_error`` or ``stream_error`` object."""
    if not isinstance(value, dict):
        raise ScriptError(f"{name} must be an object")
    status = value.get("status")
    if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
        raise ScriptError(f"{name}.status must be an HTTP error status (400-599)")
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    spec: dict[str, Any] = {
        "status": status,
        "message": str(value.get("message", phrase)),
        "status_name": str(value.get("status_name", _STATUS_NAMES.get(status, "UNKNOWN"))),
    }
    if "details" in value:
        spec["details"] = value["details"]
    if with_after:
        spec["after_chunks"] = _count(value.get("after_chunks", 0), f"{name}.after_chunks")
    return spec


def parse_script(payload: Any, script_id: int) -> Script:
    """Builds a :class:`Script` from a ``POST /__standin/script`` body.

    Args:
        payload: The decoded JSON body.
        script_id: The id to give the script.

    Returns:
        The validated script.

    Raises:
        ScriptError: If the body is not an object, has unknown keys or bad values.
    """
    if not isinstance(payload, dict):
        raise ScriptError("a script must be a JSON object")
    unknown = sorted(set(payload) - _SCRIPT_KEYS)
    if unknown:
        raise ScriptError(f"unknown script keys: {', '.join(unknown)}")
    script = Script(id=script_id)
    if "reply" in payload and "chunks" in payload:
        raise ScriptError("reply and chunks are mutually exclusive")
    if "reply" in payload:
        if not isinstance(payload["reply"], str):
            raise ScriptError("reply must be a string")
        script.reply = payload["reply"]
    if "chunks" in payload:
        chunks = payload["chunks"]
        if not isinstance(chunks, list) or not all(isinstance(c, str) for c in chunks):
            raise ScriptError("chunks must be a list of strings")
        script.chunks = list(chunks)
    if "delay_per_chunk" in payload:
        script.delay_per_chunk = _number(payload["delay_per_chunk"], "delay_per_chunk")
    if "hang" in payload:
        script.hang = _number(payload["hang"], "hang")
    if "fail_after_chunks" in payload:
        script.fail_after_chunks = _count(payload["fail_after_chunks"], "fail_after_chunks")
    if "http_error" in payload:
        script.http_error = _error_spec(payload["http_error"], "http_error")
    if "stream_error" in payload:
        script.stream_error = _error_spec(payload["stream_error"], "stream_error", with_after=True)
    if "usage" in payload:
        usage = payload["usage"]
        if not isinstance(usage, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in usage.values()
        ):
            raise ScriptError("usage must be an object of integers")
        script.usage = dict(usage)
    if "times" in payload:
        script.times = _count(payload["times"], "times")
        if script.times < 1:
            raise ScriptError("times must be at least 1")
    if "match" in payload:
        if not isinstance(payload["match"], str) or not payload["match"]:
            raise ScriptError("match must be a non-empty string")
        script.match = payload["match"]
    if "stamp_chunks" in payload:
        if not isinstance(payload["stamp_chunks"], bool):
            raise ScriptError("stamp_chunks must be true or false")
        script.stamp_chunks = payload["stamp_chunks"]
    if "finish_reason" in payload:
        if payload["finish_reason"] not in FINISH_REASONS:
            raise ScriptError(f"finish_reason must be one of {', '.join(sorted(FINISH_REASONS))}")
        script.finish_reason = payload["finish_reason"]
    if "block_reason" in payload:
        if payload["block_reason"] not in BLOCK_REASONS:
            raise ScriptError(f"block_reason must be one of {', '.join(sorted(BLOCK_REASONS))}")
        script.block_reason = payload["block_reason"]
    if "responses" in payload:
        responses = payload["responses"]
        if not isinstance(responses, list) or not all(isinstance(r, dict) for r in responses):
            raise ScriptError("responses must be a list of objects")
        if not responses:
            raise ScriptError("responses must not be empty")
        if {"reply", "chunks", "block_reason"} & set(payload):
            raise ScriptError("responses excludes reply, chunks and block_reason")
        script.responses = [dict(r) for r in responses]
    if "method" in payload:
        if payload["method"] not in MODEL_METHODS:
            raise ScriptError(f"method must be one of {', '.join(sorted(MODEL_METHODS))}")
        script.method = payload["method"]
    return script


@dataclass
class RequestView:
    """What a model request carried, as the stand-in reports it.

    Attributes:
        roles: The role of each content, in order.
        last_user_text: Text parts of the last ``user`` content, joined by newlines.
        system_text: Text parts of the system instruction, joined by newlines.
        media: One description per ``fileData`` or ``inlineData`` part.
        text_chars: Characters of text in the contents and the system instruction.
    """

    roles: list[str] = field(default_factory=list)
    last_user_text: str = ""
    system_text: str = ""
    media: list[str] = field(default_factory=list)
    text_chars: int = 0

    @property
    def has_summary(self) -> bool:
        """Whether the system instruction carries the rolling summary."""
        return SUMMARY_MARKER in self.system_text

    @property
    def prompt_tokens(self) -> int:
        """The estimated prompt token count: characters / 4, rounded up."""
        return math.ceil(self.text_chars / 4)


def _field(obj: dict[str, Any], camel: str, snake: str) -> Any:
    """Reads a protobuf-JSON field under either spelling, as Google's servers accept."""
    return obj.get(camel, obj.get(snake))


def _texts(content: Any) -> list[str]:
    """The text parts of one Content object."""
    if not isinstance(content, dict):
        return []
    parts = content.get("parts") or []
    return [p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)]


def _decoded_size(data: Any) -> int:
    """Bytes in a protobuf-JSON ``bytes`` field: standard or URL-safe base64, padded or not.

    The SDK sends ``inlineData.data`` URL-safe (``_9j_`` rather than ``/9j/``).
    """
    if not isinstance(data, str):
        return 0
    text = data.strip().replace("-", "+").replace("_", "/")
    try:
        return len(base64.b64decode(text + "=" * (-len(text) % 4), validate=True))
    except (binascii.Error, ValueError):
        return 0


def analyze_request(body: dict[str, Any]) -> RequestView:
    """Extracts the turns, system instruction, media and text size of a request body.

    Args:
        body: A GenerateContentRequest or CountTokensRequest as JSON.

    Returns:
        The summary of what the model would have received.
    """
    nested = _field(body, "generateContentRequest", "generate_content_request")
    if isinstance(nested, dict) and "contents" not in body:
        body = nested
    view = RequestView()
    system = _field(body, "systemInstruction", "system_instruction")
    system_texts = _texts(system)
    view.system_text = "\n".join(system_texts)
    view.text_chars = sum(len(t) for t in system_texts)
    contents = body.get("contents") or []
    for content in contents if isinstance(contents, list) else []:
        if not isinstance(content, dict):
            continue
        role = str(content.get("role") or "user")
        view.roles.append(role)
        texts = _texts(content)
        view.text_chars += sum(len(t) for t in texts)
        if role == "user":
            view.last_user_text = "\n".join(texts)
        for part in content.get("parts") or []:
            if not isinstance(part, dict):
                continue
            file_data = _field(part, "fileData", "file_data")
            if isinstance(file_data, dict):
                mime = _field(file_data, "mimeType", "mime_type") or "?"
                uri = _field(file_data, "fileUri", "file_uri") or "?"
                view.media.append(f"{mime} {uri}")
            inline = _field(part, "inlineData", "inline_data")
            if isinstance(inline, dict):
                mime = _field(inline, "mimeType", "mime_type") or "?"
                view.media.append(f"{mime} inline {_decoded_size(inline.get('data'))} B")
    return view


def default_reply(view: RequestView) -> str:
    """The deterministic default answer describing what the model received.

    Args:
        view: The analysed request.

    Returns:
        E.g. ``Stand-in reply: 1 turn (user); summary: no; media: none; system: none;
        last: "Hello"``.
    """
    turns = len(view.roles)
    words = view.system_text.split()
    if words:
        snippet = " ".join(words[:5]) + (" ..." if len(words) > 5 else "")
        system = f'"{snippet}"'
    else:
        system = "none"
    last = " ".join(view.last_user_text.split())[:40]
    return (
        f"Stand-in reply: {turns} turn{'' if turns == 1 else 's'} ({', '.join(view.roles)}); "
        f"summary: {'yes' if view.has_summary else 'no'}; "
        f"media: {', '.join(view.media) if view.media else 'none'}; "
        f'system: {system}; last: "{last}"'
    )


def split_into_chunks(text: str) -> list[str]:
    """Splits a reply by words into 4 to 8 chunks (fewer if it has fewer words).

    The chunks concatenate back to exactly ``text``.

    Args:
        text: The reply.

    Returns:
        The chunk texts; ``[text]`` for a text without words.
    """
    pieces = re.findall(r"\s*\S+", text)
    if not pieces:
        return [text]
    pieces[-1] += text[len("".join(pieces)) :]
    count = min(len(pieces), max(4, min(8, math.ceil(len(pieces) / 3))))
    size, extra = divmod(len(pieces), count)
    chunks: list[str] = []
    start = 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        chunks.append("".join(pieces[start:end]))
        start = end
    return chunks


def error_body(
    status: int, message: str, status_name: str | None = None, details: Any = None
) -> dict[str, Any]:
    """Google's JSON error shape.

    Args:
        status: The HTTP status code.
        message: The human-readable message.
        status_name: The google.rpc.Code name; derived from ``status`` when omitted.
        details: Optional ``details`` list.

    Returns:
        ``{"error": {"code", "message", "status"[, "details"]}}``.
    """
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": status_name or _STATUS_NAMES.get(status, "UNKNOWN"),
    }
    if details is not None:
        error["details"] = details
    return {"error": error}


class StandinServer(ThreadingHTTPServer):
    """The stand-in's HTTP server, holding the script queue and the request records.

    Attributes:
        stopping: Set when the server stops; sleeping handlers wake up and leave.
        unexpected_errors: Handler exceptions other than a client going away.
    """

    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        *,
        max_records: int = MAX_RECORDS,
        default_delay_per_chunk: float = 0.0,
        api_key: str | None = None,
    ) -> None:
        """Binds the server.

        Args:
            address: ``(host, port)``; port 0 picks a free port.
            max_records: How many requests to remember.
            default_delay_per_chunk: Seconds before each chunk of an unscripted stream, so a
                person watching the local stack sees the answer stream in (0 for tests).
            api_key: The one API key accepted in API-key mode (any non-empty key if None).
        """
        super().__init__(address, _Handler)
        self.default_delay_per_chunk = default_delay_per_chunk
        self.api_key = api_key
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.scripts: list[Script] = []
        self.records: deque[dict[str, Any]] = deque(maxlen=max_records)
        self.active_streams = 0
        self.peak_streams = 0
        self.unexpected_errors = 0
        self._ids = itertools.count(1)

    def server_bind(self) -> None:
        """Binds without ``HTTPServer``'s reverse-DNS lookup, which can stall offline."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = host.decode() if isinstance(host, bytes) else str(host)
        self.server_port = int(port)

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the listening socket."""
        host, port = self.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        return f"http://{host}:{port}"

    def add_script(self, script: Script) -> int:
        """Queues a script and returns how many are pending."""
        with self.lock:
            self.scripts.append(script)
            return len(self.scripts)

    def next_id(self) -> int:
        """A fresh id for a script or a record."""
        with self.lock:
            return next(self._ids)

    def take_script(self, method: str, last_user_text: str) -> Script | None:
        """Consumes one use of the script that should serve a request.

        Args:
            method: The RPC called.
            last_user_text: The request's last user text.

        Returns:
            The oldest applicable keyed script whose ``match`` the text contains, else the
            oldest applicable script without ``match``, else None.
        """
        with self.lock:
            eligible = [s for s in self.scripts if s.applies_to(method)]
            chosen = next(
                (s for s in eligible if s.match is not None and s.match in last_user_text),
                None,
            ) or next((s for s in eligible if s.match is None), None)
            if chosen is not None:
                chosen.times -= 1
                if chosen.times <= 0:
                    self.scripts.remove(chosen)
            return chosen

    def record(self, entry: dict[str, Any]) -> None:
        """Remembers a request (the oldest fall out past the bound)."""
        with self.lock:
            self.records.append(entry)

    def set_outcome(self, entry: dict[str, Any], outcome: str) -> None:
        """Updates a recorded request's outcome."""
        with self.lock:
            entry["outcome"] = outcome
            entry["settled_at"] = time.time()

    def snapshot(self, match: str | None = None) -> list[dict[str, Any]]:
        """A JSON-safe copy of the records, oldest first, optionally filtered.

        Args:
            match: Keep only records whose last user text contains it.
        """
        with self.lock:
            records = [r for r in self.records if match is None or match in r["last_user_text"]]
            return json.loads(json.dumps(records))

    def reset(self) -> None:
        """Drops every script and record."""
        with self.lock:
            self.scripts.clear()
            self.records.clear()
            self.peak_streams = self.active_streams

    def stream_started(self) -> None:
        """Counts a stream in."""
        with self.lock:
            self.active_streams += 1
            self.peak_streams = max(self.peak_streams, self.active_streams)

    def stream_ended(self) -> None:
        """Counts a stream out."""
        with self.lock:
            self.active_streams -= 1

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Logs handler failures quietly when the client merely went away."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, _ClientGone)):
            logger.debug("client %s went away: %r", client_address, exc)
            return
        with self.lock:
            self.unexpected_errors += 1
        logger.exception("stand-in handler failed for %s", client_address)

    def stop(self) -> None:
        """Stops serving, wakes sleeping handlers and closes the socket."""
        self.stopping.set()
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    """Serves one connection: control endpoints and the Gemini model RPCs."""

    protocol_version = "HTTP/1.1"
    server_version = "GeminiStandin/1.0"
    timeout = 300  # idle keep-alive connections are dropped after this many seconds
    server: StandinServer
    _entry: dict[str, Any] | None = None  # the record of the request being answered
    _streaming = False  # whether that request is counted in active_streams

    def setup(self) -> None:
        """Disables Nagle so each SSE event leaves at once."""
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        """Routes the access log to the module logger at debug level."""
        logger.debug("%s - %s", self.address_string(), format % args)

    # -- plumbing -----------------------------------------------------------------------

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send_json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _send_error_json(
        self, status: int, message: str, status_name: str | None = None, details: Any = None
    ) -> None:
        self._send_json(status, error_body(status, message, status_name, details))

    def _write_chunk(self, data: bytes) -> None:
        """Writes one HTTP/1.1 chunk and flushes it."""
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _abort(self) -> None:
        """Closes the connection at once, leaving the response unfinished."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _sleep(self, seconds: float) -> None:
        """Sleeps, but leaves early if the client hangs up or the server stops.

        Raises:
            _ClientGone: If the peer closed the connection or the server is stopping.
        """
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            if self.server.stopping.is_set():
                raise _ClientGone("server stopping")
            # A hang-up makes the socket readable at once; the timeout only bounds how long
            # a stop() may go unnoticed.
            readable, _, _ = select.select([self.connection], [], [], min(remaining, 0.25))
            if not readable:
                continue
            try:
                peeked = self.connection.recv(1, socket.MSG_PEEK)
            except OSError as exc:
                raise _ClientGone(str(exc)) from exc
            if not peeked:
                raise _ClientGone("peer closed the connection")
            time.sleep(min(remaining, 0.05))  # pipelined bytes: nothing to watch for

    # -- routing ------------------------------------------------------------------------

    def do_GET(self) -> None:
        """Serves the read-only control endpoints."""
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        if url.path == f"{CONTROL_PREFIX}/healthz":
            with self.server.lock:
                stats = {
                    "active_streams": self.server.active_streams,
                    "peak_streams": self.server.peak_streams,
                    "pending_scripts": len(self.server.scripts),
                    "recorded_requests": len(self.server.records),
                    "unexpected_errors": self.server.unexpected_errors,
                }
            self._send_json(200, {"ok": True, **stats})
        elif url.path == f"{CONTROL_PREFIX}/requests":
            self._send_json(200, self.server.snapshot(query.get("match", [None])[0]))
        elif url.path == f"{CONTROL_PREFIX}/scripts":
            with self.server.lock:
                pending = [asdict(s) for s in self.server.scripts]
            self._send_json(200, pending)
        else:
            self._send_error_json(404, f"Unknown path {url.path}")

    def do_POST(self) -> None:
        """Serves the control endpoints that change state and the model RPCs."""
        url = urllib.parse.urlsplit(self.path)
        raw = self._read_body()
        if url.path.startswith(CONTROL_PREFIX + "/"):
            self._control_post(url.path, raw)
            return
        route = self._route(url.path)
        if route is None:
            self._send_error_json(404, f"Unknown path {url.path}", "NOT_FOUND")
            return
        refusal = self._refusal(route, url.query)
        if refusal is not None:
            self.close_connection = True
            self._send_error_json(*refusal)
            return
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise TypeError("not an object")
        except (ValueError, TypeError):
            self._send_error_json(400, "Invalid JSON payload received.")
            return
        try:
            self._model_call(route, url.query, body)
        except _ClientGone:
            self.close_connection = True

    def _control_post(self, path: str, raw: bytes) -> None:
        if path == f"{CONTROL_PREFIX}/script":
            try:
                script = parse_script(json.loads(raw or b"null"), self.server.next_id())
            except ValueError as exc:  # ScriptError and JSONDecodeError
                self._send_error_json(400, f"Bad script: {exc}")
                return
            pending = self.server.add_script(script)
            self._send_json(200, {"id": script.id, "pending": pending})
        elif path == f"{CONTROL_PREFIX}/reset":
            self.server.reset()
            self._send_json(200, {"ok": True})
        else:
            self._send_error_json(404, f"Unknown path {path}")

    def _refusal(self, route: dict[str, Any], query: str) -> tuple[int, str] | None:
        """What Google's front refuses before the model sees a request, as it answers it.

        HTTP/1.1 requires ``Host`` (RFC 9112: 400 without it); a body needs its length
        (411); the API reads JSON (``Content-Type: application/json``); the Gemini API
        needs an API key (``x-goog-api-key`` or ``?key=``: 403 without one, 400
        ``API_KEY_INVALID`` for a wrong one when the stand-in was given the right one),
        Vertex AI an OAuth bearer token (401).
        """
        headers = self.headers
        if not headers.get("Host"):
            return 400, "Missing Host header."
        if headers.get("Content-Length") is None:
            return 411, "Length Required: POST requests require a Content-length header."
        content_type = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            return 400, f"Invalid Content-Type {content_type or 'none'!r}: expected JSON."
        if route["mode"] == "vertex":
            scheme, _, token = (headers.get("Authorization") or "").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return (
                    401,
                    "Request is missing required authentication credential. Expected OAuth 2 "
                    "access token, login cookie or other valid authentication credential.",
                )
            return None
        key = headers.get("x-goog-api-key") or urllib.parse.parse_qs(query).get("key", [""])[0]
        if not key:
            return (
                403,
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API.",
            )
        if self.server.api_key is not None and key != self.server.api_key:
            return 400, "API key not valid. Please pass a valid API key."
        return None

    @staticmethod
    def _route(path: str) -> dict[str, Any] | None:
        for mode, pattern in (("api-key", _API_KEY_PATH), ("vertex", _VERTEX_PATH)):
            found = pattern.match(path)
            if found and found["method"] in MODEL_METHODS:
                groups = found.groupdict()
                return {
                    "mode": mode,
                    "api_version": groups["version"],
                    "model": groups["model"],
                    "method": groups["method"],
                    "project": groups.get("project"),
                    "location": groups.get("location"),
                }
        return None

    # -- model RPCs ---------------------------------------------------------------------

    def _model_call(self, route: dict[str, Any], query: str, body: dict[str, Any]) -> None:
        method: str = route["method"]
        view = analyze_request(body)
        script = self.server.take_script(method, view.last_user_text)
        headers = {key: _redact(key, value) for key, value in self.headers.items()}
        entry: dict[str, Any] = {
            "id": self.server.next_id(),
            "time": time.time(),
            "path": urllib.parse.urlsplit(self.path).path,
            "query": query,
            **route,
            "body": body,
            "headers": headers,
            "last_user_text": view.last_user_text,
            "script_id": script.id if script else None,
            "outcome": "pending",
        }
        self.server.record(entry)
        self._entry, self._streaming = entry, False
        try:
            self._answer(method, route, query, view, script)
        except _ClientGone:
            self._settle("client_gone")
            raise
        except (ConnectionError, TimeoutError):
            self._settle("client_gone")
            self.close_connection = True
        finally:
            self._settle(None)

    def _settle(self, outcome: str | None) -> None:
        """Publishes a request's outcome and counts its stream out.

        Called just *before* the last bytes leave (or the connection is cut), so a client
        that has seen the end of its answer always finds the record settled.

        Args:
            outcome: The outcome to record, or None to only count the stream out.
        """
        if self._streaming:
            self._streaming = False
            self.server.stream_ended()
        if outcome is not None and self._entry is not None:
            self.server.set_outcome(self._entry, outcome)

    def _answer(
        self,
        method: str,
        route: dict[str, Any],
        query: str,
        view: RequestView,
        script: Script | None,
    ) -> None:
        if script is not None and script.hang:
            self._sleep(script.hang)
        if script is not None and script.http_error is not None:
            spec = script.http_error
            self._settle("http_error")
            self._send_error_json(
                spec["status"], spec["message"], spec["status_name"], spec.get("details")
            )
            return
        if method == "countTokens":
            self._count_tokens(view, script)
            return
        if script is not None and script.chunks is not None:
            chunks = list(script.chunks)
        elif script is not None and script.reply is not None:
            chunks = split_into_chunks(script.reply)
        else:
            chunks = split_into_chunks(default_reply(view))
        if script is not None and script.block_reason is not None:
            chunks = []
        usage = self._usage(view, "".join(chunks), script)
        finish = script.finish_reason if script is not None else "STOP"
        block = script.block_reason if script is not None else None
        if method == "generateContent":
            whole = self._responses(route, ["".join(chunks)], usage, finish, block)[0]
            self._whole(whole, len(chunks), script)
        elif "sse" not in urllib.parse.parse_qs(query).get("alt", []):
            # Without alt=sse the real API answers one JSON array of the chunk responses.
            self._whole(self._responses(route, chunks, usage, finish, block), len(chunks), script)
        elif script is not None and script.responses is not None:
            self._stream(json.loads(json.dumps(script.responses)), script)
        else:
            self._stream(self._responses(route, chunks, usage, finish, block), script)

    @staticmethod
    def _usage(view: RequestView, reply: str, script: Script | None) -> dict[str, int]:
        usage = {
            "promptTokenCount": view.prompt_tokens,
            "candidatesTokenCount": math.ceil(len(reply) / 4),
        }
        override = script.usage if script is not None and script.usage else {}
        usage.update(override)
        if "totalTokenCount" not in override:
            usage["totalTokenCount"] = (
                usage["promptTokenCount"]
                + usage["candidatesTokenCount"]
                + usage.get("thoughtsTokenCount", 0)
            )
        return usage

    @staticmethod
    def _responses(
        route: dict[str, Any],
        chunks: list[str],
        usage: dict[str, int],
        finish_reason: str = "STOP",
        block_reason: str | None = None,
    ) -> list[dict[str, Any]]:
        """One GenerateContentResponse per chunk; the last one finishes and bills.

        A blocked prompt is one response without candidates, carrying ``promptFeedback``.
        """
        response_id = uuid.uuid4().hex[:22]
        created = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
        if block_reason is not None:
            blocked: dict[str, Any] = {
                "promptFeedback": {"blockReason": block_reason},
                "usageMetadata": usage,
                "modelVersion": route["model"],
                "responseId": response_id,
            }
            return [blocked]
        responses: list[dict[str, Any]] = []
        for index, text in enumerate(chunks or [""]):
            candidate: dict[str, Any] = {
                "content": {"role": "model", "parts": [{"text": text}] if text else []},
                "index": 0,
            }
            response: dict[str, Any] = {
                "candidates": [candidate],
                "modelVersion": route["model"],
                "responseId": response_id,
            }
            if route["mode"] == "vertex":
                response["createTime"] = created
            if index == max(len(chunks), 1) - 1:
                candidate["finishReason"] = finish_reason
                response["usageMetadata"] = usage
            responses.append(response)
        return responses

    def _whole(self, payload: Any, chunk_count: int, script: Script | None) -> None:
        """Answers in one JSON body after the scripted generation time."""
        if script is not None and script.fail_after_chunks is not None:
            self._settle("aborted")
            self._abort()
            return
        if script is not None and script.delay_per_chunk:
            self._sleep(script.delay_per_chunk * chunk_count)
        self._settle("ok")
        self._send_json(200, payload)

    def _count_tokens(self, view: RequestView, script: Script | None) -> None:
        if script is not None and script.fail_after_chunks is not None:
            self._settle("aborted")
            self._abort()
            return
        total = view.prompt_tokens
        if script is not None and script.usage:
            total = script.usage.get("totalTokens", script.usage.get("promptTokenCount", total))
        self._settle("ok")
        self._send_json(200, {"totalTokens": total})

    def _stream(self, responses: list[dict[str, Any]], script: Script | None) -> None:
        """Sends the responses as SSE events over a chunked body, one flush per event."""
        delay = (
            script.delay_per_chunk if script is not None else self.server.default_delay_per_chunk
        )
        fail_after = script.fail_after_chunks if script is not None else None
        stream_error = script.stream_error if script is not None else None
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Accel-Buffering", "no")
        self.end_headers()
        self._streaming = True
        self.server.stream_started()
        for sent, response in enumerate(responses):
            if fail_after is not None and sent >= fail_after:
                break
            if stream_error is not None and sent >= stream_error["after_chunks"]:
                break
            if delay:
                self._sleep(delay)
            if script is not None and script.stamp_chunks and "candidates" in response:
                response["candidates"][0]["content"]["parts"] = [{"text": f"{time.time():.6f} "}]
            self._write_chunk(_sse_event(response))
        # fail_after_chunks cuts the connection at its chunk, even after every chunk; a
        # stream_error due first is sent before the cut.
        if stream_error is not None and (
            fail_after is None or stream_error["after_chunks"] < fail_after
        ):
            error = error_body(
                stream_error["status"],
                stream_error["message"],
                stream_error["status_name"],
                stream_error.get("details"),
            )
            if fail_after is None:
                self._settle("stream_error")
            self._write_chunk(_sse_event(error))
        if fail_after is not None:
            self._settle("aborted")
            self._abort()
            return
        self._settle("stream_error" if stream_error is not None else "ok")
        self._write_chunk(b"")  # the terminating zero-length chunk


def _redact(name: str, value: str) -> str:
    """Hides credentials in a recorded header, keeping an auth scheme such as ``Bearer``."""
    if name.lower() not in _REDACTED_HEADERS:
        return value
    scheme, _, credential = value.partition(" ")
    return f"{scheme} <redacted>" if credential else "<redacted>"


def _sse_event(payload: Any) -> bytes:
    """One SSE event as Google frames them: ``data: <json>`` and a blank line, CRLF."""
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode("utf-8") + b"\r\n\r\n"


def start_standin(
    port: int = 0,
    host: str = DEFAULT_HOST,
    *,
    max_records: int = MAX_RECORDS,
    default_delay_per_chunk: float = 0.0,
    api_key: str | None = None,
) -> tuple[StandinServer, str]:
    """Starts the stand-in on a background daemon thread.

    Args:
        port: Port to listen on; 0 picks a free one.
        host: Interface to bind.
        max_records: How many requests to remember.
        default_delay_per_chunk: Pacing of unscripted streams (see :class:`StandinServer`).
        api_key: The one API key accepted in API-key mode (any non-empty key if None).

    Returns:
        The running server (call ``server.stop()`` when done) and its base URL with the
        real port, e.g. ``http://127.0.0.1:40123``.
    """
    server = StandinServer(
        (host, port),
        max_records=max_records,
        default_delay_per_chunk=default_delay_per_chunk,
        api_key=api_key,
    )
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.1},
        name=f"gemini-standin-{server.server_address[1]}",
        daemon=True,
    )
    thread.start()
    return server, server.base_url


class StandinControl:
    """Scripts and inspects a running stand-in through its control endpoints.

    Example::

        control = StandinControl(base_url)
        control.script(reply="Hi!", match="greet me")
        ...
        assert control.requests(match="greet me")[-1]["mode"] == "vertex"
    """

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        """Remembers where the stand-in is.

        Args:
            base_url: The stand-in's base URL, e.g. ``http://127.0.0.1:8090``.
            timeout: Seconds to wait for each control call.
        """
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        # Never route localhost control calls through an environment proxy.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        request = urllib.request.Request(
            f"{self.base_url}{CONTROL_PREFIX}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = json.loads(exc.read() or b"{}").get("error", {}).get("message", str(exc))
            if exc.code == 400:
                raise ScriptError(detail) from exc
            raise RuntimeError(f"stand-in answered {exc.code}: {detail}") from exc

    def script(self, **behaviour: Any) -> int:
        """Queues one scripted behaviour (see the module docstring for the keys).

        Args:
            **behaviour: e.g. ``reply="Hi"``, ``match="ping"``, ``http_error={"status": 429}``.

        Returns:
            The script's id (records of the requests it served carry it as ``script_id``).

        Raises:
            ScriptError: If the stand-in rejects the behaviour.
        """
        return int(self._call("POST", "/script", behaviour)["id"])

    def requests(self, match: str | None = None) -> list[dict[str, Any]]:
        """The recorded model requests, oldest first.

        Args:
            match: Keep only requests whose last user text contains it.
        """
        query = "" if match is None else "?" + urllib.parse.urlencode({"match": match})
        return list(self._call("GET", f"/requests{query}"))

    def scripts(self) -> list[dict[str, Any]]:
        """The scripts still pending, oldest first."""
        return list(self._call("GET", "/scripts"))

    def reset(self) -> None:
        """Drops every pending script and recorded request."""
        self._call("POST", "/reset", {})

    def health(self) -> dict[str, Any]:
        """The health answer, with stream counters (``active_streams``, ``peak_streams``)."""
        return dict(self._call("GET", "/healthz"))


def main(argv: list[str] | None = None) -> None:
    """Runs the stand-in in the foreground until interrupted.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description="Local stand-in for the Gemini REST API.")
    parser.add_argument("--host", default=DEFAULT_HOST, help="interface to bind")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (0 = any free)")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    parser.add_argument("--api-key", help="the one API key accepted (default: any)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    server = StandinServer((args.host, args.port), api_key=args.api_key)
    logger.info("Gemini stand-in listening on %s", server.base_url)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.stopping.set()
        server.server_close()


if __name__ == "__main__":
    main()
