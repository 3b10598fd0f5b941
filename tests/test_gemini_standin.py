"""The Gemini stand-in, exercised through the real google-genai SDK.

Each test keys its scripts and its prompts with a fresh token, so the tests stay independent
even though they share one stand-in.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import google.auth.credentials
import google.auth.exceptions
import google.oauth2.credentials
import httpx
import httpx2
import pytest
from google import genai
from google.genai import errors, types

from dev.gemini_standin import (
    ScriptError,
    StandinControl,
    StandinServer,
    split_into_chunks,
    start_standin,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL = "gemini-2.5-flash"
SYSTEM = "You are Raven, a friendly assistant for curious people."
SUMMARY_SYSTEM = SYSTEM + "\n\nSummary of the earlier conversation: they talked about crows."
PROTOCOL_ERRORS = (httpx.RemoteProtocolError, httpx2.RemoteProtocolError)
TIMEOUTS = (httpx.TimeoutException, httpx2.TimeoutException)


@pytest.fixture
def base_url(standin: tuple[StandinServer, str]) -> str:
    return standin[1]


@pytest.fixture
def control(base_url: str) -> Iterator[StandinControl]:
    control = StandinControl(base_url)
    control.reset()
    yield control
    assert control.health()["unexpected_errors"] == 0


# Clients are module-scoped: building one costs ~0.15 s (it loads TLS contexts).
@pytest.fixture(scope="module")
def api_client(standin: tuple[StandinServer, str]) -> genai.Client:
    return genai.Client(api_key="test-key", http_options=types.HttpOptions(base_url=standin[1]))


@pytest.fixture(scope="module")
def vertex_client(standin: tuple[StandinServer, str]) -> genai.Client:
    # A token that is already set and never expires: the SDK sends it as is, no refresh.
    return genai.Client(
        vertexai=True,
        project="raven-test",
        location="us-central1",
        credentials=google.oauth2.credentials.Credentials(token="standin-token"),
        http_options=types.HttpOptions(base_url=standin[1]),
    )


@pytest.fixture(params=["api-key", "vertex"])
def any_client(
    request: pytest.FixtureRequest, api_client: genai.Client, vertex_client: genai.Client
) -> tuple[str, genai.Client]:
    return request.param, (api_client if request.param == "api-key" else vertex_client)


def token() -> str:
    return f"probe-{uuid.uuid4().hex[:10]}"


def conversation(last_text: str) -> list[types.Content]:
    return [
        types.Content(
            role="user",
            parts=[
                types.Part(text="What bird is this?"),
                types.Part.from_uri(file_uri="gs://raven-media/u1/crow.png", mime_type="image/png"),
            ],
        ),
        types.Content(role="model", parts=[types.Part(text="It looks like a carrion crow.")]),
        types.Content(role="user", parts=[types.Part(text=last_text)]),
    ]


def stream(client: genai.Client, text: str, **config: Any) -> list[types.GenerateContentResponse]:
    return list(
        client.models.generate_content_stream(
            model=MODEL, contents=text, config=types.GenerateContentConfig(**config)
        )
    )


def text_of(chunks: list[types.GenerateContentResponse]) -> str:
    return "".join(chunk.text or "" for chunk in chunks)


def usage_of(response: types.GenerateContentResponse) -> types.GenerateContentResponseUsageMetadata:
    assert response.usage_metadata is not None
    return response.usage_metadata


def finish_of(response: types.GenerateContentResponse) -> types.FinishReason | None:
    assert response.candidates
    return response.candidates[0].finish_reason


def wait_for(predicate: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# --- default answers ---------------------------------------------------------------------


def test_default_stream_reports_what_the_model_received(
    any_client: tuple[str, genai.Client], control: StandinControl
) -> None:
    mode, client = any_client
    last = f"{token()} and now tell me everything you know about ravens, please"
    chunks = list(
        client.models.generate_content_stream(
            model=MODEL,
            contents=conversation(last),
            config=types.GenerateContentConfig(system_instruction=SUMMARY_SYSTEM),
        )
    )

    assert text_of(chunks) == (
        "Stand-in reply: 3 turns (user, model, user); summary: yes; "
        "media: image/png gs://raven-media/u1/crow.png; "
        'system: "You are Raven, a friendly ..."; '
        f'last: "{last[:40]}"'
    )
    assert 4 <= len(chunks) <= 8
    assert all(chunk.text for chunk in chunks)
    assert [c.usage_metadata is not None for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert finish_of(chunks[-1]) == types.FinishReason.STOP
    assert all(finish_of(c) is None for c in chunks[:-1])
    usage = usage_of(chunks[-1])
    prompt_chars = len(SUMMARY_SYSTEM) + len("What bird is this?")
    prompt_chars += len("It looks like a carrion crow.") + len(last)
    assert usage.prompt_token_count == -(-prompt_chars // 4)
    assert usage.candidates_token_count == -(-len(text_of(chunks)) // 4)
    assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count

    (record,) = control.requests(match=last)
    assert record["mode"] == mode
    assert record["method"] == "streamGenerateContent"
    assert record["query"] == "alt=sse"
    assert record["model"] == MODEL
    assert record["outcome"] == "ok"
    assert record["body"]["systemInstruction"]["parts"][0]["text"] == SUMMARY_SYSTEM
    assert [c["role"] for c in record["body"]["contents"]] == ["user", "model", "user"]
    if mode == "api-key":
        assert record["path"] == f"/v1/models/{MODEL}:streamGenerateContent"
        assert record["headers"]["x-goog-api-key"] == "<redacted>"
        assert "test-key" not in json.dumps(record)
    else:
        assert record["path"] == (
            "/v1beta1/projects/raven-test/locations/us-central1/publishers/google/models/"
            f"{MODEL}:streamGenerateContent"
        )
        assert (record["project"], record["location"]) == ("raven-test", "us-central1")
        assert record["headers"]["Authorization"] == "Bearer <redacted>"
        assert "standin-token" not in json.dumps(record)


def test_default_reply_without_summary_media_or_system(
    api_client: genai.Client, control: StandinControl
) -> None:
    last = token()
    reply = text_of(stream(api_client, last))
    assert reply == (
        f'Stand-in reply: 1 turn (user); summary: no; media: none; system: none; last: "{last}"'
    )
    system_only = text_of(stream(api_client, last, system_instruction=SYSTEM))
    assert 'summary: no; media: none; system: "You are Raven, a friendly ..."' in system_only


def test_inline_media_is_reported_with_its_size(api_client: genai.Client) -> None:
    last = token()
    contents = types.Content(
        role="user",
        parts=[
            types.Part.from_bytes(data=b"\xff\xd8\xff", mime_type="image/jpeg"),
            types.Part(text=last),
        ],
    )
    reply = api_client.models.generate_content(model=MODEL, contents=contents).text
    assert reply is not None
    assert f'media: image/jpeg inline 3 B; system: none; last: "{last}"' in reply


def test_vertex_needs_credentials_with_a_token(base_url: str, control: StandinControl) -> None:
    client = genai.Client(
        vertexai=True,
        project="raven-test",
        location="us-central1",
        credentials=google.auth.credentials.AnonymousCredentials(),
        http_options=types.HttpOptions(base_url=base_url),
    )
    with pytest.raises(google.auth.exceptions.InvalidOperation):
        stream(client, token())
    assert control.requests() == []


def test_split_into_chunks_keeps_the_text() -> None:
    text = "  one two three four five six seven eight nine ten eleven twelve thirteen  "
    chunks = split_into_chunks(text)
    assert "".join(chunks) == text
    assert len(chunks) == 5
    assert split_into_chunks("a b") == ["a", " b"]
    assert split_into_chunks("") == [""]


# --- scripted behaviours -----------------------------------------------------------------


def test_scripted_reply_is_streamed_by_words(
    any_client: tuple[str, genai.Client], control: StandinControl
) -> None:
    _, client = any_client
    key = token()
    reply = "Ravens can solve puzzles, remember faces and plan for the future quite well."
    script_id = control.script(reply=reply, match=key)
    chunks = stream(client, f"tell me {key}")
    assert text_of(chunks) == reply
    assert len(chunks) == 5
    assert control.requests(match=key)[0]["script_id"] == script_id
    assert control.scripts() == []


def test_scripted_chunks_and_usage(api_client: genai.Client, control: StandinControl) -> None:
    key = token()
    control.script(chunks=["Hel", "lo", " world"], usage={"promptTokenCount": 7}, match=key)
    chunks = stream(api_client, key)
    assert [c.text for c in chunks] == ["Hel", "lo", " world"]
    usage = usage_of(chunks[-1])
    assert (usage.prompt_token_count, usage.candidates_token_count) == (7, 3)
    assert usage.total_token_count == 10


def test_stamp_chunks_carry_their_send_time(
    api_client: genai.Client, control: StandinControl
) -> None:
    key = token()
    before = time.time()
    control.script(chunks=["a", "b", "c"], stamp_chunks=True, match=key)
    stamps = [float(str(c.text)) for c in stream(api_client, key)]
    after = time.time()
    assert len(stamps) == 3
    assert before <= stamps[0] <= stamps[1] <= stamps[2] <= after
    record = control.requests(match=key)[-1]
    assert record["outcome"] == "ok" and record["time"] <= record["settled_at"] <= after


def test_delay_per_chunk_streams_without_buffering(
    api_client: genai.Client, control: StandinControl
) -> None:
    key = token()
    control.script(chunks=["a", "b", "c"], delay_per_chunk=0.2, match=key)
    started = time.monotonic()
    arrivals = [
        time.monotonic() - started
        for _ in api_client.models.generate_content_stream(model=MODEL, contents=key)
    ]
    assert len(arrivals) == 3
    assert arrivals[0] < 0.45
    assert arrivals[2] - arrivals[0] >= 0.35
    assert arrivals[2] >= 0.6


def test_fail_after_chunks_breaks_the_sdk_iterator(
    api_client: genai.Client, control: StandinControl
) -> None:
    key = token()
    control.script(chunks=["one ", "two ", "three"], fail_after_chunks=2, match=key)
    received: list[str] = []
    with pytest.raises(PROTOCOL_ERRORS) as raised:
        for chunk in api_client.models.generate_content_stream(model=MODEL, contents=key):
            received.append(chunk.text or "")
    assert received == ["one ", "two "]
    assert not isinstance(raised.value, errors.APIError)
    assert "incomplete chunked read" in str(raised.value)
    (record,) = control.requests(match=key)  # the SDK did not retry or resume
    assert record["outcome"] == "aborted"


@pytest.mark.parametrize(
    ("status", "error_class", "status_name"),
    [
        (429, errors.ClientError, "RESOURCE_EXHAUSTED"),
        (500, errors.ServerError, "INTERNAL"),
        (503, errors.ServerError, "UNAVAILABLE"),
    ],
)
def test_http_error_raises_the_sdk_api_error(
    any_client: tuple[str, genai.Client],
    control: StandinControl,
    status: int,
    error_class: type[errors.APIError],
    status_name: str,
) -> None:
    _, client = any_client
    key = token()
    control.script(http_error={"status": status, "message": f"scripted {status}"}, match=key)
    received = []
    with pytest.raises(error_class) as raised:
        for chunk in client.models.generate_content_stream(model=MODEL, contents=key):
            received.append(chunk)
    assert received == []
    assert (raised.value.code, raised.value.status) == (status, status_name)
    assert raised.value.message == f"scripted {status}"
    assert raised.value.details == {
        "error": {"code": status, "message": f"scripted {status}", "status": status_name}
    }
    assert control.requests(match=key)[0]["outcome"] == "http_error"
    # One use only: the next call gets the default answer.
    assert text_of(stream(client, key)).startswith("Stand-in reply: 1 turn (user)")


def test_stream_error_event_raises_after_the_chunks(
    api_client: genai.Client, control: StandinControl
) -> None:
    key = token()
    control.script(
        chunks=["partial ", "answer"],
        stream_error={"after_chunks": 1, "status": 500, "message": "model overloaded"},
        match=key,
    )
    received: list[str] = []
    with pytest.raises(errors.ServerError) as raised:
        for chunk in api_client.models.generate_content_stream(model=MODEL, contents=key):
            received.append(chunk.text or "")
    assert received == ["partial "]
    assert (raised.value.code, raised.value.message) == (500, "model overloaded")


def test_hang_makes_a_short_timeout_fail(base_url: str, control: StandinControl) -> None:
    key = token()
    control.script(hang=2.0, match=key)
    client = genai.Client(
        api_key="test-key", http_options=types.HttpOptions(base_url=base_url, timeout=300)
    )
    started = time.monotonic()
    with pytest.raises(TIMEOUTS):
        stream(client, key)
    assert time.monotonic() - started < 1.5
    (record,) = control.requests(match=key)
    assert record["headers"]["X-Server-Timeout"] == "1"  # the SDK tells the server, rounded up
    # The stand-in notices the client hung up instead of sleeping on.
    wait_for(lambda: control.requests(match=key)[0]["outcome"] == "client_gone", timeout=1.0)


def test_times_serves_that_many_requests(api_client: genai.Client, control: StandinControl) -> None:
    key = token()
    control.script(reply="again", times=2, match=key)
    assert [text_of(stream(api_client, key)) for _ in range(2)] == ["again", "again"]
    assert text_of(stream(api_client, key)).startswith("Stand-in reply:")


def test_match_keys_keep_concurrent_scripts_apart(
    api_client: genai.Client, control: StandinControl
) -> None:
    keys = [token() for _ in range(12)]
    control.script(reply="for anyone")  # no match key: any request may take it
    for key in reversed(keys):  # queued in the opposite order to the requests
        control.script(reply=f"for {key}", delay_per_chunk=0.05, match=key)

    with ThreadPoolExecutor(max_workers=len(keys)) as pool:
        replies = list(pool.map(lambda key: text_of(stream(api_client, f"msg {key}")), keys))
    assert replies == [f"for {key}" for key in keys]

    assert text_of(stream(api_client, "no key here")) == "for anyone"
    assert text_of(stream(api_client, "no key here")).startswith("Stand-in reply:")


def test_keyed_script_is_not_taken_by_other_requests(
    api_client: genai.Client, control: StandinControl
) -> None:
    key = token()
    control.script(reply="only for the key", match=key)
    assert text_of(stream(api_client, "something else")).startswith("Stand-in reply:")
    assert [s["match"] for s in control.scripts()] == [key]
    assert text_of(stream(api_client, key)) == "only for the key"


# --- generateContent and countTokens ----------------------------------------------------


def test_generate_content_returns_the_whole_reply(
    any_client: tuple[str, genai.Client], control: StandinControl
) -> None:
    mode, client = any_client
    last = token()
    response = client.models.generate_content(
        model=MODEL,
        contents=conversation(last),
        config=types.GenerateContentConfig(system_instruction=SYSTEM),
    )
    assert response.text == (
        "Stand-in reply: 3 turns (user, model, user); summary: no; "
        'media: image/png gs://raven-media/u1/crow.png; system: "You are Raven, a friendly ..."; '
        f'last: "{last}"'
    )
    assert finish_of(response) == types.FinishReason.STOP
    assert usage_of(response).candidates_token_count == -(-len(response.text or "") // 4)
    assert response.model_version == MODEL
    (record,) = control.requests(match=last)
    assert (record["method"], record["mode"]) == ("generateContent", mode)

    control.script(reply="Short summary.", match=f"{last}-again")
    assert client.models.generate_content(model=MODEL, contents=f"{last}-again").text == (
        "Short summary."
    )


def test_generate_content_http_error(api_client: genai.Client, control: StandinControl) -> None:
    key = token()
    control.script(http_error={"status": 400, "message": "bad request"}, match=key)
    with pytest.raises(errors.ClientError) as raised:
        api_client.models.generate_content(model=MODEL, contents=key)
    assert (raised.value.code, raised.value.status) == (400, "INVALID_ARGUMENT")


def test_count_tokens(any_client: tuple[str, genai.Client], control: StandinControl) -> None:
    mode, client = any_client
    key = token()
    text = f"{key} count these words for me"
    control.script(reply="not for countTokens", match=key)  # generation scripts are left alone
    result = client.models.count_tokens(model=MODEL, contents=text)
    assert result.total_tokens == -(-len(text) // 4)
    assert len(control.scripts()) == 1

    control.script(method="countTokens", usage={"totalTokens": 1234}, match=key)
    assert client.models.count_tokens(model=MODEL, contents=text).total_tokens == 1234
    control.script(method="countTokens", http_error={"status": 503}, match=key)
    with pytest.raises(errors.ServerError):
        client.models.count_tokens(model=MODEL, contents=text)
    records = control.requests(match=key)
    assert [(r["method"], r["mode"]) for r in records] == [("countTokens", mode)] * 3
    assert text_of(stream(client, key)) == "not for countTokens"


# --- the async client (aiohttp) ----------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning")
def test_async_client_streams_and_sees_aborts(
    api_client: genai.Client, control: StandinControl
) -> None:
    key = token()
    control.script(chunks=["x", "y", "z"], match=f"{key}-ok")
    control.script(chunks=["x", "y", "z"], fail_after_chunks=1, match=f"{key}-abort")

    async def run() -> tuple[list[str], list[str], BaseException | None]:
        aio = api_client.aio
        ok = [
            c.text or ""
            async for c in await aio.models.generate_content_stream(
                model=MODEL, contents=f"{key}-ok"
            )
        ]
        partial: list[str] = []
        error: BaseException | None = None
        try:
            async for chunk in await aio.models.generate_content_stream(
                model=MODEL, contents=f"{key}-abort"
            ):
                partial.append(chunk.text or "")
        except aiohttp.ClientPayloadError as exc:
            error = exc
        return ok, partial, error

    ok, partial, error = asyncio.run(run())
    assert ok == ["x", "y", "z"]
    assert partial == ["x"]
    assert error is not None


# --- robustness --------------------------------------------------------------------------


async def open_stream(
    base_url: str, text: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Starts a stream over a bare asyncio connection and waits for its first SSE event."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    body = json.dumps({"contents": [{"role": "user", "parts": [{"text": text}]}]}).encode()
    writer.write(
        f"POST /v1beta/models/{MODEL}:streamGenerateContent?alt=sse HTTP/1.1\r\n"
        f"Host: {host}\r\nContent-Type: application/json\r\nx-goog-api-key: test-key\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=20)
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Transfer-Encoding: chunked" in head
    await asyncio.wait_for(reader.readline(), timeout=20)  # the first chunk's size line
    event = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=20)
    assert json.loads(event.removeprefix(b"data: "))["candidates"][0]["content"]["parts"]
    return reader, writer


def test_carries_200_concurrent_streams(
    base_url: str, api_client: genai.Client, control: StandinControl
) -> None:
    key = token()
    count = 220
    # Each stream lasts 20 * 0.5 s = 10 s: all of them are still open once every client has
    # its first event, even on a slow, busy machine.
    control.script(chunks=["tick "] * 20, delay_per_chunk=0.5, times=count, match=key)

    async def run() -> dict[str, Any]:
        streams = await asyncio.gather(
            *(open_stream(base_url, f"{key} #{index}") for index in range(count))
        )
        health = await asyncio.to_thread(control.health)
        for _, writer in streams:  # every client hangs up mid-stream
            writer.close()
        return health

    health = asyncio.run(run())
    assert health["active_streams"] == count
    assert health["peak_streams"] >= count

    wait_for(lambda: control.health()["active_streams"] == 0)
    wait_for(lambda: {r["outcome"] for r in control.requests(match=key)} == {"client_gone"})
    assert len(control.requests(match=key)) == count
    assert text_of(stream(api_client, f"{key} after")).startswith("Stand-in reply:")


def test_a_client_going_away_does_not_hurt_the_server(
    base_url: str, api_client: genai.Client, control: StandinControl
) -> None:
    key = token()
    control.script(chunks=[f"c{i} " for i in range(20)], delay_per_chunk=0.05, match=key)
    host, port = base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    body = json.dumps({"contents": [{"role": "user", "parts": [{"text": key}]}]})
    connection.request(
        "POST",
        f"/v1/models/{MODEL}:streamGenerateContent?alt=sse",
        body,
        {"Content-Type": "application/json", "x-goog-api-key": "test-key"},
    )
    response = connection.getresponse()
    assert response.fp is not None
    assert response.fp.readline().strip()  # the first chunk's size line
    response.close()
    connection.close()  # hang up mid-stream

    wait_for(lambda: control.requests(match=key)[0]["outcome"] == "client_gone")
    assert control.health()["active_streams"] == 0
    assert text_of(stream(api_client, f"{key} after")).startswith("Stand-in reply:")


def test_stream_without_alt_sse_is_one_json_array(base_url: str, control: StandinControl) -> None:
    key = token()
    control.script(chunks=["one", "two"], match=key)
    request = urllib.request.Request(
        f"{base_url}/v1beta/models/{MODEL}:streamGenerateContent",
        data=json.dumps({"contents": [{"parts": [{"text": key}]}]}).encode(),
        headers={"Content-Type": "application/json", "x-goog-api-key": "test-key"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        payload = json.loads(response.read())
    assert [r["candidates"][0]["content"]["parts"][0]["text"] for r in payload] == ["one", "two"]
    assert "usageMetadata" in payload[-1]


def test_unknown_paths_and_bad_json_use_googles_error_shape(base_url: str) -> None:
    for path, data, status in [
        ("/v1/models/m:embedContent", b"{}", 404),
        (f"/v1/models/{MODEL}:generateContent", b"not json", 400),
    ]:
        request = urllib.request.Request(
            f"{base_url}{path}",
            data=data,
            method="POST",
            headers={"Content-Type": "application/json", "x-goog-api-key": "test-key"},
        )
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(request, timeout=5)
        assert raised.value.code == status
        assert json.loads(raised.value.read())["error"]["code"] == status


VERTEX_PATH = f"/v1beta1/projects/p/locations/us-central1/publishers/google/models/{MODEL}"
GOOD_BODY = json.dumps({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}).encode()


@pytest.mark.parametrize(
    ("path", "headers", "status", "status_name"),
    [
        pytest.param(
            f"/v1/models/{MODEL}:generateContent",
            {"Content-Type": "application/json"},
            403,
            "PERMISSION_DENIED",
            id="Gemini API without a key",
        ),
        pytest.param(
            f"/v1/models/{MODEL}:generateContent",
            {"Content-Type": "application/json", "x-goog-api-key": "wrong"},
            400,
            "INVALID_ARGUMENT",
            id="Gemini API with another key than the stand-in's",
        ),
        pytest.param(
            f"{VERTEX_PATH}:generateContent",
            {"Content-Type": "application/json"},
            401,
            "UNAUTHENTICATED",
            id="Vertex AI without a token",
        ),
        pytest.param(
            f"{VERTEX_PATH}:generateContent",
            {"Content-Type": "application/json", "Authorization": "Basic abc"},
            401,
            "UNAUTHENTICATED",
            id="Vertex AI without a bearer token",
        ),
        pytest.param(
            f"/v1/models/{MODEL}:streamGenerateContent?alt=sse",
            {"x-goog-api-key": "right"},
            400,
            "INVALID_ARGUMENT",
            id="no Content-Type",
        ),
        pytest.param(
            f"/v1/models/{MODEL}:streamGenerateContent?alt=sse",
            {"x-goog-api-key": "right", "Content-Type": "text/plain"},
            400,
            "INVALID_ARGUMENT",
            id="not JSON's Content-Type",
        ),
        pytest.param(
            f"/v1/models/{MODEL}:streamGenerateContent?alt=sse",
            {"x-goog-api-key": "right", "Content-Type": "application/json", "Host": ""},
            400,
            "INVALID_ARGUMENT",
            id="no Host",
        ),
        pytest.param(
            f"/v1/models/{MODEL}:streamGenerateContent?alt=sse",
            {"x-goog-api-key": "right", "Content-Type": "application/json", "Length": "none"},
            411,
            "INVALID_ARGUMENT",
            id="no Content-Length",
        ),
    ],
)
def test_refuses_what_googles_front_refuses(
    path: str, headers: dict[str, str], status: int, status_name: str
) -> None:
    """Requests Google would refuse are refused, before any script or record, so a client
    of ours that got its headers wrong fails here as it would against Google."""
    server, base_url = start_standin(port=0, api_key="right")
    try:
        control = StandinControl(base_url)
        control.script(reply="never sent")
        host, port = base_url.removeprefix("http://").split(":")
        lines = [f"POST {path} HTTP/1.1"]
        if headers.get("Host", host):
            lines.append(f"Host: {host}")
        if headers.get("Length") != "none":
            lines.append(f"Content-Length: {len(GOOD_BODY)}")
        lines += [f"{k}: {v}" for k, v in headers.items() if k not in ("Host", "Length")]
        with socket.create_connection((host, int(port)), timeout=5) as connection:
            connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + GOOD_BODY)
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk  # the stand-in closes the connection after a refusal
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(f"HTTP/1.1 {status} ".encode()), head
        error = json.loads(body)["error"]
        assert (error["code"], error["status"]) == (status, status_name)
        assert control.requests() == []
        assert len(control.scripts()) == 1  # the script is still there
        # The same request made right is answered.
        right = {"Content-Type": "application/json"}
        right.update(
            {"Authorization": "Bearer t"} if "publishers" in path else {"x-goog-api-key": "right"}
        )
        request = urllib.request.Request(
            f"{base_url}{path}", data=GOOD_BODY, method="POST", headers=right
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
    finally:
        server.stop()


# --- control API -------------------------------------------------------------------------


def test_control_api(base_url: str, api_client: genai.Client, control: StandinControl) -> None:
    with urllib.request.urlopen(f"{base_url}/__standin/healthz", timeout=5) as response:
        assert response.status == 200
        assert json.loads(response.read())["ok"] is True
    with pytest.raises(ScriptError, match="unknown script keys: nope"):
        control.script(nope=1)
    with pytest.raises(ScriptError, match=r"http_error\.status"):
        control.script(http_error={"status": 200})
    with pytest.raises(ScriptError, match="mutually exclusive"):
        control.script(reply="a", chunks=["a"])
    with pytest.raises(ScriptError, match="responses must be a list of objects"):
        control.script(responses=["data: {}"])
    with pytest.raises(ScriptError, match="responses must not be empty"):
        control.script(responses=[])
    with pytest.raises(ScriptError, match="responses excludes"):
        control.script(responses=[{"candidates": []}], block_reason="SAFETY")

    control.script(reply="queued")
    stream(api_client, "first")
    control.script(reply="dropped by reset")
    assert len(control.requests()) == 1
    control.reset()
    assert control.requests() == []
    assert control.scripts() == []
    assert text_of(stream(api_client, "second")).startswith("Stand-in reply:")


def test_records_are_bounded() -> None:
    server, base_url = start_standin(port=0, max_records=3)
    try:
        for index in range(5):
            body = {"contents": [{"role": "user", "parts": [{"text": f"request {index}"}]}]}
            request = urllib.request.Request(
                f"{base_url}/v1/models/{MODEL}:countTokens",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json", "x-goog-api-key": "test-key"},
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                assert json.loads(response.read()) == {"totalTokens": 3}
        records = StandinControl(base_url).requests()
        assert [r["last_user_text"] for r in records] == [f"request {i}" for i in (2, 3, 4)]
    finally:
        server.stop()


@pytest.mark.slow
def test_runs_as_a_module() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "dev.gemini_standin", "--port", "0"],
        cwd=REPO_ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        assert "listening on http://127.0.0.1:" in line
        url = line.rsplit(" ", 1)[-1].strip()
        assert StandinControl(url).health()["ok"] is True
    finally:
        process.terminate()
        process.wait(timeout=5)
