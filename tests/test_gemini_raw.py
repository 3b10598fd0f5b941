"""The fast stream path (shared.gemini_raw) against google-genai's own parse, over HTTP.

Every response shape is scripted on the stand-in and streamed twice per mode (API key and
Vertex): once through the SDK's ``client.aio.models.generate_content_stream`` (its pydantic
models, read the way shared.gemini read them before the fast path) and once through
``raw_stream`` (the request sent and read in this thread, shared.sse_client) + ``read_chunk``.
Both must see the same text, usage, finish reason and block reason in every chunk, send the
same request, and fail with the same errors.
"""

from __future__ import annotations

import asyncio
import copy
import re
import uuid
from collections.abc import Iterator
from typing import Any

import google.oauth2.credentials
import pytest
from google import genai
from google.genai import errors, types, version

from dev.gemini_standin import StandinControl, StandinServer
from shared.gemini import _describe_failure, _text_of
from shared.gemini_raw import (
    SDK_VERSION,
    Generation,
    check_seam,
    raw_stream,
    read_chunk,
    wire_contents,
)
from shared.sse_client import ConnectionPool

# google-genai's aiohttp session subclass warns on creation; not ours to fix.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Inheritance class AiohttpClientSession:DeprecationWarning"
)

MODEL = "gemini-2.5-flash"
USAGE = {"promptTokenCount": 31, "candidatesTokenCount": 12, "totalTokenCount": 43}


def candidate(*parts: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"content": {"role": "model", "parts": list(parts)}, "index": 0}
    if finish:
        body["finishReason"] = finish
    body.update(extra)
    return body


def response(*candidates: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"candidates": list(candidates), "modelVersion": MODEL, **extra}


def ending(finish: str) -> list[dict[str, Any]]:
    return [
        response(candidate({"text": "Once upon "})),
        response(candidate({"text": "a time"}, finish=finish), usageMetadata=USAGE),
    ]


SAFETY_RATINGS = [{"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"}]

