"""Streaming without google-genai's per-chunk pydantic validation: the raw SSE JSON, read fast.

google-genai's ``client.aio.models.generate_content_stream`` turns every streamed chunk into
pydantic models (and, on the way, parses its JSON twice and wraps it in two more objects):
about 200 µs of CPU per chunk, the largest cost of a streaming instance. Here the SDK still
builds and authenticates the request, sends it, parses the SSE framing (one ``json.loads``
per event) and raises its own errors (``APIError`` for an HTTP error status or an
``{"error": ...}`` event, the transport's exceptions for broken connections and timeouts),
but each event's dict is read directly for the few fields a chat needs (:func:`read_chunk`).

The seam is private SDK API, written against **google-genai 3.4.0** (``SDK_VERSION``):
``models._GenerateContentParameters_to_vertex`` / ``_to_mldev`` (the request body, exactly as
``AsyncModels._generate_content_stream`` builds it), ``BaseApiClient._build_request`` and
``_async_request(stream=True)``, and ``HttpResponse.async_segments()``. ``check_seam`` fails
loudly when any of it is missing (tests/test_gemini_raw.py), so an SDK upgrade that moves it
breaks the build instead of silently slowing down or breaking streams.

Automatic continuation, which the SDK's stream does, is done here too (see
:func:`raw_stream`): a hop that ends with ``finishReason: CONTINUATION``, or breaks after a
``continuationToken`` checkpoint, is resumed from that token, as the SDK does. Against the
stand-in, which sends no token unless scripted to, a broken stream fails as it always did.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

SDK_VERSION = "3.4.0"

# Requests one stream may take, at most (the SDK has no limit; a stream that keeps asking to
# continue is a fault, not an answer), and resumes in a row without progress (the SDK's 3).
MAX_HOPS = 16
MAX_RECONNECTS_WITHOUT_PROGRESS = 3


@dataclass
class ChunkFields:
    """What a chat needs from one streamed GenerateContentResponse."""

    text: str = ""
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str | None = None  # Gemini's FinishReason of the first candidate
    block_reason: str | None = None  # promptFeedback.blockReason: the prompt was refused
    continuation_token: str | None = None


def read_chunk(response: dict[str, Any]) -> ChunkFields:
    """The fields of one raw (camelCase JSON) GenerateContentResponse.

    Mirrors what shared.gemini read from the SDK's models: the first candidate's non-thought
    text parts joined, its finish reason, the usage's prompt and candidates token counts
    (a zero or missing count is None, as ``count or previous`` treated it), and the prompt's
    block reason.
    """
    fields = ChunkFields()
    candidates = response.get("candidates")
    if candidates:
        candidate = candidates[0]
        content = candidate.get("content")
        if content:
            parts = content.get("parts")
            if parts:
                fields.text = "".join(
                    part["text"] for part in parts if part.get("text") and not part.get("thought")
                )
        fields.finish_reason = candidate.get("finishReason") or None
        fields.continuation_token = candidate.get("continuationToken") or None
    usage = response.get("usageMetadata")
    if usage:
        fields.prompt_tokens = usage.get("promptTokenCount") or None
        fields.output_tokens = usage.get("candidatesTokenCount") or None
    feedback = response.get("promptFeedback")
    if feedback:
        fields.block_reason = feedback.get("blockReason") or None
    return fields


def check_seam() -> None:
    """Raise if the private google-genai API this module uses is not there.

    Raises:
        RuntimeError: naming what is missing and the version this was written against.
    """
    from google.genai import _api_client, _common, models, version

    missing = [
        name
        for owner, name in (
            (models, "_GenerateContentParameters_to_vertex"),
            (models, "_GenerateContentParameters_to_mldev"),
            (models.types, "_GenerateContentParameters"),
            (_common, "convert_to_dict"),
            (_common, "encode_unserializable_types"),
            (_api_client.BaseApiClient, "_build_request"),
            (_api_client.BaseApiClient, "_async_request"),
            (_api_client.HttpResponse, "async_segments"),
        )
        if not hasattr(owner, name)
    ]
    if missing:
        raise RuntimeError(
            f"google-genai {version.__version__} lacks {', '.join(missing)}, which "
            f"shared/gemini_raw.py uses (written against {SDK_VERSION}); update it"
        )


async def raw_stream(
    client: Any, model: str, contents: Any, config: Any
) -> AsyncIterator[dict[str, Any]]:
    """Stream ``generateContent``'s raw responses (dicts), continuing as google-genai does.

    Mirrors the SDK's ``StreamContinuation`` (3.4.0): a hop that ends with ``CONTINUATION``
    (the finish reason is then removed), ends early, or breaks after a new
    ``continuationToken`` is resumed from that token; the hops' usage is summed.

    Raises what the SDK's own stream raises: ``google.genai.errors.APIError`` for an error
    status or an error event, the transport's exceptions for broken connections.
    """
    from google.genai import errors

    resume: str | None = None
    reconnects = 0  # hops in a row that made no progress
    last_error: Exception | None = None
    usage_before: dict[str, int] = {}  # summed usage of the finished hops
    for _hop in range(MAX_HOPS):
        start, token = resume, None
        finish: str | None = None
        received = blocked = content = False
        hop_usage: dict[str, Any] | None = None
        error: Exception | None = None
        hop_config = config if start is None else _resuming(config, start)
        try:
            async for response in _one_hop(client, model, contents, hop_config):
                received = True
                blocked = blocked or response.get("promptFeedback") is not None
                candidates = response.get("candidates")
                if candidates:
                    candidate = candidates[0]
                    content = content or bool((candidate.get("content") or {}).get("parts"))
                    reason = candidate.get("finishReason") or None
                    finish = reason or finish
                    if candidate.get("continuationToken"):
                        token = candidate["continuationToken"]
                    elif reason and reason != "CONTINUATION":
                        token = None
                    if reason == "CONTINUATION" and token:
                        del candidate["finishReason"]  # not the end: the next hop continues
                usage = response.get("usageMetadata")
                if usage:
                    hop_usage = usage
                    if usage_before:
                        response["usageMetadata"] = _summed(usage_before, usage)
                yield response
        except Exception as failure:  # noqa: BLE001 - decided below, as the SDK decides
            error = failure
        if hop_usage:
            usage_before = _summed(usage_before, hop_usage)
        if isinstance(error, errors.APIError) and not received:
            raise error
        progressed = content or bool(token and token != start)
        if error is not None:
            last_error = error
        elif progressed:
            last_error = None
        if finish is not None or blocked:
            ended_to_continue = finish == "CONTINUATION" and not blocked
            resume = token if ended_to_continue and token and token != start else None
            reconnects = 0
        elif token and token != start:
            resume, reconnects = token, 0
        elif content or reconnects >= MAX_RECONNECTS_WITHOUT_PROGRESS:
            resume = None
        else:
            resume, reconnects = start, reconnects + 1
        if resume and not blocked and finish in (None, "CONTINUATION"):
            continue
        if error is not None:
            raise error
        if finish is None and not blocked and last_error is not None:
            raise last_error
        return
    raise RuntimeError(f"the model's stream asked to continue more than {MAX_HOPS} times")


def wire_contents(contents: Any) -> list[dict[str, Any]] | None:
    """``contents`` as the REST API's JSON (``{"role", "parts": [{"text"} | {"fileData"}]}``),
    or None when they are anything else the SDK accepts (a string, its models, other parts),
    which the SDK then converts.

    shared.context builds them as REST JSON already: returned as they are, not copied. A file
    part in the SDK's snake_case form (``file_data``: ``file_uri``, ``mime_type``) is renamed
    in a copy.
    """
    if not isinstance(contents, list) or not contents:
        return None
    renamed = False
    for content in contents:
        parts = content.get("parts") if isinstance(content, dict) else None
        if not isinstance(parts, list) or not set(content) <= {"role", "parts"}:
            return None
        for part in parts:
            if not isinstance(part, dict) or len(part) != 1:
                return None
            if "file_data" in part:
                renamed = True
            elif not isinstance(part.get("text"), str) and "fileData" not in part:
                return None
    if not renamed:
        return contents
    return [
        {**content, "parts": [_wire_part(part) for part in content["parts"]]}
        for content in contents
    ]


def _wire_part(part: dict[str, Any]) -> dict[str, Any]:
    data = part.get("file_data")
    if data is None:
        return part
    return {"fileData": {"fileUri": data["file_uri"], "mimeType": data["mime_type"]}}


def _resuming(config: Any, token: str) -> Any:
    """``config`` resuming from ``token``, the token decoded by the SDK's own model."""
    from google.genai import types

    decoded = types.Candidate.model_validate({"continuationToken": token}).continuation_token
    return config.model_copy(update={"continuation_token": decoded})


