"""CPU to read one streamed chunk: google-genai's own steps vs the fast path (issue 17).

In one process, no HTTP, ``time.process_time`` per chunk (best of 5 runs of 20,000 chunks),
for a typical Vertex text chunk:

* ``sdk``: the steps google-genai 3.4.0 takes for each event after its SSE reader has
  decoded it (``async_request_streamed``: ``json.dumps`` and an ``HttpResponse`` model;
  ``_generate_content_stream``: ``json.loads``, the response converter,
  ``GenerateContentResponse._from_response`` and its ``sdk_http_response``; the automatic
  continuation's ``observe``), then the fields shared.gemini read from the models.
* ``fast``: ``shared.gemini_raw.read_chunk`` of the SSE reader's dict, plus the one
  ``json.loads`` the SDK's SSE reader does in both paths.
* ``reader``: what the request thread does per chunk with the bytes one ``recv`` returned
  (one chunked-transfer frame holding one SSE event), without the syscall:
  ``shared.sse_client``'s chunked decoding and SSE split, the ``json.loads``, ``read_chunk``
  and the ``TextChunk`` (``GeminiStreamer._stream_once``'s loop body).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

CHUNKS = 20_000
RAW = json.dumps(
    {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [{"text": "a typical chunk of a streamed answer, forty to sixty"}],
                },
                "index": 0,
            }
        ],
        "modelVersion": "gemini-2.5-flash",
        "responseId": "abcdefghijklmnopqrstuv",
        "createTime": "2026-11-26T15:00:00.000000Z",
    }
)
HEADERS = {"content-type": "text/event-stream", "transfer-encoding": "chunked", "server": "x"}


def cpu_us(step: Callable[[], Any]) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for _ in range(CHUNKS):
            step()
        best = min(best, (time.process_time() - start) / CHUNKS * 1e6)
    return best


def run() -> dict[str, Any]:
    from google.genai import _extra_utils, models, types

    from shared.gemini import _text_of
    from shared.gemini_raw import read_chunk

    parameters = types._GenerateContentParameters(model="gemini-2.5-flash", contents="hi")
    continuation = _extra_utils.StreamContinuation(None)
    continuation.start_hop()
    config: dict[str, object] = {"config": {"response_schema": None, "response_json_schema": None}}

    def sdk() -> None:
        segment = json.loads(RAW)
        event = types.HttpResponse(headers=HEADERS, body=json.dumps(segment))
        body = models._GenerateContentResponse_from_vertex(
            json.loads(event.body or "{}"), None, parameters
        )
        chunk = types.GenerateContentResponse._from_response(response=body, kwargs=config)
        chunk.sdk_http_response = types.HttpResponse(headers=HEADERS)
        chunk = continuation.observe(chunk)
        _text_of(chunk)
        assert chunk.candidates and chunk.candidates[0].finish_reason is None
        assert chunk.usage_metadata is None and chunk.prompt_feedback is None

    def fast() -> None:
        read_chunk(json.loads(RAW))

    results = {
        "sdk_us_per_chunk": cpu_us(sdk),
        "fast_us_per_chunk": cpu_us(fast),
        "reader_us_per_chunk": reader_us(),
    }
    print("stream parse (one chunk, in process)")
    print(
        f"  google-genai's models: {results['sdk_us_per_chunk']:.1f} µs CPU, "
        f"fast path: {results['fast_us_per_chunk']:.1f} µs CPU, "
        f"the request thread's reader (bytes of one recv -> TextChunk): "
        f"{results['reader_us_per_chunk']:.1f} µs CPU"
    )
    return results


def reader_us() -> float:
    """µs of CPU from one recv's bytes (a chunked frame of one SSE event) to its TextChunk."""
    from shared.gemini_raw import read_chunk
    from shared.model_events import TextChunk
    from shared.sse_client import _events, _Reader

    event = b"data: " + RAW.encode() + b"\r\n\r\n"
    frame = b"%x\r\n%s\r\n" % (len(event), event)
    best = float("inf")
    for _ in range(5):
        reader = _Reader(None, 5.0, 60.0)  # type: ignore[arg-type]  # recv is replaced
        left = [CHUNKS]

        def recv(left: list[int] = left) -> bytes:
            left[0] -= 1
            return frame if left[0] >= 0 else b"0\r\n\r\n"

        reader.recv = recv  # type: ignore[method-assign]
        start = time.process_time()
        for batch in _events(reader._chunked()):
            text = ""
            for response in batch:
                text += read_chunk(response).text
            TextChunk(text)
        best = min(best, (time.process_time() - start) / CHUNKS * 1e6)
    return best