SHAPES: dict[str, list[dict[str, Any]]] = {
    "plain text chunks": [
        response(candidate({"text": "Ravens "})),
        response(candidate({"text": "are "})),
        response(candidate({"text": "clever."}, finish="STOP"), usageMetadata=USAGE),
    ],
    "multi-part candidates": [
        response(candidate({"text": "one, "}, {"text": "two, "}, {"text": "three"})),
        response(candidate({"text": "."}, {"text": ""}, finish="STOP"), usageMetadata=USAGE),
    ],
    "thought parts": [
        response(candidate({"text": "Let me think...", "thought": True})),
        response(candidate({"text": "hidden", "thought": True}, {"text": "Shown"})),
        response(
            candidate({"text": " answer", "thought": False}, finish="STOP"),
            usageMetadata={**USAGE, "thoughtsTokenCount": 40},
        ),
    ],
    "usage-only final chunk": [
        response(candidate({"text": "All "})),
        response(candidate({"text": "done"}, finish="STOP")),
        {"usageMetadata": USAGE, "modelVersion": MODEL},
    ],
    "running usage on every chunk": [
        response(
            candidate({"text": "a"}),
            usageMetadata={"promptTokenCount": 31, "totalTokenCount": 31},
        ),
        response(
            candidate({"text": "b"}, finish="STOP"),
            usageMetadata={"promptTokenCount": 31, "candidatesTokenCount": 0},
        ),
    ],
    "finish MAX_TOKENS": ending("MAX_TOKENS"),
    "finish SAFETY with ratings": [
        response(candidate({"text": "Here is"}, safetyRatings=SAFETY_RATINGS)),
        response(
            {"finishReason": "SAFETY", "index": 0, "safetyRatings": SAFETY_RATINGS},
            usageMetadata=USAGE,
        ),
    ],
    "finish RECITATION with citations": [
        response(
            candidate(
                {"text": "To be or not"},
                finish="RECITATION",
                citationMetadata={"citations": [{"startIndex": 0, "endIndex": 12}]},
            ),
            usageMetadata=USAGE,
        ),
    ],
    "finish OTHER": ending("OTHER"),
    "finish BLOCKLIST": ending("BLOCKLIST"),
    "finish PROHIBITED_CONTENT": ending("PROHIBITED_CONTENT"),
    "finish SPII": ending("SPII"),
    "prompt blocked": [
        {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": USAGE, "modelVersion": MODEL}
    ],
    "prompt blocked, OTHER": [
        {
            "promptFeedback": {"blockReason": "OTHER", "safetyRatings": SAFETY_RATINGS},
            "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
        }
    ],
    "empty candidates": [
        {"candidates": [], "modelVersion": MODEL},
        response({"index": 0}),
        response({"content": {"role": "model"}, "index": 0}),
        response(candidate(finish="STOP"), usageMetadata=USAGE),
    ],
    "second candidate ignored": [
        response(
            candidate({"text": "first"}, finish="STOP"),
            {"content": {"role": "model", "parts": [{"text": "second"}]}, "index": 1},
            usageMetadata=USAGE,
        ),
    ],
    "unicode and escapes": [
        response(candidate({"text": 'Ça va? "quotes" \\ and\nnew line 🐦'})),
        response(candidate({"text": "\u2028"}, finish="STOP"), usageMetadata=USAGE),
    ],
}


@pytest.fixture(scope="module", params=["api-key", "vertex"])
def client(request: pytest.FixtureRequest, standin: tuple[StandinServer, str]) -> genai.Client:
    options = types.HttpOptions(base_url=standin[1])
    if request.param == "api-key":
        return genai.Client(api_key="test-key", http_options=options)
    return genai.Client(
        vertexai=True,
        project="raven-test",
        location="us-central1",
        credentials=google.oauth2.credentials.Credentials(token="standin-token"),
        http_options=options,
    )


Seen = tuple[str, int | None, int | None, str | None, str | None]


def sdk_fields(chunk: types.GenerateContentResponse) -> Seen:
    """A chunk read the way shared.gemini read the SDK's models before the fast path."""
    usage = chunk.usage_metadata
    finish = chunk.candidates[0].finish_reason if chunk.candidates else None
    feedback = chunk.prompt_feedback
    return (
        _text_of(chunk),
        (usage.prompt_token_count or None) if usage else None,
        (usage.candidates_token_count or None) if usage else None,
        str(finish.value) if finish else None,
        str(feedback.block_reason.value) if feedback and feedback.block_reason else None,
    )


def fast_fields(raw: dict[str, Any]) -> Seen:
    fields = read_chunk(raw)
    return (
        fields.text,
        fields.prompt_tokens,
        fields.output_tokens,
        fields.finish_reason,
        fields.block_reason,
    )


GENERATION = Generation("You are Raven.", thinking_budget=0)


def config() -> types.GenerateContentConfig:
    return types.GenerateContentConfig(
        system_instruction="You are Raven.",
        thinking_config=types.ThinkingConfig(thinking_budget=0),
    )


POOL = ConnectionPool()


def fast_stream(
    client: genai.Client, contents: Any, generation: Generation = GENERATION
) -> Iterator[dict[str, Any]]:
    """The fast path's responses, one by one (heartbeats left out)."""
    for batch in raw_stream(
        client,
        POOL,
        MODEL,
        contents,
        generation,
        heartbeat_seconds=5.0,
        silence_seconds=30.0,
    ):
        yield from batch


def both(client: genai.Client, text: str) -> tuple[list[Any], list[Any]]:
    """The same scripted stream through the SDK's parse, then through the fast path."""

    async def sdk_run() -> list[Any]:
        return [
            sdk_fields(chunk)
            async for chunk in await client.aio.models.generate_content_stream(
                model=MODEL, contents=text, config=config()
            )
        ]

    sdk = asyncio.run(sdk_run())
    fast = [fast_fields(raw) for raw in fast_stream(client, text)]
    return sdk, fast


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_fast_path_reads_every_shape_as_the_sdk_does(
    client: genai.Client, control: StandinControl, shape: str
) -> None:
    key = f"shape-{uuid.uuid4().hex[:10]}"
    control.script(responses=SHAPES[shape], match=key, times=2)

    sdk, fast = both(client, f"{key} tell me")

    assert fast == sdk
    assert len(fast) == len(SHAPES[shape])
    assert [r["outcome"] for r in control.requests(match=key)] == ["ok", "ok"]


def camel_keys(value: Any) -> Any:
    """``value`` with every object key in lowerCamelCase (proto3 JSON's canonical name)."""
    if isinstance(value, dict):
        return {
            re.sub(r"_([a-z])", lambda m: m.group(1).upper(), key): camel_keys(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [camel_keys(item) for item in value]
    return value


FILE_PARTS = {
    "REST JSON (what shared.context builds)": {
        "fileData": {"fileUri": "gs://bucket/media/a.png", "mimeType": "image/png"}
    },
    "the SDK's snake_case": {
        "file_data": {"file_uri": "gs://bucket/media/a.png", "mime_type": "image/png"}
    },
}


@pytest.mark.parametrize("form", sorted(FILE_PARTS))
def test_the_fast_path_sends_the_sdks_request(
    client: genai.Client, control: StandinControl, form: str
) -> None:
    """The body is the SDK's to the byte (the SDK given its usual snake_case parts), though
    the fast path sends REST JSON contents as they are instead of validating them into the
    SDK's models and back."""
    key = f"request-{uuid.uuid4().hex[:10]}"

    def contents_with(file_part: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {"role": "user", "parts": [file_part, {"text": "What bird is this?"}]},
            {"role": "model", "parts": [{"text": "A crow."}]},
            {"role": "user", "parts": [{"text": f"{key} sure?"}]},
        ]

    contents = contents_with(FILE_PARTS[form])
    before = copy.deepcopy(contents)

    async def run() -> None:
        stream = await client.aio.models.generate_content_stream(
            model=MODEL,
            contents=contents_with(FILE_PARTS["the SDK's snake_case"]),
            config=config().model_copy(update={"max_output_tokens": 256}),
        )
        async for _ in stream:
            pass

    asyncio.run(run())
    for _ in fast_stream(client, contents, Generation("You are Raven.", 0, 256)):
        pass

    sdk, fast = control.requests(match=key)
    for field in ("path", "query", "mode", "model", "api_version"):
        assert fast[field] == sdk[field], field
    # The SDK's headers (content type, API key or bearer token, client names) and the Host;
    # aiohttp adds its Accept and Accept-Encoding, which the API does not need.
    transport = {"content-length", "accept", "accept-encoding"}
    assert {k.lower(): v for k, v in fast["headers"].items() if k.lower() not in transport} == {
        k.lower(): v for k, v in sdk["headers"].items() if k.lower() not in transport
    }
    # The same request to the API: proto3's JSON takes a field by either name, and the SDK
    # sends fileData's inner fields in snake_case where REST JSON spells them in camelCase.
    assert camel_keys(fast["body"]) == camel_keys(sdk["body"])
    assert fast["body"]["systemInstruction"]["parts"][0]["text"] == "You are Raven."
    assert fast["body"]["generationConfig"]["maxOutputTokens"] == 256
    assert (
        fast["body"]["contents"][0]["parts"][0]
        == FILE_PARTS["REST JSON (what shared.context builds)"]
    )
    assert contents == before  # the caller's contents are not rewritten


@pytest.mark.parametrize("max_output_tokens", [None, 1024])
def test_the_body_is_built_as_the_sdk_converts_it(
    client: genai.Client, max_output_tokens: int | None
) -> None:
    """The fast body (plain data, no pydantic) equals the SDK's conversion to the byte,
    for the Gemini API and Vertex AI (the ``client`` fixture's two modes)."""
    from shared.gemini_raw import _sdk_request_body, request_body

    api_client = client.models._api_client
    contents = [
        {"role": "user", "parts": [FILE_PARTS["REST JSON (what shared.context builds)"]]},
        {"role": "model", "parts": [{"text": "A crow."}]},
        {"role": "user", "parts": [{"text": "Sure? ünïcödé"}]},
    ]
    generation = Generation("You are Raven.\nBe brief.", 512, max_output_tokens)

    fast_path, fast_body = request_body(api_client, MODEL, contents, generation)
    sdk_path, sdk_body = _sdk_request_body(api_client, MODEL, contents, generation, None)

    assert fast_path == sdk_path
    assert fast_body == sdk_body
    assert fast_body["contents"] is contents  # sent as they are, not converted
    # A resumed hop's token is decoded by the SDK's own model: that body is the SDK's.
    assert request_body(api_client, MODEL, contents, generation, "Y2sx") == _sdk_request_body(
        api_client, MODEL, contents, generation, "Y2sx"
    )


def test_anything_else_is_left_to_the_sdk() -> None:
    text_and_file: list[dict[str, Any]] = [
        {
            "role": "user",
            "parts": [{"text": "hi"}, FILE_PARTS["REST JSON (what shared.context builds)"]],
        }
    ]
    assert wire_contents(text_and_file) is text_and_file  # as they are: no copy
    for other in (
        "just a string",
        [],
        [{"role": "user", "parts": [{"inline_data": {"data": "AA==", "mime_type": "image/png"}}]}],
        [{"role": "user", "parts": [{"text": "hi", "thought": True}]}],
        [{"role": "user", "parts": "hi"}],
        [types.Content(role="user", parts=[types.Part(text="hi")])],
    ):
        assert wire_contents(other) is None, other


ERRORS: dict[str, dict[str, Any]] = {
    "busy (429)": {"http_error": {"status": 429, "message": "slow down"}},
    "unavailable (503)": {"http_error": {"status": 503, "message": "down"}},
    "server error (500)": {"http_error": {"status": 500, "message": "oops"}},
    "refused (400)": {"http_error": {"status": 400, "message": "bad request"}},
    "error event mid-stream": {
        "reply": "one two three four",
        "stream_error": {"after_chunks": 2, "status": 500, "message": "internal"},
    },
    "connection cut mid-stream": {"reply": "one two three four", "fail_after_chunks": 2},
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_failures_raise_what_the_sdk_raises(
    client: genai.Client, control: StandinControl, case: str
) -> None:
    key = f"error-{uuid.uuid4().hex[:10]}"
    control.script(**ERRORS[case], match=key, times=2)

    async def consume(stream: Any) -> tuple[int, BaseException]:
        seen = 0
        try:
            async for _ in stream:
                seen += 1
        except Exception as error:  # noqa: BLE001 - the error is what is compared
            return seen, error
        raise AssertionError("the stream did not fail")

    async def sdk_run() -> tuple[int, BaseException]:
        sdk_stream = await client.aio.models.generate_content_stream(
            model=MODEL, contents=f"{key} go", config=config()
        )
        return await consume(sdk_stream)

    sdk_seen, sdk_error = asyncio.run(sdk_run())
    fast_seen = 0
    fast_error: BaseException | None = None
    try:
        for _ in fast_stream(client, f"{key} go"):
            fast_seen += 1
    except Exception as error:  # noqa: BLE001 - the error is what is compared
        fast_error = error
    assert fast_error is not None, "the stream did not fail"

    assert fast_seen == sdk_seen
    sdk_failure, fast_failure = _describe_failure(sdk_error), _describe_failure(fast_error)
    assert fast_failure.kind == sdk_failure.kind
    if isinstance(sdk_error, errors.APIError):
        assert type(fast_error) is type(sdk_error)
        assert getattr(fast_error, "code", None) == getattr(sdk_error, "code", None)
        assert (fast_error.status, fast_error.message) == (sdk_error.status, sdk_error.message)
        assert fast_failure.cause == sdk_failure.cause
    else:  # a broken connection: the transport's own exception (aiohttp's vs ours)
        assert isinstance(fast_error, ConnectionError)


def test_the_private_sdk_seam_is_there() -> None:
    # The fast path uses private google-genai API: an upgrade must be checked, not trusted.
    assert version.__version__ == SDK_VERSION, (
        f"google-genai is {version.__version__}, shared/gemini_raw.py was written against "
        f"{SDK_VERSION}: check its seam against the new SDK, then update SDK_VERSION"
    )
    check_seam()


def test_a_missing_seam_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    from google.genai import _api_client

    monkeypatch.delattr(_api_client.BaseApiClient, "_access_token")
    with pytest.raises(RuntimeError, match=r"_access_token.*3\.4\.0"):
        check_seam()


def test_a_continued_stream_reads_as_the_sdk_reads_it(
    client: genai.Client, control: StandinControl
) -> None:
    key = f"continue-{uuid.uuid4().hex[:10]}"
    first_hop = [
        response(candidate({"text": "The first half, "})),
        response(
            candidate({"text": "cut here"}, finish="CONTINUATION", continuationToken="Y2hlY2sx"),
            usageMetadata=USAGE,
        ),
    ]
    second_hop = [
        response(candidate({"text": " and the rest."}, finish="STOP"), usageMetadata=USAGE),
    ]
    for _ in ("sdk", "fast"):  # scripts with the same match serve the oldest first
        control.script(responses=first_hop, match=key)
        control.script(responses=second_hop, match=key)

    sdk, fast = both(client, f"{key} tell me")

    assert fast == sdk
    assert [chunk[3] for chunk in fast] == [None, None, "STOP"]  # CONTINUATION is not an end
    assert fast[-1][1:3] == (2 * USAGE["promptTokenCount"], 2 * USAGE["candidatesTokenCount"])
    sdk_first, sdk_second, fast_first, fast_second = control.requests(match=key)
    assert fast_second["body"] == sdk_second["body"]
    assert fast_first["body"] == sdk_first["body"] != fast_second["body"]


def test_a_stream_broken_after_a_checkpoint_resumes_as_the_sdks_does(
    client: genai.Client, control: StandinControl
) -> None:
    key = f"resume-{uuid.uuid4().hex[:10]}"
    broken_hop = [
        response(candidate({"text": "Before the checkpoint, "}, continuationToken="Y2sx")),
        response(candidate({"text": "after it"})),
        response(candidate({"text": " (never sent)"})),
    ]
    resumed_hop = [
        response(candidate({"text": " and the end."}, finish="STOP"), usageMetadata=USAGE),
    ]
    for _ in ("sdk", "fast"):
        control.script(responses=broken_hop, fail_after_chunks=2, match=key)
        control.script(responses=resumed_hop, match=key)

    sdk, fast = both(client, f"{key} tell me")

    assert fast == sdk
    assert "".join(chunk[0] for chunk in fast) == "Before the checkpoint, after it and the end."
    outcomes = [record["outcome"] for record in control.requests(match=key)]
    assert outcomes == ["aborted", "ok", "aborted", "ok"]
    sdk_resumed, fast_resumed = control.requests(match=key)[1::2]
    assert fast_resumed["body"] == sdk_resumed["body"]