def _summed(before: dict[str, int], usage: dict[str, Any]) -> dict[str, Any]:
    summed = dict(usage)
    for key, value in before.items():
        if isinstance(value, int):
            summed[key] = summed.get(key, 0) + value
    return summed


async def _one_hop(
    client: Any, model: str, contents: Any, config: Any
) -> AsyncIterator[dict[str, Any]]:
    """One streamGenerateContent request, built and sent as google-genai 3.4.0 does."""
    from urllib.parse import urlencode

    from google.genai import _common, errors, models, types

    api_client = client.aio.models._api_client
    # The SDK converts the model name and the config (once per request, a few fields). The
    # contents are already the REST API's JSON (wire_contents), identical for Vertex AI and
    # the Gemini API: validating them into pydantic models and converting them back cost
    # ~0.25 ms of CPU per message of the window (bench/README.md, "Request building").
    ready = wire_contents(contents)
    if ready is None:  # not plain text and file parts: the SDK converts them
        parameters = types._GenerateContentParameters(model=model, contents=contents, config=config)
    else:
        parameters = types._GenerateContentParameters(model=model, config=config)
    to_wire = (
        models._GenerateContentParameters_to_vertex
        if api_client.vertexai
        else models._GenerateContentParameters_to_mldev
    )
    request: dict[str, Any] = to_wire(api_client, parameters, None, parameters)
    url = request.get("_url")
    path = "{model}:streamGenerateContent?alt=sse"
    path = path.format_map(url) if url else path
    query = request.get("_query")
    if query:
        path = f"{path}?{urlencode(query)}"
    request.pop("config", None)
    request = _common.encode_unserializable_types(_common.convert_to_dict(request))
    if ready is not None:
        request = {"contents": ready, **request}
    http_request = api_client._build_request("post", path, request, None)
    response = await api_client._async_request(
        http_request=http_request, http_options=None, stream=True
    )
    async for segment in response.async_segments():
        if "error" in segment:  # an error event inside the stream, raised as the SDK does
            error = segment["error"]
            code = error.get("code") if isinstance(error, dict) else None
            await errors.APIError.raise_error_async(int(code or 0), segment, response)
        yield segment
